"""The method registry, the task a method receives, and :func:`unlearn`.

A method is a function ``run(task, config) -> nn.Module | None`` registered with a typed config dataclass
(its documented defaults), the data it touches and the request effects (remove, relabel, edit) it supports. It modifies
``task.model`` (a copy of the original) or returns a new model; everything else — copying, seeding,
device placement, the cost meter, re-applying pruning masks, validating overrides — happens here once.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

from .._util import resolve_device
from ..checkpoint import Checkpoint
from ..data import Augment, Dataset, Source, augment_for
from ..errors import UnlearnKitError
from ..masks import enforce_prune_masks
from ..options import BIG, build, declare, option, options_of  # noqa: F401  (BIG, option: for method modules)
from ..recipes import default_recipe
from ..requests import EFFECTS, Request, build_request
from ..training import (
    IGNORE,
    Accel,
    Cost,
    FitReport,
    Phase,
    StopTraining,
    TrainConfig,
    accuracy,
    fit,
    metered,
    predict_logits,
)


@dataclass
class MethodInfo:
    name: str
    run: Callable[["Task", Any], nn.Module | None]
    config: type
    touches: tuple[str, ...]  # "forget", "retain", "corrected", "all" (data the method reads)
    effects: tuple[str, ...]  # the request effects it supports: remove, relabel, edit (requests.EFFECTS)
    summary: str
    exact: bool = False
    uses: tuple[str, ...] = ()  # methods it runs at their own defaults: their options belong to its record

    def describe(self) -> dict:
        return {
            "summary": self.summary,
            "touches": list(self.touches),
            "request_effects": list(self.effects),
            "exact": self.exact,
            "config": {
                name: {"default": list(d.default) if isinstance(d.default, tuple) else d.default, "type": d.type.name,
                       "allowed": d.allowed(), "help": d.help}
                for name, d in options_of(self.config).items()
            },
        }


METHODS: dict[str, MethodInfo] = {}


def register(name: str, config: type, *, touches: tuple[str, ...], summary: str,
             effects: tuple[str, ...] = EFFECTS, exact: bool = False, uses: tuple[str, ...] = ()):
    def decorate(run):
        declare("method", name, config)  # refuses a field without a supported type or with a default out of range
        METHODS[name] = MethodInfo(name, run, config, touches, tuple(effects), summary, exact, tuple(uses))
        return run

    return decorate


def recorded_config(info: MethodInfo, config: Any) -> dict:
    """The config a result and a bench record store: the method's options and, under ``uses:NAME``, those of every
    method it runs at their defaults, so that a changed default there makes its records stale too."""
    recorded = dataclasses.asdict(config)
    for name in info.uses:
        recorded[f"uses:{name}"] = recorded_config(METHODS[name], make_config(METHODS[name], {}))
    return recorded


def make_config(info: MethodInfo, overrides: dict[str, Any]) -> Any:
    """Build a method's config from user values: unknown names, wrong types and out-of-range values are refused
    with one line naming the option, its type and its allowed range (see :mod:`unlearnkit.options`)."""
    return build(info.config, overrides, owner=info.name)


@dataclass
class Task:
    """Everything a method may use. ``model`` is a private copy of the original, safe to modify."""

    model: nn.Module
    original: nn.Module  # frozen copy of the original weights (teacher / reference)
    data: Dataset
    request: Request
    x: torch.Tensor  # training images as the original model saw them
    y: torch.Tensor  # training labels as the original model saw them
    device: torch.device
    seed: int
    recipe: TrainConfig  # the original's training recipe
    model_name: str | None = None
    model_args: dict | None = None
    original_test_acc: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)  # what the method wants recorded with its result
    accel: Accel = field(default_factory=Accel)  # precision, compile, cuDNN/TF32 (the loop's device settings)
    resolved: dict[str, Any] = field(default_factory=dict)  # the values relative defaults resolved to (recorded)

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)

    @property
    def augment(self) -> Augment:
        return augment_for(self.data) if self.recipe.augment else Augment()

    @property
    def n_forget(self) -> int:
        return int(self.request.forget.numel())

    def forget_source(self, batch_size: int, *, labels: torch.Tensor | None = None, shuffle: bool = True,
                      augment: bool = False) -> Source:
        """The forget set as trained (``labels`` replaces the labels of the whole training set if given)."""
        return Source(self.x, self.y if labels is None else labels, self.request.forget, batch_size=batch_size,
                      shuffle=shuffle, augment=self.augment if augment else None, name="forget")

    def retain_source(self, batch_size: int, *, per_epoch: int | None = None, augment: bool = False,
                      shuffle: bool = True) -> Source:
        """The retain set; with ``per_epoch``, a fresh random ``per_epoch`` of it each pass."""
        retain = self.request.retain
        aug = self.augment if augment else None
        if per_epoch is not None and per_epoch < retain.numel():
            return Source(self.x, self.y, retain[:0], batch_size=batch_size, augment=aug,
                          sample_from=retain, sample_size=per_epoch, name="retain")
        return Source(self.x, self.y, retain, batch_size=batch_size, shuffle=shuffle, augment=aug, name="retain")

    def samples(self, ids: torch.Tensor, batch_size: int = 256, *, shuffle: bool = False, corrected: bool = False,
                name: str = "samples") -> Source:
        """Training samples by id, as the original saw them or (``corrected``) with D_f corrected; in ``ids``
        order unless shuffled. Curvature estimates and one-shot updates read data through this."""
        x, y = self.corrected_data if corrected else (self.x, self.y)
        return Source(x, y, ids, batch_size=batch_size, shuffle=shuffle, name=name)

    @functools.cached_property
    def corrected_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training set with the forget samples corrected (relabel/edit requests), built once per task."""
        return self.request.corrected_data(self.data)

    def random_ids(self, pool: torch.Tensor, count: int | None) -> torch.Tensor:
        """A seeded random subset of ``pool`` of at most ``count`` ids (all of it when None), in sorted order."""
        if count is None or count >= pool.numel():
            return pool
        return torch.sort(pool[torch.randperm(pool.numel(), generator=self.generator)[:count]]).values

    def retain_count(self, per_forget: float | None) -> int | None:
        """How many retain samples a pass uses when a method asks for ``per_forget`` × |D_f| of them (declared
        ``gt=0``, so validated with the method's options)."""
        return None if per_forget is None else max(1, int(round(per_forget * self.n_forget)))

    def retain_pass(self, per_forget: float | None) -> int:
        """Retain samples one pass reads when a method asks for ``per_forget`` × |D_f| of them (None: all of D_r)."""
        count = self.retain_count(per_forget)
        retain = int(self.request.retain.numel())
        return retain if count is None else min(count, retain)

    def fit(self, phases: list[Phase] | Phase, config: TrainConfig, **kwargs) -> FitReport:
        kwargs.setdefault("seed", self.seed)
        kwargs.setdefault("accel", self.accel)
        report = fit(self.model, phases, config, device=self.device, **kwargs)
        self.notes.setdefault("history", []).extend(report.history)
        if report.stopped_early:
            self.notes["stopped_early"] = report.stopped_early
        if report.diverged:
            self.notes["diverged"] = True
        return report

    @functools.cached_property
    def forget_targets(self) -> torch.Tensor:
        """The training labels as trained, except that in D_f only what the request's correction changes is
        scored where it keeps the rest of a sample (see :func:`forget_targets`)."""
        return forget_targets(self.request, self.y)

    def forget_accuracy(self, model: nn.Module, limit: int | None = None) -> float:
        """Accuracy on D_f's :attr:`forget_targets`."""
        ids = self.request.forget if limit is None else self.request.forget[:limit]
        return accuracy(predict_logits(model, self.x[ids], device=self.device), self.forget_targets[ids])

    def retain_accuracy(self, model: nn.Module, limit: int | None = None) -> float:
        """Accuracy on D_r, or on :func:`retain_sample`'s fixed ``limit`` of it (the same ids on every call)."""
        ids = retain_sample(self.request.retain, limit)
        return accuracy(predict_logits(model, self.x[ids], device=self.device), self.y[ids])


