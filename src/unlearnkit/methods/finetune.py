"""Fine-tuning (FT): continue training on the retain set only, so that the forget set is gradually
overwritten (catastrophic forgetting). The field's default is 10 epochs at lr 0.01 over all of D_r; here
each epoch sees ``retain_per_forget`` × |D_f| retain samples so its cost is bounded (None: all of D_r), and the run
has ``budget`` of Retrain's sample passes at ``lr_scale`` × the original's learning rate (on the Fashion-MNIST recipe:
4 epochs at lr 0.1). Where that leaves a class's forget accuracy where it was — a model that fits D_r with a loss
near zero — smaller batches knock it loose and a repair re-fits D_r, within ``max_budget``
(:class:`~.base.RetainCalibrated`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..training import Phase
from .base import BIG, RetainCalibrated, SGDOptions, Task, option, register, retain_calibrated_fit


@dataclass
class FinetuneConfig(RetainCalibrated, SGDOptions):
    budget: float = option(0.045, "epochs=null: work as a fraction of Retrain's sample passes", gt=0, le=100)
    lr_scale: float = option(2.0, "lr=null: the learning rate as a multiple of the original recipe's", gt=0, le=1000)
    schedule: Literal["constant", "cosine", "linear"] = option("cosine", "learning-rate schedule over the run")
    retain_per_forget: float | None = option(
        1.0, "retain samples per epoch, as a multiple of |D_f| (None: all of D_r)", gt=0, le=BIG
    )

    def epoch_samples(self, task: Task) -> int:
        return task.retain_pass(self.retain_per_forget)


@register("finetune", FinetuneConfig, touches=("retain",), effects=("remove", "relabel", "edit"),
          summary="fine-tune on the retain set (FT)")
def finetune(task: Task, cfg: FinetuneConfig) -> None:
    per_epoch = task.retain_count(cfg.retain_per_forget)
    retain_calibrated_fit(task, cfg, lambda batch: Phase(task.retain_source(batch, per_epoch=per_epoch), name="retain"))
