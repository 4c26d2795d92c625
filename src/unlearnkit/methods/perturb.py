"""Fine-grained parameter perturbation (Zuo et al., *Machine Unlearning through Fine-Grained Model Parameters
Perturbation*, TKDE 2025): add Gaussian noise to a few chosen
parameter entries instead of to all of them, then optionally repair the model with a short fine-tune on
retain samples.

* ``topk_perturb`` — the K entries with the largest importance Ω_j for the forget set:

  - ``importance="output"``: Ω_j = |∂ mean ‖f(x)‖²₂ / ∂θ_j| with f the logits (Memory Aware Synapses' output
    sensitivity), averaged over mini-batches of ``importance_batch`` forget samples, weighted by batch size.
    ``importance_batch=1`` gives the per-sample magnitudes exactly; larger batches take the magnitude of each
    batch's mean gradient (signs cancel inside a batch: an approximation that is ``importance_batch`` times
    cheaper in Python overhead).
  - ``importance="loss"``: the same with the cross-entropy on D_f (SalUn's saliency when the batch is all of D_f).
  - ``importance="fisher"``: the empirical Fisher diagonal on D_f, mean of squared per-sample loss gradients,
    computed by :mod:`unlearnkit.curvature` (one estimator for the whole project).
  - ``contrast="ratio"``: Ω_f / (Ω_r + ε·mean Ω_r) with Ω_r the same importance on a seeded sample of retain
    data, so entries that matter to *everything* (not only to D_f) are not the ones destroyed.

* ``randomk_perturb`` — a seeded uniformly random k (a fraction) of all entries.
* ``global_perturb`` — every entry (the global-perturbation baseline the paper argues against).

Noise: θ_j ← θ_j + σ·s_j·z_j, z_j ~ N(0, 1) from the task's seeded generator, with the scale s_j chosen by
``scale``: |θ_j| (``parameter``), the standard deviation of θ_j's tensor (``layer``), or 1 (``absolute``).
Selection goes through :mod:`unlearnkit.selection` (exact top-k, seeded random fraction); entries a pruning mask
has removed are never selected. The repair is the project's loop (``task.fit``) on ``retain_per_forget`` × |D_f|
fresh retain samples per epoch, over all parameters or (``repair_scope="selected"``) only the perturbed ones.
The paper does not publish its importance, noise or repair formulas; these are unlearnkit's own,
and the defaults were chosen by the variants of ``benchmarks/suites/perturb.toml`` (see ``docs/perturbation.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import selection
from ..data import Source
from ..errors import UnlearnKitError
from ..masks import prune_masks
from ..training import Phase, count_passes
from .base import BIG, ScaleCalibrated, SGDOptions, Task, calibrate_scale, option, register, retrain_work

Importance = Literal["output", "loss", "fisher"]


@dataclass
class PerturbOptions(ScaleCalibrated, SGDOptions):
    """Noise and repair options shared by the three perturbation methods (SGD fields configure the repair; the
    calibration doubles σ)."""

    sigma: float = option(1.0, "noise scale σ (multiplies the scale chosen by `scale`)", ge=0, le=1000)
    scale: Literal["parameter", "layer", "absolute"] = option(
        "parameter",
        "noise standard deviation per entry: σ·|θ_j| (parameter), σ·std of θ_j's tensor (layer) or σ (absolute)",
    )
    epochs: int | None = option(None, "repair passes over retain samples after the perturbation (0: no repair; "
                                      "null: as many as `budget` allows)", ge=0, le=10_000)
    budget: float = option(0.012, "epochs=null: repair work as a fraction of Retrain's sample passes", gt=0, le=100)
    lr: float | None = option(None, "repair learning rate (null: lr_scale × the original recipe's)", gt=0, le=10)
    lr_scale: float = option(0.2, "lr=null: the repair learning rate as a multiple of the original recipe's", gt=0,
                             le=1000)
    retain_per_forget: float | None = option(
        1.0, "repair: retain samples per pass, as a multiple of |D_f| (None: all of D_r)", gt=0, le=BIG
    )
    repair_scope: Literal["all", "selected"] = option("all", "repair every parameter, or only the perturbed entries")
    max_budget: float = option(0.1, "calibrate: the most repair work in all, as a fraction of Retrain's sample passes",
                               gt=0, le=100)

    def epoch_samples(self, task: Task) -> int:
        return task.retain_pass(self.retain_per_forget)


@dataclass
class TopKConfig(PerturbOptions):
    fraction: float = option(0.01, "K as a fraction of all (unpruned) parameter entries", ge=0, le=1)
    k: int | None = option(None, "K as a count of entries (overrides fraction; at most the unpruned entries)", ge=0,
                          le=10**12)
    importance: Importance = option(
        "loss", "importance Ω for D_f: output (MAS), loss (cross-entropy) or fisher (empirical Fisher diagonal)"
    )
    importance_batch: int = option(
        64, "forget samples per gradient whose magnitude is averaged (1: exact per-sample magnitudes)", ge=1, le=65_536
    )
    contrast: Literal["none", "ratio"] = option("none", "rank by Ω_f (none) or by Ω_f / (Ω_r + ε·mean Ω_r) (ratio)")
    retain_samples: int = option(2048, "contrast=ratio: retain samples for Ω_r", ge=1, le=10**8)
    contrast_epsilon: float = option(1e-3, "contrast=ratio: ε, relative to the mean of Ω_r", gt=0, le=BIG)


@dataclass
class RandomKConfig(PerturbOptions):
    fraction: float = option(
        0.05, "k as a fraction of all (unpruned) parameter entries, chosen uniformly at random (seeded)", ge=0, le=1
    )


@dataclass
class GlobalPerturbConfig(PerturbOptions):
    pass


# -- importance -----------------------------------------------------------------------------------------
def importance(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, kind: Importance, *,
               batch_size: int = 64, device: torch.device | None = None,
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Ω_j of every parameter entry for the samples ``ids`` (see the module docstring), at the current weights."""
    if ids.numel() == 0:
        raise UnlearnKitError("importance needs at least one sample")
    was_training = model.training
    model.eval()
    if kind == "fisher":
        try:
            from .. import curvature
        except ImportError:
            raise UnlearnKitError("importance='fisher' needs unlearnkit.curvature, which this installation lacks; "
                                  "use importance='output' or 'loss'") from None
        source = Source(x, y, ids, batch_size=256, shuffle=False)
        scores = curvature.fisher_diagonal(model, source, kind="empirical", max_samples=None, generator=generator)
        model.train(was_training)
        return {n: s.detach() for n, s in scores.items()}
    if kind not in ("output", "loss"):
        raise UnlearnKitError(f"unknown importance {kind!r}; use output, loss or fisher")
    params = dict(model.named_parameters())
    scores = {n: torch.zeros_like(p) for n, p in params.items()}
    total = int(ids.numel())
    for batch in Source(x, y, ids, batch_size=max(1, batch_size), shuffle=False).batches(device=device):
        n = int(batch.y.numel())
        model.zero_grad(set_to_none=True)
        out = model(batch.x)
        objective = out.pow(2).sum(1).mean() if kind == "output" else F.cross_entropy(out, batch.y)
        objective.backward()
        count_passes(forward=n, backward=n)
        for name, p in params.items():
            if p.grad is not None:
                scores[name].add_(p.grad.abs(), alpha=n / total)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return scores


