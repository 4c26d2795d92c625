"""The execution backends: Ray tasks give the in-process results, bitwise, in job order (docs/scale.md).

One local Ray instance (2 CPUs) serves the whole module; a RayBackend without an address reuses it."""

import time

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
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def assert_same_states(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for sa, sb in zip(a, b):
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key


def test_results_come_in_job_order_whatever_order_tasks_finish(ray_instance):
    def slow(job):  # defined here so that Ray ships it by value to its workers
        time.sleep(job[1])
        return job[0] * 10

    jobs = [(0, 1.5), (1, 0.0), (2, 0.0)]
    finished = []
    results = RayBackend().map(slow, jobs, on_result=lambda i, r: finished.append(i))
    assert results == [0, 10, 20]
    assert sorted(finished) == [0, 1, 2] and finished[-1] == 0  # job 0 finished last, yet its result is first
    assert InProcess().map(slow, [(3, 0.0), (4, 0.0)]) == [30, 40]


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
