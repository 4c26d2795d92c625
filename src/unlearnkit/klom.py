"""KLoM: the KL divergence of margins (Georgiev et al. 2024, "Attribute-to-Delete: Machine Unlearning via Datamodel
Matching", appendix E.1), per example, between unlearned models and a bank of retrained ("oracle") models.

The **margin** of a model on example (x, y) is z_y(x) − log Σ_{j≠y} exp z_j(x) — the same quantity as the
logit-scaled confidence φ of U-LiRA (:func:`unlearnkit.evaluation.logit_scaled_confidence`). Over models trained
with different seeds each example's margin is a random variable; unlearning is perfect when, example by example,
the unlearned models' margins are distributed like the oracles'. KLoM(x) = KL(P_unlearned(x) ‖ P_oracle(x)).

Two estimators of the two distributions, both per example:

* ``"gaussian"`` (the default): each side fitted as a Gaussian (mean, variance with ddof = 1, floored at
  :data:`VARIANCE_FLOOR`), KL in closed form. Stable with the handful of models a CPU can afford.
* ``"histogram"``: the estimator of the published KLoM code — the margins clipped to ±``clip`` (100) and
  counted into ``bins`` (20) equal bins; here the bins span the example's pooled range on both sides (one set of
  edges for both histograms) and every bin gets ``eps`` (1e-5) before normalising so the KL is finite.

With a **single** unlearned model (``evaluate`` and ``bench`` records, which hold one model per seed) its spread
cannot be estimated, so :func:`klom_single` takes it to be the oracles' — KL(N(m, σ²_o) ‖ N(μ_o, σ²_o)) =
(m − μ_o)² / (2 σ²_o), half the squared z-score of the model's margin under the oracle bank — with one variance
shared by all examples of a split when the bank has fewer than 64 models (as LiRA advises for small pools). A
held-out retrained model scores ≈ ½ (1 + 1/B) on average under this estimate: the noise floor.

Everything here is NumPy on models × examples matrices; :func:`summary` reduces a per-example vector to the
median and 95th percentile the reports show.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from .errors import UnlearnKitError

VARIANCE_FLOOR = 1e-6  # margin units²: a constant pool would otherwise give an infinite KL
GLOBAL_VARIANCE_BELOW = 64  # single-model KLoM: one variance per split below this many oracles
HISTOGRAM_BINS, HISTOGRAM_CLIP, HISTOGRAM_EPS = 20, 100.0, 1e-5

Estimator = Literal["gaussian", "histogram"]
ESTIMATORS = ("gaussian", "histogram")


def gaussian_kl(mean_p, var_p, mean_q, var_q) -> np.ndarray:
    """KL(N(mean_p, var_p) ‖ N(mean_q, var_q)) elementwise, in nats."""
    mean_p, var_p, mean_q, var_q = (np.asarray(v, dtype=np.float64) for v in (mean_p, var_p, mean_q, var_q))
    return 0.5 * (np.log(var_q / var_p) + (var_p + (mean_p - mean_q) ** 2) / var_q - 1.0)


def _matrix(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2:
        raise UnlearnKitError(f"KLoM: {name} margins must be a models × examples matrix, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise UnlearnKitError(f"KLoM: {name} margins must be finite")
    return array


def klom(unlearned, oracles, estimator: Estimator = "gaussian", *, bins: int = HISTOGRAM_BINS,
         clip: float = HISTOGRAM_CLIP, eps: float = HISTOGRAM_EPS) -> np.ndarray:
    """Per-example KL(unlearned margins ‖ oracle margins) from models × examples matrices (nats)."""
    u, o = _matrix(unlearned, "unlearned"), _matrix(oracles, "oracle")
    if u.shape[1] != o.shape[1]:
        raise UnlearnKitError(f"KLoM: {u.shape[1]} examples under the unlearned models, {o.shape[1]} under the oracles")
    if estimator == "gaussian":
        if u.shape[0] < 2 or o.shape[0] < 2:
            raise UnlearnKitError("KLoM (gaussian): at least 2 models per side (use klom_single for one model)")
        return gaussian_kl(u.mean(0), np.maximum(u.var(0, ddof=1), VARIANCE_FLOOR),
                           o.mean(0), np.maximum(o.var(0, ddof=1), VARIANCE_FLOOR))
    if estimator == "histogram":
        return _histogram_kl(u, o, bins, clip, eps)
    raise UnlearnKitError(f"unknown KLoM estimator {estimator!r}; use {' or '.join(ESTIMATORS)}")


def _histogram_kl(u: np.ndarray, o: np.ndarray, bins: int, clip: float, eps: float) -> np.ndarray:
    u, o = np.clip(u, -clip, clip), np.clip(o, -clip, clip)
    pooled = np.concatenate([u, o])
    low, high = pooled.min(0), pooled.max(0)
    width = np.where(high > low, high - low, 1.0)
    n_examples = u.shape[1]

    def probabilities(values: np.ndarray) -> np.ndarray:
        which = np.clip(((values - low) / width * bins).astype(np.int64), 0, bins - 1)  # the maximum joins the last bin
        flat = which + bins * np.arange(n_examples)[None, :]
        counts = np.bincount(flat.ravel(), minlength=bins * n_examples).reshape(n_examples, bins) + eps
        return counts / counts.sum(1, keepdims=True)

    p, q = probabilities(u), probabilities(o)
    return (p * (np.log(p) - np.log(q))).sum(1)


def klom_single(margins, oracles) -> np.ndarray:
    """Per-example KLoM of **one** model (``margins``: one value per example) against an oracle bank (models ×
    examples): (m − μ_o)² / (2 σ²_o), the oracles' variance standing in for the model's (see the module doc)."""
    m = np.asarray(margins, dtype=np.float64).reshape(-1)
    o = _matrix(oracles, "oracle")
    if o.shape[1] != m.size:
        raise UnlearnKitError(f"KLoM: {m.size} margins for {o.shape[1]} oracle examples")
    if o.shape[0] < 2:
        raise UnlearnKitError("KLoM needs a bank of at least 2 retrained models")
    if not np.isfinite(m).all():
        raise UnlearnKitError("KLoM: margins must be finite")
    var = o.var(0, ddof=1)
    if o.shape[0] < GLOBAL_VARIANCE_BELOW and var.size:
        var = np.full_like(var, var.mean())
    var = np.maximum(var, VARIANCE_FLOOR)
    return (m - o.mean(0)) ** 2 / (2.0 * var)


def summary(values) -> dict[str, float]:
    """Median, 95th percentile and mean of per-example KLoM values (NaN when there are none)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if not v.size:
        return {"median": float("nan"), "p95": float("nan"), "mean": float("nan")}
    return {"median": round(float(np.median(v)), 6), "p95": round(float(np.percentile(v, 95)), 6),
            "mean": round(float(v.mean()), 6)}
