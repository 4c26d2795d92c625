"""Retrain: train from scratch on the retain set with the original recipe — exact, and the reference."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UnlearnKitError
from ..masks import attach_prune_masks, prune_masks
from ..models import new_model
from ..training import train_classifier
from .base import Task, option, register


@dataclass
class RetrainConfig:
    epochs: int | None = option(None, "training epochs (None: the original's recipe)", ge=0, le=10_000)
    use_corrections: bool = option(True, "relabel/edit requests: train on D_r plus the corrected forget samples "
                                         "(False: on D_r alone, i.e. remove the affected samples)")


@register("retrain", RetrainConfig, touches=("retain",), exact=True,
          summary="train from scratch on the retained data with the original recipe (exact; the reference)")
def retrain(task: Task, cfg: RetrainConfig):
    if task.model_name is None or task.model_args is None:
        raise UnlearnKitError("retrain needs the architecture: pass a checkpoint, or model_name= and model_args=")
    recipe = task.recipe if cfg.epochs is None else task.recipe.replace(epochs=cfg.epochs)
    model, _ = new_model(task.model_name, task.data, task.seed, _options(task.model_args))
    masks = prune_masks(task.model)
    if masks:  # prune-first: the retrained reference keeps the same sparsity pattern
        attach_prune_masks(model, {k: v.cpu() for k, v in masks.items()})
    request = task.request
    if request.effect != "remove" and cfg.use_corrections:
        x, y = request.corrected_data(task.data)
        ids = torch.arange(task.data.n_train)
    else:
        x, y, ids = task.x, task.y, request.retain
    report = train_classifier(model, x, y, ids, recipe, augment=task.augment, seed=task.seed, device=task.device,
                              accel=task.accel)
    task.notes["history"] = report.history
    return model


def _options(model_args: dict) -> dict:
    # Shape arguments come from the data set; the rest are the model's own options.
    return {k: v for k, v in model_args.items() if k not in ("in_channels", "image_size", "num_classes", "mean", "std")}
