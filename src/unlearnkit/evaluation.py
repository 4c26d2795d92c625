"""One evaluation function for every metric of the field (docs/metrics.md).

``evaluate(model, request, data, reference=retrained, original=original)`` runs each model over the
training set (as the original saw it) and the test set once, batched, and derives every metric from those
outputs:

* **UA** = 100 − accuracy on D_f (labels as trained), **RA** = accuracy on D_r, **TA** = accuracy on the test
  set (without the forgotten classes for class requests; ``TA_all`` is on the whole test set).
* **MIA** efficacy, the field's convention (Jia et al. 2023; Fan et al. 2024): an RBF SVC (C=3, gamma="auto")
  trained on a scalar feature of members (the first |T| retain samples) and non-members (the test set T);
  efficacy = % of D_f it calls non-members. Features: true-class probability (``MIA``), prediction entropy
  (``MIA_entropy``) and modified entropy (``MIA_m_entropy``, Song & Mittal 2021). Each side is a seeded sample of
  at most ``mia_shadow_size`` = 3000 points (``None`` keeps the full convention); the figure is recorded.
  ``mia_attack="svc"`` fits the SVC on every point (0.8 CPU-s per feature at 3000 per side, 10 s at 10,000);
  ``"binned"`` (the default of :func:`evaluate`; benchmark suites keep ``"svc"``) fits the same SVC (same C,
  gamma, kernel) on the points summarised by :data:`MIA_BINS` quantile bins of the pooled feature — each bin's
  members and non-members become one point each at their mean, weighted by their count, so libsvm's per-sample
  penalty is C × count — in ~0.1 s; on Fashion-MNIST it agreed with ``"svc"`` within 0.15 points (mean 0.04)
  over three features × three model/request pairs (``benchmarks/results/evaluation``). Records say ``mia_bins``.
* With a ``reference`` (the retrained model): per-metric gaps, **avg_gap** over UA/RA/TA/MIA, Jensen–Shannon
  divergence of the output distributions on D_f and on the test set (bits), and the L2 distance of the weights.
* With the ``original``: forgetting rate **FR** = (A_o(D_f) − A_u(D_f)) / A_o(D_f) and memory retention rate
  **MRR** = A_u(D_r) / A_o(D_r) (Zuo et al., TKDE 2025; the paper's exact formulas are not public, these are
  unlearnkit's).
* With ``spdgan`` (a trained :class:`~unlearnkit.spdgan.SpdGan`, or its perturbed forget images): accuracy
  **spd_acc** and cross-entropy **spd_loss** on the SPD-GAN-perturbed forget set G(D_f) (labels as trained); with
  the ``original`` also the **unlearning degree** (Zuo et al.) **UD_acc** = A_o(G(D_f)) − A_u(G(D_f)) and **UD_loss** =
  L_u(G(D_f)) − L_o(G(D_f)) (signed so that both grow as the model forgets), and with the ``reference`` too the
  retrained model's degree **UD_acc_retrain** / **UD_loss_retrain** and **gap_UD_acc** = |UD_acc − UD_acc_retrain|.
  **forget_loss** (cross-entropy on D_f) is always reported, to compare with spd_loss.
* With ``bank`` (a :class:`KlomBank`: the margins of B ≥ 2 models retrained with other seeds): **KLoM** (Georgiev et al.
  2024; :mod:`unlearnkit.klom`), per example, of this one model against the bank, reported as the median and 95th
  percentile over D_f, D_r and the test set (``KLoM_forget_median``, ``KLoM_forget_p95``, ...).
* With ``cost`` and ``retrain_seconds``: **rte_s** and **rte_ratio**.
* Backdoor and feature (edit) requests: **ASR** (% of non-target test images classified as the target once the
  trigger, or the planted feature, is stamped on them: how much the model still follows it) and clean accuracy;
  relabel/backdoor requests: **forget_acc_corrected** (accuracy on D_f as trained against the true labels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from . import klom as _klom
from . import text_evaluation
from ._util import resolve_device
from .data import Dataset, is_text
from .errors import UnlearnKitError
from .requests import Request
from .training import Cost, predict_logits

GAP_METRICS = ("UA", "RA", "TA", "MIA")

# Which way is better, declared once per metric beside its meaning: LOWER, HIGHER, REF (closer to the retrained
# model's value), a number (closer to that value: 50 % attack accuracy is chance), or None (a reference value shown
# for context, never ranked). Reports bold and rank by it (`metric_score`).
LOWER, HIGHER, REF = "lower", "higher", "reference"

METRICS: dict[str, tuple[str, str | float | None]] = {
    "UA": ("unlearning accuracy: 100 − accuracy on the forget set (labels as trained)", REF),
    "RA": ("accuracy on the retain set", REF),
    "TA": ("test accuracy (class requests: on the retained classes only)", REF),
    "TA_all": ("accuracy on the whole test set", REF),
    "MIA": ("MIA-efficacy: % of D_f an SVC on the true-class probability calls non-members", REF),
    "MIA_entropy": ("MIA-efficacy with the prediction entropy as the feature", REF),
    "MIA_m_entropy": ("MIA-efficacy with the modified entropy (Song & Mittal 2021) as the feature", REF),
    "forgotten_class_test_acc": ("class requests: test accuracy on the forgotten classes", REF),
    "ASR": (
        "backdoor/feature requests: % of non-target test images classified as the target once the trigger/feature is "
        "stamped on them",
        LOWER,
    ),
    "forget_acc_corrected": ("relabel/edit requests: accuracy on D_f against the corrected labels", HIGHER),
    "avg_gap": ("mean |metric − retrained metric| over UA, RA, TA, MIA", LOWER),
    "ToW": (
        "tug-of-war (Zhao et al., NeurIPS 2024): (1 − gap_UA/100)·(1 − gap_RA/100)·(1 − gap_TA/100), the product of "
        "accuracy agreements with the retrained model on D_f, D_r and the test set (1 = Retrain's accuracies)",
        HIGHER,
    ),
    "gap_UA": ("|UA − retrained UA| (likewise gap_RA, gap_TA, gap_MIA)", LOWER),
    "js_forget": ("mean Jensen–Shannon divergence (bits) of outputs to the retrained model's on D_f", LOWER),
    "js_test": ("the same on the test set", LOWER),
    "l2_to_reference": ("L2 distance between the weights and the retrained model's", LOWER),
    "FR": ("forgetting rate (A_o(D_f) − A_u(D_f)) / A_o(D_f)", HIGHER),
    "MRR": ("memory retention rate A_u(D_r) / A_o(D_r)", HIGHER),
    "forget_loss": ("mean cross-entropy on D_f (labels as trained)", REF),
    "spd_acc": ("accuracy (%) on the SPD-GAN-perturbed forget set G(D_f) (labels as trained)", REF),
    "spd_loss": ("mean cross-entropy on G(D_f)", REF),
    "UD_acc": ("unlearning degree (Zuo et al., TKDE 2025): A_o(G(D_f)) − A_u(G(D_f)), accuracy points", HIGHER),
    "UD_loss": ("unlearning degree on the loss: L_u(G(D_f)) − L_o(G(D_f))", HIGHER),
    "UD_acc_retrain": ("the retrained model's unlearning degree A_o(G(D_f)) − A_r(G(D_f)) (the target)", None),
    "UD_loss_retrain": ("the retrained model's L_r(G(D_f)) − L_o(G(D_f))", None),
    "gap_UD_acc": ("|UD_acc − UD_acc_retrain| = |A_r(G(D_f)) − A_u(G(D_f))|", LOWER),
    **{f"KLoM_{split}_{stat}": (
        f"KL divergence of margins (Georgiev et al. 2024) against a bank of retrained models, {text} over {where}"
        " (nats; a held-out retrained model scores about 0.5)", LOWER)
       for split, where in (("forget", "D_f"), ("retain", "D_r"), ("test", "the test set"))
       for stat, text in (("median", "median"), ("p95", "95th percentile"))},
    "relearn_steps": (
        "relearning attack: fine-tuning steps on 10 % of D_f until the rest of D_f is within 2 points of the "
        "original's accuracy (None: not within the cap); _retrain: Retrain's, the target (unlearnkit.relearn)", REF),
    "relearn_samples": ("relearning attack: samples fine-tuned on until then", REF),
    "relearn_control_steps": ("relearning attack, control: the same fine-tuning on retained samples", None),
    "rte_s": ("run-time efficiency: wall-clock seconds of the unlearning call", LOWER),
    "rte_ratio": ("rte_s / seconds of retraining", LOWER),
    "forward_samples": ("samples passed forward by the unlearning call", LOWER),
    "non_finite_outputs": ("samples with non-finite logits (a diverged model); their outputs count as uniform", LOWER),
    "backward_samples": ("samples passed backward by the unlearning call", LOWER),
    # Distribution-level metrics of `unlearnkit audit` (they need N unlearned and N retrained models, so
    # they are computed by unlearnkit.audit, not by evaluate(); see docs/audit.md).
    "ulira_acc": (
        "audit: U-LiRA accuracy (%) telling held-out unlearned from retrained models per forget example (50 = "
        "indistinguishable)",
        50.0,
    ),
    "ulira_auc": ("audit: area under the ROC curve of the U-LiRA likelihood ratio", 0.5),
    "ulira_tpr_at_1pct_fpr": (
        "audit: U-LiRA true-positive rate (%) at 1 % false-positive rate (likewise _at_0.1pct_fpr)",
        LOWER,
    ),
    "forget_score": (
        "audit: NeurIPS 2023 challenge forgetting quality F (mean binned per-example ε score; 1 = best)",
        HIGHER,
    ),
    "challenge_score": ("audit: F × (RA / retrained RA) × (TA / retrained TA), the challenge's final score", HIGHER),
    "retain_ulira_acc": ("audit: U-LiRA accuracy (%) on retained examples (exposure of D_r; 50 = no exposure)", 50.0),
    **text_evaluation.TEXT_METRICS,
}
METRIC_DOCS = {name: doc for name, (doc, _) in METRICS.items()}
METRIC_BETTER = {name: better for name, (_, better) in METRICS.items()}


def metric_score(
    name: str, value: float, reference: float | None = None, better: str | float | None = None
) -> float | None:
    """How far ``value`` of metric ``name`` is from the best (smaller is better; None: not ranked, or a REF metric
    without a reference value). ``better`` overrides the declared direction (for metrics defined elsewhere)."""
    better = METRIC_BETTER.get(name) if better is None else better
    if better is None or value is None or math.isnan(value):
        return None
    if better == LOWER:
        return value
    if better == HIGHER:
        return -value
    if better == REF:
        return None if reference is None or math.isnan(reference) else abs(value - reference)
    return abs(value - float(better))


@dataclass
class Outputs:
    """Softmax probabilities of one model on the training set (as trained) and the test set."""

    train: torch.Tensor
    test: torch.Tensor
    triggered_test: torch.Tensor | None = None
    weights: dict[str, torch.Tensor] | None = None
    non_finite: int = 0  # samples whose logits were not finite (their probabilities are set to uniform)
    perturbed_forget: torch.Tensor | None = (
        None  # probabilities on the SPD-GAN-perturbed forget images, in forget order
    )
    # margins z_y − logsumexp_{j≠y} z_j (float64; labels as trained / test labels), for KLoM against a bank
    train_margin: np.ndarray | None = None
    test_margin: np.ndarray | None = None


@dataclass
class KlomBank:
    """The margins of B ≥ 2 retrained ("oracle") models on the training set (as trained) and the test set, B × n each:
    what :func:`evaluate` compares a model's margins with (KLoM). Build it with :func:`klom_bank`."""

    train: np.ndarray
    test: np.ndarray

    def __post_init__(self) -> None:
        self.train = np.asarray(self.train, dtype=np.float64)
        self.test = np.asarray(self.test, dtype=np.float64)
        if self.train.ndim != 2 or self.test.ndim != 2 or self.train.shape[0] != self.test.shape[0]:
            raise UnlearnKitError("a KLoM bank holds B × n_train and B × n_test margins of the same B models")
        if self.train.shape[0] < 2:
            raise UnlearnKitError(f"a KLoM bank needs at least 2 retrained models, got {self.train.shape[0]}")

    @property
    def size(self) -> int:
        return int(self.train.shape[0])


