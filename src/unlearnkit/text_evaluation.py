"""The metrics of language models on text data sets. :func:`unlearnkit.evaluation.evaluate` hands text data sets
here (outputs and metrics; it wraps them as an ``Evaluation``), so callers (the CLI, the benchmark runner) use one
``evaluate`` for both.

Each model is run once over the training sequences (as trained) and the validation sequences (per-sequence mean
next-character cross-entropy), and, for a ``secret:`` request, over the sampled candidates of the secrets'
format (exposure, :mod:`unlearnkit.exposure`) and a beam search from the prefix (extraction). Metrics:

* **val_ppl**: perplexity per character on the validation sequences (exp of the mean cross-entropy in nats);
  **retain_ppl** and **forget_ppl** on D_r and on D_f as trained (with the secrets);
* **exposure** (mean over the secrets), **exposure_max**, **exposure_fit** (skew-normal extrapolation beyond the
  sampled estimate's cap), **secret_log_ppl** (mean −log2 P(secret | prefix), bits), **extracted** (% of the
  secrets among the top-N beam completions);
* with the ``reference`` (retrained): **gap_exposure**, **gap_val_ppl** and **l2_to_reference**;
* with ``cost``: **rte_s**, **rte_ratio**, forward/backward sample passes, as for images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ._util import resolve_device
from .exposure import DEFAULT_SAMPLES, Exposure, exposure, extracted
from .requests import Request
from .training import Cost, count_passes, sample_losses

TEXT_GAP_METRICS = ("exposure", "val_ppl")

# name: (doc, which way is better: "lower", "higher" or "reference" = closest to the retrained model's), as
# evaluation.METRICS declares them.
TEXT_METRICS = {
    "val_ppl": ("text: perplexity per character on the validation sequences", "lower"),
    "retain_ppl": ("text: perplexity per character on the retain sequences", "lower"),
    "forget_ppl": ("text: perplexity per character on the forget sequences as trained (with the secrets)", "reference"),
    "exposure": (
        "secret requests: mean exposure of the planted secrets, log2|C| − log2 rank (bits; sampled estimate, "
        "see docs/text.md)",
        "reference",
    ),
    "exposure_max": ("secret requests: the largest exposure of a planted secret", "reference"),
    "exposure_fit": (
        "secret requests: mean exposure extrapolated by a skew-normal fit to the candidates' log-perplexities",
        "reference",
    ),
    "secret_log_ppl": ("secret requests: mean −log2 P(secret | prefix), bits", "reference"),
    "extracted": ("secret requests: % of the secrets among the top-N beam-search completions of the prefix", "lower"),
    "gap_exposure": ("|exposure − retrained exposure|", "lower"),
    "gap_val_ppl": ("|val_ppl − retrained val_ppl|", "lower"),
    "exposure_original": ("secret requests: the original model's exposure (what unlearning started from)", None),
    "exposure_samples": (
        "secret requests: candidates each secret was ranked against (m; the sampled exposure is capped at log2(m + 1))",
        None,
    ),
}


@dataclass
class TextOutputs:
    train_nll: torch.Tensor  # per training sequence (as trained), mean nats per character
    test_nll: torch.Tensor  # per validation sequence
    exposure: Exposure | None = None
    extracted: list[bool] | None = None
    weights: dict[str, torch.Tensor] | None = None


@torch.no_grad()
def sequence_nll(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256, device=None
) -> torch.Tensor:
    """Mean next-character cross-entropy (nats) of each sequence, in eval mode. Counts forward passes."""
    device = resolve_device(device if device is not None else next(model.parameters()).device)
    was_training = model.training
    model.eval()
    out = [
        sample_losses(model(xb.to(device)).float(), yb.to(device)).cpu()
        for xb, yb in zip(x.split(batch_size), y.split(batch_size))
    ]
    count_passes(forward=int(x.shape[0]))
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def text_outputs(
    model: nn.Module, data, request: Request, device=None, *, samples: int = DEFAULT_SAMPLES
) -> TextOutputs:
    device = resolve_device(device if device is not None else "auto")
    model.to(device)
    x, y = request.training_data(data)
    outputs = TextOutputs(
        sequence_nll(model, x, y, device=device), sequence_nll(model, data.x_test, data.y_test, device=device)
    )
    if request.secrets is not None:
        outputs.exposure = exposure(model, data, request.secrets, samples=samples, seed=request.seed, device=device)
        outputs.extracted = extracted(model, data, request.secrets, device=device)
    outputs.weights = {n: p.detach().cpu().clone() for n, p in model.named_parameters()}
    return outputs


def _ppl(nll: torch.Tensor) -> float:
    return float("nan") if nll.numel() == 0 else math.exp(float(nll.double().mean()))


def text_metrics(
    outputs: TextOutputs,
    request: Request,
    *,
    reference: dict | None = None,
    original: dict | None = None,
    cost: Cost | None = None,
    retrain_seconds: float | None = None,
) -> dict[str, float]:
    """Every text metric from ``outputs`` (see the module docstring); ``reference``/``original`` are the retrained
    and original models' metrics."""
    m: dict[str, float] = {
        "val_ppl": _ppl(outputs.test_nll),
        "retain_ppl": _ppl(outputs.train_nll[request.retain]),
        "forget_ppl": _ppl(outputs.train_nll[request.forget]),
    }
    if outputs.exposure is not None:
        e = outputs.exposure
        m["exposure"] = sum(e.exposure) / len(e.exposure)
        m["exposure_max"] = max(e.exposure)
        m["exposure_fit"] = sum(e.exposure_fit) / len(e.exposure_fit)
        m["secret_log_ppl"] = sum(e.log_perplexity) / len(e.log_perplexity)
        m["extracted"] = 100.0 * sum(outputs.extracted) / len(outputs.extracted)
        m["exposure_samples"] = e.compared
    if reference is not None:
        for key in TEXT_GAP_METRICS:
            if key in m and key in reference:
                m[f"gap_{key}"] = abs(m[key] - reference[key])
    if original is not None and "exposure" in m and "exposure" in original:
        m["exposure_original"] = original["exposure"]
    if cost is not None:
        m.update(cost.metrics(retrain_seconds))
    return m
