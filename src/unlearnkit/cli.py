"""The ``unlearnkit`` command line. Each sub-command parses its arguments, calls the Python API, and
prints a table (or JSON). Errors that are the user's (``UnlearnKitError``) become one line and exit 2."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any, Callable

from .errors import UnlearnKitError

# name -> (help, add_arguments(parser), run(args) -> exit code)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}

# Feature packages that add sub-commands by calling :func:`register` when imported.
COMMAND_MODULES: list[str] = ["unlearnkit.sparsity.cli", "unlearnkit.spdgan.cli", "unlearnkit.audit.cli",
                              "unlearnkit.sisa.cli"]


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
    p.add_argument("--prune", default=None, metavar="SPEC",
                   help="train a sparse model: omp:S, imp:S or synflow:S (S = fraction of weights zeroed; see docs/sparsity.md)")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--no-progress", action="store_true")


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="the model to measure (e.g. an unlearned checkpoint)")
    p.add_argument("--reference", default=None, help="the retrained checkpoint to compare with (gaps, Avg. Gap, JS, L2)")
    p.add_argument("--original", default=None, help="the original checkpoint (FR, MRR); default: the checkpoint's parent")
    p.add_argument("--request", default=None, help="request to evaluate (default: the one the checkpoint records)")
    p.add_argument("--mia-shadow-size", type=int, default=3000, help="SVC shadow points per side (0: the full convention)")
    p.add_argument("--spdgan", default=None, metavar="G",
                   help="a generator from `unlearnkit spdgan train`: adds accuracy/loss on the perturbed forget set and "
                        "the unlearning degree (with --original; with --reference also the retrained model's)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print JSON only")


def _unlearn_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="the original model")
    p.add_argument("--method", required=True, help="method name (see `unlearnkit info`)")
    p.add_argument("--request", default=None, help="what to forget (default: the request the checkpoint records)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a method option")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, help="checkpoint directory for the unlearned model")
    p.add_argument("--prune", default=None, metavar="SPEC",
                   help="prune first, then unlearn: prune the checkpoint by SPEC (omp:S, imp:S, synflow:S; see "
                        "docs/sparsity.md) and unlearn the pruned model; its mask holds through the method (and Retrain)")
    p.add_argument("--prune-finetune-epochs", type=int, default=None,
                   help="fine-tuning epochs after pruning, on the data as trained (default: 2 after a one-shot prune, "
                        "0 where the spec retrains or trains)")
    p.add_argument("--prune-finetune-lr", type=float, default=None, help="their learning rate (default: a fifth of the recipe's)")
    p.add_argument("--pruned-out", default=None, help="also write the pruned model (before unlearning) as a checkpoint here")


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", required=True, help="suite name under benchmarks/suites/ or a .toml path")
    p.add_argument("--seeds", default=None, help="N (seeds 0..N-1) or a comma list; one seed k alone: \"k,\" (default: the suite's)")
    p.add_argument("--methods", default=None, help="comma list of methods or variants to run (default: all)")
    p.add_argument("--requests", default=None, help="comma list of the suite's requests to run (default: all); with "
                   "--seeds, splits a suite over processes that share --out and --cache")
    p.add_argument("--out", default=None, help="results folder (default: benchmarks/results/SUITE)")
    p.add_argument("--cache", default="runs/bench-cache", help="where originals and retrained models are cached")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-report", action="store_true", help="do not write the report afterwards")
    p.add_argument("--prune", default=None, metavar="SPEC",
                   help="prune first, then unlearn: prune the suite's originals by SPEC (e.g. omp:0.95; 'none' for dense), "
                        "overriding the suite's `prune` key; default --out gains the spec")


def _report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="a results folder written by `unlearnkit bench`")
    p.add_argument("--budget", type=float, default=0.05, help="work budget (sample passes as a fraction of Retrain's) for choosing variants")


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="folder for the demo's checkpoints")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the recipe's 10)")
    p.add_argument("--request", default="random:0.1", help="what to forget (default: a random 10 %% of the training set)")
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
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice). Benchmarks on a shared CPU use 1: a "
                             "single-threaded process keeps its core, while two-thread processes spin-wait on each other")
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
        progress=not args.no_progress and sys.stderr.isatty(), echo=True, prune=args.prune,
    )
    m = trained.metrics
    print(f"test accuracy {m['test_acc']:.2f} %, train accuracy {m['train_acc']:.2f} %, {m['train_seconds']:.0f} s")
    if trained.pruning is not None:
        print(f"pruned by {trained.pruning['spec']}: sparsity {trained.pruning['achieved_sparsity']:.4f} of the prunable weights")
    print(f"checkpoint written to {trained.path}")
    return 0


@command("evaluate", "measure a checkpoint (every metric when it carries a request)", _evaluate_arguments)
def _evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .api import accuracy_report
    from .checkpoint import load_checkpoint
    from .evaluation import evaluate
    from .requests import build_request
    from .training import Cost

    checkpoint = load_checkpoint(args.checkpoint)
    data = checkpoint.dataset(args.data_dir)
    request = build_request(args.request, data, checkpoint.manifest.get("seed", 0)) if args.request else checkpoint.request(data)
    if request is None:
        report = accuracy_report(checkpoint.model, data, device=args.device)
    else:
        reference = load_checkpoint(args.reference) if args.reference else None
        parent = checkpoint.manifest.get("parent") or {}
        # A model unlearned from an in-memory pruned copy has no original on disk (its parent is the dense model).
        original_path = args.original or (None if parent.get("pruned_first") else parent.get("path"))
        original = load_checkpoint(original_path) if original_path and Path(original_path).exists() else None
        cost = checkpoint.manifest.get("cost")
        retrain_s = (reference.manifest.get("cost") or {}).get("seconds") if reference else None
        spdgan = None
        if args.spdgan:
            from .spdgan import load_spdgan

            spdgan = load_spdgan(args.spdgan)
            # Check against the original it must have been trained for; the images are then reused for every model.
            spdgan = spdgan.perturb_forget(data, request, original=original.model if original is not None else None)
        report = evaluate(
            checkpoint.model, request, data,
            reference=reference.model if reference else None,
            original=original.model if original is not None and original.path != checkpoint.path else None,
            cost=Cost(cost["seconds"], cost["forward_samples"], cost["backward_samples"])
            if cost and checkpoint.manifest.get("kind") == "unlearned" else None,
            retrain_seconds=retrain_s, mia_shadow_size=args.mia_shadow_size or None, device=args.device, spdgan=spdgan,
        ).metrics
        report = {"request": request.spec, **report}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        from .evaluation import METRIC_DOCS

        for key, value in report.items():
            shown = f"{value:10.4f}" if isinstance(value, float) else f"{value!s:>10}"
            print(f"{key:<26} {shown}   {METRIC_DOCS.get(key, '')}")
    return 0


@command("unlearn", "unlearn a request from a checkpoint with a registered method", _unlearn_arguments)
def _unlearn(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint, save_checkpoint
    from .methods import unlearn
    from .requests import build_request

    checkpoint = load_checkpoint(args.checkpoint)
    options = parse_sets(args.set)
    if args.prune is not None:  # bad specs and options fail before any pruning work
        from .methods import METHODS, make_config
        from .sparsity import parse_prune_spec, prune_first

        spec = parse_prune_spec(args.prune)
        if args.method not in METHODS:
            raise UnlearnKitError(f"unknown method {args.method!r}; known: {', '.join(METHODS)}")
        make_config(METHODS[args.method], options)
        if args.prune_finetune_epochs is not None and args.prune_finetune_epochs < 0:
            raise UnlearnKitError("--prune-finetune-epochs must be >= 0")
    elif any(v is not None for v in (args.prune_finetune_epochs, args.prune_finetune_lr, args.pruned_out)):
        raise UnlearnKitError("--prune-finetune-epochs, --prune-finetune-lr and --pruned-out need --prune SPEC")
    data = checkpoint.dataset(args.data_dir)
    request = build_request(args.request, data, args.seed) if args.request else checkpoint.request(data)
    if request is None:
        raise UnlearnKitError(f"{args.checkpoint} records no request; pass --request (e.g. random:0.1 or class:0)")
    parent = {"path": str(checkpoint.path), "sha256": checkpoint.manifest["weights"]["sha256"]}
    pruning = None
    if args.prune is not None:
        checkpoint = prune_first(checkpoint, spec, finetune_epochs=args.prune_finetune_epochs,
                                 finetune_lr=args.prune_finetune_lr, device=args.device, data_dir=args.data_dir,
                                 out=args.pruned_out, echo=True)
        pruning = checkpoint.manifest["pruning"]
        print(f"pruned by {pruning['spec']} to sparsity {pruning['achieved_sparsity']:.4f}: test accuracy "
              f"{checkpoint.manifest['metrics']['test_acc']:.2f} % before unlearning")
        if args.pruned_out is not None:  # the pruned checkpoint is the unlearned model's parent
            parent = {"path": str(checkpoint.path), "sha256": checkpoint.manifest["weights"]["sha256"],
                      "pruned_from": parent}
        else:
            parent = {**parent, "pruned_first": pruning["spec"]}
    result = unlearn(checkpoint, request, data, args.method, seed=args.seed, device=args.device, **options)
    manifest = checkpoint.manifest
    save_checkpoint(
        args.out, result.model, model_name=manifest["model"]["name"], model_args=manifest["model"]["args"],
        dataset=data, data_dir=args.data_dir, request=request, kind="unlearned",
        extra={"seed": args.seed, "train": manifest.get("train"), "method": {"name": args.method, "config": result.config},
               "cost": result.cost.to_dict(), "notes": {k: v for k, v in result.notes.items() if k != "history"},
               "parent": parent, **({"pruning": pruning} if pruning is not None else {})},
    )
    c = result.cost
    print(f"{args.method} unlearned {request.spec} ({request.forget.numel()} samples) in {c.seconds:.1f} s "
          f"({c.forward} forward / {c.backward} backward sample passes)")
    print(f"checkpoint written to {args.out}")
    return 0


@command("bench", "run a benchmark suite (resumable; originals and retrained models are cached)", _bench_arguments)
def _bench(args: argparse.Namespace) -> int:
    from .bench import load_suite, run_suite, write_report

    suite = load_suite(args.suite)
    if args.prune is not None:
        from .bench import with_prune

        dense = args.prune.strip().lower() in ("none", "dense")
        suite = with_prune(suite, None if dense else args.prune,
                           finetune_epochs=None if dense else suite.prune_finetune_epochs,
                           finetune_lr=None if dense else suite.prune_finetune_lr)
    if args.requests:
        wanted = _split_top_level(args.requests)
        unknown = [r for r in wanted if r not in suite.requests]
        if unknown:
            raise UnlearnKitError(f"--requests: {', '.join(unknown)} not in suite {suite.name!r} "
                                  f"(its requests: {', '.join(suite.requests)})")
        suite = dataclasses.replace(suite, requests=wanted)
    seeds = None if not args.seeds else _parse_seeds(args.seeds)
    suffix = "" if args.prune is None else "-" + ("dense" if suite.prune is None else
                                                   "".join(c if c.isalnum() or c in ".=-" else "_" for c in suite.prune))
    out = args.out or f"benchmarks/results/{suite.name}{suffix}"
    methods = None
    if args.methods:
        from .bench.suite import parse_variant

        # Commas inside NAME[k=v,...] belong to the variant; a variant is matched by its normalised label.
        methods = [m if "[" not in m else parse_variant(m).label for m in _split_top_level(args.methods)]
        known = {v.method for v in suite.variants} | {v.label for v in suite.variants}
        unknown = [m for m in methods if m not in known]
        if unknown:
            raise UnlearnKitError(f"--methods: {', '.join(unknown)} not in suite {suite.name!r} "
                                  f"(its variants: {', '.join(v.label for v in suite.variants)})")
    run_suite(suite, out, cache_dir=args.cache, device=args.device, data_dir=args.data_dir, seeds=seeds, methods=methods,
              command="unlearnkit " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("unlearnkit") else None,
              progress=sys.stderr.isatty())
    if not args.no_report:
        write_report(out)
        print(f"report written to {out}/report.md")
    return 0


def _parse_seeds(text: str) -> list[int]:
    """``N`` means seeds 0..N-1, a comma list the seeds themselves (``k,`` is seed k alone)."""
    text = text.strip()
    if text.isdigit():
        if int(text) == 0:
            raise UnlearnKitError("--seeds 0 selects no seed (N means seeds 0..N-1); for seed 0 alone write --seeds 0,")
        return list(range(int(text)))
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UnlearnKitError(f"--seeds {text!r}: use N (seeds 0..N-1) or a comma list of integers, e.g. 1,2 or 2,") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise UnlearnKitError(f"--seeds {text!r}: seeds are distinct integers >= 0")
    return seeds


def _split_top_level(text: str) -> list[str]:
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


@command("report", "tables (Markdown/CSV/LaTeX) and plots from a results folder", _report_arguments)
def _report(args: argparse.Namespace) -> int:
    from .bench import write_report

    print(write_report(args.dir, budget=args.budget))
    return 0


@command("demo", "the main job on the embedded default: train, unlearn with the best methods, compare with Retrain",
         _demo_arguments)
def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, request_spec=args.request, epochs=args.epochs, seed=args.seed, device=args.device,
             data_dir=args.data_dir)
    return 0


def info() -> dict:
    from .data import DATASET_INFO
    from .models import model_info
    from .requests import REQUEST_KINDS

    from .evaluation import METRIC_DOCS
    from .methods import METHODS

    return {
        "datasets": DATASET_INFO,
        "models": model_info(),
        "methods": {name: info.describe() for name, info in METHODS.items()},
        "metrics": METRIC_DOCS,
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
                doc = meta.get("doc", meta.get("summary", meta.get("format", ""))) if isinstance(meta, dict) else meta
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
    if args.threads is not None:
        if args.threads < 1:
            print("unlearnkit: error: --threads must be at least 1", file=sys.stderr)
            return 2
        import torch

        torch.set_num_threads(args.threads)
    try:
        return COMMANDS[args.command][2](args)
    except UnlearnKitError as exc:
        print(f"unlearnkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("unlearnkit: interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: feature modules register their commands with
    # `unlearnkit.cli`, which under `python -m` is a different module object from __main__.
    from unlearnkit.cli import main as _main

    sys.exit(_main())
