"""The request ledger: one SQLite row per deletion request, so that no request is lost and each can be shown.

States::

    received --> planned --> running --> done
        \\            \\          \\--> failed   (an error that retrying will not fix; resubmitting retries)
         \\--> done (nothing left to delete: every id was deleted before)

* ``received``: the ids are stored (sorted int64 bytes and their SHA-256) with the requested mode.
* ``planned``: the plan (exact or approximate, per-shard estimates), the version it starts from and the
  version it will produce (``parent_version + 1``).
* ``running``: an attempt started (``attempts`` counts them).
* ``done``: the new model version exists **and every artefact trained on the request's ids is purged**
  (stage checkpoints, superseded versions' weights beyond the retention setting, temporary folders; see
  :mod:`unlearnkit.sisa.store`); actual cost, metrics and the purge are recorded.

Each request also stores the **options** it was submitted with (the planner policy and whether to
evaluate the new version), so that whichever process runs it applies them.

Purges are rows of the ``purges`` table: what was removed (a stage checkpoint, a version's weights, a
temporary folder, a quarantined checkpoint), why, its content hash where it had one, and when. A purge is
planned (rows inserted, ``purged`` NULL) before anything is deleted and stamped when it is done, so that a
kill in the middle leaves the plan behind for the restart to finish; ``request_id`` is NULL for a purge
that no request caused (a repair when the ledger is opened, a retention change).

The database runs in WAL mode with ``synchronous=FULL``: a committed transition survives a crash or a power
cut. Transitions are guarded (``UPDATE ... WHERE state IN (...)``), so a request is never moved backwards
or finished twice. Client-supplied request ids make submission idempotent: submitting the same id with the
same ids, mode and options returns the existing row; with other ids it is refused, and with another mode or
other options too (unless the request failed: then it is queued again with them). Every transition is also
appended to an ``events`` table (the request's history).

The schema version is SQLite's ``user_version``; a ledger is created at schema 1 and brought up to date by
the numbered migrations in ``_MIGRATIONS`` (one transaction each), so that old ledgers open and upgrade in
place. A new schema adds one entry there and bumps ``SCHEMA_VERSION``.

The events form a **hash chain**: each event stores the SHA-256 of its own content (sequence number, request
id, time, state, note, a digest of the request's row as it stood after the transition) and of the event
before it. :meth:`Ledger.verify` recomputes the chain and compares every request's row with the digest in its
last event, so editing, deleting or reordering any event, or editing a request row, is reported with the
first broken link. Removing the newest events is only visible against a chain head recorded elsewhere (a
receipt carries the hash of its request's event; ``verify`` prints the current head).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import UnlearnKitError
from ..sisa.layout import ids_digest

STATES = ("received", "planned", "running", "done", "failed")
UNFINISHED = ("received", "planned", "running")
MODES = ("auto", "exact", "approx")
SCHEMA_VERSION = 3

# Schema 1, as the first ledgers were written; every ledger is created at schema 1 and brought to
# SCHEMA_VERSION by the migrations below, so that a new ledger and an upgraded old one are the same.
_SCHEMA_1 = """
CREATE TABLE IF NOT EXISTS requests (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    id                TEXT NOT NULL UNIQUE,
    state             TEXT NOT NULL CHECK (state IN ('received', 'planned', 'running', 'done', 'failed')),
    mode              TEXT NOT NULL CHECK (mode IN ('auto', 'exact', 'approx')),
    source            TEXT,
    n_ids             INTEGER NOT NULL,
    ids_sha256        TEXT NOT NULL,
    ids               BLOB NOT NULL,
    plan              TEXT,
    decision          TEXT,
    estimated_seconds REAL,
    estimated_samples INTEGER,
    actual_seconds    REAL,
    actual_samples    INTEGER,
    metrics           TEXT,
    parent_version    INTEGER,
    version           INTEGER,
    attempts          INTEGER NOT NULL DEFAULT 0,
    error             TEXT,
    created           TEXT NOT NULL,
    updated           TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL REFERENCES requests(id),
    at         TEXT NOT NULL,
    state      TEXT NOT NULL,
    note       TEXT
);
CREATE INDEX IF NOT EXISTS events_by_request ON events(request_id);
"""

# _MIGRATIONS[v] brings a ledger from schema v to v + 1 (run in one transaction with the user_version bump).
_MIGRATIONS: dict[int, str] = {
    1: """
