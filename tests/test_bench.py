"""Suites parse and validate; the runner caches, resumes after interruption, and the report has the
paper layout."""

import json

import pytest

from unlearnkit.bench import load_records, parse_variant, run_suite, suite_from_dict, write_report
from unlearnkit.bench.runner import record_path
from unlearnkit.errors import UnlearnKitError

SUITE = {
    "name": "micro",
    "dataset": "digits[600,200]",
    "model": "mlp",
    "requests": ["class:1"],
    "methods": ["random_label[epochs=3,lr=0.02,batch_size=32]"],
    "seeds": [0],
    "train": {"epochs": 10, "batch_size": 64},
    "sweep": {"boundary_shrink": {"lr": [0.005, 0.01], "batch_size": [32]}},
    "mia_shadow_size": 200,
}


def test_variants_and_sweeps():
    suite = suite_from_dict(SUITE)
    labels = [v.label for v in suite.variants]
    assert labels == ["random_label[batch_size=32,epochs=3,lr=0.02]", "boundary_shrink[batch_size=32,lr=0.005]",
                      "boundary_shrink[batch_size=32,lr=0.01]"]
    assert parse_variant("salun").options == ()
    assert suite.method_options(suite.variants[1]) == {"batch_size": 32, "lr": 0.005}


@pytest.mark.parametrize("change, message", [
    ({"methods": ["nope"]}, "unknown method 'nope'"),
    ({"methods": ["finetune[speed=3]"]}, "has no option"),
    ({"methods": ["finetune[lr]"]}, "use key=value"),
    ({"train": {"epoch": 3}}, "unknown training option"),
    ({"klom_bank": 1}, "klom_bank must be"),
    ({"klom_bank": "3"}, "klom_bank must be"),
])
def test_bad_suites(change, message):
    with pytest.raises(UnlearnKitError, match=message):
        suite_from_dict({**SUITE, **change})


def test_run_resume_and_report(tmp_path, monkeypatch):
    suite = suite_from_dict(SUITE)
    out, cache = tmp_path / "out", tmp_path / "cache"
    import unlearnkit.bench.runner as runner

    real_unlearn = runner.unlearn
    calls = []

    def flaky_unlearn(*args, **kwargs):
        calls.append(args[3])
        if len(calls) == 3:  # (1: the cached retrain, 2: the first variant)
            raise KeyboardInterrupt  # an interruption in the middle of the suite
        return real_unlearn(*args, **kwargs)

    monkeypatch.setattr(runner, "unlearn", flaky_unlearn)
    with pytest.raises(KeyboardInterrupt):
        run_suite(suite, out, cache_dir=cache, device="cpu", log=lambda m: None)
    first = load_records(out)
    assert {r["variant"] for r in first} == {"retrain", "original", suite.variants[0].label}
    monkeypatch.setattr(runner, "unlearn", real_unlearn)
    originals = sorted((cache / "originals").iterdir())
    new = run_suite(suite, out, cache_dir=cache, device="cpu", log=lambda m: None)
    assert [r["variant"] for r in new] == [v.label for v in suite.variants[1:]]  # only what was missing
    assert sorted((cache / "originals").iterdir()) == originals  # the original was trained once
    assert run_suite(suite, out, cache_dir=cache, device="cpu", log=lambda m: None) == []

    # A record made with other resolved options (e.g. before a method's defaults were re-tuned) is stale.
    first_path = record_path(out, "class:1", suite.variants[0].slug, 0)
    stale = json.loads(first_path.read_text())
    stale["options"]["lr"] = stale["options"]["lr"] * 10
    first_path.write_text(json.dumps(stale))
    messages = []
    rerun = run_suite(suite, out, cache_dir=cache, device="cpu", log=messages.append)
    assert [r["variant"] for r in rerun] == [suite.variants[0].label]
    assert sum("stale record" in m for m in messages) == 1
    assert json.loads(first_path.read_text())["options"]["lr"] == rerun[0]["options"]["lr"]

    records = load_records(out)
    keys = {
        "suite",
        "dataset",
        "model",
        "request",
        "method",
        "seed",
        "UA",
        "RA",
        "TA",
        "MIA",
        "avg_gap",
        "rte_s",
        "retrain_s",
    }
    for record in records:
        assert keys <= set(record), keys - set(record)
        assert record["machine"]["cpu_count"] and record["versions"]["torch"]
    retrain = json.loads(record_path(out, "class:1", "retrain", 0).read_text())
    assert retrain["avg_gap"] == 0 and retrain["UA"] == 100.0

    text = write_report(out)
    assert "| Retrain |" in text and "| Original (no unlearning) |" in text
    assert "**" in text  # a best cell is marked
    assert "Variant selection" in text and "boundary_shrink[batch_size=32,lr=0.005]" in text
    for name in ("report.md", "results.csv", "results.tex", "plots/gap_vs_time.png"):
        assert (out / name).exists(), name
    header = (out / "results.csv").read_text().splitlines()[0]
    assert header.startswith("request,variant,seeds,UA_mean,UA_std")


def test_report_without_records(tmp_path):
    with pytest.raises(UnlearnKitError, match="no benchmark records"):
        write_report(tmp_path)


def test_report_stats_and_provenance():
    from unlearnkit.bench import provenance, stats

    assert stats([1.0, None, 3.0, float("nan")]) == (2.0, pytest.approx(2 ** 0.5), 2)
    assert stats([None])[2] == 0 and stats([5.0]) == (5.0, 0.0, 1)
    record = {"machine": {"processor": "X", "cpu_count": 2, "torch_threads": 1}, "versions": {"torch": "9"}}
    assert provenance(record, shared_cpu=True) == "Machine: X, 2 CPUs (shared), torch threads 1. Versions: torch 9."


