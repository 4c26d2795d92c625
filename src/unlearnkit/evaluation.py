"""One evaluation function for every metric of the field (DESIGN.md §6).

``evaluate(model, request, data, reference=retrained, original=original)`` runs each model over the
training set (as the original saw it) and the test set once, batched, and derives every metric from those
outputs:

* **UA** = 100 − accuracy on D_f (labels as trained), **RA** = accuracy on D_r, **TA** = accuracy on the test
  set (without the forgotten classes for class requests; ``TA_all`` is on the whole test set).
* **MIA** efficacy, the field's convention (Jia et al. 2023; Fan et al. 2024): an RBF SVC (C=3, gamma="auto")
  trained on a scalar feature of members (the first |T| retain samples) and non-members (the test set T);
  efficacy = % of D_f it calls non-members. Features: true-class probability (``MIA``), prediction entropy
  (``MIA_entropy``) and modified entropy (``MIA_m_entropy``, Song & Mittal 2021). Fitting the SVC on 2×10,000
  points takes ~15 s per feature on a 2-core CPU, so by default each side is a seeded sample of at most
  ``mia_shadow_size`` = 3000 points (``None`` keeps the full convention); the figure is recorded.
* With a ``reference`` (the retrained model): per-metric gaps, **avg_gap** over UA/RA/TA/MIA, Jensen–Shannon
  divergence of the output distributions on D_f and on the test set (bits), and the L2 distance of the weights.
* With the ``original``: forgetting rate **FR** = (A_o(D_f) − A_u(D_f)) / A_o(D_f) and memory retention rate
  **MRR** = A_u(D_r) / A_o(D_r) (seed 003; the paper's exact formulas are not public, these are the design's).
* With ``cost`` and ``retrain_seconds``: **rte_s** and **rte_ratio**.
* Backdoor (edit) requests: **ASR** (% of triggered non-target test images classified as the target) and
  clean accuracy; relabel requests: **forget_acc_corrected** (accuracy on D_f against the true labels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
from sklearn.svm import SVC

from ._util import resolve_device
from .data import Dataset
from .requests import Request
from .training import Cost, predict_logits

GAP_METRICS = ("UA", "RA", "TA", "MIA")

METRIC_DOCS = {
    "UA": "unlearning accuracy: 100 − accuracy on the forget set (labels as trained)",
    "RA": "accuracy on the retain set",
    "TA": "test accuracy (class requests: on the retained classes only)",
    "TA_all": "accuracy on the whole test set",
    "MIA": "MIA-efficacy: % of D_f an SVC on the true-class probability calls non-members",
    "MIA_entropy": "MIA-efficacy with the prediction entropy as the feature",
    "MIA_m_entropy": "MIA-efficacy with the modified entropy (Song & Mittal 2021) as the feature",
    "forgotten_class_test_acc": "class requests: test accuracy on the forgotten classes",
    "ASR": "backdoor requests: % of triggered non-target test images classified as the target",
    "forget_acc_corrected": "relabel/edit requests: accuracy on D_f against the corrected labels",
    "avg_gap": "mean |metric − retrained metric| over UA, RA, TA, MIA",
    "gap_UA": "|UA − retrained UA| (likewise gap_RA, gap_TA, gap_MIA)",
    "js_forget": "mean Jensen–Shannon divergence (bits) of outputs to the retrained model's on D_f",
    "js_test": "the same on the test set",
    "l2_to_reference": "L2 distance between the weights and the retrained model's",
    "FR": "forgetting rate (A_o(D_f) − A_u(D_f)) / A_o(D_f)",
    "MRR": "memory retention rate A_u(D_r) / A_o(D_r)",
    "rte_s": "run-time efficiency: wall-clock seconds of the unlearning call",
    "rte_ratio": "rte_s / seconds of retraining",
    "forward_samples": "samples passed forward by the unlearning call",
    "non_finite_outputs": "samples with non-finite logits (a diverged model); their outputs count as uniform",
    "backward_samples": "samples passed backward by the unlearning call",
}


@dataclass
class Outputs:
    """Softmax probabilities of one model on the training set (as trained) and the test set."""

    train: torch.Tensor
    test: torch.Tensor
    triggered_test: torch.Tensor | None = None
    weights: dict[str, torch.Tensor] | None = None
    non_finite: int = 0  # samples whose logits were not finite (their probabilities are set to uniform)


@dataclass
class Evaluation:
    metrics: dict[str, float]
    outputs: Outputs = field(repr=False)

    def __getitem__(self, key: str) -> float:
        return self.metrics[key]


def _probabilities(logits: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Softmax; rows with non-finite logits (a diverged model) become uniform and are counted."""
    bad = ~torch.isfinite(logits).all(1)
    probs = torch.softmax(logits, 1)
    if bad.any():
        probs[bad] = 1.0 / logits.shape[1]
    return probs, int(bad.sum())


