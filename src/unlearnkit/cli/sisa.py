"""``unlearnkit sisa train | calibrate | info``: SISA models (docs/sisa.md)::

    unlearnkit sisa train --dataset fashion-mnist --shards 5 --slices 5 --out runs/sisa
    unlearnkit sisa calibrate --model runs/sisa
    unlearnkit sisa info --model runs/sisa
    unlearnkit sisa retention --model runs/sisa --keep-versions 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass

from ..options import option
from ..training import TrainConfig
from .common import (
    SEED_MAX,
    Command,
    add_data_args,
    add_flags,
    backend_arguments,
    backend_from_args,
    check_output,
    command_flags,
    data_inputs,
    parse_sets,
    training_changes,
)
from .requests import policy_arguments, policy_from_args


@dataclass
class SisaTrainFlags:
    shards: int = option(5, "shards: independent models, each trained on its own part of the data", ge=1, le=1024)
    slices: int = option(5, "slices per shard: a checkpoint after each", ge=1, le=1024)
    seed: int = option(0, "seed of the partition, the initialisations and the data order", ge=0, le=SEED_MAX)
    workers: int = option(2, "shard training tasks at a time (more than 1: Ray tasks, on a local Ray instance unless "
                             "--ray-address)", ge=1, le=256)
    shard_threads: int | None = option(None, "torch threads per shard, now and in every retrain (default: cores / "
                                             "workers)", ge=1, le=1024)
    keep_versions: int = option(0, "superseded versions that keep their weights, for rollback (0: only the current "
                                   "version's; earlier ones keep their hashes and metadata)", ge=0, le=100_000)


@dataclass
class SisaRetentionFlags:
    keep_versions: int = option(dataclasses.MISSING, "superseded versions that keep their weights (0: only the current "
                                                     "version's)", ge=0, le=100_000)


command_flags("sisa train", SisaTrainFlags)
command_flags("sisa retention", SisaRetentionFlags)


def _sisa_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="sisa_command", metavar="ACTION", required=True)
    train = sub.add_parser("train", help="train a SISA ensemble (S shards x R slices, a checkpoint after every stage)")
    add_data_args(train)
    train.add_argument("--model", default=None, help="model name (default: the data set's default)")
    add_flags(train, SisaTrainFlags, only=("shards", "slices", "seed", "workers", "shard_threads"))
    backend_arguments(train)
    add_flags(
        train,
        TrainConfig,
        only=("epochs", "lr", "batch_size"),
        unset="the recipe's; --epochs is per stage, by default the recipe's / slices",
    )
    train.add_argument("--device", default="cpu", help="cpu (bitwise-reproducible retraining) or cuda")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="other training options")
    train.add_argument("--model-option", action="append", metavar="KEY=VALUE", help="model options (e.g. width=128)")
    train.add_argument("--no-calibrate", action="store_true", help="skip timing the cost model on this machine")
    policy_arguments(train)
    add_flags(train, SisaTrainFlags, only=("keep_versions",))
    train.add_argument("--out", required=True, help="model directory to create")
    cal = sub.add_parser("calibrate", help="re-measure the cost model on this machine")
    cal.add_argument("--model", required=True, help="SISA model directory")
    cal.add_argument("--data-dir", default=None)
    cal.add_argument("--device", default="cpu")
    info = sub.add_parser("info", help="describe a SISA model and its current version")
    info.add_argument("--model", required=True, help="SISA model directory")
    info.add_argument("--data-dir", default=None)
    info.add_argument("--json", action="store_true")
    keep = sub.add_parser("retention", help="how many superseded versions keep their weights (lowering it purges now)")
    keep.add_argument("--model", required=True, help="SISA model directory")
    add_flags(keep, SisaRetentionFlags)


def _sisa(args: argparse.Namespace) -> int:
    return {"train": _sisa_train, "calibrate": _sisa_calibrate, "info": _sisa_info,
            "retention": _sisa_retention}[args.sisa_command](args)


def _sisa_retention(args: argparse.Namespace) -> int:
    from ..hybrid import Unlearner
    from ..sisa.model import SisaModel

    with Unlearner(SisaModel.open(args.model), echo=True) as service:
        purged = service.set_retention(args.keep_versions)
    print(f"{args.model}: superseded versions keep their weights: {args.keep_versions}; "
          f"purged now: {', '.join(p['path'] for p in purged) or 'nothing'}")
    return 0


def _sisa_train(args: argparse.Namespace) -> int:
    from ..data import as_dataset
    from ..hybrid import calibrate
    from ..recipes import default_model
    from ..sisa.model import default_stage_config, train_sisa
    from ..sisa.shards import default_threads

    threads = args.shard_threads or default_threads(args.workers)
    backend = backend_from_args(args, workers=args.workers, threads=threads)  # fails here, before --out is created
    # A SISA model folder holds its request ledger (the deletion audit trail): it is continued when its training was
    # interrupted, never replaced (there is no --overwrite here; remove an old model yourself).
    out = check_output(args.out, "sisa", args, data_inputs(args.dataset, args.data_dir), resume=True)
    data = as_dataset(args.dataset, args.data_dir)
    model = args.model or default_model(data.name)
    config = default_stage_config(data, model, args.slices).replace(**training_changes(args))
    policy = policy_from_args(args)
    with backend:
        sisa = train_sisa(data, model, out=out, shards=args.shards, slices=args.slices, config=config,
                          seed=args.seed, workers=args.workers, threads=threads, device=args.device,
                          data_dir=args.data_dir, model_options=parse_sets(args.model_option),
                          keep_versions=args.keep_versions, echo=True, backend=backend)
    sisa.store.update_meta(hybrid={**(sisa.meta.get("hybrid") or {}), "policy": policy.to_dict()})
    if not args.no_calibrate:
        calibrate(sisa, echo=True)
    version = sisa.version(0)
    print(f"SISA {args.shards} x {args.slices} {model} on {data.name}: ensemble test accuracy "
          f"{version.info['metrics']['test_acc']:.2f} %, {version.info['cost']['seconds']:.0f} s")
    print(f"model written to {sisa.path}")
    return 0


def _sisa_calibrate(args: argparse.Namespace) -> int:
    from ..hybrid import calibrate, model_lock
    from ..sisa.model import SisaModel

    sisa = SisaModel.open(args.model, data_dir=args.data_dir)
    with model_lock(sisa, echo=True):
        cal = calibrate(sisa, device=args.device, echo=True)
    print(json.dumps(cal.to_dict(), indent=2))
    return 0


def _sisa_info(args: argparse.Namespace) -> int:
    import numpy as np

    from ..sisa.layout import ACTIVE, DELETED_APPROX, DELETED_EXACT
    from ..sisa.model import SisaModel

    sisa = SisaModel.open(args.model, data_dir=args.data_dir)
    version = sisa.version()
    status = version.status
    info = {
        "path": str(sisa.path),
        "dataset": sisa.meta["dataset"]["name"],
        "model": sisa.meta["model"]["name"],
        "shards": sisa.shards,
        "slices": sisa.slices,
        "epochs_per_stage": sisa.config.epochs,
        "threads_per_shard": sisa.meta["sisa"]["threads"],
        "workers": sisa.workers,
        "version": version.number,
        "versions": sisa.store.version_numbers(),
        "samples": {
            "active": int((status == ACTIVE).sum()),
            "deleted_exact": int((status == DELETED_EXACT).sum()),
            "deleted_approx": int((status == DELETED_APPROX).sum()),
        },
        "pending_approx_per_shard": np.bincount(
            sisa.provenance.shard_of[status == DELETED_APPROX], minlength=sisa.shards
        ).tolist(),
        "versions_with_weights": [n for n in sisa.store.version_numbers() if sisa.store.has_weights(n)],
        "keep_versions": sisa.store.keep_versions,
        "original_test_acc": sisa.store.read_version_info(0).get("metrics", {}).get("test_acc"),
        "calibration": sisa.meta.get("calibration"),
        "policy": (sisa.meta.get("hybrid") or {}).get("policy"),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:<26} {value}")
    return 0


COMMANDS = [Command("sisa", "SISA models: train, calibrate, info, retention", _sisa_arguments, _sisa)]
