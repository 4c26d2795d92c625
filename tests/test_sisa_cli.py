"""`unlearnkit sisa train`, `forget`, `requests`: the happy path and every kind of bad input or fault."""

import json
import shutil

import pytest

from service_helpers import TINY_SISA_TRAIN
from unlearnkit.cli import main
from unlearnkit.hybrid import Ledger
from unlearnkit.sisa import SisaModel


def run(capsys, *argv):
    code = main(["--threads", "1", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "model"
    code = main(["--threads", "1", *TINY_SISA_TRAIN, "--out", str(path)])
    assert code == 0
    return path


@pytest.fixture
def model_dir(trained_dir, tmp_path):
    shutil.copytree(trained_dir, tmp_path / "model")
    return tmp_path / "model"


def ids_file(tmp_path, ids, name="ids.txt"):
    path = tmp_path / name
    path.write_text("# ids to forget\n" + "".join(f"{i}\n" for i in ids))
    return path


def slice_ids(model_dir, shard, slice_, n):
    prov = SisaModel.open(model_dir).provenance
    return prov.members[shard][prov.member_slices[shard] == slice_][:n].tolist()


def test_train_forget_list_show(capsys, model_dir, tmp_path):
    code, out, err = run(capsys, "sisa", "info", "--model", model_dir, "--json")
    info = json.loads(out)
    assert code == 0 and info["shards"] == 2 and info["version"] == 0 and info["calibration"]["measured"]
    ids = ids_file(tmp_path, slice_ids(model_dir, 0, 2, 2))
    code, out, err = run(capsys, "forget", "--model", model_dir, "--ids", ids, "--request-id", "alice", "--evaluate")
    assert code == 0, err
    assert "request alice: done" in out and "version 0 -> 1" in out
    code, out, _ = run(capsys, "forget", "--model", model_dir, "--request", "random:0.005", "--plan-only")
    plan = json.loads(out)
    assert code == 0 and plan["decision"] in ("exact", "approx") and plan["planning_ms"] < 50
    code, out, _ = run(capsys, "forget", "--model", model_dir, "--request", "random:0.005", "--mode", "approx",
                       "--request-id", "bob", "--json")
    record = json.loads(out)
    assert code == 0 and record["decision"] == "approx" and record["version"] == 2
    code, out, _ = run(capsys, "requests", "list", "--model", model_dir)
    assert code == 0 and "alice" in out and "bob" in out
    code, out, _ = run(capsys, "requests", "show", "alice", "--model", model_dir, "--json")
    shown = json.loads(out)
    assert shown["state"] == "done" and [e["state"] for e in shown["events"]] == [
        "received",
        "planned",
        "running",
        "done",
    ]
    assert shown["metrics"]["test_acc"] > 80 and shown["estimated_seconds"] > 0 and shown["actual_seconds"] > 0


def test_already_deleted_ids_are_a_documented_noop(capsys, model_dir, tmp_path):
    ids = ids_file(tmp_path, slice_ids(model_dir, 1, 2, 3))
    assert run(capsys, "forget", "--model", model_dir, "--ids", ids)[0] == 0
    code, out, _ = run(capsys, "forget", "--model", model_dir, "--ids", ids)
    assert code == 0 and "noop" in out and "deleted before" in out
    assert SisaModel.open(model_dir).store.version_numbers() == [0, 1]


def one_line_error(err: str) -> str:
    assert err.startswith("unlearnkit: error:") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("ids, message", [
    ([5, 99999], "outside 0.."),
    ([7, 8, 7], "more than once"),
    ([], "lists no ids"),
])
def test_bad_ids_files(capsys, model_dir, tmp_path, ids, message):
    code, _, err = run(capsys, "forget", "--model", model_dir, "--ids", ids_file(tmp_path, ids))
    assert code == 2 and message in one_line_error(err)
    assert SisaModel.open(model_dir).store.version_numbers() == [0]
    assert Ledger(model_dir / "ledger.sqlite").list() == []  # nothing half-recorded


@pytest.mark.parametrize(
    "argv, message",
    [
        (["forget", "--request", "random:0.6"], "more than a whole shard"),
        (["forget", "--request", "relabel:0.01"], "removes samples"),
        (["requests", "show", "nobody"], "no request 'nobody'"),
        (
            ["sisa", "train", "--dataset", "digits", "--model", "mlp", "--out", "MODEL"],
            "already holds a trained SISA model",
        ),
    ],
)
def test_bad_requests(capsys, model_dir, argv, message):
    argv = [str(model_dir) if a == "MODEL" else a for a in argv]
    if "--out" not in argv:
        argv += ["--model", str(model_dir)]
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in one_line_error(err)


def test_missing_model_and_reused_request_id(capsys, model_dir, tmp_path):
    code, _, err = run(capsys, "forget", "--model", tmp_path / "nowhere", "--ids", ids_file(tmp_path, [1]))
    assert code == 2 and "does not exist" in one_line_error(err)
    assert run(capsys, "forget", "--model", model_dir, "--ids", ids_file(tmp_path, [1]), "--request-id", "x")[0] == 0
    code, _, err = run(
        capsys, "forget", "--model", model_dir, "--ids", ids_file(tmp_path, [2], "other.txt"), "--request-id", "x"
    )
    assert code == 2 and "already used for another request" in one_line_error(err)


def test_corrupted_version_is_a_clear_error(capsys, model_dir, tmp_path):
    status = model_dir / "versions" / "v000000" / "status.safetensors"
    status.write_bytes(status.read_bytes()[:-3] + b"\x00\x01\x02")
    code, _, err = run(capsys, "forget", "--model", model_dir, "--ids", ids_file(tmp_path, [3]), "--request-id", "c")
    assert code == 2 and "corrupted" in one_line_error(err)
    assert Ledger(model_dir / "ledger.sqlite").get("c").state == "failed"


def test_missing_or_corrupted_slice_checkpoint_is_rebuilt_and_reported(capsys, model_dir, tmp_path):
    ids = slice_ids(model_dir, 0, 2, 1)
    stages = sorted((model_dir / "stages" / "shard-00").iterdir())
    stage2 = next(p for p in stages if p.name.startswith("stage-02-"))
    stage1 = next(p for p in stages if p.name.startswith("stage-01-"))
    (stage2 / "model.safetensors").write_bytes(b"not a checkpoint")
    shutil.rmtree(stage1)
    code, out, err = run(capsys, "forget", "--model", model_dir, "--ids", ids_file(tmp_path, ids), "--mode", "exact",
                         "--request-id", "d", "--json")
    assert code == 0, err
    shard = json.loads(out)["metrics"]["shards"][0]
    assert shard["resumed_from_stage"] == 0 and shard["trained_stages"] == [1, 2, 3]
    assert any("corrupted" in w for w in shard["warnings"])
    # Rebuilt under the same history key (deleting from slice 2 does not change stages 1 and 2); the
    # corrupted copy was moved aside and is kept for inspection: its history is a current one, so it held
    # no deleted id. A deletion from slice 1 makes that history stale: then the copy is purged too.
    assert (stage2 / "model.safetensors").read_bytes() != b"not a checkpoint" and stage1.exists()
    (aside,) = [p for p in (model_dir / "stages" / "shard-00").iterdir() if ".corrupt-" in p.name]
    assert aside.name.startswith(stage2.name)
    code, out, err = run(
        capsys,
        "forget",
        "--model",
        model_dir,
        "--ids",
        ids_file(tmp_path, slice_ids(model_dir, 0, 1, 1)),
        "--mode",
        "exact",
        "--request-id",
        "e",
        "--json",
    )
    assert code == 0, err
    assert not aside.exists()
