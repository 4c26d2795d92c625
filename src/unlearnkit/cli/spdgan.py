"""``unlearnkit spdgan train | show``: train an SPD-GAN for a checkpoint's forget set, or describe a saved one.

``unlearnkit evaluate --spdgan G`` reuses a saved generator.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, fields

from ..errors import UnlearnKitError
from ..options import option
from ..spdgan import SpdGanConfig
from .common import (
    SEED_MAX,
    Command,
    add_flags,
    add_overwrite_arg,
    check_output,
    command_flags,
    parse_sets,
    request_files,
)


@dataclass
class SpdGanTrainFlags:
    seed: int = option(0, "seed of the request, the initialisation and the data order", ge=0, le=SEED_MAX)


command_flags("spdgan train", SpdGanTrainFlags)


def _arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="spdgan_command", metavar="ACTION")
    train = sub.add_parser("train", help="train a generator on a request's forget set against a checkpoint",
                           description="Train an SPD-GAN on the forget set of REQUEST against the model in CHECKPOINT "
                                       "and save it (generator weights + manifest) to OUT.")
    train.add_argument("--checkpoint", required=True, help="the original model (its labels are the ones to keep)")
    train.add_argument(
        "--request", default=None, help="what will be forgotten (default: the request the checkpoint records)"
    )
    train.add_argument("--out", required=True, help="directory to write the generator to")
    add_overwrite_arg(train, "an existing generator")
    add_flags(train, SpdGanConfig, only=("epsilon", "epochs"), unset="the SPD-GAN default, see docs/options.md")
    train.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="other options: " + ", ".join(f.name for f in fields(SpdGanConfig) if f.name not in ("epsilon", "epochs")),
    )
    add_flags(train, SpdGanTrainFlags)
    train.add_argument("--data-dir", default=None)
    train.add_argument("--device", default="auto")
    train.add_argument(
        "--no-progress", action="store_true", help="no progress bar (the per-epoch losses are still printed)"
    )
    show = sub.add_parser("show", help="describe a saved generator")
    show.add_argument("path", help="a directory written by `unlearnkit spdgan train`")
    show.add_argument("--json", action="store_true")


def _train(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint
    from ..spdgan import save_spdgan, train_for_request

    out = check_output(args.out, "spdgan", args, [args.checkpoint, *([args.data_dir] if args.data_dir else []),
                                                  *request_files(args.request)])

    options = parse_sets(args.set)
    for key in ("epsilon", "epochs"):
        if key in options:
            raise UnlearnKitError(f"use --{key} rather than --set {key}=...")
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    config = SpdGanConfig.from_dict(options)
    checkpoint = load_checkpoint(args.checkpoint)
    data = checkpoint.dataset(args.data_dir)
    request = checkpoint.resolve_request(data, args.request, args.seed, required=True)
    print(f"training SPD-GAN (ε {config.epsilon}, {config.epochs} epochs) on {request.spec}: "
          f"{request.forget.numel()} forget images", flush=True)
    gan = train_for_request(
        checkpoint.model,
        data,
        request,
        config,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress and sys.stderr.isatty(),
        echo=True,
        original_path=checkpoint.path,
        original_file_sha256=checkpoint.manifest["weights"]["sha256"],
    )
    path = save_spdgan(out, gan)
    cost = gan.manifest["cost"]
    print(f"{cost['seconds']:.1f} s; generator written to {path}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from ..spdgan import load_spdgan

    gan = load_spdgan(args.path)
    m = gan.manifest
    if args.json:
        print(json.dumps({k: v for k, v in m.items() if k != "history"}, indent=2, default=str))
        return 0
    final = m.get("final", {})
    print(f"SPD-GAN {args.path}: ε {m['epsilon']}, data {m['dataset']['name']}, request {m['request']['spec']} "
          f"(seed {m['request']['seed']}, {m['request']['n_forget']} forget images)")
    print(f"original: {m['original'].get('path') or 'in memory'} (state {m['original']['state_sha256'][:12]})")
    if final:
        print(f"last epoch: label kept {final['kept_label']:.1f} %, |δ|/ε mean {final['mean_delta']:.3f} "
              f"max {final['max_delta']:.3f}, D loss {final['d_loss']:.3f}")
    print(f"trained in {m['cost']['seconds']:.1f} s; options {json.dumps(m['config'])}")
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.spdgan_command == "train":
        return _train(args)
    if args.spdgan_command == "show":
        return _show(args)
    raise UnlearnKitError("say what to do: `unlearnkit spdgan train ...` or `unlearnkit spdgan show PATH`")


COMMANDS = [
    Command("spdgan", "train (or describe) an SPD-GAN that slightly perturbs a forget set, for the unlearning degree",
            _arguments, _run),
]
