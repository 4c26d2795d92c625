"""Gradient ascent (GA): maximise the cross-entropy on the forget set (for a ``secret:`` request, on the secrets'
characters only: :attr:`Task.forget_targets`).

Unbounded ascent destroys the model, so a guard stops it: every ``check_every`` steps the accuracy on a
fixed probe of the forget set is measured, and ascent stops once it falls to ``target_forget_acc``. Its
default ("auto") is what a retrained model would score: the original's test accuracy for sample requests
(a retrained model sees the forget set as unseen data), 0 for class requests.

Calibration (within the budget): the step size that reaches the floor depends on how confident the original is on
D_f — a model that fits D_f with a loss near zero has near-zero ascent gradients. So while the guard has not
stopped it, each new epoch multiplies the ascent's gradient by ``lr_growth`` (epoch e uses ``lr × lr_growth^e``); the
run ends at the floor or after ``budget`` of Retrain's sample passes. On the Fashion-MNIST recipe the guard stopped
every committed run within the first epoch (`benchmarks/results/fmnist-small`), where nothing is scaled; on the
scikit-learn digits MLP, whose forget loss is ~0, the constant rate moved the weights by ~1e-4 and forgot nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..training import Phase, mean_cross_entropy
from .base import BIG, Guarded, SGDOptions, Task, forget_floor, forget_guard, option, register


@dataclass
class GradAscentConfig(Guarded, SGDOptions):
    epochs: int | None = option(None, "passes over the forget set at most (null: as many as `budget` allows; the "
                                      "guard usually stops the run first)", ge=0, le=10_000)
    budget: float = option(0.05, "epochs=null: the most work, as a fraction of Retrain's sample passes", gt=0,
                           le=100)
    lr_scale: float = option(0.04, "lr=null: the learning rate as a multiple of the original recipe's", gt=0,
                             le=1000)
    lr_growth: float | None = option(
        None, "with a guard: each further epoch multiplies the ascent step by this (1: constant; null: 2 when lr is "
              "null, 1 when lr is given)", ge=1, le=1000)
    weight_decay: float = option(0.0, "weight decay (none: it would only shrink weights during ascent)", ge=0, le=1)
    check_every: int | None = option(
        None, "steps between guard checks (null: 5, or 1 when the step grows and an epoch has fewer than 10 steps)",
        ge=1, le=BIG)


@register("grad_ascent", GradAscentConfig, touches=("forget",), effects=("remove", "relabel", "edit"),
          summary="gradient ascent on the forget set, stopped by a forget-accuracy guard (GA)")
def grad_ascent(task: Task, cfg: GradAscentConfig) -> None:
    floor = forget_floor(task, cfg.target_forget_acc)
    config = cfg.train_config(task)
    growth = cfg.lr_growth if cfg.lr_growth is not None else (2.0 if cfg.lr is None else 1.0)
    growth = growth if floor is not None else 1.0  # unguarded ascent is never amplified
    check_every = cfg.check_every
    if check_every is None:  # a growing step may overshoot the floor within 5 short epochs: check every step then
        check_every = 1 if growth > 1 and math.ceil(task.n_forget / cfg.batch_size) < 10 else 5
    task.resolved.update(check_every=check_every, lr_growth=growth)
    guard = forget_guard(task, floor, cfg.probe_size, check_every)

    def ascent(model, batch, ctx):
        guard(model, ctx)
        logits = model(batch.x)
        scale = growth ** ctx.epoch
        if scale != 1.0:
            task.notes["ascent_scale"] = scale
        return -scale * mean_cross_entropy(logits, batch.y), logits

    # On D_f's forget targets: a secret's characters, not the rest of the sequence that holds it.
    task.fit(Phase(task.forget_source(cfg.batch_size, labels=task.forget_targets), ascent, "forget"), config)
