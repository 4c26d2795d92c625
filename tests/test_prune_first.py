"""Prune first, then unlearn: `unlearn --prune`, the suite's `prune` key and `bench --prune` — pruned originals
are cached by a key that includes the spec, Retrain keeps the pruned original's mask, and the reference
Retrain takes the suite's `[options.retrain]`."""

import json

import pytest
import torch

from unlearnkit import api
from unlearnkit.bench import load_records, run_suite, suite_from_dict, with_prune
from unlearnkit.checkpoint import load_checkpoint
from unlearnkit.cli import main
from unlearnkit.errors import UnlearnKitError
from unlearnkit.masks import prune_masks
from unlearnkit.sparsity import global_sparsity, prune_first_finetune_epochs
from unlearnkit.training import TrainConfig

SUITE = {
    "name": "micro-prune",
    "dataset": "digits[600,200]",
    "model": "mlp",
    "requests": ["class:1"],
    "methods": ["finetune[epochs=2,batch_size=32]"],
    "seeds": [0],
    "train": {"epochs": 8, "batch_size": 64},
    "prune": "omp:0.8",
    "prune_finetune_epochs": 1,
    "mia_shadow_size": 200,
}


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_same_mask_and_zeros(model, masks):
    got = prune_masks(model)
    assert set(got) == set(masks)
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert torch.equal(got[name].cpu(), mask.cpu()), name
        assert (params[name].detach().cpu()[~mask.cpu()] == 0).all(), name


def test_suite_prune_key_is_parsed_and_validated():
    suite = suite_from_dict({**SUITE, "prune": "OMP:0.80:scope=layer"})
    assert suite.prune == "omp:0.8:scope=layer" and suite.prune_finetune_epochs == 1
    assert with_prune(suite, None).prune is None and with_prune(suite, None).prune_finetune_epochs is None
    assert with_prune(suite, "imp:0.5").prune == "imp:0.5"
    assert prune_first_finetune_epochs("omp:0.9") == 2
    assert (
        prune_first_finetune_epochs("omp:0.9:rewind_epoch=1") == 0 and prune_first_finetune_epochs("synflow:0.9") == 0
    )


@pytest.mark.parametrize("change, message", [
    ({"prune": "omp:1.5"}, "option sparsity of pruning spec must be"),
    ({"prune": "magnitude:0.5"}, "unknown pruning method"),
    ({"prune": None}, "need a prune spec"),
    ({"prune_finetune_epochs": -1}, "prune_finetune_epochs must be"),
    ({"prune_finetune_lr": 0}, "prune_finetune_lr must be"),
    ({"options": {"retrain": {"use_corrections": "maybe"}}}, "use_corrections"),
])
def test_bad_prune_suites(change, message):
    raw = {k: v for k, v in {**SUITE, **change}.items() if v is not None}
    with pytest.raises(UnlearnKitError, match=message):
        suite_from_dict(raw)


def test_bench_prunes_originals_caches_them_by_spec_and_retrain_keeps_the_mask(tmp_path):
    cache = tmp_path / "cache"
    suite = suite_from_dict(SUITE)
    run_suite(suite, tmp_path / "sparse", cache_dir=cache, device="cpu", log=lambda m: None)
    records = load_records(tmp_path / "sparse")
    assert {r["variant"] for r in records} == {"retrain", "original", suite.variants[0].label}
    for record in records:
        assert record["prune"] == "omp:0.8" and record["sparsity"] == pytest.approx(0.8, abs=1e-4)
    original = load_checkpoint(records[0]["original"])
    assert original.manifest["kind"] == "pruned" and original.manifest["pruning"]["finetune"]["epochs"] == 1
    masks = {n: m.clone() for n, m in prune_masks(original.model).items()}
    assert global_sparsity(original.model) == pytest.approx(0.8, abs=1e-4)
    retrained = load_checkpoint(records[0]["retrained"])
    assert_same_mask_and_zeros(retrained.model, masks)  # the reference has the same sparsity pattern
    dense_parent = original.manifest["parent"]["path"]
    assert load_checkpoint(dense_parent).manifest["kind"] == "original"

    # Dense and another sparsity share the dense original; each spec has its own pruned original and Retrain.
    run_suite(with_prune(suite, None), tmp_path / "dense", cache_dir=cache, device="cpu", log=lambda m: None)
    run_suite(with_prune(suite, "omp:0.5", finetune_epochs=1), tmp_path / "half", cache_dir=cache, device="cpu",
              log=lambda m: None)
    assert len(list((cache / "originals").iterdir())) == 1
    assert len(list((cache / "pruned").iterdir())) == 2
    assert len(list((cache / "retrained").iterdir())) == 3
    dense_records = load_records(tmp_path / "dense")
    assert all(r["prune"] is None and r["sparsity"] == 0.0 for r in dense_records)
    assert not prune_masks(load_checkpoint(dense_records[0]["retrained"]).model)
    half = load_records(tmp_path / "half")
    assert all(r["sparsity"] == pytest.approx(0.5, abs=1e-4) for r in half)
    # Resuming finds everything done.
    assert run_suite(suite, tmp_path / "sparse", cache_dir=cache, device="cpu", log=lambda m: None) == []


