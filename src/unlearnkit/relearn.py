"""The relearning attack: is the forgotten data removed, or only hidden?

A model that has truly never seen D_f needs as much fine-tuning to reach the original's accuracy on D_f as a
retrained one does; a model whose unlearning only suppressed D_f's outputs (the weights still hold it) is back
after a few steps (Lynch et al. 2024; Hu et al. 2024, "Jogging the memory of unlearned models"). So:

1. a seeded ``fraction`` of D_f (at least one sample) is the **relearning set** S; the rest of D_f, H (all of
   D_f when S is all of it), is where recovery is measured (so fine-tuning on S must bring back samples it never
   touches), on at most ``probe_size`` of its samples;
2. the target is the *original* model's accuracy on H minus ``tolerance`` points;
3. a copy of the model is fine-tuned on S (labels as trained; SGD at ``lr``, no weight decay, batches of
   ``batch_size`` cycling through S in a seeded order) by the one training loop, and H's accuracy is measured
   before the first step and every ``check_every`` steps; the attack stops when the target is reached or after
   ``max_steps`` steps;
4. the **control** runs the same fine-tuning on as many samples drawn from D_r: what fine-tuning on *other* data
   does to D_f's accuracy (for a class request, nothing; for a random request it shows how much of the recovery is
   plain generalisation).

Reported: the steps and samples to recovery (None when the cap was reached), H's accuracy at the start and end,
and the accuracy curve. Run it on the unlearned model and on Retrain's: a method that recovers in far fewer steps
than Retrain has hidden the data, not removed it. Deterministic for a seed (tested).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from ._util import resolve_device
from .data import Dataset, Source
from .options import check_fields, option
from .requests import Request
from .training import Phase, StopTraining, TrainConfig, accuracy, fit, mean_cross_entropy, predict_logits


@dataclass
class RelearnConfig:
    """How the relearning attack fine-tunes (see the module doc). Validated when built; the command line sets
    fraction, max_steps, lr and tolerance through ``audit --relearn-*`` (declared flags)."""

    fraction: float = option(0.1, "share of D_f the attacker fine-tunes on (at least one sample)", gt=0, le=1)
    lr: float = option(0.01, "SGD learning rate of the attack (momentum 0.9, no weight decay)", gt=0, le=10)
    batch_size: int = option(32, "samples per step", ge=1, le=65_536)
    max_steps: int = option(200, "step cap: the attack gives up after this many steps", ge=1, le=1_000_000)
    check_every: int = option(5, "steps between accuracy checks on the held-out forget samples", ge=1, le=1_000_000)
    tolerance: float = option(
        2.0, "recovered when the held-out forget accuracy is within this many points of the original's", ge=0, le=100)
    probe_size: int = option(1000, "held-out forget samples whose accuracy is measured", ge=1, le=10**8)

    def __post_init__(self) -> None:
        check_fields(self, owner="the relearning attack")



@dataclass
class RelearnResult:
    steps: int | None  # steps to recovery (None: not within max_steps)
    samples: int | None  # samples fine-tuned on until recovery
    recovered: bool
    start_acc: float  # held-out forget accuracy before the attack
    final_acc: float
    target_acc: float  # the original's held-out forget accuracy minus the tolerance
    relearn_samples: int  # |S|
    curve: list[tuple[int, float]]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["curve"] = [list(point) for point in self.curve]
        return out


def relearn_split(request: Request, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, H): a seeded ``fraction`` of D_f to fine-tune on and the rest to measure (all of D_f if nothing is left)."""
    forget = request.forget
    count = max(1, int(round(fraction * forget.numel())))
    order = torch.randperm(forget.numel(), generator=torch.Generator().manual_seed(seed))
    relearn = torch.sort(forget[order[:count]]).values
    held = torch.sort(forget[order[count:]]).values
    return relearn, (held if held.numel() else forget)


def relearning_attack(model: nn.Module, original: nn.Module, data: Dataset, request: Request,
                      config: RelearnConfig | None = None, *, control: bool = False, seed: int = 0,
                      device=None) -> RelearnResult:
    """Fine-tune a copy of ``model`` on a seeded part of D_f (``control``: on as many retained samples) until its
    accuracy on the rest of D_f is within ``tolerance`` of ``original``'s; see the module doc."""
    config = config or RelearnConfig()
    device = resolve_device(device if device is not None else "auto")
    x, y = request.training_data(data)
    relearn, held = relearn_split(request, config.fraction, seed)
    probe = held[: config.probe_size]
    if control:
        retain = request.retain
        pick = torch.randperm(retain.numel(), generator=torch.Generator().manual_seed(seed + 1))[: relearn.numel()]
        relearn = torch.sort(retain[pick]).values

    def probe_acc(m: nn.Module) -> float:
        return accuracy(predict_logits(m, x[probe], device=device), y[probe])

    target = probe_acc(original) - config.tolerance
    attacked = copy.deepcopy(model).to(device)
    for p in attacked.parameters():
        p.requires_grad_(True)
    curve: list[tuple[int, float]] = []
    reached: list[int] = []

    def check(m: nn.Module, step: int) -> None:
        was_training = m.training
        m.eval()
        acc = probe_acc(m)
        m.train(was_training)
        curve.append((step, round(acc, 3)))
        if acc >= target:
            reached.append(step)
            raise StopTraining(f"recovered at step {step}")
        if step >= config.max_steps:
            raise StopTraining(f"not recovered within {config.max_steps} steps")

    def loss(m: nn.Module, batch, ctx):
        if ctx.step % config.check_every == 0 or ctx.step >= config.max_steps:
            check(m, ctx.step)
        logits = m(batch.x)
        return mean_cross_entropy(logits, batch.y), logits

    batches = math.ceil(relearn.numel() / config.batch_size)
    epochs = math.ceil((config.max_steps + 1) / batches)  # one step more than the cap, for the last check
    source = Source(x, y, relearn, batch_size=config.batch_size, shuffle=True, name="relearn")
    recipe = TrainConfig(epochs=epochs, lr=config.lr, batch_size=config.batch_size, momentum=0.9, weight_decay=0.0,
                         schedule="constant", augment=False)
    try:
        fit(attacked, Phase(source, loss, "relearn"), recipe, seed=seed, device=device)
    except StopTraining:  # a check before the first step stops before the loop can catch it
        pass
    if not curve or (not reached and curve[-1][0] < config.max_steps):
        check_final = probe_acc(attacked.eval())
        curve.append((config.max_steps, round(check_final, 3)))
        if check_final >= target:
            reached.append(config.max_steps)
    steps = reached[0] if reached else None
    samples = None if steps is None else _samples_in(steps, relearn.numel(), config.batch_size)
    return RelearnResult(steps, samples, steps is not None, curve[0][1], curve[-1][1], round(target, 3),
                         int(relearn.numel()), curve)


def _samples_in(steps: int, pool: int, batch_size: int) -> int:
    """Samples seen in ``steps`` steps over epochs of ``pool`` samples in batches of ``batch_size``."""
    per_epoch = math.ceil(pool / batch_size)
    full, rest = divmod(steps, per_epoch)
    return full * pool + min(rest * batch_size, pool)
