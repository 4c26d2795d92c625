"""The ``unlearnkit`` command line. Each sub-command parses its arguments, calls the library, and prints a table
(or JSON). Errors that are the user's (:class:`~unlearnkit.UnlearnKitError`) become one line and exit 2.

A command module lists its sub-commands in ``COMMANDS`` (:class:`~unlearnkit.cli.common.Command`); adding
one is a module here plus its line in ``COMMAND_MODULES``. Feature packages never import the CLI.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from ..errors import UnlearnKitError
from ..options import option
from . import audit, bench, byod, core, prune, requests, service, sisa, spdgan
from .common import (
    Command,
    add_flags,
    command_flags,
    is_switch,
    parse_sets,
    parse_value,
    printable,
    split_top_level,
)

# One line per command module, in the order `unlearnkit --help` lists them.
COMMAND_MODULES = (
    core,      # train, unlearn, evaluate, demo, info
    byod,      # import, data prepare | show (your own model and data)
    bench,     # bench, report
    prune,     # prune
    spdgan,    # spdgan train | show
    audit,     # audit
    sisa,      # sisa train | calibrate | info
    requests,  # forget, requests list | show | verify | resume
    service,   # serve, tokens create | list | revoke, receipts verify
)


def commands() -> dict[str, Command]:
    """Every sub-command by name."""
    out: dict[str, Command] = {}
    for module in COMMAND_MODULES:
        for command in module.COMMANDS:
            if command.name in out:
                raise RuntimeError(f"two command modules define `unlearnkit {command.name}`")
            out[command.name] = command
    return out


@dataclass
class GlobalFlags:
    threads: int | None = option(
        None,
        "torch intra-op threads (default: torch's choice). Benchmarks on a shared CPU use "
        "1: a single-threaded process keeps its core, while two-thread processes spin-wait "
        "on each other",
        ge=1,
        le=1024,
    )


command_flags("unlearnkit", GlobalFlags)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unlearnkit", description="Machine unlearning for PyTorch classifiers.")
    add_flags(parser, GlobalFlags)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in commands().values():
        command.add_arguments(sub.add_parser(command.name, help=command.help, description=command.help))
    return parser


def _setting(d, text: str) -> list[str] | None:
    """The command line that gives declared option ``d`` the value ``text`` (``ck``: a trained checkpoint, ``OUT``:
    the output); None where the command line cannot express it (a word is always a string)."""
    train = ["train", "--dataset", "digits"]
    if d.kind == "command":
        return [d.flag, text, "info"] if d.owner == "unlearnkit" else [*d.owner.split(), d.flag, text]
    if d.kind == "train":
        return [*train, "--set", f"{d.name}={text}", "--out", "OUT"]
    if d.kind == "accel":  # the device settings: flags of train and unlearn
        return [*train, "--" + d.name.replace("_", "-"), text, "--out", "OUT"]
    if d.kind == "model":
        return [*train, "--model", d.owner.split()[-1], "--model-option", f"{d.name}={text}", "--out", "OUT"]
    if d.kind == "method":
        return ["unlearn", "--checkpoint", "ck", "--method", d.owner, "--set", f"{d.name}={text}", "--out", "OUT"]
    if d.kind == "spdgan":
        given = [f"--{d.name}", text] if d.name in ("epsilon", "epochs") else ["--set", f"{d.name}={text}"]
        return ["spdgan", "train", "--checkpoint", "ck", *given, "--out", "OUT"]
    if d.kind == "policy":
        return ["forget", "--model", "sisa", "--ids", "ids.txt", "--" + d.name.replace("_", "-"), text]
    if d.kind == "prune":
        from ..sparsity.spec import APPLIES_TO

        prune = ["prune", "--checkpoint", "ck", "--method", "omp"]
        if d.name == "sparsity":
            return [*prune, "--sparsity", text, "--out", "OUT"]
        if d.name in ("scope", "layers"):
            return [*prune, "--sparsity", "0.5", "--" + d.name, text, "--out", "OUT"]
        if d.name in APPLIES_TO and "," not in text:
            return [*train, "--prune", f"{APPLIES_TO[d.name][0]}:0.5:{d.name}={text}", "--out", "OUT"]
    return None


def bad_input_cases() -> list[tuple[str, list[str]]]:
    """``(label, argv)``: a command line for each bad value generated from each declared option of the package
    (:meth:`unlearnkit.options.Declared.bad_texts`) — the training recipe, models, methods, SPD-GAN, pruning specs,
    the hybrid policy and every sub-command's flags. ``ck`` stands for a trained checkpoint, ``sisa`` for a SISA
    model and ``OUT`` for the output; each must be refused with one line (exit 2) before any of them is read or
    written. A new option is covered by being declared."""
    return [(label, argv) for label, argv, _ in _bad_input_cases()]


def _bad_input_cases() -> list[tuple[str, list[str], str]]:
    from ..options import OWNERS, declared

    cases = []
    for d in declared():
        if not OWNERS[(d.kind, d.owner)].config.__module__.startswith("unlearnkit."):
            continue  # registered by a test, not the package
        for why, text in d.bad_texts():
            if d.type.base is str and d.choices is None:
                continue  # a command-line word is always a string
            if (d.kind == "accel" or d.flag) and is_switch(d):
                continue  # a switch takes no value
            argv = _setting(d, text)
            if argv is not None:
                label = "-".join(f"{d.kind} {d.owner} {d.label.lstrip('-')} {why}".split())
                as_flag = "--" + d.name.replace("_", "-")
                named = d.kind in ("policy", "accel") or (d.kind in ("spdgan", "prune") and as_flag in argv)
                flag = d.flag or (as_flag if named else d.name)
                cases.append((label, argv, f"option {flag} of {d.owner} must be {d.allowed()}; got "))
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:  # declared flags are checked while parsing (see common.add_flags)
        args = parser.parse_args(argv)
    except UnlearnKitError as exc:
        print(f"unlearnkit: error: {exc}", file=sys.stderr)
        return 2
    if args.command is None:
        parser.print_help()
        return 2
    args.command_line = list(sys.argv[1:] if argv is None else argv)  # what --nproc starts again in each process
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    try:
        return commands()[args.command].run(args)
    except UnlearnKitError as exc:
        print(f"unlearnkit: error: {printable(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("unlearnkit: interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130


__all__ = ["COMMAND_MODULES", "Command", "bad_input_cases", "build_parser", "commands", "main", "parse_sets",
           "parse_value", "split_top_level"]