def klom_bank(models: "list[nn.Module | Outputs]", data: Dataset, request: Request, device=None) -> KlomBank:
    """A :class:`KlomBank` from retrained models (or their :class:`Outputs`)."""
    outs = [m if isinstance(m, Outputs) else model_outputs(m, data, request, device) for m in models]
    if any(o.train_margin is None for o in outs):
        raise UnlearnKitError("KLoM bank: outputs without margins (compute them with model_outputs)")
    return KlomBank(np.stack([o.train_margin for o in outs]), np.stack([o.test_margin for o in outs]))


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


def outputs_from_logits(train_logits: torch.Tensor, test_logits: torch.Tensor, train_labels: torch.Tensor | None = None,
                        test_labels: torch.Tensor | None = None) -> Outputs:
    """:class:`Outputs` from stored logits (no weights, so no ``l2_to_reference``); lets a caller that keeps
    many models' logits (the audit) evaluate them without running the models again. With the labels (training labels
    as trained, test labels) the margins are kept too, for KLoM."""
    train, bad_train = _probabilities(train_logits.float())
    test, bad_test = _probabilities(test_logits.float())
    out = Outputs(train, test, None, None, non_finite=bad_train + bad_test)
    if train_labels is not None and test_labels is not None:
        out.train_margin = logit_scaled_confidence(train_logits, train_labels)
        out.test_margin = logit_scaled_confidence(test_logits, test_labels)
    return out


