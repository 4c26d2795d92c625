"""Where independent units of work run: in this process, or as tasks on a Ray cluster (docs/scale.md).

A :class:`Backend` maps a picklable function over a list of jobs and returns the results in the order of the
jobs, whatever order they finish in. :class:`InProcess` (the default) runs them one after the other here and
needs nothing more. :class:`RayBackend` runs each job as a Ray task that asks Ray for ``num_cpus`` CPUs and
``num_gpus`` GPUs (fractional allowed; :class:`BackendOptions` ``task_cpus``/``task_gpus`` override what the
caller asks for) and is retried by Ray up to ``max_retries`` times when its worker dies; Ray is imported only when
such a backend is used (``pip install 'unlearnkit[ray]'``). A job must read its inputs from, and write its outputs
atomically to, a location every node can read: a re-run job then finds what its dead predecessor finished and
writes nothing twice.

Progress: every ``map`` reports each finished job to a :class:`Progress` — a bar with done/total and an ETA on a
terminal, and one JSON line per finished job in ``progress_log`` when one is given.

This module imports nothing else from unlearnkit but its errors and option declarations: the layers that run work
(SISA, the audit, the bench runner) take a backend, not the other way round.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from .errors import UnlearnKitError
from .options import declare, option

BACKENDS = ("local", "ray")
OnResult = Callable[[int, Any], None]  # (index of the job, its result), as each job finishes


@dataclass
class BackendOptions:
    """How a command's independent units of work run (flags of `sisa train`, `forget`, `audit`, `bench`)."""

    backend: Literal["local", "ray"] = option(
        "local", "where units of work run: local (this machine: in this process for one worker, a private local Ray "
                 "instance for --workers > 1) or ray (Ray tasks on --ray-address, else on a local Ray instance; "
                 "docs/scale.md)")
    ray_address: str | None = option(None, "Ray cluster to join: auto or HOST:PORT (default: start a local Ray "
                                           "instance); outputs must be on storage every node can read")
    ray_retries: int = option(3, "times Ray re-runs a task whose worker died (node lost, process killed)", ge=0, le=100)
    task_cpus: float | None = option(None, "CPUs each task asks Ray for (default: its torch threads), so a node never "
                                           "runs more tasks than it has cores", gt=0, le=1024)
    task_gpus: float | None = option(None, "GPUs each task asks Ray for; a fraction shares a GPU between small models "
                                           "(e.g. 0.25: four tasks per GPU; default: 0 on cpu, 1 on cuda)", ge=0, le=64)
    progress_log: str | None = option(None, "append one JSON line per finished task (done, total, elapsed, ETA) to "
                                            "this file")


declare("backend", "execution backend", BackendOptions)


class Progress:
    """Tasks done out of a total, with an ETA: a tqdm bar on a terminal (``bar``) and one JSON object per finished
    task appended to ``log`` (``{"time", "stage", "done", "total", "job", "elapsed_s", "eta_s"}``)."""

    def __init__(self, total: int, stage: str, log: str | os.PathLike | None = None, bar: bool | None = None) -> None:
        self.total, self.stage, self.done = total, stage, 0
        self.started = time.perf_counter()
        self.log = Path(log) if log is not None else None
        show = sys.stderr.isatty() if bar is None else bar
        self._bar = None
        if show and total:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=stage, unit="task", dynamic_ncols=True, file=sys.stderr)
        self._write({"event": "start"})

    def eta(self) -> float | None:
        if not self.done:
            return None
        elapsed = time.perf_counter() - self.started
        return elapsed / self.done * (self.total - self.done)

    def update(self, job: int) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(1)
        self._write({"event": "task", "job": job})

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._write({"event": "end"})

    def _write(self, fields: dict) -> None:
        if self.log is None:
            return
        eta = self.eta()
        line = {"time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"), "stage": self.stage,
                **fields, "done": self.done, "total": self.total,
                "elapsed_s": round(time.perf_counter() - self.started, 3),
                "eta_s": None if eta is None else round(eta, 3)}
        try:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log, "a") as handle:  # one short line per write: appended whole
                handle.write(json.dumps(line) + "\n")
        except OSError as exc:
            raise UnlearnKitError(f"cannot write the progress log {self.log}: {exc.strerror or exc}") from None


