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
    code, out, err = run(
        capsys, "train", "--dataset", "digits", "--model", "mlp", "--epochs", "3", "--out", str(out_dir)
    )
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
        (["train", "--dataset", "digits", "--request", "forget:everything", "--out", "X"], "unknown request type"),
        (["train", "--dataset", "digits", "--request", "class:11", "--out", "X"], "class 11"),
        (
            ["train", "--dataset", "fashion-mnist", "--data-dir", "EMPTY", "--out", "X"],
            "apt-get install dataset-fashion-mnist",
        ),
        (
            ["train", "--dataset", "digits", "--set", "schedule=sometimes", "--out", "X"],
            "option schedule of the training recipe must be one of",
        ),
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
    result = subprocess.run([sys.executable, "-m", "unlearnkit", "info", "--json"], capture_output=True, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0 and "small-cnn" in result.stdout


def test_unlearn_then_evaluate_against_a_reference(capsys, tmp_path):
    original, unlearned, retrained = tmp_path / "o", tmp_path / "u", tmp_path / "r"
    assert (
        run(capsys, "train", "--dataset", "digits", "--model", "mlp", "--epochs", "10", "--out", str(original))[0] == 0
    )
    code, out, err = run(capsys, "unlearn", "--checkpoint", str(original), "--method", "salun", "--request", "class:3",
                         "--set", "epochs=3", "--set", "lr=0.02", "--out", str(unlearned))
    assert code == 0, err
    assert "salun unlearned class:3" in out
    assert run(capsys, "unlearn", "--checkpoint", str(original), "--method", "retrain", "--request", "class:3",
               "--out", str(retrained))[0] == 0
    code, out, err = run(capsys, "evaluate", "--checkpoint", str(unlearned), "--reference", str(retrained), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["request"] == "class:3"
    assert {
        "UA",
        "RA",
        "TA",
        "MIA",
        "avg_gap",
        "FR",
        "MRR",
        "rte_s",
        "rte_ratio",
        "js_forget",
        "l2_to_reference",
    } <= set(report)
    assert report["UA"] > 50

    # KLoM against a bank of two more retrained models, and the relearning attack beside Retrain's
    bank = []
    for seed in ("1", "2"):
        bank += ["--bank", str(tmp_path / f"r{seed}")]
        assert run(capsys, "unlearn", "--checkpoint", str(original), "--method", "retrain", "--request", "class:3",
                   "--seed", seed, "--out", bank[-1])[0] == 0
    code, out, err = run(capsys, "evaluate", "--checkpoint", str(unlearned), "--reference", str(retrained), *bank,
                         "--relearn", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["klom_bank"] == 2 and 0 <= report["KLoM_forget_median"] <= report["KLoM_forget_p95"]
    assert report["relearn_steps_retrain"] is not None and report["relearn_control_steps_retrain"] is None
    assert "relearn_steps" in report and "relearn_samples" in report
    code, _, err = run(capsys, "evaluate", "--checkpoint", str(unlearned), "--bank", bank[1])
    assert code == 2 and "at least two" in err
    # flags that measure forgetting are refused, not ignored, on a checkpoint without a request; a named
    # --original must exist
    for flags in (bank, ["--reference", str(retrained)], ["--relearn"]):
        code, out, err = run(capsys, "evaluate", "--checkpoint", str(original), *flags)
        assert code == 2 and "give --request" in err and err.count("\n") == 1, (flags, err)
    code, _, err = run(capsys, "evaluate", "--checkpoint", str(unlearned), "--original", str(tmp_path / "gone"))
    assert code == 2 and "does not exist" in err


@pytest.mark.parametrize("extra, message", [
    (["--method", "magic"], "unknown method 'magic'"),
    (["--method", "salun", "--set", "speed=3"], "has no option"),
    (["--method", "salun", "--set", "lr"], "use KEY=VALUE"),
])
def test_unlearn_bad_input(capsys, tmp_path, extra, message):
    original = tmp_path / "o"
    run(capsys, "train", "--dataset", "digits", "--model", "mlp", "--epochs", "1", "--out", str(original))
    code, _, err = run(capsys, "unlearn", "--checkpoint", str(original), "--request", "class:3", "--out",
                       str(tmp_path / "u"), *extra)
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "u").exists()


def test_info_lists_methods_and_metrics(capsys):
    from unlearnkit.evaluation import METRIC_DOCS
    from unlearnkit.methods import METHODS

    info = json.loads(run(capsys, "info", "--json")[1])
    assert set(info["methods"]) == set(METHODS) and set(info["metrics"]) == set(METRIC_DOCS)
    assert info["methods"]["salun"]["config"]["mask_fraction"]["default"] == 0.5


def test_demo_runs_the_whole_job_and_reuses_checkpoints(tmp_path, capsys):
    from unlearnkit.demo import run_demo

    kwargs = dict(request_spec="class:3", epochs=5, device="cpu", dataset="digits", model="mlp",
                  methods=("salun", "boundary_shrink"), overrides={"salun": {"batch_size": 32, "lr": 0.02}})
    rows = run_demo(tmp_path, **kwargs)
    assert [r["method"] for r in rows] == ["Retrain", "original (no unlearning)", "salun", "boundary_shrink"]
    out = capsys.readouterr().out
    assert "Forgetting class:3" in out and "% retrain" in out
    stamp = (tmp_path / "original" / "model.safetensors").stat().st_mtime_ns
    run_demo(tmp_path, **kwargs)
    assert (tmp_path / "original" / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not retrained


def test_bench_methods_keep_commas_inside_variants():
    from unlearnkit.cli.common import split_top_level

    assert split_top_level("finetune, salun[lr=0.01,epochs=2],ssd") == ["finetune", "salun[lr=0.01,epochs=2]", "ssd"]


def test_bench_requests_must_be_the_suites(capsys):
    from unlearnkit.cli import main

    code = main(["bench", "--suite", "digits-tiny", "--requests", "class:9", "--out", "/nonexistent/never-written"])
    assert code == 2 and "not in suite" in capsys.readouterr().err


@pytest.mark.parametrize("seeds, message", [("0", "selects no seed"), ("1,x", "comma list of integers"),
                                            ("-1", "distinct integers >= 0"), ("1,1", "distinct integers >= 0"),
                                            (",", "distinct integers >= 0")])
def test_bench_seeds_are_checked(capsys, seeds, message):
    from unlearnkit.cli import main

    code = main(["bench", "--suite", "digits-tiny", f"--seeds={seeds}", "--out", "/nonexistent/never-written"])
    assert code == 2 and message in capsys.readouterr().err


def test_bench_seed_syntax():
    from unlearnkit.cli.bench import parse_seeds

    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("2,") == [2] and parse_seeds("0,2") == [0, 2]
