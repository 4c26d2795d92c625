"""Fault injection for crash tests: ``UNLEARNKIT_FAULT=POINT:N`` SIGKILLs the process at the N-th time it
reaches the named point.

This exists so that tests and ``benchmarks/kill_trials.py`` can kill a real ``unlearnkit`` process at a
precise moment (while a stage checkpoint is half written, between a version's commit and the purge, ...)
instead of racing a timer against it. Unset (always, in normal use) it costs one dictionary lookup per
point. Several points may be given, comma-separated (``stage-write:2,purge:1``); each counts on its own.

The kill is delivered with ``SIGKILL`` to the process that owns the run: a shard worker process (a Ray worker
of the run's local Ray instance) that reaches a point kills its parent, exactly as if the
``forget`` command itself had been killed, and then itself. Nothing is flushed, closed or cleaned up, which
is the point.

Points (see docs/sisa.md, "Crash tests"):

=====================  ===============================================================================
``stage-trained``      a stage finished training, before its checkpoint is written
``stage-write``        a stage checkpoint is complete in its temporary folder, before the rename
``approx-done``        the approximate path updated the affected shards, before the new version is written
``version-written``    a version directory is complete in its temporary folder, before the rename
``committed``          a request's version was renamed into place (its commit), before the purge
``purge``              the purge removed one artefact, before the next
``purged``             the purge finished, before the ledger records the request as ``done``
=====================  ===============================================================================
"""

from __future__ import annotations

import os
import signal

ENV = "UNLEARNKIT_FAULT"
OWNER_ENV = "UNLEARNKIT_FAULT_OWNER"
POINTS = ("stage-trained", "stage-write", "approx-done", "version-written", "committed", "purge", "purged")

_counts: dict[str, int] = {}


def _plan() -> dict[str, int]:
    spec = os.environ.get(ENV, "")
    plan: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, count = part.partition(":")
        if name not in POINTS or not count.isdigit() or int(count) < 1:
            raise ValueError(f"{ENV}={spec!r}: expected POINT:N with POINT one of {', '.join(POINTS)} and N >= 1")
        plan[name] = int(count)
    return plan


def arm() -> None:
    """Record this process as the owner of the run (called by the command line before it starts work), so
    that worker processes, which inherit the environment, kill it rather than only themselves."""
    if os.environ.get(ENV) and not os.environ.get(OWNER_ENV):
        _plan()  # a malformed specification fails here, at the start, not in the middle of a run
        os.environ[OWNER_ENV] = str(os.getpid())


def point(name: str) -> None:
    """Count one pass through ``name``; SIGKILL the run if this is the pass ``UNLEARNKIT_FAULT`` names."""
    if not os.environ.get(ENV):
        return
    want = _plan().get(name)
    if want is None:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] != want:
        return
    owner = int(os.environ.get(OWNER_ENV) or os.getpid())
    if owner != os.getpid():
        try:
            os.kill(owner, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.kill(os.getpid(), signal.SIGKILL)
