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
