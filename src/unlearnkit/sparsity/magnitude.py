"""Magnitude pruning: one shot (OMP) and iterative with weight rewinding (IMP).

Both keep the largest-magnitude weights among the prunable ones, globally (one threshold over all chosen
layers, the default) or per layer, and select through :mod:`unlearnkit.selection`, so the count is exact:
``round(s * n)`` entries are pruned out of ``n``. Entries that are already pruned stay pruned (they rank
below every live weight), so pruning a pruned model only ever adds zeros.

IMP (Frankle & Carbin 2019; with rewinding, Frankle et al. 2020; the seed-000 recipe): train the dense
model and keep θ_k, its weights after ``k`` epochs; then repeat — prune ``rate`` of the remaining weights
by the magnitude of the *trained* weights, reset the survivors to θ_k (BatchNorm statistics included),
retrain — until the target sparsity. Each retraining is a full run of the training recipe from θ_k (the
reference code restarts its schedule each round too).
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
import torch.nn as nn

from .. import selection
from ..errors import UnlearnKitError
from ..masks import PRUNE_SUFFIX, attach_prune_masks, prune_masks
from ..training import FitReport
from .layers import global_sparsity, layer_sparsity

Mask = dict[str, torch.Tensor]
AfterEpoch = Callable[[nn.Module, dict], "bool | None"]
TrainFn = Callable[[nn.Module, "AfterEpoch | None"], FitReport]


def alive_masks(model: nn.Module, names: list[str]) -> Mask:
    """True where each named weight is not (yet) pruned."""
    current = prune_masks(model)
    params = dict(model.named_parameters())
    return {n: current[n].detach() if n in current else torch.ones_like(params[n], dtype=torch.bool) for n in names}


def select_survivors(scores: dict[str, torch.Tensor], alive: Mask, sparsity: float, *, scope: str = "global",
                     allow_sparser: bool = False) -> Mask:
    """Keep the ``n - round(sparsity * n)`` highest-scoring live entries (over all ``scores`` or per entry).

    An already-pruned entry is never kept. If more entries are already pruned than ``sparsity`` asks for,
    that is an error unless ``allow_sparser`` (then nothing more is pruned there).
    """
    if not 0.0 <= sparsity < 1.0:
        raise UnlearnKitError(f"sparsity must be in [0, 1), got {sparsity}")
    groups = [list(scores)] if scope == "global" else [[name] for name in scores]
    survivors: Mask = {}
    for group in groups:
        ranked = {
            n: torch.where(
                alive[n].to(scores[n].device),
                scores[n].detach(),
                torch.tensor(-math.inf, dtype=scores[n].dtype, device=scores[n].device),
            )
            for n in group
        }
        total = sum(t.numel() for t in ranked.values())
        already = total - sum(int(alive[n].sum()) for n in group)
        zeros = int(round(sparsity * total))
        if already > zeros:
            if not allow_sparser:
                where = "the chosen layers" if scope == "global" else group[0]
                raise UnlearnKitError(f"{where} already have {already / total:.4f} sparsity, more than the requested "
                                      f"{sparsity}; pruning never revives weights — ask for at least that sparsity")
            zeros = already
        survivors.update(selection.top_k(ranked, total - zeros))
    return {n: m.cpu() for n, m in survivors.items()}


def magnitude_prune(model: nn.Module, sparsity: float, names: list[str], *, scope: str = "global") -> Mask:
    """OMP: prune ``model`` in place to ``sparsity`` over ``names`` by weight magnitude; returns the masks."""
    scores = selection.restrict(selection.weight_magnitude(model), names)
    masks = select_survivors(scores, alive_masks(model, names), sparsity, scope=scope)
    attach_prune_masks(model, masks)
    return masks


# -- IMP -------------------------------------------------------------------------------------------------
def imp_schedule(sparsity: float, rate: float) -> list[float]:
    """Sparsities after each IMP round: 1 - (1 - rate)^r, the last one clipped to ``sparsity``."""
    if not 0.0 < rate < 1.0:
        raise UnlearnKitError(f"IMP rate must be in (0, 1), got {rate}")
    if sparsity <= 0.0:
        return []
    steps, r = [], 1
    while 1.0 - (1.0 - rate) ** r < sparsity - 1e-12:
        steps.append(1.0 - (1.0 - rate) ** r)
        r += 1
    return steps + [sparsity]


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's state (parameters and buffers, not prune masks) to rewind to."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not k.endswith(PRUNE_SUFFIX)}


@torch.no_grad()
def rewind(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Reset every parameter and buffer in ``state`` (masks are left as they are)."""
    own = model.state_dict()
    missing = sorted(set(state) - set(own))
    if missing:
        raise UnlearnKitError(f"rewind state does not fit the model: it has {missing[:3]}")
    for key, value in state.items():
        own[key].copy_(value)


def train_with_snapshot(
    model: nn.Module, train: TrainFn, rewind_epoch: int
) -> tuple[dict[str, torch.Tensor], FitReport]:
    """Run ``train`` (the dense run) and keep the state after ``rewind_epoch`` epochs (0: the initial weights)."""
    kept: dict[str, dict] = {}
    if rewind_epoch == 0:
        kept["state"] = snapshot(model)

    def keep_early(m: nn.Module, record: dict) -> None:
        if record.get("epoch") == rewind_epoch:
            kept["state"] = snapshot(m)

    report = train(model, keep_early if rewind_epoch > 0 else None)
    if "state" not in kept:
        raise UnlearnKitError(
            f"rewind_epoch {rewind_epoch} is beyond the {len(report.history)} epochs of the dense run"
        )
    return kept["state"], report


def iterative_magnitude_prune(
    model: nn.Module,
    retrain: Callable[[nn.Module], FitReport],
    rewind_state: dict[str, torch.Tensor],
    sparsity: float,
    names: list[str],
    *,
    rate: float = 0.2,
    scope: str = "global",
) -> list[dict]:
    """IMP from a trained ``model``: rounds of prune (by trained magnitude) → rewind → ``retrain``.

    Returns one record per round (target and reached sparsity, the retraining's last epoch, seconds).
    A single round with ``rate >= sparsity`` is the seed-000 OMP recipe (prune once, rewind, retrain).
    """
    rounds = []
    schedule = imp_schedule(sparsity, rate)
    for number, target in enumerate(schedule, 1):
        started = time.perf_counter()
        final = number == len(schedule)
        scores = selection.restrict(selection.weight_magnitude(model), names)
        masks = select_survivors(scores, alive_masks(model, names), target, scope=scope, allow_sparser=not final)
        rewind(model, rewind_state)
        attach_prune_masks(model, masks)
        report = retrain(model)
        last = report.history[-1] if report.history else {}
        rounds.append({
            "round": number, "target_sparsity": round(target, 6), "sparsity": round(global_sparsity(model, names), 6),
            **{k: last[k] for k in ("loss", "acc", "test_acc") if k in last},
            "epochs": len(report.history), "seconds": round(time.perf_counter() - started, 3),
        })
    return rounds


__all__ = ["alive_masks", "select_survivors", "magnitude_prune", "imp_schedule", "snapshot", "rewind",
           "train_with_snapshot", "iterative_magnitude_prune", "layer_sparsity"]
