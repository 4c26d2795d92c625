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
from . import audit, bench, byod, core, prune, requests, sisa, spdgan
from .common import Command, add_flags, command_flags, parse_sets, parse_value, printable, split_top_level

# One line per command module, in the order `unlearnkit --help` lists them.
COMMAND_MODULES = (
    core,      # train, unlearn, evaluate, demo, info
    byod,      # import, data prepare | show (your own model and data)
    bench,     # bench, report
    prune,     # prune
    spdgan,    # spdgan train | show
    audit,     # audit
    sisa,      # sisa train | calibrate | info
    requests,  # forget, requests list | show | resume
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


__all__ = ["COMMAND_MODULES", "Command", "build_parser", "commands", "main", "parse_sets", "parse_value",
           "split_top_level"]
