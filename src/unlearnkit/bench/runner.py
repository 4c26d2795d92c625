"""The benchmark runner: originals and retrained models are trained once and cached by a hash of their
configuration; every (request, method variant, seed) becomes one JSON record written atomically, so a
suite can be interrupted, resumed or extended and only what is new is computed.

A suite with ``prune = SPEC`` unlearns from pruned originals: the cached dense original pruned and
fine-tuned by :func:`unlearnkit.sparsity.prune_first`, cached by a hash of the dense original's key, the spec
and the fine-tuning; its Retrain keeps the mask, so each method is compared with the retrained model of the
same sparsity."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .. import api
from .._util import machine, resolve_device, versions, write_json_atomic
from ..backends import Backend, InProcess, torch_threads
from ..checkpoint import load_checkpoint, save_unlearned
from ..data import Dataset, load_dataset
from ..errors import UnlearnKitError
from ..evaluation import evaluate, klom_bank, model_outputs, zero_gaps
from ..methods import METHODS, make_config, recorded_config, unlearn
from ..recipes import default_model
from ..requests import Request, build_request
from ..training import weights_runtime
from .suite import Suite, Variant

KLOM_SEED_OFFSET = 3000  # bank model b of a suite's KLoM trains with seed 3000 + b (the audit uses 1000+ and 2000+)


def config_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached(path: Path, key_fields: dict) -> bool:
    """Whether ``path`` holds the model made under ``key_fields``. The key is recorded in the model's manifest
    (``cache_key``); a model there made under other settings (an older key without the torch build, device and
    thread count, or a copied directory) is refused with its differences, never reused silently."""
    if not (path / "manifest.json").exists():
        return False
    try:
        recorded = json.loads((path / "manifest.json").read_text()).get("cache_key")
    except (OSError, ValueError, AttributeError):
        recorded = None
    expected = json.loads(json.dumps(key_fields, default=str))
    if recorded != expected:
        differences = ", ".join(_key_differences(recorded or {}, expected)) or "no recorded settings"
        raise UnlearnKitError(f"cached model {path} was made under other settings ({differences}); "
                              f"delete it or use another cache directory")
    return True


def _key_differences(recorded: dict, expected: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(recorded) | set(expected)):
        a, b = recorded.get(k), expected.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _key_differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: recorded {json.dumps(a)}, wanted {json.dumps(b)}")
    return out


@dataclass
class ModelCache:
    """Originals and retrained models as checkpoints under ``root``, keyed by a hash of every input that decides
    their weights (configuration, data, seed and :func:`~unlearnkit.training.weights_runtime`: torch build, device
    type, thread count); each model's manifest records its key as ``cache_key``."""

    root: Path

    @staticmethod
    def original_key(suite: Suite, data: Dataset, seed: int, request: Request | None = None, device="auto") -> dict:
        """The configuration an original is cached under (trained on ``device`` in this process's threads)."""
        return {
            "kind": "original", "data": data.fingerprint, "model": suite.model or default_model(data.name),
            "model_options": suite.model_options, "recipe": suite.train_config().to_dict(), "seed": seed,
            # Only requests that change the training data (relabel/backdoor) change the original.
            "request": request.cache_key() if request is not None and request.modifies_training_data else None,
            "runtime": weights_runtime(device),
        }

    def original(
        self, suite: Suite, data: Dataset, seed: int, request: Request | None, device, log
    ) -> tuple[Path, dict]:
        key_fields = self.original_key(suite, data, seed, request, device)
        model_name = key_fields["model"]
        path = self.root / "originals" / config_hash(key_fields)
        if not cached(path, key_fields):
            log(f"training original {model_name} (seed {seed}) -> {path}")
            trained = api.train(data, model_name, request=request if key_fields["request"] else None,
                                config=suite.train_config(), seed=seed, device=device,
                                model_options=suite.model_options)
            api.save_trained(trained, path, extra={"cache_key": key_fields})
        if suite.prune is None:
            return path, key_fields
        return self.pruned(path, key_fields, suite, device, log)

    def pruned(self, dense_path: Path, dense_key: dict, suite: Suite, device, log) -> tuple[Path, dict]:
        """The dense original pruned by the suite's spec (prune first, then unlearn), cached."""
        from ..sparsity import parse_prune_spec, prune_first, prune_first_finetune_epochs

        spec = parse_prune_spec(suite.prune)
        epochs = (
            prune_first_finetune_epochs(spec) if suite.prune_finetune_epochs is None else suite.prune_finetune_epochs
        )
        key_fields = {"kind": "pruned", "parent": dense_key, "prune": spec.to_dict(), "finetune_epochs": epochs,
                      "finetune_lr": suite.prune_finetune_lr, "runtime": weights_runtime(device)}
        path = self.root / "pruned" / config_hash(key_fields)
        if not cached(path, key_fields):
            log(f"pruning {dense_path} by {spec} (fine-tune {epochs} epochs) -> {path}")
            prune_first(load_checkpoint(dense_path), spec, finetune_epochs=epochs, finetune_lr=suite.prune_finetune_lr,
                        device=device, out=path, extra={"cache_key": key_fields})
        return path, key_fields

    def retrained(self, original_path: Path, original_key: dict, request: Request, data: Dataset, device, log,
                  options: dict | None = None, seed: int | None = None) -> Path:
        """The model retrained without ``request`` (with the original's recipe and the suite's Retrain
        ``options``), its training seed ``seed`` (default: the request's seed, as in a benchmark; the audit
        retrains many seeds per request)."""
        seed = request.seed if seed is None else seed
        key_fields = {"kind": "retrained", "original": original_key, "request": request.cache_key(),
                      "runtime": weights_runtime(device)}
        if options:  # only non-default Retrain options enter the key
            key_fields["options"] = options
        if seed != request.seed:  # likewise
            key_fields["seed"] = seed
        path = self.root / "retrained" / config_hash(key_fields)
        if not cached(path, key_fields):
            log(f"retraining without {request.spec} (seed {seed}) -> {path}")
            checkpoint = load_checkpoint(original_path)
            result = unlearn(checkpoint, request, data, "retrain", seed=seed, device=device, **(options or {}))
            save_unlearned(path, result, checkpoint, request, data, seed=seed, kind="retrained",
                           extra={"cache_key": key_fields})
        return path

    def spdgan(self, original_path: Path, original_key: dict, request: Request, data: Dataset, options: dict,
               device, log) -> Path:
        """An SPD-GAN trained on ``request``'s forget set against the cached original (seeded by the request's seed)."""
        from ..spdgan import SpdGanConfig, save_spdgan, train_for_request

        config = SpdGanConfig.from_dict(options)
        key_fields = {"kind": "spdgan", "original": original_key, "request": request.cache_key(),
                      "config": config.to_dict(),
                      "runtime": weights_runtime(device)}
        path = self.root / "spdgan" / config_hash(key_fields)
        if not cached(path, key_fields):
            log(f"training SPD-GAN (ε {config.epsilon}) on {request.spec} (seed {request.seed}) -> {path}")
            checkpoint = load_checkpoint(original_path)
            gan = train_for_request(
                checkpoint.model,
                data,
                request,
                config,
                seed=request.seed,
                device=device,
                original_path=original_path,
                original_file_sha256=checkpoint.manifest["weights"]["sha256"],
            )
            gan.manifest = {**gan.manifest, "cache_key": key_fields}
            save_spdgan(path, gan)
        return path


