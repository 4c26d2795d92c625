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
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ._util import atomic_path, read_json_record, sha256_file, versions
from .data.datasets import Dataset, load_dataset
from .errors import UnlearnKitError
from .masks import register_mask_buffers
from .models import build_model
from .requests import Request, request_from_record

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
        record = self.manifest.get("request")
        return None if record is None else request_from_record(record, data)


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
        raise UnlearnKitError(f"checkpoint {path} is not a directory (a checkpoint is a folder with {MANIFEST} and {WEIGHTS})")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise UnlearnKitError(f"{path} is not a checkpoint: it has no {MANIFEST}")
    manifest = read_json_record(manifest_path, FORMAT, "an unlearnkit checkpoint manifest")
    for key in ("model", "dataset", "weights"):
        if key not in manifest:
            raise UnlearnKitError(f"{manifest_path} lacks its '{key}' entry")
    return manifest


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Load and verify a checkpoint; every problem is an :class:`UnlearnKitError` naming the file."""
    path = Path(path)
    manifest = read_manifest(path)
    weights_info = manifest["weights"]
    weights = path / weights_info.get("file", WEIGHTS)
    if not weights.is_file():
        raise UnlearnKitError(f"checkpoint {path} has no weights file {weights.name}")
    size = weights.stat().st_size
    if "bytes" in weights_info and size != weights_info["bytes"]:
        raise UnlearnKitError(f"{weights} has {size} bytes but the manifest says {weights_info['bytes']}: the file is truncated or replaced")
    if sha256_file(weights) != weights_info.get("sha256"):
        raise UnlearnKitError(f"{weights} does not match the SHA-256 in its manifest: the file is corrupted or was changed")
    spec = manifest["model"]
    model = build_model(spec["name"], **spec.get("args", {}))
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UnlearnKitError(f"{weights} cannot be read as safetensors: {exc}") from None
    register_mask_buffers(model, set(state))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong_shape:
        details = []
        if missing:
            details.append(f"missing {missing[:3]}")
        if unexpected:
            details.append(f"unexpected {unexpected[:3]}")
        if wrong_shape:
            k = wrong_shape[0]
            details.append(f"{k} is {tuple(state[k].shape)}, model wants {tuple(expected[k].shape)}")
        raise UnlearnKitError(f"weights in {path} do not fit a {spec['name']} with the recorded arguments: {'; '.join(details)}")
    model.load_state_dict(state, strict=True)
    model.to(device)
    model.eval()
    return Checkpoint(path=path, model=model, manifest=manifest)
