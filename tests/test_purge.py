"""What a deletion request leaves behind: purging is part of its commit, superseded versions keep only their
audit trail (unless retention says otherwise), a queued request runs with its own options, and ledgers of the
previous schema still open."""

import json
import shutil
import sqlite3

import numpy as np
import pytest

from artefacts import holders_of
from unlearnkit.errors import UnlearnKitError
from unlearnkit.hybrid import Ledger, Policy, Unlearner
from unlearnkit.hybrid.ledger import SCHEMA_VERSION
from unlearnkit.sisa import DELETED_EXACT, SisaModel, train_sisa
from unlearnkit.sisa.layout import ids_digest
from unlearnkit.training import TrainConfig


@pytest.fixture(scope="module")
def model(tmp_path_factory, digits):
    path = tmp_path_factory.mktemp("purge") / "model"
    return train_sisa(digits, "mlp", out=path, shards=2, slices=3, config=TrainConfig(epochs=4, batch_size=64, lr=0.05),
                      seed=0, threads=1)


def fresh_copy(model, tmp_path, name="copy") -> SisaModel:
    shutil.copytree(model.path, tmp_path / name)
    return SisaModel.open(tmp_path / name, data=model.data)


def slice_ids(sisa, shard, slice_, n, skip=0):
    prov = sisa.provenance
    return prov.members[shard][prov.member_slices[shard] == slice_][skip:skip + n]


def test_purge_is_recorded_and_superseded_versions_keep_only_their_audit_trail(model, tmp_path):
    sisa = fresh_copy(model, tmp_path)
    first, second = slice_ids(sisa, 0, 0, 2), slice_ids(sisa, 1, 1, 1)
    v0_weights = sisa.store.read_version_info(0)["files"]["weights.safetensors"]
    with Unlearner(sisa) as service:
        a = service.forget(first, "a", mode="exact")
        b = service.forget(second, "b", mode="exact")
        assert a.state == b.state == "done" and b.version == 2
        purged_a = service.ledger.purges("a")
        purged_b = service.ledger.purges("b")
    # Request a purged the stage checkpoints of shard 0 that trained on its ids (stages 1..3 of the old
    # history) and version 0's weights; request b those of shard 1 from stage 2 on, and version 1's weights.
    stages_a = sorted((p["detail"]["shard"], p["detail"]["stage"]) for p in purged_a if p["kind"] == "stage")
    assert stages_a == [(0, 1), (0, 2), (0, 3)]
    assert all(p["detail"]["deleted_ids_held"] == 2 for p in purged_a if p["kind"] == "stage")
    assert [p["detail"]["version"] for p in purged_a if p["kind"] == "version-weights"] == [0]
    assert sorted((p["detail"]["shard"], p["detail"]["stage"]) for p in purged_b if p["kind"] == "stage") == [
        (1, 2),
        (1, 3),
    ]
    assert all(p["purged"] is not None and p["planned"] <= p["purged"] for p in purged_a + purged_b)
    assert holders_of(sisa, np.concatenate([first, second])) == []
    # The audit trail: every version is still listed, with its hashes and what purged its weights and when.
    store = sisa.store
    assert store.version_numbers() == [0, 1, 2] and not store.has_weights(0) and not store.has_weights(1)
    assert store.read_version_info(0)["files"]["weights.safetensors"] == v0_weights
    assert store.purged_info(0)["request_id"] == "a" and store.purged_info(0)["files"] == {
        "weights.safetensors": v0_weights
    }
    assert store.read_status(1)[first].tolist() == [DELETED_EXACT] * 2
    with pytest.raises(UnlearnKitError, match="weights of version 0 .* were purged on"):
        sisa.version(0)
    assert sisa.version(2).number == 2


def test_retention_keeps_n_superseded_versions_for_rollback(model, tmp_path):
    sisa = fresh_copy(model, tmp_path)
    sisa.store.set_keep_versions(1)
    with Unlearner(sisa) as service:
        service.forget(slice_ids(sisa, 0, 2, 1), "a", mode="exact")
        assert sisa.store.has_weights(0) and sisa.store.has_weights(1)
        service.forget(slice_ids(sisa, 1, 2, 1), "b", mode="exact")
        assert [sisa.store.has_weights(n) for n in (0, 1, 2)] == [False, True, True]
        assert sisa.store.purged_info(0)["request_id"] == "b"
        purged = service.set_retention(0)  # lowering the retention purges at once, recorded with no request
        assert [p["detail"]["version"] for p in purged] == [1] and not sisa.store.has_weights(1)
        assert [p["path"] for p in service.ledger.purges(None)] == ["versions/v000001/weights.safetensors"]
    assert SisaModel.open(sisa.path).meta["retention"] == {"keep_versions": 0}
    with pytest.raises(UnlearnKitError, match="integer >= 0"):
        sisa.store.set_keep_versions(-1)


