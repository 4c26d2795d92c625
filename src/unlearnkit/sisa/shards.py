"""Training a shard stage by stage, in this process or in a pool of worker processes.

A shard job trains stages ``resume+1..R`` where ``resume`` is the deepest stage whose checkpoint, under the
*new* training history, already exists and verifies. That one rule covers first training (nothing exists:
start from the seeded initialisation), exact deletion (the stages before the first affected slice are
unchanged, so their keys and checkpoints are reused), a restart after a kill (the stages already retrained
are found under their new keys) and a missing or corrupted checkpoint (it is moved aside and the job falls
back to the nearest earlier stage, which gives the same weights, only later).

Determinism: stage ``r`` of shard ``k`` starts from a fresh model loaded with stage ``r-1``'s weights,
builds a fresh optimiser and LR schedule (see docs/sisa.md: momentum is not carried across stages, so a
stage checkpoint is weights only), seeds the data order with ``stage_seed(seed, k, r)`` and shuffles the
sorted ids of the stage. The data order is therefore a pure function of (seed, shard, stage, ids), and
every stage runs with the same number of torch threads (stored with the model), which is what makes CPU
results bitwise reproducible. Training a shard from scratch and resuming it from a checkpoint run the very
same code.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from .. import _fault
from .._util import seed_everything
from ..backends import Backend, InProcess
from ..data import Augment
from ..training import Phase, TrainConfig, classifier_source, fit
from .layout import ids_digest, stage_seed
from .store import SisaStore, StageCorrupted


@dataclass
class ShardJob:
    shard: int
    members: np.ndarray  # the shard's ids, sorted; x/y hold their samples in this order
    x: torch.Tensor
    y: torch.Tensor
    stage_ids: list[np.ndarray]  # [r - 1] -> sorted ids stage r trains on
    keys: list[str]  # stage keys 0..R under this history
    member_slices: np.ndarray | None = None  # the slice of each member (to record what a stage left out)

    def excluded(self, stage: int) -> list[int]:
        """Ids of slices ``0..stage-1`` that stage ``stage``'s history leaves out (recorded in its checkpoint, so
        that what it was trained on is known from the provenance alone)."""
        if stage == 0 or self.member_slices is None:
            return []
        return np.setdiff1d(self.members[self.member_slices < stage], self.stage_ids[stage - 1]).tolist()

    @property
    def work(self) -> int:
        return int(sum(len(ids) for ids in self.stage_ids))


@dataclass
class ShardResult:
    shard: int
    state: dict[str, torch.Tensor]
    key: str  # key of the final stage
    resumed_from: int  # stage whose checkpoint it started from (-1: none found, started from the seeded initialisation)
    trained: list[int] = field(default_factory=list)  # stages trained by this job
    seconds: float = 0.0  # wall-clock seconds spent in training stages
    samples: int = 0  # training sample passes (forward + backward)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {"shard": self.shard, "resumed_from_stage": self.resumed_from, "trained_stages": self.trained,
                "seconds": round(self.seconds, 3), "samples": self.samples, "warnings": self.warnings}


@dataclass(frozen=True)
class StageSettings:
    """Everything besides the data that a stage's training depends on."""

    seed: int
    config: dict  # TrainConfig.to_dict()
    threads: int
    device: str
    crop_padding: int = 0
    horizontal_flip: bool = False


