"""``unlearnkit bench | report``: run a benchmark suite (resumable) and write its tables."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from ..errors import UnlearnKitError
from ..options import option
from .common import (
    Command,
    add_flags,
    add_overwrite_arg,
    backend_arguments,
    backend_from_args,
    check_output,
    command_flags,
    split_top_level,
)


@dataclasses.dataclass
class ReportFlags:
    budget: float = option(0.05, "work budget (sample passes as a fraction of Retrain's) for choosing variants", gt=0,
                           le=100)


command_flags("report", ReportFlags)


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", required=True, help="suite name under benchmarks/suites/ or a .toml path")
    p.add_argument(
        "--seeds",
        default=None,
        help="N (seeds 0..N-1) or a comma list; one seed k alone: \"k,\" (default: the suite's)",
    )
    p.add_argument("--methods", default=None, help="comma list of methods or variants to run (default: all)")
    p.add_argument("--requests", default=None, help="comma list of the suite's requests to run (default: all); with "
                   "--seeds, splits a suite over processes that share --out and --cache")
    p.add_argument("--out", default=None, help="results folder (default: benchmarks/results/SUITE)")
    p.add_argument("--cache", default="runs/bench-cache", help="where originals and retrained models are cached")
    add_overwrite_arg(p, "the records already in --out (every record is made again); without it a results folder of "
                         "the same suite is resumed:")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-report", action="store_true", help="do not write the report afterwards")
    p.add_argument(
        "--prune",
        default=None,
        metavar="SPEC",
        help="prune first, then unlearn: prune the suite's originals by SPEC (e.g. omp:0.95; 'none' for dense), "
        "overriding the suite's `prune` key; default --out gains the spec",
    )
    backend_arguments(p)


def _bench(args: argparse.Namespace) -> int:
    from ..bench import load_suite, run_suite, write_report

    suite = load_suite(args.suite)
    if args.prune is not None:
        from ..bench import with_prune

        dense = args.prune.strip().lower() in ("none", "dense")
        suite = with_prune(suite, None if dense else args.prune,
                           finetune_epochs=None if dense else suite.prune_finetune_epochs,
                           finetune_lr=None if dense else suite.prune_finetune_lr)
    if args.requests:
        wanted = split_top_level(args.requests)
        unknown = [r for r in wanted if r not in suite.requests]
        if unknown:
            raise UnlearnKitError(f"--requests: {', '.join(unknown)} not in suite {suite.name!r} "
                                  f"(its requests: {', '.join(suite.requests)})")
        suite = dataclasses.replace(suite, requests=wanted)
    seeds = None if not args.seeds else parse_seeds(args.seeds)
    suffix = (
        ""
        if args.prune is None
        else "-"
        + ("dense" if suite.prune is None else "".join(c if c.isalnum() or c in ".=-" else "_" for c in suite.prune))
    )
    out = args.out if args.out is not None else f"benchmarks/results/{suite.name}{suffix}"
    import torch

    # local: in this process; ray: tasks of this process's torch threads each (a local instance: all the CPUs)
    backend = backend_from_args(args, workers=None, threads=torch.get_num_threads())
    inputs = [suite.path, *([args.data_dir] if args.data_dir else [])]
    out = check_output(out, "bench", args, inputs, resume=True, detail=suite.name)
    check_cache(args.cache, inputs + [out])
    methods = None
    if args.methods:
        from ..bench.suite import select_variants

        methods = select_variants(suite, split_top_level(args.methods))  # commas inside NAME[k=v,...] stay
    with backend:
        run_suite(
            suite,
            out,
            cache_dir=args.cache,
            device=args.device,
            data_dir=args.data_dir,
            seeds=seeds,
            methods=methods,
            command="unlearnkit " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("unlearnkit") else None,
            rerun=args.overwrite,
            backend=backend,
        )
    if not args.no_report:
        write_report(out)
        print(f"report written to {out}/report.md")
    return 0


def check_cache(path: str | None, others: list) -> None:
    """The model cache is written to as well: never an input or the results folder, never a file."""
    from pathlib import Path

    from ..outputs import check_output_name, overlaps

    if path is None:
        return
    check_output_name(path, "--cache")
    clash = overlaps(path, others)
    if clash is not None:
        raise UnlearnKitError(f"--cache {path} is, contains or lies inside {clash}; choose another --cache")
    if Path(path).exists() and not Path(path).is_dir():
        raise UnlearnKitError(f"--cache {path} exists and is not a folder; choose another --cache")


def parse_seeds(text: str) -> list[int]:
    """``N`` means seeds 0..N-1, a comma list the seeds themselves (``k,`` is seed k alone)."""
    text = text.strip()
    if text.isdigit():
        if int(text) == 0:
            raise UnlearnKitError("--seeds 0 selects no seed (N means seeds 0..N-1); for seed 0 alone write --seeds 0,")
        return list(range(int(text)))
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UnlearnKitError(
            f"--seeds {text!r}: use N (seeds 0..N-1) or a comma list of integers, e.g. 1,2 or 2,"
        ) from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise UnlearnKitError(f"--seeds {text!r}: seeds are distinct integers >= 0")
    return seeds


def _report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="a results folder written by `unlearnkit bench`")
    add_flags(p, ReportFlags)


def _report(args: argparse.Namespace) -> int:
    from ..bench import write_report

    # The report's files are written into the results folder itself, so it must be one.
    check_output(args.dir, "bench", args, [], option="DIR", resume=True)
    print(write_report(args.dir, budget=args.budget))
    return 0


COMMANDS = [
    Command("bench", "run a benchmark suite (resumable; originals and retrained models are cached)", _bench_arguments,
            _bench),
    Command("report", "tables (Markdown/CSV/LaTeX) and plots from a results folder", _report_arguments, _report),
]
