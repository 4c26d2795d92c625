"""``unlearnkit audit``: per-example attacks of unlearned against retrained models (see docs/audit.md)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Literal

from ..options import option
from .common import (
    Command,
    add_flags,
    add_overwrite_arg,
    backend_arguments,
    backend_from_args,
    check_output,
    command_flags,
    request_files,
    split_top_level,
)


@dataclass
class AuditFlags:
    models: int = option(16, "N: originals, retrained references and unlearned models per method", ge=3, le=100_000)
    workers: int = option(2, "training tasks at a time (more than 1: Ray tasks, on a local Ray instance unless "
                             "--ray-address)", ge=1, le=256)
    worker_threads: int = option(1, "torch threads per task", ge=1, le=1024)
    retain_sample: int = option(1000, "retained examples attacked (0: all of D_r)", ge=0, le=10**8)
    memorization_models: int | None = option(None, "split models for memorized:K (even; default N)", ge=2, le=100_000)
    variance: Literal["auto", "global", "per_example"] = option(
        "auto", "U-LiRA Gaussian variance (auto: one shared variance below 64 models, as LiRA advises)")
    relearn_models: int = option(0, "run the relearning attack on the first this many unlearned models of each method "
                                    "(0: off)", ge=0, le=100_000)
    relearn_fraction: float = option(0.1, "relearning attack: share of D_f fine-tuned on", gt=0, le=1)
    relearn_max_steps: int = option(200, "relearning attack: step cap", ge=1, le=1_000_000)
    relearn_lr: float = option(0.01, "relearning attack: SGD learning rate", gt=0, le=10)
    relearn_tolerance: float = option(2.0, "relearning attack: recovered within this many accuracy points of the "
                                           "original", ge=0, le=100)


command_flags("audit", AuditFlags)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--suite",
        required=True,
        help="suite name under benchmarks/suites/ or a .toml path (data set, model, "
        "recipe, requests, methods, method options)",
    )
    add_flags(p, AuditFlags, only=("models",))
    p.add_argument(
        "--methods",
        default=None,
        help="comma list of methods or variants (NAME[k=v,...]); 'all' = every registered "
        "method at its defaults (default: the suite's). Retrain and the original are always rows",
    )
    p.add_argument("--request", action="append", default=None, metavar="SPEC",
                   help="a request to audit (repeatable; default: the suite's), e.g. random:0.1 or memorized:144")
    p.add_argument("--out", default=None, help="results folder (default: benchmarks/results/audit/SUITE)")
    p.add_argument(
        "--cache",
        default="runs/bench-cache",
        help="model cache shared with `unlearnkit bench` (default: runs/bench-cache)",
    )
    add_overwrite_arg(p, "an existing audit of the same suite")
    add_flags(p, AuditFlags, only=("workers", "worker_threads", "retain_sample", "memorization_models", "variance",
                                   "relearn_models", "relearn_fraction", "relearn_max_steps", "relearn_lr",
                                   "relearn_tolerance"))
    backend_arguments(p)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")


def _audit(args: argparse.Namespace) -> int:
    from ..audit import AuditSettings, run_audit
    from ..bench import load_suite

    suite = load_suite(args.suite)
    settings = AuditSettings(models=args.models, workers=args.workers, threads=args.worker_threads,
                             retain_sample=args.retain_sample or None, memorization_models=args.memorization_models,
                             variance=args.variance, device=args.device, relearn_models=args.relearn_models,
                             relearn={"fraction": args.relearn_fraction, "max_steps": args.relearn_max_steps,
                                      "lr": args.relearn_lr, "tolerance": args.relearn_tolerance})
    backend = backend_from_args(args, workers=args.workers, threads=args.worker_threads)
    out = args.out if args.out is not None else f"benchmarks/results/audit/{suite.name}"
    from .bench import check_cache

    inputs = [suite.path, *([args.data_dir] if args.data_dir else []),
              *(f for spec in args.request or [] for f in request_files(spec))]
    out = check_output(out, "audit", args, inputs, detail=suite.name)
    check_cache(args.cache, inputs + [out])
    methods = split_top_level(args.methods) if args.methods else None
    with backend:
        results = run_audit(suite, out, settings=settings, cache_dir=args.cache, methods=methods,
                            requests=args.request, data_dir=args.data_dir,
                            command="unlearnkit " + " ".join(sys.argv[1:]), quiet=False, backend=backend)
    for spec, req in results["requests"].items():
        print(f"{spec}:")
        for label, row in req["methods"].items():
            print(f"  {label:<40} U-LiRA {row['ulira']['accuracy']:5.1f} %  AUC {row['ulira']['auc']:.3f}  "
                  f"TPR@1% {row['ulira']['tpr_at_1pct_fpr']:5.1f} %  F {row['challenge']['forget_quality']:.3f}  "
                  f"D_r {row['retain_exposure']['accuracy']:5.1f} %  Avg.Gap {row['population']['avg_gap'][0]:.2f}  "
                  f"KLoM {row['klom']['forget']['median']:.2f}" + _relearned(row))
    print(f"audit took {results['wall_s']:.0f} s; report written to {out}/report.md")
    return 0



def _relearned(row: dict) -> str:
    attack = row.get("relearn")
    if not attack:
        return ""
    steps = attack["forget"]["median_steps"]
    return f"  relearn {attack['forget']['recovered']}/{attack['models']} in {'>cap' if steps is None else steps} steps"


COMMANDS = [
    Command("audit", "per-example attacks (U-LiRA, NeurIPS 2023 challenge ε) of unlearned vs retrained models",
            _arguments, _audit),
]
