"""Disk-backed data sets: ``unlearnkit data prepare`` decodes a data set once into memory-mapped arrays, and
``prepared:DIR`` loads them without reading them into memory.

The folder holds ``x_train.npy``/``x_test.npy`` (float32 N x C x H x W in [0, 1], the exact values the
in-memory reader produces), ``y_train.npy``/``y_test.npy`` (int64) and ``prepared.json``. Loading maps the
image files copy-on-write (``np.load(mmap_mode="c")``; the files are never written) and wraps them as torch
tensors, so :class:`~unlearnkit.data.Source` batching, forget/retain views, ``predict_logits`` and every
method read exactly the rows they index and nothing else — the same batches as in memory, bit for bit.

Memory bound: the process holds the labels and index vectors (about 24 bytes per sample), one batch, and
the chunk being hashed at load (``CHUNK`` images). The images' pages live in the OS page cache, which the
kernel reclaims under pressure. Loading re-hashes the images in chunks (one sequential read) and refuses
files that no longer match the fingerprint recorded when they were prepared.
Operations that change images (``backdoor:``/``feature:`` requests) copy the training set in memory.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

import numpy as np
import torch

from .._util import atomic_path, read_json_record, versions
from ..errors import UnlearnKitError
from .images import SPLITS, Plan, dataset_arguments

FORMAT = "unlearnkit-prepared/1"
META = "prepared.json"


def prepare(plan: Plan, out: str | os.PathLike, *, overwrite: bool = False, echo: bool = False) -> Path:
    """Decode ``plan`` chunk by chunk into memory-mapped ``.npy`` files in ``out`` (written atomically).

    ``out`` follows the rule of every writing command (:func:`unlearnkit.outputs.prepare_output`): never inside
    the input, and an existing prepared data set is replaced only with ``overwrite``."""
    from ..outputs import prepare_output

    out = prepare_output(out, "prepared", inputs=[plan.source], overwrite=overwrite)
    with atomic_path(out) as staged:
        staged.mkdir()
        for split in SPLITS:
            x = np.lib.format.open_memmap(staged / f"x_{split}.npy", mode="w+", dtype=np.float32,
                                          shape=(plan.count(split), *plan.shape))
            for start, block in plan.chunks(split):
                x[start : start + block.shape[0]] = block
                if echo and (start // block.shape[0]) % 20 == 0:
                    print(f"  {split}: {start + block.shape[0]}/{plan.count(split)} images", flush=True)
            x.flush()
            del x
            np.save(staged / f"y_{split}.npy", plan.labels[split])
        data = _open(staged, plan.name, plan.source, plan.class_names)  # statistics of what was written
        meta = {
            "format": FORMAT,
            "name": plan.name,
            "source": plan.source,
            "class_names": list(plan.class_names),
            "shape": list(plan.shape),
            "n_train": plan.count("train"),
            "n_test": plan.count("test"),
            "fingerprint": data["stats"][2],
            "bytes": sum((staged / f"x_{s}.npy").stat().st_size for s in SPLITS),
            "versions": versions(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        (staged / META).write_text(json.dumps(meta, indent=2) + "\n")
        del data
    return out


def _map(path: Path, dtype: np.dtype, what: str) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UnlearnKitError(f"cannot read {path} ({what}): {exc}") from None
    if array.dtype != dtype:
        raise UnlearnKitError(f"{path} holds {array.dtype}, expected {dtype}")
    return array


def _open(root: Path, name: str, source: str, class_names):
    tensors = {}
    for split in SPLITS:
        x = _map(root / f"x_{split}.npy", np.dtype(np.float32), "images")
        y = np.load(root / f"y_{split}.npy", allow_pickle=False)
        if x.ndim != 4 or y.ndim != 1 or x.shape[0] != y.shape[0] or y.dtype != np.int64:
            raise UnlearnKitError(f"{root}: {split} arrays do not fit together ({x.shape}, {y.dtype} {y.shape})")
        tensors[split] = (torch.from_numpy(x), torch.from_numpy(y))
    return dataset_arguments(f"prepared:{root}", source, tuple(class_names), *tensors["train"], *tensors["test"])


def load_prepared(root: str | os.PathLike, options: dict[str, str] | None = None) -> dict:
    """A prepared data set, memory-mapped (the arguments of a Dataset); its fingerprint is checked against the
    one written at prepare time."""
    if options:
        raise UnlearnKitError(f"prepared: data sets take no options (got {', '.join(options)})")
    root = Path(root).resolve()
    if not (root / META).is_file():
        raise UnlearnKitError(f"{root} is not a prepared data set (no {META}); make one with `unlearnkit data prepare`")
    meta = read_json_record(root / META, FORMAT, "a prepared data set")
    try:
        data = _open(root, f"prepared:{root}", meta["name"], meta["class_names"])
    except KeyError as exc:
        raise UnlearnKitError(f"{root / META} lacks {exc}") from None
    if data["stats"][2] != meta.get("fingerprint"):
        raise UnlearnKitError(f"the arrays in {root} have fingerprint {data['stats'][2]}, but {META} says "
                              f"{meta.get('fingerprint')}: they changed since `data prepare`; prepare them again")
    return data