def model_outputs(model: nn.Module, data: Dataset, request: Request, device=None) -> Outputs:
    device = resolve_device(device if device is not None else "auto")
    x, _ = request.training_data(data)
    train, bad_train = _probabilities(predict_logits(model, x, device=device))
    test, bad_test = _probabilities(predict_logits(model, data.x_test, device=device))
    triggered = None
    if request.trigger is not None:
        keep = data.y_test != request.target
        triggered, _ = _probabilities(predict_logits(model, request.trigger.stamp(data.x_test[keep]), device=device))
    weights = {n: p.detach().cpu().clone() for n, p in model.named_parameters()}
    return Outputs(train, test, triggered, weights, non_finite=bad_train + bad_test)


def _acc(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float("nan") if labels.numel() == 0 else 100.0 * float((probs.argmax(1) == labels).float().mean())


def test_mask(data: Dataset, request: Request) -> torch.Tensor:
    """Test samples that count for TA: all, or those not of a forgotten class."""
    if request.classes:
        return ~torch.isin(data.y_test, torch.tensor(request.classes))
    return torch.ones_like(data.y_test, dtype=torch.bool)


# -- membership inference ------------------------------------------------------------------------------
def true_class_probability(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return probs[np.arange(len(labels)), labels]


def entropy(probs: np.ndarray) -> np.ndarray:
    p = np.clip(probs.astype(np.float64), 1e-30, 1.0)
    return -(p * np.log(p)).sum(1)


def modified_entropy(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mentr(p, y) = −(1 − p_y) log p_y − Σ_{i≠y} p_i log(1 − p_i)   (Song & Mittal 2021)."""
    p = np.clip(probs.astype(np.float64), 1e-30, 1 - 1e-12)  # float64: 1 − 1e-12 is 1.0 in float32
    rows = np.arange(len(labels))
    p_y = p[rows, labels]
    others = -(p * np.log(1 - p))
    others[rows, labels] = 0.0
    return -(1 - p_y) * np.log(p_y) + others.sum(1)


MIA_FEATURES = {
    "MIA": lambda probs, labels: true_class_probability(probs, labels),
    "MIA_entropy": lambda probs, labels: entropy(probs),
    "MIA_m_entropy": lambda probs, labels: modified_entropy(probs, labels),
}


def svc_efficacy(members: np.ndarray, non_members: np.ndarray, targets: np.ndarray) -> float:
    """% of ``targets`` that an RBF SVC (C=3, gamma='auto') fitted on members (1) vs non-members (0) calls 0."""
    x = np.concatenate([members, non_members]).reshape(-1, 1)
    y = np.concatenate([np.ones(len(members)), np.zeros(len(non_members))])
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(x, y)
    return 100.0 * float((clf.predict(targets.reshape(-1, 1)) == 0).mean())


def mia_efficacy(outputs: Outputs, data: Dataset, request: Request, y_train: torch.Tensor, *,
                 shadow_size: int | None = 3000, seed: int = 0) -> dict[str, float]:
    mask = test_mask(data, request)
    test_probs, test_labels = outputs.test[mask].numpy(), data.y_test[mask].numpy()
    members_ids = request.retain[: len(test_labels)]  # the convention: the first |T| retain samples
    member_probs, member_labels = outputs.train[members_ids].numpy(), y_train[members_ids].numpy()
    rng = np.random.default_rng(seed)
    if shadow_size is not None:
        member_pick = _pick(len(member_labels), shadow_size, rng)
        test_pick = _pick(len(test_labels), shadow_size, rng)
        member_probs, member_labels = member_probs[member_pick], member_labels[member_pick]
        test_probs, test_labels = test_probs[test_pick], test_labels[test_pick]
    forget_probs, forget_labels = outputs.train[request.forget].numpy(), y_train[request.forget].numpy()
    return {
        name: svc_efficacy(feature(member_probs, member_labels), feature(test_probs, test_labels),
                           feature(forget_probs, forget_labels))
        for name, feature in MIA_FEATURES.items()
    }


def _pick(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= k else np.sort(rng.choice(n, size=k, replace=False))


# -- distances to the reference -----------------------------------------------------------------------
def js_divergence(p: torch.Tensor, q: torch.Tensor) -> float:
    """Mean over rows of the Jensen–Shannon divergence in bits (0 = identical, 1 = disjoint)."""
    m = 0.5 * (p + q)

    def kl(a, b):
        return (a * (torch.log2(a.clamp_min(1e-30)) - torch.log2(b.clamp_min(1e-30)))).sum(1)

    return float((0.5 * kl(p, m) + 0.5 * kl(q, m)).mean())


def weight_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float((a[k] - b[k]).pow(2).sum()) for k in a if k in b))


# -- the one function ---------------------------------------------------------------------------------
def evaluate(
    model: nn.Module | Outputs,
    request: Request,
    data: Dataset,
    *,
    reference: "nn.Module | Evaluation | None" = None,
    original: "nn.Module | Evaluation | None" = None,
    cost: Cost | None = None,
    retrain_seconds: float | None = None,
    mia_shadow_size: int | None = 3000,
    seed: int = 0,
    device=None,
) -> Evaluation:
    """Every metric of the field for ``model`` on ``request`` (see the module docstring).

    ``reference`` and ``original`` may be models or earlier :class:`Evaluation` results (whose outputs are
    reused, so a retrained model is run once per suite, not once per method).
    """
    outputs = model if isinstance(model, Outputs) else model_outputs(model, data, request, device)
    _, y_train = request.training_data(data)
    forget, retain = request.forget, request.retain
    mask = test_mask(data, request)
    m: dict[str, float] = {
        "UA": 100.0 - _acc(outputs.train[forget], y_train[forget]),
        "RA": _acc(outputs.train[retain], y_train[retain]),
        "TA": _acc(outputs.test[mask], data.y_test[mask]),
        "TA_all": _acc(outputs.test, data.y_test),
    }
    m.update(mia_efficacy(outputs, data, request, y_train, shadow_size=mia_shadow_size, seed=seed))
    if request.classes:
        m["forgotten_class_test_acc"] = _acc(outputs.test[~mask], data.y_test[~mask])
    if request.corrected_y is not None:
        m["forget_acc_corrected"] = _acc(outputs.train[forget], request.corrected_y)
    if outputs.triggered_test is not None:
        m["ASR"] = 100.0 * float((outputs.triggered_test.argmax(1) == request.target).float().mean())

    if reference is not None:
        ref = reference if isinstance(reference, Evaluation) else evaluate(
            reference, request, data, mia_shadow_size=mia_shadow_size, seed=seed, device=device)
        for key in GAP_METRICS:
            m[f"gap_{key}"] = abs(m[key] - ref.metrics[key])
        m["avg_gap"] = sum(m[f"gap_{k}"] for k in GAP_METRICS) / len(GAP_METRICS)
        m["js_forget"] = js_divergence(outputs.train[forget], ref.outputs.train[forget])
        m["js_test"] = js_divergence(outputs.test, ref.outputs.test)
        if outputs.weights is not None and ref.outputs.weights is not None and not outputs.non_finite:
            m["l2_to_reference"] = weight_distance(outputs.weights, ref.outputs.weights)
    if original is not None:
        orig = original if isinstance(original, Evaluation) else evaluate(
            original, request, data, mia_shadow_size=mia_shadow_size, seed=seed, device=device)
        a_o_forget = 100.0 - orig.metrics["UA"]
        a_u_forget = 100.0 - m["UA"]
        m["FR"] = (a_o_forget - a_u_forget) / a_o_forget if a_o_forget > 0 else float("nan")
        m["MRR"] = m["RA"] / orig.metrics["RA"] if orig.metrics["RA"] > 0 else float("nan")
    if cost is not None:
        m["rte_s"] = cost.seconds
        m["forward_samples"] = cost.forward
        m["backward_samples"] = cost.backward
        if retrain_seconds:
            m["rte_ratio"] = cost.seconds / retrain_seconds
    m["mia_shadow_size"] = float("nan") if mia_shadow_size is None else mia_shadow_size
    if outputs.non_finite:
        m["non_finite_outputs"] = outputs.non_finite
    return Evaluation({k: (round(v, 6) if isinstance(v, float) else v) for k, v in m.items()}, outputs)
