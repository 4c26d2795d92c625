"""Measure the cost model's constants on this machine and store them with the model.

Both paths are timed in the same call, so that their ratio (which is what the decision rule compares) is
taken under the same load. Nothing here changes the model: the dry runs work on copies and their stage
checkpoints go to a temporary folder that is removed afterwards.
"""

from __future__ import annotations

import datetime as _dt
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..backends import make_backend, ray_available, torch_threads
from ..data import Augment, Source
from ..sisa.layout import ACTIVE
from ..sisa.model import SisaModel
from ..training import Phase, TrainConfig, classifier_source, fit, metered, predict_logits
from .approx import approximate_delete
from .cost import Calibration
from .planner import ApproxSettings


def warm_up(_: int = 0) -> int:
    """What a fresh worker pays before its first stage: imports, and the first optimiser step (which imports
    torch._dynamo, seconds on a busy CPU) and version record (which imports scikit-learn)."""
    from .._util import versions

    with torch_threads(1):
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
        x, y = torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.long)
        fit(model, Phase(Source(x, y, batch_size=2)), TrainConfig(epochs=1), seed=0, device="cpu")
    versions()
    return os.getpid()


def _time_pool(workers: int, threads: int) -> float:
    """Starting a local Ray instance of ``workers`` workers until each can train (start-up, imports, first
    optimiser step)."""
    started = time.perf_counter()
    with make_backend("local", workers=workers, num_cpus=workers * threads, progress_bar=False) as backend:
        backend.map(warm_up, list(range(workers)), num_cpus=threads, stage="warm-up")
    return time.perf_counter() - started


def calibrate(sisa: SisaModel, approx: ApproxSettings | None = None, *, device: str = "cpu", workers: int | None = None,
              save: bool = True, echo: bool = False) -> Calibration:
    """Time stage training, the approximate path and the overheads; store the result in ``sisa.json``."""
    approx = approx or ApproxSettings(**(sisa.meta.get("hybrid") or {}).get("approx", {}))
    workers = sisa.workers if workers is None else workers
    cal = Calibration.from_dict(sisa.meta.get("calibration"))
    version = sisa.version()
    data, prov, settings = sisa.data, sisa.provenance, sisa.settings
    config = TrainConfig.from_dict(settings.config)

    # 1. Stage training, as a shard worker does it: one epoch over (up to 4,096 of) shard 0's first slice.
    members = prov.members[0]
    first = members[(prov.member_slices[0] == 0) & (version.status[members] == ACTIVE)]
    ids = torch.from_numpy(first[: max(256, min(first.size, 4096))]).long()
    model = sisa.store.model_from_state(version.states[0])
    with torch_threads(settings.threads):
        fit(model, Phase(classifier_source(data.x_train, data.y_train, ids[:256], config.replace(epochs=1), None)),
            config.replace(epochs=1), seed=0, device=settings.device)  # warm-up (allocator, kernels)
        report = fit(model, Phase(classifier_source(data.x_train, data.y_train, ids, config.replace(epochs=1),
                                                    Augment(settings.crop_padding, settings.horizontal_flip))),
                     config.replace(epochs=1), seed=0, device=settings.device)
    cal.train_seconds_per_sample = report.cost.seconds / max(1, report.cost.backward)

    # 2. Overheads: reading a version, writing one, writing and reading a stage checkpoint, building a shard model.
    started = time.perf_counter()
    sisa.version()
    read_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix=".tmp-calibrate-", dir=sisa.path) as scratch:
        from ..sisa.store import SisaStore

        shadow = SisaStore(Path(scratch), sisa.meta, prov)
        started = time.perf_counter()
        shadow.write_version(0, version.states, version.status, {"calibration": True})
        write_s = time.perf_counter() - started
        started = time.perf_counter()
        shadow.save_stage(0, 1, "0" * 64, model, {})
        shadow.load_stage(0, 1, "0" * 64)
        cal.stage_overhead_seconds = time.perf_counter() - started
    cal.request_overhead_seconds = read_s + write_s + 0.02  # + ledger transactions (fsync'd), measured ~10-20 ms
    # 3. The approximate path. Its per-sample time: one amend-like round in this process (default threads).
    pool_ids = torch.from_numpy(members[version.status[members] == ACTIVE][: approx.amend_round_size]).long()
    amend_config = TrainConfig(epochs=1, batch_size=approx.amend_batch_size, lr=approx.amend_lr, schedule="constant",
                               augment=False)
    report = fit(sisa.store.model_from_state(version.states[0]),
                 Phase(classifier_source(data.x_train, data.y_train, pool_ids, amend_config, None)), amend_config,
                 seed=0, device=device)
    cal.approx_seconds_per_sample = report.cost.seconds / max(1, report.cost.backward)
    probe_model = sisa.store.model_from_state(version.states[0])
    predict_logits(probe_model, data.x_train[pool_ids[:64]], device=device)  # warm-up
    started = time.perf_counter()
    predict_logits(probe_model, data.x_train[pool_ids], device=device)
    cal.eval_seconds_per_sample = (time.perf_counter() - started) / max(1, pool_ids.numel())
    # Its fixed cost per shard (building and copying models, guard and probe set-up) and its amend rounds:
    # dry runs on copies, one id and 1 % of a shard from shard 0's last slice; what the per-sample time does
    # not explain is overhead.
    last = members[(prov.member_slices[0] == prov.slices - 1) & (version.status[members] == ACTIVE)]
    overheads, rounds = [], []
    for n in sorted({1, max(1, members.size // 100)}):
        with metered() as meter:
            result = approximate_delete(sisa, version, last[:n], approx, seed=n, device=device)
        explained = (
            meter.backward * cal.approx_seconds_per_sample
            + (meter.forward - meter.backward) * cal.eval_seconds_per_sample
        )
        overheads.append(max(0.0, meter.seconds - explained))
        rounds += [s["amend"]["rounds"] for s in result.shards]
    cal.shard_overhead_seconds = float(np.mean(overheads))
    cal.amend_rounds = float(np.mean(rounds)) if rounds else cal.amend_rounds

    # 4. Starting the worker pool (only parallel exact retraining pays it).
    if workers > 1 and ray_available():
        cal.pool_overhead_seconds = _time_pool(workers, settings.threads)
    cal.measured = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    if save:
        sisa.store.update_meta(calibration={**(sisa.meta.get("calibration") or {}), **cal.to_dict()})
    if echo:
        import sys

        print(
            f"calibrated: stage training {1e3 * cal.train_seconds_per_sample:.3f} ms/sample, approximate path "
            f"{1e3 * cal.approx_seconds_per_sample:.3f} ms/sample (inference {1e3 * cal.eval_seconds_per_sample:.3f}), "
            f"{cal.amend_rounds:.1f} amend rounds, shard overhead {cal.shard_overhead_seconds:.2f} s, request "
            f"overhead {cal.request_overhead_seconds:.2f} s, pool start {cal.pool_overhead_seconds:.2f} s",
            file=sys.stderr,
            flush=True,
        )
    return cal
