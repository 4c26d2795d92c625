"""The statistics of the audit: per-example likelihood-ratio tests (U-LiRA), ROC summaries, and the NeurIPS
2023 unlearning challenge's per-example ε and its binned forgetting score.

Everything here works on matrices of a per-example feature (the logit-scaled confidence φ, see
:func:`unlearnkit.evaluation.logit_scaled_confidence`) with one row per model and one column per example:
``unlearned[k, i]`` is φ of example i under the k-th unlearned model, ``retrained[k, i]`` under the k-th
retrained model. Pure NumPy, float64, no models: the tests check each piece against hand computations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..errors import UnlearnKitError

# -- U-LiRA: Gaussian likelihood ratios, held out ---------------------------------------------------------
VARIANCE_FLOOR = 1e-6  # φ units²; keeps a degenerate (constant) pool from giving infinite likelihoods
# Carlini et al. (2022, LiRA): below about 64 shadow models per side, one variance shared by all examples
# ("global") attacks better than noisy per-example variances.
GLOBAL_VARIANCE_BELOW = 64

Variance = Literal["auto", "global", "per_example"]


def gaussian_log_likelihood_ratio(x, mean_a, var_a, mean_b, var_b) -> np.ndarray:
    """log N(x; mean_a, var_a) − log N(x; mean_b, var_b), elementwise (positive: x fits *a* better)."""
    x, mean_a, var_a, mean_b, var_b = (np.asarray(v, dtype=np.float64) for v in (x, mean_a, var_a, mean_b, var_b))
    return (-0.5 * np.log(var_a) - 0.5 * (x - mean_a) ** 2 / var_a) - (
        -0.5 * np.log(var_b) - 0.5 * (x - mean_b) ** 2 / var_b
    )


def resolve_variance(variance: Variance, pool_size: int) -> str:
    if variance not in ("auto", "global", "per_example"):
        raise UnlearnKitError(f"unknown variance mode {variance!r}; use auto, global or per_example")
    if variance == "auto":
        return "global" if pool_size < GLOBAL_VARIANCE_BELOW else "per_example"
    return variance


def _fit(pool: np.ndarray, variance: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-example means and variances (ddof = 1) of a models × examples pool."""
    mean = pool.mean(0)
    var = pool.var(0, ddof=1)
    if variance == "global":
        var = np.full_like(var, var.mean())
    return mean, np.maximum(var, VARIANCE_FLOOR)


def held_out_likelihood_ratios(unlearned: np.ndarray, retrained: np.ndarray, variance: Variance = "auto"
                               ) -> tuple[np.ndarray, np.ndarray]:
    """U-LiRA scores of every model under a leave-one-pair-out protocol.

    For each k, Gaussians are fitted per example to the *other* N − 1 unlearned models and the other N − 1
    retrained models (pair k is left out of both pools: unlearned model k and retrained model k are the
    targets, never the shadows), and each target's φ is scored by
    log N(φ; unlearned fit) − log N(φ; retrained fit). Returns (scores of the unlearned targets, scores of
    the retrained targets), each models × examples; a positive score says "unlearned".
    """
    unlearned = np.asarray(unlearned, dtype=np.float64)
    retrained = np.asarray(retrained, dtype=np.float64)
    if unlearned.ndim != 2 or unlearned.shape != retrained.shape:
        raise UnlearnKitError(
            f"U-LiRA needs two models × examples matrices of one shape, got {unlearned.shape} and {retrained.shape}"
        )
    n = unlearned.shape[0]
    if n < 3:
        raise UnlearnKitError(f"U-LiRA needs at least 3 models per side (a variance from the held-out pools), got {n}")
    mode = resolve_variance(variance, n - 1)
    scores_u = np.empty_like(unlearned)
    scores_r = np.empty_like(retrained)
    for k in range(n):
        keep = np.arange(n) != k
        mean_u, var_u = _fit(unlearned[keep], mode)
        mean_r, var_r = _fit(retrained[keep], mode)
        scores_u[k] = gaussian_log_likelihood_ratio(unlearned[k], mean_u, var_u, mean_r, var_r)
        scores_r[k] = gaussian_log_likelihood_ratio(retrained[k], mean_u, var_u, mean_r, var_r)
    return scores_u, scores_r