def retain_sample(retain: torch.Tensor, count: int | None, seed: int = 0) -> torch.Tensor:
    """A fixed random ``count`` of the ``retain`` ids (all of them when None or fewer), in sorted order, drawn by its
    own generator (the task's stays untouched). A smaller count of the same seed is a subset of a larger one's."""
    if count is None or count >= retain.numel():
        return retain
    pick = torch.randperm(retain.numel(), generator=torch.Generator().manual_seed(seed))[:count]
    return torch.sort(retain[pick]).values


def forget_targets(request: Request, y: torch.Tensor) -> torch.Tensor:
    """``y`` (the training labels as trained), except that in D_f only what the request's correction changes is
    scored where it keeps the rest of a sample: of a sequence edited by a ``secret:`` request, the secret's
    characters (the others are ``IGNORE``d; the sequence stays in the corpus). Every other request forgets all of
    D_f's labels, so this is ``y``."""
    r = request
    if r.trained_y is None or r.corrected_y is None or r.trained_y.ndim < 2:
        return y
    y = y.clone()
    y[r.forget] = torch.where(r.trained_y != r.corrected_y, r.trained_y, torch.full_like(r.trained_y, IGNORE))
    return y


def forget_retain_accuracy(model: nn.Module, request: Request, data: Dataset, *, retain_samples: int = 2048,
                           seed: int = 0, device: str | torch.device | None = "auto") -> dict[str, float]:
    """A cheap check of what an unlearning did: accuracy (%) on D_f (its :func:`forget_targets`, as trained) and on a
    seeded random ``retain_samples`` of D_r (all of it when smaller). One forward pass over |D_f| + the sample."""
    x, y = request.training_data(data)
    targets = forget_targets(request, y)
    retain = retain_sample(request.retain, retain_samples, seed)
    device = resolve_device(device)
    forget = request.forget
    return {
        "forget_acc": accuracy(predict_logits(model, x[forget], device=device), targets[forget])
        if forget.numel() else float("nan"),
        "retain_acc": accuracy(predict_logits(model, x[retain], device=device), y[retain])
        if retain.numel() else float("nan"),
        "forget_samples": int(forget.numel()), "retain_samples": int(retain.numel()),
    }


