"""The ``unlearnkit`` command line. Each sub-command parses its arguments, calls the Python API, and
prints a table (or JSON). Errors that are the user's (``UnlearnKitError``) become one line and exit 2."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from typing import Any, Callable

from .errors import UnlearnKitError

# name -> (help, add_arguments(parser), run(args) -> exit code)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}

# Feature packages that add sub-commands by calling :func:`register` when imported.
COMMAND_MODULES: list[str] = []


def register(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None],
             run: Callable[[argparse.Namespace], int]) -> None:
    """Add a sub-command ``unlearnkit NAME``; feature modules call this at import time."""
    COMMANDS[name] = (help, add_arguments, run)


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Decorator form of :func:`register` for the run function."""

    def decorate(run):
        register(name, help, add_arguments, run)
        return run

    return decorate


def parse_value(text: str) -> Any:
    """``--set`` values: JSON where it parses (numbers, true/false, lists), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UnlearnKitError(f"bad --set {item!r}; use KEY=VALUE")
        out[key.strip().replace("-", "_")] = parse_value(value.strip())
    return out


def _add_data_args(p: argparse.ArgumentParser, dataset_default: str | None = "fashion-mnist") -> None:
    p.add_argument("--dataset", default=dataset_default, help="data set name (see `unlearnkit info`); NAME[N_TRAIN,N_TEST] for a subset")
    p.add_argument("--data-dir", default=None, help="folder with the data set's files (default: where the OS package puts them)")


def _train_arguments(p: argparse.ArgumentParser) -> None:
    _add_data_args(p)
    p.add_argument("--model", default=None, help="model name (default: the data set's default)")
    p.add_argument("--request", default=None, help="request the training data carries (relabel:/backdoor:) or to record")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="other training options (e.g. schedule=multistep)")
    p.add_argument("--model-option", action="append", metavar="KEY=VALUE", help="model options (e.g. width=128)")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--no-progress", action="store_true")


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print JSON only")


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="folder for the demo's checkpoints")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the recipe's 10)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)


def _info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    for module in COMMAND_MODULES:
        importlib.import_module(module)
    parser = argparse.ArgumentParser(prog="unlearnkit", description="Machine unlearning for PyTorch classifiers.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


@command("train", "train a model (optionally on data poisoned/relabelled by a request)", _train_arguments)
def _train(args: argparse.Namespace) -> int:
    from .api import train
    from .recipes import default_model, default_recipe

    model = args.model or default_model(args.dataset)
    config = default_recipe(args.dataset, model)
    changes = parse_sets(args.set)
    for key in ("epochs", "lr", "batch_size"):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key)
    config = config.replace(**changes)
    trained = train(
        args.dataset, model, request=args.request, config=config, seed=args.seed, device=args.device,
        data_dir=args.data_dir, model_options=parse_sets(args.model_option), out=args.out,
        progress=not args.no_progress and sys.stderr.isatty(), echo=True,
    )
    m = trained.metrics
    print(f"test accuracy {m['test_acc']:.2f} %, train accuracy {m['train_acc']:.2f} %, {m['train_seconds']:.0f} s")
    print(f"checkpoint written to {trained.path}")
    return 0


@command("evaluate", "measure a checkpoint", _evaluate_arguments)
def _evaluate(args: argparse.Namespace) -> int:
    from .api import accuracy_report, checkpoint_data
    from .checkpoint import load_checkpoint

    checkpoint = load_checkpoint(args.checkpoint)
    data, request = checkpoint_data(checkpoint, args.data_dir)
    report = accuracy_report(checkpoint.model, data, request, device=args.device)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:<12} {value:8.2f}")
    return 0


@command("demo", "the main job on the embedded default (Fashion-MNIST, small CNN)", _demo_arguments)
def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .api import train
    from .recipes import default_recipe

    config = default_recipe("fashion-mnist")
    if args.epochs is not None:
        config = config.replace(epochs=args.epochs)
    out = Path(args.out) / "original"
    trained = train("fashion-mnist", "small-cnn", config=config, seed=args.seed, device=args.device,
                    data_dir=args.data_dir, out=out, progress=sys.stderr.isatty(), echo=True)
    m = trained.metrics
    print(f"small-cnn on fashion-mnist: test accuracy {m['test_acc']:.2f} %, train accuracy {m['train_acc']:.2f} %, "
          f"{m['train_seconds']:.0f} s ({m['train_seconds'] / max(config.epochs, 1):.1f} s/epoch)")
    print(f"checkpoint written to {trained.path}")
    return 0


def info() -> dict:
    from .data import DATASET_INFO
    from .models import model_info
    from .requests import REQUEST_KINDS

    return {
        "datasets": DATASET_INFO,
        "models": model_info(),
        "methods": {},
        "metrics": {},
        "requests": sorted(REQUEST_KINDS),
    }


@command("info", "list data sets, models, methods and metrics", _info_arguments)
def _info(args: argparse.Namespace) -> int:
    data = info()
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    for section, entries in data.items():
        print(f"{section}:")
        if isinstance(entries, dict):
            for name, meta in entries.items():
                doc = meta.get("doc", meta.get("format", "")) if isinstance(meta, dict) else meta
                print(f"  {name:<16} {doc}")
        else:
            print("  " + ", ".join(entries))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command][2](args)
    except UnlearnKitError as exc:
        print(f"unlearnkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("unlearnkit: interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
