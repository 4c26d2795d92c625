"""The on-disk layout of a SISA model directory.

::

    MODEL/
      sisa.json                    recipe, grid, data set identity, cost calibration
      provenance.safetensors       shard_of[N], slice_of[N] (int16)
      stages/shard-KK/stage-RR-<key>/   one checkpoint (``checkpoint.py`` format) per trained stage,
                                   named by the hash of its training history (see ``layout.stage_keys``)
      versions/v000000/            the ensemble as trained; every request that changes it adds a new
      versions/v000001/ ...        version directory: weights.safetensors (all shards), status.safetensors
                                   (per-sample status), version.json (what produced it, file hashes)
      ledger.sqlite                the request ledger (``unlearnkit.hybrid.ledger``)

Every directory and file is written to a temporary sibling and renamed into place
(:func:`unlearnkit._util.atomic_path`), so a crash leaves either the old state or the new one. Version
directories are never overwritten.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .._util import atomic_path, read_json_record, sha256_file, write_json_atomic
from ..checkpoint import load_checkpoint, save_checkpoint
from ..errors import UnlearnKitError
from ..models import build_model
from .layout import Provenance

FORMAT = "unlearnkit-sisa/1"
META = "sisa.json"
PROVENANCE = "provenance.safetensors"
STAGES = "stages"
VERSIONS = "versions"
LEDGER = "ledger.sqlite"
LOCK = ".lock"
WEIGHTS = "weights.safetensors"
STATUS = "status.safetensors"
VERSION_INFO = "version.json"
_VERSION_DIR = re.compile(r"^v(\d{6})$")


class StageCorrupted(UnlearnKitError):
    """A stage checkpoint exists but fails verification (hash, format or key)."""


class _DataIdentity:
    """What :func:`save_checkpoint` records about the data set, without the data itself (used in workers)."""

    def __init__(self, description: dict) -> None:
        self._description = description

    def describe(self) -> dict:
        return dict(self._description)


@dataclass
class Version:
    number: int
    states: list[dict[str, torch.Tensor]]  # one state dict per shard
    status: np.ndarray  # uint8 [N]
    info: dict


class SisaStore:
    def __init__(self, path: Path, meta: dict, provenance: Provenance) -> None:
        self.path = path
        self.meta = meta
        self.provenance = provenance

    # -- creation and opening -----------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, meta: dict, provenance: Provenance) -> "SisaStore":
        """Start a new model directory, or continue an interrupted training run with the same recipe."""
        path = Path(path)
        if (path / META).exists():
            existing = cls.open(path)
            if existing.version_numbers():
                raise UnlearnKitError(f"{path} already holds a trained SISA model; choose another --out")
            if existing.meta["root"] != meta["root"] or not np.array_equal(existing.provenance.shard_of, provenance.shard_of):
                raise UnlearnKitError(f"{path} holds an unfinished SISA training run with a different recipe; "
                                      "remove it or choose another --out")
            return existing  # resume: stage checkpoints already written are reused
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise UnlearnKitError(f"{path} exists and is not an empty directory; choose another --out")
        path.mkdir(parents=True, exist_ok=True)
        with atomic_path(path / PROVENANCE) as tmp:
            save_file(provenance.tensors(), str(tmp))
        meta = {**meta, "provenance_sha256": sha256_file(path / PROVENANCE)}
        write_json_atomic(path / META, meta)
        return cls(path, meta, provenance)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "SisaStore":
        path = Path(path)
        if not path.is_dir():
            raise UnlearnKitError(f"SISA model {path} does not exist (train one with `unlearnkit sisa train`)")
        meta_path = path / META
        if not meta_path.is_file():
            raise UnlearnKitError(f"{path} is not a SISA model: it has no {META}")
        meta = read_json_record(meta_path, FORMAT, "a SISA model description")
        prov_path = path / PROVENANCE
        if not prov_path.is_file() or sha256_file(prov_path) != meta.get("provenance_sha256"):
            raise UnlearnKitError(f"{prov_path} is missing or does not match its hash in {META}: the model directory is damaged")
        tensors = _load_safetensors(prov_path)
        grid = meta["sisa"]
        provenance = Provenance(tensors["shard_of"].numpy(), tensors["slice_of"].numpy(), grid["shards"], grid["slices"])
        return cls(path, meta, provenance)

    def update_meta(self, **entries: Any) -> None:
        self.meta = {**self.meta, **entries}
        write_json_atomic(self.path / META, self.meta)

    @property
    def ledger_path(self) -> Path:
        return self.path / LEDGER

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK

    # -- models --------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        spec = self.meta["model"]
        return build_model(spec["name"], **spec["args"])

    def model_from_state(self, state: dict[str, torch.Tensor]) -> nn.Module:
        """A CPU model with these weights, in eval mode, channels-last if convolutional (2x faster inference)."""
        from ..training import prepare_model

        model = self.build_model()
        model.load_state_dict(state, strict=True)
        return prepare_model(model, torch.device("cpu")).eval()

    # -- stage checkpoints ---------------------------------------------------------------------------
    def stage_dir(self, shard: int, stage: int, key: str) -> Path:
        return self.path / STAGES / f"shard-{shard:02d}" / f"stage-{stage:02d}-{key[:24]}"

    def has_stage(self, shard: int, stage: int, key: str) -> bool:
        return (self.stage_dir(shard, stage, key) / "manifest.json").is_file()

    def save_stage(self, shard: int, stage: int, key: str, model: nn.Module, extra: dict) -> Path:
        spec = self.meta["model"]
        return save_checkpoint(
            self.stage_dir(shard, stage, key), model, model_name=spec["name"], model_args=spec["args"],
            dataset=_DataIdentity(self.meta["dataset"]), kind="sisa-stage",
            extra={"sisa_stage": {"shard": shard, "stage": stage, "key": key, **extra}},
        )

    def load_stage(self, shard: int, stage: int, key: str) -> dict[str, torch.Tensor] | None:
        """The stage's weights, None if it was never written; :class:`StageCorrupted` if it fails verification."""
        path = self.stage_dir(shard, stage, key)
        if not path.exists():
            return None
        try:
            checkpoint = load_checkpoint(path)
        except UnlearnKitError as exc:
            raise StageCorrupted(f"stage checkpoint {path}: {exc}") from None
        recorded = checkpoint.manifest.get("sisa_stage", {})
        if recorded.get("key") != key or recorded.get("shard") != shard or recorded.get("stage") != stage:
            raise StageCorrupted(f"stage checkpoint {path} records another shard/stage/history than its name says")
        return {k: v.detach().clone() for k, v in checkpoint.model.state_dict().items()}

    def quarantine_stage(self, shard: int, stage: int, key: str) -> Path:
        """Move a corrupted stage checkpoint aside (kept for inspection, never read again)."""
        path = self.stage_dir(shard, stage, key)
        aside = path.with_name(path.name + ".corrupt-" + _dt.datetime.now().strftime("%Y%m%d%H%M%S%f"))
        os.replace(path, aside)
        return aside

    def collect_stages(self, keep: set[Path]) -> int:
        """Delete stage checkpoints not in ``keep`` (stale histories that contain deleted samples); returns the count."""
        removed = 0
        root = self.path / STAGES
        if not root.is_dir():
            return 0
        for shard_dir in root.iterdir():
            if not shard_dir.is_dir():
                continue
            for stage_dir in shard_dir.iterdir():
                if stage_dir not in keep:
                    shutil.rmtree(stage_dir, ignore_errors=True)
                    removed += 1
        return removed

    # -- versions ------------------------------------------------------------------------------------
    def version_dir(self, number: int) -> Path:
        return self.path / VERSIONS / f"v{number:06d}"

    def version_numbers(self) -> list[int]:
        root = self.path / VERSIONS
        if not root.is_dir():
            return []
        found = []
        for entry in root.iterdir():
            match = _VERSION_DIR.match(entry.name)
            if match and (entry / VERSION_INFO).is_file():
                found.append(int(match.group(1)))
        return sorted(found)

    def current_version(self) -> int:
        numbers = self.version_numbers()
        if not numbers:
            raise UnlearnKitError(f"{self.path} has no trained version yet; finish training with `unlearnkit sisa train` "
                                  "(re-running it with the same options resumes)")
        return numbers[-1]

    def read_version_info(self, number: int) -> dict:
        path = self.version_dir(number) / VERSION_INFO
        if not path.is_file():
            raise UnlearnKitError(f"version {number} of {self.path} does not exist")
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UnlearnKitError(f"{path} is corrupted (not valid JSON: {exc})") from None

    def write_version(self, number: int, states: list[dict[str, torch.Tensor]], status: np.ndarray, info: dict) -> Path:
        target = self.version_dir(number)
        if target.exists():
            raise UnlearnKitError(f"version {number} of {self.path} already exists; versions are never overwritten")
        weights = {f"shard{k}.{name}": t.detach().cpu().contiguous() for k, state in enumerate(states) for name, t in state.items()}
        with atomic_path(target) as staged:
            staged.mkdir()
            save_file(weights, str(staged / WEIGHTS))
            save_file({"status": torch.from_numpy(np.ascontiguousarray(status, dtype=np.uint8))}, str(staged / STATUS))
            record = {
                "version": number,
                **info,
                "files": {name: sha256_file(staged / name) for name in (WEIGHTS, STATUS)},
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            }
            (staged / VERSION_INFO).write_text(json.dumps(record, indent=2, default=str) + "\n")
        return target

    def read_version(self, number: int | None = None) -> Version:
        number = self.current_version() if number is None else number
        info = self.read_version_info(number)
        folder = self.version_dir(number)
        for name, digest in info.get("files", {}).items():
            path = folder / name
            if not path.is_file():
                raise UnlearnKitError(f"version {number} of {self.path} lacks {name}: the directory is damaged")
            if sha256_file(path) != digest:
                raise UnlearnKitError(f"{path} does not match the SHA-256 in its version.json: the file is corrupted")
        weights = _load_safetensors(folder / WEIGHTS)
        status = _load_safetensors(folder / STATUS)["status"].numpy().astype(np.uint8)
        shards = self.provenance.shards
        states: list[dict[str, torch.Tensor]] = [{} for _ in range(shards)]
        for name, tensor in weights.items():
            prefix, _, param = name.partition(".")
            states[int(prefix[len("shard"):])][param] = tensor
        if status.shape[0] != self.provenance.n:
            raise UnlearnKitError(f"version {number} of {self.path} has a status for {status.shape[0]} samples, not {self.provenance.n}")
        return Version(number, states, status, info)


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UnlearnKitError(f"{path} cannot be read as safetensors: {exc}") from None