@dataclass
class Unlearned:
    model: nn.Module
    method: str
    config: dict
    cost: Cost
    notes: dict
    resolved: dict = field(default_factory=dict)  # what the relative defaults resolved to on this model and data

    def to_dict(self) -> dict:
        return {"method": self.method, "config": self.config, "resolved": self.resolved, "cost": self.cost.to_dict(),
                **{k: v for k, v in self.notes.items() if k != "history"}}


def unlearn(
    model: nn.Module | Checkpoint,
    request: str | Request | None = None,
    data: Dataset | None = None,
    method: str = "l1_sparse",
    *,
    seed: int = 0,
    device: str | torch.device | None = "auto",
    recipe: TrainConfig | None = None,
    model_name: str | None = None,
    model_args: dict | None = None,
    original_test_acc: float | None = None,
    accel: Accel | None = None,
    **overrides: Any,
) -> Unlearned:
    """Unlearn ``request`` from ``model`` with ``method``; returns the new model and its cost.

    ``model`` may be a :class:`~unlearnkit.checkpoint.Checkpoint`, which supplies the data set, the recorded
    request, the architecture (needed by ``retrain``) and the training recipe. ``overrides`` set the method's
    options (see ``unlearnkit info``). The original model is never modified. ``accel`` sets the training loop's
    device settings (:class:`~unlearnkit.training.Accel`); non-default ones are recorded in the notes.
    """
    if method not in METHODS:
        raise UnlearnKitError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    info = METHODS[method]
    config = make_config(info, overrides)  # before anything is loaded, copied or computed
    if isinstance(model, Checkpoint):
        manifest = model.manifest
        data = data if data is not None else model.dataset()
        request = request if request is not None else model.request(data)
        model_name = model_name or manifest["model"]["name"]
        model_args = model_args or manifest["model"]["args"]
        recipe = recipe or (TrainConfig.from_dict(manifest["train"]) if manifest.get("train") else None)
        if original_test_acc is None:
            original_test_acc = (manifest.get("metrics") or {}).get("test_acc")
        model = model.model
    if data is None:
        raise UnlearnKitError("unlearn needs the data set (or a checkpoint that names it)")
    if request is None:
        raise UnlearnKitError("unlearn needs a request (e.g. random:0.1), or a checkpoint that recorded one")
    if isinstance(request, str):
        request = build_request(request, data, seed)
    if request.effect not in info.effects:
        raise UnlearnKitError(f"method {method!r} handles {', '.join(info.effects)} requests, not {request.effect} "
                              f"({request.spec})")
    device = resolve_device(device)
    x, y = request.training_data(data)
    working = copy.deepcopy(model).to(device)
    original = copy.deepcopy(model).to(device).eval()
    for p in original.parameters():
        p.requires_grad_(False)
    task = Task(working, original, data, request, x, y, device, seed,
                recipe or default_recipe(data.name), model_name, model_args, original_test_acc, accel=accel or Accel())
    if task.accel.changed():
        task.notes["accel"] = task.accel.changed()
    with metered() as cost:
        result = info.run(task, config)
        result = task.model if result is None else result
        enforce_prune_masks(result)
    result.eval()
    return Unlearned(result, method, recorded_config(info, config), cost, task.notes, task.resolved)


