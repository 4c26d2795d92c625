"""Planning a deletion request: validate the ids, locate them, estimate both paths, decide.

Everything is array arithmetic on the provenance (``shard_of``/``slice_of``) and the current version's
per-sample status, so planning 10,000 ids takes a few milliseconds (the target is 50 ms).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import UnlearnKitError
from ..sisa.layout import ACTIVE, DELETED_APPROX, DELETED_EXACT, Provenance
from .cost import Calibration, Estimate, Policy, estimate_approx, estimate_exact


@dataclass
class ApproxSettings:
    """The approximate path (see :mod:`unlearnkit.hybrid.approx`); the planner needs its shape for the estimate."""

    method: str = "grad_ascent"  # registered method that modifies the affected shards' parameters
    method_options: dict = field(default_factory=dict)  # its options (defaults: the registry's)
    # passes the method makes over the shard's deleted ids, for the cost model (None: the method's own resolved
    # `epochs` option, so the estimate follows its registry default instead of a copy of it)
    modify_epochs: int | None = None
    amend_lr: float = 0.01  # the amend step: constant-LR SGD (momentum 0.9, weight decay 5e-4)
    amend_batch_size: int = 128
    amend_round_size: int = 2048  # samples per amend round (a fresh seeded draw from the affected slices)
    amend_probe_size: int = 512  # fixed seeded probe of those slices on which the amend loss is measured
    amend_max_rounds: int = 10
    amend_patience: int = 1  # rounds without a relative loss improvement of amend_min_delta before stopping
    amend_min_delta: float = 0.01

    def __post_init__(self) -> None:
        if self.modify_epochs is None:
            from ..methods import METHODS, make_config

            if self.method not in METHODS:
                raise UnlearnKitError(f"unknown approximate method {self.method!r}; known: {', '.join(METHODS)}")
            epochs = getattr(make_config(METHODS[self.method], self.method_options), "epochs", 1)
            # A relative default (null) resolves per run from the shard's recipe and size; the default method's guard
            # (grad ascent) stopped its committed runs within the first epoch, so the estimate counts one.
            self.modify_epochs = 1 if epochs is None else int(epochs)
        if self.amend_round_size < 1 or self.amend_max_rounds < 1 or self.amend_patience < 1:
            raise UnlearnKitError("amend_round_size, amend_max_rounds and amend_patience must be >= 1")


@dataclass
class Plan:
    decision: str  # "exact", "approx" or "noop"
    reason: str
    requested: int  # ids in the request
    new_ids: np.ndarray  # ids to delete now (sorted; those not deleted before)
    already_deleted: int
    affected_shards: list[int]
    first_slice: dict[
        int, int
    ]  # exact path: shard -> first slice to retrain from (incl. earlier approximate deletions)
    exact: Estimate | None
    approx: Estimate | None
    budget_seconds: float
    planning_ms: float = 0.0

    def to_dict(self) -> dict:
        return {
            "decision": self.decision, "reason": self.reason, "requested": self.requested,
            "to_delete": int(self.new_ids.size), "already_deleted": self.already_deleted,
            "affected_shards": self.affected_shards,
            "first_slice": {str(k): v for k, v in self.first_slice.items()},
            "exact": None if self.exact is None else self.exact.to_dict(),
            "approx": None if self.approx is None else self.approx.to_dict(),
            "budget_seconds": round(self.budget_seconds, 4), "planning_ms": round(self.planning_ms, 3),
        }

    @property
    def chosen(self) -> Estimate | None:
        return {"exact": self.exact, "approx": self.approx}.get(self.decision)


def validate_ids(ids, provenance: Provenance) -> np.ndarray:
    """Sorted int64 ids, or one clear error: empty, not integers, unknown, given twice, larger than a shard."""
    array = np.asarray(ids)
    if array.size == 0:
        raise UnlearnKitError("the request lists no ids: nothing to delete")
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise UnlearnKitError("request ids must be a flat list of integer sample ids")
    array = array.astype(np.int64)
    bad = array[(array < 0) | (array >= provenance.n)]
    if bad.size:
        raise UnlearnKitError(
            f"{bad.size} id(s) are not training samples of this model (ids are 0..{provenance.n - 1}; "
            f"first unknown: {int(bad[0])})"
        )
    array = np.sort(array)
    dupes = array[1:][array[1:] == array[:-1]]
    if dupes.size:
        raise UnlearnKitError(f"{np.unique(dupes).size} id(s) are given more than once (first: {int(dupes[0])}); "
                              "list every id once")
    smallest = int(provenance.shard_sizes().min())
    if array.size > smallest:
        raise UnlearnKitError(
            f"the request deletes {array.size} samples, more than a whole shard ({smallest}); a deletion this large "
            "is a new training run: train a new SISA model on the retained data, or split the request")
    return array


def last_stage_seconds(provenance: Provenance, epochs: int, cal: Calibration) -> float:
    """Estimated time of retraining the final stage of the largest shard (the budget's unit)."""
    return cal.request_overhead_seconds + epochs * int(provenance.shard_sizes().max()) * cal.train_seconds_per_sample \
        + cal.stage_overhead_seconds


def make_plan(ids, provenance: Provenance, status: np.ndarray, *, epochs: int, workers: int, cal: Calibration,
              policy: Policy, approx: ApproxSettings, mode: str = "auto", pool_warm: bool = False) -> Plan:
    """Locate ``ids``, estimate the exact and approximate paths against ``status``, and decide (``mode`` forces one)."""
    started = time.perf_counter()
    ids = validate_ids(ids, provenance)
    shards, slices = provenance.shards, provenance.slices
    # An exact request also folds in ids the approximate path deleted before (their shard is retrained
    # without them, so they become exact); otherwise only still-active ids are work.
    new = ids[status[ids] != DELETED_EXACT] if mode == "exact" else ids[status[ids] == ACTIVE]
    budget = policy.budget(last_stage_seconds(provenance, epochs, cal))
    if new.size == 0:
        return Plan("noop", f"all {ids.size} ids were deleted before", int(ids.size), new, int(ids.size), [], {},
                    None, None, budget, 1000 * (time.perf_counter() - started))

    after = status.copy()
    after[new] = DELETED_APPROX  # any non-active value: counts below only need "still there or not"
    remaining = provenance.counts(after)
    if (remaining.sum(axis=1) == 0).any():
        empty = int(np.flatnonzero(remaining.sum(axis=1) == 0)[0])
        raise UnlearnKitError(f"the request would delete every remaining sample of shard {empty}; a SISA ensemble "
                              "cannot lose a shard: train a new model on the retained data")
    new_shard = provenance.shard_of[new].astype(np.int64)
    new_slice = provenance.slice_of[new].astype(np.int64)
    new_per_shard = np.bincount(new_shard, minlength=shards)

    # Exact: first slice per affected shard, including ids the approximate path deleted earlier.
    first = np.full(shards, slices, dtype=np.int64)
    np.minimum.at(first, new_shard, new_slice)
    pending = np.flatnonzero(status == DELETED_APPROX)
    if pending.size:
        pending_first = np.full(shards, slices, dtype=np.int64)
        np.minimum.at(
            pending_first, provenance.shard_of[pending].astype(np.int64), provenance.slice_of[pending].astype(np.int64)
        )
        first = np.where(new_per_shard > 0, np.minimum(first, pending_first), first)
    first = np.where(new_per_shard > 0, first, -1)
    exact = estimate_exact(remaining, first, epochs, workers, cal, pool_warm)

    # Approximate: the amend pool is what remains of the slices that hold a new id.
    touched = np.zeros((shards, slices), dtype=bool)
    touched[new_shard, new_slice] = True
    amend_pool = (remaining * touched).sum(axis=1)
    approx_estimate = estimate_approx(new_per_shard, amend_pool, approx.modify_epochs, approx.amend_round_size,
                                      approx.amend_probe_size, cal)

    if mode == "exact":
        decision, reason = "exact", "exact retraining was asked for"
    elif mode == "approx":
        decision, reason = "approx", "the approximate path was asked for"
    elif mode == "auto":
        limit = max(budget, policy.beta * approx_estimate.seconds)
        if exact.seconds <= limit:
            decision = "exact"
            reason = f"exact retraining ({exact.seconds:.2f} s) is within " + (
                f"the budget ({budget:.2f} s)"
                if limit == budget
                else f"{policy.beta:g} x the approximate path ({approx_estimate.seconds:.2f} s)"
            )
        else:
            decision = "approx"
            reason = (f"exact retraining ({exact.seconds:.2f} s) exceeds both the budget ({budget:.2f} s) and "
                      f"{policy.beta:g} x the approximate path ({approx_estimate.seconds:.2f} s)")
    else:
        raise UnlearnKitError(f"unknown mode {mode!r}; use auto, exact or approx")
    affected = [int(k) for k in np.flatnonzero(new_per_shard)]
    return Plan(decision, reason, int(ids.size), new, int(ids.size - new.size), affected,
                {k: int(first[k]) for k in affected}, exact, approx_estimate, budget,
                1000 * (time.perf_counter() - started))