def decision_accuracy(positive_scores: np.ndarray, negative_scores: np.ndarray, axis=None) -> np.ndarray | float:
    """% correct of the rule "positive iff score > 0" over equally many positives and negatives (a tie, score
    exactly 0, counts half). With ``axis=0`` on models × examples matrices: one accuracy per example."""
    pos = np.asarray(positive_scores, dtype=np.float64)
    neg = np.asarray(negative_scores, dtype=np.float64)
    right = (pos > 0) + 0.5 * (pos == 0)
    right_neg = (neg < 0) + 0.5 * (neg == 0)
    return 100.0 * 0.5 * (right.mean(axis=axis) + right_neg.mean(axis=axis))


def roc_auc(positive_scores, negative_scores) -> float:
    """P(score of a random positive > that of a random negative) + ½ P(tie) (Mann–Whitney)."""
    pos = np.sort(np.asarray(positive_scores, dtype=np.float64).ravel())
    neg = np.sort(np.asarray(negative_scores, dtype=np.float64).ravel())
    if not pos.size or not neg.size:
        return float("nan")
    below = np.searchsorted(neg, pos, side="left")  # negatives strictly below each positive
    ties = np.searchsorted(neg, pos, side="right") - below
    return float((below + 0.5 * ties).sum() / (pos.size * neg.size))


def tpr_at_fpr(positive_scores, negative_scores, fpr: float) -> float:
    """The largest true-positive rate (%) of a rule "positive iff score ≥ τ" whose false-positive rate is ≤ ``fpr``.

    Every τ that changes the decision is one of the scores, so trying each score (and +∞, flagging nothing)
    is exact; ties are flagged together.
    """
    pos = np.sort(np.asarray(positive_scores, dtype=np.float64).ravel())
    neg = np.sort(np.asarray(negative_scores, dtype=np.float64).ravel())
    if not pos.size or not neg.size:
        return float("nan")
    taus = np.concatenate([np.unique(np.concatenate([pos, neg])), [np.inf]])
    fprs = (neg.size - np.searchsorted(neg, taus, side="left")) / neg.size
    tprs = (pos.size - np.searchsorted(pos, taus, side="left")) / pos.size
    return 100.0 * float(tprs[fprs <= fpr + 1e-12].max())


@dataclass
class AttackSummary:
    """What the audit reports of one per-example attack over a set of examples."""

    accuracy: float  # % (50 = chance)
    auc: float
    tpr_at_1pct_fpr: float  # %
    tpr_at_01pct_fpr: float  # %
    per_example_accuracy: np.ndarray  # % per example

    def to_dict(self) -> dict:
        return {"accuracy": round(self.accuracy, 4), "auc": round(self.auc, 6),
                "tpr_at_1pct_fpr": round(self.tpr_at_1pct_fpr, 4), "tpr_at_0.1pct_fpr": round(self.tpr_at_01pct_fpr, 4)}


def ulira(unlearned: np.ndarray, retrained: np.ndarray, variance: Variance = "auto") -> AttackSummary:
    """U-LiRA (Hayes et al. 2024) with the held-out protocol of :func:`held_out_likelihood_ratios`: accuracy of
    the Bayes rule (equal priors), AUC and TPR at 1 % / 0.1 % FPR pooled over examples × held-out targets."""
    scores_u, scores_r = held_out_likelihood_ratios(unlearned, retrained, variance)
    return AttackSummary(
        accuracy=float(decision_accuracy(scores_u, scores_r)),
        auc=roc_auc(scores_u, scores_r),
        tpr_at_1pct_fpr=tpr_at_fpr(scores_u, scores_r, 0.01),
        tpr_at_01pct_fpr=tpr_at_fpr(scores_u, scores_r, 0.001),
        per_example_accuracy=np.asarray(decision_accuracy(scores_u, scores_r, axis=0)),
    )


# -- the NeurIPS 2023 unlearning challenge's score --------------------------------------------------------
# Constants of the challenge's published evaluation (google-deepmind/unlearning_evaluation, metric.py).
DELTA = 1e-5
EPSILON_CAP = 50.0
THRESHOLDS_PER_UNIT = 100  # threshold grid density, per unit of φ
INTERVAL_BUFFER = 2.0  # the interval rule's search range around the peakier distribution, in φ units
PEAKY_RATIO = 0.01  # a distribution whose range is < 1 % of the other's makes ε the cap outright
BUCKET_WIDTH = 0.5


