"""ℓ1-sparse unlearning (Jia et al., *Model Sparsity Can Simplify Machine Unlearning*, NeurIPS 2023): fine-tune on the
retain set with an ℓ1
penalty on all parameters, α_t·‖θ‖₁, whose coefficient decays linearly per epoch, α_t = α·(1 − t/T) for
epoch t = 0..T−1 (ending at α/T). Sparsity pushes the model towards the sparse regime in which
approximate unlearning is closer to exact. Calibrated as fine-tuning is (:class:`~.base.RetainCalibrated`); each rung
and the repair decay α again over their own epochs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..training import Phase
from .base import BIG, RetainCalibrated, SGDOptions, Task, option, register, retain_calibrated_fit


@dataclass
class L1SparseConfig(RetainCalibrated, SGDOptions):
    budget: float = option(0.045, "epochs=null: work as a fraction of Retrain's sample passes", gt=0, le=100)
    lr_scale: float = option(2.0, "lr=null: the learning rate as a multiple of the original recipe's", gt=0, le=1000)
    schedule: Literal["constant", "cosine", "linear"] = option("cosine", "learning-rate schedule over the run")
    alpha: float = option(2e-4, "initial ℓ1 coefficient α (on the sum of |θ| over all parameters)", ge=0, le=1)
    retain_per_forget: float | None = option(
        1.0, "retain samples per epoch, as a multiple of |D_f| (None: all of D_r)", gt=0, le=BIG
    )

    def epoch_samples(self, task: Task) -> int:
        return task.retain_pass(self.retain_per_forget)


@register(
    "l1_sparse",
    L1SparseConfig,
    touches=("retain",),
    summary="fine-tune on D_r with a linearly decaying ℓ1 penalty (Jia et al., NeurIPS 2023)",
)
def l1_sparse(task: Task, cfg: L1SparseConfig) -> None:
    def l1_penalty(model, ctx):
        alpha_t = cfg.alpha * (1.0 - ctx.epoch / ctx.epochs)
        return alpha_t * sum(p.abs().sum() for p in model.parameters())

    per_epoch = task.retain_count(cfg.retain_per_forget)
    retain_calibrated_fit(task, cfg, lambda batch: Phase(task.retain_source(batch, per_epoch=per_epoch), name="retain"),
                          regularizer=l1_penalty)
