"""`unlearnkit import` and `unlearnkit data prepare | show`: bad input is one line on stderr, exit 2, nothing
written."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from safetensors.torch import save_file

from unlearnkit.cli import main
from unlearnkit.data.datasets import USER_DATA_CACHE as _CACHE

NET = textwrap.dedent('''
    import torch.nn as nn

    def build(num_classes=3):
        return nn.Sequential(nn.Flatten(), nn.Linear(16, num_classes))
''')


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 2)):
        for c in ("a", "b", "c"):
            (tmp_path / "pics" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (4, 4), dtype=np.uint8)).save(
                    tmp_path / "pics" / split / c / f"{i}.png"
                )
    (tmp_path / "cli_net.py").write_text(NET)
    torch.manual_seed(0)
    save_file(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).state_dict(), str(tmp_path / "w.safetensors"))
    monkeypatch.chdir(tmp_path)
    _CACHE.clear()
    yield tmp_path
    import sys

    sys.modules.pop("cli_net", None)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_import_then_unlearn_and_data_commands(workspace, capsys):
    code, out, err = run(capsys, "import", "--factory", "cli_net:build", "--factory-args", '{"num_classes": 3}',
                         "--weights", "w.safetensors", "--dataset", "imagefolder:pics", "--out", "runs/imp")
    assert code == 0, err
    assert "classifier layer '1' (the last linear layer)" in err and "the default recipe" in err
    manifest = json.loads((workspace / "runs" / "imp" / "manifest.json").read_text())
    assert manifest["model"]["args"] == {"factory": "cli_net:build", "factory_args": {"num_classes": 3},
                                         "classifier_layer": "1"}
    code, out, err = run(capsys, "--threads", "1", "unlearn", "--checkpoint", "runs/imp", "--method", "retrain",
                         "--request", "class:1", "--set", "epochs=1", "--out", "runs/re")
    assert code == 0, err
    # an existing checkpoint is replaced only with --overwrite
    code, _, err = run(capsys, "import", "--factory", "cli_net:build", "--weights", "w.safetensors",
                       "--dataset", "imagefolder:pics", "--out", "runs/imp")
    assert code == 2 and "--overwrite" in err
    code, out, err = run(
        capsys, "data", "prepare", "--dataset", "imagefolder:pics", "--resize", "5x5", "--out", "runs/p"
    )
    assert code == 0, err
    assert "prepared:runs/p" in out
    code, out, err = run(capsys, "data", "show", "prepared:runs/p", "--json")
    assert code == 0 and json.loads(out)["shape"] == [1, 5, 5]


@pytest.mark.parametrize("argv, message", [
    (["--factory-args", "{num_classes: 3}"], "--factory-args is not JSON"),
    (["--factory-args", "[3]"], "must be a JSON object"),
    (["--factory", "cli_net:missing"], "has no 'missing'"),
    (["--factory", "nowhere_pkg.mod:build"], "cannot import the factory's module"),
    (["--factory-args", '{"num_classes": 4}'], "shape mismatch"),
    (["--dataset", "imagefolder:nothere"], "does not exist"),
    (["--dataset", "imagefolder:pics/train"], "has no train/ folder"),
    (["--dataset", "npz:x.npz", "--resize", "8x8"], "--resize applies to imagefolder"),
    (["--resize", "8by8"], "bad resize"),
    (["--classifier-layer", "0"], "is a Flatten"),
    (["--recipe", "nope.toml"], "cannot read recipe"),
    (["--weights", "w.pt"], "weights file w.pt does not exist"),
    (["--out", "pics/train/a"], "lies inside the input"),
])
def test_bad_import_is_one_line_exit_2_nothing_written(workspace, capsys, argv, message):
    base = {
        "--factory": "cli_net:build",
        "--weights": "w.safetensors",
        "--dataset": "imagefolder:pics",
        "--out": "runs/imp",
    }
    args = dict(base)
    extra = []
    for key, value in zip(argv[::2], argv[1::2]):
        if key in args:
            args[key] = value
        else:
            extra += [key, value]
    flat = [x for kv in args.items() for x in kv] + extra
    before = sorted(p.relative_to(workspace) for p in workspace.rglob("*") if "__pycache__" not in p.parts)
    code, out, err = run(capsys, "import", *flat)
    assert code == 2, err
    assert err.startswith("unlearnkit: error: ") and err.count("\n") == 1 and message in err, err
    after = sorted(p.relative_to(workspace) for p in workspace.rglob("*") if "__pycache__" not in p.parts)
    assert after == before


def test_bad_prepare_is_one_line_and_unlearn_from_elsewhere_names_the_factory(workspace, capsys, tmp_path_factory,
                                                                             monkeypatch):
    (workspace / "pics" / "train" / "b" / "1.png").write_bytes(b"\x89PNG broken")
    code, _, err = run(capsys, "data", "prepare", "--dataset", "imagefolder:pics", "--out", "runs/p")
    assert code == 2 and "cannot read image" in err and not (workspace / "runs" / "p").exists()
    code, _, err = run(capsys, "data", "prepare", "--dataset", "imagefolder:pics", "--out", "pics/inside")
    assert code == 2 and "input" in err
    (workspace / "pics" / "train" / "b" / "1.png").unlink()
    assert run(capsys, "import", "--factory", "cli_net:build", "--weights", "w.safetensors", "--dataset",
               "imagefolder:pics", "--out", "runs/imp")[0] == 0
    import sys

    sys.modules.pop("cli_net", None)
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(elsewhere)
    code, _, err = run(capsys, "unlearn", "--checkpoint", str(workspace / "runs" / "imp"), "--method", "finetune",
                       "--request", "class:0", "--out", "u")
    assert code == 2 and "cannot import the factory's module 'cli_net'" in err and err.count("\n") == 1