def test_a_kill_inside_the_purge_is_finished_by_the_next_run_and_done_waits_for_it(model, tmp_path, monkeypatch):
    sisa = fresh_copy(model, tmp_path)
    ids = slice_ids(sisa, 0, 0, 1)
    service = Unlearner(sisa)
    real_purge = type(sisa.store).purge
    calls = []

    def dying_purge(store, item, **kwargs):
        calls.append(item["path"])
        if len(calls) == 2:
            raise KeyboardInterrupt  # like a kill after the first artefact went
        return real_purge(store, item, **kwargs)

    monkeypatch.setattr(type(sisa.store), "purge", dying_purge)
    with pytest.raises(KeyboardInterrupt):
        service.forget(ids, "r1", mode="exact")
    service.close()
    monkeypatch.setattr(type(sisa.store), "purge", real_purge)
    ledger = Ledger(sisa.store.ledger_path)
    assert ledger.get("r1").state == "running" and sisa.store.version_numbers() == [0, 1]
    left = ledger.pending_purges()
    assert len(left) >= 3 and {p["request_id"] for p in left} == {"r1"}
    with pytest.raises(UnlearnKitError, match="planned purge"):  # the ledger itself refuses done
        ledger.mark_done("r1", 1, 0.0, 0, {})
    ledger.close()
    assert holders_of(sisa, ids)  # the kill left artefacts trained on the id
    with Unlearner(SisaModel.open(sisa.path, data=sisa.data)) as restarted:
        (record,) = restarted.run_pending()
        assert record.state == "done" and record.attempts == 1
        assert not restarted.ledger.pending_purges()
        assert {p["path"] for p in restarted.ledger.purges("r1")} >= {p["path"] for p in left}
    assert holders_of(sisa, ids) == []


def test_a_start_of_the_ledger_repairs_what_an_older_version_left(model, tmp_path):
    sisa = fresh_copy(model, tmp_path)
    ids = slice_ids(sisa, 1, 0, 1)
    stale = sorted((sisa.path / "stages" / "shard-01").iterdir())
    keep = {p: tmp_path / "saved" / p.name for p in stale}
    for src, dst in keep.items():
        shutil.copytree(src, dst)
    with Unlearner(sisa) as service:
        service.forget(ids, "a", mode="exact")
    for src, dst in keep.items():  # as if the old clean-up had never run, plus a killed writer's leftovers
        shutil.rmtree(src, ignore_errors=True)
        dst.rename(src)
    (sisa.path / "versions" / ".tmp-v000009-x").mkdir()
    assert holders_of(sisa, ids)
    with Unlearner(SisaModel.open(sisa.path, data=sisa.data)) as service:
        assert service.run_pending() == []
        repaired = service.ledger.purges(None)
    assert {p["kind"] for p in repaired} == {"stage", "temporary"}
    assert holders_of(sisa, ids) == []


def test_queued_requests_run_with_their_own_options(model, tmp_path):
    sisa = fresh_copy(model, tmp_path)
    ids = slice_ids(sisa, 0, 0, 3)
    # Submitted by one process (always exact: a huge beta; evaluate), run by another with the defaults.
    with Unlearner(sisa, policy=Policy(beta=1e6, budget_stages=0.0), evaluate=True) as submitter:
        queued = submitter.submit(ids, "q1")
        assert queued.options == {"policy": Policy(beta=1e6, budget_stages=0.0).to_dict(), "evaluate": True}
    # The runner's own policy always chooses approx (never worth any extra time), whatever this machine measures.
    with Unlearner(SisaModel.open(sisa.path, data=sisa.data), policy=Policy(beta=0.0, budget_stages=0.0)) as runner:
        assert runner.plan(ids).decision == "approx"  # what the runner's own options would have chosen
        (record,) = runner.run_pending()
    assert record.decision == "exact" and record.plan["policy"]["beta"] == 1e6
    assert "test_acc" in record.metrics
    # Resubmitting the id with other options is refused; with the same ones it is the same request.
    with Unlearner(SisaModel.open(sisa.path, data=sisa.data)) as other:
        with pytest.raises(
            UnlearnKitError,
            match=r"other options \(beta 1000000.0 then 1.0, budget_stages 0.0 then 1.0, "
            r"evaluate True then False\)",
        ):
            other.submit(ids, "q1")
    with Unlearner(SisaModel.open(sisa.path, data=sisa.data), policy=Policy(beta=1e6, budget_stages=0.0),
                   evaluate=True) as same:
        assert same.forget(ids, "q1").seq == record.seq


def _schema_1_ledger(path):
    from unlearnkit.hybrid.ledger import _SCHEMA_1

    db = sqlite3.connect(str(path))
    db.executescript(_SCHEMA_1)
    ids = np.array([3, 5], dtype="<i8")
    db.execute("INSERT INTO requests (id, state, mode, source, n_ids, ids_sha256, ids, created, updated) "
               "VALUES ('old', 'received', 'exact', NULL, 2, ?, ?, 'then', 'then')",
               (ids_digest(ids), ids.tobytes()))
    db.execute("INSERT INTO events (request_id, at, state, note) VALUES ('old', 'then', 'received', '2 ids, mode exact')")  # noqa: E501
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()


