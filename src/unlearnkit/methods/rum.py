"""RUM, the Refined-Unlearning Meta-algorithm (Zhao et al., NeurIPS 2024, "What makes unlearning hard and what to do
about it"): forget sets that mix easy and hard (highly memorised) samples are unlearned badly by any one setting, so

1. **refine**: D_f is cut into three equal parts by memorisation score — low, medium, high (the paper's
   homogeneous subsets);
2. **unlearn in sequence**: one inner-method run per part, low → medium → high, each starting from the model the
   previous one left, each with D_r as its retain set. The inner method is NegGrad+ (``neggrad_plus``) at the
   paper's released per-part settings (its code's RUM example is NegGrad+ → NegGrad+ → NegGrad+, in this order):
   β = 0.99, 0.97, 0.97; 5, 5, 10 epochs; learning rates 0.01, 0.01, 0.001, where its stand-alone NegGrad+ runs
   5 epochs at 0.01. Here the epochs and rates are expressed relative to this library's NegGrad+ defaults (×1, ×1,
   ×2 its epochs; ×1, ×1, ×0.1 its rate) as they resolve on the whole request (NegGrad+'s defaults are themselves
   relative to the original's recipe and Retrain's work, docs/methods.md), so they follow NegGrad+. A part's epoch is
   as long as NegGrad+'s epoch on the whole request (its ``retain_per_forget`` × |D_f| / |part|): in the paper's code
   an epoch of NegGrad+ is one pass over the retain loader with the forget loader cycled beside it, so it does not
   shrink with the part, and RUM costs (1 + 1 + 2) × NegGrad+'s epochs. Every other NegGrad+ option stays at its
   default.

Memorisation scores: those registered for this data set in this process (the audit's, or loaded from the file a
``memorized:``/``memlevel:`` request names) when there are any; otherwise a proxy from the original alone,
1 − p_y (the original's confidence in the label as trained; Zhao & Triantafillou 2024 evaluate confidence-type
proxies for RUM): examples the model still fits poorly are the atypical ones that need memorisation. Which source
was used is recorded in the result's notes (``rum_scores``), with the part sizes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch

from ..requests import MEMORIZATION_SCORES
from ..training import predict_logits
from .base import METHODS, Task, make_config, option, register

PARTS = ("low", "medium", "high")


@dataclass
class RumConfig:
    scores: Literal["auto", "proxy"] = option(
        "auto", "memorisation scores: auto (registered scores for this data set if any, else the proxy) or proxy "
        "(1 − the original's confidence in the label)")
    part_beta: tuple[float, ...] = option((0.99, 0.97, 0.97), "NegGrad+ β for the low, medium and high part",
                                          ge=0, le=1, length=3)
    part_epochs_scale: tuple[float, ...] = option(
        (1.0, 1.0, 2.0), "epochs of each part (low, medium, high) as a multiple of NegGrad+'s default epochs",
        ge=0, le=100, length=3)
    part_lr_scale: tuple[float, ...] = option(
        (1.0, 1.0, 0.1), "learning rate of each part as a multiple of NegGrad+'s default rate", gt=0, le=100, length=3)


def memorization_proxy(task: Task) -> torch.Tensor:
    """1 − p_y under the original, for every forget sample (labels as trained), in D_f order."""
    ids = task.request.forget
    probs = torch.softmax(predict_logits(task.original, task.x[ids], device=task.device).double(), 1)
    return 1.0 - probs[torch.arange(ids.numel()), task.y[ids]]


def per_epoch(retain_per_forget: float | None, n_forget: int, n_part: int) -> float | None:
    """A part's ``retain_per_forget`` that keeps its epochs as long as NegGrad+'s on the whole request: an epoch of
    the paper's NegGrad+ is one pass over the retain loader, whatever the forget set's size."""
    return None if retain_per_forget is None else retain_per_forget * n_forget / n_part


def refine(task: Task, source: str) -> tuple[list[torch.Tensor], str]:
    """D_f cut into thirds by memorisation score (low → high), and which scores were used."""
    forget = task.request.forget
    registered = MEMORIZATION_SCORES.get(task.data.fingerprint) if source == "auto" else None
    if registered is not None:
        scores, used = registered[forget], "registered memorisation scores"
    else:
        scores, used = memorization_proxy(task), "proxy: 1 - original confidence"
    order = forget[torch.sort(scores, stable=True).indices]
    return [torch.sort(part).values for part in torch.tensor_split(order, 3)], used


@register("rum", RumConfig, touches=("forget", "retain"), effects=("remove",), uses=("neggrad_plus",),
          summary="refine D_f into low/medium/high memorisation thirds, NegGrad+ on each in turn (RUM)")
def rum(task: Task, cfg: RumConfig) -> None:
    parts, used = refine(task, cfg.scores)
    inner = METHODS["neggrad_plus"]
    # NegGrad+'s relative defaults as they resolve on the whole request (docs/methods.md); the parts scale these
    defaults = make_config(inner, {})
    base = defaults.resolve(dataclasses.replace(task, resolved={}))
    sizes, resolved = [], {}
    for name, part, beta, e_scale, lr_scale in zip(PARTS, parts, cfg.part_beta, cfg.part_epochs_scale,
                                                   cfg.part_lr_scale):
        sizes.append(int(part.numel()))
        if not part.numel():
            continue
        request = dataclasses.replace(task.request, spec=f"{task.request.spec} ({name} memorisation part)",
                                      forget=part, ids=part.tolist())  # a class part is still of that class
        # the same model (changed in place) and notes
        step = dataclasses.replace(task, request=request, resolved={})
        options = {"beta": beta, "epochs": int(round(e_scale * base["epochs"])), "lr": lr_scale * base["lr"],
                   "retain_per_forget": per_epoch(defaults.retain_per_forget, task.n_forget, part.numel())}
        inner.run(step, make_config(inner, options))
        resolved[name] = step.resolved
    task.notes["rum_scores"] = used
    task.notes["rum_parts"] = dict(zip(PARTS, sizes))
    task.resolved.update(neggrad_plus=base, parts=resolved)
