"""What every command module shares: the :class:`Command` record and argument helpers.

A command module lists its sub-commands in ``COMMANDS``; :mod:`unlearnkit.cli` imports each module explicitly.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import UnlearnKitError


@dataclass(frozen=True)
class Command:
    """``unlearnkit NAME``: its one-line help, how it declares its arguments, and what it runs (-> exit code)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def parse_value(text: str) -> Any:
    """``--set`` values: JSON where it parses (numbers, true/false, lists), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as a dict (``-`` in keys becomes ``_``)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UnlearnKitError(f"bad --set {item!r}; use KEY=VALUE")
        out[key.strip().replace("-", "_")] = parse_value(value.strip())
    return out


def split_top_level(text: str) -> list[str]:
    """Split on commas outside square brackets: "a,b[x=1,y=2]" -> ["a", "b[x=1,y=2]"]."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    parts.append(current.strip())
    return [p for p in parts if p]


def add_data_args(p: argparse.ArgumentParser, dataset_default: str | None = "fashion-mnist") -> None:
    p.add_argument("--dataset", default=dataset_default,
                   help="data set name (see `unlearnkit info`); NAME[N_TRAIN,N_TEST] for a subset")
    p.add_argument("--data-dir", default=None,
                   help="folder with the data set's files (default: where the OS package puts them)")


def training_changes(args: argparse.Namespace) -> dict[str, Any]:
    """``--set`` training options plus the ``--epochs``/``--lr``/``--batch-size`` shortcuts."""
    changes = parse_sets(args.set)
    for key in ("epochs", "lr", "batch_size"):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key)
    return changes


# -- outputs (docs/safety.md) ------------------------------------------------------------------------------
def add_overwrite_arg(p: argparse.ArgumentParser, what: str = "an existing unlearnkit artefact of the same kind") -> None:
    p.add_argument("--overwrite", action="store_true",
                   help=f"replace {what} at the output (only once the new one is complete); without it an existing "
                        "artefact is refused. A folder that is not one, or that is or holds an input, is always refused")


def request_files(spec: str | None) -> list[str]:
    """The files a request spec reads (``ids:FILE``, ``memorized:K:FILE``): inputs an output must stay clear of."""
    if not spec or ":" not in spec:
        return []
    kind, _, rest = spec.strip().partition(":")
    if kind == "ids":
        return [rest]
    if kind == "memorized" and ":" in rest:
        return [rest.split(":", 1)[1]]
    return []


def data_inputs(dataset: str | None, data_dir: str | None) -> list[str]:
    """The folder a data set is read from (its --data-dir, else the OS package's folder)."""
    if data_dir is not None:
        return [data_dir]
    from ..data import DATASET_INFO

    base = (dataset or "").split("[", 1)[0].strip()
    default = (DATASET_INFO.get(base) or {}).get("default_dir")
    return [default] if default else []


def check_output(path, kind: str, args: argparse.Namespace, inputs, *, option: str = "--out", resume: bool = False,
                 detail: str | None = None):
    """:func:`unlearnkit.outputs.prepare_output` for a command's output, before any expensive work."""
    from ..outputs import prepare_output

    return prepare_output(path, kind, inputs=inputs, overwrite=bool(getattr(args, "overwrite", False)), resume=resume,
                          detail=detail, option=option)


def printable(text: str) -> str:
    """``text`` with control characters (newlines, escape sequences) written as escapes: one safe terminal line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
