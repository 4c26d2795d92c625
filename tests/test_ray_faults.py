"""A real two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``): the worker node's raylet is killed
while it trains shards; Ray re-runs the lost tasks (``--ray-retries``) on a node that joins afterwards, the job
finishes, and the model is bitwise the one a clean in-process run trains, every stage checkpoint there once and
whole (docs/scale.md, "Faults")."""

import threading
import time

import pytest
import torch

from unlearnkit.backends import RayBackend
from unlearnkit.sisa import train_sisa
from unlearnkit.training import TrainConfig

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'unlearnkit[ray]')")
cluster_utils = pytest.importorskip("ray.cluster_utils")
pytestmark = pytest.mark.slow

CONFIG = TrainConfig(epochs=3, batch_size=32, lr=0.05)
GRID = {"shards": 2, "slices": 4, "seed": 2, "threads": 1}


def stage_checkpoints(path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in (path / "stages").glob("shard-*/stage-*")
                  if not p.name.startswith(".tmp-"))


def test_killing_the_worker_node_mid_job_gives_the_clean_result(tmp_path, digits, capsys):
    clean = train_sisa(digits, "mlp", out=tmp_path / "clean", config=CONFIG, **GRID)

    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the head runs no task
    try:
        victim = cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        out = tmp_path / "ray"
        result = {}

        def train():  # the driver's work in a thread; the main thread plays the operator who loses a node
            try:
                with RayBackend(cluster.address, max_retries=2, progress_bar=False) as backend:
                    result["model"] = train_sisa(digits, "mlp", out=out, config=CONFIG, backend=backend, echo=True,
                                                 **GRID)
            except BaseException as exc:  # noqa: BLE001  (re-raised below, in the test's thread)
                result["error"] = exc

        driver = threading.Thread(target=train)
        driver.start()
        # Mid-job: both shards run on the victim, and one has trained and written its first stage.
        while driver.is_alive() and not any(p.name.startswith("stage-01-")
                                            for p in (out / "stages").glob("shard-*/stage-*")):
            time.sleep(0.05)
        killed = driver.is_alive()
        if killed:
            cluster.remove_node(victim, allow_graceful=False)  # SIGKILL its raylet: its workers die with it
            cluster.add_node(num_cpus=2)  # a replacement joins; Ray re-runs the lost tasks there
        driver.join(timeout=600)
        if "error" in result:
            raise result["error"]
        remote = result["model"]
    finally:
        ray.shutdown()
        cluster.shutdown()

    assert killed, "the job finished before the worker node was killed"
    for a, b in zip(clean.version(0).states, remote.version(0).states):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Every stage checkpoint once, whole (they load and verify), the same set as the clean run's.
    assert stage_checkpoints(out) == stage_checkpoints(tmp_path / "clean")
    for shard in range(GRID["shards"]):
        keys = remote.provenance.stage_keys(shard, remote.version(0).status != 0, remote.meta["root"])
        for stage in range(GRID["slices"] + 1):
            assert remote.store.load_stage(shard, stage, keys[stage]) is not None
    assert remote.version(0).info["metrics"] == clean.version(0).info["metrics"]
    # A re-run task resumed from what its killed predecessor had written: it trained only the later stages.
    trained = [line for line in capsys.readouterr().err.splitlines() if line.strip().startswith("shard ")]
    assert len(trained) == GRID["shards"]
    assert any("stages [1," not in line for line in trained), trained
