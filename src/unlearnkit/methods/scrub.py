"""SCRUB (Kurmanji et al., NeurIPS 2023): the unlearned model is a student of the original (teacher).
In the first ``max_epochs`` epochs it first takes *max-steps* on the forget set (move away from the teacher:
maximise KL(teacher ‖ student)); every epoch it then takes *min-steps* on retain samples (stay close to the
teacher and fit the labels: α·KL + γ·CE). Distillation at temperature ``temperature``.

The max-step objective is unbounded: measured on Fashion-MNIST, lr ≥ 5e-3 diverged within one epoch (non-finite
loss) while 1e-3 barely moved the model. So, as a documented safeguard that is not in the paper, a max-step
skips a batch whose (T²-scaled) KL already exceeds ``kl_cap`` (None disables it)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..training import Phase
from .base import BIG, Calibrated, SGDOptions, Task, calibrated_fit, option, register


@dataclass
class ScrubConfig(Calibrated, SGDOptions):
    epochs: int | None = option(None, "epochs (each: optional max-steps on D_f, then min-steps on D_r; null: as many "
                                      "as `budget` allows)", ge=0, le=10_000)
    budget: float = option(0.025, "epochs=null: work as a fraction of Retrain's sample passes", gt=0, le=100)
    max_epochs: int = option(2, "epochs that include the max-steps", ge=0, le=10_000)
    lr_scale: float = option(0.1, "lr=null: the learning rate as a multiple of the original recipe's", gt=0, le=1000)
    temperature: float = option(4.0, "distillation temperature", gt=0, le=1000)
    kl_weight: float = option(1.0, "α: weight of the KL term in min-steps", ge=0, le=BIG)
    ce_weight: float = option(1.0, "γ: weight of the cross-entropy in min-steps", ge=0, le=BIG)
    retain_per_forget: float | None = option(
        1.0, "retain samples per epoch, as a multiple of |D_f| (None: all)", gt=0, le=BIG
    )
    kl_cap: float | None = option(
        2.0, "max-steps skip batches whose KL(teacher ‖ student) already exceeds this", gt=0, le=BIG
    )

    def epoch_samples(self, task: Task) -> int:
        return (task.n_forget if self.max_epochs > 0 else 0) + task.retain_pass(self.retain_per_forget)


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) on temperature-softened outputs, scaled by T² (Hinton et al.)."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                    reduction="batchmean", log_target=True) * t * t


@register("scrub", ScrubConfig, touches=("forget", "retain"), summary="teacher–student max/min steps (SCRUB)")
def scrub(task: Task, cfg: ScrubConfig) -> None:
    teacher = task.original

    def max_step(model, batch, ctx):
        with torch.no_grad():
            target = teacher(batch.x)
        logits = model(batch.x)
        kl = distill_kl(logits, target, cfg.temperature)
        if cfg.kl_cap is not None:  # far enough from the teacher on this batch: no further ascent (no host read)
            return torch.where(kl.detach() > cfg.kl_cap, kl * 0.0, -kl), logits
        return -kl, logits

    def min_step(model, batch, ctx):
        with torch.no_grad():
            target = teacher(batch.x)
        logits = model(batch.x)
        loss = cfg.kl_weight * distill_kl(logits, target, cfg.temperature) + cfg.ce_weight * F.cross_entropy(
            logits, batch.y
        )
        return loss, logits

    phases = [
        Phase(task.forget_source(cfg.batch_size), max_step, "max", when=lambda epoch: epoch < cfg.max_epochs),
        Phase(task.retain_source(cfg.batch_size, per_epoch=task.retain_count(cfg.retain_per_forget)), min_step, "min"),
    ]
    calibrated_fit(task, cfg, phases)
