"""Bring your own model: make a classifier trained elsewhere a checkpoint every method can unlearn from.

:func:`import_model` builds the user's ``nn.Module`` with their factory, loads their weights (safetensors,
or a ``.pt`` state dict read with ``weights_only=True``), checks that it runs on the data and has one output
per class, finds the classifier layer, measures train/test accuracy, and records the factory, its
arguments, the weights' hash and the training recipe for Retrain in a checkpoint manifest. Nothing is
written unless every check passed. See docs/your-own-model.md.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ._util import resolve_device, seed_everything, sha256_file
from .checkpoint import Checkpoint, save_checkpoint
from .data import Dataset, load_dataset
from .errors import UnlearnKitError
from .models.imported import IMPORTED, build_imported, find_classifier, load_factory, load_weights, read_weights
from .training import TrainConfig, accuracy, predict_logits

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Retrain's recipe when the user gives none (docs/your-own-model.md says the same).
DEFAULT_RECIPE = TrainConfig()
RECIPE_USERS = ("retrain",)  # methods that train with the recipe (the others have their own options)


def read_recipe(path: str | os.PathLike) -> TrainConfig:
    """A TOML file of training options (the fields of :class:`~unlearnkit.training.TrainConfig`, at the top
    level or under ``[train]`` as in benchmark suites)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise UnlearnKitError(f"cannot read recipe {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UnlearnKitError(f"recipe {path} is not valid TOML: {exc}") from None
    if set(raw) == {"train"} and isinstance(raw["train"], dict):
        raw = raw["train"]
    try:
        return TrainConfig.from_dict(raw)
    except UnlearnKitError as exc:
        raise UnlearnKitError(f"recipe {path}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise UnlearnKitError(f"recipe {path}: {exc}") from None


@dataclass
class ImportedCheckpoint(Checkpoint):
    """A checkpoint of an imported model that keeps the data it was imported with (no reload needed)."""

    data: Dataset | None = None

    def dataset(self, data_dir: str | os.PathLike | None = None) -> Dataset:
        if data_dir is None and self.data is not None:
            return self.data
        return super().dataset(data_dir)


def import_model(
    factory: str,
    weights: str | os.PathLike,
    data: str | Dataset,
    *,
    factory_args: dict | None = None,
    classifier_layer: str | None = None,
    recipe: TrainConfig | str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    device: str | torch.device | None = "auto",
    data_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    echo: bool = False,
) -> ImportedCheckpoint:
    """Import a model trained elsewhere; with ``out``, write it as a checkpoint directory there.

    ``factory`` is ``package.module:function``, called as ``function(**factory_args)``; ``data`` a data set
    name or spec (``imagefolder:PATH``, ``npz:PATH``, ``hf:PATH``, ``prepared:DIR``, a built-in name) or a
    :class:`Dataset`. ``recipe`` (a TrainConfig or a TOML file) is what Retrain trains with; default
    :data:`DEFAULT_RECIPE`. Returns a checkpoint that ``unlearn``/``evaluate`` take as they take any other.
    An existing checkpoint at ``out`` is replaced only with ``overwrite`` (the rule of :mod:`unlearnkit.outputs`).
    """
    # Everything that can be checked cheaply is checked before the data is read.
    recipe_source = "default"
    if recipe is None:
        recipe = DEFAULT_RECIPE.replace()
    elif not isinstance(recipe, TrainConfig):
        recipe_source = str(recipe)
        recipe = read_recipe(recipe)
    else:
        recipe_source = "given"
    weights = Path(weights)
    if out is not None:
        from .outputs import prepare_output

        source = data.source if isinstance(data, Dataset) else _spec_path(data)
        out = prepare_output(out, "checkpoint", inputs=[weights, source, data_dir], overwrite=overwrite)
    state = read_weights(weights)
    load_factory(factory)
    data = data if isinstance(data, Dataset) else load_dataset(data, data_dir)

    seed_everything(0)  # the factory's initialisation is overwritten, but keep it deterministic
    model = build_imported(factory, factory_args)
    load_weights(model, state, f"in {weights}")
    model.eval()
    probe = data.x_train[:2]
    try:
        with torch.no_grad():
            logits = model(probe)
    except Exception as exc:  # the user's forward pass raised
        raise UnlearnKitError(
            f"the model cannot run on the data's images (float32 in [0, 1], shape "
            f"{tuple(probe.shape)}): {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        ) from None
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != probe.shape[0]:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise UnlearnKitError(
            f"the model must return logits of shape N x classes; on {probe.shape[0]} images it returned {shape}"
        )
    if logits.shape[1] != data.num_classes:
        raise UnlearnKitError(f"the model has {logits.shape[1]} outputs but {data.name} has {data.num_classes} classes "
                              f"({', '.join(data.class_names[:10])}{', ...' if data.num_classes > 10 else ''})")
    head = find_classifier(model, data.num_classes, classifier_layer)
    args = {"factory": factory, "factory_args": dict(factory_args or {}), "classifier_layer": head}
    model = build_imported(**args)  # the object every later load builds, with its classifier recorded
    load_weights(model, state, f"in {weights}")
    device = resolve_device(device)
    model.to(device)
    metrics = {"train_acc": round(accuracy(predict_logits(model, data.x_train, device=device), data.y_train), 3),
               "test_acc": round(accuracy(predict_logits(model, data.x_test, device=device), data.y_test), 3)}
    if echo:
        how = "named by --classifier-layer" if classifier_layer else "the last linear layer" if head else ""
        print(f"imported {factory}: {sum(p.numel() for p in model.parameters()):,} parameters, "
              f"classifier layer {head!r} ({how})" if head else
              f"imported {factory}: no linear layer, so methods that need a classifier (fisher's class rows, "
              f"SAPS criterion=last_layer) will refuse it", file=sys.stderr)
        print(f"train accuracy {metrics['train_acc']:.2f} %, test accuracy {metrics['test_acc']:.2f} % on {data.name}",
              file=sys.stderr)
        source = recipe_source
        if recipe_source == "default":
            source = "the default recipe; pass --recipe FILE.toml to set yours"
        print(f"Retrain will train {recipe.epochs} epochs with {recipe.optimizer} lr {recipe.lr} ({source})",
              file=sys.stderr)
    extra = {
        "seed": 0,
        "train": recipe.to_dict(),
        "recipe_source": recipe_source,
        "metrics": metrics,
        "imported": {
            "weights": str(weights.resolve()),
            "weights_sha256": sha256_file(weights),
            "factory_module_file": _module_file(factory),
        },
    }
    manifest = {
        "kind": "original",
        "model": {"name": IMPORTED, "args": args},
        "dataset": {**data.describe(), "data_dir": None if data_dir is None else str(data_dir)},
        "request": None,
        **extra,
    }
    path = None
    if out is not None:
        path = save_checkpoint(out, model, model_name=IMPORTED, model_args=args, dataset=data, data_dir=data_dir,
                               extra=extra)
        from .checkpoint import read_manifest

        manifest = read_manifest(path)
    return ImportedCheckpoint(path=path, model=model.cpu().eval(), manifest=manifest, data=data)


def _spec_path(spec: str) -> str | None:
    from .data.readers import is_spec, parse_spec

    return parse_spec(spec)[1] if is_spec(spec) else None


def _module_file(factory: str) -> str | None:
    module = sys.modules.get(factory.split(":")[0])
    return getattr(module, "__file__", None)
