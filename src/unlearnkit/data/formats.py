"""Readers for the standard files of the image classification data sets, with no downloads.

* IDX (MNIST, Fashion-MNIST): gzipped or plain, the magic number says the element type and rank.
* CIFAR-10/100 "python version": pickled dicts. Pickle can run code, so these are read with an
  unpickler that only rebuilds plain containers and numpy arrays and refuses everything else.
* SVHN cropped digits: MATLAB ``.mat`` files read by SciPy; label 10 means digit 0.
"""

from __future__ import annotations

import gzip
import io
import pickle
from pathlib import Path

import numpy as np

from ..errors import UnlearnKitError

_IDX_TYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or plain) into a numpy array of its declared type and shape."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise UnlearnKitError(f"cannot read IDX file {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise UnlearnKitError(f"{path} is not an IDX file (bad magic number)")
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    rank = raw[3]
    header = 4 + 4 * rank
    if len(raw) < header:
        raise UnlearnKitError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise UnlearnKitError(
            f"{path}: IDX body has {len(raw) - header} bytes, shape {shape} needs {expected} (truncated?)"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, bytes, numbers and numpy arrays; refuses any other global."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
        # Protocol 5 (pickle.dumps(..., protocol=5), the default of some writers) rebuilds an array from its
        # in-band buffer with numpy's _frombuffer(buffer, dtype, shape, order); numpy refuses object dtypes there.
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if (module, name) in self._ALLOWED:
            if module.startswith("numpy.core.") and hasattr(np, "_core"):  # numpy 1.x names on numpy 2
                module = "numpy._core." + module[len("numpy.core."):]
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module[:60]}.{name[:60]} from a data file")


def read_cifar_batch(path: str | Path) -> dict:
    """Read one CIFAR python batch (``data_batch_1``, ``test``, ...) safely."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            batch = _ArraysOnlyUnpickler(io.BufferedReader(handle), encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, OverflowError, RecursionError, UnicodeDecodeError) as exc:
        raise UnlearnKitError(f"cannot read CIFAR batch {path}: {type(exc).__name__}: {str(exc)[:160]}") from None
    if not isinstance(batch, dict):
        raise UnlearnKitError(f"{path}: not a CIFAR batch (expected a dict)")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in batch.items()}


def cifar_images(batch: dict, path: Path) -> np.ndarray:
    data = batch.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        shape = data.shape if isinstance(data, np.ndarray) else type(data).__name__
        raise UnlearnKitError(f"{path}: CIFAR 'data' must be a uint8 array of N x 3072, got {shape}")
    return data.reshape(-1, 3, 32, 32)


def cifar_labels(batch: dict, key: str, path: Path) -> np.ndarray:
    if key not in batch:
        raise UnlearnKitError(f"{path}: CIFAR batch has no '{key}' entry")
    labels = batch[key]
    if isinstance(labels, np.ndarray):
        ok = labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer)
    else:
        ok = isinstance(labels, list) and all(isinstance(v, int) and not isinstance(v, bool) and -2**63 <= v < 2**63
                                              for v in labels)
    if not ok:
        raise UnlearnKitError(f"{path}: CIFAR '{key}' must be a list of integer labels")
    return np.asarray(labels, dtype=np.int64)


def read_svhn_mat(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an SVHN cropped-digits ``.mat`` file into (N x 3 x 32 x 32 uint8, N labels 0..9)."""
    from scipy.io import loadmat

    path = Path(path)
    try:
        mat = loadmat(path)
    except Exception as exc:  # scipy raises several types for malformed files
        raise UnlearnKitError(f"cannot read SVHN file {path}: {exc}") from exc
    if "X" not in mat or "y" not in mat:
        raise UnlearnKitError(f"{path}: SVHN .mat file needs 'X' and 'y' variables")
    x = np.asarray(mat["X"])
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise UnlearnKitError(f"{path}: SVHN 'X' must be 32 x 32 x 3 x N, got {x.shape}")
    y = np.asarray(mat["y"]).reshape(-1).astype(np.int64)
    y[y == 10] = 0
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)).astype(np.uint8), y