def record_path(out_dir: Path, request_spec: str, variant_slug: str, seed: int) -> Path:
    return out_dir / "records" / _slug(request_spec) / variant_slug / f"seed{seed}.json"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in ".=-_" else "_" for c in text)


_LOADED: dict[tuple, Dataset] = {}  # the data set a worker process loaded last


def worker_dataset(name: str, data_dir: str | None) -> Dataset:
    """The data set ``name``, loaded once per (Ray worker) process rather than once per task: the last one loaded is
    kept, so a worker that moves on to another data set does not hold two."""
    key = (name, data_dir)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = load_dataset(*key)
    return _LOADED[key]


@dataclass
class _Work:
    """What every unit of work of one suite run needs; shipped to Ray tasks (without the loaded data set)."""

    suite: Suite
    out_dir: str
    cache_root: str
    data_dir: str | None
    device: str
    threads: int  # torch threads of every task (the cache key records them)
    run: str  # this run's id: a record made by this run is never made twice (exactly once under retries)
    log: Callable[[str], None] | None = None
    _data: Dataset | None = None

    @property
    def data(self) -> Dataset:
        if self._data is None:
            self._data = worker_dataset(self.suite.dataset, self.data_dir)
        return self._data

    @property
    def cache(self) -> ModelCache:
        return ModelCache(Path(self.cache_root))

    def say(self, message: str) -> None:
        (self.log or _stderr)(message)

    def portable(self) -> "_Work":
        return dataclasses.replace(self, log=None, _data=None)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_suite(suite: Suite, out_dir: str | Path, *, cache_dir: str | Path | None = None, device: str = "auto",
              data_dir: str | None = None, seeds: list[int] | None = None, methods: list[str] | None = None,
              command: str | None = None, log: Callable[[str], None] | None = None, progress: bool = False,
              rerun: bool = False, backend: Backend | None = None) -> list[dict]:
    """Run every (request, variant, seed) of ``suite`` not yet recorded under ``out_dir``; return the new records.

    The work runs as tasks of ``backend`` (default: here, one after the other), in three waves: the originals
    (each once), then per (seed, request) the retrained model, its SPD-GAN and the reference rows, then one task
    per (seed, request, variant) record. Every model and record is written atomically to its own path under
    ``cache_dir``/``out_dir`` (on a cluster: storage every node can read), so a task Ray re-runs finds what its dead
    predecessor finished; the records and their order are those of the in-process run."""
    out_dir = Path(out_dir)
    log = log or _stderr
    device = resolve_device(device)
    data = load_dataset(suite.dataset, data_dir)
    seeds = seeds if seeds is not None else suite.seeds
    variants = [v for v in suite.variants if methods is None or v.method in methods or v.label in methods]
    run = _dt.datetime.now().strftime('%Y%m%d-%H%M%S')
    write_json_atomic(out_dir / "runs" / f"{run}.json", {
        "suite": suite.name, "suite_file": suite.path, "command": command, "machine": machine(), "versions": versions(),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "seeds": seeds,
        "variants": [v.label for v in variants], "requests": suite.requests, "prune": suite.prune,
        "backend": (backend or InProcess()).name,
    })
    current = {v.label: _resolved_options(suite, v) for v in variants}

    def recorded(spec: str, variant: Variant, seed: int) -> bool:
        if rerun:  # --overwrite: every record is made again (each replaced once its new version is written)
            return False
        return _record_is_current(record_path(out_dir, spec, variant.slug, seed), current[variant.label], log)

    groups: list[tuple[int, str, list[Variant]]] = []
    for seed in seeds:
        for spec in suite.requests:
            pending = [v for v in variants if not recorded(spec, v, seed)]
            if pending or not record_path(out_dir, spec, "retrain", seed).exists() or \
                    not record_path(out_dir, spec, "original", seed).exists():
                groups.append((seed, spec, pending))
    if not groups:
        return []
    work = _Work(suite, str(out_dir), str(Path(cache_dir) if cache_dir else out_dir / "cache"), data_dir, str(device),
                 torch.get_num_threads(), run, log, data)
    own = backend is None
    backend = backend or InProcess(progress_bar=progress)
    try:
        local = isinstance(backend, InProcess)
        shipped = work if local else work.portable()
        gpus = 1 if device.type == "cuda" else 0

        def run_tasks(fn, jobs, stage):
            return backend.map(functools.partial(fn, shipped), jobs, num_cpus=work.threads, num_gpus=gpus, stage=stage)

        # 1. the originals, each once (two groups of one seed share theirs unless a request changes its data)
        originals: dict[str, tuple[int, str]] = {}
        for seed, spec, _ in groups:
            request = build_request(spec, data, seed)
            key = config_hash(ModelCache.original_key(suite, data, seed, request, device))
            originals.setdefault(key, (seed, spec))
        run_tasks(_original_task, list(originals.values()), f"{suite.name} originals")
        # 2. per (seed, request): the retrained model, the SPD-GAN, the retrain and original rows
        references = run_tasks(_reference_task, [(seed, spec) for seed, spec, _ in groups], f"{suite.name} references")
        # 3. one task per record
        jobs = [(seed, spec, variant, reference) for (seed, spec, pending), reference in zip(groups, references)
                for variant in pending]
        records = backend.map(functools.partial(_record_task, shipped), jobs, num_cpus=work.threads, num_gpus=gpus,
                              stage=f"{suite.name} records", on_result=lambda _, record: _log_record(log, record))
    finally:
        if own:
            backend.close()
    return records


