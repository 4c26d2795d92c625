"""The request ledger: one SQLite row per deletion request, so that no request is lost and each can be shown.

States::

    received --> planned --> running --> done
        \\            \\          \\--> failed   (an error that retrying will not fix; resubmitting retries)
         \\--> done (nothing left to delete: every id was deleted before)

* ``received``: the ids are stored (sorted int64 bytes and their SHA-256) with the requested mode.
* ``planned``: the plan (exact or approximate, per-shard estimates), the version it starts from and the
  version it will produce (``parent_version + 1``).
* ``running``: an attempt started (``attempts`` counts them).
* ``done``: the new model version exists; actual cost and metrics are recorded.

The database runs in WAL mode with ``synchronous=FULL``: a committed transition survives a crash or a power
cut. Transitions are guarded (``UPDATE ... WHERE state IN (...)``), so a request is never moved backwards
or finished twice. Client-supplied request ids make submission idempotent: submitting the same id with the
same ids returns the existing row; with other ids it is refused. Every transition is also appended to an
``events`` table (the request's history).
"""

from __future__ import annotations

import datetime as _dt
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
SCHEMA_VERSION = 1

_SCHEMA = """
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

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")

    def to_dict(self, with_ids: bool = False) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in (
            "id", "seq", "state", "mode", "decision", "source", "n_ids", "ids_sha256", "parent_version", "version",
            "estimated_seconds", "estimated_samples", "actual_seconds", "actual_samples", "attempts", "error",
            "created", "updated", "plan", "metrics")}
        if with_ids:
            out["ids"] = self.ids.tolist()
        return out


class Ledger:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise UnlearnKitError(f"{self.path} is a ledger of schema {version}; this unlearnkit reads schema {SCHEMA_VERSION}")
            self.db.executescript(_SCHEMA)
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise UnlearnKitError(f"request ledger {self.path} cannot be opened: {exc}") from None
        if str(mode).lower() != "wal":
            raise UnlearnKitError(f"request ledger {self.path}: SQLite refused WAL mode ({mode}); is it on a network file system?")

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

    def unfinished(self) -> list[RequestRecord]:
        return self.list(UNFINISHED)

    def events(self, request_id: str) -> list[dict]:
        rows = self.db.execute("SELECT at, state, note FROM events WHERE request_id = ? ORDER BY seq", (request_id,)).fetchall()
        return [dict(r) for r in rows]

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
               source: str | None = None) -> tuple[RequestRecord, bool]:
        """Record a request; returns (record, created). An existing id with the same ids is returned as is."""
        if mode not in MODES:
            raise UnlearnKitError(f"unknown mode {mode!r}; use auto, exact or approx")
        ids = np.sort(np.asarray(ids, dtype=np.int64))
        digest = ids_digest(ids)
        request_id = request_id if request_id is not None else "r-" + uuid.uuid4().hex[:12]
        if not request_id or len(request_id) > 200 or any(c.isspace() for c in request_id):
            raise UnlearnKitError(f"bad request id {request_id!r}: use 1-200 characters without spaces")
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
                return existing, False
            self.db.execute(
                "INSERT INTO requests (id, state, mode, source, n_ids, ids_sha256, ids, created, updated) "
                "VALUES (?, 'received', ?, ?, ?, ?, ?, ?, ?)",
                (request_id, mode, source, int(ids.size), digest, ids.astype("<i8").tobytes(), now, now))
            self._event(request_id, "received", f"{ids.size} ids, mode {mode}" + (f", from {source}" if source else ""))
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
        return self._transition(request_id, UNFINISHED, "done", {
            "version": version, "actual_seconds": actual_seconds, "actual_samples": actual_samples,
            "metrics": json.dumps(metrics, default=_json_default), "error": None,
        }, note or f"version {version}")

    def mark_failed(self, request_id: str, error: str) -> RequestRecord:
        return self._transition(request_id, UNFINISHED, "failed", {"error": error}, error)

    def retry(self, request_id: str) -> RequestRecord:
        """A failed request goes back to ``received`` (its plan is made again)."""
        return self._transition(request_id, ("failed",), "received", {
            "plan": None, "decision": None, "estimated_seconds": None, "estimated_samples": None,
            "parent_version": None, "version": None, "error": None}, "resubmitted after failure")

    def _transition(self, request_id: str, allowed: tuple[str, ...], state: str, values: dict, note: str) -> RequestRecord:
        sets = ", ".join(f"{k} = ?" for k in values)
        marks = ",".join("?" * len(allowed))
        try:
            self.db.execute("BEGIN IMMEDIATE")
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
        self.db.execute("INSERT INTO events (request_id, at, state, note) VALUES (?, ?, ?, ?)", (request_id, _now(), state, note))

    def _rollback(self) -> None:
        try:
            self.db.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def _record(row: sqlite3.Row) -> RequestRecord:
    data = dict(row)
    data["ids"] = np.frombuffer(data["ids"], dtype="<i8").astype(np.int64)
    for key in ("plan", "metrics"):
        data[key] = json.loads(data[key]) if data[key] else None
    return RequestRecord(**data)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