# The learning rate a relative default is a multiple of when the original was trained with Adam (an SGD rate
# scaled from an Adam rate means nothing): the SGD rate of the Fashion-MNIST recipe the defaults were chosen on.
REFERENCE_SGD_LR = 0.05


def retrain_work(task: "Task") -> int:
    """Retrain's sample passes under the original's recipe: its epochs × the samples it trains on (D_r, or every
    training sample when the request corrects D_f instead of removing it)."""
    trained_on = task.request.retain.numel() if task.request.effect == "remove" else task.data.n_train
    return max(1, task.recipe.epochs * int(trained_on))


@dataclass
class SGDOptions:
    """Optimiser options every iterative method shares; a method redeclares a field to change its default.

    Relative defaults (``docs/methods.md``): ``epochs`` null means as many passes as ``budget`` — a fraction of
    Retrain's sample passes (the original recipe's epochs × |D_r|) — buys at :meth:`epoch_samples` per pass, and
    ``lr`` null means ``lr_scale`` × the original recipe's learning rate. Each method's ``budget`` and ``lr_scale``
    resolve to its former absolute default on the Fashion-MNIST recipe it was tuned on; an explicit ``epochs`` or
    ``lr`` wins. The values used are recorded (:attr:`Task.resolved`, ``Unlearned.resolved``)."""

    epochs: int | None = option(None, "passes (null: as many as `budget` allows)", ge=0, le=10_000)
    budget: float = option(0.045, "epochs=null: work as a fraction of Retrain's sample passes (the original recipe's "
                                  "epochs × |D_r|)", gt=0, le=100)
    lr: float | None = option(None, "learning rate (null: lr_scale × the original recipe's)", gt=0, le=10)
    lr_scale: float = option(1.0, "lr=null: the learning rate as a multiple of the original recipe's (of 0.05 for an "
                                  "Adam recipe)", gt=0, le=1000)
    batch_size: int = option(128, "batch size", ge=1, le=65_536)
    momentum: float = option(0.9, "SGD momentum", ge=0, lt=1)
    weight_decay: float = option(5e-4, "weight decay", ge=0, le=1)
    schedule: typing.Literal["constant", "cosine", "linear"] = option("constant", "learning-rate schedule over the run")

    def epoch_samples(self, task: "Task") -> int:
        """Sample passes (forward and backward) of one epoch of this method; the budget divides by it."""
        return task.n_forget

    def resolve(self, task: "Task") -> dict[str, Any]:
        """The epochs and learning rate this run uses (explicit values as given, null ones from the relative
        defaults), recorded in ``task.resolved``."""
        if self.epochs is not None:
            epochs = self.epochs
        else:
            per_epoch = max(1, self.epoch_samples(task))
            epochs = min(10_000, max(1, math.floor(self.budget * retrain_work(task) / per_epoch + 0.5)))
        if self.lr is not None:
            lr = self.lr
        else:
            base = task.recipe.lr if task.recipe.optimizer == "sgd" else REFERENCE_SGD_LR
            lr = min(10.0, self.lr_scale * base)
        lr = _round(lr)
        task.resolved.update(epochs=epochs, lr=lr)
        return {"epochs": epochs, "lr": lr}

    def train_config(self, task: "Task") -> TrainConfig:
        """The loop's recipe for this method (no augmentation: unlearning steps see the samples as trained)."""
        r = self.resolve(task)
        return TrainConfig(epochs=r["epochs"], lr=r["lr"], batch_size=self.batch_size, momentum=self.momentum,
                           weight_decay=self.weight_decay, schedule=self.schedule, augment=False)


