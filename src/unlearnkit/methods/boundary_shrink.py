"""Boundary Shrink (Chen et al., CVPR 2023): move each forget sample across its nearest decision boundary.
A one-step FGSM attack of size ``epsilon`` (pixel space) on the original model finds the nearest wrong
class of every forget sample (if the attack does not leave the true class, the runner-up class is used);
the model is then fine-tuned on the forget samples with those labels."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..training import Phase, count_passes
from .base import Calibrated, SGDOptions, Task, calibrated_fit, option, register


@dataclass
class BoundaryShrinkConfig(Calibrated, SGDOptions):
    epochs: int | None = option(None, "passes over the forget set (null: as many as `budget` allows)", ge=0,
                                le=10_000)
    budget: float = option(0.012, "epochs=null: work as a fraction of Retrain's sample passes", gt=0, le=100)
    lr_scale: float = option(0.002, "lr=null: the learning rate as a multiple of the original recipe's", gt=0,
                             le=1000)
    epsilon: float = option(0.1, "FGSM step in pixel space [0, 1] used to find the nearest boundary", gt=0, le=1)


def nearest_wrong_labels(task: Task, epsilon: float, batch_size: int = 256) -> torch.Tensor:
    """A copy of the training labels where each forget sample gets its nearest wrong class."""
    model = task.original
    labels = task.y.clone()
    source = task.forget_source(batch_size, shuffle=False)
    for batch in source.batches(device=task.device):
        x = batch.x.clone().requires_grad_(True)
        loss = F.cross_entropy(model(x), batch.y)
        (grad,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            adversarial = (x + epsilon * grad.sign()).clamp(0, 1)
            logits = model(adversarial)
            logits[torch.arange(len(batch.y)), batch.y] = float("-inf")  # never the true class
            labels[batch.index] = logits.argmax(1).cpu()
        count_passes(forward=2 * len(batch.y), backward=len(batch.y))
    return labels


@register(
    "boundary_shrink",
    BoundaryShrinkConfig,
    touches=("forget",),
    summary="relabel D_f to its nearest wrong class by FGSM (Boundary Shrink)",
)
def boundary_shrink(task: Task, cfg: BoundaryShrinkConfig) -> None:
    labels = nearest_wrong_labels(task, cfg.epsilon)
    calibrated_fit(task, cfg, Phase(task.forget_source(cfg.batch_size, labels=labels), name="shrink"))
