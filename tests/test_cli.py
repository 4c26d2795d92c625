"""The command line: info, train/evaluate on digits, and one-line errors with exit status 2."""

import json
import os
import subprocess
import sys

import pytest

from unlearnkit.cli import main
from unlearnkit.data import DATASETS
from unlearnkit.models import MODELS


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_info_json_lists_everything(capsys):
    code, out, _ = run(capsys, "info", "--json")
    info = json.loads(out)
    assert code == 0
    assert {"datasets", "models", "methods", "metrics"} <= set(info)
    assert set(info["datasets"]) == set(DATASETS)
    assert set(info["models"]) == set(MODELS)


def test_train_then_evaluate(capsys, tmp_path):
    out_dir = tmp_path / "digits"
    code, out, err = run(capsys, "train", "--dataset", "digits", "--model", "mlp", "--epochs", "3", "--out", str(out_dir))
    assert code == 0, err
    assert f"checkpoint written to {out_dir}" in out
    assert "epoch   3/3" in err
    code, out, _ = run(capsys, "evaluate", "--checkpoint", str(out_dir), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["test_acc"] > 50


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--dataset", "imagenet", "--out", "X"], "unknown data set 'imagenet'"),
        (["train", "--dataset", "digits", "--model", "gpt", "--out", "X"], "unknown model 'gpt'"),
        (["train", "--dataset", "digits", "--request", "forget:everything", "--out", "X"], "unknown request kind"),
        (["train", "--dataset", "digits", "--request", "class:11", "--out", "X"], "class 11"),
        (["train", "--dataset", "fashion-mnist", "--data-dir", "EMPTY", "--out", "X"], "apt-get install dataset-fashion-mnist"),
        (["train", "--dataset", "digits", "--set", "schedule=sometimes", "--out", "X"], "unknown schedule"),
        (["evaluate", "--checkpoint", "NOWHERE"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, argv, message):
    argv = [str(tmp_path / a) if a in ("X", "EMPTY", "NOWHERE") else a for a in argv]
    (tmp_path / "EMPTY").mkdir()
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("unlearnkit: error:") and err.count("\n") == 1
    assert message in err
    assert not (tmp_path / "X").exists()


def test_console_script_entry_point():
    result = subprocess.run([sys.executable, "-m", "unlearnkit.cli", "info", "--json"], capture_output=True, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0 and "small-cnn" in result.stdout