def forget_floor(task: "Task", target: float | None = -1.0) -> float | None:
    """The forget accuracy (%) a retrained model would score, which guards and calibration aim at: ``target`` when
    given (None: no floor), else 0 for class requests and the original's test accuracy for sample requests (None when
    it is unknown)."""
    if target is None or target >= 0:
        return target
    if task.request.classes:
        return 0.0
    return task.original_test_acc


@dataclass
class Guarded:
    """The forget-accuracy guard of methods whose objective alone would not stop (``docs/methods.md``): every
    ``check_every`` steps the accuracy on a fixed probe of D_f is measured, and the run stops once it falls to
    ``target_forget_acc`` (auto: :func:`forget_floor`, what a retrained model would score)."""

    target_forget_acc: float | None = option(
        -1.0, "stop once forget accuracy (%) falls to this; -1: auto (see module doc); None: never", ge=-1, le=100
    )
    check_every: int = option(5, "steps between guard checks", ge=1, le=BIG)
    probe_size: int = option(512, "forget samples the guard measures", ge=1, le=BIG)


def forget_guard(task: "Task", floor: float | None, probe_size: int, every: int) -> Callable[[nn.Module, Any], None]:
    """The guard's check, called at the top of a method's loss: at every ``every``-th step after the first it measures
    the forget accuracy on the probe (in eval mode) and raises :class:`StopTraining` once it is at or below ``floor``
    (None: never)."""

    def check(model: nn.Module, ctx: Any) -> None:
        if floor is None or ctx.step == 0 or ctx.step % every:
            return
        model.eval()
        acc = task.forget_accuracy(model, limit=probe_size) if task.request.forget.numel() else 0.0
        model.train()
        if acc <= floor:
            raise StopTraining(f"forget accuracy {acc:.1f} % reached the floor {floor:.1f} % at step {ctx.step}")

    return check


@dataclass
class Calibrated:
    """The calibration step of methods that read D_f (``docs/methods.md``): after the planned epochs, while the
    forget accuracy on a probe has not moved half of the way from the original's to :func:`forget_floor`, one more
    epoch runs at twice the previous learning rate, until it has or ``max_budget`` of Retrain's sample passes is
    spent. Where the planned run forgets (every committed Fashion-MNIST run of these methods did) it only adds the
    probe's forward passes."""

    calibrate: bool | None = option(
        None, "after the planned epochs, while forget accuracy has not moved half-way to a retrained model's, train "
              "on within max_budget (docs/methods.md: one more epoch at twice the rate; methods that train on D_r "
              "alone: smaller batches, then a repair) (null: when neither epochs nor lr is given)")
    max_budget: float = option(0.1, "calibrate: the most work in all, as a fraction of Retrain's sample passes",
                               gt=0, le=100)
    probe_size: int = option(512, "forget samples the calibration (and any guard) measures; for fine-tune and "
                                  "l1-sparse also the retain samples it checks", ge=1, le=BIG)


def halfway_goal(task: "Task", floor: float, probe_size: int) -> float:
    """The forget accuracy (%) both calibrations aim at: half-way from the original's, on the first ``probe_size``
    forget samples, to ``floor`` (:func:`forget_floor`)."""
    start = task.forget_accuracy(task.original, limit=probe_size)
    return start - (start - floor) / 2