def model_outputs(model: nn.Module, data: Dataset, request: Request, device=None,
                  perturbed_forget: torch.Tensor | None = None) -> Outputs:
    """One batched pass over the training set (as trained), the test set and, if given, the perturbed forget images.
    (Text data sets: :func:`unlearnkit.text_evaluation.text_outputs`.)"""
    if is_text(data):
        return text_evaluation.text_outputs(model, data, request, device)
    device = resolve_device(device if device is not None else "auto")
    x, y = request.training_data(data)
    train_logits = predict_logits(model, x, device=device)
    test_logits = predict_logits(model, data.x_test, device=device)
    train, bad_train = _probabilities(train_logits)
    test, bad_test = _probabilities(test_logits)
    triggered = None
    if request.trigger is not None:
        keep = data.y_test != request.target
        triggered, _ = _probabilities(predict_logits(model, request.trigger.stamp(data.x_test[keep]), device=device))
    perturbed = None
    if perturbed_forget is not None:
        _check_perturbed(perturbed_forget, request)
        perturbed, _ = _probabilities(predict_logits(model, perturbed_forget, device=device))
    weights = {n: p.detach().cpu().clone() for n, p in model.named_parameters()}
    return Outputs(train, test, triggered, weights, non_finite=bad_train + bad_test, perturbed_forget=perturbed,
                   train_margin=logit_scaled_confidence(train_logits, y),
                   test_margin=logit_scaled_confidence(test_logits, data.y_test))


