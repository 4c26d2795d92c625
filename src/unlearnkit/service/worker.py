"""The deletion worker: runs the ledger's requests beside the serving process, and keeps the fold bound.

``unlearnkit serve`` starts it as a separate process (``python -m unlearnkit.service.worker --model DIR``) and
restarts it if it dies, so a retrain never holds the serving process's interpreter and a killed worker loses
nothing: the ledger and :class:`unlearnkit.hybrid.Unlearner` already make every request run exactly once
across crashes (the worker dies with its server: ``PR_SET_PDEATHSIG``).

The **fold bound**: pending approximate deletions are folded into the next exact retrain of their shard (the
planner already does that whenever an exact request touches the shard). The worker also schedules that retrain
itself, as an ``exact`` request for the shard's pending ids, once a shard holds ``max_pending_ids`` of them or
its oldest one is ``max_pending_hours`` old.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import UnlearnKitError


@dataclass
class FoldBound:
    max_pending_ids: int = 256  # an exact retrain of a shard is scheduled once it has this many pending ids ...
    max_pending_hours: float = 24.0  # ... or its oldest pending id was deleted approximately this long ago

    def __post_init__(self) -> None:
        if not (isinstance(self.max_pending_ids, int) and self.max_pending_ids >= 1):
            raise UnlearnKitError("--fold-after-ids must be an integer >= 1")
        if not (self.max_pending_hours == self.max_pending_hours and 0 < self.max_pending_hours < 1e6):
            raise UnlearnKitError("--fold-after-hours must be a number > 0")

    def to_dict(self) -> dict:
        return asdict(self)


def _parse_time(text: str) -> _dt.datetime:
    return _dt.datetime.fromisoformat(text)


def pending_by_shard(sisa, ledger, status: np.ndarray) -> dict[int, dict]:
    """Shard -> its pending approximate ids and since when the oldest of them is pending."""
    from ..sisa.layout import DELETED_APPROX

    pending = np.flatnonzero(status == DELETED_APPROX)
    out: dict[int, dict] = {}
    if pending.size == 0:
        return out
    shard_of = sisa.provenance.shard_of
    for shard in np.unique(shard_of[pending]).tolist():
        ids = pending[shard_of[pending] == shard]
        out[int(shard)] = {"ids": ids, "since": None}
    for record in ledger.list(("done",)):
        if record.decision != "approx":
            continue
        hit = record.ids[status[record.ids] == DELETED_APPROX]
        for shard in np.unique(shard_of[hit]).tolist():
            entry = out[int(shard)]
            if entry["since"] is None or record.updated < entry["since"]:
                entry["since"] = record.updated
    return out


def due_folds(sisa, ledger, bound: FoldBound, now: _dt.datetime | None = None) -> list[tuple[str, np.ndarray, str]]:
    """(request id, ids, reason) of the exact retrains the bound asks for now."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    version = sisa.store.current_version()
    status = sisa.store.read_version(version).status
    due = []
    for shard, entry in pending_by_shard(sisa, ledger, status).items():
        count = int(entry["ids"].size)
        age = None if entry["since"] is None else (now - _parse_time(entry["since"])).total_seconds() / 3600
        reason = None
        if count >= bound.max_pending_ids:
            reason = f"shard {shard} holds {count} pending approximate ids (bound {bound.max_pending_ids})"
        elif age is not None and age >= bound.max_pending_hours:
            reason = f"shard {shard}'s oldest pending approximate id is {age:.1f} h old (bound {bound.max_pending_hours:g} h)"  # noqa: E501
        if reason:
            due.append((f"fold-shard{shard}-v{version}", entry["ids"], reason))
    return due


def run_worker(
    model_dir: str,
    bound: FoldBound,
    *,
    device: str = "cpu",
    poll: float = 0.25,
    parent: int | None = None,
    once: bool = False,
) -> int:
    """Process requests until the parent process goes away (or, with ``once``, until none is left)."""
    from ..hybrid import Unlearner

    def say(text: str) -> None:
        print(f"unlearnkit worker: {text}", file=sys.stderr, flush=True)

    with Unlearner(model_dir, device=device, echo=True) as unlearner:
        say(f"started (pid {os.getpid()}), model {model_dir}")
        while True:
            if parent is not None and os.getppid() != parent:
                say("the server went away; stopping")
                return 0
            worked = False
            if unlearner.ledger.unfinished():
                worked = True
                try:
                    unlearner.run_pending()
                except UnlearnKitError as exc:
                    say(f"a request failed: {exc}")
                    worked = False  # what is left cannot run now (e.g. planned against another version): wait
            else:
                for request_id, ids, reason in due_folds(unlearner.sisa, unlearner.ledger, bound):
                    if unlearner.ledger.find(request_id) is None:
                        say(f"scheduling {request_id}: {reason}")
                        unlearner.ledger.submit(ids, request_id, "exact", f"fold bound: {reason}")
                        worked = True
            if once and not worked:
                return 0
            if not worked:
                time.sleep(poll)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the worker notices its parent is gone at its next poll


class WorkerSupervisor:
    """Starts the worker process and restarts it whenever it exits (a thread of the serving process)."""

    def __init__(
        self,
        model_dir: str | os.PathLike,
        bound: FoldBound,
        device: str = "cpu",
        threads: int = 1,
        pid_file: str | os.PathLike | None = None,
    ) -> None:
        self.model_dir, self.bound, self.device, self.threads = str(model_dir), bound, device, threads
        self.pid_file = None if pid_file is None else Path(pid_file)
        self.process: subprocess.Popen | None = None
        self.starts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="unlearnkit-worker-supervisor", daemon=True)

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _spawn(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        command = [
            sys.executable,
            "-m",
            "unlearnkit.service.worker",
            "--model",
            self.model_dir,
            "--device",
            self.device,
            "--parent",
            str(os.getpid()),
            "--threads",
            str(self.threads),
            "--fold-after-ids",
            str(self.bound.max_pending_ids),
            "--fold-after-hours",
            str(self.bound.max_pending_hours),
        ]
        self.process = subprocess.Popen(command, env=env, preexec_fn=_die_with_parent)
        self.starts += 1
        if self.pid_file is not None:
            self.pid_file.write_text(f"{self.process.pid}\n")

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            if self.process is not None and self.process.poll() is not None:
                print(
                    f"unlearnkit serve: the worker exited ({self.process.returncode}); restarting it",
                    file=sys.stderr,
                    flush=True,
                )
                self._spawn()

    def stop(self) -> None:
        self._stop.set()
        if self.alive:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unlearnkit.service.worker")
    parser.add_argument("--model", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--parent", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fold-after-ids", type=int, default=FoldBound.max_pending_ids)
    parser.add_argument("--fold-after-hours", type=float, default=FoldBound.max_pending_hours)
    parser.add_argument("--once", action="store_true", help="stop when no request is left")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, args.threads))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        return run_worker(
            args.model,
            FoldBound(args.fold_after_ids, args.fold_after_hours),
            device=args.device,
            parent=args.parent,
            once=args.once,
        )
    except UnlearnKitError as exc:
        print(f"unlearnkit: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["FoldBound", "WorkerSupervisor", "due_folds", "pending_by_shard", "run_worker"]