def _log_record(log: Callable[[str], None], record: dict) -> None:
    log(f"{record['request']:<12} seed {record['seed']} {record['variant']:<40} {_summary(record)} "
        f"time {record['rte_s']:6.1f}s ({100 * record.get('rte_ratio', 0):.1f} % of retrain)")


def _original_task(work: _Work, job: tuple[int, str]) -> str:
    seed, spec = job
    with torch_threads(work.threads):
        request = build_request(spec, work.data, seed)
        path, _ = work.cache.original(work.suite, work.data, seed, request, work.device, work.say)
    return str(path)


@dataclass
class _Reference:
    """What every record of one (seed, request) is compared with (computed once, by its reference task)."""

    common: dict
    reference: Any  # Evaluation of the retrained model
    original_eval: Any  # Evaluation of the original against it
    perturbed: Any  # SPD-GAN-perturbed forget images, or None
    bank: Any = None  # the KlomBank of the suite's klom_bank retrained models, or None


def _reference_task(work: _Work, job: tuple[int, str]) -> _Reference:
    seed, spec = job
    suite, data, device, log = work.suite, work.data, work.device, work.say
    out_dir, cache = Path(work.out_dir), work.cache
    with torch_threads(work.threads):
        request = build_request(spec, data, seed)
        original_path, original_key = cache.original(suite, data, seed, request, device, log)
        retrain_options = suite.retrain_options()
        retrained_path = cache.retrained(original_path, original_key, request, data, device, log, retrain_options)
        original = load_checkpoint(original_path)
        retrained = load_checkpoint(retrained_path)
        retrain_s = retrained.manifest["cost"]["seconds"]
        perturbed, spdgan_path = None, None
        if suite.spdgan is not None:
            from ..spdgan import load_spdgan

            spdgan_path = cache.spdgan(original_path, original_key, request, data, suite.spdgan, device, log)
            perturbed = load_spdgan(spdgan_path).perturb_forget(data, request, original=original.model)
        common = {"suite": suite.name, "dataset": data.name, "data_fingerprint": data.fingerprint,
                  "model": original.manifest["model"]["name"], "request": spec, "seed": seed,
                  "retrain_s": retrain_s, "original": str(original_path), "retrained": str(retrained_path),
                  "prune": suite.prune,
                  "sparsity": (original.manifest.get("pruning") or {}).get("achieved_sparsity", 0.0),
                  # what the two models are, bit for bit, and the torch build/device/threads that made them
                  "models": {name: {"sha256": c.manifest["weights"]["sha256"], "runtime": c.manifest.get("runtime")}
                             for name, c in (("original", original), ("retrained", retrained))}}
        if spdgan_path is not None:
            common["spdgan"] = str(spdgan_path)
        bank = None
        if suite.klom_bank:
            bank_paths = [cache.retrained(original_path, original_key, request, data, device, log, retrain_options,
                                          seed=KLOM_SEED_OFFSET + b) for b in range(suite.klom_bank)]
            bank = klom_bank([load_checkpoint(p).model for p in bank_paths], data, request, device)
            common["klom_bank_seeds"] = [KLOM_SEED_OFFSET + b for b in range(suite.klom_bank)]
        original_outputs = model_outputs(original.model, data, request, device, perturbed_forget=perturbed)
        # The retrained row gets FR/MRR and its unlearning degree too (they are the targets), so the original is
        # evaluated once alone for it and once against the retrained model for its own row.
        reference = evaluate(model_outputs(retrained.model, data, request, device, perturbed_forget=perturbed),
                             request, data, original=evaluate(original_outputs, request, data,
                                                              mia_shadow_size=suite.mia_shadow_size,
                                                              mia_attack=suite.mia_attack, seed=seed),
                             mia_shadow_size=suite.mia_shadow_size, mia_attack=suite.mia_attack, seed=seed, bank=bank)
        original_eval = evaluate(original_outputs, request, data, reference=reference,
                                 mia_shadow_size=suite.mia_shadow_size, mia_attack=suite.mia_attack, seed=seed,
                                 bank=bank)
    reference_path = record_path(out_dir, spec, "retrain", seed)
    original_row = record_path(out_dir, spec, "original", seed)
    if not reference_path.exists():
        ref_metrics = dict(reference.metrics, rte_s=retrain_s, rte_ratio=1.0, **zero_gaps(data))
        _write(reference_path, {**common, "method": "retrain", "variant": "retrain", "options": retrain_options,
                                **ref_metrics, "cost": retrained.manifest["cost"]}, work.run)
    if not original_row.exists():
        _write(original_row, {**common, "method": "original", "variant": "original", "options": {},
                              **original_eval.metrics, "rte_s": 0.0, "rte_ratio": 0.0}, work.run)
    return _Reference(common, reference, original_eval, perturbed, bank)


