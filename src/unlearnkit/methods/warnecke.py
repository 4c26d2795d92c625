"""Closed-form unlearning of features and labels (Warnecke et al., NDSS 2023).

With the training objective L(θ) = (1/n) Σ_i ℓ(z_i; θ) (+ weight decay), correcting the samples z_i of D_f to
z̃_i changes its gradient at the trained θ by

    G = (1/n) (Σ_{i ∈ D_f} ∇ℓ(z̃_i; θ) − Σ_{i ∈ D_f} ∇ℓ(z_i; θ))

(for a removal, z̃ is "nothing": the first sum is empty). At a minimum of the old objective, G is the new
objective's gradient, so

* ``warnecke_first``:  θ ← θ − τ·G (a gradient step of size τ on the new objective);
* ``warnecke_second``: θ ← θ − (H + λI)⁻¹ G, one damped Newton step, H the Hessian of the mean loss on the
  corrected training data (a seeded ``curvature_samples`` subsample), solved by conjugate gradients (or LiSSA).
  For an L2-regularised convex model with λ equal to the regulariser this is the exact Newton step, which lands
  within O(‖Δθ‖²) of the retrained optimum (tested on logistic regression). For a network H is indefinite; CG
  stops at negative curvature and returns its iterate (recorded in the notes).

Both take ``scope`` (all parameters or the last layer). Warnecke et al. state the update with sums rather than
means, so their τ is ours divided by n.

For a removal the step is calibrated (:class:`~unlearnkit.methods.base.ScaleCalibrated`): where the model fits D_f,
G is nearly zero and the configured step changes nothing (on digits, class 0 stays at 100 % forget accuracy at
τ = 1), so the step doubles until the forget accuracy on a probe has moved half-way to a retrained model's.

:mod:`unlearnkit.methods.saps` applies these updates to a selected subset of the entries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .. import curvature, selection
from ..data import Source
from .base import BIG, ScaleCalibrated, Task, calibrated_step, option, register

Scope = Literal["all", "last_layer"]


@dataclass
class WarneckeFirstConfig(ScaleCalibrated):
    tau: float = option(1.0, "step size τ on the mean-normalised G", ge=0, le=BIG)
    scope: Scope = option("all", "parameters updated: all, or the last layer only")


@dataclass
class WarneckeSecondConfig(ScaleCalibrated):
    damping: float = option(
        1e-2, "λ added to the Hessian (the L2 regulariser's strength for a convex model)", ge=0, le=BIG
    )
    scale: float = option(1.0, "multiplies the Newton step", ge=0, le=BIG)
    solver: Literal["cg", "lissa"] = option("cg", "inverse-Hessian-vector product")
    max_iter: int = option(50, "CG iterations (each one HVP over the curvature samples)", ge=1, le=BIG)
    tol: float = option(1e-4, "CG relative residual", gt=0, le=1)
    lissa_depth: int = option(200, "LiSSA recursion depth", ge=1, le=BIG)
    lissa_scale: float = option(50.0, "LiSSA scale (above the top eigenvalue of H + λI)", gt=0, le=BIG)
    curvature_samples: int | None = option(2048, "corrected training samples for H (None: all)", ge=1, le=10**8)
    scope: Scope = option("all", "parameters updated: all, or the last layer only")


def _corrected_pool(task: Task) -> torch.Tensor:
    """The ids of the corrected training set (removed samples are left out)."""
    return task.request.retain if task.request.effect == "remove" else torch.arange(task.data.n_train)


def correction_gradient(task: Task, mask=None) -> dict[str, torch.Tensor]:
    """G: the change of the mean training loss's gradient when D_f is corrected (see the module docstring)."""
    n, n_f = task.data.n_train, task.n_forget
    as_trained = curvature.gradient(task.model, task.forget_source(256, shuffle=False), mask=mask)
    if task.request.effect == "remove":
        return {k: -(n_f / n) * g for k, g in as_trained.items()}
    fixed = curvature.gradient(task.model, task.samples(task.request.forget, corrected=True), mask=mask)
    return {k: (n_f / n) * (fixed[k] - as_trained[k]) for k in fixed}


def curvature_data(task: Task, samples: int | None) -> Source:
    return task.samples(task.random_ids(_corrected_pool(task), samples), corrected=True, name="corrected")


def _scope_mask(task: Task, scope: str):
    return selection.last_layer(task.model) if scope == "last_layer" else None


def newton_step(task: Task, g, *, damping: float, mask, samples: int | None, solver: str = "cg", max_iter: int = 50,
            tol: float = 1e-4, lissa_depth: int = 200, lissa_scale: float = 50.0):
    data = curvature_data(task, samples)
    if solver == "cg":
        step, info = curvature.conjugate_gradient(task.model, data, g, damping=damping, max_iter=max_iter, tol=tol,
                                                  mask=mask)
        task.notes["cg"] = {"iterations": info.iterations, "residual": info.residual, "reason": info.reason}
        return step
    return curvature.lissa(task.model, data, g, damping=damping, scale=lissa_scale, depth=lissa_depth,
                           generator=task.generator, mask=mask)


@register("warnecke_first", WarneckeFirstConfig, touches=("forget", "corrected"),
          summary="first-order feature/label unlearning θ − τG (Warnecke et al.)")
def warnecke_first(task: Task, cfg: WarneckeFirstConfig) -> None:
    mask = _scope_mask(task, cfg.scope)
    calibrated_step(task, cfg, correction_gradient(task, mask), -cfg.tau)


@register("warnecke_second", WarneckeSecondConfig, touches=("forget", "corrected", "all"),
          summary="second-order feature/label unlearning θ − (H+λI)⁻¹G (Warnecke et al.)")
def warnecke_second(task: Task, cfg: WarneckeSecondConfig) -> None:
    mask = _scope_mask(task, cfg.scope)
    g = correction_gradient(task, mask)
    step = newton_step(task, g, damping=cfg.damping, mask=mask, samples=cfg.curvature_samples, solver=cfg.solver,
                   max_iter=cfg.max_iter, tol=cfg.tol, lissa_depth=cfg.lissa_depth, lissa_scale=cfg.lissa_scale)
    calibrated_step(task, cfg, step, -cfg.scale)
