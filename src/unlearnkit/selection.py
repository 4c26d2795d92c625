"""Parameter selection: which entries of a model's parameters a method may change.

A selection is a ``{parameter name: bool tensor}`` mask (True = selected), the form
:func:`unlearnkit.training.fit` takes as ``trainable`` and the pruning code stores. Rules that pick entries
— the top fraction of a score (saliency, diagonal Hessian, importance, weight magnitude), a seeded random
fraction, the last layer — are small functions here, so SalUn, SAPS, Top-K/Random-k perturbation and magnitude
pruning all select the same way and are tested once.

Selections are exact: ``top_fraction(scores, 0.1)`` selects exactly ``round(0.1 * total)`` entries (ties
broken by position, deterministically), globally across parameters unless ``per_parameter=True``.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn

from .errors import UnlearnKitError
from .models import last_layer as _last_layer

Mask = dict[str, torch.Tensor]
Scores = dict[str, torch.Tensor]


def _check_fraction(fraction: float) -> None:
    if not 0.0 <= fraction <= 1.0:
        raise UnlearnKitError(f"selection fraction must be in [0, 1], got {fraction}")


def _flatten(scores: Scores) -> tuple[list[str], torch.Tensor]:
    names = list(scores)
    if not names:
        return names, torch.empty(0)
    # float64 scores stay float64: SynFlow's path products span more than float32's range and would tie or
    # overflow if rounded; everything else is compared in float32.
    dtype = torch.float64 if any(scores[n].dtype == torch.float64 for n in names) else torch.float32
    return names, torch.cat([scores[n].detach().reshape(-1).to(dtype) for n in names])


def _unflatten(names: list[str], flat: torch.Tensor, like: Scores) -> Mask:
    out, offset = {}, 0
    for name in names:
        n = like[name].numel()
        out[name] = flat[offset : offset + n].view_as(like[name])
        offset += n
    return out


def top_k(scores: Scores, k: int, *, largest: bool = True) -> Mask:
    """Select exactly ``k`` entries with the largest (or smallest) score across all parameters."""
    names, flat = _flatten(scores)
    if not 0 <= k <= flat.numel():
        raise UnlearnKitError(f"cannot select {k} of {flat.numel()} entries")
    n = flat.numel()
    chosen = torch.zeros(n, dtype=torch.bool, device=flat.device)
    if k == n:
        chosen[:] = True
    elif k:
        # Everything strictly beyond the k-th value, then the earliest entries equal to it: the same
        # selection as a stable sort (ties broken by position, reproducibly), in linear time — pruning
        # selects over every weight of the model, up to a hundred times for SynFlow.
        key = flat if largest else -flat
        threshold = torch.kthvalue(key, n - k + 1).values
        above = key > threshold
        chosen |= above
        ties = (key == threshold).nonzero().squeeze(1)[: k - int(above.sum())]
        chosen[ties] = True
    return _unflatten(names, chosen, scores)


def top_fraction(scores: Scores, fraction: float, *, largest: bool = True, per_parameter: bool = False) -> Mask:
    """Select ``round(fraction * n)`` entries by score, over all parameters or within each one."""
    _check_fraction(fraction)
    if per_parameter:
        return {
            name: top_k({name: s}, int(round(fraction * s.numel())), largest=largest)[name]
            for name, s in scores.items()
        }
    total = sum(s.numel() for s in scores.values())
    return top_k(scores, int(round(fraction * total)), largest=largest)


def random_fraction(like: Scores | nn.Module, fraction: float, generator: torch.Generator) -> Mask:
    """Select a seeded uniformly random ``round(fraction * n)`` entries (n over all given parameters)."""
    _check_fraction(fraction)
    shapes = _shapes(like)
    total = sum(t.numel() for t in shapes.values())
    k = int(round(fraction * total))
    flat = torch.zeros(total, dtype=torch.bool)
    flat[torch.randperm(total, generator=generator)[:k]] = True
    return _unflatten(list(shapes), flat, shapes)


def last_layer(model: nn.Module) -> Mask:
    """Every entry of the classifier (final linear layer), nothing else."""
    head = {id(p) for p in _last_layer(model).parameters()}
    return {n: torch.full_like(p, id(p) in head, dtype=torch.bool) for n, p in model.named_parameters()}


def everything(model: nn.Module) -> Mask:
    return {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()}


def restrict(scores: Scores, names: Iterable[str]) -> Scores:
    """Only the named parameters (e.g. weights of conv/linear layers for pruning)."""
    keep = set(names)
    return {n: s for n, s in scores.items() if n in keep}


def count(mask: Mask) -> tuple[int, int]:
    """(selected entries, total entries)."""
    return sum(int(m.sum()) for m in mask.values()), sum(m.numel() for m in mask.values())


def weight_magnitude(model: nn.Module) -> Scores:
    return {n: p.detach().abs() for n, p in model.named_parameters()}


def _shapes(like: Scores | nn.Module) -> dict[str, torch.Tensor]:
    if isinstance(like, nn.Module):
        return {n: p.detach() for n, p in like.named_parameters()}
    return like