def test_a_ledger_of_schema_1_opens_upgraded_and_its_requests_run(model, tmp_path):
    sisa = fresh_copy(model, tmp_path)
    _schema_1_ledger(sisa.store.ledger_path)
    with Unlearner(sisa) as service:
        assert service.ledger.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        assert service.ledger.verify().ok  # schema 3: the old events were chained when the ledger was upgraded
        old = service.ledger.get("old")
        assert old.options is None and old.state == "received"
        (record,) = service.run_pending()  # run with the runner's options: the old row stored none
        assert (
            record.state == "done" and record.decision == "exact" and record.plan["policy"] == service.policy.to_dict()
        )
    reopened = Ledger(sisa.store.ledger_path)
    assert reopened.get("old").state == "done" and reopened.verify().ok  # reopening an upgraded ledger is a no-op
    newer = tmp_path / "newer.sqlite"
    db = sqlite3.connect(str(newer))
    db.execute("PRAGMA user_version=99")
    db.commit()
    db.close()
    with pytest.raises(UnlearnKitError, match="schema 99; this unlearnkit reads schemas up to 3"):
        Ledger(newer)
    with pytest.raises(UnlearnKitError, match="no deletion request was ever submitted"):
        Ledger(tmp_path / "none.sqlite", create=False)
    assert not (tmp_path / "none.sqlite").exists()


def test_purge_refuses_paths_outside_the_model_directory(model, tmp_path):
    sisa = fresh_copy(model, tmp_path)
    victim = tmp_path / "outside.txt"
    victim.write_text("keep me")
    for path in ("../outside.txt", str(victim), ""):
        with pytest.raises(UnlearnKitError, match="not inside"):
            sisa.store.purge({"kind": "temporary", "path": path, "detail": {}})
    assert victim.read_text() == "keep me"


def test_stage_checkpoints_record_what_their_history_left_out(model, tmp_path):
    sisa = fresh_copy(model, tmp_path)
    ids = slice_ids(sisa, 0, 1, 2)
    with Unlearner(sisa) as service:
        service.forget(ids, "a", mode="exact")
    for stage_dir in (sisa.path / "stages" / "shard-00").iterdir():
        record = json.loads((stage_dir / "manifest.json").read_text())["sisa_stage"]
        assert record["excluded"] == (sorted(ids.tolist()) if record["stage"] >= 2 else [])
    assert sisa.store.trained_on(np.isin(np.arange(sisa.provenance.n), ids)) == []
    ones = np.ones(sisa.provenance.n, dtype=bool)
    assert {f["kind"] for f in sisa.store.trained_on(ones)} == {"stage", "version"}


def test_command_line_shows_purges_and_sets_retention(model, tmp_path, capsys):
    from unlearnkit.cli import main

    sisa = fresh_copy(model, tmp_path)
    fresh = str(sisa.path)

    def run(*argv):
        code = main(["--threads", "1", *map(str, argv)])
        out, err = capsys.readouterr()
        return code, out, err

    assert run("requests", "list", "--model", fresh)[:2] == (0, f"{fresh} has no requests yet\n")
    code, _, err = run("requests", "show", "x", "--model", fresh)
    assert code == 2 and "has no requests yet" in err
    assert not sisa.store.ledger_path.exists()  # reading the ledger of a model that has none creates nothing
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(map(str, slice_ids(sisa, 0, 1, 2).tolist())) + "\n")
    code, out, err = run("forget", "--model", fresh, "--ids", ids, "--mode", "exact", "--request-id", "alice")
    assert code == 0, err
    assert "purged 2 stage checkpoint(s), 1 superseded version weights" in out + err
    code, out, _ = run("requests", "show", "alice", "--model", fresh)
    assert code == 0 and "purged (3 artefact(s)" in out
    assert (
        "stage checkpoint (shard 0, stage 2, 2 deleted ids held)" in out
        and "versions/v000000/weights.safetensors" in out
    )
    code, out, _ = run("requests", "show", "alice", "--model", fresh, "--json")
    assert sorted(p["kind"] for p in json.loads(out)["purges"]) == ["stage", "stage", "version-weights"]
    code, out, _ = run("sisa", "info", "--model", fresh, "--json")
    info = json.loads(out)
    assert (
        code == 0 and info["versions"] == [0, 1] and info["versions_with_weights"] == [1] and info["keep_versions"] == 0
    )
    assert info["original_test_acc"] > 50  # read from version 0's audit trail; its weights are gone
    code, out, _ = run("sisa", "retention", "--model", fresh, "--keep-versions", "3")
    assert code == 0 and "purged now: nothing" in out and SisaModel.open(fresh).store.keep_versions == 3
    code, _, err = run("sisa", "retention", "--model", fresh, "--keep-versions", "-1")
    assert code == 2 and "option --keep-versions of sisa retention must be an integer in [0, 100000]; got -1" in err


def test_a_plan_or_a_refused_request_creates_no_ledger(model, tmp_path):
    sisa = fresh_copy(model, tmp_path)
    with Unlearner(sisa) as service:
        assert service.plan(slice_ids(sisa, 0, 0, 1)).decision in ("exact", "approx")
        with pytest.raises(UnlearnKitError, match="not training samples"):
            service.submit([sisa.provenance.n + 5])
    assert not sisa.store.ledger_path.exists()