def _record_task(work: _Work, job: tuple[int, str, Variant, _Reference]) -> dict:
    """One (seed, request, variant) record, written once: a record this run already wrote (by a task whose worker
    died after writing it) is returned as it is."""
    seed, spec, variant, ref = job
    suite, data, device = work.suite, work.data, work.device
    path = record_path(Path(work.out_dir), spec, variant.slug, seed)
    done = _read_record(path)
    if done is not None and done.get("run") == work.run:
        return done
    with torch_threads(work.threads):
        request = build_request(spec, data, seed)
        original = load_checkpoint(ref.common["original"])
        options = suite.method_options(variant)
        started = time.time()
        result = unlearn(original, request, data, variant.method, seed=seed, device=device, **options)
        evaluation = evaluate(model_outputs(result.model, data, request, device, perturbed_forget=ref.perturbed),
                              request, data,
                              reference=ref.reference, original=ref.original_eval, cost=result.cost,
                              retrain_seconds=ref.common["retrain_s"], mia_shadow_size=suite.mia_shadow_size,
                              mia_attack=suite.mia_attack, seed=seed, bank=ref.bank)
    record = {**ref.common, "method": variant.method, "variant": variant.label, "options": result.config,
              "resolved": result.resolved, **evaluation.metrics, "cost": result.cost.to_dict(),
              "notes": {k: v for k, v in result.notes.items() if k != "history"},
              "history": result.notes.get("history", []),
              "wall_s": round(time.time() - started, 3)}
    return _write(path, record, work.run)


