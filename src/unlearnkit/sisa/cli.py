"""Command line for SISA models and deletion requests::

    unlearnkit sisa train --dataset fashion-mnist --shards 5 --slices 5 --out runs/sisa
    unlearnkit sisa calibrate --model runs/sisa
    unlearnkit sisa info --model runs/sisa
    unlearnkit forget --model runs/sisa --ids ids.txt [--mode auto|exact|approx] [--request-id ID]
    unlearnkit forget --model runs/sisa --request random:0.001 --plan-only
    unlearnkit requests list --model runs/sisa
    unlearnkit requests show ID --model runs/sisa
    unlearnkit requests resume --model runs/sisa

Registered with :func:`unlearnkit.cli.register` when this module is imported (``cli.COMMAND_MODULES``).
"""

from __future__ import annotations

import argparse
import json

from ..cli import _add_data_args, command, parse_sets
from ..errors import UnlearnKitError


def _policy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--beta", type=float, default=None,
                   help="exact when it costs at most BETA x the approximate path (default 1)")
    p.add_argument("--budget-seconds", type=float, default=None, help="exact whenever it is estimated within this many seconds")
    p.add_argument("--budget-stages", type=float, default=None,
                   help="the same budget in units of one shard's last stage (default 1; 0 turns it off)")


def _policy(args: argparse.Namespace, stored: dict | None = None):
    from ..hybrid import Policy

    values = dict(stored or {})
    for key in ("beta", "budget_seconds", "budget_stages"):
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    return Policy(**values)


# -- unlearnkit sisa ... ------------------------------------------------------------------------------
def _sisa_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="sisa_command", metavar="ACTION", required=True)
    train = sub.add_parser("train", help="train a SISA ensemble (S shards x R slices, a checkpoint after every stage)")
    _add_data_args(train)
    train.add_argument("--model", default=None, help="model name (default: the data set's default)")
    train.add_argument("--shards", type=int, default=5)
    train.add_argument("--slices", type=int, default=5)
    train.add_argument("--epochs", type=int, default=None, help="epochs per stage (default: the recipe's epochs / slices)")
    train.add_argument("--lr", type=float, default=None)
    train.add_argument("--batch-size", type=int, default=None)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--workers", type=int, default=2, help="shard training processes (default 2)")
    train.add_argument("--shard-threads", type=int, default=None,
                       help="torch threads per shard, now and in every retrain (default: cores / workers)")
    train.add_argument("--device", default="cpu", help="cpu (bitwise-reproducible retraining) or cuda")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="other training options")
    train.add_argument("--model-option", action="append", metavar="KEY=VALUE", help="model options (e.g. width=128)")
    train.add_argument("--no-calibrate", action="store_true", help="skip timing the cost model on this machine")
    _policy_args(train)
    train.add_argument("--out", required=True, help="model directory to create")
    cal = sub.add_parser("calibrate", help="re-measure the cost model on this machine")
    cal.add_argument("--model", required=True, help="SISA model directory")
    cal.add_argument("--data-dir", default=None)
    cal.add_argument("--device", default="cpu")
    info = sub.add_parser("info", help="describe a SISA model and its current version")
    info.add_argument("--model", required=True, help="SISA model directory")
    info.add_argument("--data-dir", default=None)
    info.add_argument("--json", action="store_true")


@command("sisa", "SISA models: train, calibrate, info", _sisa_arguments)
def _sisa(args: argparse.Namespace) -> int:
    return {"train": _sisa_train, "calibrate": _sisa_calibrate, "info": _sisa_info}[args.sisa_command](args)


