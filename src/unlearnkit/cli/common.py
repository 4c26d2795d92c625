"""What every command module shares: the :class:`Command` record and argument helpers.

A command module lists its sub-commands in ``COMMANDS``; :mod:`unlearnkit.cli` imports each module explicitly.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import UnlearnKitError
from ..options import Declared, declare, options_of, parse_text

# Seeds are stored in manifests and records and fed to torch.manual_seed / numpy; keep them in uint32.
SEED_MAX = 2**32 - 1


@dataclass(frozen=True)
class Command:
    """``unlearnkit NAME``: its one-line help, how it declares its arguments, and what it runs (-> exit code)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def parse_value(text: str) -> Any:
    """``--set`` values: JSON where it parses (numbers, true/false, null, lists), ``nan``/``inf`` as floats (so that
    they are refused as out of range, not as strings), else the plain string."""
    return parse_text(text)


def command_flags(command: str, config: type) -> type:
    """Declare ``config``'s fields as the flags of ``unlearnkit COMMAND`` (field ``batch_size`` is ``--batch-size``):
    they are listed by ``unlearnkit info`` and ``unlearnkit.options.declared("command")``, and :func:`add_flags`
    adds them to a parser."""
    return declare("command", command, config, flags=True)


def add_flags(p: argparse.ArgumentParser, config: type, *, only: tuple[str, ...] | None = None,
              unset: str | None = None) -> None:
    """Add declared options of ``config`` as ``--flags`` whose values are checked against their declaration while
    the command line is parsed — before the command runs — so a bad value is one line naming the flag, its type and
    its range (the :class:`UnlearnKitError` leaves ``parse_args`` and :func:`unlearnkit.cli.main` prints it).

    ``only`` picks fields; ``unset`` makes every default None ("not given": e.g. ``train --lr`` overrides the
    recipe's learning rate only when given) and says what applies then (e.g. "the recipe's"). Flags of another owner's
    options (the training recipe's ``--epochs``)
    reuse that owner's declaration rather than declaring the option again."""
    for name, d in options_of(config).items():
        if only is not None and name not in only:
            continue
        flag = "--" + name.replace("_", "-")
        d = dataclasses.replace(d, flag=flag)
        if is_switch(d):  # a bool that is off unless given: ``--compile``
            p.add_argument(flag, action="store_true", dest=name, help=d.help)
            continue
        required = d.default is dataclasses.MISSING
        kwargs: dict[str, Any] = {"type": _checker(d), "help": f"{d.help} ({d.allowed()})", "dest": name}
        if required:
            kwargs["required"] = True
        elif unset is not None:
            kwargs["default"] = None
            kwargs["help"] = f"{d.help} ({d.allowed()}; default: {unset})"
        else:
            kwargs["default"] = d.default
            kwargs["help"] = f"{d.help} ({d.allowed()}; default {json.dumps(_plain(d.default))})"
        kwargs["metavar"] = "{" + ",".join(map(str, d.choices)) + "}" if d.choices else name.upper()
        p.add_argument(flag, **kwargs)


def is_switch(d: Declared) -> bool:
    """A declared bool that defaults to false is a ``store_true`` flag (it takes no value, so none is bad)."""
    return d.type.base is bool and d.type.choices is None and not d.type.nullable and d.default is False


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _checker(d: Declared) -> Callable[[str], Any]:
    def check(text: str) -> Any:
        return d.check(parse_text(text))

    check.__name__ = d.type.name  # what argparse would name in its own messages
    return check


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
def add_overwrite_arg(
    p: argparse.ArgumentParser, what: str = "an existing unlearnkit artefact of the same kind"
) -> None:
    p.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace {what} at the output (only once the new one is complete); without it an existing "
        "artefact is refused. A folder that is not one, or that is or holds an input, is always refused",
    )


def request_files(spec: str | None) -> list[str]:
    """The files a request spec reads (inputs an output must stay clear of), as its request type declares them."""
    from ..requests import request_files as declared

    return declared(spec)


def data_inputs(dataset: str | None, data_dir: str | None) -> list[str]:
    """The folder a data set is read from (its --data-dir, else the OS package's folder)."""
    if data_dir is not None:
        return [data_dir]
    from ..data import DATASET_INFO
    from ..data.readers import is_spec, parse_spec

    base = (dataset or "").split("[", 1)[0].strip()
    if is_spec(base):  # imagefolder:PATH, npz:PATH, hf:PATH, prepared:DIR
        return [parse_spec(base)[1]]
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


def backend_arguments(p: argparse.ArgumentParser) -> None:
    """--backend, --ray-address, --ray-retries, --task-cpus, --task-gpus, --progress-log: the execution backend's
    declared options (:class:`unlearnkit.backends.BackendOptions`, docs/scale.md)."""
    from ..backends import BackendOptions

    add_flags(p, BackendOptions)


def backend_from_args(args: argparse.Namespace, *, workers: int | None = 1, threads: int = 1):
    """The backend the flags describe (a bad combination fails here, before any output is created)."""
    from ..backends import BackendOptions, backend_from

    options = BackendOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(BackendOptions)})
    if options.progress_log is not None:
        from pathlib import Path

        from ..outputs import check_output_name

        check_output_name(options.progress_log, "--progress-log")
        if Path(options.progress_log).is_dir():
            raise UnlearnKitError(f"--progress-log {options.progress_log} is a folder; give a file to append to")
    return backend_from(options, workers=workers, threads=threads)
