"""Where independent units of work run: in this process, or as tasks on a Ray cluster (docs/scale.md).

A :class:`Backend` maps a picklable function over a list of jobs and returns the results in the order of the
jobs, whatever order they finish in. :class:`InProcess` (the default) runs them one after the other here and
needs nothing more. :class:`RayBackend` runs each job as a Ray task that asks Ray for ``num_cpus`` CPUs and
``num_gpus`` GPUs (fractional allowed) and is retried by Ray up to ``max_retries`` times when its worker dies;
Ray is imported only when such a backend is used (``pip install 'unlearnkit[ray]'``). A job must read its
inputs from, and write its outputs atomically to, a location every node can read: a re-run job then finds
what its dead predecessor finished and writes nothing twice.

This module imports nothing else from unlearnkit but its errors: the layers that run work (SISA today) take a
backend, not the other way round.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from .errors import UnlearnKitError

BACKENDS = ("local", "ray")
OnResult = Callable[[int, Any], None]  # (index of the job, its result), as each job finishes


class Backend:
    """Runs ``fn(job)`` for every job; results in job order."""

    name = "abstract"

    def map(self, fn: Callable[[Any], Any], jobs: Sequence[Any], *, num_cpus: float = 1, num_gpus: float = 0,
            on_result: OnResult | None = None) -> list[Any]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the backend started (nothing for the in-process one)."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class InProcess(Backend):
    """Every job here, one after the other, in job order."""

    name = "local"

    def map(self, fn, jobs, *, num_cpus=1, num_gpus=0, on_result=None):
        results = []
        for index, job in enumerate(jobs):
            results.append(fn(job))
            if on_result is not None:
                on_result(index, results[-1])
        return results


class RayBackend(Backend):
    """Every job a Ray task. ``address``: ``None`` starts a local Ray instance of ``num_cpus`` CPUs (all of this
    machine's when ``None``) unless Ray is already initialised in this process; ``"auto"`` joins the cluster
    running on this machine; ``"HOST:PORT"`` joins that cluster's head node. A local instance this backend
    started is shut down by :meth:`close`; a cluster it joined is only disconnected from."""

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None, max_retries: int = 3) -> None:
        if max_retries < 0:
            raise UnlearnKitError(f"max_retries must be >= 0, not {max_retries}")
        self.address = address
        self.num_cpus = num_cpus
        self.max_retries = max_retries
        self._ray = None
        self._owned = False

    def ray(self):
        if self._ray is not None:
            return self._ray
        try:
            import ray
        except ImportError as exc:
            raise UnlearnKitError("the Ray backend needs Ray: pip install 'unlearnkit[ray]'") from exc
        if not ray.is_initialized():
            try:
                if self.address is None:
                    ray.init(num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=False)
                else:
                    ray.init(address=self.address, log_to_driver=False)
            except (ConnectionError, ValueError, RuntimeError, TimeoutError) as exc:
                where = "a local Ray instance" if self.address is None else f"the Ray cluster at {self.address}"
                raise UnlearnKitError(f"cannot start or join {where}: {str(exc).splitlines()[0]}") from exc
            self._owned = True
        self._ray = ray
        return ray

    def map(self, fn, jobs, *, num_cpus=1, num_gpus=0, on_result=None):
        if not jobs:
            return []
        ray = self.ray()
        task = ray.remote(_call).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=self.max_retries,
                                         retry_exceptions=False)
        shipped = ray.put(fn)  # once, however many jobs (a partial may carry settings)
        refs = [task.remote(shipped, job) for job in jobs]
        index_of = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(refs)
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    i = index_of[ref]
                    results[i] = _unwrap(ray, ref)
                    if on_result is not None:
                        on_result(i, results[i])
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return results

    def close(self) -> None:
        if self._ray is not None and self._owned:
            self._ray.shutdown()
        self._ray, self._owned = None, False


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
                 max_retries: int = 3) -> Backend:
    """The backend called ``name`` (one of :data:`BACKENDS`)."""
    if name == "local":
        if address is not None:
            raise UnlearnKitError("--ray-address needs --backend ray")
        return InProcess()
    if name == "ray":
        return RayBackend(address, num_cpus=num_cpus, max_retries=max_retries)
    raise UnlearnKitError(f"unknown backend {name!r} (one of {', '.join(BACKENDS)})")


__all__ = ["Backend", "InProcess", "RayBackend", "make_backend", "BACKENDS"]
