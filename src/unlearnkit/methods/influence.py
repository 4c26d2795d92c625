"""Influence unlearning (IU; Koh & Liang 2017, Izzo et al. 2021, as in Jia et al. 2023's IU baseline):
one Newton-type step that removes the forget set's first-order influence,

    θ ← θ + α · H⁻¹ (w_f·ḡ_f − w_r·ḡ_r),   w_f = |D_f|/n, w_r = |D_r|/n,

with ḡ the mean loss gradients on D_f and on (a sample of) D_r, and H the retain loss's curvature
approximated by WoodFisher (λI + empirical Fisher of N retain samples, inverted exactly by Woodbury),
the damped diagonal Fisher, or LiSSA on Hessian-vector products. At a stationary point of the full loss
w_f·ḡ_f = −w_r·ḡ_r, so the direction is twice the Newton step of the retain loss; α absorbs such constants.
For a removal α is calibrated (:class:`~unlearnkit.methods.base.ScaleCalibrated`: doubled until the forget accuracy
on a probe has moved half-way to a retrained model's)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .. import curvature
from .base import BIG, ScaleCalibrated, Task, calibrated_step, option, register


@dataclass
class InfluenceConfig(ScaleCalibrated):
    hessian: Literal["woodfisher", "diagonal", "lissa"] = option("woodfisher", "inverse-curvature approximation")
    alpha: float = option(0.02, "step scale α", ge=0, le=BIG)
    damping: float = option(1e-3, "λ added to the curvature", ge=0, le=BIG)
    curvature_samples: int = option(
        512, "retain samples for the curvature (WoodFisher N, diagonal Fisher, LiSSA batches)", ge=1, le=10**8
    )
    retain_samples: int = option(8192, "retain samples for the mean retain gradient", ge=1, le=10**8)
    lissa_depth: int = option(100, "LiSSA recursion depth", ge=1, le=BIG)
    lissa_scale: float = option(50.0, "LiSSA scale (must exceed the curvature's top eigenvalue)", gt=0, le=BIG)


@register("influence", InfluenceConfig, touches=("forget", "retain"), summary="one-shot influence-function update (IU)")
def influence(task: Task, cfg: InfluenceConfig) -> None:
    model = task.model
    n = task.data.n_train
    w_f, w_r = task.n_forget / n, task.request.retain.numel() / n
    grad_f = curvature.gradient(model, task.forget_source(256, shuffle=False))
    retain = task.request.retain
    grad_r = curvature.gradient(model, task.samples(task.random_ids(retain, cfg.retain_samples), name="retain sample"))
    direction = {k: w_f * grad_f[k] - w_r * grad_r[k] for k in grad_f}
    curvature_data = task.samples(task.random_ids(retain, cfg.curvature_samples), name="curvature sample")
    if cfg.hessian == "woodfisher":
        step = curvature.woodfisher_inverse(model, curvature_data, direction, damping=cfg.damping,
                                            n_samples=cfg.curvature_samples, generator=task.generator)
    elif cfg.hessian == "diagonal":
        diag = curvature.fisher_diagonal(model, curvature_data, kind="empirical")
        step = curvature.diagonal_inverse(diag, direction, damping=cfg.damping)
    else:
        step = curvature.lissa(model, curvature_data, direction, damping=cfg.damping, scale=cfg.lissa_scale,
                               depth=cfg.lissa_depth, batch_size=64, generator=task.generator)
    calibrated_step(task, cfg, step, cfg.alpha)