def _calibration_goal(task: "Task", cfg: Any, config: TrainConfig, report: Any) -> float | None:
    """What a calibrated run's probe must reach (:func:`halfway_goal`), or None when its calibration does not run:
    turned off, or by default because ``epochs`` or ``lr`` was given; the planned run stopped early or was empty; no
    floor."""
    calibrate = cfg.calibrate if cfg.calibrate is not None else (cfg.epochs is None and cfg.lr is None)
    floor = forget_floor(task)
    if not calibrate or report.stopped_early or floor is None or config.epochs == 0:
        return None
    return halfway_goal(task, floor, cfg.probe_size)


def calibrated_fit(task: "Task", cfg: Any, phases: list[Phase] | Phase, **kwargs) -> None:
    """``task.fit`` with ``cfg``'s resolved recipe, then the calibration of :class:`Calibrated` (recorded in
    ``task.resolved``: the extra epochs and the last learning rate)."""
    config = cfg.train_config(task)
    report = task.fit(phases, config, **kwargs)
    goal = _calibration_goal(task, cfg, config, report)
    if goal is None:
        return
    per_epoch = max(1, cfg.epoch_samples(task))
    spent, cap = config.epochs * per_epoch, cfg.max_budget * retrain_work(task)
    extra, lr = 0, config.lr
    while task.forget_accuracy(task.model, limit=cfg.probe_size) > goal and spent + per_epoch <= cap:
        extra, lr = extra + 1, min(10.0, 2 * lr)
        report = task.fit(phases, config.replace(epochs=1, lr=lr, schedule="constant"), **kwargs,
                          seed=task.seed + extra)
        spent += per_epoch
        if report.stopped_early:
            break
    task.resolved.update(calibration_epochs=extra, calibration_lr=_round(lr) if extra else None)


@dataclass
class RetainCalibrated(Calibrated):
    """The calibration of methods that train on D_r alone (fine-tune, ℓ1-sparse; ``docs/methods.md``). A model that
    fits D_r with a loss near zero gives them almost no gradient, so a class they should remove stays. For a class
    removal whose planned run has not moved the forget accuracy on the probe half of the way to 0, rungs of
    ``rung_epochs`` epochs at the planned rate run from where it stopped, each in batches half the size of the last
    (from half of ``batch_size`` down to ``min_batch_size``), until the probe has moved: more and noisier steps, at the
    same rate and on the same data, knock the model off the minimum in which it still predicts the class. A rung that
    leaves the accuracy on a fixed sample of D_r (``probe_size``) below half of the way from the planned model's to
    chance is undone and ends the ladder. The rest of ``max_budget`` then re-fits D_r at the planned batch size and
    schedule (the repair). Sample removals are not calibrated: their forget accuracy starts within a few points of a
    retrained model's."""

    min_batch_size: int = option(8, "calibrate: the smallest batch of the small-batch rungs", ge=1, le=65_536)
    rung_epochs: int = option(2, "calibrate: epochs per small-batch rung", ge=1, le=BIG)


def retain_calibrated_fit(task: "Task", cfg: Any, phases: Callable[[int], list[Phase] | Phase], **kwargs) -> None:
    """``task.fit`` of ``phases(batch_size)`` with ``cfg``'s resolved recipe, then the calibration of
    :class:`RetainCalibrated`, recorded in ``task.resolved``: the kept rungs' batch sizes, an undone rung's (or
    None) and the epochs the calibration added, the undone rung's and the repair's included."""
    config = cfg.train_config(task)
    report = task.fit(phases(cfg.batch_size), config, **kwargs)
    if task.request.effect != "remove" or not task.request.classes or not task.n_forget:
        return
    goal = _calibration_goal(task, cfg, config, report)
    if goal is None:
        return
    per_epoch = max(1, cfg.epoch_samples(task))
    left = math.floor((cfg.max_budget * retrain_work(task) - config.epochs * per_epoch) / per_epoch)
    chance = 100.0 / max(1, task.data.num_classes)
    keep = task.retain_accuracy(task.model, limit=cfg.probe_size)
    keep = keep - (keep - chance) / 2
    batches, undone, batch = [], None, cfg.batch_size // 2
    while batch >= cfg.min_batch_size and left >= cfg.rung_epochs and \
            task.forget_accuracy(task.model, limit=cfg.probe_size) > goal:
        saved = {k: v.clone() for k, v in task.model.state_dict().items()}
        task.fit(phases(batch), config.replace(epochs=cfg.rung_epochs, batch_size=batch, schedule="constant"), **kwargs,
                 seed=task.seed + len(batches) + 1)
        left -= cfg.rung_epochs
        if task.retain_accuracy(task.model, limit=cfg.probe_size) < keep:
            task.model.load_state_dict(saved)
            undone = batch
            break
        batches.append(batch)
        batch //= 2
    repair = left if batches else 0
    if repair:
        task.fit(phases(cfg.batch_size), config.replace(epochs=repair), **kwargs, seed=task.seed + len(batches) + 2)
    added = cfg.rung_epochs * (len(batches) + (undone is not None)) + repair
    task.resolved.update(calibration_batches=batches, calibration_undone=undone, calibration_epochs=added)


