"""Command line of the deletion service::

    unlearnkit serve --model runs/sisa [--host 127.0.0.1] [--port 8080]
    unlearnkit tokens create --model runs/sisa --scope delete,read [--name billing]
    unlearnkit tokens list --model runs/sisa
    unlearnkit tokens revoke ID --model runs/sisa
    unlearnkit receipts verify receipt.json [--model runs/sisa | --public-key key.pem]

(``unlearnkit requests verify`` and ``unlearnkit forget --server`` live with the other request commands in
``cli/requests.py``.) The service itself is :mod:`unlearnkit.service`.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import sys

from ..errors import UnlearnKitError
from .common import Command


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="SISA model directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--ssl-certfile", default=None, help="TLS certificate (PEM); needed to bind beyond loopback")
    p.add_argument("--ssl-keyfile", default=None, help="TLS private key (PEM)")
    p.add_argument(
        "--insecure-bind",
        action="store_true",
        help="bind beyond loopback without TLS (only behind a reverse proxy that terminates TLS)",
    )
    p.add_argument(
        "--http-workers", type=int, default=1, help="HTTP server processes (default 1; one deletion worker in all)"
    )
    p.add_argument("--no-worker", action="store_true", help="do not run deletion requests (another process does)")
    p.add_argument("--worker-threads", type=int, default=1, help="torch threads of the deletion worker's own work")
    p.add_argument("--worker-pid-file", default=None, help=argparse.SUPPRESS)
    p.add_argument("--max-batch", type=int, default=256, help="inputs per prediction request (default 256)")
    p.add_argument("--max-ids", type=int, default=10_000, help="ids per deletion request (default 10000)")
    p.add_argument("--max-body-bytes", type=int, default=8 << 20, help="largest request body (default 8 MiB)")
    p.add_argument(
        "--fold-after-ids",
        type=int,
        default=256,
        help="schedule an exact retrain of a shard once it holds this many approximately deleted ids",
    )
    p.add_argument(
        "--fold-after-hours", type=float, default=24.0, help="... or once its oldest approximate deletion is this old"
    )
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])


def _check_bind(args: argparse.Namespace) -> None:
    host = args.host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    tls = args.ssl_certfile is not None and args.ssl_keyfile is not None
    if (args.ssl_certfile is None) != (args.ssl_keyfile is None):
        raise UnlearnKitError("give both --ssl-certfile and --ssl-keyfile, or neither")
    for path in (args.ssl_certfile, args.ssl_keyfile):
        if path is not None and not os.path.isfile(path):
            raise UnlearnKitError(f"TLS file {path} does not exist")
    if not loopback and not tls and not args.insecure_bind:
        raise UnlearnKitError(
            f"refusing to bind {host} without TLS: give --ssl-certfile and --ssl-keyfile, or "
            "--insecure-bind behind a reverse proxy that terminates TLS (docs/service.md)"
        )
    if not 0 < args.port < 65536:
        raise UnlearnKitError(f"--port must be 1..65535, not {args.port}")
    for name in ("http_workers", "worker_threads", "max_batch", "max_ids", "max_body_bytes"):
        if getattr(args, name) < 1:
            raise UnlearnKitError(f"--{name.replace('_', '-')} must be >= 1")


def _check_port(args: argparse.Namespace) -> None:
    host = args.host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, args.port))
        except OSError as exc:
            raise UnlearnKitError(f"cannot listen on {host}:{args.port}: {exc.strerror or exc}") from None


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ..service.app import ServeConfig, create_app
    from ..service.keys import Signer
    from ..service.worker import FoldBound, WorkerSupervisor

    _check_bind(args)
    config = ServeConfig(
        model_dir=args.model,
        max_batch=args.max_batch,
        max_body_bytes=args.max_body_bytes,
        max_ids=args.max_ids,
        bound=FoldBound(args.fold_after_ids, args.fold_after_hours),
        worker=not args.no_worker and args.http_workers == 1,
        worker_threads=args.worker_threads,
        worker_pid_file=args.worker_pid_file,
    )
    app = create_app(config)  # refuses a damaged model directory, ledger or token file (UnlearnKitError)
    _check_port(args)
    signer = Signer.load(args.model)
    scheme = "https" if args.ssl_certfile else "http"
    print(
        f"unlearnkit serve: {args.model} version {app_version(app)} on {scheme}://{args.host}:{args.port} "
        f"(receipt key {signer.key_id}; pid {os.getpid()})",
        file=sys.stderr,
        flush=True,
    )
    options = dict(
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        proxy_headers=True,
        server_header=False,
    )
    if args.http_workers == 1:
        uvicorn.run(app, **options)
        return 0
    supervisor = (
        None
        if args.no_worker
        else WorkerSupervisor(args.model, config.bound, config.device, args.worker_threads, args.worker_pid_file)
    )
    os.environ["UNLEARNKIT_SERVE_CONFIG"] = config.to_env()
    if supervisor is not None:
        supervisor.start()
    try:
        uvicorn.run("unlearnkit.service.app:app_from_env", factory=True, workers=args.http_workers, **options)
    finally:
        if supervisor is not None:
            supervisor.stop()
    return 0


def app_version(app) -> int:
    inner = getattr(app, "app", app)
    return inner.state.served.state[0]


# -- tokens ------------------------------------------------------------------------------------------------
def _tokens_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="tokens_command", metavar="ACTION", required=True)
    create = sub.add_parser("create", help="create a token (printed once; only its hash is stored)")
    create.add_argument("--model", required=True, help="SISA model directory")
    create.add_argument("--scope", required=True, help="comma-separated: predict, delete, read, admin")
    create.add_argument("--name", default="", help="what the token is for")
    listing = sub.add_parser("list", help="every token (never the secret)")
    listing.add_argument("--model", required=True)
    listing.add_argument("--json", action="store_true")
    revoke = sub.add_parser("revoke", help="revoke a token (the server notices at once)")
    revoke.add_argument("id", help="token id (the 12 hex digits after uk_)")
    revoke.add_argument("--model", required=True)


def _tokens(args: argparse.Namespace) -> int:
    from ..service.tokens import TokenStore
    from ..sisa.store import SisaStore

    SisaStore.open(args.model)  # a model directory, not any folder
    store = TokenStore(args.model)
    if args.tokens_command == "create":
        text, token = store.create(args.scope.split(","), args.name)
        print(f"created token {token.id} with scopes {','.join(token.scopes)}; it is shown only now:", file=sys.stderr)
        print(text)
        return 0
    if args.tokens_command == "revoke":
        token = store.revoke(args.id)
        print(f"token {token.id} revoked at {token.revoked}")
        return 0
    tokens = store.list()
    if args.json:
        print(json.dumps([t.to_dict() for t in tokens], indent=2))
        return 0
    print(f"{'id':<14} {'scopes':<28} {'created':<26} {'revoked':<26} name")
    for t in tokens:
        print(f"{t.id:<14} {','.join(t.scopes):<28} {t.created:<26} {t.revoked or '-':<26} {t.name}")
    return 0


# -- receipts ----------------------------------------------------------------------------------------------
def _receipts_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="receipts_command", metavar="ACTION", required=True)
    verify = sub.add_parser("verify", help="check a receipt's signature (and, with --model, it against the ledger)")
    verify.add_argument("file", help="receipt JSON (GET /v1/deletions/ID/receipt)")
    who = verify.add_mutually_exclusive_group()
    who.add_argument("--model", default=None, help="the SISA model directory: its service key and its ledger")
    who.add_argument("--public-key", default=None, help="the service's public key (PEM), without the ledger")
    verify.add_argument("--json", action="store_true")


def _receipts(args: argparse.Namespace) -> int:
    from ..service.keys import load_public_key, model_public_key
    from ..service.receipts import verify_receipt

    try:
        with open(args.file, "rb") as handle:
            document = json.loads(handle.read(1 << 22))
    except OSError as exc:
        raise UnlearnKitError(f"cannot read receipt {args.file}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UnlearnKitError(f"{args.file} is not a JSON receipt") from None
    ledger = None
    if args.model is not None:
        from ..hybrid import Ledger
        from ..sisa.store import SisaStore

        store = SisaStore.open(args.model)
        public = model_public_key(args.model)
        if not store.ledger_path.is_file():
            raise UnlearnKitError(f"{args.model} has no request ledger")
        ledger = Ledger(store.ledger_path)
    else:
        public = None if args.public_key is None else load_public_key(args.public_key)
    try:
        problems, checked = verify_receipt(document, public, ledger)
    finally:
        if ledger is not None:
            ledger.close()
    receipt = document.get("receipt", {}) if isinstance(document, dict) else {}
    if args.json:
        print(json.dumps({"ok": not problems, "problems": problems, "checked": checked}, indent=2))
    elif problems:
        for problem in problems:
            print(f"unlearnkit: receipt {args.file}: {problem}", file=sys.stderr)
    else:
        against = (
            "; it matches the ledger and the ledger's hash chain is intact"
            if ledger is not None
            else " (pass --model to check it against the ledger)"
        )
        print(
            f"receipt of request {receipt.get('request_id')!r} ({receipt.get('state')}, {receipt.get('decision')}): "
            f"signature valid, {checked.get('key')}{against}"
        )
    return 1 if problems else 0


COMMANDS = [
    Command(
        "serve",
        "serve a SISA model over HTTP: predictions, deletion requests, receipts (docs/service.md)",
        _serve_arguments,
        _serve,
    ),
    Command("tokens", "API tokens of the deletion service: create, list, revoke", _tokens_arguments, _tokens),
    Command("receipts", "deletion receipts: verify", _receipts_arguments, _receipts),
]