def test_reference_retrain_takes_the_suites_retrain_options(tmp_path):
    raw = {**SUITE, "requests": ["backdoor:0.1:0"], "methods": ["retrain[use_corrections=true]"],
           "options": {"retrain": {"use_corrections": False}}}
    raw.pop("prune"), raw.pop("prune_finetune_epochs")
    suite = suite_from_dict(raw)
    run_suite(suite, tmp_path / "out", cache_dir=tmp_path / "cache", device="cpu", log=lambda m: None)
    records = {r["variant"]: r for r in load_records(tmp_path / "out")}
    assert records["retrain"]["options"] == {"use_corrections": False}
    assert records["retrain[use_corrections=true]"]["options"]["use_corrections"] is True
    for record in records.values():
        assert "ASR" in record
    # The original learned the trigger; both retrained models did not see it.
    assert records["original"]["ASR"] > 50
    assert records["retrain"]["ASR"] < 30 and records["retrain[use_corrections=true]"]["ASR"] < 30
    # The removal-Retrain has its own cache entry (options are part of the key).
    default = suite_from_dict({**raw, "options": {}})
    run_suite(default, tmp_path / "out2", cache_dir=tmp_path / "cache", device="cpu", log=lambda m: None)
    assert len(list((tmp_path / "cache" / "retrained").iterdir())) == 2


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("prune-first") / "digits"
    api.train("digits[800,300]", "mlp", config=TrainConfig(epochs=8, batch_size=64), device="cpu", out=out)
    return out


def test_unlearn_command_prunes_first_and_the_mask_holds(capsys, tmp_path, digits_checkpoint):
    pruned_out, out = tmp_path / "pruned", tmp_path / "unlearned"
    code, stdout, err = run(capsys, "unlearn", "--checkpoint", digits_checkpoint, "--method", "finetune",
                            "--request", "class:1", "--set", "epochs=2", "--prune", "omp:0.8",
                            "--prune-finetune-epochs", "1", "--pruned-out", pruned_out, "--out", out, "--device", "cpu")
    assert code == 0, err
    assert "pruned by omp:0.8 to sparsity 0.8000" in stdout
    pruned = load_checkpoint(pruned_out)
    assert pruned.manifest["kind"] == "pruned" and pruned.manifest["pruning"]["finetune"]["epochs"] == 1
    masks = {n: m.clone() for n, m in prune_masks(pruned.model).items()}
    unlearned = load_checkpoint(out)
    assert_same_mask_and_zeros(unlearned.model, masks)
    manifest = unlearned.manifest
    assert manifest["pruning"]["spec"] == "omp:0.8"
    assert manifest["parent"]["path"] == str(pruned_out)
    assert manifest["parent"]["pruned_from"]["path"] == str(digits_checkpoint)
    # evaluate finds the pruned original through the parent link
    code, stdout, err = run(
        capsys, "evaluate", "--checkpoint", out, "--json", "--device", "cpu", "--mia-shadow-size", "100"
    )
    assert code == 0, err
    assert "MRR" in json.loads(stdout)

    # Retrain of the model pruned in memory (no --pruned-out) keeps the same mask: pruning and its fine-tune
    # are deterministic, and Retrain trains a fresh initialisation under the pruned original's mask.
    retrained_out = tmp_path / "retrained"
    code, stdout, err = run(capsys, "unlearn", "--checkpoint", digits_checkpoint, "--method", "retrain",
                            "--request", "class:1", "--prune", "omp:0.8", "--prune-finetune-epochs", "1",
                            "--out", retrained_out, "--device", "cpu")
    assert code == 0, err
    retrained = load_checkpoint(retrained_out)
    assert_same_mask_and_zeros(retrained.model, masks)
    assert retrained.manifest["parent"] == {"path": str(digits_checkpoint),
                                            "sha256": load_checkpoint(digits_checkpoint).manifest["weights"]["sha256"],
                                            "pruned_first": "omp:0.8"}
    code, stdout, err = run(capsys, "evaluate", "--checkpoint", retrained_out, "--json", "--device", "cpu",
                            "--mia-shadow-size", "100")
    assert code == 0, err
    assert "MRR" not in json.loads(stdout)  # the dense parent is not this model's original


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--prune", "omp:2"], "option sparsity of pruning spec must be"),
        (["--prune", "omp:0.5", "--set", "speed=3"], "has no option"),
        (["--pruned-out", "P"], "need --prune SPEC"),
        (
            ["--prune", "synflow:0.5", "--prune-finetune-epochs", "-1"],
            "option --prune-finetune-epochs of unlearn must be an integer in [0, ",
        ),
    ],
)
def test_bad_unlearn_prune_input_is_one_line(capsys, tmp_path, digits_checkpoint, argv, message):
    code, _, err = run(
        capsys,
        "unlearn",
        "--checkpoint",
        digits_checkpoint,
        "--method",
        "finetune",
        "--request",
        "class:1",
        "--out",
        tmp_path / "x",
        "--device",
        "cpu",
        *argv,
    )
    assert code == 2
    assert err.startswith("unlearnkit: error:") and err.count("\n") == 1 and message in err


def test_bench_command_prune_option(capsys, tmp_path, monkeypatch):
    suite_file = tmp_path / "micro.toml"
    suite_file.write_text("\n".join([
        'name = "micro"', 'dataset = "digits[400,150]"', 'model = "mlp"', 'requests = ["random:0.1"]',
        'methods = ["finetune[epochs=1]"]', "seeds = [0]", "mia_shadow_size = 100", "", "[train]", "epochs = 4", ""]))
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run(
        capsys, "bench", "--suite", suite_file, "--prune", "omp:0.6", "--cache", "cache", "--device", "cpu"
    )
    assert code == 0, err
    out = tmp_path / "benchmarks" / "results" / "micro-omp_0.6"
    assert (out / "report.md").exists()
    assert all(r["sparsity"] == pytest.approx(0.6, abs=1e-4) for r in load_records(out))
    code, _, err = run(capsys, "bench", "--suite", suite_file, "--prune", "none", "--cache", "cache", "--device", "cpu",
                       "--no-report")
    assert code == 0, err
    assert all(r["prune"] is None for r in load_records(tmp_path / "benchmarks" / "results" / "micro-dense"))
