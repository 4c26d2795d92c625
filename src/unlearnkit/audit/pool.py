"""Reference models for the audit, trained once, cached, and trained as tasks of an execution backend.

Every model the audit needs is a job: an *original* (trained on D, seed k), a *retrained* model (the
original recipe on D_r, training seed ``REFERENCE_SEED_OFFSET + k``, or a split model for memorisation), or an
*unlearned* model (a method run on original k with seed k). Checkpoints live in the benchmark runner's
:class:`~unlearnkit.bench.runner.ModelCache` (keyed by a hash of their configuration, so a benchmark and an
audit share them); the audit itself only needs each model's logits on the training and test sets, which are
cached beside them as safetensors (unlearned models keep only their logits and a JSON record, not weights).

Jobs run as tasks of an execution backend (:mod:`unlearnkit.backends`): with one worker in this process, else as
Ray tasks of ``threads`` torch threads each (one by default: on a shared CPU a one-thread process keeps its core,
while multi-thread processes spin-wait on each other), on a local Ray instance or a cluster. Every output is
written atomically under the cache (a shared directory on a cluster), so a task Ray re-runs finds what its dead
predecessor finished. Results are bitwise the same either way (CPU training is deterministic per seed).
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from .._util import atomic_path, resolve_device
from ..backends import Backend, InProcess, make_backend, torch_threads
from ..bench.runner import ModelCache, config_hash, worker_dataset
from ..bench.suite import Suite, Variant
from ..checkpoint import load_checkpoint
from ..data import Dataset
from ..errors import UnlearnKitError
from ..methods import METHODS, make_config, unlearn
from ..requests import Request, request_from_record
from ..training import predict_logits

REFERENCE_SEED_OFFSET = 1000  # retrained reference k trains with seed 1000 + k: independent of original k's seed
UNLEARNED_CACHE_VERSION = 1


@dataclass(frozen=True)
class Job:
    kind: str  # "original" | "retrained" | "unlearned"
    seed: int  # the original's seed (its index k)
    request: str | None = None  # JSON of Request.cache_key() (rebuildable in a worker)
    train_seed: int | None = None  # retrained: the training seed
    method: str | None = None  # unlearned: the method and its options
    options: tuple[tuple[str, Any], ...] = ()
    relearn: tuple[tuple[str, Any], ...] | None = None  # unlearned: run the relearning attack with these settings

    @property
    def weight(self) -> int:
        """Rough cost order for scheduling (training jobs first)."""
        return 2 if self.kind in ("original", "retrained") or self.method == "retrain" else 1




@dataclass
class Context:
    suite: Suite
    cache_root: str
    data_dir: str | None = None
    device: str = "auto"
    quiet: bool = False
    _data: Dataset | None = field(default=None, repr=False)

    @property
    def cache(self) -> ModelCache:
        return ModelCache(Path(self.cache_root))

    @property
    def data(self) -> Dataset:
        if self._data is None:
            self._data = worker_dataset(self.suite.dataset, self.data_dir)
        return self._data

    def log(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)


# -- logits, cached -----------------------------------------------------------------------------------
@dataclass
class Logits:
    train: torch.Tensor  # n_train × C, on the training set as the original saw it
    test: torch.Tensor  # n_test × C


def _outputs_path(ctx: Context, weights_sha: str) -> Path:
    return (
        Path(ctx.cache_root)
        / "outputs"
        / f"{config_hash({'weights': weights_sha, 'data': ctx.data.fingerprint})}.safetensors"
    )


def checkpoint_logits(ctx: Context, path: str | Path) -> Logits:
    """Logits of a cached checkpoint on the training and test sets (computed once, then read back)."""
    manifest = json.loads((Path(path) / "manifest.json").read_text())
    out = _outputs_path(ctx, manifest["weights"]["sha256"])
    if not out.exists():
        model = load_checkpoint(path).model
        _save_logits(out, _logits_of(ctx, model))
    return read_logits(out)


def _logits_of(ctx: Context, model: torch.nn.Module) -> Logits:
    device = resolve_device(ctx.device)
    return Logits(
        predict_logits(model, ctx.data.x_train, device=device), predict_logits(model, ctx.data.x_test, device=device)
    )


def _save_logits(path: Path, logits: Logits) -> None:
    with atomic_path(path) as tmp:
        save_file({"train": logits.train.contiguous(), "test": logits.test.contiguous()}, str(tmp))


def read_logits(path: str | Path) -> Logits:
    tensors = load_file(str(path))
    return Logits(tensors["train"], tensors["test"])


# -- jobs ---------------------------------------------------------------------------------------------
def _original(ctx: Context, seed: int) -> tuple[Path, dict]:
    return ctx.cache.original(ctx.suite, ctx.data, seed, None, ctx.device, ctx.log)


def unlearned_dir(ctx: Context, job: Job) -> Path:
    original_key = ModelCache.original_key(ctx.suite, ctx.data, job.seed, device=ctx.device)
    config = asdict(make_config(METHODS[job.method], dict(job.options)))  # resolved: a changed default changes the key
    key = {"kind": "unlearned", "version": UNLEARNED_CACHE_VERSION, "original": original_key,
           "request": json.loads(job.request), "method": job.method, "config": config, "seed": job.seed}
    return Path(ctx.cache_root) / "unlearned" / config_hash(key)


def run_job(ctx: Context, job: Job) -> dict:
    """Do one job (or find it cached); return where its outputs are."""
    if job.kind == "original":
        path, _ = _original(ctx, job.seed)
        checkpoint_logits(ctx, path)
        return {"path": str(path)}
    request = request_from_record(json.loads(job.request), ctx.data)
    if job.kind == "retrained":
        original_path, original_key = _original(ctx, job.seed)
        path = ctx.cache.retrained(
            original_path, original_key, request, ctx.data, ctx.device, ctx.log, seed=job.train_seed
        )
        checkpoint_logits(ctx, path)
        return {"path": str(path)}
    if job.kind == "unlearned":
        target = unlearned_dir(ctx, job)
        attack = None if job.relearn is None else relearn_path(target, job.relearn)
        if not (target / "record.json").exists() or (attack is not None and not attack.exists()):
            original_path, _ = _original(ctx, job.seed)
            checkpoint = load_checkpoint(original_path)
            label = Variant(job.method, job.options).label
            ctx.log(f"unlearning {request.spec} from original {job.seed} with {label}")
            result = unlearn(
                checkpoint, request, ctx.data, job.method, seed=job.seed, device=ctx.device, **dict(job.options)
            )
            if not (target / "record.json").exists():
                logits = _logits_of(ctx, result.model)
                with atomic_path(target) as staged:
                    staged.mkdir()
                    save_file(
                        {"train": logits.train.contiguous(), "test": logits.test.contiguous()},
                        str(staged / "logits.safetensors"),
                    )
                    (staged / "record.json").write_text(json.dumps({
                        "method": job.method, "options": dict(job.options), "config": result.config, "seed": job.seed,
                        "request": request.spec, "original": str(original_path), "cost": result.cost.to_dict(),
                        "notes": {k: v for k, v in result.notes.items() if k != "history"},
                    }, indent=2, default=str) + "\n")
            if attack is not None:  # unlearning is deterministic: a model unlearned again is the cached one
                _relearn(ctx, attack, result.model, checkpoint.model, request, job)
        return {"path": str(target)}
    raise UnlearnKitError(f"unknown audit job kind {job.kind!r}")


def relearn_path(target: Path, settings: tuple[tuple[str, Any], ...]) -> Path:
    """Where the relearning attack's results for an unlearned model and these attack settings are kept."""
    return target / f"relearn-{config_hash(dict(settings))}.json"


