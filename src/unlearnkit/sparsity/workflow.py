"""Pruning as a step of a model's life: :func:`prune` (the entry point on a model), :func:`train_sparse`
(``train --prune``: prune at initialisation or by the lottery-ticket recipe while training) and
:func:`prune_checkpoint` (``unlearnkit prune``: prune a trained checkpoint, optionally fine-tune).

What each method means where:

=============  ===============================================  ===================================================
spec           ``train --prune``                                ``prune --checkpoint`` (a trained model)
=============  ===============================================  ===================================================
``omp:s``      dense run keeping θ_k, prune once to s by the    prune the trained weights once (then
               trained magnitudes, rewind to θ_k, retrain       ``--finetune-epochs`` if asked); with
               (the seed-000 OMP recipe; k = ``rewind_epoch``,  ``rewind_epoch=k``: the seed-000 recipe, θ_k
               default 1)                                       replayed from the recorded seed and recipe
``imp:s``      dense run keeping θ_k, then rounds of ``rate``   the same rounds, starting from the trained
               with rewinding and retraining                    weights, θ_k replayed
``synflow:s``  prune the initial weights, then train            refused unless ``--at-init``: the recorded seed's
                                                                initialisation is pruned and trained with the
                                                                recorded recipe (a new model, not the parent's)
=============  ===============================================  ===================================================
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from .._util import resolve_device, seed_everything
from ..checkpoint import Checkpoint, save_checkpoint
from ..data import Dataset, augment_for
from ..errors import UnlearnKitError
from ..masks import attach_prune_masks
from ..models import build_model
from ..recipes import default_recipe
from ..requests import Request
from ..training import (
    Cost,
    FitReport,
    TrainConfig,
    accuracy,
    metered,
    predict_logits,
    train_classifier,
    weights_runtime,
)
from .layers import global_sparsity, layer_sparsity, prunable_names
from .magnitude import alive_masks, iterative_magnitude_prune, magnitude_prune, snapshot, train_with_snapshot
from .spec import PruneSpec, parse_prune_spec
from .synflow import input_shape_of, synflow_prune

# Rewind point of the lottery-ticket recipe when the spec names none: one epoch. The seed-000 code
# rewinds to epoch 8 of 182 (4 % of training); one epoch is the nearest whole epoch of the 10-epoch
# recipes here, and rewinding to 0 (the initialisation) is known to fail for all but small nets.
DEFAULT_REWIND_EPOCH = 1
# Fine-tuning after one-shot pruning starts from a good solution: a fifth of the recipe's learning rate
# (0.01 for the Fashion-MNIST recipe), on the recipe's cosine schedule. See benchmarks/results/pruning.
FINETUNE_LR_FACTOR = 0.2


@dataclass
class PruneResult:
    spec: PruneSpec
    names: list[str]
    masks: dict[str, torch.Tensor]
    cost: Cost
    rounds: list[dict] = field(default_factory=list)
    rewind_epoch: int | None = None

    def describe(self, model: nn.Module) -> dict:
        """The manifest record: the spec, the sparsity reached, per-layer counts, IMP rounds, and the cost of
        the pruning step itself (scoring and selection; for rewinding methods, the rounds' retraining too —
        not a dense run, a replay or a fine-tune, which the checkpoint's overall ``cost`` includes)."""
        return {
            "spec": str(self.spec),
            **self.spec.to_dict(),
            "achieved_sparsity": round(global_sparsity(model, self.names), 6),
            "layers": layer_sparsity(model, self.names),
            "rounds": self.rounds,
            "rewind_epoch": self.rewind_epoch,
            "cost": self.cost.to_dict(),
        }


def prune(
    model: nn.Module,
    spec: str | PruneSpec,
    *,
    input_shape: tuple[int, ...] | None = None,
    retrain: Callable[[nn.Module], FitReport] | None = None,
    rewind_state: dict[str, torch.Tensor] | None = None,
    names: list[str] | None = None,
) -> PruneResult:
    """Prune ``model`` in place as ``spec`` says (``omp:0.95``, ``imp:0.9``, ``synflow:0.95``...).

    OMP and SynFlow act on the weights as they are (SynFlow needs ``input_shape``, e.g. (1, 28, 28)).
    IMP — and OMP with ``rewind_epoch`` — treat ``model`` as trained and need ``rewind_state`` (the weights
    to rewind to, see :func:`~unlearnkit.sparsity.magnitude.train_with_snapshot`) and ``retrain(model)``;
    :func:`train_sparse` and :func:`prune_checkpoint` supply both. Masks are attached over ``names``
    (default: :func:`prunable_names` of the spec's layer choice), so they persist from here on.
    """
    spec = parse_prune_spec(spec)
    names = names or prunable_names(model, layers=spec.layers, include_classifier=spec.classifier)
    rounds: list[dict] = []
    with metered() as cost:
        if spec.method == "synflow":
            if input_shape is None:
                raise UnlearnKitError("SynFlow needs the model's input shape (channels, height, width)")
            synflow_prune(model, spec.sparsity, names, input_shape, iterations=spec.iterations, scope=spec.scope)
        elif not spec.retrains:
            magnitude_prune(model, spec.sparsity, names, scope=spec.scope)
        else:
            if retrain is None or rewind_state is None:
                raise UnlearnKitError(f"{spec} rewinds and retrains: it needs data and a recipe; use "
                                      f"`unlearnkit train --prune {spec}` or `unlearnkit prune --checkpoint ...`")
            rate = spec.rate if spec.method == "imp" else max(spec.sparsity, 1e-9)  # OMP: a single round
            rounds = iterative_magnitude_prune(
                model, retrain, rewind_state, spec.sparsity, names, rate=rate, scope=spec.scope
            )
        attach_prune_masks(model, alive_masks(model, names))  # sparsity 0 still records which layers are pruned
    return PruneResult(spec, names, alive_masks(model, names), cost, rounds,
                       spec.rewind_or(DEFAULT_REWIND_EPOCH) if spec.retrains else None)


# -- training with a data set ------------------------------------------------------------------------
RunFn = Callable[..., FitReport]  # run(model, after_epoch=None, config=None) -> FitReport


@dataclass
class ClassifierTrainer:
    """Cross-entropy training on a data set's training split (as ``request`` shaped it, if any), with the
    test accuracy logged each epoch: what IMP's rounds, fine-tuning and replays run."""

    data: Dataset
    config: TrainConfig
    seed: int = 0
    device: str | torch.device | None = "auto"
    request: Request | None = None
    echo: bool = False

    def __post_init__(self) -> None:
        self.device = resolve_device(self.device)
        self.x, self.y = (
            self.request.training_data(self.data)
            if self.request is not None
            else (self.data.x_train, self.data.y_train)
        )

    def __call__(self, model: nn.Module, after_epoch=None, config: TrainConfig | None = None) -> FitReport:
        config = config or self.config

        def log(m: nn.Module, record: dict):
            record["test_acc"] = round(
                accuracy(predict_logits(m, self.data.x_test, device=self.device), self.data.y_test), 3
            )
            if self.echo:
                print(f"  epoch {record['epoch']:>3}/{config.epochs}  loss {record['loss']:.4f}  test acc "
                      f"{record['test_acc']:6.2f}  {record['seconds']:.1f}s", file=sys.stderr, flush=True)
            return after_epoch(m, record) if after_epoch is not None else None

        return train_classifier(model, self.x, self.y, torch.arange(self.data.n_train), config,
                                augment=augment_for(self.data),
                                seed=self.seed, device=self.device, after_epoch=log)

    def test_accuracy(self, model: nn.Module) -> float:
        return round(accuracy(predict_logits(model, self.data.x_test, device=self.device), self.data.y_test), 3)

    def train_accuracy(self, model: nn.Module) -> float:
        return round(accuracy(predict_logits(model, self.x, device=self.device), self.y), 3)


def train_sparse(model: nn.Module, spec: str | PruneSpec, run: RunFn, config: TrainConfig, *,
                 input_shape: tuple[int, ...] | None = None, echo: bool = False) -> tuple[FitReport, dict]:
    """Train a freshly initialised ``model`` into a sparse one (what ``train --prune`` does).

    ``run(model, after_epoch=None, config=None)`` trains with the recipe ``config``. SynFlow prunes the
    initial weights and trains once; OMP and IMP train densely keeping θ_k, then prune, rewind and retrain
    (OMP in one round). Returns the combined report (history tagged by round, total cost) and the
    pruning record for the manifest.
    """
    spec = parse_prune_spec(spec)
    names = prunable_names(model, layers=spec.layers, include_classifier=spec.classifier)  # fail before training
    history: list[dict] = []
    with metered() as total:
        if spec.method == "synflow":
            result = prune(model, spec, input_shape=input_shape, names=names)
            _say(echo, f"SynFlow pruned the initialisation to {global_sparsity(model, result.names):.4f} sparsity "
                       f"in {result.cost.seconds:.1f} s; training")
            report = run(model)
            history = [{"round": 0, **r} for r in report.history]
        else:
            k = spec.rewind_or(DEFAULT_REWIND_EPOCH)
            if k > config.epochs:
                raise UnlearnKitError(f"rewind_epoch {k} is beyond the recipe's {config.epochs} epochs")
            _say(echo, f"{spec.method.upper()} to {spec.sparsity}: dense run (keeping the weights after epoch {k})")
            rewind_state, dense = train_with_snapshot(model, lambda m, hook: run(m, hook), k)
            history = [{"round": 0, **r} for r in dense.history]
            result = prune(model, spec.replace(rewind_epoch=k) if spec.method == "omp" else spec, names=names,
                           retrain=_round_runner(run, config, spec, history, echo), rewind_state=rewind_state)
    return FitReport(history=history, cost=total), result.describe(model)


def _round_runner(run: RunFn, config: TrainConfig, spec: PruneSpec, history: list[dict], echo: bool):
    retrain_config = config if spec.epochs is None else config.replace(epochs=spec.epochs)
    counter = {"round": 0}

    def retrain(model: nn.Module) -> FitReport:
        counter["round"] += 1
        _say(echo, f"round {counter['round']}: sparsity {global_sparsity(model):.4f}, survivors rewound; retraining "
                   f"{retrain_config.epochs} epochs")
        report = run(model, None, retrain_config)
        history.extend({"round": counter["round"], **r} for r in report.history)
        return report

    return retrain


def _say(echo: bool, text: str) -> None:
    if echo:
        print(text, file=sys.stderr, flush=True)


# -- pruning a checkpoint ----------------------------------------------------------------------------
@dataclass
class Pruned:
    model: nn.Module
    manifest_extra: dict  # pruning, parent, seed, train, metrics, cost
    history: list[dict]
    data: Dataset
    request: Request | None

    @property
    def metrics(self) -> dict:
        return self.manifest_extra["metrics"]

    @property
    def pruning(self) -> dict:
        return self.manifest_extra["pruning"]


def prune_checkpoint(
    checkpoint: Checkpoint,
    spec: str | PruneSpec,
    *,
    finetune_epochs: int = 0,
    finetune_lr: float | None = None,
    at_init: bool = False,
    seed: int | None = None,
    device: str | torch.device | None = "auto",
    data_dir: str | None = None,
    echo: bool = False,
) -> Pruned:
    """Prune a trained checkpoint's model (a copy; the checkpoint is not modified). See the module table.

    Data and recipe come from the manifest; fine-tuning uses the recipe with ``finetune_epochs`` epochs
    and ``finetune_lr`` (default a fifth of the recipe's rate).
    """
    spec = parse_prune_spec(spec)
    if finetune_epochs < 0:
        raise UnlearnKitError("--finetune-epochs must be >= 0")
    if at_init and spec.method != "synflow":
        raise UnlearnKitError("--at-init applies to synflow only (OMP and IMP prune trained weights)")
    if spec.method == "synflow" and not at_init:
        raise UnlearnKitError(
            "SynFlow prunes at initialisation, not a trained model: pass --at-init to prune this checkpoint's "
            "architecture at its recorded seed's initialisation and train it with its recipe, or use "
            f"`unlearnkit train --prune {spec} ...`")
    names = prunable_names(checkpoint.model, layers=spec.layers, include_classifier=spec.classifier)
    manifest = checkpoint.manifest
    data = checkpoint.dataset(data_dir)
    request = checkpoint.request(data)
    recipe = TrainConfig.from_dict(manifest["train"]) if manifest.get("train") else default_recipe(data.name)
    seed = int(manifest.get("seed", 0)) if seed is None else seed
    trainer = ClassifierTrainer(data, recipe, seed, device, request, echo)
    spec_model = manifest["model"]
    parent_acc = trainer.test_accuracy(checkpoint.model)
    history: list[dict] = []
    with metered() as total:
        if spec.method == "synflow":
            model = _initialisation(spec_model, seed)
            result = prune(model, spec, input_shape=input_shape_of(spec_model["args"]), names=names)
            pruned_acc = trainer.test_accuracy(model)
            _say(
                echo,
                f"SynFlow pruned the seed-{seed} initialisation to {spec.sparsity}; training {recipe.epochs} epochs",
            )
            history += [{"stage": "train", **r} for r in trainer(model).history]
        elif not spec.retrains:
            model = copy.deepcopy(checkpoint.model)
            result = prune(model, spec, names=names)
            pruned_acc = trainer.test_accuracy(model)
        else:
            if manifest.get("kind") not in ("original", "pruned"):
                raise UnlearnKitError(f"{spec} rewinds to the dense run's early weights; {checkpoint.path} is a "
                                      f"{manifest.get('kind')} model, not one trained by a recorded recipe")
            k = spec.rewind_or(DEFAULT_REWIND_EPOCH)
            if k > recipe.epochs:
                raise UnlearnKitError(f"rewind_epoch {k} is beyond the recipe's {recipe.epochs} epochs")
            _say(
                echo,
                f"replaying the first {k} epoch(s) of the recorded recipe (seed {seed}) to recover the rewind point",
            )
            rewind_state = replay_rewind_state(spec_model, seed, trainer, k)
            model = copy.deepcopy(checkpoint.model)
            stage: list[dict] = []
            result = prune(model, spec.replace(rewind_epoch=k) if spec.method == "omp" else spec, names=names,
                           retrain=_round_runner(trainer, recipe, spec, stage, echo),
                           rewind_state=rewind_state)
            history += [{"stage": "retrain", **r} for r in stage]
            pruned_acc = None  # the rewound model is retrained: there is no "just pruned" trained model
        if finetune_epochs:
            lr = finetune_lr if finetune_lr is not None else recipe.lr * FINETUNE_LR_FACTOR
            _say(echo, f"fine-tuning {finetune_epochs} epoch(s) at lr {lr:g}")
            history += [
                {"stage": "finetune", **r}
                for r in trainer(model, None, recipe.replace(epochs=finetune_epochs, lr=lr)).history
            ]
    pruning = result.describe(model)
    pruning.update({
        "at_init": at_init,
        "finetune": {"epochs": finetune_epochs, "lr": lr} if finetune_epochs else None,
    })
    metrics = {
        "test_acc": trainer.test_accuracy(model),
        "train_acc": trainer.train_accuracy(model),
        "parent_test_acc": parent_acc,
        "pruned_test_acc": pruned_acc,
        "sparsity": pruning["achieved_sparsity"],
    }
    extra = {
        "seed": seed,
        "train": recipe.to_dict(),
        "metrics": metrics,
        "cost": total.to_dict(),
        "pruning": pruning,
        "parent": {"path": str(checkpoint.path), "sha256": manifest["weights"]["sha256"], "kind": manifest.get("kind")},
        "runtime": weights_runtime(trainer.device),
    }
    return Pruned(model, extra, history, data, request)


def save_pruned(pruned: Pruned, checkpoint: Checkpoint, out: str | Path, *, data_dir: str | None = None,
                extra: dict | None = None) -> Path:
    import json

    spec = checkpoint.manifest["model"]
    log = "".join(json.dumps(r) + "\n" for r in pruned.history)
    return save_checkpoint(out, pruned.model, model_name=spec["name"], model_args=spec["args"], dataset=pruned.data,
                           data_dir=data_dir, request=pruned.request, kind="pruned",
                           extra={**pruned.manifest_extra, **(extra or {})},
                           files={"train_log.jsonl": log} if log else None)


def _initialisation(model_spec: dict, seed: int) -> nn.Module:
    """The model ``train`` builds for this architecture and seed (same global-RNG seeding as models.new_model)."""
    seed_everything(seed)
    return build_model(model_spec["name"], **model_spec.get("args", {}))


def replay_rewind_state(
    model_spec: dict, seed: int, trainer: ClassifierTrainer, epochs: int
) -> dict[str, torch.Tensor]:
    """θ_k of the recorded dense run: rebuild its initialisation and rerun its first ``epochs`` epochs.

    The run is the same one (same initialisation, schedule over the full recipe, data order and
    augmentation from the seed), so on the device it was trained on this reproduces θ_k bit for bit; on
    another device it is the same run up to floating-point differences.
    """
    model = _initialisation(model_spec, seed)
    if epochs == 0:
        return snapshot(model)
    kept: dict[str, dict] = {}

    def stop_at(m: nn.Module, record: dict) -> bool:
        if record["epoch"] == epochs:
            kept["state"] = snapshot(m)
            return True
        return False

    trainer(model, stop_at)
    return kept["state"]


# -- prune first, then unlearn -----------------------------------------------------------------------
# Fine-tuning epochs after a one-shot prune when a model is pruned to be unlearned (`unlearn --prune`, a
# suite's `prune` key): two epochs at a fifth of the recipe's rate bring OMP of the small CNN on
# Fashion-MNIST back within 0.5 point of dense up to 0.95 (benchmarks/results/pruning), at a fifth of a
# training's cost. Specs that retrain (rewinding OMP, IMP) or train (SynFlow at init) need none.
PRUNE_FIRST_FINETUNE_EPOCHS = 2


def prune_first_finetune_epochs(spec: str | PruneSpec) -> int:
    """Default fine-tuning after pruning a trained model before unlearning it (see the constant above)."""
    spec = parse_prune_spec(spec)
    return 0 if spec.retrains or spec.method == "synflow" else PRUNE_FIRST_FINETUNE_EPOCHS


def prune_first(
    checkpoint: Checkpoint,
    spec: str | PruneSpec,
    *,
    finetune_epochs: int | None = None,
    finetune_lr: float | None = None,
    device: str | torch.device | None = "auto",
    data_dir: str | None = None,
    out: str | Path | None = None,
    echo: bool = False,
    extra: dict | None = None,
) -> Checkpoint:
    """The model to unlearn from under Jia et al.'s (NeurIPS 2023) "prune first, then unlearn": ``checkpoint`` pruned by
    ``spec`` (SynFlow: at the recorded seed's initialisation, then trained), then fine-tuned
    ``finetune_epochs`` (default :func:`prune_first_finetune_epochs`) on the data as trained.

    With ``out`` the pruned model is written there as a ``pruned`` checkpoint and read back (its masks
    round-trip through the file); otherwise the returned checkpoint lives in memory only: its ``path`` is
    the parent's and its manifest is the pruned one (``kind`` "pruned", ``pruning``, ``parent``, the
    recipe and metrics), so :func:`unlearnkit.unlearn` and every method take it as they take a file.
    ``extra`` adds entries to the written manifest (the benchmark cache records its key there).
    """
    spec = parse_prune_spec(spec)
    epochs = prune_first_finetune_epochs(spec) if finetune_epochs is None else finetune_epochs
    pruned = prune_checkpoint(checkpoint, spec, finetune_epochs=epochs, finetune_lr=finetune_lr,
                              at_init=spec.method == "synflow", device=device, data_dir=data_dir, echo=echo)
    if out is not None:
        from ..checkpoint import load_checkpoint

        return load_checkpoint(save_pruned(pruned, checkpoint, out, data_dir=data_dir, extra=extra))
    manifest = {**checkpoint.manifest, **pruned.manifest_extra, "kind": "pruned",
                "request": checkpoint.manifest.get("request")}
    manifest["weights"] = {**checkpoint.manifest["weights"], "sha256": None, "in_memory": True}
    return Checkpoint(path=checkpoint.path, model=pruned.model.cpu().eval(), manifest=manifest)
