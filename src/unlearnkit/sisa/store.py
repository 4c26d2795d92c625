"""The on-disk layout of a SISA model directory.

::

    MODEL/
      sisa.json                    recipe, grid, data set identity, cost calibration
      provenance.safetensors       shard_of[N], slice_of[N] (int16)
      stages/shard-KK/stage-RR-<key>/   one checkpoint (``checkpoint.py`` format) per trained stage,
                                   named by the hash of its training history (see ``layout.stage_keys``)
      versions/v000000/            the ensemble as trained; every request that changes it adds a new
      versions/v000001/ ...        version directory: weights.safetensors (all shards), status.safetensors
                                   (per-sample status), version.json (what produced it, file hashes),
                                   purged.json once its weights were purged (see below)
      ledger.sqlite                the request ledger (``unlearnkit.hybrid.ledger``)
      .lock                        the lock every process that changes the directory holds (``SisaStore.lock``)

Every directory and file is written to a temporary sibling (``.tmp-*``) and renamed into place
(:func:`unlearnkit._util.atomic_path`), so a crash leaves either the old state or the new one, plus a
temporary folder that the next holder of the lock removes. Version directories are never overwritten.

**What is kept and what is purged** (:meth:`SisaStore.purge_plan`). After a deletion request commits its
version, the store removes every artefact that a later request cannot need and that may hold a deleted
sample: stage checkpoints whose training history is not one of the current histories (every history that
contains a deleted id, exactly or approximately deleted), quarantined corrupt checkpoints unless their
history is a current one (then they held no deleted id), every temporary folder, and the weights of
superseded versions beyond the retention setting (``sisa.json`` ``retention.keep_versions``, default 0:
only the current version's weights). A superseded version keeps its ``version.json`` (the content hashes
of the files it had, what produced it), its per-sample status and a ``purged.json`` that says when and by
which request its weights were removed: the audit trail. Each stage checkpoint records the ids its history
left out (``sisa_stage.excluded``), so what it was trained on is known from the provenance alone
(:meth:`SisaStore.trained_on`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import _fault
from .._util import atomic_path, read_json_record, sha256_file, write_json_atomic
from ..checkpoint import confined, load_checkpoint, save_checkpoint
from ..errors import UnlearnKitError
from ..models import build_model
from .layout import ACTIVE, DELETED_EXACT, Provenance

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
PURGED = "purged.json"
TEMPORARY_PREFIX = ".tmp-"
CORRUPT_MARK = ".corrupt-"
_VERSION_DIR = re.compile(r"^v(\d{6})$")
_STAGE_DIR = re.compile(r"^stage-(\d{2})-([0-9a-f]{24})(?:\.corrupt-\d+)?$")


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
            if existing.meta["root"] != meta["root"] or not np.array_equal(
                existing.provenance.shard_of, provenance.shard_of
            ):
                raise UnlearnKitError(
                    f"{path} holds an unfinished SISA training run with a different recipe; "
                    "remove it or choose another --out"
                )
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
        for name in (LOCK, LEDGER):  # files opened for writing must not lead out of the folder
            if (path / name).is_symlink():
                raise UnlearnKitError(f"damaged model directory: {path / name} is a symbolic link")
        prov_path = path / PROVENANCE
        if not prov_path.is_file() or sha256_file(prov_path) != meta.get("provenance_sha256"):
            raise UnlearnKitError(
                f"{prov_path} is missing or does not match its hash in {META}: the model directory is damaged"
            )
        tensors = _load_safetensors(prov_path)
        grid = meta["sisa"]
        provenance = Provenance(
            tensors["shard_of"].numpy(), tensors["slice_of"].numpy(), grid["shards"], grid["slices"]
        )
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

    @contextlib.contextmanager
    def lock(self, echo: bool = False) -> Iterator[None]:
        """Exclusive lock on the model directory (released by the kernel if the process dies). Whoever holds it
        may change the directory, and may remove the temporary folders (:meth:`temporaries`) of killed writers."""
        handle = _open_lock(self.lock_path)
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if echo:
                    print(
                        f"waiting for another unlearnkit process working on {self.path} ...",
                        file=sys.stderr,
                        flush=True,
                    )
                fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    @property
    def keep_versions(self) -> int:
        """How many superseded versions keep their weights (for rollback); default 0: only the current one."""
        value = (self.meta.get("retention") or {}).get("keep_versions", 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UnlearnKitError(f"{self.path / META}: retention.keep_versions must be an integer >= 0, not {value!r}")
        return value

    def set_keep_versions(self, keep: int) -> None:
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            raise UnlearnKitError(f"--keep-versions must be an integer >= 0, not {keep!r}")
        self.update_meta(retention={**(self.meta.get("retention") or {}), "keep_versions": keep})

    def temporaries(self) -> list[Path]:
        """Leftovers of writes a killed process never renamed into place (only ever removed under the lock)."""
        found = []
        for folder in [self.path, self.path / VERSIONS, self.path / STAGES, *(self.path / STAGES).glob("shard-*")]:
            if folder.is_dir():
                found += sorted(folder.glob(TEMPORARY_PREFIX + "*"))
        return found

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

    def save_stage(self, shard: int, stage: int, key: str, model: nn.Module, extra: dict) -> Path:
        """Write a stage checkpoint. ``extra`` must name the ids its history left out (``excluded``)."""
        spec = self.meta["model"]
        target = self.stage_dir(shard, stage, key)
        with atomic_path(target) as staged:
            save_checkpoint(
                staged,
                model,
                model_name=spec["name"],
                model_args=spec["args"],
                dataset=_DataIdentity(self.meta["dataset"]),
                kind="sisa-stage",
                extra={"sisa_stage": {"shard": shard, "stage": stage, "key": key, **extra}},
            )
            _fault.point("stage-write")
        return target

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

    def current_stage_dirs(self, status: np.ndarray) -> set[Path]:
        """Stage checkpoints that a future exact deletion may resume from: those of the current histories.

        Histories that still contain deleted ids (exactly or approximately) are never resumed from again, so
        :meth:`purge_plan` lists every other stage checkpoint for removal."""
        removed = status != ACTIVE
        return {
            self.stage_dir(shard, stage, key)
            for shard in range(self.provenance.shards)
            for stage, key in enumerate(self.provenance.stage_keys(shard, removed, self.meta["root"]))
        }

    # -- purging -------------------------------------------------------------------------------------
    def purge_plan(self, status: np.ndarray, current: int) -> list[dict]:
        """What must go now that ``current`` (whose per-sample status is ``status``) is the current version.

        Items are ``{"kind", "path" (relative), "detail"}``; see the module doc for the rules. Called under
        :meth:`lock`; removing the items is :meth:`purge`.
        """
        items: list[dict] = []
        removed = status != ACTIVE
        keep = self.current_stage_dirs(status)
        current_keys = {d.name.rsplit("-", 1)[-1] for d in keep}
        root = self.path / STAGES
        for shard_dir in sorted(root.iterdir()) if root.is_dir() else []:
            if not shard_dir.is_dir() or shard_dir.name.startswith(TEMPORARY_PREFIX):
                continue
            for stage_dir in sorted(shard_dir.iterdir()):
                if stage_dir in keep or stage_dir.name.startswith(TEMPORARY_PREFIX):
                    continue
                match = _STAGE_DIR.match(stage_dir.name)
                quarantined = CORRUPT_MARK in stage_dir.name
                if quarantined and match and match.group(2) in current_keys:
                    continue  # a current history: it held no deleted id; kept for inspection
                detail = {"reason": "its training history is not a current one"}
                held = self._stage_holds(stage_dir, removed)
                if held is not None:
                    detail.update(held)
                    if held.get("deleted_ids_held"):
                        detail["reason"] = "trained on deleted ids"
                items.append(
                    {
                        "kind": "quarantined" if quarantined else "stage",
                        "path": str(stage_dir.relative_to(self.path)),
                        "detail": detail,
                    }
                )
        keep_versions = self.keep_versions
        for number in self.version_numbers():
            if number >= current - keep_versions:
                continue
            folder = self.version_dir(number)
            if (folder / PURGED).is_file() and not (folder / WEIGHTS).exists():
                continue
            info = self.read_version_info(number)
            items.append(
                {
                    "kind": "version-weights",
                    "path": str((folder / WEIGHTS).relative_to(self.path)),
                    "detail": {
                        "version": number,
                        "sha256": (info.get("files") or {}).get(WEIGHTS),
                        "request_id": info.get("request_id"),
                        "reason": f"superseded by version {current}; retention keeps {keep_versions} earlier "
                        "version(s)",
                    },
                }
            )
        for temporary in self.temporaries():
            items.append(
                {
                    "kind": "temporary",
                    "path": str(temporary.relative_to(self.path)),
                    "detail": {"reason": "left by an interrupted write"},
                }
            )
        return items

    def purge(self, item: dict, *, request_id: str | None = None, when: str | None = None) -> None:
        """Remove one planned item (idempotent: an item already gone is fine)."""
        path = self._inside(item["path"])
        if item["kind"] == "version-weights":
            folder = path.parent
            if path.exists() or not (folder / PURGED).is_file():
                write_json_atomic(
                    folder / PURGED,
                    {
                        "purged": when or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                        "request_id": request_id,
                        "files": {WEIGHTS: item["detail"].get("sha256")},
                        "reason": item["detail"].get("reason"),
                    },
                )
                path.unlink(missing_ok=True)
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        _fault.point("purge")

    def _inside(self, relative: str) -> Path:
        """``relative`` below the model directory; anything that would leave it (a ledger row edited to point
        elsewhere, a symlinked folder) is refused."""
        rel = Path(relative)
        path = self.path / rel
        if (
            not rel.parts
            or rel.is_absolute()
            or ".." in rel.parts
            or not path.parent.resolve().is_relative_to(self.path.resolve())
        ):
            raise UnlearnKitError(
                f"refusing to purge {relative!r}: not inside {self.path}: the model directory is damaged"
            )
        return path

    def _stage_holds(self, stage_dir: Path, removed: np.ndarray) -> dict | None:
        """What a stage checkpoint was trained on, from its manifest and the provenance (None if unreadable)."""
        try:
            record = json.loads((stage_dir / "manifest.json").read_text()).get("sisa_stage") or {}
            shard, stage = int(record["shard"]), int(record["stage"])
            excluded = np.asarray(record["excluded"], dtype=np.int64)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        held = self.stage_training_ids(shard, stage, excluded)
        return {"shard": shard, "stage": stage, "key": record.get("key"), "deleted_ids_held": int(removed[held].sum())}

    def stage_training_ids(self, shard: int, stage: int, excluded: np.ndarray) -> np.ndarray:
        """The ids stage ``stage`` of ``shard`` trained on when its history left ``excluded`` out."""
        prov = self.provenance
        members = prov.members[shard]
        return np.setdiff1d(members[prov.member_slices[shard] < stage], excluded)

    def trained_on(self, deleted: np.ndarray) -> list[dict]:
        """Every artefact under the model directory that was trained on one of ``deleted`` (bool mask [N]).

        Judged from content, not names: a stage checkpoint by its manifest's shard, stage and ``excluded``
        ids through the provenance, with its recorded key re-derived from them (a mismatch, or a manifest
        that cannot be read, counts as holding deleted ids: nothing proves otherwise); a version by its
        per-sample status (its weights hold every id not exactly deleted in it). The current version's
        shards that hold approximately deleted ids are listed with ``"approximate": True``: that is what an
        approximate deletion is, until the next exact retrain of the shard.
        """
        found = []
        deleted = np.asarray(deleted, dtype=bool)
        current = self.current_version() if self.version_numbers() else None
        for manifest in sorted(self.path.rglob("manifest.json")):
            folder = manifest.parent
            try:
                record = json.loads(manifest.read_text()).get("sisa_stage") or {}
                shard, stage = int(record["shard"]), int(record["stage"])
                excluded = np.asarray(record["excluded"], dtype=np.int64)
                mask = np.zeros(self.provenance.n, dtype=bool)
                mask[excluded] = True
                verified = self.provenance.stage_keys(shard, mask, self.meta["root"])[stage] == record["key"]
            except (OSError, ValueError, KeyError, TypeError, IndexError):
                verified = False
            if not verified:
                if (folder / "weights.safetensors").exists():
                    found.append({"path": str(folder.relative_to(self.path)), "kind": "unverifiable checkpoint"})
                continue
            held = int(deleted[self.stage_training_ids(shard, stage, excluded)].sum())
            if held:
                found.append({"path": str(folder.relative_to(self.path)), "kind": "stage", "deleted_ids_held": held})
        for weights in sorted(self.path.rglob(WEIGHTS)):
            folder = weights.parent
            if (folder / "manifest.json").exists():
                continue  # a checkpoint: judged above
            try:
                status = _load_safetensors(folder / STATUS)["status"].numpy()
                match = _VERSION_DIR.match(folder.name)
                number = int(match.group(1)) if match and folder.parent == self.path / VERSIONS else None
            except (UnlearnKitError, KeyError):
                found.append({"path": str(weights.relative_to(self.path)), "kind": "unverifiable weights"})
                continue
            held_mask = deleted & (status != DELETED_EXACT)
            if not held_mask.any():
                continue
            approximate = number is not None and number == current and not (held_mask & (status == ACTIVE)).any()
            found.append(
                {
                    "path": str(weights.relative_to(self.path)),
                    "kind": "version",
                    "version": number,
                    "deleted_ids_held": int(held_mask.sum()),
                    "approximate": approximate,
                }
            )
        return found

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
            raise UnlearnKitError(
                f"{self.path} has no trained version yet; finish training with `unlearnkit sisa train` "
                "(re-running it with the same options resumes)"
            )
        return numbers[-1]

    def read_version_info(self, number: int) -> dict:
        path = self.version_dir(number) / VERSION_INFO
        if not path.is_file():
            raise UnlearnKitError(f"version {number} of {self.path} does not exist")
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UnlearnKitError(f"{path} is corrupted (not valid JSON: {exc})") from None

    def purged_info(self, number: int) -> dict | None:
        """When and why a version's weights were purged (None while it has them)."""
        path = self.version_dir(number) / PURGED
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
            raise UnlearnKitError(f"{path} is corrupted (not valid JSON: {exc})") from None

    def _refuse_purged(self, number: int) -> None:
        purged = self.purged_info(number)
        if purged is not None:
            raise UnlearnKitError(
                f"the weights of version {number} of {self.path} were purged on {purged.get('purged')} "
                f"(retention keeps {self.keep_versions} superseded version(s)); its version.json and "
                "status remain as the audit trail"
            )

    def has_weights(self, number: int) -> bool:
        return (self.version_dir(number) / WEIGHTS).is_file() and not (self.version_dir(number) / PURGED).is_file()

    def write_version(self, number: int, states: list[dict[str, torch.Tensor]], status: np.ndarray, info: dict) -> Path:
        target = self.version_dir(number)
        if target.exists():
            raise UnlearnKitError(f"version {number} of {self.path} already exists; versions are never overwritten")
        weights = {
            f"shard{k}.{name}": t.detach().cpu().contiguous()
            for k, state in enumerate(states)
            for name, t in state.items()
        }
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
            _fault.point("version-written")
        return target

    def read_status(self, number: int) -> np.ndarray:
        """The per-sample status of a version (verified against its hash), without reading its weights."""
        info = self.read_version_info(number)
        path = self.version_dir(number) / STATUS
        digest = (info.get("files") or {}).get(STATUS)
        if not path.is_file() or sha256_file(path) != digest:
            raise UnlearnKitError(
                f"{path} is missing or does not match the SHA-256 in its version.json: the file is corrupted"
            )
        status = _load_safetensors(path)["status"].numpy().astype(np.uint8)
        if status.shape != (self.provenance.n,):
            raise UnlearnKitError(
                f"version {number} of {self.path} has a status for {status.shape[0]} samples, not {self.provenance.n}"
            )
        return status

    def read_version(self, number: int | None = None) -> Version:
        number = self.current_version() if number is None else number
        info = self.read_version_info(number)
        folder = self.version_dir(number)
        self._refuse_purged(number)
        files = info.get("files", {})
        if (
            not isinstance(files, dict)
            or not set(files) <= {WEIGHTS, STATUS}
            or not all(isinstance(v, str) for v in files.values())
        ):
            raise UnlearnKitError(
                f"damaged model directory: {folder / VERSION_INFO} names files other than {WEIGHTS} and {STATUS}"
            )
        try:
            for name, digest in files.items():
                path = confined(folder, name, f"{folder / VERSION_INFO}'s file")
                if not path.is_file():
                    raise UnlearnKitError(f"version {number} of {self.path} lacks {name}: the directory is damaged")
                if sha256_file(path) != digest:
                    raise UnlearnKitError(
                        f"{path} does not match the SHA-256 in its version.json: the file is corrupted"
                    )
            weights = _load_safetensors(folder / WEIGHTS)
        except (UnlearnKitError, OSError):
            self._refuse_purged(number)  # purged while we read it (another process committed a newer version)
            raise
        status = _load_safetensors(folder / STATUS)["status"].numpy().astype(np.uint8)
        shards = self.provenance.shards
        states: list[dict[str, torch.Tensor]] = [{} for _ in range(shards)]
        for name, tensor in weights.items():
            prefix, _, param = name.partition(".")
            states[int(prefix[len("shard") :])][param] = tensor
        if status.shape[0] != self.provenance.n:
            raise UnlearnKitError(
                f"version {number} of {self.path} has a status for {status.shape[0]} samples, not {self.provenance.n}"
            )
        return Version(number, states, status, info)


def _open_lock(path: Path):
    """The lock file, opened without following a symbolic link (a link could lead the lock out of the folder)."""
    import stat

    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnlearnKitError(f"damaged model directory: {path} is a symbolic link") from None
        raise UnlearnKitError(f"cannot open {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnlearnKitError(f"damaged model directory: {path} is not a regular file")
    return os.fdopen(fd, "a+")


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UnlearnKitError(f"{path} cannot be read as safetensors: {exc}") from None