def _relearn(ctx: Context, path: Path, model: torch.nn.Module, original: torch.nn.Module, request: Request,
             job: Job) -> None:
    from ..relearn import RelearnConfig, relearning_attack

    config = RelearnConfig(**dict(job.relearn or ()))
    out = {side: relearning_attack(model, original, ctx.data, request, config, control=side == "control",
                                   seed=job.seed, device=ctx.device).to_dict()
           for side in ("forget", "control")}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"settings": dict(job.relearn or ()), **out}, indent=1) + "\n")


# -- running jobs on an execution backend -------------------------------------------------------------------
def _run_with_threads(ctx: Context, threads: int, job: Job) -> dict:
    """One job as a task of the backend: in a worker, with the audit's torch threads (the cache key records them)."""
    with torch_threads(threads):
        return run_job(ctx, job)


class Runner:
    """Runs jobs on an execution backend: here one after the other (one worker), or as Ray tasks (``backend``, or a
    local Ray instance of ``workers`` x ``threads`` CPUs started with the runner and shut down with it)."""

    def __init__(self, ctx: Context, workers: int = 1, threads: int = 1, backend: Backend | None = None) -> None:
        if workers < 1 or threads < 1:
            raise UnlearnKitError("workers and threads must be at least 1")
        self.ctx, self.workers, self.threads = ctx, workers, threads
        self._own = backend is None
        self.backend = backend if backend is not None else make_backend(
            "local", workers=workers, num_cpus=workers * threads, progress_bar=False if ctx.quiet else None)

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        if self._own:
            self.backend.close()

    def run(self, jobs: list[Job], on_done: Callable[[Job, dict], None] | None = None,
            stage: str = "audit models") -> list[dict]:
        """Results in the order of ``jobs``; the first failure cancels the rest and is raised."""
        if not jobs:
            return []
        if isinstance(self.backend, InProcess):
            fn = functools.partial(run_job, self.ctx)  # this process's context (its data set already loaded)
            order = list(range(len(jobs)))
        else:
            fn = functools.partial(_run_with_threads, self._portable_ctx(), self.threads)
            order = sorted(range(len(jobs)), key=lambda i: -jobs[i].weight)  # long jobs first: better packing

        def done(position: int, result: dict) -> None:
            if on_done:
                on_done(jobs[order[position]], result)

        finished = self.backend.map(fn, [jobs[i] for i in order], num_cpus=self.threads, on_result=done, stage=stage)
        results: list[dict | None] = [None] * len(jobs)
        for position, result in zip(order, finished):
            results[position] = result
        return results  # type: ignore[return-value]

    def _portable_ctx(self) -> Context:
        ctx = self.ctx
        return Context(ctx.suite, ctx.cache_root, ctx.data_dir, ctx.device, ctx.quiet)


def request_job_record(request: Request) -> str:
    return json.dumps(request.cache_key(), sort_keys=True)


def read_unlearned(path: str | Path, relearn: tuple[tuple[str, Any], ...] | None = None) -> tuple[Logits, dict]:
    """An unlearned model's logits and record (with ``relearn``, the relearning attack's results under ``relearn``)."""
    path = Path(path)
    record = json.loads((path / "record.json").read_text())
    if relearn is not None:
        record["relearn"] = json.loads(relearn_path(path, relearn).read_text())
    return read_logits(path / "logits.safetensors"), record


__all__ = ["Job", "Context", "Runner", "Logits", "run_job", "checkpoint_logits", "read_logits", "read_unlearned",
           "REFERENCE_SEED_OFFSET", "request_job_record"]
