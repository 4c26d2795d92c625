"""Fault injection for `unlearnkit forget`: a real subprocess is SIGKILLed at named points (UNLEARNKIT_FAULT,
see unlearnkit/_fault.py) during stage retraining, while a stage checkpoint is being written, between the
weights commit and the purge, inside the purge, and during `requests resume`; then `requests resume` runs.
Each case asserts exactly one `done`, weights bitwise equal to an uninterrupted run, and no file under the
model directory trained on a deleted id (judged from stage manifests and the provenance, not file names)."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from artefacts import holders_of
from unlearnkit.hybrid import Ledger, Unlearner
from unlearnkit.sisa import SisaModel, train_sisa
from unlearnkit.training import TrainConfig

SRC = str(Path(__file__).resolve().parents[1] / "src")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(tmp_path_factory, digits):
    path = tmp_path_factory.mktemp("faults") / "model"
    return train_sisa(digits, "mlp", out=path, shards=2, slices=3, config=TrainConfig(epochs=6, batch_size=64, lr=0.05),
                      seed=0, threads=1)


def cli(*args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    env.pop("UNLEARNKIT_FAULT", None)
    if fault:
        env["UNLEARNKIT_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "unlearnkit", "--threads", "1", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def request_ids(sisa, mode: str, workers: int) -> np.ndarray:
    prov = sisa.provenance
    first = prov.members[0][prov.member_slices[0] == 0][:3]  # slice 0: every stage of shard 0 is retrained
    if workers == 1:
        return first
    return np.concatenate([first, prov.members[1][prov.member_slices[1] == 0][:2]])  # both shards: parallel


_references: dict = {}


def reference(model, tmp_path_factory, mode: str, workers: int):
    """The uninterrupted run's final weights (same request id: the approximate path seeds from it)."""
    key = (mode, workers)
    if key not in _references:
        path = tmp_path_factory.mktemp("reference") / "model"
        shutil.copytree(model.path, path)
        sisa = SisaModel.open(path, data=model.data)
        with Unlearner(sisa, workers=workers) as service:
            record = service.forget(request_ids(sisa, mode, workers), "victim", mode=mode)
        assert record.state == "done"
        _references[key] = sisa.version(record.version).states
    return _references[key]


# (mode, workers, [fault of the `forget` run, then faults of `requests resume` runs killed in turn]). Each
# later kill lands in the recovery of the one before; benchmarks/kill_trials.py runs many more combinations.
CASES = [
    # killed during stage retraining; its resume while a stage checkpoint is complete in its temporary folder
    # but not renamed; the next between the weights commit and the purge; the next inside the purge
    ("exact", 1, ["stage-trained:2", "stage-write:1", "committed:1", "purge:2"]),
    ("exact", 2, ["stage-trained:1"]),  # in a worker process: the whole command dies with it
    # after the approximate update, before its version; between commit and purge; after the purge, before `done`
    ("approx", 1, ["approx-done:1", "committed:1", "purged:1"]),
]


@pytest.mark.parametrize("mode,workers,faults", CASES, ids=[f"{m}-{w}w-{'+'.join(f)}" for m, w, f in CASES])
def test_forget_killed_at_a_point_resumes_to_the_uninterrupted_result(
    model, tmp_path, tmp_path_factory, mode, workers, faults
):
    expected = reference(model, tmp_path_factory, mode, workers)
    path = tmp_path / "model"
    shutil.copytree(model.path, path)
    ids = request_ids(SisaModel.open(path, data=model.data), mode, workers)
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(map(str, ids.tolist())) + "\n")

    killed = cli("forget", "--model", str(path), "--ids", str(ids_file), "--mode", mode, "--request-id", "victim",
                 "--workers", str(workers), fault=faults[0])
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    for fault in faults[1:]:  # `requests resume` killed too
        resumed = cli("requests", "resume", "--model", str(path), fault=fault)
        assert resumed.returncode == -signal.SIGKILL, resumed.stderr
    resumed = cli("requests", "resume", "--model", str(path))
    assert resumed.returncode == 0, resumed.stderr

    sisa = SisaModel.open(path, data=model.data)
    ledger = Ledger(sisa.store.ledger_path)
    try:
        (record,) = ledger.list()
        assert record.id == "victim" and record.state == "done" and record.decision == mode
        assert [e["state"] for e in ledger.events("victim")].count("done") == 1
        assert not ledger.pending_purges()
    finally:
        ledger.close()
    assert sisa.store.version_numbers() == [0, 1]
    for got, want in zip(sisa.version(1).states, expected):
        assert all(torch.equal(got[k], want[k]) for k in want)
    assert holders_of(sisa, ids) == []