def _read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _summary(record: dict) -> str:
    image = ("UA", "RA", "TA", "MIA", "avg_gap")
    keys = image if "UA" in record else ("exposure", "extracted", "val_ppl", "gap_exposure")
    return " ".join(f"{k} {record[k]:6.2f}" for k in keys if k in record)


def _resolved_options(suite: Suite, variant: Variant) -> dict:
    """The variant's full config as a record stores it (defaults filled in), JSON-normalised."""
    info = METHODS[variant.method]
    return json.loads(json.dumps(recorded_config(info, make_config(info, suite.method_options(variant)))))


def _record_is_current(path: Path, options: dict, log: Callable[[str], None]) -> bool:
    """A record counts as done only if it was made with the same resolved options: a variant named by its
    method alone (``finetune``) means the registry defaults, which change when defaults are re-tuned."""
    if not path.exists():
        return False
    try:
        stored = json.loads(path.read_text()).get("options")
    except (OSError, json.JSONDecodeError):
        stored = None
    if stored == options:
        return True
    log(f"stale record {path} (options differ from the current config): running it again")
    return False


def _write(path: Path, record: dict, run: str) -> dict:
    record = {**record, "machine": machine(), "versions": versions(), "run": run,
              "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    write_json_atomic(path, record)
    return record


def load_records(out_dir: str | Path) -> list[dict]:
    records = []
    for path in sorted(Path(out_dir).glob("records/**/*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except json.JSONDecodeError:
            continue  # an atomic writer never leaves one; skip foreign files
    return records


