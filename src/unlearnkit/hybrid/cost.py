"""The cost model: how much work each path of a deletion causes, and how many seconds that is here.

Exact path (SISA retraining). For every affected shard ``k`` let ``f_k`` be the first slice that holds a
newly deleted id *or* an id the approximate path deleted earlier (the stage checkpoints still contain
those, so an exact retrain must go back before them too), and ``c[k, j]`` the samples of slice ``j`` that
remain after the deletion. Stage ``r`` trains on ``C[k, r] = c[k, 0] + ... + c[k, r-1]`` samples for ``E``
epochs, so

    W_exact(k) = E * sum_{r = f_k + 1 .. R} C[k, r]            (sample passes)

and the shards are retrained in parallel by ``workers`` processes (longest first), so

    T_exact = overhead + makespan_k(W_exact(k) * t_train + stages_k * t_stage) [+ t_pool unless it runs]

The planner takes the cheaper of that and running the shards one after the other in the serving process
(``overhead + sum_k (...)``): starting worker processes costs seconds (imports, first optimiser step), so
parallel retraining only pays off for large jobs or once a long-running service has its pool started.

Approximate path. For every affected shard, the modification (a registered method, by default gradient
ascent on the shard's deleted ids) costs about ``epochs * n_k`` passes, and the amend step fine-tunes on
the remaining samples ``P_k`` of the affected slices in rounds of ``min(round, P_k)`` samples until its
loss on a probe of them stops improving, ``rounds`` rounds on average (measured when calibrating):

    W_approx(k) = ga_epochs * n_k + rounds * min(round, P_k)          (training passes)
    F_approx(k) = (rounds + 2) * min(probe, P_k)                       (forward-only probe passes)
    T_approx = overhead + sum_k (W_approx(k) * t_approx + F_approx(k) * t_eval + t_shard)

``t_train`` (per sample pass in a shard worker at the model's thread count), ``t_approx`` and ``t_eval``
(per training / inference sample in the serving process), the overheads and ``rounds`` are measured on this
machine by :func:`unlearnkit.hybrid.calibrate` and stored in the model's ``sisa.json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from ..options import BIG, check_fields, declare, option


@dataclass
class Calibration:
    """Per-sample times and overheads measured on this machine (seconds)."""

    train_seconds_per_sample: float = 3e-4  # stage training, one sample pass, in one shard worker
    approx_seconds_per_sample: float = 3e-4  # approximate path, one sample pass, in the serving process
    eval_seconds_per_sample: float = 1e-4  # one inference sample (eval mode) in the serving process
    request_overhead_seconds: float = 0.5  # read the current version, write the new one, ledger
    stage_overhead_seconds: float = 0.05  # write (and later read) one stage checkpoint
    shard_overhead_seconds: float = 0.05  # approximate path: build the shard model, copy it, probe
    pool_overhead_seconds: float = 3.0  # start the worker processes (parallel exact retraining only)
    amend_rounds: float = 3.0  # mean rounds the amend step runs before its loss stops improving
    measured: str | None = None  # when (ISO time); None: defaults, never measured

    @classmethod
    def from_dict(cls, values: dict | None) -> "Calibration":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (values or {}).items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Estimate:
    samples: int  # total training sample passes
    seconds: float
    per_shard: dict[int, int]  # shard -> training sample passes
    workers: int = 1  # exact path: processes it runs on (1: in the serving process)

    def to_dict(self) -> dict:
        return {"samples": int(self.samples), "seconds": round(float(self.seconds), 4), "workers": self.workers,
                "per_shard": {str(k): int(v) for k, v in self.per_shard.items()}}


def makespan(loads: list[float], workers: int) -> float:
    """Finishing time of ``loads`` on ``workers`` machines, longest first (the order shards are run in)."""
    bins = [0.0] * max(1, min(workers, len(loads) or 1))
    for load in sorted(loads, reverse=True):
        bins[bins.index(min(bins))] += load
    return max(bins) if loads else 0.0


def exact_work(remaining: np.ndarray, first_slice: np.ndarray, epochs: int) -> np.ndarray:
    """``W_exact`` per shard: ``remaining`` is S x R (samples left per slice), ``first_slice`` S (-1: unaffected)."""
    cumulative = np.cumsum(remaining, axis=1)  # [k, r-1] = samples of stage r
    stage = np.arange(1, remaining.shape[1] + 1)[None, :]
    retrained = (first_slice[:, None] >= 0) & (stage > first_slice[:, None])
    return epochs * (cumulative * retrained).sum(axis=1)


def estimate_exact(remaining: np.ndarray, first_slice: np.ndarray, epochs: int, workers: int,
                   cal: Calibration, pool_warm: bool = False) -> Estimate:
    work = exact_work(remaining, first_slice, epochs)
    affected = np.flatnonzero(first_slice >= 0)
    stages = remaining.shape[1] - first_slice[affected]
    loads = [float(work[k]) * cal.train_seconds_per_sample + float(s) * cal.stage_overhead_seconds
             for k, s in zip(affected, stages)]
    seconds, used = cal.request_overhead_seconds + sum(loads), 1
    if workers > 1 and len(affected) > 1:
        parallel = (
            cal.request_overhead_seconds + makespan(loads, workers) + (0.0 if pool_warm else cal.pool_overhead_seconds)
        )
        if parallel < seconds:
            seconds, used = parallel, min(workers, len(affected))
    return Estimate(int(work.sum()), seconds, {int(k): int(work[k]) for k in affected}, used)


def estimate_approx(new_per_shard: np.ndarray, amend_pool: np.ndarray, ga_epochs: int, round_size: int,
                    probe_size: int, cal: Calibration) -> Estimate:
    """``new_per_shard``: newly deleted ids per shard; ``amend_pool``: remaining samples of its affected slices.

    The amend probe is evaluated before the modification, after it and after every round (forward only).
    """
    touched = new_per_shard > 0
    affected = np.flatnonzero(touched)
    work = ga_epochs * new_per_shard + cal.amend_rounds * np.minimum(round_size, amend_pool)
    work = np.where(touched, np.rint(work), 0).astype(np.int64)
    probes = np.where(touched, (cal.amend_rounds + 2) * np.minimum(probe_size, amend_pool), 0.0)
    seconds = cal.request_overhead_seconds + float(work.sum()) * cal.approx_seconds_per_sample \
        + float(probes.sum()) * cal.eval_seconds_per_sample + len(affected) * cal.shard_overhead_seconds
    return Estimate(int(work.sum()), seconds, {int(k): int(work[k]) for k in affected})


@dataclass
class Policy:
    """The decision rule: exact when ``T_exact <= max(budget_seconds, beta * T_approx)``.

    ``beta`` says how much more time exactness is worth than the approximate path (1: take the cheaper;
    ties go to exact). ``budget_seconds`` is the wait one accepts for an exact answer regardless (None: no
    budget). ``budget_stages`` expresses that budget in the model's own unit: the estimated time of
    retraining that many final stages of one shard (1.0: "a deletion that only touches the last slice of one
    shard is cheap enough to do exactly"). The larger of the two budgets applies.
    """

    beta: float = option(1.0, "exact when it costs at most BETA x the approximate path", ge=0, le=BIG)
    budget_seconds: float | None = option(None, "exact whenever it is estimated within this many seconds (null: no "
                                                "budget)", ge=0, le=1e9)
    budget_stages: float | None = option(1.0, "the same budget in units of one shard's last stage (0 or null turns it "
                                              "off)", ge=0, le=BIG)

    def __post_init__(self) -> None:
        check_fields(self)

    def budget(self, last_stage_seconds: float) -> float:
        candidates = [0.0]
        if self.budget_seconds is not None:
            candidates.append(self.budget_seconds)
        if self.budget_stages is not None:
            candidates.append(self.budget_stages * last_stage_seconds)
        return max(candidates)

    def to_dict(self) -> dict:
        return asdict(self)


declare("policy", "the hybrid policy", Policy)
