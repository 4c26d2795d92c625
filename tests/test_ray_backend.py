"""The execution backends: Ray tasks give the in-process results, bitwise, in job order (docs/scale.md).

One local Ray instance (2 CPUs) serves the whole module; a RayBackend without an address reuses it."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from unlearnkit.backends import InProcess, RayBackend, make_backend
from unlearnkit.cli import main
from unlearnkit.errors import UnlearnKitError
from unlearnkit.sisa import SisaModel, train_sisa
from unlearnkit.training import TrainConfig

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'unlearnkit[ray]')")

CONFIG = TrainConfig(epochs=2, batch_size=64, lr=0.05)


@pytest.fixture(scope="module")
def ray_instance():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def assert_same_states(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for sa, sb in zip(a, b):
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key


def test_results_come_in_job_order_whatever_order_tasks_finish(ray_instance, tmp_path):
    def slow(job):  # defined here so that Ray ships it by value to its workers
        index, folder = job
        if index == 0:  # the first job finishes only once the two others have (whatever the load on this machine)
            deadline = time.monotonic() + 120
            while len(list(Path(folder).glob("done-*"))) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
        else:
            (Path(folder) / f"done-{index}").touch()
        return index * 10

    jobs = [(0, str(tmp_path)), (1, str(tmp_path)), (2, str(tmp_path))]
    finished = []
    results = RayBackend().map(slow, jobs, on_result=lambda i, r: finished.append(i))
    assert results == [0, 10, 20]
    assert sorted(finished) == [0, 1, 2] and finished[-1] == 0  # job 0 finished last, yet its result is first
    assert InProcess().map(lambda j: j * 10, [3, 4]) == [30, 40]


def test_a_failing_task_raises_its_own_error(ray_instance):
    def fail(job):
        if job == 1:
            raise UnlearnKitError(f"job {job} failed")
        return job

    with pytest.raises(UnlearnKitError, match="job 1 failed"):
        RayBackend(max_retries=0).map(fail, [0, 1])


def test_sisa_on_ray_is_bitwise_the_in_process_training(ray_instance, tmp_path, digits):
    here = train_sisa(digits, "mlp", out=tmp_path / "here", shards=3, slices=2, config=CONFIG, seed=5, threads=1)
    with RayBackend() as backend:
        remote = train_sisa(digits, "mlp", out=tmp_path / "ray", shards=3, slices=2, config=CONFIG, seed=5, threads=1,
                            backend=backend)
    assert_same_states(here.version(0).states, remote.version(0).states)
    assert here.version(0).info["metrics"] == remote.version(0).info["metrics"]
    # every stage checkpoint the Ray tasks wrote into the model directory is the in-process one
    for shard in range(3):
        for stage in range(3):
            key = here.provenance.stage_keys(shard, _no_removed(here), here.meta["root"])[stage]
            assert_same_states([here.store.load_stage(shard, stage, key)], [remote.store.load_stage(shard, stage, key)])
    assert ray.is_initialized()  # the backend joined the module's instance and left it running
    # workers > 1 without a backend: Ray tasks too (the home-made process pool is gone), the same weights
    parallel = train_sisa(digits, "mlp", out=tmp_path / "parallel", shards=3, slices=2, config=CONFIG, seed=5,
                          threads=1, workers=2)
    assert_same_states(here.version(0).states, parallel.version(0).states)
    assert parallel.meta["root"] == here.meta["root"]  # workers do not change what is trained


def _no_removed(sisa: SisaModel) -> np.ndarray:
    return np.zeros(sisa.data.n_train, dtype=bool)


def test_cli_sisa_train_backend_ray(ray_instance, tmp_path, capsys):
    argv = ["--threads", "1", "sisa", "train", "--dataset", "digits", "--model", "mlp", "--shards", "2", "--slices",
            "2", "--epochs", "1", "--workers", "1", "--shard-threads", "1", "--no-calibrate"]
    assert main([*argv, "--out", str(tmp_path / "local")]) == 0
    assert main([*argv, "--backend", "ray", "--out", str(tmp_path / "ray")]) == 0
    capsys.readouterr()
    local, remote = SisaModel.open(tmp_path / "local"), SisaModel.open(tmp_path / "ray")
    assert_same_states(local.version(0).states, remote.version(0).states)


def test_cli_rejects_ray_address_without_ray_backend(tmp_path, capsys):
    code = main(["sisa", "train", "--dataset", "digits", "--ray-address", "auto", "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines() == ["unlearnkit: error: --ray-address needs --backend ray"]
    assert not (tmp_path / "m").exists()
    with pytest.raises(UnlearnKitError, match="unknown backend"):
        make_backend("dask")


# -- sisa forget, audit and bench on Ray: the in-process results ---------------------------------------------------
VOLATILE = {"wall_s", "finished", "run", "machine", "versions", "original", "retrained", "rte_s", "rte_ratio",
            "retrain_s", "cost", "history", "notes", "models"}


def _stable(record: dict) -> dict:
    """A record without what differs between two identical runs (times, paths under different caches). The weights'
    hashes (``models``) are compared separately."""
    return {k: v for k, v in record.items() if k not in VOLATILE and not k.startswith("gap_rte")}


BENCH_SUITE = {
    "name": "ray-micro", "dataset": "digits[600,200]", "model": "mlp", "requests": ["class:1", "random:0.1"],
    "methods": ["finetune[epochs=1,lr=0.02]", "random_label[epochs=1,lr=0.02,batch_size=32]"], "seeds": [0],
    "train": {"epochs": 3, "batch_size": 64}, "mia_shadow_size": 200,
}


def test_bench_on_ray_writes_the_in_process_records_in_the_same_order(ray_instance, tmp_path):
    from unlearnkit.bench import load_records, run_suite, suite_from_dict

    suite = suite_from_dict(BENCH_SUITE)
    here = run_suite(suite, tmp_path / "here", cache_dir=tmp_path / "c1", device="cpu", log=lambda m: None)
    log = tmp_path / "progress.jsonl"
    with RayBackend(progress_log=log) as backend:
        remote = run_suite(suite, tmp_path / "ray", cache_dir=tmp_path / "c2", device="cpu", log=lambda m: None,
                           backend=backend)
    assert [(r["request"], r["variant"]) for r in remote] == [(r["request"], r["variant"]) for r in here]
    assert len(remote) == 4
    assert [_stable(r) for r in remote] == [_stable(r) for r in here]
    for a, b in zip(load_records(tmp_path / "here"), load_records(tmp_path / "ray")):
        assert _stable(a) == _stable(b) and a["models"]["retrained"]["sha256"] == b["models"]["retrained"]["sha256"]
    # one task per original (shared by both requests), per reference, per record; done counts up to each total
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    totals = {line["stage"]: line["total"] for line in lines}
    assert totals == {"ray-micro originals": 1, "ray-micro references": 2, "ray-micro records": 4}
    tasks = [line for line in lines if line["event"] == "task"]
    assert [t["done"] for t in tasks] == [1, 1, 2, 1, 2, 3, 4] and tasks[-1]["eta_s"] == 0
    assert run_suite(suite, tmp_path / "ray", cache_dir=tmp_path / "c2", device="cpu", log=lambda m: None,
                     backend=InProcess()) == []  # nothing left to do: every record is there once


def test_a_record_written_by_a_dead_task_is_not_made_again(tmp_path, monkeypatch):
    """Exactly once under retries: a re-run record task finds its record of this run and returns it."""
    import unlearnkit.bench.runner as runner
    from unlearnkit.bench import suite_from_dict

    suite = suite_from_dict({**BENCH_SUITE, "requests": ["class:1"], "methods": ["finetune[epochs=1,lr=0.02]"]})
    records = runner.run_suite(suite, tmp_path / "out", cache_dir=tmp_path / "c", device="cpu", log=lambda m: None)
    work = runner._Work(suite, str(tmp_path / "out"), str(tmp_path / "c"), None, "cpu", 1, records[0]["run"])
    monkeypatch.setattr(runner, "unlearn", lambda *a, **k: pytest.fail("a finished record was made again"))
    again = runner._record_task(work, (0, "class:1", suite.variants[0], None))
    assert again == records[0]


AUDIT_SUITE = {
    "name": "ray-audit", "dataset": "digits[600,200]", "model": "mlp", "model_options": {"width": 64},
    "requests": ["random:0.1"], "methods": ["finetune[epochs=1,lr=0.02]"], "seeds": [0],
    "train": {"epochs": 4, "batch_size": 128, "lr": 0.1}, "mia_shadow_size": 200,
}


def test_audit_on_ray_gives_the_in_process_results(ray_instance, tmp_path):
    from unlearnkit.audit import AuditSettings, run_audit
    from unlearnkit.bench import suite_from_dict

    suite = suite_from_dict(AUDIT_SUITE)
    here = run_audit(suite, tmp_path / "here", settings=AuditSettings(models=3, workers=1, retain_sample=100),
                     cache_dir=tmp_path / "c1", quiet=True)
    # two workers: Ray tasks (here on the module's instance)
    remote = run_audit(suite, tmp_path / "ray", settings=AuditSettings(models=3, workers=2, retain_sample=100),
                       cache_dir=tmp_path / "c2", quiet=True)
    assert remote["backend"] == "ray" and here["backend"] == "local"
    a, b = here["requests"]["random:0.1"], remote["requests"]["random:0.1"]
    assert list(a["methods"]) == list(b["methods"]) == ["retrain", "finetune[epochs=1,lr=0.02]", "original"]
    for label in a["methods"]:
        for key in ("ulira", "challenge", "retain_exposure", "per_example", "forget_shift_pct"):
            assert a["methods"][label][key] == b["methods"][label][key], (label, key)
        for key in ("UA", "RA", "TA", "MIA"):
            assert a["methods"][label]["population"][key] == b["methods"][label]["population"][key]


def test_cli_forget_backend_ray_retrains_the_in_process_weights(ray_instance, tmp_path, digits, capsys):
    from unlearnkit.hybrid import Ledger

    base = train_sisa(digits, "mlp", out=tmp_path / "base", shards=3, slices=2, config=CONFIG, seed=1, threads=1)
    prov = base.provenance
    ids = np.concatenate([prov.members[0][:2], prov.members[2][:2]])  # two shards: two tasks
    (tmp_path / "ids.txt").write_text("\n".join(map(str, ids.tolist())) + "\n")
    import shutil

    for name, extra in (("here", ["--workers", "1"]), ("ray", ["--backend", "ray", "--workers", "2"])):
        shutil.copytree(tmp_path / "base", tmp_path / name)
        assert main(["--threads", "1", "forget", "--model", str(tmp_path / name), "--ids", str(tmp_path / "ids.txt"),
                     "--mode", "exact", "--request-id", "r1", "--progress-log", str(tmp_path / f"{name}.jsonl"),
                     *extra]) == 0
    capsys.readouterr()
    here, remote = SisaModel.open(tmp_path / "here"), SisaModel.open(tmp_path / "ray")
    assert_same_states(here.version(1).states, remote.version(1).states)
    ledger = Ledger(remote.store.ledger_path)
    try:
        assert [e["state"] for e in ledger.events("r1")].count("done") == 1
    finally:
        ledger.close()
    lines = [json.loads(line) for line in (tmp_path / "ray.jsonl").read_text().splitlines()]
    assert [line["done"] for line in lines if line["event"] == "task"] == [1, 2] and lines[0]["total"] == 2


def test_progress_log_lines(tmp_path):
    log = tmp_path / "p.jsonl"
    assert InProcess(progress_log=log).map(lambda j: j * 2, [1, 2, 3], stage="double") == [2, 4, 6]
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["event"] for line in lines] == ["start", "task", "task", "task", "end"]
    assert [line["done"] for line in lines] == [0, 1, 2, 3, 3] and {line["total"] for line in lines} == {3}
    assert lines[0]["eta_s"] is None and lines[-1]["eta_s"] == 0 and lines[-1]["stage"] == "double"


@pytest.mark.parametrize("argv,message", [
    (["--backend", "ray", "--ray-address", "nohost"], "bad --ray-address 'nohost': use auto or HOST:PORT"),
    (["--backend", "ray", "--ray-address", "127.0.0.1:1"], "cannot reach the Ray cluster at 127.0.0.1:1"),
    (["--task-gpus", "-1"], "option --task-gpus of execution backend must be"),
])
def test_bad_backend_flags_are_one_line_errors(tmp_path, capsys, argv, message):
    for command in (["sisa", "train", "--dataset", "digits", "--out", str(tmp_path / "m")],
                    ["bench", "--suite", "fmnist-small", "--out", str(tmp_path / "b"), "--cache", str(tmp_path / "c")],
                    ["audit", "--suite", "digits-audit", "--out", str(tmp_path / "a"), "--cache", str(tmp_path / "c")]):
        assert main([*command, *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("unlearnkit: ") and message in err[0], err
    assert not any(tmp_path.iterdir())  # nothing created


def test_backend_ray_without_ray_installed_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    code = main(["sisa", "train", "--dataset", "digits", "--backend", "ray", "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["unlearnkit: error: --backend ray needs Ray, which is not installed: pip install "
                                 "'unlearnkit[ray]'"]
    assert main(["audit", "--suite", "digits-audit", "--workers", "2", "--out", str(tmp_path / "a")]) == 2
    assert "2 workers run on Ray, which is not installed" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
