"""The request ledger: idempotent submission, guarded transitions, and exactly-once completion across a
crash — including a real subprocess killed in the middle of an exact retrain."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from unlearnkit.errors import UnlearnKitError
from unlearnkit.hybrid import Ledger, Unlearner
from unlearnkit.sisa import DELETED_EXACT, SisaModel, train_sisa
from unlearnkit.training import TrainConfig

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def model(tmp_path_factory, digits):
    # Enough epochs that one stage takes a noticeable fraction of a second: the kill test needs room.
    path = tmp_path_factory.mktemp("ledger") / "model"
    return train_sisa(
        digits,
        "mlp",
        out=path,
        shards=2,
        slices=3,
        config=TrainConfig(epochs=40, batch_size=64, lr=0.05),
        seed=0,
        threads=1,
    )


def fresh_copy(model, tmp_path, name="copy") -> SisaModel:
    shutil.copytree(model.path, tmp_path / name)
    return SisaModel.open(tmp_path / name, data=model.data)


def test_ledger_is_sqlite_in_wal_mode_and_submission_is_idempotent(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    assert ledger.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    first, created = ledger.submit(np.array([5, 3, 9]), "req-1", "auto", "test")
    assert created and first.state == "received" and first.ids.tolist() == [3, 5, 9]
    again, created = ledger.submit(np.array([9, 5, 3]), "req-1")
    assert not created and again.seq == first.seq
    with pytest.raises(UnlearnKitError, match="already used for another request"):
        ledger.submit(np.array([1, 2]), "req-1")
    with pytest.raises(UnlearnKitError, match="cannot become running: it is received"):
        ledger.mark_running("req-1")  # not planned yet
    ledger.mark_planned("req-1", {"decision": "exact"}, "exact", 1.0, 10, 0, 1)
    ledger.mark_running("req-1")
    ledger.mark_done("req-1", 1, 0.5, 9, {"x": 1})
    with pytest.raises(UnlearnKitError, match="cannot become done: it is done"):
        ledger.mark_done("req-1", 1, 0.5, 9, {})
    assert [e["state"] for e in ledger.events("req-1")] == ["received", "planned", "running", "done"]
    assert len(ledger.list()) == 1
    ledger.close()
    # Survives reopening: it is a real database, not process memory.
    reopened = Ledger(tmp_path / "ledger.sqlite")
    assert reopened.get("req-1").state == "done" and reopened.get("req-1").attempts == 1
    with pytest.raises(UnlearnKitError, match="no request 'nope'"):
        reopened.get("nope")


def test_resubmitting_a_request_id_does_not_delete_twice(model, tmp_path):
    sisa = fresh_copy(model, tmp_path)
    ids = sisa.provenance.members[1][sisa.provenance.member_slices[1] == 2][:2]
    with Unlearner(sisa) as service:
        first = service.forget(ids, "gdpr-17", mode="exact")
        second = service.forget(ids, "gdpr-17", mode="exact")
        assert first.state == second.state == "done" and second.version == first.version == 1
        assert sisa.store.version_numbers() == [0, 1]
        # The same ids under a new id: a documented no-op (they are already deleted); no new version.
        third = service.forget(ids, "gdpr-17-retry")
        assert third.decision == "noop" and third.version == 1 and third.metrics["deleted_by"] == {"gdpr-17": 2}
        assert sisa.store.version_numbers() == [0, 1]


def test_versions_are_never_overwritten(model, tmp_path):
    sisa = fresh_copy(model, tmp_path)
    version = sisa.version(0)
    with pytest.raises(UnlearnKitError, match="never overwritten"):
        sisa.store.write_version(0, version.states, version.status, {})


def test_crash_after_the_commit_is_recorded_without_running_again(model, tmp_path, monkeypatch):
    sisa = fresh_copy(model, tmp_path)
    ids = sisa.provenance.members[0][sisa.provenance.member_slices[0] == 2][:1]
    service = Unlearner(sisa)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # like a kill right after the version directory was renamed into place

    monkeypatch.setattr(service.ledger, "mark_done", crash)
    with pytest.raises(KeyboardInterrupt):
        service.forget(ids, "r1", mode="exact")
    service.close()
    assert Ledger(sisa.store.ledger_path).get("r1").state == "running"
    assert sisa.store.version_numbers() == [0, 1]
    with Unlearner(SisaModel.open(sisa.path, data=sisa.data)) as restarted:
        (record,) = restarted.run_pending()
        assert record.state == "done" and record.version == 1 and record.attempts == 1
        assert "committed before an interruption" in restarted.ledger.events("r1")[-1]["note"]
    assert sisa.store.version_numbers() == [0, 1]


def test_failed_request_is_recorded_and_retried_on_resubmission(model, tmp_path):
    sisa = fresh_copy(model, tmp_path)
    prov = sisa.provenance
    ids = prov.members[0][prov.member_slices[0] == 2][:1]
    # Damage the current version: the request fails with a clear, recorded error.
    weights = sisa.store.version_dir(0) / "weights.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:-5] + b"xxxxx")
    with Unlearner(sisa) as service:
        with pytest.raises(UnlearnKitError, match="corrupted"):
            service.forget(ids, "r-fail", mode="exact")
        assert service.ledger.get("r-fail").state == "failed"
        assert "corrupted" in service.ledger.get("r-fail").error
        weights.write_bytes(good)  # repaired
        record = service.forget(ids, "r-fail", mode="exact")
        assert record.state == "done" and record.version == 1


def _cli(*args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "unlearnkit", "--threads", "1", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def test_a_process_killed_in_mid_retrain_loses_nothing_and_the_restart_finishes_once(model, tmp_path):
    victim = fresh_copy(model, tmp_path, "victim")
    reference = fresh_copy(model, tmp_path, "reference")
    prov = victim.provenance
    ids = prov.members[0][prov.member_slices[0] == 0][:3]  # first slice: stages 1, 2, 3 are retrained
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(map(str, ids.tolist())) + "\n")
    with Unlearner(reference) as service:
        expected = service.forget(ids, "victim-request", mode="exact")
    expected_states = reference.version(1).states

    process = _cli("forget", "--model", str(victim.path), "--ids", str(ids_file), "--mode", "exact",
                   "--request-id", "victim-request")
    seen = []
    for line in process.stderr:  # kill right after the first retrained stage is checkpointed
        seen.append(line)
        if "shard 0 stage 1 retrained" in line:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "".join(seen)

    ledger = Ledger(victim.store.ledger_path)
    interrupted = ledger.get("victim-request")
    assert interrupted.state == "running" and interrupted.attempts == 1
    assert victim.store.version_numbers() == [0]  # nothing half-committed
    ledger.close()

    resumed = _cli("requests", "resume", "--model", str(victim.path))
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert "1 interrupted request(s) finished" in out

    ledger = Ledger(victim.store.ledger_path)
    record = ledger.get("victim-request")
    assert record.state == "done" and record.attempts == 2 and record.version == 1
    assert victim.store.version_numbers() == [0, 1]
    assert victim.store.read_version_info(1)["request_id"] == "victim-request"
    (shard,) = record.metrics["shards"]
    assert shard["resumed_from_stage"] == 1 and shard["trained_stages"] == [2, 3]  # continued after the kill
    # The result is the uninterrupted one, bit for bit.
    for got, want in zip(victim.version(1).states, expected_states):
        assert all(torch.equal(got[k], want[k]) for k in want)
    assert (victim.version(1).status[ids] == DELETED_EXACT).all()
    assert [e["state"] for e in ledger.events("victim-request")] == [
        "received",
        "planned",
        "running",
        "running",
        "done",
    ]
    ledger.close()

    again = _cli("forget", "--model", str(victim.path), "--ids", str(ids_file), "--request-id", "victim-request",
                 "--mode", "exact")
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert victim.store.version_numbers() == [0, 1]  # resubmission is a no-op
    other = _cli("forget", "--model", str(victim.path), "--ids", str(ids_file), "--request-id", "victim-request")
    out, err = other.communicate(timeout=120)  # the same id with another mode is another request: refused
    assert other.returncode == 2 and err.strip() == (
        "unlearnkit: error: request id 'victim-request' was submitted with other options (mode exact then auto) and is "
        "done; resubmit it with the same options, or choose a new id"), err
    assert expected.version == 1