ALTER TABLE requests ADD COLUMN options TEXT;
CREATE TABLE purges (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT REFERENCES requests(id),
    planned    TEXT NOT NULL,
    purged     TEXT,
    kind       TEXT NOT NULL,
    path       TEXT NOT NULL,
    detail     TEXT
);
CREATE INDEX purges_by_request ON purges(request_id);
""",
    # schema 3: the events' hash chain (events already present are chained by _add_chain right after)
    2: """
ALTER TABLE events ADD COLUMN record TEXT;
ALTER TABLE events ADD COLUMN prev_hash TEXT;
ALTER TABLE events ADD COLUMN hash TEXT;
""",
}
PURGE_KINDS = ("stage", "version-weights", "temporary", "quarantined")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class RequestRecord:
    seq: int
    id: str
    state: str
    mode: str
    source: str | None
    n_ids: int
    ids_sha256: str
    ids: np.ndarray
    plan: dict | None
    decision: str | None
    estimated_seconds: float | None
    estimated_samples: int | None
    actual_seconds: float | None
    actual_samples: int | None
    metrics: dict | None
    parent_version: int | None
    version: int | None
    attempts: int
    error: str | None
    created: str
    updated: str
    options: dict | None = None  # {"policy": {...}, "evaluate": bool}; None in rows written before schema 2

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")

    def to_dict(self, with_ids: bool = False) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in (
            "id", "seq", "state", "mode", "decision", "source", "n_ids", "ids_sha256", "parent_version", "version",
            "estimated_seconds", "estimated_samples", "actual_seconds", "actual_samples", "attempts", "error",
            "created", "updated", "options", "plan", "metrics")}
        if with_ids:
            out["ids"] = self.ids.tolist()
        return out


class Ledger:
    """The ledger at ``path``; created (or an older schema upgraded in place) when opened, unless ``create``
    is False, in which case a missing file is an error and nothing is written."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise UnlearnKitError(f"{self.path} does not exist: no deletion request was ever submitted to this model")
        try:
            self.db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
            self._add_chain()
        except sqlite3.DatabaseError as exc:
            raise UnlearnKitError(f"request ledger {self.path} cannot be opened: {exc}") from None
        if str(mode).lower() != "wal":
            raise UnlearnKitError(
                f"request ledger {self.path}: SQLite refused WAL mode ({mode}); is it on a network file system?"
            )

    def _migrate(self) -> None:
        """Bring the ledger to SCHEMA_VERSION, one migration per transaction (safe against concurrent openers
        and kills: a migration is either applied with its version bump or not at all)."""
        while True:
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version == SCHEMA_VERSION:
                return
            if version > SCHEMA_VERSION or (version and version not in _MIGRATIONS):
                raise UnlearnKitError(
                    f"{self.path} is a ledger of schema {version}; this unlearnkit reads schemas up to "
                    f"{SCHEMA_VERSION} (upgrade unlearnkit)"
                )
            self.db.execute("BEGIN IMMEDIATE")
            try:
                if self.db.execute("PRAGMA user_version").fetchone()[0] == version:  # nobody migrated it meanwhile
                    script = _SCHEMA_1 if version == 0 else _MIGRATIONS[version]
                    for statement in filter(str.strip, script.split(";")):
                        self.db.execute(statement)
                    self.db.execute(f"PRAGMA user_version={1 if version == 0 else version + 1}")
                self.db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def close(self) -> None:
        self.db.close()

    # -- reading -----------------------------------------------------------------------------------------
    def find(self, request_id: str) -> RequestRecord | None:
        row = self.db.execute("SELECT * FROM requests WHERE id = ?", (request_id,)).fetchone()
        return None if row is None else _record(row)

    def get(self, request_id: str) -> RequestRecord:
        record = self.find(request_id)
        if record is None:
            raise UnlearnKitError(f"no request {request_id!r} in {self.path} (see `unlearnkit requests list`)")
        return record

    def list(self, states: Iterable[str] | None = None) -> list[RequestRecord]:
        if states is None:
            rows = self.db.execute("SELECT * FROM requests ORDER BY seq").fetchall()
        else:
            states = tuple(states)
            marks = ",".join("?" * len(states))
            rows = self.db.execute(f"SELECT * FROM requests WHERE state IN ({marks}) ORDER BY seq", states).fetchall()
        return [_record(r) for r in rows]

    def page(self, states: Iterable[str] | None = None, after: int = 0, limit: int = 50) -> list[RequestRecord]:
        """Up to ``limit`` requests with ``seq > after`` (oldest first), optionally only in ``states``."""
        query, args = "SELECT * FROM requests WHERE seq > ?", [int(after)]
        if states is not None:
            states = tuple(states)
            query += f" AND state IN ({','.join('?' * len(states))})"
            args += states
        rows = self.db.execute(query + " ORDER BY seq LIMIT ?", (*args, int(limit))).fetchall()
        return [_record(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Requests per state (every state, zeros included)."""
        found = dict(self.db.execute("SELECT state, COUNT(*) FROM requests GROUP BY state").fetchall())
        return {state: int(found.get(state, 0)) for state in STATES}

    def unfinished(self) -> list[RequestRecord]:
        return self.list(UNFINISHED)

    def events(self, request_id: str) -> list[dict]:
        rows = self.db.execute(
            "SELECT at, state, note FROM events WHERE request_id = ? ORDER BY seq", (request_id,)
        ).fetchall()
        return [dict(r) for r in rows]

    def event_list(self) -> list[dict]:
        """Every event of every request, in ledger order, with its chain hashes."""
        return [dict(r) for r in self.db.execute("SELECT * FROM events ORDER BY seq").fetchall()]

    def verify(self) -> ChainReport:
        """Recompute the hash chain; the first broken link (if any) is reported, nothing is changed."""
        rows = self.db.execute("SELECT * FROM requests ORDER BY seq").fetchall()
        digests = {row["id"]: _row_digest(row) for row in rows}
        last_event: dict[str, dict] = {}
        prev = GENESIS
        events = self.event_list()
        for position, event in enumerate(events):
            where = f"event {event['seq']} (number {position + 1} of {len(events)}, request {event['request_id']!r}, {event['state']})"  # noqa: E501
            if event["prev_hash"] != prev:
                return ChainReport(False, len(events), prev, f"{where} does not follow the event before it "
                                   "(an event was deleted, inserted or moved)", event["seq"])
            if event["hash"] != _event_hash(event):
                return ChainReport(False, len(events), prev, f"{where} was changed after it was written", event["seq"])
            if event["request_id"] not in digests:
                return ChainReport(False, len(events), prev, f"{where} names a request that is not in the ledger "
                                   "(its row was deleted)", event["seq"])
            last_event[event["request_id"]] = event
            prev = event["hash"]
        for request_id, digest in digests.items():
            event = last_event.get(request_id)
            if event is None:
                return ChainReport(False, len(events), prev, f"request {request_id!r} has no event in the chain "
                                   "(its events were deleted, or its row was inserted by hand)", None)
            if event["record"] != digest:
                return ChainReport(False, len(events), prev, f"request {request_id!r} was changed after its last event "
                                   f"(event {event['seq']}, {event['state']})", event["seq"])
        return ChainReport(True, len(events), prev, "", None)

    def event_hash(self, request_id: str, state: str | None = None) -> dict | None:
        """The newest event of ``request_id`` (in ``state``, if given): seq, state, at, hash."""
        query = "SELECT seq, state, at, hash FROM events WHERE request_id = ?" + (" AND state = ?" if state else "")
        row = self.db.execute(query + " ORDER BY seq DESC LIMIT 1", (request_id, state) if state else (request_id,)).fetchone()  # noqa: E501
        return None if row is None else dict(row)

    def deleted_by(self, ids: np.ndarray) -> dict[str, int]:
        """Which done requests deleted (some of) ``ids``: request id -> how many of them."""
        found: dict[str, int] = {}
        for record in self.list(("done",)):
            hits = int(np.isin(ids, record.ids, assume_unique=True).sum())
            if hits:
                found[record.id] = hits
        return found

    # -- writing -----------------------------------------------------------------------------------------
    def submit(self, ids: np.ndarray, request_id: str | None = None, mode: str = "auto",
               source: str | None = None, options: dict | None = None) -> tuple[RequestRecord, bool]:
        """Record a request with the ``options`` it must run with; returns (record, created).

        A known ``request_id`` with the same ids, mode and options is returned as is (idempotent resubmission).
        With other ids it is refused; with another mode or other options it is refused too, unless the
        request failed, in which case it is queued again with the new ones (see :meth:`retry`).
        """
        if mode not in MODES:
            raise UnlearnKitError(f"unknown mode {mode!r}; use auto, exact or approx")
        ids = np.sort(np.asarray(ids, dtype=np.int64))
        digest = ids_digest(ids)
        request_id = request_id if request_id is not None else "r-" + uuid.uuid4().hex[:12]
        if not request_id or len(request_id) > 200 or any(c.isspace() or not c.isprintable() for c in request_id):
            raise UnlearnKitError(f"bad request id {request_id!r}: use 1-200 printable characters without spaces")
        options_json = None if options is None else json.dumps(options, sort_keys=True, default=_json_default)
        now = _now()
        try:
            self.db.execute("BEGIN IMMEDIATE")
            row = self.db.execute("SELECT * FROM requests WHERE id = ?", (request_id,)).fetchone()
            if row is not None:
                self.db.execute("ROLLBACK")
                existing = _record(row)
                if existing.ids_sha256 != digest:
                    raise UnlearnKitError(
                        f"request id {request_id!r} was already used for another request ({existing.n_ids} ids, "
                        f"{existing.state}, submitted {existing.created}); choose a new id")
                same_options = existing.options is None or options is None or \
                    json.dumps(existing.options, sort_keys=True) == options_json
                if (existing.mode != mode or not same_options) and existing.state != "failed":
                    differ = _options_diff(existing.mode, existing.options, mode,
                                           None if options_json is None else json.loads(options_json))
                    raise UnlearnKitError(
                        f"request id {request_id!r} was submitted with other options ({differ}) and is "
                        f"{existing.state}; resubmit it with the same options, or choose a new id")
                return existing, False
            self.db.execute(
                "INSERT INTO requests (id, state, mode, source, n_ids, ids_sha256, ids, options, created, updated) "
                "VALUES (?, 'received', ?, ?, ?, ?, ?, ?, ?, ?)",
                (request_id, mode, source, int(ids.size), digest, ids.astype("<i8").tobytes(), options_json, now, now))
            self._event(request_id, "received", f"{ids.size} ids, mode {mode}" + (f", from {source}" if source else "")
                        + ("" if options is None else f", options {_options_text(None, json.loads(options_json))}"))
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise UnlearnKitError(f"request ledger {self.path}: {exc}") from None
        return self.get(request_id), True

    def mark_planned(self, request_id: str, plan: dict, decision: str, estimated_seconds: float | None,
                     estimated_samples: int | None, parent_version: int, version: int) -> RequestRecord:
        return self._transition(request_id, ("received",), "planned", {
            "plan": json.dumps(plan), "decision": decision, "estimated_seconds": estimated_seconds,
            "estimated_samples": estimated_samples, "parent_version": parent_version, "version": version,
        }, f"{decision} from version {parent_version} to {version}")

    def mark_running(self, request_id: str) -> RequestRecord:
        record = self.get(request_id)
        return self._transition(request_id, ("planned", "running"), "running", {"attempts": record.attempts + 1},
                                f"attempt {record.attempts + 1}")

    def mark_done(self, request_id: str, version: int | None, actual_seconds: float | None, actual_samples: int | None,
                  metrics: dict, note: str = "") -> RequestRecord:
        """The request is done. Refused while a purge planned for it is unfinished: a request is done only
        when no artefact trained on its ids remains."""
        return self._transition(request_id, UNFINISHED, "done", {
            "version": version, "actual_seconds": actual_seconds, "actual_samples": actual_samples,
            "metrics": json.dumps(metrics, default=_json_default), "error": None,
        }, note or f"version {version}", purged=True)

    def mark_failed(self, request_id: str, error: str) -> RequestRecord:
        return self._transition(request_id, UNFINISHED, "failed", {"error": error}, error)

    def retry(self, request_id: str, mode: str | None = None, options: dict | None = None) -> RequestRecord:
        """A failed request goes back to ``received`` (its plan is made again), with a new mode/options if given."""
        values: dict[str, Any] = {"plan": None, "decision": None, "estimated_seconds": None, "estimated_samples": None,
                                  "parent_version": None, "version": None, "error": None}
        if mode is not None:
            if mode not in MODES:
                raise UnlearnKitError(f"unknown mode {mode!r}; use auto, exact or approx")
            values["mode"] = mode
        if options is not None:
            values["options"] = json.dumps(options, sort_keys=True, default=_json_default)
        return self._transition(request_id, ("failed",), "received", values, "resubmitted after failure")

    # -- purges ------------------------------------------------------------------------------------------
    def plan_purge(self, request_id: str | None, items: Iterable[dict]) -> int:
        """Record artefacts about to be removed (``kind``, ``path`` relative to the model directory, ``detail``)
        before any is touched; an artefact already planned and not yet purged is not recorded twice.
        Returns how many rows were added."""
        added = 0
        now = _now()
        try:
            self.db.execute("BEGIN IMMEDIATE")
            for item in items:
                if item["kind"] not in PURGE_KINDS:
                    raise UnlearnKitError(f"unknown purge kind {item['kind']!r}")
                known = self.db.execute("SELECT 1 FROM purges WHERE path = ? AND kind = ? AND purged IS NULL",
                                        (item["path"], item["kind"])).fetchone()
                if known is None:
                    self.db.execute(
                        "INSERT INTO purges (request_id, planned, kind, path, detail) VALUES (?, ?, ?, ?, ?)",
                        (
                            request_id,
                            now,
                            item["kind"],
                            item["path"],
                            json.dumps(item.get("detail") or {}, sort_keys=True, default=_json_default),
                        ),
                    )
                    added += 1
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise UnlearnKitError(f"request ledger {self.path}: {exc}") from None
        return added

    def pending_purges(self) -> list[dict]:
        """Purges planned and not yet done (by any request): the restart finishes them first."""
        rows = self.db.execute("SELECT * FROM purges WHERE purged IS NULL ORDER BY seq").fetchall()
        return [_purge(r) for r in rows]

    def finish_purges(self, paths: Iterable[tuple[str, str]]) -> None:
        """Stamp the planned purges of these (kind, path) pairs as done, now."""
        now = _now()
        try:
            self.db.execute("BEGIN IMMEDIATE")
            for kind, path in paths:
                self.db.execute(
                    "UPDATE purges SET purged = ? WHERE kind = ? AND path = ? AND purged IS NULL", (now, kind, path)
                )
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise UnlearnKitError(f"request ledger {self.path}: {exc}") from None

    def purges(self, request_id: str | None = None, *, all_requests: bool = False) -> list[dict]:
        """The purges of ``request_id`` (None: those no request caused), or every purge with ``all_requests``."""
        if all_requests:
            rows = self.db.execute("SELECT * FROM purges ORDER BY seq").fetchall()
        elif request_id is None:
            rows = self.db.execute("SELECT * FROM purges WHERE request_id IS NULL ORDER BY seq").fetchall()
        else:
            rows = self.db.execute("SELECT * FROM purges WHERE request_id = ? ORDER BY seq", (request_id,)).fetchall()
        return [_purge(r) for r in rows]

    def _transition(self, request_id: str, allowed: tuple[str, ...], state: str, values: dict, note: str,
                    purged: bool = False) -> RequestRecord:
        sets = ", ".join(f"{k} = ?" for k in values)
        marks = ",".join("?" * len(allowed))
        try:
            self.db.execute("BEGIN IMMEDIATE")
            if purged:
                left = self.db.execute("SELECT count(*) FROM purges WHERE request_id = ? AND purged IS NULL",
                                       (request_id,)).fetchone()[0]
                if left:
                    self.db.execute("ROLLBACK")
                    raise UnlearnKitError(f"request {request_id!r} cannot become {state}: {left} planned purge(s) "
                                          "are not finished")
            cursor = self.db.execute(
                f"UPDATE requests SET state = ?, {sets}, updated = ? WHERE id = ? AND state IN ({marks})",
                (state, *values.values(), _now(), request_id, *allowed))
            if cursor.rowcount != 1:
                self.db.execute("ROLLBACK")
                current = self.find(request_id)
                where = "it does not exist" if current is None else f"it is {current.state}"
                raise UnlearnKitError(f"request {request_id!r} cannot become {state}: {where}")
            self._event(request_id, state, note)
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise UnlearnKitError(f"request ledger {self.path}: {exc}") from None
        return self.get(request_id)

    def _event(self, request_id: str, state: str, note: str) -> None:
        """Append an event to the chain (inside the caller's transaction, after the request row changed)."""
        last = self.db.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        row = self.db.execute("SELECT * FROM requests WHERE id = ?", (request_id,)).fetchone()
        event = {"seq": 1 if last is None else last["seq"] + 1, "request_id": request_id, "at": _now(), "state": state,
                 "note": note, "record": _row_digest(row), "prev_hash": GENESIS if last is None else last["hash"]}
        event["hash"] = _event_hash(event)
        self.db.execute("INSERT INTO events (seq, request_id, at, state, note, record, prev_hash, hash) "
                        "VALUES (:seq, :request_id, :at, :state, :note, :record, :prev_hash, :hash)", event)

    def _add_chain(self) -> None:
        """Events written before schema 3 have no hashes: chain them once, in order (the migration added the
        columns). A concurrent opener that chained them first leaves nothing to do."""
        if self.db.execute("SELECT 1 FROM events WHERE hash IS NULL LIMIT 1").fetchone() is None:
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            rows = {r["id"]: r for r in self.db.execute("SELECT * FROM requests").fetchall()}
            prev = GENESIS
            for event in [dict(r) for r in self.db.execute("SELECT * FROM events ORDER BY seq").fetchall()]:
                if event["hash"] is None:
                    row = rows.get(event["request_id"])
                    event.update(record=None if row is None else _row_digest(row), prev_hash=prev)
                    event["hash"] = _event_hash(event)
                    self.db.execute("UPDATE events SET record = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                                    (event["record"], event["prev_hash"], event["hash"], event["seq"]))
                prev = event["hash"]
            self.db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        try:
            self.db.execute("ROLLBACK")
        except sqlite3.Error:
            pass


GENESIS = "0" * 64  # the previous hash of the first event


@dataclass
class ChainReport:
    ok: bool
    events: int
    head: str  # hash of the last event that verified
    problem: str  # the first broken link ("" when ok)
    seq: int | None  # the event where it broke

    def to_dict(self) -> dict:
        return {"ok": self.ok, "events": self.events, "head": self.head, "problem": self.problem or None, "seq": self.seq}  # noqa: E501


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_json_default).encode()


def _row_digest(row: sqlite3.Row) -> str:
    """SHA-256 of a request row; the ids blob enters as its own hash, NULL columns are left out (so a column
    added by a later schema does not change the digest of older rows)."""
    data = {k: row[k] for k in row.keys() if row[k] is not None}
    if "ids" in data:
        data["ids"] = hashlib.sha256(data["ids"]).hexdigest()
    return hashlib.sha256(_canonical(data)).hexdigest()


def _event_hash(event: dict) -> str:
    content = {k: event.get(k) for k in ("seq", "request_id", "at", "state", "note", "record", "prev_hash")}
    return hashlib.sha256(_canonical(content)).hexdigest()


def _record(row: sqlite3.Row) -> RequestRecord:
    data = dict(row)
    data["ids"] = np.frombuffer(data["ids"], dtype="<i8").astype(np.int64)
    for key in ("plan", "metrics", "options"):
        data[key] = json.loads(data[key]) if data[key] else None
    return RequestRecord(**data)


def _purge(row: sqlite3.Row) -> dict:
    data = dict(row)
    data["detail"] = json.loads(data["detail"]) if data["detail"] else {}
    return data


def _flat_options(mode: str | None, options: dict | None) -> dict:
    flat = {} if mode is None else {"mode": mode}
    flat.update((options or {}).get("policy") or {})
    if options and "evaluate" in options:
        flat["evaluate"] = bool(options["evaluate"])
    return flat


def _options_diff(mode: str, options: dict | None, new_mode: str, new_options: dict | None) -> str:
    before, after = _flat_options(mode, options), _flat_options(new_mode, new_options)
    if options is None or new_options is None:
        before, after = {"mode": mode}, {"mode": new_mode}
    keys = [k for k in dict.fromkeys([*before, *after]) if before.get(k) != after.get(k)]
    return ", ".join(f"{k} {before.get(k)} then {after.get(k)}" for k in keys)


def _options_text(mode: str | None, options: dict | None) -> str:
    parts = [] if mode is None else [f"mode {mode}"]
    if options:
        policy = options.get("policy") or {}
        parts += [f"{k}={v}" for k, v in sorted(policy.items())]
        if "evaluate" in options:
            parts.append(f"evaluate={bool(options['evaluate'])}")
    return ", ".join(parts) or "no options"


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
