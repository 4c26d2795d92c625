"""Selective Synaptic Dampening (SSD; Foster et al., AAAI 2024): parameters far more important to the
forget set than to the training data as a whole are shrunk. With importances I = diagonal empirical Fisher
(mean squared per-sample gradient) on D (a sample) and on D_f, every entry with I_f > α·I_D is multiplied by
β = min(λ·I_D / I_f, 1). Retraining-free and one-shot."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import curvature
from ..data import Source
from .base import Task, option, register


@dataclass
class SsdConfig:
    selection: float = option(10.0, "α: dampen entries whose forget importance exceeds α × the global importance")
    dampening: float = option(1.0, "λ: β = min(λ·I_D/I_f, 1)")
    train_samples: int = option(8192, "training samples used for the global importance I_D")
    forget_samples: int = option(8192, "forget samples used for I_f (at most |D_f|)")


@register("ssd", SsdConfig, touches=("forget", "all"), summary="dampen parameters specialised to D_f (SSD)")
def ssd(task: Task, cfg: SsdConfig) -> None:
    model = task.model
    everything = Source(task.x, task.y, torch.arange(task.data.n_train), batch_size=256, shuffle=False)
    importance_all = curvature.fisher_diagonal(model, everything, kind="empirical", max_samples=cfg.train_samples,
                                               generator=task.generator)
    importance_forget = curvature.fisher_diagonal(model, task.forget_source(256, shuffle=False), kind="empirical",
                                                  max_samples=cfg.forget_samples, generator=task.generator)
    dampened = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            i_d, i_f = importance_all[name], importance_forget[name]
            selected = i_f > cfg.selection * i_d
            beta = (cfg.dampening * i_d / i_f.clamp_min(1e-30)).clamp(max=1.0)
            param.mul_(torch.where(selected, beta, torch.ones_like(beta)))
            dampened += int(selected.sum())
    task.notes["dampened_entries"] = dampened
