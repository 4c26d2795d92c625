"""Selective Synaptic Dampening (SSD; Foster et al., AAAI 2024): parameters far more important to the
forget set than to the training data as a whole are shrunk. With importances I on D (a sample) and on D_f,
every entry with I_f > α·I_D is multiplied by β = min(λ·I_D / I_f, 1). Retraining-free and one-shot.

Importance. The paper's importance is the mean over mini-batches of the *squared mini-batch gradient*
(``importance="batch"``, batch size ``batch_size``). The default is the per-sample empirical Fisher
(``importance="per_sample"``) with α = 2, the lowest mean Avg. Gap of the default-selection sweep
(``benchmarks/results/fmnist-sweep``). The two differ: the batch importance is not the per-sample diagonal
Fisher: gradients of a well-fit data set cancel inside a batch, while those of a coherent forget set (one
class) do not, which is what lets I_f exceed α·I_D. With the per-sample empirical Fisher
(``importance="per_sample"``) I_D = (|D_r|·I_r + |D_f|·I_f)/n ≥ (|D_f|/n)·I_f, so no entry can be
selected once α > n/|D_f| (10 for one Fashion-MNIST class; tested on digits, class 3) -- hence the small default α."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .. import curvature
from .base import BIG, Task, option, register


@dataclass
class SsdConfig:
    selection: float = option(
        2.0, "α: dampen entries whose forget importance exceeds α × the global importance", gt=0, le=BIG
    )
    dampening: float = option(1.0, "λ: β = min(λ·I_D/I_f, 1)", gt=0, le=BIG)
    importance: Literal["batch", "per_sample"] = option(
        "per_sample", "squared mini-batch gradients (paper) or per-sample Fisher"
    )
    batch_size: int = option(64, "mini-batch size for importance='batch'", ge=1, le=65_536)
    train_samples: int = option(8192, "training samples used for the global importance I_D", ge=1, le=10**8)
    forget_samples: int = option(8192, "forget samples used for I_f (at most |D_f|)", ge=1, le=10**8)


def _batch_importance(task: Task, ids: torch.Tensor, cfg: SsdConfig) -> dict:
    """Mean over mini-batches of the squared mean-loss gradient of each batch (a seeded shuffle of ``ids``)."""
    order = ids[torch.randperm(ids.numel(), generator=task.generator)]
    batches = [order[i : i + cfg.batch_size] for i in range(0, order.numel(), cfg.batch_size)]
    total = None
    for chunk in batches:
        g = curvature.gradient(task.model, task.samples(chunk, cfg.batch_size))
        total = (
            {k: v.square() for k, v in g.items()} if total is None else {k: total[k] + v.square() for k, v in g.items()}
        )
    return {k: v / len(batches) for k, v in total.items()}


@register("ssd", SsdConfig, touches=("forget", "all"), summary="dampen parameters specialised to D_f (SSD)")
def ssd(task: Task, cfg: SsdConfig) -> None:
    model = task.model
    every_id = torch.arange(task.data.n_train)
    train_ids = every_id[torch.randperm(every_id.numel(), generator=task.generator)[: cfg.train_samples]]
    forget = task.request.forget
    forget_ids = forget[torch.randperm(forget.numel(), generator=task.generator)[: cfg.forget_samples]]
    if cfg.importance == "batch":
        importance_all = _batch_importance(task, train_ids, cfg)
        importance_forget = _batch_importance(task, forget_ids, cfg)
    else:
        importance_all = curvature.fisher_diagonal(model, task.samples(train_ids), kind="empirical")
        importance_forget = curvature.fisher_diagonal(model, task.samples(forget_ids), kind="empirical")
    dampened = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            i_d, i_f = importance_all[name], importance_forget[name]
            selected = i_f > cfg.selection * i_d
            beta = (cfg.dampening * i_d / i_f.clamp_min(1e-30)).clamp(max=1.0)
            param.mul_(torch.where(selected, beta, torch.ones_like(beta)))
            dampened += int(selected.sum())
    task.notes["dampened_entries"] = dampened
