"""Checkpoints: a directory holding ``model.safetensors`` and ``manifest.json``.

The manifest says how to rebuild the model (registry name and arguments), which data set it was trained
on (name and fingerprint), the request it carries (if any), the training recipe, metrics, cost, lineage
and package versions, and the SHA-256 of the weights file. The whole directory is written to a temporary
sibling and renamed into place, so a crash never leaves a half-written checkpoint. Loading verifies the
hash and the architecture before touching the weights, and never unpickles anything.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ._util import atomic_path, read_json_record, resolve_device, sha256_file, versions
from .data.datasets import Dataset, load_dataset
from .errors import UnlearnKitError
from .masks import register_mask_buffers
from .models import build_model
from .requests import Request, build_request, request_from_record
from .training import prepare_model, weights_runtime

if TYPE_CHECKING:
    from .methods.base import Unlearned

FORMAT = "unlearnkit-checkpoint/1"
WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"


@dataclass
class Checkpoint:
    path: Path
    model: nn.Module
    manifest: dict

    @property
    def model_spec(self) -> dict:
        return self.manifest["model"]

    def dataset(self, data_dir: str | os.PathLike | None = None) -> Dataset:
        """Load the data set this checkpoint was trained on and check it is byte-for-byte the same."""
        info = self.manifest["dataset"]
        data = load_dataset(info["name"], data_dir if data_dir is not None else info.get("data_dir"))
        if data.fingerprint != info["fingerprint"]:
            raise UnlearnKitError(
                f"data set {info['name']} at {data.source} has fingerprint {data.fingerprint}, "
                f"but {self.path} was trained on {info['fingerprint']}"
            )
        return data

    def request(self, data: Dataset) -> Request | None:
        """The request this checkpoint records (None when it records none)."""
        record = self.manifest.get("request")
        return None if record is None else request_from_record(record, data)

    def resolve_request(self, data: Dataset, spec: str | None = None, seed: int = 0, *,
                        required: bool = False) -> Request | None:
        """The request ``spec`` (built with ``seed``) when given, else the one this checkpoint records;
        with ``required``, a checkpoint that records none is an error."""
        request = build_request(spec, data, seed) if spec else self.request(data)
        if request is None and required:
            raise UnlearnKitError(f"{self.path} records no request; pass --request (e.g. random:0.1 or class:0)")
        return request

    def parent_path(self) -> Path | None:
        """The checkpoint on disk this model was made from (None when it records none, or when it was unlearned
        from an in-memory pruned copy: its recorded parent is then the dense model, not what it was made from)."""
        parent = self.manifest.get("parent") or {}
        if parent.get("pruned_first") or not parent.get("path"):
            return None
        return Path(parent["path"])

    def lineage(self) -> dict:
        """What a model made from this checkpoint records as its ``parent``: path and weights hash."""
        return {"path": str(self.path), "sha256": self.manifest["weights"]["sha256"]}


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    model_name: str,
    model_args: dict,
    dataset: Dataset,
    data_dir: str | os.PathLike | None = None,
    request: Request | None = None,
    kind: str = "original",
    extra: dict[str, Any] | None = None,
    files: dict[str, str] | None = None,
) -> Path:
    """Write ``model`` and its manifest atomically to the directory ``path`` and return it.

    ``extra`` adds manifest entries (training config, metrics, history, cost, method, parent, ...);
    ``files`` adds small text files (name -> content) to the directory.
    """
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as staged:
        staged.mkdir()
        save_file(state, str(staged / WEIGHTS))
        manifest = {
            "format": FORMAT,
            "kind": kind,
            "model": {"name": model_name, "args": model_args},
            "dataset": {
                **dataset.describe(),
                "data_dir": None if data_dir is None else str(data_dir),
            },
            "request": None if request is None else request.describe(),
            **(extra or {}),
            "weights": {
                "file": WEIGHTS,
                "sha256": sha256_file(staged / WEIGHTS),
                "bytes": (staged / WEIGHTS).stat().st_size,
                "parameters": int(sum(p.numel() for p in model.parameters())),
            },
            "versions": versions(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        for name, content in (files or {}).items():
            (staged / name).write_text(content)
        (staged / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return path


def read_manifest(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.exists():
        raise UnlearnKitError(f"checkpoint {path} does not exist")
    if not path.is_dir():
        raise UnlearnKitError(
            f"checkpoint {path} is not a directory (a checkpoint is a folder with {MANIFEST} and {WEIGHTS})"
        )
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise UnlearnKitError(f"{path} is not a checkpoint: it has no {MANIFEST}")
    manifest = read_json_record(manifest_path, FORMAT, "an unlearnkit checkpoint manifest")
    validate_manifest(manifest, manifest_path)
    return manifest


# Checkpoints larger than this are refused before anything is built (4 GB of float32 weights); the models
# unlearnkit registers are far below it (VGG-16-BN on CIFAR: 15 M).
MAX_PARAMETERS = 1_000_000_000
# The shape arguments every model takes, and what is plausible for them.
_SHAPE_LIMITS = {"in_channels": 64, "image_size": 4096, "num_classes": 100_000}
_TEXT_SHAPE_LIMITS = {"vocab_size": 1_000_000, "seq_len": 100_000}  # language models (models/lm.py)


def _damaged(where: Path, why: str) -> UnlearnKitError:
    return UnlearnKitError(f"damaged model directory: {where} {why}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    import math

    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_manifest(manifest: dict, where: Path) -> None:
    """Check the types and ranges of a manifest's fields before anything is built from them."""
    for key in ("model", "dataset", "weights"):
        if key not in manifest:
            raise UnlearnKitError(f"{where} lacks its '{key}' entry")
    validate_model_spec(manifest["model"], where)
    dataset = manifest["dataset"]
    if (
        not isinstance(dataset, dict)
        or not isinstance(dataset.get("name"), str)
        or not isinstance(dataset.get("fingerprint"), str)
    ):
        raise _damaged(where, "has a 'dataset' entry without a name and fingerprint")
    if dataset.get("data_dir") is not None and not isinstance(dataset["data_dir"], str):
        raise _damaged(where, "has a 'dataset.data_dir' that is not a path")
    weights = manifest["weights"]
    if not isinstance(weights, dict) or not isinstance(weights.get("sha256"), str):
        raise _damaged(where, "has a 'weights' entry without its SHA-256")
    if "file" in weights and not isinstance(weights["file"], str):
        raise _damaged(where, "has a 'weights.file' that is not a file name")
    if "bytes" in weights and not (_is_int(weights["bytes"]) and weights["bytes"] >= 0):
        raise _damaged(where, "has a 'weights.bytes' that is not a size")
    request = manifest.get("request")
    if request is not None:
        if not isinstance(request, dict) or not isinstance(request.get("spec"), str):
            raise _damaged(where, "has a 'request' entry without a spec")
        if "seed" in request and not _is_int(request["seed"]):
            raise _damaged(where, "has a 'request.seed' that is not an integer")
        ids = request.get("ids")
        if ids is not None and not (isinstance(ids, list) and all(_is_int(i) for i in ids)):
            raise _damaged(where, "has 'request.ids' that are not a list of integers")
    if "seed" in manifest and manifest["seed"] is not None and not _is_int(manifest["seed"]):
        raise _damaged(where, "has a 'seed' that is not an integer")
    cost = manifest.get("cost")
    if cost is not None and not (isinstance(cost, dict) and all(_is_number(v) for v in cost.values() if v is not None)):
        raise _damaged(where, "has a 'cost' entry that is not a record of numbers")
    parent = manifest.get("parent")
    if parent is not None and not (isinstance(parent, dict) and isinstance(parent.get("path", ""), str)):
        raise _damaged(where, "has a 'parent' entry without a path")


