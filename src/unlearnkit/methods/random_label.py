"""Random labelling (RL): train on the forget set with random *wrong* labels mixed with retain samples,
so the forget samples lose their learned labels while the retain data holds the rest in place
(Golatkar et al. 2020; the base of SalUn). The random labels never equal the true one."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data import Source
from ..training import Phase
from .base import BIG, Calibrated, SGDOptions, Task, calibrated_fit, option, random_wrong_labels, register


@dataclass
class RandomLabelConfig(Calibrated, SGDOptions):
    budget: float = option(0.045, "epochs=null: work as a fraction of Retrain's sample passes", gt=0, le=100)
    lr_scale: float = option(0.2, "lr=null: the learning rate as a multiple of the original recipe's", gt=0, le=1000)
    retain_per_forget: float | None = option(
        3.0, "retain samples mixed in per epoch, as a multiple of |D_f| (None: all)", gt=0, le=BIG
    )

    def epoch_samples(self, task: Task) -> int:
        return task.n_forget + task.retain_pass(self.retain_per_forget)


def random_label_source(task: Task, batch_size: int, retain_per_forget: float | None) -> Source:
    """D_f with random wrong labels, plus a fresh random part of D_r each pass, shuffled together."""
    labels = random_wrong_labels(task.y, task.request.forget, task.data.num_classes, task.generator)
    per_epoch = task.retain_count(retain_per_forget)
    retain = task.request.retain
    if per_epoch is None or per_epoch >= retain.numel():
        return Source(
            task.x, labels, torch.cat([task.request.forget, retain]), batch_size=batch_size, name="random-label"
        )
    return Source(task.x, labels, task.request.forget, batch_size=batch_size,
                  sample_from=retain, sample_size=per_epoch, name="random-label")


@register(
    "random_label",
    RandomLabelConfig,
    touches=("forget", "retain"),
    summary="random wrong labels on D_f mixed with D_r (RL)",
)
def random_label(task: Task, cfg: RandomLabelConfig) -> None:
    source = random_label_source(task, cfg.batch_size, cfg.retain_per_forget)
    calibrated_fit(task, cfg, Phase(source, name="rl"))
