"""Users' own data by spec: ``imagefolder:PATH``, ``npz:PATH``, ``hf:PATH?image=img&label=label`` and
``prepared:DIR`` (a disk-backed copy written by ``unlearnkit data prepare``).

A spec is ``KIND:PATH`` with options as a query string (``?resize=32x32``, ``?image=img&label=label``); the
data set's name is the canonical spec (absolute path, options sorted), which is what checkpoints record and
load again. ``data_dir``, when given, replaces PATH (data that moved; the fingerprint still has to match).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qsl

from ..errors import UnlearnKitError
from . import hf, imagefolder, npz
from .images import file_signature, materialize

# kind -> (plan(path, options), options it accepts, files whose stats key the cache)
READERS = {
    "imagefolder": (imagefolder.plan, imagefolder.OPTIONS, imagefolder.signature_files),
    "npz": (npz.plan, npz.OPTIONS, lambda p: [Path(p)]),
    "hf": (hf.plan, hf.OPTIONS, hf.signature_files),
}
KINDS = (*READERS, "prepared")
# What `unlearnkit info` lists beside the registered data sets.
READER_INFO = {
    "imagefolder:PATH": {"format": "your images: PATH/train/<class>/*.png|jpg, PATH/test/<class>/* (Pillow)"},
    "npz:PATH": {"format": "your arrays: x_train, y_train, x_test, y_test in an .npz"},
    "hf:PATH": {"format": "Hugging Face datasets (save_to_disk or parquet), ?image=COL&label=COL, offline"},
    "prepared:DIR": {"format": "a memory-mapped copy written by `unlearnkit data prepare`"},
}

def is_spec(name: str) -> bool:
    return name.partition(":")[0] in KINDS and ":" in name


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    kind, _, rest = spec.partition(":")
    if kind not in KINDS:
        raise UnlearnKitError(f"unknown data kind {kind!r}; use {', '.join(k + ':PATH' for k in KINDS)}")
    path, _, query = rest.partition("?")
    if not path:
        raise UnlearnKitError(f"{spec!r} names no path; use {kind}:PATH")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise UnlearnKitError(f"bad options {query!r} in {spec!r}; use ?key=value&key=value") from None
    options = dict(pairs)
    if len(options) != len(pairs):
        raise UnlearnKitError(f"an option is repeated in {spec!r}")
    known = READERS[kind][1] if kind in READERS else {}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UnlearnKitError(
            f"{kind}: has no option {unknown[0]!r}" + (f"; it takes {', '.join(known)}" if known else "")
        )
    return kind, path, options


def plan_spec(spec: str, data_dir: str | os.PathLike | None = None):
    """The :class:`~unlearnkit.data.images.Plan` for a reader spec (``prepared:`` has none: it is already decoded)."""
    kind, path, options = parse_spec(spec)
    if kind == "prepared":
        raise UnlearnKitError("prepared: data is already prepared")
    return READERS[kind][0](data_dir if data_dir is not None else path, options)


def cache_key(spec: str, data_dir: str | os.PathLike | None = None) -> tuple | None:
    """What identifies the decoded data of a reader spec (changes when any of its files does); None for
    ``prepared:`` data, which is mapped, not decoded, and needs no cache."""
    kind, path, options = parse_spec(spec)
    if kind == "prepared":
        return None
    path = str(data_dir) if data_dir is not None else path
    return (kind, str(Path(path).resolve()), tuple(sorted(options.items())), file_signature(READERS[kind][2](path)))


def load_spec(spec: str, data_dir: str | os.PathLike | None = None) -> dict:
    """The arguments of the :class:`~unlearnkit.data.Dataset` a spec names (``data_dir`` replaces its path)."""
    from .prepared import load_prepared

    kind, path, options = parse_spec(spec)
    path = str(data_dir) if data_dir is not None else path
    if kind == "prepared":
        return load_prepared(path, options)
    return materialize(READERS[kind][0](path, options))