def validate_model_spec(spec: Any, where: Path) -> None:
    """A manifest's ``model`` entry: a registered name and arguments of the right types and plausible sizes."""
    from .models import MODEL_OPTIONS, MODELS
    from .options import build

    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise _damaged(where, "has a 'model' entry without a model name")
    if spec["name"] == "imported":
        return _validate_imported(spec, where)
    if spec["name"] not in MODELS:
        raise _damaged(where, f"names an unknown model {spec['name'][:40]!r}; known: {', '.join(MODELS)}")
    args = spec.get("args", {})
    if not isinstance(args, dict):
        raise _damaged(where, "has 'model.args' that are not a record")
    shape_limits = _TEXT_SHAPE_LIMITS if "vocab_size" in args else _SHAPE_LIMITS
    for key, limit in shape_limits.items():
        value = args.get(key)
        if not _is_int(value) or not 1 <= value <= limit:
            raise _damaged(where, f"has model argument {key}={str(value)[:40]}; it must be an integer in 1..{limit}")
    for key in ("mean", "std"):
        value = args.get(key)
        if value is not None and not (isinstance(value, list) and len(value) == args["in_channels"]
                                      and all(_is_number(v) for v in value)):
            raise _damaged(where, f"has model argument {key} that is not {args['in_channels']} finite numbers")
    # The model's own options: the types and ranges declared with the model (unlearnkit.models.MODEL_OPTIONS).
    own = {k: v for k, v in args.items() if k not in shape_limits and k not in ("mean", "std")}
    try:
        build(MODEL_OPTIONS[spec["name"]], own, owner=f"model {spec['name']}")
    except UnlearnKitError as exc:
        raise _damaged(where, f"has a bad model argument: {str(exc)[:200]}") from None


