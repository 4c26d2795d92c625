"""``unlearnkit forget`` and ``unlearnkit requests list | show | resume``: deletion requests of a SISA model,
run by the hybrid planner and recorded in its ledger (docs/sisa.md)::

    unlearnkit forget --model runs/sisa --ids ids.txt [--mode auto|exact|approx] [--request-id ID]
    unlearnkit forget --model runs/sisa --request random:0.001 --plan-only
    unlearnkit requests list --model runs/sisa
    unlearnkit requests show ID --model runs/sisa
    unlearnkit requests resume --model runs/sisa
    unlearnkit requests verify --model runs/sisa                     # the ledger's hash chain
    unlearnkit forget --server URL --token-file F --ids ids.txt      # through a deletion service
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import dataclass
from typing import Literal

from ..errors import UnlearnKitError
from ..hybrid.cost import Policy
from ..options import option
from .common import SEED_MAX, Command, add_flags, backend_arguments, backend_from_args, command_flags, printable


@dataclass
class ForgetFlags:
    mode: Literal["auto", "exact", "approx"] = option("auto", "auto: the planner decides; exact: SISA retraining; "
                                                              "approx: modification + amend")
    seed: int = option(0, "seed of random: request specs", ge=0, le=SEED_MAX)
    workers: int | None = option(None, "shard retraining tasks at a time (default: the model's; more than 1: Ray "
                                       "tasks, on a local Ray instance unless --ray-address)", ge=1, le=256)


@dataclass
class RequestsListFlags:
    state: Literal["received", "planned", "running", "done", "failed"] | None = option(
        None, "only requests in this state"
    )


command_flags("forget", ForgetFlags)
command_flags("requests list", RequestsListFlags)


def policy_arguments(p: argparse.ArgumentParser) -> None:
    """--beta, --budget-seconds, --budget-stages: the hybrid Policy's declared options (given: override the model's)."""
    add_flags(p, Policy, unset="the model's stored policy, else the declared default in docs/options.md")


def policy_from_args(args: argparse.Namespace, stored: dict | None = None):
    from ..hybrid import Policy

    values = dict(stored or {})
    for key in ("beta", "budget_seconds", "budget_stages"):
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    return Policy(**values)


def _forget_arguments(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--model", help="SISA model directory")
    where.add_argument("--server", metavar="URL", help="a deletion service (`unlearnkit serve`): send the request there")  # noqa: E501
    p.add_argument("--token-file", default=None, help="with --server: file holding an API token with the delete scope")
    p.add_argument("--no-wait", action="store_true", help="with --server: return once the request is accepted")
    p.add_argument("--receipt", default=None, metavar="FILE", help="with --server: write the signed receipt here")
    p.add_argument("--timeout", type=float, default=3600.0, help="with --server: seconds to wait for the request")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--ids", metavar="FILE", help="training-set ids to delete, one per line ('#' comments)")
    what.add_argument("--request", metavar="SPEC", help="a request spec: random:FRACTION, class:C, ids:FILE")
    add_flags(p, ForgetFlags, only=("mode",))
    p.add_argument("--request-id", default=None, help="your id for this request: resubmitting it is a no-op")
    add_flags(p, ForgetFlags, only=("seed",))
    p.add_argument(
        "--plan-only", action="store_true", help="print the plan and its estimates; record and change nothing"
    )
    p.add_argument("--evaluate", action="store_true", help="record the new ensemble's test accuracy with the request")
    add_flags(p, ForgetFlags, only=("workers",))
    backend_arguments(p)
    policy_arguments(p)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print the request record as JSON")


def _forget(args: argparse.Namespace) -> int:
    from ..hybrid import Unlearner, ids_from_request
    from ..sisa import SisaModel

    if args.server is not None:
        return _forget_remote(args)
    for flag in ("token_file", "receipt"):
        if getattr(args, flag) is not None:
            raise UnlearnKitError(f"--{flag.replace('_', '-')} goes with --server")

    rid = args.request_id
    if rid is not None and (not rid or len(rid) > 200 or not rid.isprintable() or any(c.isspace() for c in rid)):
        raise UnlearnKitError(f"bad --request-id '{printable(rid)}': use 1-200 printable characters without spaces")
    from ..backends import ray_available

    sisa = SisaModel.open(args.model, data_dir=args.data_dir)
    # The model's parallel retraining runs on Ray; without Ray and unless asked for, here (the same weights).
    workers = args.workers or (sisa.workers if args.backend == "ray" or ray_available() else 1)
    # --backend ray: every exact retraining runs there; local: here, or on a local Ray instance started when a plan
    # retrains several shards in parallel
    backend = backend_from_args(args, workers=workers, threads=sisa.settings.threads)
    if args.backend == "local":
        backend = contextlib.nullcontext()
    policy = policy_from_args(args, (sisa.meta.get("hybrid") or {}).get("policy"))
    # The ids are read and checked before the ledger is opened: a refused request leaves the model untouched.
    ids, source = ids_from_request(sisa, args.ids, args.request, args.seed)
    with backend, Unlearner(sisa, policy=policy, device=args.device, workers=workers, evaluate=args.evaluate,
                            echo=not args.json, backend=backend if args.backend == "ray" else None,
                            progress_log=args.progress_log) as service:
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


def _print_purges(purges: list[dict]) -> None:
    if not purges:
        return
    print(f"  purged ({len(purges)} artefact(s) trained on the deleted ids or no longer needed):")
    for item in purges:
        detail = item["detail"]
        what = {"stage": "stage checkpoint", "quarantined": "quarantined checkpoint", "temporary": "temporary folder",
                "version-weights": "weights of a superseded version"}.get(item["kind"], item["kind"])
        if item["kind"] in ("stage", "quarantined") and "shard" in detail:
            held = detail.get("deleted_ids_held", "?")
            what += f" (shard {detail['shard']}, stage {detail['stage']}, {held} deleted ids held)"
        elif item["kind"] == "version-weights":
            what += f" (version {detail.get('version')}, sha256 {str(detail.get('sha256'))[:16]}...)"
        when = item["purged"] or "planned, not finished"
        print(f"    {when}  {what}: {item['path']}")


REMOTE_MAX_IDS = 1_000_000  # bounds the ids file read for --server (the server's own cap is lower)


def _forget_remote(args: argparse.Namespace) -> int:
    """``forget --server URL --token-file F --ids FILE``: the request goes through :class:`unlearnkit.client.Client`."""
    from pathlib import Path

    from .._util import write_json_atomic
    from ..client import Client
    from ..requests import read_ids_file

    if args.token_file is None:
        raise UnlearnKitError("--server needs --token-file FILE (an API token with the delete scope)")
    if args.ids is None:
        raise UnlearnKitError("--server takes --ids FILE (request specs are resolved on the model's machine)")
    if args.plan_only or args.evaluate or args.request_id:
        raise UnlearnKitError("--plan-only, --evaluate and --request-id work with --model, not --server")
    try:
        token = Path(args.token_file).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UnlearnKitError(f"cannot read token file {args.token_file}: {getattr(exc, 'strerror', None) or exc}") from None  # noqa: E501
    ids = read_ids_file(args.ids, REMOTE_MAX_IDS)  # the server checks them against the model and its own cap
    with Client(args.server, token) as client:
        accepted = client.delete(ids, mode=args.mode)
        plan = accepted.get("plan") or {}
        if not args.json:
            print(f"request {accepted['id']}: accepted, {accepted['n_ids']} ids, plan {plan.get('decision')} "
                  f"({plan.get('reason')})")
        if args.no_wait:
            if args.json:
                print(json.dumps(accepted, indent=2))
            return 0
        record = client.wait(accepted["id"], timeout=args.timeout)
        receipt = client.receipt(accepted["id"]) if args.receipt else None
    if receipt is not None:
        write_json_atomic(args.receipt, receipt)
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print(f"request {record['id']}: {record['state']}, {record['decision']}, version {record['parent_version']} -> "
              f"{record['version']}, took {record['actual_seconds']} s" + (f"; receipt written to {args.receipt}" if receipt else ""))  # noqa: E501
        if record.get("error"):
            print(f"  error: {record['error']}")
    return 0 if record["state"] == "done" else 1


def _print_record(record, events: list[dict] | None = None) -> None:
    est = "-" if record.estimated_seconds is None else f"{record.estimated_seconds:.2f} s"
    act = "-" if record.actual_seconds is None else f"{record.actual_seconds:.2f} s"
    print(f"request {printable(record.id)}: {record.state}, {record.decision or record.mode}, {record.n_ids} ids, "
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


def _requests_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="requests_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="every request, oldest first")
    listing.add_argument("--model", required=True, help="SISA model directory")
    add_flags(listing, RequestsListFlags)
    listing.add_argument("--json", action="store_true")
    show = sub.add_parser("show", help="one request: plan, costs, metrics, history")
    show.add_argument("id", help="request id")
    show.add_argument("--model", required=True, help="SISA model directory")
    show.add_argument("--ids", action="store_true", help="include the sample ids")
    show.add_argument("--json", action="store_true")
    verify = sub.add_parser("verify", help="recompute the ledger's hash chain; report the first broken link")
    verify.add_argument("--model", required=True, help="SISA model directory")
    verify.add_argument("--json", action="store_true")
    resume = sub.add_parser("resume", help="finish requests interrupted by a crash or a kill")
    resume.add_argument("--model", required=True, help="SISA model directory")
    resume.add_argument("--data-dir", default=None)
    resume.add_argument("--device", default="cpu")


def _requests(args: argparse.Namespace) -> int:
    from ..hybrid import Ledger
    from ..sisa import SisaStore

    if args.requests_command == "resume":
        from ..hybrid import Unlearner

        with Unlearner(args.model, device=args.device, data_dir=args.data_dir, echo=True) as service:
            finished = service.run_pending()
        print(f"{len(finished)} interrupted request(s) finished")
        for record in finished:
            _print_record(record)
        return 0
    store = SisaStore.open(args.model)
    if not store.ledger_path.exists():  # no request yet: answer without creating an empty ledger
        if args.requests_command == "show":
            raise UnlearnKitError(f"no request {args.id!r}: {args.model} has no requests yet")
        print("[]" if args.json else f"{args.model} has no requests yet")
        return 0
    ledger = Ledger(store.ledger_path, create=False)
    try:
        if args.requests_command == "verify":
            report = ledger.verify()
            if args.json:
                print(json.dumps(report.to_dict(), indent=2))
            elif report.ok:
                print(f"ledger {store.ledger_path}: hash chain intact, {report.events} events, head {report.head}")
            else:
                print(f"unlearnkit: ledger {store.ledger_path}: hash chain broken: {report.problem}", file=sys.stderr)
            return 0 if report.ok else 1
        if args.requests_command == "list":
            records = ledger.list(None if args.state is None else (args.state,))
            if args.json:
                print(json.dumps([r.to_dict() for r in records], indent=2, default=str))
                return 0
            print(
                f"{'id':<24} {'state':<8} {'decision':<8} {'ids':>6} {'version':>7} {'est. s':>8} {'took s':>8}  "
                "created"
            )
            for r in records:
                est = "" if r.estimated_seconds is None else f"{r.estimated_seconds:.2f}"
                act = "" if r.actual_seconds is None else f"{r.actual_seconds:.2f}"
                version = "" if r.version is None else str(r.version)
                print(
                    f"{printable(r.id):<24} {r.state:<8} {r.decision or '':<8} {r.n_ids:>6} {version:>7} {est:>8} "
                    f"{act:>8}  {r.created}"
                )
            return 0
        record = ledger.get(args.id)
        events = ledger.events(record.id)
        purges = ledger.purges(record.id)
        if args.json:
            print(json.dumps({**record.to_dict(with_ids=args.ids), "events": events, "purges": purges}, indent=2,
                             default=str))
        else:
            _print_record(record, events)
            _print_purges(purges)
            if args.ids:
                print("  ids: " + " ".join(map(str, record.ids.tolist())))
        return 0
    finally:
        ledger.close()


COMMANDS = [
    Command("forget", "delete training samples from a SISA model (exact, approximate, or the planner's choice)",
            _forget_arguments, _forget),
    Command("requests", "the ledger of deletion requests of a SISA model: list, show, verify, resume", _requests_arguments,  # noqa: E501
            _requests),
]
