"""The --out rule (outputs.prepare_output), atomic replacement, and the clean-up of killed writers' .tmp-* folders."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time

import pytest

import unlearnkit as uk
from unlearnkit._util import atomic_path, write_json_atomic
from unlearnkit.cli import main
from unlearnkit.errors import UnlearnKitError
from unlearnkit.outputs import OWNER, artefact_kind, collect_garbage, prepare_output, remove_stale_temps, stale_temps
from unlearnkit.recipes import default_recipe


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs") / "ck"
    uk.train("digits", "mlp", config=default_recipe("digits", "mlp").replace(epochs=1), out=out)
    return out


def test_refusals(tmp_path, ck):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    (tmp_path / "file").write_text("x")
    cases = {
        tmp_path / "mine": "holds other files",
        tmp_path / "file": "is a file",
        ck: "already holds an unlearnkit checkpoint",
        tmp_path / "file" / "below": "is a file, not a folder",
        "": "is empty",
        ".": "names no new folder",
        tmp_path / ("x" * 300): "longer than 255 bytes",
        "/proc/unlearnkit-test": "cannot write",
    }
    for path, message in cases.items():
        with pytest.raises(UnlearnKitError, match=message):
            prepare_output(path, "checkpoint")
    with pytest.raises(UnlearnKitError, match="holds an unlearnkit checkpoint, not an SPD-GAN"):
        prepare_output(ck, "spdgan", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def test_inputs_are_never_outputs_even_through_links(tmp_path, ck):
    link = tmp_path / "link"
    link.symlink_to(ck)
    for out in (ck, ck / "sub", ck.parent, link, link / "x"):
        with pytest.raises(UnlearnKitError, match="is, contains or lies inside the input"):
            prepare_output(out, "checkpoint", inputs=[ck], overwrite=True)


def test_accepts_new_empty_and_same_kind_with_overwrite(tmp_path, ck):
    assert prepare_output(tmp_path / "a" / "b", "checkpoint") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # nothing is created by the check
    (tmp_path / "empty").mkdir()
    prepare_output(tmp_path / "empty", "checkpoint")
    prepare_output(ck, "checkpoint", overwrite=True)
    assert artefact_kind(ck) == ("checkpoint", "")


def test_full_device_is_one_error(tmp_path, monkeypatch):
    import unlearnkit._util as util

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(util.os, "replace", full)
    with pytest.raises(UnlearnKitError, match="No space left on device"):
        write_json_atomic(tmp_path / "r.json", {"a": 1})
    monkeypatch.undo()
    assert not (tmp_path / "r.json").exists() and not stale_temps(tmp_path)


def test_overwrite_replaces_only_a_complete_artefact(tmp_path, ck):
    old = json.loads((ck / "manifest.json").read_text())
    out = tmp_path / "out"
    argv = ["unlearn", "--checkpoint", str(ck), "--method", "finetune", "--request", "class:0", "--out", str(out)]
    assert main(argv) == 0
    first = (out / "model.safetensors").read_bytes()
    assert main(argv) == 2  # exists: --overwrite needed
    assert (out / "model.safetensors").read_bytes() == first
    assert main(argv + ["--set", "lr=0.2", "--overwrite"]) == 0
    assert (out / "model.safetensors").read_bytes() != first
    assert json.loads((ck / "manifest.json").read_text()) == old  # the input is untouched
    assert json.loads((out / "manifest.json").read_text())["parent"]["path"] == str(ck)
    assert not stale_temps(tmp_path)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporary_folders_are_removed_and_live_ones_kept(tmp_path):
    target = tmp_path / "ck"
    dead = tmp_path / ".tmp-ck-dead"
    dead.mkdir()
    (dead / OWNER).write_text(f"{_dead_pid()} 1\n")
    (dead / "ck").mkdir()
    live = tmp_path / ".tmp-ck-live"
    live.mkdir()
    (live / OWNER).write_text(f"{os.getpid()}\n")
    unowned_new = tmp_path / ".tmp-ck-new"
    unowned_new.mkdir()
    unowned_old = tmp_path / ".tmp-ck-old"
    unowned_old.mkdir()
    os.utime(unowned_old, (time.time() - 3600, time.time() - 3600))
    killed_at_birth = tmp_path / f".tmp-ck-{_dead_pid()}-abcd1234"  # killed before it wrote .owner
    killed_at_birth.mkdir()
    mine_at_birth = tmp_path / f".tmp-ck-{os.getpid()}-abcd1234"
    mine_at_birth.mkdir()
    other = tmp_path / ".tmp-other-dead"
    other.mkdir()
    (other / OWNER).write_text(f"{_dead_pid()}\n")
    removed = remove_stale_temps(target)
    assert sorted(p.name for p in removed) == sorted([".tmp-ck-dead", ".tmp-ck-old", killed_at_birth.name])
    assert live.exists() and unowned_new.exists() and mine_at_birth.exists() and other.exists()
    # the next write of the target cleans too, and leaves no folder of its own
    write_json_atomic(tmp_path / "other", {"x": 1})
    assert not other.exists()
    found = collect_garbage(tmp_path, dry_run=True)
    assert found == []  # the live and the fresh unowned folders are not garbage


def test_gc_command(tmp_path, capsys):
    nested = tmp_path / "runs" / "a"
    nested.mkdir(parents=True)
    for name in (".tmp-x-1", ".tmp-y-2"):
        (nested / name).mkdir()
        (nested / name / OWNER).write_text(f"{_dead_pid()}\n")
    assert main(["gc", str(tmp_path), "--dry-run"]) == 0
    assert (nested / ".tmp-x-1").exists()
    assert main(["gc", str(tmp_path)]) == 0
    assert not any(nested.iterdir())
    assert "2 stale temporary folder(s) removed" in capsys.readouterr().out


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    with pytest.raises(ValueError):
        with atomic_path(tmp_path / "x") as staged:
            staged.write_text("half")
            raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []


def test_a_replacement_killed_halfway_is_finished_by_the_next_write(tmp_path):
    # atomic_path moves the old folder to .tmp-NAME-*/NAME.old, then the new one (complete) into place; a kill
    # between the two renames leaves NAME missing. The next write over NAME (or gc) completes the replacement.
    target = tmp_path / "ck"
    tmp = tmp_path / ".tmp-ck-killed"
    (tmp / "ck").mkdir(parents=True)
    (tmp / "ck" / "new.txt").write_text("new")
    (tmp / "ck.old").mkdir()
    (tmp / OWNER).write_text(f"{_dead_pid()}\n")
    remove_stale_temps(target)
    assert (target / "new.txt").read_text() == "new" and not tmp.exists()