def _validate_imported(spec: dict, where: Path) -> None:
    """An imported model (models/imported.py): a factory name, JSON keyword arguments, an optional layer name."""
    args = spec.get("args")
    if not isinstance(args, dict) or set(args) - {"factory", "factory_args", "classifier_layer"}:
        raise _damaged(where, "has imported-model arguments other than factory, factory_args, classifier_layer")
    factory = args.get("factory")
    if not isinstance(factory, str) or not 3 <= len(factory) <= 300 or factory.count(":") != 1:
        raise _damaged(where, "has an imported model without a 'module:function' factory")
    if not isinstance(args.get("factory_args", {}), dict):
        raise _damaged(where, "has imported-model factory_args that are not a record")
    layer = args.get("classifier_layer")
    if layer is not None and not (isinstance(layer, str) and 0 < len(layer) <= 300):
        raise _damaged(where, "has an imported-model classifier_layer that is not a layer name")


def weights_file(path: Path, manifest: dict) -> Path:
    """The weights file a manifest names, which must be a plain file inside the checkpoint folder."""
    name = manifest["weights"].get("file", WEIGHTS)
    return confined(path, name, f"{path / MANIFEST}'s weights.file")


def confined(folder: Path, name: str, what: str) -> Path:
    """``folder / name`` when ``name`` is a plain name that resolves inside ``folder``; else a damaged-directory
    error."""
    if (
        not isinstance(name, str)
        or not name
        or "\x00" in name
        or Path(name).is_absolute()
        or len(Path(name).parts) != 1
        or name in (".", "..")
    ):
        raise UnlearnKitError(f"damaged model directory: {what} {str(name)[:80]!r} is not a file name inside {folder}")
    candidate = folder / name
    try:
        inside = os.path.realpath(candidate).startswith(os.path.realpath(folder) + os.sep)
    except (OSError, ValueError):
        inside = False
    if not inside:
        raise UnlearnKitError(f"damaged model directory: {what} {name[:80]!r} leads outside {folder}")
    return candidate


