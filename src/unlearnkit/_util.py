"""Small shared helpers: atomic file writes, hashing, seeding, device choice, version records."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError

from .errors import UnlearnKitError


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_tensors(*tensors: torch.Tensor) -> str:
    """Hash of the raw bytes of tensors (with their dtypes and shapes, so a reshape changes the hash)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    Works for files and directories. An exception (or a kill) leaves ``path`` untouched and only a
    ``.tmp-NAME-PID-*`` sibling behind (and an ``.owner`` file with the pid's start time); the next write of ``path``
    (or ``unlearnkit gc``) removes such folders once their writer is gone. Every OS error (no permission, a
    full device, a read-only file system, ...) becomes one :class:`UnlearnKitError` naming ``path``.
    """
    from .outputs import OWNER, owner_record, remove_stale_temps, temp_prefix

    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(target)
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(target.name), dir=target.parent))
    except OSError as exc:
        raise UnlearnKitError(f"cannot write {target}: {_reason(exc)}") from None
    staged = tmp / target.name
    try:
        (tmp / OWNER).write_text(owner_record())
        yield staged
        if not staged.exists():
            raise RuntimeError(f"nothing was written to {staged}")
        if target.is_dir() and not target.is_symlink():
            # Directories cannot be replaced by rename(2); move the old one aside first so that the
            # target is never half-written (it is briefly absent, never mixed).
            old = tmp / (target.name + ".old")
            os.replace(target, old)
            os.replace(staged, target)
        else:
            os.replace(staged, target)
        _fsync_dir(target.parent)
    except OSError as exc:
        raise UnlearnKitError(f"cannot write {target}: {_reason(exc)}") from None
    except SafetensorError as exc:  # its I/O errors (a full device) are not OSErrors
        raise UnlearnKitError(f"cannot write {target}: {str(exc)[:200]}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _reason(exc: OSError) -> str:
    import errno

    if exc.errno == errno.ENAMETOOLONG:
        return "the name is too long"
    return exc.strerror or str(exc)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_json_record(path: str | os.PathLike, fmt: str, what: str) -> dict:
    """A JSON object from ``path`` whose ``format`` is ``fmt``; any problem is one UnlearnKitError naming the
    file (``what`` says what the file should have been, e.g. "an unlearnkit checkpoint manifest")."""
    from .errors import UnlearnKitError

    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except OSError as exc:
        raise UnlearnKitError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UnlearnKitError(f"{path} is corrupted (not valid JSON: {exc})") from None
    if not isinstance(record, dict) or record.get("format") != fmt:
        raise UnlearnKitError(f"{path} is not {what} ({fmt})")
    return record


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write a matplotlib figure as PNG atomically (creating folders) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as handle:
            json.dump(obj, handle, indent=2, sort_keys=False, default=_json_default)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; anything else is passed to ``torch.device``."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UnlearnKitError(f"unknown device {device!r}: use auto, cpu or cuda[:N]") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UnlearnKitError(f"device {device!r} asked for, but this torch build sees no CUDA device")
    return resolved


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global generator (model initialisation) and return a CPU generator for data order."""
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def versions() -> dict[str, str]:
    import numpy
    import sklearn

    from ._version import __version__

    return {
        "unlearnkit": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scikit-learn": sklearn.__version__,
        "python": sys.version.split()[0],
    }


def machine() -> dict[str, Any]:
    """What a benchmark ran on, recorded beside every figure."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
