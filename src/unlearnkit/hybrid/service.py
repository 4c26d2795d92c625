"""Honouring deletion requests on a SISA model: ledger, plan, exact or approximate path, new version, purge.

Crash semantics (docs/sisa.md has the full story). Requests are processed one at a time, in submission
order, under an exclusive lock on the model directory. A request commits in two steps, both repeatable:

1. the atomic rename of its new version directory, which records the request id (the weights commit);
2. the purge of every artefact trained on its ids (``SisaStore.purge_plan``: stage checkpoints of histories
   that hold deleted ids, superseded versions' weights beyond the retention setting, temporary folders),
   planned in the ledger before anything is removed and stamped when done.

Only then does the ledger say ``done`` (the ledger refuses ``done`` while a planned purge is unfinished).
So on restart, for every unfinished request:

* ``received``: it is planned now (nothing was done yet), with the options stored with it;
* ``planned``/``running`` and its target version exists, made by this request: the crash came after the
  weights commit; the purge is (re)done, then the request is marked done; nothing is re-run;
* ``planned``/``running`` otherwise: it runs again from its parent version. An exact retrain finds the
  stage checkpoints it had already written under their history keys and continues after them, so the
  result is the same as an uninterrupted run, bit for bit.

Every run (``forget``, ``requests resume``, the service's worker) ends with a sweep of the same purge rules
against the current version, so that what an older unlearnkit, a killed purge or a failed request left
behind is removed too (recorded with no request id). A request is therefore applied exactly once, and
``done`` means no artefact trained on its ids remains. Model versions are never overwritten.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from typing import Iterator

import numpy as np

from .. import _fault
from ..backends import Backend, make_backend, ray_available
from ..errors import UnlearnKitError
from ..sisa.layout import ACTIVE, DELETED_APPROX, DELETED_EXACT, derived_seed
from ..sisa.model import SisaModel
from ..training import metered
from .approx import approximate_delete
from .cost import Calibration, Policy
from .ledger import Ledger, RequestRecord
from .planner import ApproxSettings, Plan, make_plan, validate_ids


@contextlib.contextmanager
def model_lock(sisa: SisaModel, echo: bool = False) -> Iterator[None]:
    """Exclusive lock on the model directory (released by the kernel if the process dies)."""
    with sisa.store.lock(echo):
        yield


class Unlearner:
    """Deletion requests on one SISA model directory.

    ``policy`` and ``approx`` default to what the model directory stores (``sisa.json`` ``hybrid`` entry) or
    the documented defaults. ``evaluate`` adds the new ensemble's test accuracy to each request's metrics.
    ``policy`` and ``evaluate`` are stored with every request this object submits, and a request is always
    planned and run with its own stored options, whichever process runs it; they apply here only to
    requests of older ledgers, which stored none.
    """

    def __init__(self, model: SisaModel | str | os.PathLike, *, policy: Policy | None = None,
                 approx: ApproxSettings | None = None, device: str = "cpu", workers: int | None = None,
                 data_dir: str | os.PathLike | None = None, evaluate: bool = False, echo: bool = False,
                 backend: Backend | None = None, progress_log: str | os.PathLike | None = None) -> None:
        self.sisa = model if isinstance(model, SisaModel) else SisaModel.open(model, data_dir=data_dir)
        stored = self.sisa.meta.get("hybrid") or {}
        self.policy = policy or Policy(**stored.get("policy", {}))
        self.approx = approx or ApproxSettings(**stored.get("approx", {}))
        self.device = device
        self.workers = self.sisa.workers if workers is None else workers
        if backend is not None:
            self.workers = backend.workers
        elif self.workers > 1 and workers is None and not ray_available():
            self.workers = 1  # the model's parallel retraining runs on Ray; without it, here (the same weights)
        self.evaluate = evaluate
        self.echo = echo
        _fault.arm()
        self._ledger: Ledger | None = None  # opened (and created) on first use
        # Parallel exact retraining: tasks of ``backend``, else of a local Ray instance started when a plan first
        # runs shards in parallel and kept until close() (a long-running service pays its start once).
        self.backend, self._own_backend, self.progress_log = backend, backend is None, progress_log

    @property
    def ledger(self) -> Ledger:
        """The model's request ledger (a request refused before submission, or a plan, creates none)."""
        if self._ledger is None:
            self._ledger = Ledger(self.sisa.store.ledger_path)
        return self._ledger

    @property
    def calibration(self) -> Calibration:
        return Calibration.from_dict(self.sisa.meta.get("calibration"))

    def _exact_backend(self, workers: int) -> Backend | None:
        """Where an exact deletion retrains: a backend given to this object (a Ray cluster: always there), else
        here for a plan of one worker, else a local Ray instance."""
        if self.backend is not None and not self._own_backend:
            return self.backend
        if workers <= 1:
            return None
        if self.backend is None:
            self.backend = make_backend("local", workers=workers, num_cpus=workers * self.sisa.settings.threads,
                                        progress_log=self.progress_log)
        return self.backend

    @property
    def pool_warm(self) -> bool:
        return self.backend is not None and self.backend.started

    def close(self) -> None:
        if self.backend is not None and self._own_backend:
            self.backend.close()
            self.backend = None
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None

    def __enter__(self) -> "Unlearner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- planning ------------------------------------------------------------------------------------
    def plan(self, ids, mode: str = "auto", status: np.ndarray | None = None, policy: Policy | None = None) -> Plan:
        """What would happen to ``ids`` now (nothing is recorded or changed)."""
        if status is None:
            status = self.sisa.store.read_status(self.sisa.current_version())
        return make_plan(ids, self.sisa.provenance, status, epochs=self.sisa.config.epochs, workers=self.workers,
                         cal=self.calibration, policy=policy or self.policy, approx=self.approx, mode=mode,
                         pool_warm=self.pool_warm)

    def options(self) -> dict:
        """The options a request submitted here is stored with (and run with, by whichever process runs it)."""
        return {"policy": self.policy.to_dict(), "evaluate": bool(self.evaluate)}

    def _policy_of(self, record: RequestRecord) -> Policy:
        stored = (record.options or {}).get("policy")
        return self.policy if stored is None else Policy(**stored)

    def _evaluate_of(self, record: RequestRecord) -> bool:
        return bool((record.options or {}).get("evaluate", self.evaluate))

    # -- requests ------------------------------------------------------------------------------------
    def submit(
        self, ids, request_id: str | None = None, mode: str = "auto", source: str | None = None
    ) -> RequestRecord:
        """Record a request with this object's options (idempotent for a known ``request_id`` with the same
        ids, mode and options; a failed one is queued again, with the new mode and options)."""
        ids = validate_ids(ids, self.sisa.provenance)
        options = self.options()
        record, created = self.ledger.submit(ids, request_id, mode, source, options)
        if not created and record.state == "failed":
            record = self.ledger.retry(record.id, mode, options)
        return record

    def forget(
        self, ids, request_id: str | None = None, mode: str = "auto", source: str | None = None
    ) -> RequestRecord:
        """Submit a request and process it (after any earlier unfinished one); returns its final record."""
        record = self.submit(ids, request_id, mode, source)
        if record.state == "done":
            return record
        self.run_pending()
        return self.ledger.get(record.id)

    def run_pending(self) -> list[RequestRecord]:
        """Finish every unfinished request, oldest first, then sweep what no request may keep (see the module
        doc); a failure is recorded and raised after the rest ran."""
        finished, first_error = [], None
        with model_lock(self.sisa, self.echo):
            for record in self.ledger.unfinished():
                try:
                    finished.append(self._process(record))
                except UnlearnKitError as exc:
                    first_error = first_error or exc
            try:
                self.sweep()
            except UnlearnKitError as exc:
                first_error = first_error or exc
        if first_error is not None:
            raise first_error
        return finished

    def set_retention(self, keep_versions: int) -> list[dict]:
        """Keep the weights of ``keep_versions`` superseded versions from now on; lowering it purges at once
        (recorded in the ledger with no request id). Returns what was purged."""
        with model_lock(self.sisa, self.echo):
            self.sisa.store.set_keep_versions(keep_versions)
            return self.sweep()

    def sweep(self) -> list[dict]:
        """Purge, against the current version, whatever no request may keep; recorded with no request id.
        Call under the model lock (:meth:`run_pending` does)."""
        store = self.sisa.store
        if not store.version_numbers():
            return []
        current = store.current_version()
        return self._purge(None, store.read_status(current), current)

    def _purge(self, request_id: str | None, status: np.ndarray, current: int) -> list[dict]:
        """Plan (in the ledger), remove, and stamp every artefact that must go now that ``current`` is the
        current version, together with any purge an earlier process planned and did not finish."""
        store = self.sisa.store
        self.ledger.plan_purge(request_id, store.purge_plan(status, current))
        pending = self.ledger.pending_purges()
        for item in pending:
            store.purge(item, request_id=item["request_id"], when=item["planned"])
        self.ledger.finish_purges((item["kind"], item["path"]) for item in pending)
        return pending

    # -- one request ---------------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        if self.echo:
            print(text, file=sys.stderr, flush=True)

    def _process(self, record: RequestRecord) -> RequestRecord:
        store = self.sisa.store
        if record.state == "received":
            current = store.current_version()
            try:
                policy = self._policy_of(record)
                plan = self.plan(record.ids, record.mode, store.read_status(current), policy)
            except UnlearnKitError as exc:
                self.ledger.mark_failed(record.id, str(exc))
                raise
            details = {**plan.to_dict(), "policy": policy.to_dict(), "approx_settings": dataclasses.asdict(self.approx),
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
                raise UnlearnKitError(
                    f"version {target} of {store.path} was made by request {info.get('request_id')!r}, "
                    f"not by {record.id!r}: the ledger and the versions disagree"
                )
            cost = info.get("cost", {})
            purged = self._purge(record.id, store.read_status(target), target)
            _fault.point("purged")
            return self.ledger.mark_done(
                record.id,
                target,
                cost.get("seconds"),
                cost.get("samples"),
                info.get("metrics", {}),
                note=f"version {target} was committed before an interruption; {_purge_text(purged)}; recorded now",
            )
        if store.current_version() != parent:
            raise UnlearnKitError(f"request {record.id!r} was planned against version {parent}, but the model is at "
                                  f"version {store.current_version()}; resubmit it under a new id")
        record = self.ledger.mark_running(record.id)
        self._say(
            f"request {record.id}: attempt {record.attempts}, {record.decision} from version {parent} to {target}"
        )
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
        _ = sisa.data  # loading the data set is the process's cost, not the request's
        started = time.perf_counter()
        with metered() as meter:
            version = store.read_version(parent)
            # exact: ids deleted approximately before are folded in (retrained without, now exact)
            todo = (version.status[record.ids] != DELETED_EXACT) if record.decision == "exact" else (version.status[record.ids] == ACTIVE)  # noqa: E501
            new_ids = record.ids[todo]
            metrics: dict = {"deleted": int(new_ids.size), "already_deleted": int(record.ids.size - new_ids.size)}
            if record.decision == "exact":
                metrics["folded_approx"] = int((version.status[new_ids] == DELETED_APPROX).sum())
            if record.decision == "exact":
                def stage_done(shard: int, stage: int, seconds: float) -> None:
                    self._say(f"  shard {shard} stage {stage} retrained ({seconds:.2f} s)")

                workers = int(((record.plan or {}).get("exact") or {}).get("workers", 1))
                result = sisa.exact_delete(version, new_ids, workers=workers, on_stage=stage_done,
                                           backend=self._exact_backend(workers))
                states, status = result.states, result.status
                metrics["shards"] = [r.summary() for r in result.shards]
                samples = sum(r.samples for r in result.shards)
            else:
                settings = ApproxSettings(**record.plan.get("approx_settings", {})) if record.plan else self.approx
                result = approximate_delete(
                    sisa,
                    version,
                    new_ids,
                    settings,
                    seed=derived_seed(sisa.meta["sisa"]["seed"], record.id),
                    device=self.device,
                )
                states, status = result.states, result.status
                metrics["shards"] = result.shards
                samples = meter.backward
                _fault.point("approx-done")
            if self._evaluate_of(record):
                from ..sisa.store import Version

                metrics["test_acc"] = sisa.test_accuracy(Version(target, states, status, {}), device=self.device)
        seconds = time.perf_counter() - started
        pending = np.bincount(sisa.provenance.shard_of[status == DELETED_APPROX], minlength=sisa.shards)
        info = {
            "parent": parent,
            "request_id": record.id,
            "decision": record.decision,
            "shards": [
                {"shard": k, "exact": bool(pending[k] == 0), "pending_approx": int(pending[k])}
                for k in range(sisa.shards)
            ],
            "metrics": metrics,
            "cost": {"seconds": round(seconds, 4), "samples": int(samples), "forward_samples": meter.forward},
        }
        store.write_version(target, states, status, info)  # the weights commit
        _fault.point("committed")
        purged = self._purge(record.id, status, target)  # the purge: part of the commit
        _fault.point("purged")
        done = self.ledger.mark_done(record.id, target, round(time.perf_counter() - started, 4), int(samples), metrics,
                                     note=f"version {target}; {_purge_text(purged)}")
        self._say(f"request {record.id}: done, version {target} ({done.actual_seconds:.2f} s; "
                  f"estimated {record.estimated_seconds or 0:.2f} s; {_purge_text(purged)})")
        return done


def _purge_text(items: list[dict]) -> str:
    counts: dict[str, int] = {}
    for item in items:
        counts[item["kind"]] = counts.get(item["kind"], 0) + 1
    names = {"stage": "stage checkpoint(s)", "version-weights": "superseded version weights",
             "temporary": "temporary folder(s)", "quarantined": "quarantined checkpoint(s)"}
    return "purged " + (", ".join(f"{n} {names.get(k, k)}" for k, n in sorted(counts.items())) or "nothing")


def ids_from_request(
    sisa: SisaModel, ids_file: str | None = None, spec: str | None = None, seed: int = 0
) -> tuple[np.ndarray, str]:
    """Ids from ``--ids FILE`` (one per line, '#' comments) or a request spec (``random:0.001``, ``class:3``,
    ``ids:FILE``)."""
    from ..requests import build_request

    if (ids_file is None) == (spec is None):
        raise UnlearnKitError("give exactly one of --ids FILE or --request SPEC")
    spec = f"ids:{ids_file}" if ids_file is not None else spec
    request = build_request(spec, sisa.data, seed)
    if request.effect != "remove":
        raise UnlearnKitError(f"a SISA model removes samples; {spec!r} is a {request.effect} request")
    return request.forget.numpy().astype(np.int64), spec
