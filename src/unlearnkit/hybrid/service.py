"""Honouring deletion requests on a SISA model: ledger, plan, exact or approximate path, new version.

Crash semantics (docs/sisa.md has the full story). Requests are processed one at a time, in submission
order, under an exclusive lock on the model directory. The commit point of a request is the atomic rename
of its new version directory, which records the request id; the ledger's ``done`` comes after it. So on
restart, for every unfinished request:

* ``received``: it is planned now (nothing was done yet);
* ``planned``/``running`` and its target version exists, made by this request: the crash came between
  the commit and the ledger update; the request is marked done, nothing is re-run;
* ``planned``/``running`` otherwise: it runs again from its parent version. An exact retrain finds the
  stage checkpoints it had already written under their history keys and continues after them, so the
  result is the same as an uninterrupted run, bit for bit.

A request is therefore applied exactly once. Model versions are never overwritten.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..errors import UnlearnKitError
from ..sisa.layout import ACTIVE, DELETED_APPROX, derived_seed
from ..sisa.model import SisaModel
from ..sisa.shards import ShardPool
from ..training import metered
from .approx import approximate_delete
from .cost import Calibration, Policy
from .ledger import Ledger, RequestRecord
from .planner import ApproxSettings, Plan, make_plan, validate_ids


@contextlib.contextmanager
def model_lock(sisa: SisaModel, echo: bool = False) -> Iterator[None]:
    """Exclusive lock on the model directory (released by the kernel if the process dies)."""
    handle = open(sisa.store.lock_path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if echo:
                print(f"waiting for another unlearnkit process working on {sisa.path} ...", file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        _remove_temporaries(sisa.path)
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _remove_temporaries(root: Path) -> None:
    """Leftovers of writes a killed process never renamed into place (only ever removed under the lock)."""
    for folder in [root, root / "versions", *(root / "stages").glob("shard-*")]:
        if folder.is_dir():
            for entry in folder.glob(".tmp-*"):
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


class Unlearner:
    """Deletion requests on one SISA model directory.

    ``policy`` and ``approx`` default to what the model directory stores (``sisa.json`` ``hybrid`` entry) or
    the documented defaults. ``evaluate`` adds the new ensemble's test accuracy to each request's metrics.
    """

    def __init__(self, model: SisaModel | str | os.PathLike, *, policy: Policy | None = None,
                 approx: ApproxSettings | None = None, device: str = "cpu", workers: int | None = None,
                 data_dir: str | os.PathLike | None = None, evaluate: bool = False, echo: bool = False) -> None:
        self.sisa = model if isinstance(model, SisaModel) else SisaModel.open(model, data_dir=data_dir)
        stored = self.sisa.meta.get("hybrid") or {}
        self.policy = policy or Policy(**stored.get("policy", {}))
        self.approx = approx or ApproxSettings(**stored.get("approx", {}))
        self.device = device
        self.workers = self.sisa.workers if workers is None else workers
        self.evaluate = evaluate
        self.echo = echo
        self.ledger = Ledger(self.sisa.store.ledger_path)
        self.pool = ShardPool(self.workers)  # started when a plan runs shards in parallel; kept until close()

    @property
    def calibration(self) -> Calibration:
        return Calibration.from_dict(self.sisa.meta.get("calibration"))

    def close(self) -> None:
        self.pool.close()
        self.ledger.close()

    def __enter__(self) -> "Unlearner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- planning ------------------------------------------------------------------------------------
    def plan(self, ids, mode: str = "auto", status: np.ndarray | None = None) -> Plan:
        """What would happen to ``ids`` now (nothing is recorded or changed)."""
        if status is None:
            status = self.sisa.version().status
        return make_plan(ids, self.sisa.provenance, status, epochs=self.sisa.config.epochs, workers=self.workers,
                         cal=self.calibration, policy=self.policy, approx=self.approx, mode=mode,
                         pool_warm=self.pool.warm)

    # -- requests ------------------------------------------------------------------------------------
    def submit(self, ids, request_id: str | None = None, mode: str = "auto", source: str | None = None) -> RequestRecord:
        """Record a request (idempotent for a known ``request_id``; a failed one is queued again)."""
        ids = validate_ids(ids, self.sisa.provenance)
        record, created = self.ledger.submit(ids, request_id, mode, source)
        if not created and record.state == "failed":
            record = self.ledger.retry(record.id)
        return record

    def forget(self, ids, request_id: str | None = None, mode: str = "auto", source: str | None = None) -> RequestRecord:
        """Submit a request and process it (after any earlier unfinished one); returns its final record."""
        record = self.submit(ids, request_id, mode, source)
        if record.state == "done":
            return record
        self.run_pending()
        return self.ledger.get(record.id)

    def run_pending(self) -> list[RequestRecord]:
        """Finish every unfinished request, oldest first; a failure is recorded and raised after the rest ran."""
        finished, first_error = [], None
        with model_lock(self.sisa, self.echo):
            for record in self.ledger.unfinished():
                try:
                    finished.append(self._process(record))
                except UnlearnKitError as exc:
                    first_error = first_error or exc
        if first_error is not None:
            raise first_error
        return finished

    # -- one request ---------------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        if self.echo:
            print(text, file=sys.stderr, flush=True)

    def _process(self, record: RequestRecord) -> RequestRecord:
        store = self.sisa.store
        if record.state == "received":
            current = store.current_version()
            try:
                plan = self.plan(record.ids, record.mode, store.read_version(current).status)
            except UnlearnKitError as exc:
                self.ledger.mark_failed(record.id, str(exc))
                raise
            details = {**plan.to_dict(), "policy": self.policy.to_dict(), "approx_settings": dataclasses.asdict(self.approx),
                       "calibration": self.calibration.to_dict()}
            chosen = plan.chosen
            record = self.ledger.mark_planned(record.id, details, plan.decision,
                                              None if chosen is None else chosen.seconds,
                                              None if chosen is None else chosen.samples, current,
                                              current if plan.decision == "noop" else current + 1)
            self._say(f"request {record.id}: {plan.decision} ({plan.reason})")
            if plan.decision == "noop":
                return self.ledger.mark_done(record.id, current, 0.0, 0, {
                    "noop": plan.reason, "deleted_by": self.ledger.deleted_by(record.ids)},
                    note=f"nothing to do: {plan.reason}; model stays at version {current}")

        target, parent = record.version, record.parent_version
        if target in store.version_numbers():
            info = store.read_version_info(target)
            if info.get("request_id") != record.id:
                raise UnlearnKitError(f"version {target} of {store.path} was made by request {info.get('request_id')!r}, "
                                      f"not by {record.id!r}: the ledger and the versions disagree")
            cost = info.get("cost", {})
            return self.ledger.mark_done(record.id, target, cost.get("seconds"), cost.get("samples"), info.get("metrics", {}),
                                         note=f"version {target} was committed before an interruption; recorded now")
        if store.current_version() != parent:
            raise UnlearnKitError(f"request {record.id!r} was planned against version {parent}, but the model is at "
                                  f"version {store.current_version()}; resubmit it under a new id")
        record = self.ledger.mark_running(record.id)
        self._say(f"request {record.id}: attempt {record.attempts}, {record.decision} from version {parent} to {target}")
        try:
            return self._execute(record, parent, target)
        except UnlearnKitError as exc:
            self.ledger.mark_failed(record.id, str(exc))
            raise
        except Exception as exc:  # a bug: record it (the request would fail the same way on every restart)
            self.ledger.mark_failed(record.id, f"{type(exc).__name__}: {exc}")
            raise

    def _execute(self, record: RequestRecord, parent: int, target: int) -> RequestRecord:
        store, sisa = self.sisa.store, self.sisa
        sisa.data  # loading the data set is the process's cost, not the request's
        started = time.perf_counter()
        with metered() as meter:
            version = store.read_version(parent)
            new_ids = record.ids[version.status[record.ids] == ACTIVE]
            metrics: dict = {"deleted": int(new_ids.size), "already_deleted": int(record.ids.size - new_ids.size)}
            if record.decision == "exact":
                def stage_done(shard: int, stage: int, seconds: float) -> None:
                    self._say(f"  shard {shard} stage {stage} retrained ({seconds:.2f} s)")

                workers = int(((record.plan or {}).get("exact") or {}).get("workers", 1))
                result = sisa.exact_delete(version, new_ids, workers=workers, on_stage=stage_done, pool=self.pool)
                states, status = result.states, result.status
                metrics["shards"] = [r.summary() for r in result.shards]
                samples = sum(r.samples for r in result.shards)
            else:
                settings = ApproxSettings(**record.plan.get("approx_settings", {})) if record.plan else self.approx
                result = approximate_delete(sisa, version, new_ids, settings, seed=derived_seed(sisa.meta["sisa"]["seed"], record.id),
                                            device=self.device)
                states, status = result.states, result.status
                metrics["shards"] = result.shards
                samples = meter.backward
            if self.evaluate:
                from ..sisa.store import Version

                metrics["test_acc"] = sisa.test_accuracy(Version(target, states, status, {}), device=self.device)
        seconds = time.perf_counter() - started
        pending = np.bincount(sisa.provenance.shard_of[status == DELETED_APPROX], minlength=sisa.shards)
        info = {
            "parent": parent, "request_id": record.id, "decision": record.decision,
            "shards": [{"shard": k, "exact": bool(pending[k] == 0), "pending_approx": int(pending[k])} for k in range(sisa.shards)],
            "metrics": metrics,
            "cost": {"seconds": round(seconds, 4), "samples": int(samples), "forward_samples": meter.forward},
        }
        store.write_version(target, states, status, info)  # the commit point
        done = self.ledger.mark_done(record.id, target, round(time.perf_counter() - started, 4), int(samples), metrics)
        removed = store.collect_stages(sisa.reachable_stages(status))
        self._say(f"request {record.id}: done, version {target} ({done.actual_seconds:.2f} s; "
                  f"estimated {record.estimated_seconds or 0:.2f} s; {removed} stale stage checkpoint(s) removed)")
        return done


def ids_from_request(sisa: SisaModel, ids_file: str | None = None, spec: str | None = None, seed: int = 0) -> tuple[np.ndarray, str]:
    """Ids from ``--ids FILE`` (one per line, '#' comments) or a request spec (``random:0.001``, ``class:3``, ``ids:FILE``)."""
    from ..requests import build_request

    if (ids_file is None) == (spec is None):
        raise UnlearnKitError("give exactly one of --ids FILE or --request SPEC")
    spec = f"ids:{ids_file}" if ids_file is not None else spec
    request = build_request(spec, sisa.data, seed)
    if request.kind != "remove":
        raise UnlearnKitError(f"a SISA model removes samples; {spec!r} is a {request.kind} request")
    return request.forget.numpy().astype(np.int64), spec