def _sisa_train(args: argparse.Namespace) -> int:
    from ..api import as_dataset
    from ..hybrid import calibrate
    from ..recipes import default_model
    from .model import default_stage_config, train_sisa

    data = as_dataset(args.dataset, args.data_dir)
    model = args.model or default_model(data.name)
    changes = parse_sets(args.set)
    for key in ("epochs", "lr", "batch_size"):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key)
    config = default_stage_config(data, model, args.slices).replace(**changes)
    policy = _policy(args)
    sisa = train_sisa(data, model, out=args.out, shards=args.shards, slices=args.slices, config=config, seed=args.seed,
                      workers=args.workers, threads=args.shard_threads, device=args.device, data_dir=args.data_dir,
                      model_options=parse_sets(args.model_option), echo=True)
    sisa.store.update_meta(hybrid={**(sisa.meta.get("hybrid") or {}), "policy": policy.to_dict()})
    if not args.no_calibrate:
        calibrate(sisa, echo=True)
    version = sisa.version(0)
    print(f"SISA {args.shards} x {args.slices} {model} on {data.name}: ensemble test accuracy "
          f"{version.info['metrics']['test_acc']:.2f} %, {version.info['cost']['seconds']:.0f} s")
    print(f"model written to {sisa.path}")
    return 0


def _sisa_calibrate(args: argparse.Namespace) -> int:
    from ..hybrid import calibrate
    from .model import SisaModel

    sisa = SisaModel.open(args.model, data_dir=args.data_dir)
    from ..hybrid.service import model_lock

    with model_lock(sisa, echo=True):
        cal = calibrate(sisa, device=args.device, echo=True)
    print(json.dumps(cal.to_dict(), indent=2))
    return 0


def _sisa_info(args: argparse.Namespace) -> int:
    import numpy as np

    from .layout import ACTIVE, DELETED_APPROX, DELETED_EXACT
    from .model import SisaModel

    sisa = SisaModel.open(args.model, data_dir=args.data_dir)
    version = sisa.version()
    status = version.status
    info = {
        "path": str(sisa.path), "dataset": sisa.meta["dataset"]["name"], "model": sisa.meta["model"]["name"],
        "shards": sisa.shards, "slices": sisa.slices, "epochs_per_stage": sisa.config.epochs,
        "threads_per_shard": sisa.meta["sisa"]["threads"], "workers": sisa.workers,
        "version": version.number, "versions": sisa.store.version_numbers(),
        "samples": {"active": int((status == ACTIVE).sum()), "deleted_exact": int((status == DELETED_EXACT).sum()),
                    "deleted_approx": int((status == DELETED_APPROX).sum())},
        "pending_approx_per_shard": np.bincount(sisa.provenance.shard_of[status == DELETED_APPROX], minlength=sisa.shards).tolist(),
        "original_test_acc": sisa.version(0).info.get("metrics", {}).get("test_acc"),
        "calibration": sisa.meta.get("calibration"), "policy": (sisa.meta.get("hybrid") or {}).get("policy"),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:<26} {value}")
    return 0


# -- unlearnkit forget ---------------------------------------------------------------------------------
def _forget_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="SISA model directory")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--ids", metavar="FILE", help="training-set ids to delete, one per line ('#' comments)")
    what.add_argument("--request", metavar="SPEC", help="a request spec: random:FRACTION, class:C, ids:FILE")
    p.add_argument("--mode", choices=["auto", "exact", "approx"], default="auto",
                   help="auto: the planner decides; exact: SISA retraining; approx: modification + amend")
    p.add_argument("--request-id", default=None, help="your id for this request: resubmitting it is a no-op")
    p.add_argument("--seed", type=int, default=0, help="seed of random: request specs")
    p.add_argument("--plan-only", action="store_true", help="print the plan and its estimates; record and change nothing")
    p.add_argument("--evaluate", action="store_true", help="record the new ensemble's test accuracy with the request")
    p.add_argument("--workers", type=int, default=None, help="shard retraining processes (default: the model's)")
    _policy_args(p)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print the request record as JSON")