def _check_perturbed(images: torch.Tensor, request: Request) -> None:
    if images.shape[0] != request.forget.numel():
        raise UnlearnKitError(f"{images.shape[0]} perturbed forget images for a forget set of {request.forget.numel()} "
                              f"(an SPD-GAN must be applied to this request's forget set)")


def perturbed_forget_images(
    spdgan: Any, data: Dataset, request: Request, original: Any = None, device=None
) -> torch.Tensor | None:
    """The SPD-GAN-perturbed forget images: ``spdgan`` is a trained generator (checked against the data, the request
    and, when it is a model, the original) or the images themselves."""
    if spdgan is None or isinstance(spdgan, torch.Tensor):
        return spdgan
    if not hasattr(spdgan, "perturb_forget"):
        raise UnlearnKitError(
            f"spdgan must be a trained SpdGan or a tensor of perturbed forget images, not {type(spdgan).__name__}"
        )
    return spdgan.perturb_forget(
        data, request, original=original if isinstance(original, nn.Module) else None, device=device
    )


def _acc(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float("nan") if labels.numel() == 0 else 100.0 * float((probs.argmax(1) == labels).float().mean())


def _nll(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cross-entropy from probabilities (a probability below 1e-12 counts as 1e-12)."""
    if labels.numel() == 0:
        return float("nan")
    return float(-probs[torch.arange(labels.numel()), labels].double().clamp_min(1e-12).log().mean())


def test_mask(data: Dataset, request: Request) -> torch.Tensor:
    """Test samples that count for TA: all, or those not of a forgotten class."""
    if request.classes:
        return ~torch.isin(data.y_test, torch.tensor(request.classes))
    return torch.ones_like(data.y_test, dtype=torch.bool)


# -- membership inference ------------------------------------------------------------------------------
def true_class_probability(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return probs[np.arange(len(labels)), labels]


def logit_scaled_confidence(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> np.ndarray:
    """φ = log(p_y / (1 − p_y)) from logits, computed as z_y − logsumexp_{j≠y} z_j in float64.

    That identity is exact, so φ stays finite and accurate where p_y rounds to 1 (a memorised sample can
    have φ = 40, where 1 − p_y underflows). This is the per-example feature of LiRA / U-LiRA and of the NeurIPS
    2023 unlearning challenge. Rows with non-finite logits (a diverged model) count as uniform outputs, as in
    :func:`evaluate`: φ = −log(C − 1).
    """
    z = torch.as_tensor(logits).to(torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    z = torch.where(torch.isfinite(z).all(1, keepdim=True), z, torch.zeros_like(z))
    rows = torch.arange(z.shape[0])
    true = z[rows, y]
    others = z.clone()
    others[rows, y] = float("-inf")
    return (true - torch.logsumexp(others, 1)).numpy()


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


MIA_ATTACKS = ("binned", "svc")
MIA_BINS = 512  # quantile bins per feature for mia_attack="binned"


def svc_efficacy(members: np.ndarray, non_members: np.ndarray, targets: np.ndarray, *,
                 bins: int | None = None) -> float:
    """% of ``targets`` that an RBF SVC (C=3, gamma='auto') fitted on members (1) vs non-members (0) calls 0.

    ``bins=None`` fits every point (the convention); ``bins=B`` fits the same SVC on the points summarised by B
    quantile bins of the pooled values (see the module docstring). Either way each distinct target value is
    predicted once (the same answers, fewer kernel sums).
    """
    from sklearn.svm import SVC  # imported here: scikit-learn takes seconds to import, and most commands never fit one

    if bins is None:
        x = np.concatenate([members, non_members]).reshape(-1, 1)
        y = np.concatenate([np.ones(len(members)), np.zeros(len(non_members))])
        weights = None
    else:
        x, y, weights = _binned(members, non_members, bins)
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(x, y, sample_weight=weights)
    values, inverse = np.unique(np.asarray(targets).reshape(-1), return_inverse=True)
    return 100.0 * float((clf.predict(values.reshape(-1, 1))[inverse] == 0).mean())


def _binned(members: np.ndarray, non_members: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per quantile bin of the pooled values and per side: one point at the side's mean value in that bin, weighted
    by its count."""
    members, non_members = np.asarray(members, np.float64), np.asarray(non_members, np.float64)
    pooled = np.concatenate([members, non_members])
    edges = np.unique(np.quantile(pooled, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    xs, ys, ws = [], [], []
    for values, label in ((members, 1.0), (non_members, 0.0)):
        which = np.searchsorted(edges, values, side="right")
        counts = np.bincount(which, minlength=len(edges) + 1)
        sums = np.bincount(which, weights=values, minlength=len(edges) + 1)
        full = counts > 0
        xs.append(sums[full] / counts[full])
        ys.append(np.full(int(full.sum()), label))
        ws.append(counts[full].astype(np.float64))
    return np.concatenate(xs).reshape(-1, 1), np.concatenate(ys), np.concatenate(ws)


def mia_efficacy(outputs: Outputs, data: Dataset, request: Request, y_train: torch.Tensor, *,
                 shadow_size: int | None = 3000, seed: int = 0, attack: str = "binned") -> dict[str, float]:
    if attack not in MIA_ATTACKS:
        raise UnlearnKitError(f"unknown MIA attack {attack!r}; use {' or '.join(MIA_ATTACKS)}")
    bins = MIA_BINS if attack == "binned" else None
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
                           feature(forget_probs, forget_labels), bins=bins)
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
    spdgan: Any = None,
    mia_attack: str = "binned",
    bank: KlomBank | None = None,
) -> Evaluation:
    """Every metric of the field for ``model`` on ``request`` (see the module docstring).

    ``reference`` and ``original`` may be models or earlier :class:`Evaluation` results (whose outputs are
    reused, so a retrained model is run once per suite, not once per method). ``spdgan`` (a trained
    :class:`~unlearnkit.spdgan.SpdGan` or the perturbed forget images) adds the unlearning degree; earlier
    :class:`Evaluation` s passed as reference/original must then have been computed with it too. ``bank`` (a
    :class:`KlomBank` of retrained models other than ``reference``) adds KLoM; a reference model is scored against it
    too (its KLoM is the noise floor).
    """
    if is_text(data):  # language-model metrics (perplexity, exposure): unlearnkit.text_evaluation
        return _evaluate_text(model, request, data, reference, original, cost, retrain_seconds, device)
    if mia_attack not in MIA_ATTACKS:  # before any pass over the data
        raise UnlearnKitError(f"unknown MIA attack {mia_attack!r}; use {' or '.join(MIA_ATTACKS)}")
    perturbed = perturbed_forget_images(spdgan, data, request, original, device)
    if isinstance(model, Outputs):
        outputs = model
        if perturbed is not None and outputs.perturbed_forget is None:
            raise UnlearnKitError("evaluate got precomputed outputs without perturbed forget outputs and an spdgan; "
                                  "compute them with model_outputs(..., perturbed_forget=...)")
    else:
        outputs = model_outputs(model, data, request, device, perturbed_forget=perturbed)
    y_train = request.training_labels(data)
    forget, retain = request.forget, request.retain
    mask = test_mask(data, request)
    m: dict[str, float] = {
        "UA": 100.0 - _acc(outputs.train[forget], y_train[forget]),
        "RA": _acc(outputs.train[retain], y_train[retain]),
        "TA": _acc(outputs.test[mask], data.y_test[mask]),
        "TA_all": _acc(outputs.test, data.y_test),
        "forget_loss": _nll(outputs.train[forget], y_train[forget]),
    }
    if outputs.perturbed_forget is not None:
        m["spd_acc"] = _acc(outputs.perturbed_forget, y_train[forget])
        m["spd_loss"] = _nll(outputs.perturbed_forget, y_train[forget])
    m.update(mia_efficacy(outputs, data, request, y_train, shadow_size=mia_shadow_size, seed=seed, attack=mia_attack))
    if request.classes:
        m["forgotten_class_test_acc"] = _acc(outputs.test[~mask], data.y_test[~mask])
    if request.corrected_y is not None:
        m["forget_acc_corrected"] = _acc(outputs.train[forget], request.corrected_y)
    if outputs.triggered_test is not None:
        m["ASR"] = 100.0 * float((outputs.triggered_test.argmax(1) == request.target).float().mean())
    if bank is not None:
        m.update(klom_metrics(outputs, bank, request))

    ref = orig = None
    if reference is not None:
        ref = reference if isinstance(reference, Evaluation) else evaluate(
            reference, request, data, mia_shadow_size=mia_shadow_size, seed=seed, device=device, spdgan=perturbed,
            mia_attack=mia_attack, bank=bank)
        for key in GAP_METRICS:
            m[f"gap_{key}"] = abs(m[key] - ref.metrics[key])
        m["avg_gap"] = sum(m[f"gap_{k}"] for k in GAP_METRICS) / len(GAP_METRICS)
        m["ToW"] = (1 - m["gap_UA"] / 100) * (1 - m["gap_RA"] / 100) * (1 - m["gap_TA"] / 100)
        m["js_forget"] = js_divergence(outputs.train[forget], ref.outputs.train[forget])
        m["js_test"] = js_divergence(outputs.test, ref.outputs.test)
        if outputs.weights is not None and ref.outputs.weights is not None and not outputs.non_finite:
            m["l2_to_reference"] = weight_distance(outputs.weights, ref.outputs.weights)
    if original is not None:
        orig = original if isinstance(original, Evaluation) else evaluate(
            original, request, data, mia_shadow_size=mia_shadow_size, seed=seed, device=device, spdgan=perturbed,
            mia_attack=mia_attack)
        a_o_forget = 100.0 - orig.metrics["UA"]
        a_u_forget = 100.0 - m["UA"]
        m["FR"] = (a_o_forget - a_u_forget) / a_o_forget if a_o_forget > 0 else float("nan")
        m["MRR"] = m["RA"] / orig.metrics["RA"] if orig.metrics["RA"] > 0 else float("nan")
        if "spd_acc" in m and "spd_acc" in orig.metrics:
            m["UD_acc"] = orig.metrics["spd_acc"] - m["spd_acc"]
            m["UD_loss"] = m["spd_loss"] - orig.metrics["spd_loss"]
            if ref is not None and "spd_acc" in ref.metrics:
                m["UD_acc_retrain"] = orig.metrics["spd_acc"] - ref.metrics["spd_acc"]
                m["UD_loss_retrain"] = ref.metrics["spd_loss"] - orig.metrics["spd_loss"]
                m["gap_UD_acc"] = abs(m["UD_acc"] - m["UD_acc_retrain"])
    if cost is not None:
        m.update(cost.metrics(retrain_seconds))
    m["mia_shadow_size"] = float("nan") if mia_shadow_size is None else mia_shadow_size
    if mia_attack == "binned":
        m["mia_bins"] = MIA_BINS
    if outputs.non_finite:
        m["non_finite_outputs"] = outputs.non_finite
    return Evaluation({k: (round(v, 6) if isinstance(v, float) else v) for k, v in m.items()}, outputs)


def klom_metrics(outputs: Outputs, bank: KlomBank, request: Request) -> dict[str, float]:
    """KLoM of one model's margins against ``bank``: median and 95th percentile over D_f, D_r and the test set."""
    if outputs.train_margin is None or outputs.test_margin is None:
        raise UnlearnKitError("KLoM needs the model's margins (outputs computed by model_outputs, or from logits with "
                              "their labels)")
    if bank.train.shape[1] != outputs.train_margin.size or bank.test.shape[1] != outputs.test_margin.size:
        raise UnlearnKitError("the KLoM bank was computed on another data set (its sizes differ)")
    out: dict[str, float] = {}
    for split, margins, oracles in (
        ("forget", outputs.train_margin[request.forget.numpy()], bank.train[:, request.forget.numpy()]),
        ("retain", outputs.train_margin[request.retain.numpy()], bank.train[:, request.retain.numpy()]),
        ("test", outputs.test_margin, bank.test),
    ):
        stats = _klom.summary(_klom.klom_single(margins, oracles))
        out[f"KLoM_{split}_median"], out[f"KLoM_{split}_p95"] = stats["median"], stats["p95"]
    out["klom_bank"] = bank.size
    return out


def _evaluate_text(model, request: Request, data: Dataset, reference, original, cost, retrain_seconds,
                   device) -> Evaluation:
    """A language model's evaluation (:mod:`unlearnkit.text_evaluation`); reference/original as for images."""
    if isinstance(model, text_evaluation.TextOutputs):
        outputs = model
    else:
        outputs = text_evaluation.text_outputs(model, data, request, device)
    ref, orig = (x if x is None or isinstance(x, Evaluation)
                 else _evaluate_text(x, request, data, None, None, None, None, device)
                 for x in (reference, original))
    m = text_evaluation.text_metrics(outputs, request, reference=None if ref is None else ref.metrics,
                                     original=None if orig is None else orig.metrics, cost=cost,
                                     retrain_seconds=retrain_seconds)
    if ref is not None and outputs.weights is not None and ref.outputs.weights is not None:
        m["l2_to_reference"] = weight_distance(outputs.weights, ref.outputs.weights)
    return Evaluation({k: (round(v, 6) if isinstance(v, float) else v) for k, v in m.items()}, outputs)


def zero_gaps(data: Dataset) -> dict[str, float]:
    """The gap metrics of the retrained reference itself (all zero), for its benchmark row."""
    if is_text(data):
        return {f"gap_{k}": 0.0 for k in text_evaluation.TEXT_GAP_METRICS}
    return {"avg_gap": 0.0, **{f"gap_{k}": 0.0 for k in GAP_METRICS}}
