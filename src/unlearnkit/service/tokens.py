"""API tokens with scopes, stored only as keyed hashes.

A token reads ``uk_<id>_<secret>``; it is shown once, when created. ``MODEL/service/tokens.json`` keeps its id,
name, scopes, creation/revocation times and HMAC-SHA256(server secret, token) (the ``cryptography`` package);
checking a presented token recomputes that HMAC and compares in constant time. A stolen ``tokens.json``
without the secret file gives nothing to test guesses against; both files are mode 0600.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac

from ..errors import UnlearnKitError
from .keys import _read_private, _write_private, service_dir, token_secret

SCOPES = ("predict", "delete", "read", "admin")  # admin may do everything
FORMAT = "unlearnkit-tokens/1"
FILE = "tokens.json"
_TOKEN = re.compile(r"^uk_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})$")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _mac(key: bytes, token: str) -> hmac.HMAC:
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(token.encode())
    return mac


@dataclass
class Token:
    id: str
    name: str
    scopes: list[str]
    created: str
    revoked: str | None = None

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "scopes": self.scopes,
            "created": self.created,
            "revoked": self.revoked,
        }


def parse_scopes(text: str | list[str]) -> list[str]:
    items = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    unknown = [s for s in items if s not in SCOPES]
    if not items or unknown:
        raise UnlearnKitError(
            f"unknown scope {unknown[0]!r}"
            if unknown
            else "give at least one scope" + f"; scopes are {', '.join(SCOPES)} (comma-separated)"
        )
    return sorted(set(items), key=SCOPES.index)


class TokenStore:
    """``MODEL/service/tokens.json``; re-read when the file changes, so a revocation applies at once."""

    def __init__(self, model_dir: str | os.PathLike) -> None:
        self.model_dir = Path(model_dir)
        self.path = service_dir(model_dir) / FILE
        self._key: bytes | None = None
        self._stamp: tuple | None = None
        self._entries: dict[str, dict] = {}

    # -- reading -----------------------------------------------------------------------------------
    def _load(self) -> dict[str, dict]:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            self._entries, self._stamp = {}, None
            return self._entries
        stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
        if stamp != self._stamp:
            try:
                data = json.loads(_read_private(self.path, "token file"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise UnlearnKitError(f"token file {self.path} is corrupted: {exc}") from None
            if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("tokens"), list):
                raise UnlearnKitError(f"token file {self.path} is not an unlearnkit token file ({FORMAT})")
            self._entries = {e["id"]: e for e in data["tokens"]}
            self._stamp = stamp
        return self._entries

    def list(self) -> list[Token]:
        return [
            Token(e["id"], e["name"], list(e["scopes"]), e["created"], e.get("revoked")) for e in self._load().values()
        ]

    def check(self, presented: str) -> Token | None:
        """The live token that ``presented`` is, or None (unknown, malformed, revoked or wrong secret)."""
        match = _TOKEN.match(presented or "")
        if match is None:
            return None
        entry = self._load().get(match.group(1))
        if entry is None or entry.get("revoked"):
            return None
        if self._key is None:
            self._key = token_secret(self.model_dir)
        try:
            _mac(self._key, presented).verify(bytes.fromhex(entry["hmac"]))  # constant-time comparison
        except InvalidSignature:
            return None
        return Token(entry["id"], entry["name"], list(entry["scopes"]), entry["created"], None)

    # -- writing (the CLI) -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, dict]]:
        service_dir(self.model_dir, create=True)
        with open(self.path.with_name(".tokens.lock"), "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            self._stamp = None
            entries = dict(self._load())
            yield entries
            body = {"format": FORMAT, "tokens": list(entries.values())}
            _write_private(self.path, (json.dumps(body, indent=2) + "\n").encode())

    def create(self, scopes: list[str], name: str = "") -> tuple[str, Token]:
        """A new token; returns (the token text — shown once, never stored —, its record)."""
        scopes = parse_scopes(scopes)
        if len(name) > 100 or any(not c.isprintable() for c in name):
            raise UnlearnKitError("a token name is at most 100 printable characters")
        key = token_secret(self.model_dir, create=True)
        with self._locked() as entries:
            token_id = secrets.token_hex(6)
            while token_id in entries:
                token_id = secrets.token_hex(6)
            text = f"uk_{token_id}_{secrets.token_urlsafe(32)}"
            entries[token_id] = {
                "id": token_id,
                "name": name,
                "scopes": scopes,
                "created": _now(),
                "revoked": None,
                "hmac": _mac(key, text).finalize().hex(),
            }
        return text, Token(token_id, name, scopes, entries[token_id]["created"])

    def revoke(self, token_id: str) -> Token:
        with self._locked() as entries:
            entry = entries.get(token_id)
            if entry is None:
                raise UnlearnKitError(f"no token {token_id!r} (see `unlearnkit tokens list`)")
            if not entry.get("revoked"):
                entry["revoked"] = _now()
        return Token(entry["id"], entry["name"], list(entry["scopes"]), entry["created"], entry["revoked"])