class Backend:
    """Runs ``fn(job)`` for every job; results in job order."""

    name = "abstract"
    workers = 1  # tasks that run at the same time (at most)
    progress_log: str | None = None
    progress_bar: bool | None = None  # None: on a terminal

    def map(self, fn: Callable[[Any], Any], jobs: Sequence[Any], *, num_cpus: float = 1, num_gpus: float = 0,
            on_result: OnResult | None = None, stage: str = "tasks") -> list[Any]:
        raise NotImplementedError

    @property
    def started(self) -> bool:
        """Whether the backend can run tasks without a start-up cost now."""
        return True

    def progress(self, total: int, stage: str) -> Progress:
        return Progress(total, stage, self.progress_log, self.progress_bar)

    def close(self) -> None:
        """Release what the backend started (nothing for the in-process one)."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class InProcess(Backend):
    """Every job here, one after the other, in job order."""

    name = "local"

    def __init__(self, progress_log: str | os.PathLike | None = None, progress_bar: bool | None = None) -> None:
        self.progress_log = None if progress_log is None else str(progress_log)
        self.progress_bar = progress_bar

    def map(self, fn, jobs, *, num_cpus=1, num_gpus=0, on_result=None, stage="tasks"):
        results = []
        progress = self.progress(len(jobs), stage)
        try:
            for index, job in enumerate(jobs):
                results.append(fn(job))
                progress.update(index)
                if on_result is not None:
                    on_result(index, results[-1])
        finally:
            progress.close()
        return results


class RayBackend(Backend):
    """Every job a Ray task. ``address``: ``None`` starts a local Ray instance of ``num_cpus`` CPUs (all of this
    machine's when ``None``) unless Ray is already initialised in this process; ``"auto"`` joins the cluster
    running on this machine; ``"HOST:PORT"`` joins that cluster's head node. A local instance this backend
    started is shut down by :meth:`close`; a cluster it joined is only disconnected from.

    ``task_cpus``/``task_gpus``, when given, replace the resources a caller's ``map`` asks for per task."""

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None, max_retries: int = 3,
                 task_cpus: float | None = None, task_gpus: float | None = None,
                 progress_log: str | os.PathLike | None = None, progress_bar: bool | None = None,
                 workers: int | None = None) -> None:
        if max_retries < 0:
            raise UnlearnKitError(f"max_retries must be >= 0, not {max_retries}")
        if address is not None:
            check_address(address)
        self.address = address
        self.num_cpus = num_cpus
        self.max_retries = max_retries
        self.task_cpus, self.task_gpus = task_cpus, task_gpus
        self.progress_log = None if progress_log is None else str(progress_log)
        self.progress_bar = progress_bar
        self._workers = workers
        self._ray = None
        self._owned = False

    @property
    def workers(self) -> int:  # type: ignore[override]
        """Tasks that run at once: as many as the caller said, else the cluster's CPUs over ``task_cpus``."""
        if self._workers is not None:
            return self._workers
        cpus = self._ray.cluster_resources().get("CPU", 1) if self._ray is not None else (self.num_cpus or
                                                                                          os.cpu_count() or 1)
        return max(1, int(cpus // (self.task_cpus or 1)))

    @property
    def started(self) -> bool:
        return self._ray is not None

    def ray(self):
        if self._ray is not None:
            return self._ray
        try:
            import ray
        except ImportError as exc:
            raise UnlearnKitError("the Ray backend needs Ray: pip install 'unlearnkit[ray]'") from exc
        if not ray.is_initialized():
            try:
                if self.address is None:  # "local": a new instance, never a cluster another run left on this machine
                    # Ray runs its workers at nice 15 by default: on a machine busy with anything else they would
                    # get a sliver of the CPU that the in-process path gets whole (RAY_worker_niceness overrides).
                    os.environ.setdefault("RAY_worker_niceness", "0")
                    ray.init(address="local", num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=False,
                             configure_logging=False)
                else:
                    ray.init(address=self.address, log_to_driver=False, configure_logging=False)
            except (ConnectionError, ValueError, RuntimeError, TimeoutError) as exc:
                where = "a local Ray instance" if self.address is None else f"the Ray cluster at {self.address}"
                raise UnlearnKitError(f"cannot start or join {where}: {str(exc).splitlines()[0]}") from exc
            self._owned = True
        self._ray = ray
        return ray

    def map(self, fn, jobs, *, num_cpus=1, num_gpus=0, on_result=None, stage="tasks"):
        if not jobs:
            return []
        ray = self.ray()
        cpus = self.task_cpus if self.task_cpus is not None else num_cpus
        gpus = self.task_gpus if self.task_gpus is not None else num_gpus
        task = ray.remote(_call).options(num_cpus=cpus, num_gpus=gpus, max_retries=self.max_retries,
                                         retry_exceptions=False)
        shipped = ray.put(fn)  # once, however many jobs (a partial may carry settings)
        refs = [task.remote(shipped, job) for job in jobs]
        index_of = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(refs)
        pending = list(refs)
        progress = self.progress(len(refs), stage)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    i = index_of[ref]
                    results[i] = _unwrap(ray, ref)
                    progress.update(i)
                    if on_result is not None:
                        on_result(i, results[i])
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        finally:
            progress.close()
        return results

    def close(self) -> None:
        if self._ray is not None and self._owned:
            self._ray.shutdown()
        self._ray, self._owned = None, False


def ray_available() -> bool:
    """Whether Ray can be imported here (the ``[ray]`` extra)."""
    import importlib.util

    if "ray" in sys.modules:  # imported already (or blocked: None)
        return sys.modules["ray"] is not None
    return importlib.util.find_spec("ray") is not None


def check_address(address: str) -> None:
    """``auto`` or ``HOST:PORT`` with a reachable port, checked in seconds (Ray itself retries a wrong address for
    a minute before it gives up)."""
    if address == "auto":
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UnlearnKitError(f"bad --ray-address {address!r}: use auto or HOST:PORT")
    import socket

    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            pass
    except OSError as exc:
        raise UnlearnKitError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def _call(fn: Callable[[Any], Any], job: Any) -> Any:
    """A Ray task: any callable (a function, a ``functools.partial``), shipped as an object."""
    return fn(job)


def _unwrap(ray, ref):
    """The task's result; a task that raised re-raises its own exception here (an ``UnlearnKitError`` stays one,
    so the CLI reports it in one line)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from None
        raise


def make_backend(name: str = "local", *, address: str | None = None, num_cpus: int | None = None,
                 max_retries: int = 3, workers: int | None = 1, task_cpus: float | None = None,
                 task_gpus: float | None = None, progress_log: str | os.PathLike | None = None,
                 progress_bar: bool | None = None) -> Backend:
    """The backend called ``name`` (one of :data:`BACKENDS`). ``local`` with ``workers > 1`` is a private local Ray
    instance of ``num_cpus`` CPUs (the home-made process pools are gone: Ray is the one engine for parallel work)."""
    if name == "local":
        if address is not None:
            raise UnlearnKitError("--ray-address needs --backend ray")
        if workers is None or workers <= 1:
            return InProcess(progress_log, progress_bar)
        if not ray_available():
            raise UnlearnKitError(f"{workers} workers run on Ray, which is not installed: pip install "
                                  f"'unlearnkit[ray]', or use --workers 1")
    elif name != "ray":
        raise UnlearnKitError(f"unknown backend {name!r} (one of {', '.join(BACKENDS)})")
    elif not ray_available():
        raise UnlearnKitError("--backend ray needs Ray, which is not installed: pip install 'unlearnkit[ray]'")
    return RayBackend(address, num_cpus=num_cpus, max_retries=max_retries, task_cpus=task_cpus, task_gpus=task_gpus,
                      progress_log=progress_log, progress_bar=progress_bar, workers=workers)


def backend_from(options: BackendOptions, *, workers: int | None = 1, threads: int = 1) -> Backend:
    """The backend ``options`` describe for ``workers`` tasks at a time of ``threads`` torch threads each (``None``:
    as many as a local Ray instance of all this machine's CPUs runs; in process for the local backend)."""
    return make_backend(options.backend, address=options.ray_address,
                        num_cpus=None if workers is None else workers * threads, max_retries=options.ray_retries,
                        workers=workers or 1 if options.backend == "local" else workers,
                        task_cpus=options.task_cpus, task_gpus=options.task_gpus, progress_log=options.progress_log)


@contextlib.contextmanager
def torch_threads(n: int):
    """Run a block with ``n`` torch threads (a task's thread count decides its CPU results bit for bit)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


__all__ = ["Backend", "BackendOptions", "InProcess", "Progress", "RayBackend", "backend_from", "make_backend",
           "ray_available",
           "torch_threads", "BACKENDS"]
