"""Signed receipts: what the service did for one finished deletion request, in a form anyone can check.

A receipt is JSON ``{"format", "receipt": {...}, "signature": {...}}``; the signature is Ed25519 over the
canonical JSON of ``receipt`` (sorted keys, no spaces, ASCII). It is rebuilt from the ledger and the version
records on every request, and is byte-for-byte the same each time (Ed25519 signatures are deterministic).
``docs/service.md`` lists the fields and what a receipt proves and what it cannot.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from ..errors import UnlearnKitError
from .keys import Signer, key_id, public_bytes, verify_signature

FORMAT = "unlearnkit-receipt/1"


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _version_entry(store, number: int | None) -> dict | None:
    if number is None:
        return None
    try:
        info = store.read_version_info(number)
    except UnlearnKitError:
        return {"number": number, "record": "missing"}
    files = info.get("files", {})
    return {
        "number": number,
        "weights_sha256": files.get("weights.safetensors"),
        "status_sha256": files.get("status.safetensors"),
        "made_by": info.get("request_id"),
        "created": info.get("created"),
    }


def build_receipt(sisa, ledger, record, bound: dict | None = None) -> dict:
    """The unsigned receipt of a finished request (``record`` from the ledger)."""
    if not record.finished:
        raise UnlearnKitError(f"request {record.id!r} is {record.state}; a receipt exists once it is done or failed")
    store = sisa.store
    events = ledger.events(record.id)
    final = ledger.event_hash(record.id, record.state)
    started = next((e["at"] for e in events if e["state"] == "running"), None)
    metrics = record.metrics or {}
    plan = record.plan or {}
    receipt: dict[str, Any] = {
        "request_id": record.id,
        "state": record.state,
        "model": {
            "root": sisa.meta.get("root"),
            "dataset": sisa.meta["dataset"]["name"],
            "dataset_fingerprint": sisa.meta["dataset"]["fingerprint"],
            "shards": sisa.shards,
            "slices": sisa.slices,
        },
        "ids": {
            "count": record.n_ids,
            "sha256": record.ids_sha256,
            "hash_of": "SHA-256 of the sorted ids as little-endian int64",
        },
        "mode": record.mode,
        "decision": record.decision,
        "exact": record.decision == "exact",
        "deleted_now": metrics.get("deleted"),
        "already_deleted": metrics.get("already_deleted"),
        "version_before": _version_entry(store, record.parent_version),
        "version_after": _version_entry(store, record.version) if record.state == "done" else None,
        "timings": {
            "submitted": record.created,
            "started": started,
            "finished": final["at"] if final else record.updated,
            "seconds": record.actual_seconds,
            "estimated_seconds": record.estimated_seconds,
            "attempts": record.attempts,
        },
        "purged": _purged(ledger, record),
        "error": record.error,
        "ledger": {"event_seq": final["seq"] if final else None, "event_hash": final["hash"] if final else None},
    }
    if record.decision == "noop":
        receipt["noop"] = {"reason": metrics.get("noop"), "deleted_by": metrics.get("deleted_by")}
    if record.decision == "exact" and record.state == "done":
        receipt["exact_retrain"] = {
            "shards": [
                {k: s.get(k) for k in ("shard", "resumed_from_stage", "trained_stages", "samples") if k in s}
                for s in metrics.get("shards", [])
            ],
            "folded_approximate_ids": metrics.get("folded_approx", 0),
        }
    if record.decision == "approx" and record.state == "done":
        settings = plan.get("approx_settings") or {}
        after = store.read_version_info(record.version) if record.version is not None else {}
        pending = {str(s["shard"]): s.get("pending_approx") for s in after.get("shards", [])}
        receipt["approximate"] = {
            "approximate": True,
            "statement": "the deleted samples were removed by modifying the shard models' parameters, not by "
            "retraining without them; the evidence below is measured, not proven",
            "method": settings.get("method"),
            "method_options": settings.get("method_options"),
            "shards": [
                {
                    "shard": s["shard"],
                    "deleted": s["deleted"],
                    "evidence": s.get("evidence"),
                    "amend_rounds": (s.get("amend") or {}).get("rounds"),
                }
                for s in metrics.get("shards", [])
            ],
            "fold": {
                "rule": "pending approximate ids are folded into the next exact retrain of their shard; the service "
                "schedules one when a shard reaches the bound",
                "bound": bound,
                "pending_per_shard_after": pending,
                "exact_by": _fold_deadline(record, bound),
            },
        }
    return receipt


def _fold_deadline(record, bound: dict | None) -> str | None:
    if not bound:
        return None
    import datetime as _dt

    finished = _dt.datetime.fromisoformat(record.updated)
    return (finished + _dt.timedelta(hours=float(bound["max_pending_hours"]))).isoformat(timespec="seconds")


def _purged(ledger, record) -> list[dict]:
    """What the request's commit removed, as the ledger's purges table recorded it (docs/sisa.md)."""
    return [
        {"kind": p["kind"], "path": p["path"], "purged": p["purged"], "detail": p["detail"]}
        for p in ledger.purges(record.id)
    ]


def sign_receipt(receipt: dict, signer: Signer) -> dict:
    return {
        "format": FORMAT,
        "receipt": receipt,
        "signature": {
            "algorithm": "Ed25519",
            "key_id": signer.key_id,
            "public_key": base64.b64encode(public_bytes(signer.public)).decode(),
            "value": signer.sign(canonical(receipt)),
        },
    }


def verify_receipt(document: Any, public=None, ledger=None) -> tuple[list[str], dict]:
    """Problems with a receipt (empty: it verifies) and what was checked.

    ``public``: the service's public key (else only the key inside the receipt is used, which proves the receipt
    is intact but not who made it); ``ledger``: the model's ledger, to check the receipt against the request's
    row and its chained event.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    problems: list[str] = []
    checked: dict[str, Any] = {}
    if (
        not isinstance(document, dict)
        or document.get("format") != FORMAT
        or not isinstance(document.get("receipt"), dict)
        or not isinstance(document.get("signature"), dict)
    ):
        return [f"not an unlearnkit receipt ({FORMAT})"], checked
    receipt, signature = document["receipt"], document["signature"]
    if signature.get("algorithm") != "Ed25519" or not isinstance(signature.get("value"), str):
        return ["the signature is not an Ed25519 signature"], checked
    if public is None:
        try:
            public = Ed25519PublicKey.from_public_bytes(
                base64.b64decode(str(signature.get("public_key")), validate=True)
            )
        except ValueError:
            return ["the receipt's public key is malformed"], checked
        checked["key"] = "the key inside the receipt (not checked against the service's)"
    else:
        checked["key"] = f"the service key {key_id(public)}"
        if signature.get("key_id") != key_id(public):
            problems.append(f"signed with key {signature.get('key_id')!r}, not the service key {key_id(public)}")
    if not verify_signature(public, canonical(receipt), signature["value"]):
        problems.append("the signature does not match the receipt's content (it was changed, or signed by another key)")
    checked["signature"] = not problems
    if ledger is not None:
        problems += _against_ledger(receipt, ledger, checked)
    return problems, checked


