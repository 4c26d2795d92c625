"""``unlearnkit train | unlearn | evaluate | demo | info``: the library's front door on the command line."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Literal

from ..errors import UnlearnKitError
from ..options import option
from ..training import Accel, TrainConfig
from .common import (
    SEED_MAX,
    Command,
    add_data_args,
    add_flags,
    add_overwrite_arg,
    check_output,
    command_flags,
    data_inputs,
    parse_sets,
    request_files,
    training_changes,
)

# The numeric and choice flags of these commands, declared once (type, range, help); the training recipe's own
# options (--epochs, --lr, --batch-size) are TrainConfig's declarations.
# One data-parallel training over several processes (unlearnkit.distributed, docs/scale.md).
NPROC_HELP = ("processes of one data-parallel training (PyTorch DDP through torch.distributed.run: gloo on the CPU, "
              "one GPU each with NCCL); the same global batch as one process")


@dataclass
class TrainFlags:
    seed: int = option(0, "seed of the initialisation, the data order and random requests", ge=0, le=SEED_MAX)
    nproc: int = option(1, NPROC_HELP, ge=1, le=1024)


@dataclass
class EvaluateFlags:
    mia_shadow_size: int = option(3000, "SVC shadow points per side (0: the full convention)", ge=0, le=10**7)
    mia_attack: Literal["binned", "svc"] = option(
        "binned", "binned: the RBF SVC fitted on quantile-binned, count-weighted features (~0.1 s per feature, within "
                  "0.15 points of svc as measured); svc: fitted on every point (the benchmark suites' choice)")


@dataclass
class UnlearnFlags:
    seed: int = option(0, "seed of the method and of random requests", ge=0, le=SEED_MAX)
    nproc: int = option(1, NPROC_HELP + " (--method retrain only)", ge=1, le=1024)
    prune_finetune_epochs: int | None = option(
        None, "fine-tuning epochs after pruning, on the data as trained (default: 2 after a one-shot prune, 0 where "
              "the spec retrains or trains)", ge=0, le=10_000)
    prune_finetune_lr: float | None = option(
        None, "their learning rate (default: a fifth of the recipe's)", gt=0, le=10
    )


# A forget-set accuracy that moved by less than this many points (%) counts as unchanged: `unlearn` warns.
UNCHANGED_POINTS = 1.0
# Retain samples `unlearn` measures before and after (a seeded random sample; all of D_r when smaller).
CHECK_RETAIN_SAMPLES = 2048


@dataclass
class DemoFlags:
    seed: int = option(0, "seed of the original, the request and the methods", ge=0, le=SEED_MAX)


command_flags("train", TrainFlags)
command_flags("evaluate", EvaluateFlags)
command_flags("unlearn", UnlearnFlags)
command_flags("demo", DemoFlags)


def _train_arguments(p: argparse.ArgumentParser) -> None:
    add_data_args(p)
    p.add_argument("--model", default=None, help="model name (default: the data set's default)")
    p.add_argument(
        "--request", default=None, help="request the training data carries (relabel:/backdoor:) or to record"
    )
    add_flags(p, TrainConfig, only=("epochs", "lr", "batch_size"), unset="the recipe's")
    add_flags(p, TrainFlags)
    p.add_argument("--device", default="auto")
    add_flags(p, Accel)
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="other training options (e.g. schedule=multistep)"
    )
    p.add_argument("--model-option", action="append", metavar="KEY=VALUE", help="model options (e.g. width=128)")
    p.add_argument(
        "--prune",
        default=None,
        metavar="SPEC",
        help="train a sparse model: omp:S, imp:S or synflow:S (S = fraction of weights zeroed; see docs/sparsity.md)",
    )
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    add_overwrite_arg(p, "an existing checkpoint")
    p.add_argument("--keep-diverged", action="store_true",
                   help="keep a run whose loss became non-finite (rolled back to the start of that epoch; the manifest "
                        "says stopped_early); without it such a run writes nothing and exits 2")
    p.add_argument("--train-acc", action="store_true",
                   help="also measure accuracy on the whole training set afterwards (an extra inference pass, about a "
                        "fifth of a one-epoch run); without it the manifest has the last epoch's running accuracy")
    p.add_argument("--no-progress", action="store_true")


def _train(args: argparse.Namespace) -> int:
    from .. import distributed

    if args.nproc > 1 or distributed.in_worker():
        if args.prune is not None:
            raise UnlearnKitError("--prune trains in one process; drop --nproc (or --prune)")
        if not distributed.in_worker():
            distributed.check_launch(args.nproc, args.device)
            _check_train(args)  # the output and the model's options, before any process starts
            return distributed.launch(args.command_line, args.nproc)
        with distributed.worker(args.device) as (rank, _, device):
            args.device = str(device)
            return _run_train(args, rank)
    return _run_train(args, 0)


def _check_train(args: argparse.Namespace):
    from ..models import check_model_options
    from ..recipes import default_model

    out = check_output(
        args.out, "checkpoint", args, data_inputs(args.dataset, args.data_dir) + request_files(args.request)
    )
    check_model_options(args.model or default_model(args.dataset), parse_sets(args.model_option))
    return out


def _run_train(args: argparse.Namespace, rank: int) -> int:
    """Train here; in a multi-process run every process trains, and process 0 alone writes and reports."""
    from ..api import train
    from ..recipes import default_model, default_recipe

    out = _check_train(args) if rank == 0 else None  # before the data set is read
    model = args.model or default_model(args.dataset)
    config = default_recipe(args.dataset, model).replace(**training_changes(args))
    trained = train(
        args.dataset, model, request=args.request, config=config, seed=args.seed, device=args.device,
        data_dir=args.data_dir, model_options=parse_sets(args.model_option), out=out,
        progress=rank == 0 and not args.no_progress and sys.stderr.isatty(), echo=rank == 0, prune=args.prune,
        keep_diverged=args.keep_diverged,
        measure_train_acc=args.train_acc, accel=_accel(args),
    )
    if rank != 0:
        return 0
    if trained.report.stopped_early:
        print(f"stopped early: {trained.report.stopped_early}", file=sys.stderr)
    m = trained.metrics
    train_acc = (f"train accuracy {m['train_acc']:.2f} %" if "train_acc" in m else
                 f"train accuracy {m.get('train_acc_last_epoch', float('nan')):.2f} % "
                 "(last epoch, running, as trained)")
    ppl = f", validation perplexity {m['val_ppl']:.3f}" if "val_ppl" in m else ""  # a language model (next characters)
    print(f"test accuracy {m['test_acc']:.2f} %, {train_acc}{ppl}, {m['train_seconds']:.0f} s")
    if trained.pruning is not None:
        print(
            f"pruned by {trained.pruning['spec']}: sparsity {trained.pruning['achieved_sparsity']:.4f} of the "
            "prunable weights"
        )
    print(f"checkpoint written to {trained.path}")
    return 0


def _accel(args: argparse.Namespace) -> Accel:
    from ..options import options_of

    return Accel(**{name: getattr(args, name) for name in options_of(Accel)})


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="the model to measure (e.g. an unlearned checkpoint)")
    p.add_argument(
        "--reference", default=None, help="the retrained checkpoint to compare with (gaps, Avg. Gap, JS, L2)"
    )
    p.add_argument(
        "--original", default=None, help="the original checkpoint (FR, MRR); default: the checkpoint's parent"
    )
    p.add_argument("--request", default=None, help="request to evaluate (default: the one the checkpoint records)")
    add_flags(p, EvaluateFlags)
    p.add_argument(
        "--spdgan",
        default=None,
        metavar="G",
        help="a generator from `unlearnkit spdgan train`: adds accuracy/loss on the perturbed forget set and "
        "the unlearning degree (with --original; with --reference also the retrained model's)",
    )
    p.add_argument("--bank", action="append", default=None, metavar="CKPT",
                   help="a model retrained without the request with another seed (repeat, at least twice): adds KLoM "
                        "against this bank (median and 95th percentile over D_f, D_r and the test set)")
    p.add_argument("--relearn", action="store_true",
                   help="run the relearning attack (needs the original; with --reference on it too): steps and "
                        "samples of fine-tuning on 10 %% of D_f until the rest of D_f is back to the original's "
                        "accuracy, and a control on retained samples")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print JSON only")


def _evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..api import accuracy_report
    from ..checkpoint import load_checkpoint
    from ..evaluation import METRIC_DOCS, evaluate
    from ..training import Cost

    checkpoint = load_checkpoint(args.checkpoint)
    data = checkpoint.dataset(args.data_dir)
    request = checkpoint.resolve_request(data, args.request, checkpoint.manifest.get("seed", 0))
    if request is None:
        needs_request = [flag for flag, value in (("--reference", args.reference), ("--original", args.original),
                                                  ("--spdgan", args.spdgan), ("--bank", args.bank),
                                                  ("--relearn", args.relearn)) if value]
        if needs_request:
            raise UnlearnKitError(
                f"{needs_request[0]} measures forgetting of a request: give --request (the checkpoint records none)")
        report = accuracy_report(checkpoint.model, data, device=args.device)
    else:
        reference = load_checkpoint(args.reference) if args.reference else None
        # a --original the user names must load (one line if it does not); the recorded parent may have been removed
        parent = checkpoint.parent_path()
        original = (load_checkpoint(args.original) if args.original
                    else load_checkpoint(parent) if parent and Path(parent).exists() else None)
        cost = checkpoint.manifest.get("cost")
        retrain_s = (reference.manifest.get("cost") or {}).get("seconds") if reference else None
        spdgan = None
        if args.spdgan:
            from ..spdgan import load_spdgan

            spdgan = load_spdgan(args.spdgan)
            # Check against the original it must have been trained for; the images are then reused for every model.
            spdgan = spdgan.perturb_forget(data, request, original=original.model if original is not None else None)
        bank = None
        if args.bank:
            from ..evaluation import klom_bank

            if len(args.bank) < 2:
                raise UnlearnKitError("--bank needs at least two retrained checkpoints (a spread to compare with)")
            models = []
            for path in args.bank:
                member = load_checkpoint(path)
                if member.manifest["dataset"]["fingerprint"] != data.fingerprint:
                    raise UnlearnKitError(f"--bank {path} was trained on another data set than {args.checkpoint}")
                models.append(member.model)
            bank = klom_bank(models, data, request, args.device)
        if args.relearn and original is None:
            raise UnlearnKitError("--relearn needs the original model (--original, or a checkpoint that records it)")
        report = evaluate(
            checkpoint.model, request, data, bank=bank,
            reference=reference.model if reference else None,
            original=original.model if original is not None and original.path != checkpoint.path else None,
            cost=Cost(cost["seconds"], cost["forward_samples"], cost["backward_samples"])
            if cost and checkpoint.manifest.get("kind") == "unlearned" else None,
            retrain_seconds=retrain_s, mia_shadow_size=args.mia_shadow_size or None, device=args.device, spdgan=spdgan,
            mia_attack=args.mia_attack,
        ).metrics
        if args.relearn:
            from ..relearn import relearning_attack

            for suffix, model in (("", checkpoint.model), ("_retrain", reference.model if reference else None)):
                if model is None:
                    continue
                for side in ("forget", "control"):
                    result = relearning_attack(model, original.model, data, request, control=side == "control",
                                               seed=0, device=args.device)
                    name = "relearn" if side == "forget" else "relearn_control"
                    report[f"{name}_steps{suffix}"] = result.steps
                    report[f"{name}_samples{suffix}"] = result.samples
        report = {"request": request.spec, **report}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            shown = f"{value:10.4f}" if isinstance(value, float) else f"{value!s:>10}"
            print(f"{key:<26} {shown}   {METRIC_DOCS.get(key, '')}")
    return 0


def _unlearn_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="the original model")
    p.add_argument("--method", required=True, help="method name (see `unlearnkit info`)")
    p.add_argument("--request", default=None, help="what to forget (default: the request the checkpoint records)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a method option")
    add_flags(p, UnlearnFlags, only=("seed", "nproc"))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    add_flags(p, Accel)
    p.add_argument("--out", required=True, help="checkpoint directory for the unlearned model")
    add_overwrite_arg(p, "existing checkpoints (--out, --pruned-out)")
    p.add_argument(
        "--keep-diverged",
        action="store_true",
        help="keep a result whose loss became non-finite (rolled back to the start of that epoch; recorded in "
        "the manifest's notes); without it such a run writes nothing and exits 2",
    )
    p.add_argument(
        "--prune",
        default=None,
        metavar="SPEC",
        help="prune first, then unlearn: prune the checkpoint by SPEC (omp:S, imp:S, synflow:S; see "
        "docs/sparsity.md) and unlearn the pruned model; its mask holds through the method (and Retrain)",
    )
    add_flags(p, UnlearnFlags, only=("prune_finetune_epochs", "prune_finetune_lr"))
    p.add_argument(
        "--pruned-out", default=None, help="also write the pruned model (before unlearning) as a checkpoint here"
    )
    p.add_argument(
        "--require-change", action="store_true",
        help=f"refuse a result whose forget-set accuracy moved by less than {UNCHANGED_POINTS:g} point: nothing is "
             "written and the exit status is 2 (without it such a run is written with a warning on stderr, exit 0)",
    )


def _unlearn(args: argparse.Namespace) -> int:
    from .. import distributed

    if args.nproc > 1 or distributed.in_worker():
        if args.method != "retrain":
            raise UnlearnKitError(f"--nproc trains one model over several processes: --method retrain only, "
                                  f"not {args.method}")
        if args.prune is not None:
            raise UnlearnKitError("--prune runs in one process; drop --nproc (or --prune)")
        if not distributed.in_worker():
            distributed.check_launch(args.nproc, args.device)
            _check_unlearn(args, outputs=True)  # outputs, method options and the checkpoint, before any start
            return distributed.launch(args.command_line, args.nproc)
        with distributed.worker(args.device) as (rank, _, device):
            args.device = str(device)
            return _run_unlearn(args, rank)
    return _run_unlearn(args, 0)


def _check_unlearn(args: argparse.Namespace, outputs: bool):
    from ..checkpoint import load_checkpoint
    from ..methods import METHODS, make_config

    inputs = [args.checkpoint, *([args.data_dir] if args.data_dir else []), *request_files(args.request)]
    out = check_output(args.out, "checkpoint", args, inputs) if outputs else None
    if outputs and args.pruned_out is not None:
        check_output(args.pruned_out, "checkpoint", args, inputs + [args.out], option="--pruned-out")
    options = parse_sets(args.set)
    if args.method not in METHODS:  # the method and its options are checked before anything is loaded
        raise UnlearnKitError(f"unknown method {args.method!r}; known: {', '.join(METHODS)}")
    make_config(METHODS[args.method], options)
    return out, options, load_checkpoint(args.checkpoint)


def _run_unlearn(args: argparse.Namespace, rank: int) -> int:
    """Unlearn here; in a multi-process retrain every process trains, and process 0 alone writes and reports."""
    from ..checkpoint import save_unlearned
    from ..methods import forget_retain_accuracy, unlearn

    out, options, checkpoint = _check_unlearn(args, outputs=rank == 0)
    if args.prune is not None:  # bad specs fail before any pruning work
        from ..sparsity import parse_prune_spec, prune_first

        spec = parse_prune_spec(args.prune)
    elif any(v is not None for v in (args.prune_finetune_epochs, args.prune_finetune_lr, args.pruned_out)):
        raise UnlearnKitError("--prune-finetune-epochs, --prune-finetune-lr and --pruned-out need --prune SPEC")
    data = checkpoint.dataset(args.data_dir)
    request = checkpoint.resolve_request(data, args.request, args.seed, required=True)
    from ..importing import RECIPE_USERS

    if rank == 0 and args.method in RECIPE_USERS and checkpoint.manifest.get("recipe_source") == "default":
        print(f"note: {args.method} trains with the default recipe recorded when the model was imported; "
              f"`unlearnkit import --recipe FILE.toml` records yours (docs/your-own-model.md)", file=sys.stderr)
    dense = None
    if args.prune is not None:
        dense, checkpoint = checkpoint, prune_first(
            checkpoint, spec, finetune_epochs=args.prune_finetune_epochs, finetune_lr=args.prune_finetune_lr,
            device=args.device, data_dir=args.data_dir, out=args.pruned_out, echo=True)
        pruning = checkpoint.manifest["pruning"]
        print(f"pruned by {pruning['spec']} to sparsity {pruning['achieved_sparsity']:.4f}: test accuracy "
              f"{checkpoint.manifest['metrics']['test_acc']:.2f} % before unlearning")
    check = dict(retain_samples=CHECK_RETAIN_SAMPLES, seed=args.seed, device=args.device)
    before = forget_retain_accuracy(checkpoint.model, request, data, **check) if rank == 0 else None
    result = unlearn(checkpoint, request, data, args.method, seed=args.seed, device=args.device, accel=_accel(args),
                     **options)
    if rank != 0:
        return 0
    if result.notes.get("diverged") and not args.keep_diverged:
        raise UnlearnKitError(f"{args.method} diverged ({result.notes.get('stopped_early')}); nothing was written: "
                              "lower its learning rate, or pass --keep-diverged to keep the rolled-back model")
    if result.notes.get("stopped_early"):
        print(f"stopped early: {result.notes['stopped_early']}", file=sys.stderr)
    after = forget_retain_accuracy(result.model, request, data, **check)
    moved = abs(after["forget_acc"] - before["forget_acc"])
    unchanged = not moved >= UNCHANGED_POINTS  # NaN (an empty D_f) counts as unchanged
    if unchanged and args.require_change:
        raise UnlearnKitError(
            f"{args.method} left the forget-set accuracy at {before['forget_acc']:.2f} % -> "
            f"{after['forget_acc']:.2f} % "
            f"(moved less than {UNCHANGED_POINTS:g} point); nothing was written (--require-change): raise its budget "
            "or learning rate (--set budget=..., --set lr=...; docs/methods.md)")
    resolved = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.resolved.items())
    save_unlearned(out, result, checkpoint, request, data, seed=args.seed, data_dir=args.data_dir,
                   pruned_from=dense, extra={"check": {"before": before, "after": after}})
    c = result.cost
    print(f"{args.method} unlearned {request.spec} ({request.forget.numel()} samples) in {c.seconds:.1f} s "
          f"({c.forward} forward / {c.backward} backward sample passes)"
          + (f"; resolved {resolved}" if resolved else ""))
    print(f"forget-set accuracy {before['forget_acc']:6.2f} % -> {after['forget_acc']:6.2f} %  "
          f"(D_f, {after['forget_samples']} samples)")
    print(f"retain-set accuracy {before['retain_acc']:6.2f} % -> {after['retain_acc']:6.2f} %  "
          f"(a seeded sample of {after['retain_samples']} of D_r)")
    if unchanged:
        print(f"warning: the forget-set accuracy did not move ({before['forget_acc']:.2f} % -> "
              f"{after['forget_acc']:.2f} %): {args.method} at these settings changed nothing measurable on D_f. "
              "Raise its budget or learning rate (--set budget=..., --set lr=...; docs/methods.md), or pass "
              "--require-change to refuse such results", file=sys.stderr)
    print(f"checkpoint written to {args.out}")
    return 0


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="folder for the demo's checkpoints")
    add_flags(p, TrainConfig, only=("epochs",), unset="the recipe's")
    p.add_argument(
        "--request", default="random:0.1", help="what to forget (default: a random 10 %% of the training set)"
    )
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    add_flags(p, DemoFlags)


def _demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(args.out, request_spec=args.request, epochs=args.epochs, seed=args.seed, device=args.device,
             data_dir=args.data_dir)
    return 0


def info() -> dict:
    """What ``unlearnkit info`` lists: data sets, models, methods (with the request effects each handles), metrics
    (with the direction that is better), request types (each with its syntax and effect), and every declared
    option — of the training recipe, the models, SPD-GAN, pruning specs, the hybrid policy and each sub-command's
    flags — with its type, range or choices, default and help."""
    from ..data import DATASET_INFO
    from ..data.readers import READER_INFO
    from ..evaluation import METRICS
    from ..methods import METHODS
    from ..models import model_info
    from ..options import OWNERS, options_of
    from ..requests import REQUEST_TYPES

    options = {}
    for (kind, name), owner in OWNERS.items():
        if kind != "method" and owner.config.__module__.startswith("unlearnkit."):
            options[f"{name} flags" if kind == "command" else name] = {
                d.label: d.to_dict() for d in options_of(owner.config).values()}
    return {
        "datasets": DATASET_INFO,
        "data_kinds": READER_INFO,  # your own data (docs/your-own-model.md)
        "models": model_info(),
        "methods": {name: info.describe() for name, info in METHODS.items()},
        "metrics": {name: {"doc": doc, "better": better} for name, (doc, better) in METRICS.items()},
        "request_types": {name: rtype.describe() for name, rtype in REQUEST_TYPES.items()},
        "options": options,
    }


def _info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")


def _info(args: argparse.Namespace) -> int:
    data = info()
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    for section, entries in data.items():
        print(f"{section}:")
        if section == "options":
            for owner, declared in entries.items():
                print(f"  {owner}")
                for label, d in declared.items():
                    default = "required" if d["required"] else f"default {json.dumps(d['default'])}"
                    print(f"    {label:<22} {d['allowed']} ({default})")
        elif isinstance(entries, dict):
            for name, meta in entries.items():
                doc = meta.get("doc", meta.get("summary", meta.get("format", ""))) if isinstance(meta, dict) else meta
                if section == "request_types":
                    doc = f"{meta['syntax']:<28} {meta['effect']:<8} {meta['doc']}"
                print(f"  {name:<16} {doc}")
        else:
            print("  " + ", ".join(entries))
    return 0


def _gc_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="a folder: every stale .tmp-* folder below it is removed")
    p.add_argument("--dry-run", action="store_true", help="list them, remove nothing")


def _gc(args: argparse.Namespace) -> int:
    from ..outputs import collect_garbage

    found = collect_garbage(args.path, dry_run=args.dry_run)
    for path in found:
        print(("would remove " if args.dry_run else "removed ") + str(path))
    print(f"{len(found)} stale temporary folder(s) {'found' if args.dry_run else 'removed'} under {args.path}")
    return 0


COMMANDS = [
    Command("train", "train a model (optionally on data poisoned/relabelled by a request)", _train_arguments, _train),
    Command("unlearn", "unlearn a request from a checkpoint with a registered method", _unlearn_arguments, _unlearn),
    Command(
        "evaluate", "measure a checkpoint (every metric when it carries a request)", _evaluate_arguments, _evaluate
    ),
    Command(
        "demo",
        "the main job on the embedded default: train, unlearn with the best methods, compare with Retrain",
        _demo_arguments,
        _demo,
    ),
    Command("info", "list data sets, models, methods and metrics", _info_arguments, _info),
    Command(
        "gc",
        "remove the .tmp-* folders that killed writers left (only those whose process is gone)",
        _gc_arguments,
        _gc,
    ),
]