def _checked_model(path: Path, spec: dict, weights: Path) -> tuple[nn.Module, set[str]]:
    """Compare the architecture (built on the meta device: no memory) with the weights file's header, then build it."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), "pt") as handle:
            shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UnlearnKitError(f"{weights} cannot be read as safetensors: {str(exc)[:200]}") from None
    args = spec.get("args", {})
    try:
        with torch.device("meta"):
            meta = build_model(spec["name"], **args)
    except UnlearnKitError as exc:
        if spec["name"] == "imported":  # the user's factory: its own message (e.g. not importable from here)
            raise
        raise _damaged(path / MANIFEST, f"has model arguments that build no model: {exc}") from None
    except (TypeError, ValueError, RuntimeError, OverflowError, ZeroDivisionError, IndexError) as exc:
        raise _damaged(
            path / MANIFEST, f"has model arguments that build no model: {type(exc).__name__}: {str(exc)[:120]}"
        ) from None
    n_params = sum(p.numel() for p in meta.parameters())
    if n_params > MAX_PARAMETERS:
        raise _damaged(
            path / MANIFEST, f"asks for a {spec['name']} of {n_params:,} parameters (more than {MAX_PARAMETERS:,})"
        )
    register_mask_buffers(meta, set(shapes))
    expected = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(shapes) if expected[k] != shapes[k])
    if missing or unexpected or wrong_shape:
        details = []
        if missing:
            details.append(f"missing {missing[:3]}")
        if unexpected:
            details.append(f"unexpected {unexpected[:3]}")
        if wrong_shape:
            k = wrong_shape[0]
            details.append(f"{k} is {shapes[k]}, model wants {expected[k]}")
        raise UnlearnKitError(
            f"weights in {path} do not fit a {spec['name']} with the recorded arguments: {'; '.join(details)}"
        )
    model = build_model(spec["name"], **args)
    return model, set(shapes)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Load and verify a checkpoint; every problem is an :class:`UnlearnKitError` naming the file.

    The model comes back in the layout training leaves it in (:func:`~unlearnkit.training.prepare_model`:
    channels-last for convolutional models), so a loaded model computes what the trained one did, as fast (an
    NCHW small CNN's forward pass is 2.4x slower on the CPU)."""
    path = Path(path)
    manifest = read_manifest(path)
    weights_info = manifest["weights"]
    weights = weights_file(path, manifest)
    if not weights.is_file():
        raise UnlearnKitError(f"checkpoint {path} has no weights file {weights.name}")
    size = weights.stat().st_size
    if "bytes" in weights_info and size != weights_info["bytes"]:
        raise UnlearnKitError(
            f"{weights} has {size} bytes but the manifest says {weights_info['bytes']}: the file is truncated or "
            "replaced"
        )
    try:
        digest = sha256_file(weights)
    except OSError as exc:
        raise UnlearnKitError(f"cannot read {weights}: {exc.strerror or exc}") from None
    if digest != weights_info.get("sha256"):
        raise UnlearnKitError(
            f"{weights} does not match the SHA-256 in its manifest: the file is corrupted or was changed"
        )
    spec = manifest["model"]
    model, names = _checked_model(path, spec, weights)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UnlearnKitError(f"{weights} cannot be read as safetensors: {exc}") from None
    register_mask_buffers(model, names)
    model.load_state_dict(state, strict=True)
    prepare_model(model, resolve_device(device))  # convolutional models run channels-last, as after training
    model.eval()
    return Checkpoint(path=path, model=model, manifest=manifest)


def save_unlearned(path: str | os.PathLike, result: Unlearned, source: Checkpoint, request: Request, data: Dataset, *,
                   seed: int, data_dir: str | os.PathLike | None = None, kind: str = "unlearned",
                   pruned_from: Checkpoint | None = None, extra: dict | None = None) -> Path:
    """Write the result of :func:`unlearnkit.unlearn` on ``source`` as a checkpoint (``kind`` "unlearned", or
    "retrained" for Retrain's reference) recording its method, options, cost, request, lineage and the torch
    build/device/threads it ran with (``runtime``); ``extra`` adds manifest entries.

    ``pruned_from`` is the dense checkpoint when ``source`` was pruned from it just before unlearning
    (:func:`unlearnkit.sparsity.prune_first`): the manifest then carries the pruning record, and its ``parent``
    is the pruned checkpoint with ``pruned_from`` the dense one, or -- when the pruned model lived in memory
    only -- the dense checkpoint marked ``pruned_first``.
    """
    manifest = source.manifest
    parent = source.lineage() if pruned_from is None or not manifest["weights"].get("in_memory") else None
    pruning = None
    if pruned_from is not None:
        pruning = manifest["pruning"]
        parent = ({**parent, "pruned_from": pruned_from.lineage()} if parent is not None
                  else {**pruned_from.lineage(), "pruned_first": pruning["spec"]})
    if data_dir is None:  # the data were found where the source's were (e.g. the `text` data set's file)
        data_dir = (manifest.get("dataset") or {}).get("data_dir")
    return save_checkpoint(
        path, result.model, model_name=manifest["model"]["name"], model_args=manifest["model"]["args"],
        dataset=data, data_dir=data_dir, request=request, kind=kind,
        extra={"seed": seed, "train": manifest.get("train"), "method": {"name": result.method, "config": result.config,
                                                                     "resolved": result.resolved},
               "cost": result.cost.to_dict(), "notes": {k: v for k, v in result.notes.items() if k != "history"},
               "parent": parent, **({"pruning": pruning} if pruning is not None else {}),
               "runtime": weights_runtime(next(iter(result.model.parameters())).device), **(extra or {})},
    )
