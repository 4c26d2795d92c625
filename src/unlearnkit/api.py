"""The library's front door: train a model, load one, measure it.

Everything here is a thin composition of the modules underneath (data, requests, models, the training
loop, checkpoints); the CLI calls these functions and nothing else.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from ._util import resolve_device
from .checkpoint import save_checkpoint
from .data import Dataset, as_dataset, augment_for, is_text
from .errors import UnlearnKitError
from .models import new_model
from .recipes import default_model, default_recipe
from .requests import Request, build_request
from .training import (
    Accel,
    FitReport,
    TrainConfig,
    accuracy,
    mean_cross_entropy,
    predict_logits,
    train_classifier,
    weights_runtime,
)

if TYPE_CHECKING:
    from .sparsity import PruneSpec


def as_request(request: str | Request | None, data: Dataset, seed: int = 0) -> Request | None:
    if request is None or isinstance(request, Request):
        return request
    return build_request(request, data, seed)


@dataclass
class Trained:
    model: nn.Module
    model_name: str
    model_args: dict
    data: Dataset
    request: Request | None
    config: TrainConfig
    seed: int
    report: FitReport
    metrics: dict
    path: Path | None = None
    pruning: dict | None = None  # the pruning record when trained with ``prune=``
    runtime: dict | None = None  # torch build, device type and threads it was trained with (training.weights_runtime)


def train(
    data: str | Dataset = "fashion-mnist",
    model: str | None = None,
    *,
    request: str | Request | None = None,
    config: TrainConfig | None = None,
    seed: int = 0,
    device: str | torch.device | None = "auto",
    data_dir: str | os.PathLike | None = None,
    model_options: dict | None = None,
    out: str | os.PathLike | None = None,
    progress: bool = False,
    echo: bool = False,
    prune: str | PruneSpec | None = None,
    keep_diverged: bool = False,
    measure_train_acc: bool = False,
    accel: Accel | None = None,
) -> Trained:
    """Train a model on ``data`` (on the poisoned/relabelled data if ``request`` changes it).

    With ``out``, the checkpoint is written there atomically, with the request recorded so that it can
    be unlearned later. ``prune`` (e.g. ``omp:0.95``, ``imp:0.9``, ``synflow:0.95``) trains a sparse
    model instead; see :func:`unlearnkit.sparsity.train_sparse`. A run whose loss became non-finite (the loop
    rolled back to the start of that epoch and stopped) is an :class:`UnlearnKitError` and writes nothing, unless
    ``keep_diverged``: then the rolled-back model is kept and its manifest says ``stopped_early``.
    The metrics hold ``test_acc`` (after the last epoch) and ``train_acc_last_epoch``, the running accuracy of the
    last epoch's batches as trained (augmented, in training mode: free, the loop computes it anyway);
    ``measure_train_acc`` adds ``train_acc``, an extra inference pass over the whole training set (about a fifth of
    a one-epoch run). ``accel`` sets precision, ``torch.compile`` and the cuDNN/TF32 switches
    (:class:`~unlearnkit.training.Accel`); non-default settings are recorded in the checkpoint's ``runtime``.
    """
    if prune is not None:  # a bad spec fails before any data is read
        from .sparsity import parse_prune_spec

        prune = parse_prune_spec(prune)
    data = as_dataset(data, data_dir)
    request = as_request(request, data, seed)
    model_name = model or default_model(data.name)
    config = config or default_recipe(data.name, model_name)
    accel = accel or Accel()
    device = resolve_device(device)
    net, args = new_model(model_name, data, seed, model_options)
    x, y = request.training_data(data) if request is not None else (data.x_train, data.y_train)
    if echo:
        carrying = f", data carrying {request.spec}" if request is not None and request.modifies_training_data else ""
        print(
            f"training {model_name} on {data.name} for {config.epochs} epochs on {device.type} (seed {seed}{carrying})",
            file=sys.stderr,
            flush=True,
        )

    def after_epoch(m: nn.Module, record: dict) -> None:
        logits = predict_logits(m, data.x_test, device=device, precision=accel.precision)
        record["test_acc"] = round(accuracy(logits, data.y_test), 3)
        if is_text(data):  # a language model: its validation perplexity per character too
            record["val_ppl"] = round(math.exp(float(mean_cross_entropy(logits, data.y_test))), 4)
        if echo:
            print(
                f"epoch {record['epoch']:>3}/{config.epochs}  loss {record['loss']:.4f}  "
                f"train acc {record.get('acc', float('nan')):6.2f}  test acc {record['test_acc']:6.2f}  "
                + (f"val ppl {record['val_ppl']:.3f}  " if "val_ppl" in record else "") + f"{record['seconds']:.1f}s",
                file=sys.stderr, flush=True,
            )

    def run(m: nn.Module, extra_after_epoch=None, run_config: TrainConfig | None = None) -> FitReport:
        def hooks(m: nn.Module, record: dict):
            after_epoch(m, record)
            return extra_after_epoch(m, record) if extra_after_epoch is not None else None

        return train_classifier(
            m, x, y, torch.arange(data.n_train), run_config or config, augment=augment_for(data),
            seed=seed, device=device, after_epoch=hooks, progress=progress, desc=f"train {model_name}", accel=accel,
        )

    pruning = None
    if prune is None:
        report = run(net)
    else:
        from .sparsity import input_shape_of, train_sparse

        report, pruning = train_sparse(net, prune, run, config, input_shape=input_shape_of(args), echo=echo)
    metrics = {
        "test_acc": report.history[-1]["test_acc"] if report.history else
        round(accuracy(predict_logits(net, data.x_test, device=device), data.y_test), 3),
        "train_seconds": round(report.cost.seconds, 3),
        **({"val_ppl": report.history[-1]["val_ppl"]} if report.history and "val_ppl" in report.history[-1] else {}),
    }
    if report.diverged and not keep_diverged:
        raise UnlearnKitError(f"training diverged ({report.stopped_early}); nothing was written: lower the learning "
                              "rate, or pass --keep-diverged to keep the rolled-back model")
    last_acc = [r["acc"] for r in report.history if "acc" in r]
    if last_acc:
        metrics["train_acc_last_epoch"] = last_acc[-1]
    if measure_train_acc:
        metrics["train_acc"] = round(accuracy(predict_logits(net, x, device=device), y), 3)
    trained = Trained(net, model_name, args, data, request, config, seed, report, metrics, pruning=pruning,
                      runtime={**weights_runtime(device), **({"accel": accel.changed()} if accel.changed() else {})})
    if out is not None:
        trained.path = save_trained(trained, out, data_dir=data_dir)
    return trained


def save_trained(trained: Trained, out: str | os.PathLike, *, data_dir=None, kind: str = "original",
                 extra: dict | None = None) -> Path:
    log = "".join(json.dumps(r) + "\n" for r in trained.report.history)
    return save_checkpoint(
        out, trained.model, model_name=trained.model_name, model_args=trained.model_args,
        dataset=trained.data, data_dir=data_dir, request=trained.request, kind=kind,
        extra={
            "seed": trained.seed,
            "train": trained.config.to_dict(),
            "metrics": trained.metrics,
            "cost": trained.report.cost.to_dict(),
            **({"runtime": trained.runtime} if trained.runtime is not None else {}),
            **({"pruning": trained.pruning} if trained.pruning is not None else {}),
            **({"stopped_early": {"reason": trained.report.stopped_early, "diverged": trained.report.diverged}}
               if trained.report.stopped_early else {}),
            **(extra or {}),
        },
        files={"train_log.jsonl": log},
    )


def accuracy_report(model: nn.Module, data: Dataset, request: Request | None = None,
                    device: str | torch.device | None = None) -> dict:
    """Train and test accuracy (and forget/retain accuracy when a request is given)."""
    device = resolve_device(device or "auto")
    x, y = request.training_data(data) if request is not None else (data.x_train, data.y_train)
    train_logits = predict_logits(model, x, device=device)
    report = {
        "train_acc": round(accuracy(train_logits, y), 3),
        "test_acc": round(accuracy(predict_logits(model, data.x_test, device=device), data.y_test), 3),
    }
    if request is not None:
        report["forget_acc"] = round(accuracy(train_logits[request.forget], y[request.forget]), 3)
        report["retain_acc"] = round(accuracy(train_logits[request.retain], y[request.retain]), 3)
    return report


__all__ = ["train", "Trained", "save_trained", "accuracy_report", "as_request"]
