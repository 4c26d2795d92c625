"""SalUn (Fan et al., ICLR 2024): random labelling restricted to the *salient* weights — the top
``mask_fraction`` of |∇θ of −CE on D_f| at the original weights, selected globally over all parameters.
The other weights stay exactly frozen (the loop zeroes their gradients and restores their values after
each step, so weight decay and momentum cannot move them)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import selection
from ..training import Phase, count_passes
from .base import BIG, Calibrated, SGDOptions, Task, calibrated_fit, option, register
from .random_label import random_label_source


@dataclass
class SalUnConfig(Calibrated, SGDOptions):
    budget: float = option(0.035, "epochs=null: work as a fraction of Retrain's sample passes", gt=0, le=100)
    lr_scale: float = option(0.1, "lr=null: the learning rate as a multiple of the original recipe's", gt=0, le=1000)
    mask_fraction: float = option(
        0.5, "fraction of all parameter entries that may change (largest saliency)", gt=0, le=1
    )
    retain_per_forget: float | None = option(
        2.0, "retain samples mixed in per epoch, as a multiple of |D_f| (None: all)", gt=0, le=BIG
    )

    def epoch_samples(self, task: Task) -> int:
        return task.n_forget + task.retain_pass(self.retain_per_forget)


def forget_gradient(task: Task, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Gradient of the mean cross-entropy on the forget set at the current weights (eval mode)."""
    model = task.model
    model.eval()
    grads = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    source = task.forget_source(batch_size, shuffle=False)
    for batch in source.batches(device=task.device):
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(batch.x), batch.y, reduction="sum") / task.n_forget
        loss.backward()
        count_passes(forward=batch.y.numel(), backward=batch.y.numel())
        for n, p in model.named_parameters():
            if p.grad is not None:
                grads[n] += p.grad
    model.zero_grad(set_to_none=True)
    return grads


def saliency_mask(task: Task, fraction: float) -> dict[str, torch.Tensor]:
    # |∇(−CE)| = |∇CE|: the sign of the objective does not change the saliency.
    return selection.top_fraction({n: g.abs() for n, g in forget_gradient(task).items()}, fraction)


@register(
    "salun",
    SalUnConfig,
    touches=("forget", "retain"),
    summary="random labelling on the most salient weights only (SalUn)",
)
def salun(task: Task, cfg: SalUnConfig) -> None:
    mask = saliency_mask(task, cfg.mask_fraction)
    picked, total = selection.count(mask)
    task.notes["mask_fraction"] = round(picked / total, 6)
    source = random_label_source(task, cfg.batch_size, cfg.retain_per_forget)
    calibrated_fit(task, cfg, Phase(source, name="rl"), trainable=mask)