StageCallback = Callable[[int, int, float], None]  # (shard, stage, seconds)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_shard_job(store_path: str, job: ShardJob, settings: StageSettings,
                  on_stage: StageCallback | None = None) -> ShardResult:
    """Bring shard ``job.shard`` to stage R under the job's history (see the module doc)."""
    store = SisaStore.open(store_path)
    stages = len(job.keys) - 1
    result = ShardResult(job.shard, {}, job.keys[-1], -1)
    state = None
    for stage in range(stages, -1, -1):
        try:
            state = store.load_stage(job.shard, stage, job.keys[stage])
        except StageCorrupted as exc:
            aside = store.quarantine_stage(job.shard, stage, job.keys[stage])
            result.warnings.append(f"{exc}; moved to {aside.name} and rebuilt from an earlier stage")
            state = None
        if state is not None:
            result.resumed_from = stage
            break
    config = TrainConfig.from_dict(settings.config)
    augment = Augment(settings.crop_padding, settings.horizontal_flip)
    with torch_threads(settings.threads):
        if state is None:  # nothing to resume from: the seeded initialisation is stage 0
            seed_everything(stage_seed(settings.seed, job.shard, 0))
            model = store.build_model()
            store.save_stage(
                job.shard, 0, job.keys[0], model, {"n_ids": 0, "excluded": [], "threads": settings.threads}
            )
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for stage in range(max(result.resumed_from, 0) + 1, stages + 1):
            ids = job.stage_ids[stage - 1]
            model = store.model_from_state(state)
            local = torch.from_numpy(np.searchsorted(job.members, ids)).long()
            seed = stage_seed(settings.seed, job.shard, stage)
            torch.manual_seed(seed)
            source = classifier_source(job.x, job.y, local, config, augment)
            report = fit(model, Phase(source), config, seed=seed, device=settings.device,
                         desc=f"shard {job.shard} stage {stage}")
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            _fault.point("stage-trained")
            store.save_stage(job.shard, stage, job.keys[stage], model, {
                "n_ids": int(len(ids)), "ids_sha256": ids_digest(ids), "excluded": job.excluded(stage),
                "threads": settings.threads,
                "history": report.history, "cost": report.cost.to_dict(),
            })
            result.trained.append(stage)
            result.seconds += report.cost.seconds
            result.samples += report.cost.backward
            if on_stage is not None:
                on_stage(job.shard, stage, report.cost.seconds)
    result.state = state
    return result


def _worker_init() -> None:
    # Die with the parent: a killed `unlearnkit forget` must not leave a worker training on behind its back.
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def warm_up(_: int = 0) -> int:
    """What a fresh worker pays before its first stage: imports, and the first optimiser step (which imports
    torch._dynamo, seconds on a busy CPU) and version record (which imports scikit-learn)."""
    from .._util import versions
    from ..data import Source
    from ..training import Phase, TrainConfig, fit

    with torch_threads(1):
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
        x, y = torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.long)
        fit(model, Phase(Source(x, y, batch_size=2)), TrainConfig(epochs=1), seed=0, device="cpu")
    versions()
    return os.getpid()


class ShardPool:
    """Worker processes for shard jobs, started on first use and kept until :meth:`close` (a long-running
    service pays their start once, not per request)."""

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self._executor: ProcessPoolExecutor | None = None

    @property
    def warm(self) -> bool:
        return self._executor is not None

    def executor(self) -> ProcessPoolExecutor:
        if self._executor is None:
            context = multiprocessing.get_context("spawn")
            self._executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=context, initializer=_worker_init)
            list(self._executor.map(warm_up, range(self.workers)))
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> "ShardPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_shard_jobs(store: SisaStore, jobs: list[ShardJob], settings: StageSettings, workers: int,
                   on_stage: StageCallback | None = None,
                   on_shard: Callable[[ShardResult], None] | None = None,
                   pool: ShardPool | None = None, backend: Backend | None = None) -> list[ShardResult]:
    """Run ``jobs``, largest first: as tasks of ``backend`` when one other than the in-process one is given (each
    task asks for ``settings.threads`` CPUs, or one GPU on cuda), else sequentially here when ``workers <= 1``
    (or on a GPU, or for one job), else on ``pool`` (a temporary one of ``workers`` processes if not given).
    Results come in shard order."""
    jobs = sorted(jobs, key=lambda j: -j.work)
    results: list[ShardResult] = []
    if backend is not None and not isinstance(backend, InProcess):
        def done(_: int, result: ShardResult) -> None:
            if on_shard is not None:
                on_shard(result)

        gpu = settings.device.startswith("cuda")
        results = backend.map(functools.partial(run_shard_job, str(store.path), settings=settings), jobs,
                              num_cpus=settings.threads, num_gpus=1 if gpu else 0, on_result=done)
        return sorted(results, key=lambda r: r.shard)
    parallel = workers > 1 and len(jobs) > 1 and not settings.device.startswith("cuda")
    if not parallel:
        for job in jobs:
            results.append(run_shard_job(str(store.path), job, settings, on_stage))
            if on_shard is not None:
                on_shard(results[-1])
        return sorted(results, key=lambda r: r.shard)
    own = pool is None
    pool = ShardPool(workers) if own else pool
    try:
        futures = [pool.executor().submit(run_shard_job, str(store.path), job, settings) for job in jobs]
        for future in as_completed(futures):
            results.append(future.result())
            if on_shard is not None:
                on_shard(results[-1])
    finally:
        if own:
            pool.close()
    return sorted(results, key=lambda r: r.shard)


def default_threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))