@dataclass
class ScaleCalibrated:
    """The calibration of methods whose strength is one scale — a one-shot step's size, a perturbation's noise level
    (``docs/methods.md``): for a removal, while the forget accuracy on a probe has not moved half of the way from the
    original's to :func:`forget_floor`, the scale doubles, up to ``max_scale`` times the configured one. A one-shot
    step pays one forward pass over the probe per doubling; a method that repairs after its perturbation pays the
    repair again, within its budget. Corrections (relabel, edit) are not calibrated: what a retrained model scores on
    their labels as trained is not known."""

    calibrate: bool = option(True, "removals: while forget accuracy has not moved half-way to a retrained model's, "
                                   "double the step (or noise), up to max_scale times the configured one")
    max_scale: float = option(1024.0, "calibrate: the largest multiple of the configured step (or noise)", ge=1,
                              le=BIG)
    probe_size: int = option(512, "forget samples the calibration measures", ge=1, le=BIG)


def calibrate_scale(task: "Task", cfg: Any, attempt: Callable[[float], None], max_scale: float | None = None) -> None:
    """``attempt(1)``, then the doubling of :class:`ScaleCalibrated`: ``attempt(s)`` must leave the model as the
    method's result at ``s`` × its configured strength. ``max_scale`` (when given) lowers ``cfg.max_scale``, e.g. to
    what a repair budget allows. The scale used is recorded in ``task.resolved`` (``calibration_scale``)."""
    attempt(1.0)
    floor = forget_floor(task)
    if not cfg.calibrate or task.request.effect != "remove" or floor is None or not task.n_forget:
        return
    goal = halfway_goal(task, floor, cfg.probe_size)
    limit = cfg.max_scale if max_scale is None else min(cfg.max_scale, max_scale)
    scale = 1.0
    while 2 * scale <= limit and task.forget_accuracy(task.model, limit=cfg.probe_size) > goal:
        scale *= 2
        attempt(scale)
    task.resolved.update(calibration_scale=scale)


def calibrated_step(task: "Task", cfg: ScaleCalibrated, step: dict[str, torch.Tensor], factor: float) -> None:
    """θ += factor · step, a one-shot update, scaled by :func:`calibrate_scale` (each doubling adds what the last scale
    added); the whole update's norm goes in the notes (``step_norm``)."""
    applied = [0.0]

    def attempt(scale: float) -> None:
        with torch.no_grad():
            for name, param in task.model.named_parameters():
                param.add_(step[name].to(param.dtype), alpha=factor * (scale - applied[0]))
        applied[0] = scale

    calibrate_scale(task, cfg, attempt)
    norm = float(torch.sqrt(sum(s.double().pow(2).sum() for s in step.values())))
    task.notes["step_norm"] = abs(factor) * applied[0] * norm


def _round(value: float) -> float:
    return float(f"{value:.12g}")


def random_wrong_labels(
    y: torch.Tensor, ids: torch.Tensor, num_classes: int, generator: torch.Generator
) -> torch.Tensor:
    """A copy of ``y`` whose entries at ``ids`` are uniformly random *other* classes (never the true one)."""
    out = y.clone()
    shift = torch.randint(1, num_classes, (ids.numel(),), generator=generator)
    out[ids] = (y[ids] + shift) % num_classes
    return out
