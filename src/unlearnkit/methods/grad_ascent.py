"""Gradient ascent (GA): maximise the cross-entropy on the forget set (for a ``secret:`` request, on the secrets'
characters only: :attr:`Task.forget_targets`).

Unbounded ascent destroys the model, so a guard stops it: every ``check_every`` steps the accuracy on a
fixed probe of the forget set is measured, and ascent stops once it falls to ``target_forget_acc``. Its
default ("auto") is what a retrained model would score: the original's test accuracy for sample requests
(a retrained model sees the forget set as unseen data), 0 for class requests.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..training import Phase, StopTraining, mean_cross_entropy
from .base import BIG, SGDOptions, Task, option, register


@dataclass
class GradAscentConfig(SGDOptions):
    epochs: int = option(1, "passes over the forget set (at most)", ge=0, le=10_000)
    lr: float = option(2e-3, "SGD learning rate", gt=0, le=10)
    weight_decay: float = option(0.0, "weight decay (none: it would only shrink weights during ascent)", ge=0, le=1)
    target_forget_acc: float | None = option(
        -1.0, "stop once forget accuracy (%) falls to this; -1: auto (see module doc); None: never", ge=-1, le=100
    )
    check_every: int = option(5, "steps between guard checks", ge=1, le=BIG)
    probe_size: int = option(512, "forget samples the guard measures", ge=1, le=BIG)


def forget_floor(task: Task, target: float | None) -> float | None:
    if target is None or target >= 0:
        return target
    if task.request.classes:
        return 0.0
    return task.original_test_acc


@register("grad_ascent", GradAscentConfig, touches=("forget",), effects=("remove", "relabel", "edit"),
          summary="gradient ascent on the forget set, stopped by a forget-accuracy guard (GA)")
def grad_ascent(task: Task, cfg: GradAscentConfig) -> None:
    floor = forget_floor(task, cfg.target_forget_acc)
    probe = task.request.forget[: cfg.probe_size]

    def ascent(model, batch, ctx):
        if floor is not None and ctx.step % cfg.check_every == 0 and ctx.step > 0:
            model.eval()
            acc = task.forget_accuracy(model, limit=cfg.probe_size) if probe.numel() else 0.0
            model.train()
            if acc <= floor:
                raise StopTraining(f"forget accuracy {acc:.1f} % reached the floor {floor:.1f} % at step {ctx.step}")
        logits = model(batch.x)
        return -mean_cross_entropy(logits, batch.y), logits

    # On D_f's forget targets: a secret's characters, not the rest of the sequence that holds it.
    task.fit(Phase(task.forget_source(cfg.batch_size, labels=task.forget_targets), ascent, "forget"),
             cfg.train_config())