def _against_ledger(receipt: dict, ledger, checked: dict) -> list[str]:
    problems = []
    request_id = receipt.get("request_id")
    record = ledger.find(str(request_id))
    if record is None:
        return [f"the ledger has no request {request_id!r}"]
    ids = receipt.get("ids") or {}
    if ids.get("sha256") != record.ids_sha256 or ids.get("count") != record.n_ids:
        problems.append("the receipt's id hash does not match the ledger's request")
    for key, value in (("state", record.state), ("decision", record.decision)):
        if receipt.get(key) != value:
            problems.append(f"the receipt says {key} {receipt.get(key)!r}, the ledger {value!r}")
    after = receipt.get("version_after") or {}
    if record.state == "done" and after.get("number") != record.version:
        problems.append(f"the receipt's version after ({after.get('number')}) is not the ledger's ({record.version})")
    event = receipt.get("ledger") or {}
    hashes = {e["seq"]: e["hash"] for e in ledger.event_list()}
    if hashes.get(event.get("event_seq")) != event.get("event_hash"):
        problems.append(f"the ledger's event {event.get('event_seq')} does not have the receipt's hash")
    chain = ledger.verify()
    checked["chain"] = chain.to_dict()
    if not chain.ok:
        problems.append(f"the ledger's hash chain is broken: {chain.problem}")
    checked["ledger"] = not problems
    return problems