@command("forget", "delete training samples from a SISA model (exact, approximate, or the planner's choice)", _forget_arguments)
def _forget(args: argparse.Namespace) -> int:
    from ..hybrid import Unlearner, ids_from_request
    from .model import SisaModel

    sisa = SisaModel.open(args.model, data_dir=args.data_dir)
    policy = _policy(args, (sisa.meta.get("hybrid") or {}).get("policy"))
    with Unlearner(sisa, policy=policy, device=args.device, workers=args.workers, evaluate=args.evaluate,
                   echo=not args.json) as service:
        ids, source = ids_from_request(sisa, args.ids, args.request, args.seed)
        if args.plan_only:
            plan = service.plan(ids, args.mode)
            print(json.dumps(plan.to_dict(), indent=2))
            return 0
        record = service.forget(ids, args.request_id, args.mode, source)
    if args.json:
        print(json.dumps(record.to_dict(), indent=2, default=str))
        return 0 if record.state == "done" else 1
    _print_record(record)
    return 0 if record.state == "done" else 1


def _print_record(record, events: list[dict] | None = None) -> None:
    est = "-" if record.estimated_seconds is None else f"{record.estimated_seconds:.2f} s"
    act = "-" if record.actual_seconds is None else f"{record.actual_seconds:.2f} s"
    print(f"request {record.id}: {record.state}, {record.decision or record.mode}, {record.n_ids} ids, "
          f"version {record.parent_version} -> {record.version}, estimated {est}, took {act}")
    if record.plan:
        print(f"  plan: {record.plan.get('reason')}")
    if record.error:
        print(f"  error: {record.error}")
    metrics = record.metrics or {}
    if "test_acc" in metrics:
        print(f"  ensemble test accuracy {metrics['test_acc']:.2f} %")
    for event in events or []:
        print(f"  {event['at']}  {event['state']:<9} {event['note'] or ''}")


# -- unlearnkit requests ... ----------------------------------------------------------------------------
def _requests_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="requests_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="every request, oldest first")
    listing.add_argument("--model", required=True, help="SISA model directory")
    listing.add_argument("--state", choices=["received", "planned", "running", "done", "failed"], default=None)
    listing.add_argument("--json", action="store_true")
    show = sub.add_parser("show", help="one request: plan, costs, metrics, history")
    show.add_argument("id", help="request id")
    show.add_argument("--model", required=True, help="SISA model directory")
    show.add_argument("--ids", action="store_true", help="include the sample ids")
    show.add_argument("--json", action="store_true")
    resume = sub.add_parser("resume", help="finish requests interrupted by a crash or a kill")
    resume.add_argument("--model", required=True, help="SISA model directory")
    resume.add_argument("--data-dir", default=None)
    resume.add_argument("--device", default="cpu")


@command("requests", "the ledger of deletion requests of a SISA model: list, show, resume", _requests_arguments)
def _requests(args: argparse.Namespace) -> int:
    from ..hybrid import Ledger
    from .store import SisaStore

    if args.requests_command == "resume":
        from ..hybrid import Unlearner

        with Unlearner(args.model, device=args.device, data_dir=args.data_dir, echo=True) as service:
            finished = service.run_pending()
        print(f"{len(finished)} interrupted request(s) finished")
        for record in finished:
            _print_record(record)
        return 0
    store = SisaStore.open(args.model)
    ledger = Ledger(store.ledger_path)
    try:
        if args.requests_command == "list":
            records = ledger.list(None if args.state is None else (args.state,))
            if args.json:
                print(json.dumps([r.to_dict() for r in records], indent=2, default=str))
                return 0
            print(f"{'id':<24} {'state':<8} {'decision':<8} {'ids':>6} {'version':>7} {'est. s':>8} {'took s':>8}  created")
            for r in records:
                est = "" if r.estimated_seconds is None else f"{r.estimated_seconds:.2f}"
                act = "" if r.actual_seconds is None else f"{r.actual_seconds:.2f}"
                version = "" if r.version is None else str(r.version)
                print(f"{r.id:<24} {r.state:<8} {r.decision or '':<8} {r.n_ids:>6} {version:>7} {est:>8} {act:>8}  {r.created}")
            return 0
        record = ledger.get(args.id)
        events = ledger.events(record.id)
        if args.json:
            print(json.dumps({**record.to_dict(with_ids=args.ids), "events": events}, indent=2, default=str))
        else:
            _print_record(record, events)
            if args.ids:
                print("  ids: " + " ".join(map(str, record.ids.tolist())))
        return 0
    finally:
        ledger.close()

