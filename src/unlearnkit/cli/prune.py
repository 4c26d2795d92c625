"""``unlearnkit prune``: prune a trained checkpoint into a new one (kind "pruned") that keeps its masks."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from ..errors import UnlearnKitError
from ..options import option
from ..sparsity.spec import OPTIONS, PRUNE_METHODS, PruneSpec
from .common import SEED_MAX, Command, add_flags, add_overwrite_arg, check_output, command_flags, parse_sets


@dataclass
class PruneFlags:
    finetune_epochs: int = option(0, "fine-tune this many epochs after pruning (recipe of the checkpoint)", ge=0,
                                  le=10_000)
    finetune_lr: float | None = option(
        None, "fine-tuning learning rate (default: a fifth of the recipe's)", gt=0, le=10
    )
    seed: int | None = option(None, "seed for fine-tuning/retraining data order (default: the checkpoint's)", ge=0,
                              le=SEED_MAX)


command_flags("prune", PruneFlags)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="the trained model to prune")
    p.add_argument("--method", required=True, help=f"pruning method: {', '.join(PRUNE_METHODS)}")
    add_flags(p, PruneSpec, only=("sparsity",))
    p.add_argument("--out", required=True, help="checkpoint directory for the pruned model")
    add_overwrite_arg(p, "an existing checkpoint")
    add_flags(p, PruneSpec, only=("scope", "layers"))
    p.add_argument("--exclude-classifier", action="store_true", help="never prune the final linear layer")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="method options: " + "; ".join(f"{k} ({', '.join(m)})" for k, (m, _) in OPTIONS.items()
                                                       if k not in ("scope", "layers", "classifier")))
    add_flags(p, PruneFlags, only=("finetune_epochs", "finetune_lr"))
    p.add_argument(
        "--at-init",
        action="store_true",
        help="synflow: prune the checkpoint's architecture at its recorded seed's initialisation, then train it with "
             "its recipe",
    )
    add_flags(p, PruneFlags, only=("seed",))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print the pruning record as JSON")


def _prune(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint
    from ..sparsity import prune_checkpoint, save_pruned

    out = check_output(args.out, "checkpoint", args, [args.checkpoint, *([args.data_dir] if args.data_dir else [])])
    options = parse_sets(args.set)
    for key in ("scope", "layers", "classifier"):
        if key in options:
            raise UnlearnKitError(
                f"use --{key if key != 'classifier' else 'exclude-classifier'} rather than --set {key}=..."
            )
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise UnlearnKitError(f"unknown pruning option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
    spec = PruneSpec(args.method.lower(), args.sparsity, scope=args.scope, layers=args.layers,
                     classifier=not args.exclude_classifier, **options)
    checkpoint = load_checkpoint(args.checkpoint)
    pruned = prune_checkpoint(checkpoint, spec, finetune_epochs=args.finetune_epochs, finetune_lr=args.finetune_lr,
                              at_init=args.at_init, seed=args.seed, device=args.device, data_dir=args.data_dir,
                              echo=not args.json)
    path = save_pruned(pruned, checkpoint, out, data_dir=args.data_dir)
    record, metrics = pruned.pruning, pruned.metrics
    if args.json:
        print(json.dumps({"checkpoint": str(path), "metrics": metrics, "pruning": record}, indent=2, default=str))
        return 0
    total = pruned.manifest_extra["cost"]
    print(f"{record['spec']}: sparsity {record['achieved_sparsity']:.4f} over {len(record['layers'])} layers; "
          f"pruning {record['cost']['seconds']:.1f} s, {total['seconds']:.1f} s in all")
    for name, layer in record["layers"].items():
        print(f"  {name:<28} {layer['numel']:>10} weights  {layer['sparsity']:7.2%} pruned")
    after = "" if metrics["pruned_test_acc"] is None else f", {metrics['pruned_test_acc']:.2f} right after pruning"
    print(f"test accuracy {metrics['test_acc']:.2f} % (parent {metrics['parent_test_acc']:.2f}{after})")
    print(f"checkpoint written to {path}")
    return 0


COMMANDS = [
    Command("prune", "prune a trained checkpoint (OMP, IMP with rewinding, SynFlow) into a new checkpoint that keeps "
            "its masks", _arguments, _prune),
]