def contrasted(forget_scores: dict[str, torch.Tensor], retain_scores: dict[str, torch.Tensor],
               epsilon: float) -> dict[str, torch.Tensor]:
    """Ω_f / (Ω_r + ε·mean Ω_r): large where the forget set needs an entry far more than the retained data."""
    total = sum(float(s.sum()) for s in retain_scores.values())
    count = sum(s.numel() for s in retain_scores.values())
    floor = epsilon * total / max(count, 1)
    if not floor > 0:
        floor = 1e-30  # Ω_r is identically zero (degenerate model): the ratio ranks by Ω_f
    return {n: forget_scores[n] / (retain_scores[n] + floor) for n in forget_scores}


def _eligible(model: nn.Module, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Scores with pruned entries pushed below every live one, so a selection never spends K on them."""
    masks = prune_masks(model)
    if not masks:
        return scores
    out = {}
    for name, s in scores.items():
        mask = masks.get(name)
        out[name] = s if mask is None else torch.where(mask.to(s.device), s, torch.full_like(s, -math.inf))
    return out


# -- perturbation and repair ----------------------------------------------------------------------------
@torch.no_grad()
def add_noise(model: nn.Module, mask: dict[str, torch.Tensor], sigma: float, scale: str,
              generator: torch.Generator) -> dict[str, float]:
    """θ_j += σ·s_j·z_j on the selected entries only; returns the noise's RMS and the count of changed entries."""
    if sigma < 0:
        raise UnlearnKitError(f"sigma must be >= 0, got {sigma}")
    squared, selected = 0.0, 0
    for name, param in model.named_parameters():
        chosen = mask[name].to(param.device)
        # Noise is drawn for every entry (then masked) so the draw does not depend on which entries were chosen.
        z = torch.randn(param.shape, generator=generator).to(param.device, param.dtype)
        if not bool(chosen.any()):
            continue
        if scale == "parameter":
            s = param.abs()
        elif scale == "layer":
            s = param.std(unbiased=False).expand_as(param) if param.numel() > 1 else param.abs()
        elif scale == "absolute":
            s = torch.ones_like(param)
        else:
            raise UnlearnKitError(f"unknown noise scale {scale!r}; use parameter, layer or absolute")
        delta = torch.where(chosen, sigma * s * z, torch.zeros_like(param))
        param.add_(delta)
        squared += float(delta.pow(2).sum())
        selected += int(chosen.sum())
    return {"noise_rms": math.sqrt(squared / selected) if selected else 0.0, "perturbed_entries": selected}


def perturb_and_repair(task: Task, cfg: PerturbOptions, mask: dict[str, torch.Tensor]) -> None:
    """Noise on the selected entries, then the repair; calibrated (:func:`calibrate_scale`): a try at a larger σ starts
    again from the original weights with the same draws, and each try pays its repair, within ``max_budget``."""
    picked, total = selection.count(mask)
    task.notes["selected_entries"] = picked
    task.notes["selected_fraction"] = round(picked / total, 6) if total else 0.0
    config = cfg.train_config(task)
    trainable = mask if cfg.repair_scope == "selected" else None
    weights = {k: v.clone() for k, v in task.model.state_dict().items()}
    draws = task.generator.get_state()

    def attempt(scale: float) -> None:
        if scale > 1:
            task.model.load_state_dict(weights)
            task.generator.set_state(draws)
        task.notes.update(add_noise(task.model, mask, cfg.sigma * scale, cfg.scale, task.generator))
        if config.epochs > 0:
            source = task.retain_source(cfg.batch_size, per_epoch=task.retain_count(cfg.retain_per_forget))
            task.fit(Phase(source, name="repair"), config, trainable=trainable)

    repair = config.epochs * cfg.epoch_samples(task)
    tries = math.floor(cfg.max_budget * retrain_work(task) / repair) if repair else 64
    calibrate_scale(task, cfg, attempt, max_scale=2.0 ** max(0, tries - 1))


def topk_mask(task: Task, cfg: TopKConfig) -> dict[str, torch.Tensor]:
    """The K entries the method perturbs: exact top-K of the (possibly contrasted) importance."""
    model = task.model
    live = _live_count(model)
    if cfg.k is not None and not 0 <= cfg.k <= live:  # before the importance pass over D_f
        raise UnlearnKitError(f"k must be between 0 and the model's {live} (unpruned) parameter entries, got {cfg.k}")
    omega = importance(model, task.x, task.y, task.request.forget, cfg.importance, batch_size=cfg.importance_batch,
                       device=task.device, generator=task.generator)
    if cfg.contrast == "ratio":
        retain = task.request.retain
        sample = retain[torch.randperm(retain.numel(), generator=task.generator)[: cfg.retain_samples]]
        omega_r = importance(model, task.x, task.y, sample, cfg.importance, batch_size=cfg.importance_batch,
                             device=task.device, generator=task.generator)
        omega = contrasted(omega, omega_r, cfg.contrast_epsilon)
    if cfg.k is not None:
        return selection.top_k(_eligible(model, omega), cfg.k)
    return selection.top_k(_eligible(model, omega), _count(cfg.fraction, live))


def _live_count(model: nn.Module) -> int:
    """Parameter entries a pruning mask has not removed (all of them for a dense model)."""
    masks = prune_masks(model)
    return sum(int(masks[n].sum()) if n in masks else p.numel() for n, p in model.named_parameters())


def _count(fraction: float, live: int) -> int:
    if not 0.0 <= fraction <= 1.0:
        raise UnlearnKitError(f"selection fraction must be in [0, 1], got {fraction}")
    return int(round(fraction * live))


def _live_random(task: Task, fraction: float) -> dict[str, torch.Tensor]:
    if not prune_masks(task.model):
        return selection.random_fraction(task.model, fraction, task.generator)
    # A pruned model: draw among the live entries only (their scores are random, pruned ones -inf); k % of the live.
    scores = {n: torch.rand(p.shape, generator=task.generator) for n, p in task.model.named_parameters()}
    return selection.top_k(_eligible(task.model, scores), _count(fraction, _live_count(task.model)))


@register("topk_perturb", TopKConfig, touches=("forget", "retain"),
          summary="Gaussian noise on the K entries most important to D_f, then a short repair on D_r (Zuo et al., "
                  "TKDE 2025)")
def topk_perturb(task: Task, cfg: TopKConfig) -> None:
    perturb_and_repair(task, cfg, topk_mask(task, cfg))


@register("randomk_perturb", RandomKConfig, touches=("retain",),
          summary="Gaussian noise on a seeded random k % of entries, then a short repair on D_r "
                  "(Zuo et al., TKDE 2025)")
def randomk_perturb(task: Task, cfg: RandomKConfig) -> None:
    perturb_and_repair(task, cfg, _live_random(task, cfg.fraction))


@register("global_perturb", GlobalPerturbConfig, touches=("retain",),
          summary="Gaussian noise on every entry, then a short repair on D_r (the global baseline of Zuo et al.)")
def global_perturb(task: Task, cfg: GlobalPerturbConfig) -> None:
    perturb_and_repair(task, cfg, selection.everything(task.model))
