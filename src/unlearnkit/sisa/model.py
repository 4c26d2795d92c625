"""A SISA model: S shards x R slices trained incrementally, its versions, and exact deletion.

``train_sisa`` deals the training set into shards and slices (seeded), trains every shard stage by stage
through :func:`unlearnkit.training.fit` (as tasks of an execution backend when ``workers > 1``), writes a
checkpoint after every stage, and commits version 0. ``SisaModel.exact_delete`` retrains the affected
shards from the last stage whose history is unchanged; with the same seed, recipe and thread count the
result is bitwise identical to training those shards from scratch without the deleted ids.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import _fault
from .._util import resolve_device, versions
from ..backends import Backend
from ..data import Dataset, as_dataset, load_dataset
from ..errors import UnlearnKitError
from ..recipes import default_model, default_recipe
from ..training import TrainConfig, accuracy, metered, predict_logits
from .ensemble import Ensemble
from .layout import ACTIVE, DELETED_APPROX, DELETED_EXACT, Provenance
from .shards import ShardJob, ShardResult, StageCallback, StageSettings, default_threads, run_shard_jobs
from .store import FORMAT, SisaStore, Version


@dataclass
class ExactResult:
    states: list[dict[str, torch.Tensor]]  # all shards (unaffected ones unchanged)
    status: np.ndarray
    shards: list[ShardResult] = field(default_factory=list)  # the retrained shards


class SisaModel:
    """An opened SISA model directory (see :mod:`unlearnkit.sisa.store` for its layout)."""

    def __init__(
        self, store: SisaStore, data: Dataset | None = None, data_dir: str | os.PathLike | None = None
    ) -> None:
        self.store = store
        self._data = data
        self._data_dir = data_dir

    @classmethod
    def open(cls, path: str | os.PathLike, data: Dataset | None = None,
             data_dir: str | os.PathLike | None = None) -> "SisaModel":
        model = cls(SisaStore.open(path), None, data_dir)
        if data is not None:
            model._check_data(data)
            model._data = data
        return model

    # -- description ---------------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.store.path

    @property
    def meta(self) -> dict:
        return self.store.meta

    @property
    def provenance(self) -> Provenance:
        return self.store.provenance

    @property
    def shards(self) -> int:
        return self.provenance.shards

    @property
    def slices(self) -> int:
        return self.provenance.slices

    @property
    def config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.meta["train"])

    @property
    def settings(self) -> StageSettings:
        grid = self.meta["sisa"]
        return StageSettings(
            seed=grid["seed"],
            config=self.meta["train"],
            threads=grid["threads"],
            device=grid["device"],
            crop_padding=grid["augment"][0],
            horizontal_flip=grid["augment"][1],
        )

    @property
    def workers(self) -> int:
        return int(self.meta["sisa"]["workers"])

    @property
    def data(self) -> Dataset:
        if self._data is None:
            info = self.meta["dataset"]
            data = load_dataset(info["name"], self._data_dir if self._data_dir is not None else info.get("data_dir"))
            self._check_data(data)
            self._data = data
        return self._data

    def _check_data(self, data: Dataset) -> None:
        info = self.meta["dataset"]
        if data.fingerprint != info["fingerprint"]:
            raise UnlearnKitError(
                f"data set {data.name} has fingerprint {data.fingerprint}, but the SISA model {self.path} "
                f"was trained on {info['name']} with fingerprint {info['fingerprint']}"
            )

    # -- versions and prediction ---------------------------------------------------------------------
    def current_version(self) -> int:
        return self.store.current_version()

    def version(self, number: int | None = None) -> Version:
        return self.store.read_version(number)

    def ensemble(self, version: Version | int | None = None) -> Ensemble:
        version = version if isinstance(version, Version) else self.version(version)
        return Ensemble([self.store.model_from_state(state) for state in version.states]).eval()

    def test_accuracy(self, version: Version | int | None = None, device: str | torch.device | None = "cpu",
                      per_shard: bool = False) -> float | tuple[float, list[float]]:
        """Test accuracy of the ensemble (and, with ``per_shard``, of every shard model alone)."""
        net = self.ensemble(version)
        device = resolve_device(device)
        logits = [predict_logits(m, self.data.x_test, device=device) for m in net.members]
        mean_probs = torch.stack([torch.softmax(z, 1) for z in logits]).mean(0)
        ensemble_acc = round(accuracy(mean_probs, self.data.y_test), 3)
        if not per_shard:
            return ensemble_acc
        return ensemble_acc, [round(accuracy(z, self.data.y_test), 3) for z in logits]

    # -- exact deletion ------------------------------------------------------------------------------
    def shard_job(self, shard: int, removed: np.ndarray) -> ShardJob:
        """The job that brings ``shard`` to its final stage with the ids flagged in ``removed`` left out."""
        prov = self.provenance
        members = prov.members[shard]
        index = torch.from_numpy(members).long()
        return ShardJob(
            shard=shard, members=members, x=self.data.x_train[index], y=self.data.y_train[index],
            stage_ids=[prov.stage_ids(shard, stage, removed) for stage in range(1, self.slices + 1)],
            keys=prov.stage_keys(shard, removed, self.meta["root"]), member_slices=prov.member_slices[shard],
        )

    def retrain_shards(self, shards: list[int], removed: np.ndarray, *, workers: int | None = None,
                       on_stage: StageCallback | None = None,
                       on_shard: Callable[[ShardResult], None] | None = None,
                       backend: Backend | None = None) -> list[ShardResult]:
        jobs = [self.shard_job(k, removed) for k in shards]
        return run_shard_jobs(self.store, jobs, self.settings, self.workers if workers is None else workers,
                              on_stage=on_stage, on_shard=on_shard, backend=backend)

    def exact_delete(self, version: Version, ids: np.ndarray, *, workers: int | None = None,
                     on_stage: StageCallback | None = None, backend: Backend | None = None) -> ExactResult:
        """Retrain every shard holding one of ``ids`` without them (and without any earlier approximately
        deleted id of that shard), from the last stage whose history is unchanged; on ``backend`` when given
        (else here, or on a local Ray instance for ``workers > 1``)."""
        ids = np.asarray(ids, dtype=np.int64)
        status = version.status.copy()
        removed = status != ACTIVE
        removed[ids] = True
        affected = sorted(int(k) for k in np.unique(self.provenance.shard_of[ids]))
        results = self.retrain_shards(affected, removed, workers=workers, on_stage=on_stage, backend=backend)
        states = list(version.states)
        for result in results:
            states[result.shard] = result.state
        # Every removed id of a retrained shard (new or approximately deleted before) is now deleted exactly.
        in_affected = np.isin(self.provenance.shard_of, affected)
        status[removed & in_affected] = DELETED_EXACT
        return ExactResult(states, status, results)

    def reachable_stages(self, status: np.ndarray) -> set[Path]:
        """Stage checkpoints that a future exact deletion may resume from (see :meth:`SisaStore.current_stage_dirs`)."""
        return self.store.current_stage_dirs(status)


def recipe_root(meta: dict) -> str:
    """Hash of everything besides the ids that determines a stage's weights."""
    identity = {
        "data": meta["dataset"]["fingerprint"],
        "model": meta["model"],
        "train": meta["train"],
        "seed": meta["sisa"]["seed"],
        "threads": meta["sisa"]["threads"],
        "grid": [meta["sisa"]["shards"], meta["sisa"]["slices"]],
        "augment": meta["sisa"]["augment"],
        "device": meta["sisa"]["device"],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def default_stage_config(data: Dataset, model_name: str, slices: int) -> TrainConfig:
    """The data set's recipe with its epochs spread over the slices (at least one epoch per stage)."""
    recipe = default_recipe(data.name, model_name)
    return recipe.replace(epochs=max(1, recipe.epochs // slices))


def train_sisa(
    data: str | Dataset,
    model: str | None = None,
    *,
    out: str | os.PathLike,
    shards: int = 5,
    slices: int = 5,
    config: TrainConfig | None = None,
    seed: int = 0,
    workers: int = 1,
    threads: int | None = None,
    device: str = "cpu",
    data_dir: str | os.PathLike | None = None,
    model_options: dict | None = None,
    keep_versions: int = 0,
    echo: bool = False,
    backend: Backend | None = None,
) -> SisaModel:
    """Train a SISA ensemble and write it to ``out`` (version 0). ``config.epochs`` is epochs *per stage*.

    ``threads`` is the number of torch threads every stage of every shard trains with, now and in every later
    retrain (default: cores // workers); it is stored, because CPU results are bitwise reproducible only at a
    fixed thread count. An interrupted run resumes from its stage checkpoints when started again with the
    same arguments. ``keep_versions`` superseded versions keep their weights after later deletions (see
    :mod:`unlearnkit.sisa.store`, "What is kept and what is purged"). ``backend`` runs the shard jobs (e.g. a
    :class:`unlearnkit.backends.RayBackend`, each shard a task asking for ``threads`` CPUs; ``out`` must then
    be on storage every node can read); by default they run here (``workers`` 1) or as tasks of a local Ray instance
    of ``workers`` x ``threads`` CPUs.
    """
    _fault.arm()
    data = as_dataset(data, data_dir)
    model_name = model or default_model(data.name)
    config = config or default_stage_config(data, model_name, slices)
    device_type = resolve_device(device).type
    if workers < 1:
        raise UnlearnKitError("workers must be >= 1")
    if isinstance(keep_versions, bool) or not isinstance(keep_versions, int) or keep_versions < 0:
        raise UnlearnKitError(f"keep_versions must be an integer >= 0, not {keep_versions!r}")
    threads = threads or default_threads(workers)
    meta = {
        "format": FORMAT,
        "dataset": {**data.describe(), "data_dir": None if data_dir is None else str(data_dir)},
        "model": {"name": model_name, "args": {**data.model_args(), **(model_options or {})}},
        "train": config.to_dict(),
        "sisa": {"shards": shards, "slices": slices, "seed": seed, "threads": threads, "workers": workers,
                 "augment": [data.crop_padding, data.horizontal_flip], "device": device_type},
        "retention": {"keep_versions": keep_versions},
        "versions": versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    meta["root"] = recipe_root(meta)
    store = SisaStore.create(out, meta, Provenance.assign(data.n_train, shards, slices, seed))
    with store.lock(echo=echo):
        for temporary in store.temporaries():  # what a killed earlier run left half-written
            shutil.rmtree(temporary) if temporary.is_dir() and not temporary.is_symlink() else temporary.unlink()
        return _train_all(store, data, data_dir, echo, model_name, config, shards, slices, workers, threads, backend)


def _train_all(store: SisaStore, data: Dataset, data_dir, echo: bool, model_name: str, config: TrainConfig,
               shards: int, slices: int, workers: int, threads: int, backend: Backend | None = None) -> SisaModel:
    sisa = SisaModel(store, data, data_dir)
    sisa.store.build_model()  # fail early on bad model options
    if echo:
        print(
            f"training {shards} shards x {slices} slices of {model_name} on {data.name} "
            f"({config.epochs} epochs per stage, {workers} worker(s) x {threads} thread(s))",
            file=sys.stderr,
            flush=True,
        )

    def shard_done(result: ShardResult) -> None:
        if echo:
            print(
                f"  shard {result.shard}: stages {result.trained or 'all reused'} in {result.seconds:.1f} s",
                file=sys.stderr,
                flush=True,
            )

    removed = np.zeros(data.n_train, dtype=bool)
    with metered() as cost:
        results = sisa.retrain_shards(list(range(shards)), removed, workers=workers, on_shard=shard_done,
                                      backend=backend)
    states = [r.state for r in results]
    status = np.zeros(data.n_train, dtype=np.uint8)
    trained_samples = sum(r.samples for r in results)
    trained_seconds = sum(r.seconds for r in results)
    calibration = dict(store.meta.get("calibration") or {})
    if trained_samples:
        # Per-sample time of stage training at the stored thread count, measured on this run: the exact
        # path's cost model uses it (the hybrid planner adds its own measurements, see unlearnkit.hybrid).
        calibration.update({"train_seconds_per_sample": trained_seconds / trained_samples,
                            "train_measured_samples": trained_samples, "train_threads": threads,
                            "train_measured": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    version = Version(0, states, status, {})
    accuracy_now, shard_accuracy = sisa.test_accuracy(version, per_shard=True)
    # Each shard's own test accuracy: the approximate path's gradient-ascent guard stops there (what a
    # model that never saw the deleted samples would score on them).
    store.update_meta(calibration=calibration, shard_test_acc=shard_accuracy)
    store.write_version(0, states, status, {
        "parent": None, "request_id": None,
        "shards": [{"shard": r.shard, "exact": True, "stage_key": r.key} for r in results],
        "metrics": {"test_acc": accuracy_now},
        "cost": {"seconds": round(cost.seconds, 3), "samples": trained_samples},
    })
    if echo:
        print(f"ensemble test accuracy {accuracy_now:.2f} %, {cost.seconds:.0f} s", file=sys.stderr, flush=True)
    return sisa


__all__ = [
    "SisaModel",
    "ExactResult",
    "train_sisa",
    "default_stage_config",
    "ACTIVE",
    "DELETED_EXACT",
    "DELETED_APPROX",
]
