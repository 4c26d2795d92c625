"""Training a shard stage by stage, in this process or as tasks of an execution backend (docs/scale.md).

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

import functools
import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .. import _fault
from .._util import seed_everything
from ..backends import Backend, InProcess, make_backend, torch_threads
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


def run_shard_jobs(store: SisaStore, jobs: list[ShardJob], settings: StageSettings, workers: int = 1,
                   on_stage: StageCallback | None = None,
                   on_shard: Callable[[ShardResult], None] | None = None,
                   backend: Backend | None = None) -> list[ShardResult]:
    """Run ``jobs``, largest first: as tasks of ``backend`` (each asking for ``settings.threads`` CPUs, or one GPU
    on cuda); without one, here one after the other when ``workers <= 1`` (or for one job), else as tasks of a
    local Ray instance of ``workers`` x ``settings.threads`` CPUs started for these jobs. Results come in shard
    order. ``on_stage`` is called for the stages trained in this process."""
    jobs = sorted(jobs, key=lambda j: -j.work)
    if backend is None:
        if workers <= 1 or len(jobs) <= 1:
            backend = InProcess(progress_bar=False)
        else:
            with make_backend("local", workers=workers, num_cpus=workers * settings.threads) as own:
                return run_shard_jobs(store, jobs, settings, workers, on_stage, on_shard, own)

    def done(_: int, result: ShardResult) -> None:
        if on_shard is not None:
            on_shard(result)

    local = isinstance(backend, InProcess)
    gpu = settings.device.startswith("cuda")
    fn = functools.partial(run_shard_job, str(store.path), settings=settings, on_stage=on_stage if local else None)
    results = backend.map(fn, jobs, num_cpus=settings.threads, num_gpus=1 if gpu else 0, on_result=done,
                          stage="shards")
    return sorted(results, key=lambda r: r.shard)


def default_threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))