def epsilon_from_rates(fpr, fnr, delta: float = DELTA) -> np.ndarray:
    """ε of one threshold test from its error rates (Kairouz et al. 2015, as the challenge uses it):

    ε = max(log(1 − δ − FPR) − log FNR, log(1 − δ − FNR) − log FPR), clipped below at 0;
    +∞ where FPR = FNR = 0 (perfect separation); NaN (no evidence: discarded) where exactly one is 0.
    """
    fpr = np.asarray(fpr, dtype=np.float64)
    fnr = np.asarray(fnr, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.log(1.0 - delta - fpr) - np.log(fnr)
        b = np.log(1.0 - delta - fnr) - np.log(fpr)
        eps = np.fmax(a, b)  # fmax ignores a NaN (log of a negative) on one side
    eps = np.clip(eps, 0.0, None)
    eps = np.where((fpr == 0) & (fnr == 0), np.inf, eps)
    eps = np.where((fpr * fnr == 0) & ~((fpr == 0) & (fnr == 0)), np.nan, eps)
    return eps


def _grid(low: float, high: float, per_unit: int) -> np.ndarray:
    return np.linspace(low, high, num=int(math.ceil((high - low) * per_unit)))


def _count_at_least(sorted_values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    return sorted_values.size - np.searchsorted(sorted_values, thresholds, side="left")


def _count_within(sorted_values: np.ndarray, left: np.ndarray, right: np.ndarray, repeats: int) -> np.ndarray:
    """Values in [left, right] for intervals whose right ends are ``right`` each repeated ``repeats`` times."""
    up_to_right = np.repeat(np.searchsorted(sorted_values, right, side="right"), repeats)
    inside = up_to_right - np.searchsorted(sorted_values, left, side="left")
    return np.maximum(inside, 0)  # an interval with left > right holds nothing


def _distinct(hits: np.ndarray, n_hit: int, misses: np.ndarray, n_miss: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (FPR, FNR) pairs of tests that flag ``misses`` of ``n_miss`` negatives and ``hits`` of ``n_hit``
    positives (counts per test): ε depends on a test only through that pair, and most of a grid repeats them."""
    present = np.zeros((n_miss + 1) * (n_hit + 1), dtype=bool)
    present[misses * (n_hit + 1) + hits] = True
    codes = np.flatnonzero(present)
    return (codes // (n_hit + 1)) / n_miss, 1.0 - (codes % (n_hit + 1)) / n_hit


def threshold_rates(positive: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (FPR, FNR) pairs of the tests in the challenge's two decision-rule families, for one example.

    ``positive`` is the side with the larger median. *Single threshold*: "positive iff φ ≥ t" for t on a grid
    of 100 per unit of φ from the smallest to the largest value of both sides. *Interval*: "the peakier side
    (smaller range) iff l ≤ φ ≤ r", with r on a grid of 100 per unit over [min + width − 2, max + 2] of the
    peakier side's values and, for each r, l on a 400-point grid over [r − width − 2, r − width + 2],
    width = the peakier side's range. Counting with sorted values gives exactly the grid's rates.
    """
    pos = np.sort(np.asarray(positive, dtype=np.float64))
    neg = np.sort(np.asarray(negative, dtype=np.float64))
    both = np.concatenate([pos, neg])
    t = _grid(both.min(), both.max(), THRESHOLDS_PER_UNIT)
    fpr_single, fnr_single = _distinct(_count_at_least(pos, t), pos.size, _count_at_least(neg, t), neg.size)

    pos_range, neg_range = pos[-1] - pos[0], neg[-1] - neg[0]
    peaky, other = (neg, pos) if pos_range >= neg_range else (pos, neg)
    width = min(pos_range, neg_range)
    right = _grid(peaky[0] + width - INTERVAL_BUFFER, peaky[-1] + INTERVAL_BUFFER, THRESHOLDS_PER_UNIT)
    n_left = int(math.ceil(2 * INTERVAL_BUFFER * THRESHOLDS_PER_UNIT))
    left = np.linspace(right - width - INTERVAL_BUFFER, right - width + INTERVAL_BUFFER, num=n_left, axis=1).ravel()
    fpr_interval, fnr_interval = _distinct(_count_within(peaky, left, right, n_left), peaky.size,
                                           _count_within(other, left, right, n_left), other.size)
    return np.concatenate([fpr_single, fpr_interval]), np.concatenate([fnr_single, fnr_interval])


def example_epsilon(unlearned: np.ndarray, retrained: np.ndarray, delta: float = DELTA) -> float:
    """The challenge's ε estimate for one example from its φ under N unlearned and N retrained models."""
    unlearned = np.asarray(unlearned, dtype=np.float64)
    retrained = np.asarray(retrained, dtype=np.float64)
    # The positive side is whichever has the larger median (ties: the unlearned side).
    if np.median(retrained) > np.median(unlearned):
        pos, neg = retrained, unlearned
    else:
        pos, neg = unlearned, retrained
    pos_range, neg_range = np.ptp(pos), np.ptp(neg)
    largest, smallest = max(pos_range, neg_range), min(pos_range, neg_range)
    if largest == 0:
        # Both sides constant (the challenge's code fails here): identical values are indistinguishable,
        # different ones perfectly separated.
        return 0.0 if pos[0] == neg[0] else EPSILON_CAP
    if smallest / largest < PEAKY_RATIO:
        return EPSILON_CAP
    eps = epsilon_from_rates(*threshold_rates(pos, neg), delta=delta)
    if np.all(np.isnan(eps)):
        return 0.0  # no test had both error rates positive: no evidence (the challenge's code asserts here)
    return float(np.clip(np.nanmax(eps), 0.0, EPSILON_CAP))


def example_epsilons(unlearned: np.ndarray, retrained: np.ndarray, delta: float = DELTA) -> np.ndarray:
    """:func:`example_epsilon` for every column of two models × examples matrices."""
    unlearned = np.asarray(unlearned, dtype=np.float64)
    retrained = np.asarray(retrained, dtype=np.float64)
    return np.array([example_epsilon(unlearned[:, i], retrained[:, i], delta) for i in range(unlearned.shape[1])])


def bucket_points(n_models: int) -> list[tuple[float, float]]:
    """The challenge's score buckets for ``n_models`` unlearned models: [(upper edge, points)], edges every 0.5
    from 0.5 up to ceil(log(n − 1)) (about the largest finite ε that n models can show), points 1, ½, ¼, …"""
    if n_models < 3:
        raise UnlearnKitError(f"the challenge score needs at least 3 models per side, got {n_models}")
    top = math.ceil(math.log(n_models - 1))
    buckets = []
    start, points = 0.0, 1.0
    while start + BUCKET_WIDTH <= top:
        buckets.append((start + BUCKET_WIDTH, points))
        start += BUCKET_WIDTH
        points /= 2
    return buckets


def example_points(epsilons: np.ndarray, n_models: int) -> np.ndarray:
    """Points per example: those of the first bucket whose upper edge exceeds its ε (0 beyond the last)."""
    buckets = bucket_points(n_models)
    out = np.zeros(len(epsilons))
    for i, eps in enumerate(np.asarray(epsilons, dtype=np.float64)):
        for edge, points in buckets:
            if eps < edge:
                out[i] = points
                break
    return out


def forgetting_quality(epsilons: np.ndarray, n_models: int) -> float:
    """The challenge's forgetting quality F: mean points over the forget set (1 = every example has ε < 0.5)."""
    return float(example_points(epsilons, n_models).mean())


def challenge_score(forget_quality: float, retain_acc: float, retrain_retain_acc: float, test_acc: float,
                    retrain_test_acc: float) -> float:
    """F × (RA / RA of retraining) × (TA / TA of retraining), accuracies averaged over the models."""
    return forget_quality * (retain_acc / retrain_retain_acc) * (test_acc / retrain_test_acc)


__all__ = ["gaussian_log_likelihood_ratio", "held_out_likelihood_ratios", "decision_accuracy", "roc_auc", "tpr_at_fpr",
           "AttackSummary", "ulira", "epsilon_from_rates", "threshold_rates", "example_epsilon", "example_epsilons",
           "bucket_points", "example_points", "forgetting_quality", "challenge_score", "DELTA", "EPSILON_CAP"]