def test_cached_models_reproduce_from_their_recorded_settings(tmp_path):
    """Each cached model records every input that decides its weights (``cache_key``: recipe, data, seed, torch
    build, device, threads); training again from those settings gives the same weights bit for bit, and a model
    made under other settings (here: another thread count) is never taken for it."""
    import torch

    from unlearnkit import api
    from unlearnkit.bench.runner import ModelCache, config_hash
    from unlearnkit.data import load_dataset
    from unlearnkit.requests import build_request
    from unlearnkit.training import TrainConfig

    suite = suite_from_dict(SUITE)
    data = load_dataset(suite.dataset)
    quiet = lambda m: None  # noqa: E731
    path, key = ModelCache(tmp_path / "a").original(suite, data, 0, None, "cpu", quiet)
    manifest = json.loads((path / "manifest.json").read_text())
    recorded = manifest["cache_key"]
    assert recorded == json.loads(json.dumps(key)) and path.name == config_hash(key)
    assert recorded["runtime"] == manifest["runtime"]
    assert recorded["runtime"]["torch"] == torch.__version__ and recorded["runtime"]["torch_threads"] == 1
    assert recorded["runtime"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()

    # Train it again from nothing but the recorded settings.
    threads = torch.get_num_threads()
    torch.set_num_threads(recorded["runtime"]["torch_threads"])
    try:
        again = api.train(load_dataset(suite.dataset), recorded["model"],
                          config=TrainConfig.from_dict(recorded["recipe"]),
                          seed=recorded["seed"], model_options=recorded["model_options"],
                          device=recorded["runtime"]["device"], out=tmp_path / "again")
    finally:
        torch.set_num_threads(threads)
    assert json.loads((again.path / "manifest.json").read_text())["weights"]["sha256"] == manifest["weights"]["sha256"]

    # The retrained model too: two fresh caches, the same bits.
    request = build_request("class:1", data, 0)
    hashes = []
    for name in ("a", "b"):
        cache = ModelCache(tmp_path / name)
        original_path, original_key = cache.original(suite, data, 0, request, "cpu", quiet)
        retrained = cache.retrained(original_path, original_key, request, data, "cpu", quiet)
        retrained_manifest = json.loads((retrained / "manifest.json").read_text())
        assert retrained_manifest["cache_key"]["runtime"]["torch_threads"] == 1
        hashes.append(retrained_manifest["weights"]["sha256"])
    assert hashes[0] == hashes[1]

    # Another thread count is another key, hence another model; a directory at a key's path that records other
    # settings (or none, as before keys held the runtime) is refused, not reused.
    torch.set_num_threads(2)
    try:
        two = ModelCache.original_key(suite, data, 0, device="cpu")
    finally:
        torch.set_num_threads(threads)
    assert two["runtime"]["torch_threads"] == 2 and config_hash(two) != config_hash(key)
    del manifest["cache_key"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UnlearnKitError, match="made under other settings"):
        ModelCache(tmp_path / "a").original(suite, data, 0, None, "cpu", quiet)


def test_klom_bank_gives_every_record_klom(tmp_path):
    suite = suite_from_dict({**SUITE, "methods": ["rum", "scar", "neggrad_plus"], "sweep": {}, "klom_bank": 2,
                             "requests": ["random:0.1"], "train": {"epochs": 5, "batch_size": 64}})
    out, cache = tmp_path / "out", tmp_path / "cache"
    run_suite(suite, out, cache_dir=cache, device="cpu", log=lambda m: None)
    records = {r["variant"]: r for r in load_records(out)}
    assert set(records) == {"retrain", "original", "rum", "scar", "neggrad_plus"}  # the new methods run in suites
    for record in records.values():
        assert record["klom_bank"] == 2 and record["klom_bank_seeds"] == [3000, 3001]
        assert 0 <= record["KLoM_forget_median"] <= record["KLoM_forget_p95"]
        assert {"KLoM_retain_median", "KLoM_test_p95"} <= set(record)
    # three retrained models per (request, seed): the reference and the two of the bank
    assert len(list((cache / "retrained").iterdir())) == 3
    # the original, never unlearned, is further from the bank on D_f than the retrained reference is
    assert records["original"]["KLoM_forget_median"] > records["retrain"]["KLoM_forget_median"]


def test_a_record_is_stale_when_a_method_it_runs_has_other_defaults(tmp_path):
    """RUM runs NegGrad+ at NegGrad+'s defaults: those belong to RUM's record, so a NegGrad+ default changed since
    (e.g. its ascent cap) makes RUM's records stale although RUM's own options did not change."""
    from unlearnkit.bench.runner import _record_is_current, _resolved_options
    from unlearnkit.methods import METHODS, make_config, recorded_config

    suite = suite_from_dict({**SUITE, "methods": ["rum"], "sweep": {}})
    options = _resolved_options(suite, suite.variants[0])
    inner = options["uses:neggrad_plus"]
    assert inner == json.loads(json.dumps(recorded_config(METHODS["neggrad_plus"],
                                                          make_config(METHODS["neggrad_plus"], {}))))
    assert inner["ascent_cap"] == 2.0
    path = tmp_path / "seed0.json"
    path.write_text(json.dumps({"options": options}))
    messages = []
    assert _record_is_current(path, options, messages.append)
    before_cap = {**options, "uses:neggrad_plus": {k: v for k, v in inner.items() if k != "ascent_cap"}}
    path.write_text(json.dumps({"options": before_cap}))  # a record made before NegGrad+ had its cap
    assert not _record_is_current(path, options, messages.append)
    assert messages == [f"stale record {path} (options differ from the current config): running it again"]
