"""The audit: how distinguishable are a method's unlearned models from retrained ones, example by example?

For one suite (data set, model, recipe, method options) and N:

1. N originals θ_o^k are trained on D (seeds k = 0..N−1) — the same cached models a benchmark uses.
2. Per request, N reference models are retrained on D_r (seeds 1000 + k, independent of the originals), and
   every method runs on every original (seed k) to give N unlearned models. ``memorized:K`` and
   ``memlevel:LEVEL:K`` requests first train M split models to score memorisation (see :mod:`.memorization`).
3. Per forget example, the logit-scaled confidence φ under the N unlearned and N retrained models feeds
   U-LiRA (held out: leave one pair out), the NeurIPS 2023 challenge's ε and forgetting score, and the same
   U-LiRA on a sample of retained examples (exposure of D_r). ``unlearnkit.evaluate`` gives each unlearned model
   its population metrics and Avg. Gap against retrained reference k, for comparison.

Two rows are always there: ``retrain`` (the exact method: its scores are what chance looks like at this N) and
``original`` (no unlearning at all: what an obvious failure looks like).
"""

from __future__ import annotations

import datetime as _dt
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import klom as klom_stats
from .._util import machine, versions, write_json_atomic
from ..backends import Backend
from ..bench.suite import Suite, Variant, parse_variant
from ..checkpoint import read_manifest
from ..data import Dataset
from ..errors import UnlearnKitError
from ..evaluation import evaluate, logit_scaled_confidence, outputs_from_logits
from ..methods import METHODS, make_config
from ..requests import (
    REQUEST_TYPES,
    Request,
    build_request,
    needs_memorization_scores,
    parse_spec,
    register_memorization_scores,
    selects_by_memorization,
)
from ..training import Cost, sample_passes
from . import stats
from .memorization import memorization_scores, scores_record, split_requests
from .pool import (
    REFERENCE_SEED_OFFSET,
    Context,
    Job,
    Logits,
    Runner,
    checkpoint_logits,
    read_unlearned,
    request_job_record,
)
from .report import ORIGINAL, write_report


@dataclass
class AuditSettings:
    """How an audit runs. Defaults: N = 16 models per side, two worker processes with one thread each."""

    models: int = 16  # N: originals, retrained references and unlearned models per method
    workers: int = 2  # training tasks at a time (more than 1: Ray tasks, see unlearnkit.backends)
    threads: int = 1  # torch threads per process
    retain_sample: int | None = 1000  # retained examples attacked (seeded sample; None: all of D_r)
    memorization_models: int | None = None  # split models for memorized:K (even; None: N rounded up to even)
    variance: stats.Variance = "auto"  # U-LiRA variance: per example, global, or auto (global below 64 models)
    delta: float = stats.DELTA
    device: str = "auto"
    request_seed: int | None = None  # seed of random requests (None: the suite's first seed)
    relearn_models: int = 0  # the relearning attack on the first this many unlearned models of each method (0: off)
    relearn: dict = field(default_factory=dict)  # its settings (unlearnkit.relearn.RelearnConfig; empty: defaults)

    def __post_init__(self) -> None:
        if self.models < 3:
            raise UnlearnKitError(f"an audit needs at least 3 models per side (--models), got {self.models}")
        if self.retain_sample is not None and self.retain_sample < 1:
            raise UnlearnKitError("retain_sample must be at least 1 (or None for all retained examples)")
        stats.resolve_variance(self.variance, self.models)
        if not 0 <= self.relearn_models <= self.models:
            raise UnlearnKitError(f"relearn_models must be in 0..{self.models} (the models per method)")
        from ..relearn import RelearnConfig

        RelearnConfig(**self.relearn)  # refuses a bad setting before anything is trained

    def relearn_settings(self, k: int) -> tuple | None:
        """The attack settings for unlearned model k (None: not attacked)."""
        return tuple(sorted(self.relearn.items())) if k < self.relearn_models else None


def audit_variants(suite: Suite, methods: list[str] | None) -> list[Variant]:
    """The method variants to audit: ``retrain`` first, the suite's (or ``methods``; ``all`` = every registered
    method at its defaults), validated."""
    if methods is None:
        chosen = list(suite.variants)
    else:
        chosen = []
        for text in methods:
            chosen += [Variant(name) for name in METHODS] if text.strip() == "all" else [parse_variant(text)]
    variants: list[Variant] = [Variant("retrain")]
    for variant in chosen:
        if variant.method not in METHODS:
            raise UnlearnKitError(f"unknown method {variant.method!r}; known: {', '.join(METHODS)}")
        make_config(METHODS[variant.method], suite.method_options(variant))
        if "remove" not in METHODS[variant.method].effects:
            raise UnlearnKitError(f"method {variant.method!r} does not handle remove requests")
        if variant not in variants and not (variant.method == "retrain" and not suite.method_options(variant)):
            variants.append(variant)
    return variants


def _remove_types() -> str:
    return ", ".join(name for name, t in REQUEST_TYPES.items() if t.effect == "remove")


def _options(suite: Suite, variant: Variant) -> tuple:
    return tuple(sorted(suite.method_options(variant).items()))


def _retain_sample(request: Request, size: int | None, seed: int) -> torch.Tensor:
    retain = request.retain
    if size is None or size >= retain.numel():
        return retain
    gen = torch.Generator().manual_seed(seed)
    return torch.sort(retain[torch.randperm(retain.numel(), generator=gen)[:size]]).values


def relearn_summary(records: list[dict]) -> dict | None:
    """The relearning attack over the attacked models of one method: how many recovered the original's held-out
    forget accuracy, the median steps and samples to recovery (over all attacked models: one that did not recover
    within the cap counts as beyond it), the same for the control, and the mean accuracies."""
    runs = [r["relearn"] for r in records if r.get("relearn")]
    if not runs:
        return None

    def side(name: str) -> dict:
        results = [run[name] for run in runs]
        steps = [math.inf if x["steps"] is None else x["steps"] for x in results]
        samples = [math.inf if x["samples"] is None else x["samples"] for x in results]

        def median(values):
            m = float(np.median(values))
            return None if math.isinf(m) else round(m, 1)

        return {"recovered": sum(x["recovered"] for x in results), "median_steps": median(steps),
                "median_samples": median(samples),
                "start_acc": round(float(np.mean([x["start_acc"] for x in results])), 3),
                "final_acc": round(float(np.mean([x["final_acc"] for x in results])), 3)}

    settings = runs[0]["settings"]
    return {"models": len(runs), "settings": settings, "target_acc": round(float(np.mean(
        [run["forget"]["target_acc"] for run in runs])), 3), "forget": side("forget"), "control": side("control")}


def _mean_std(values: list[float]) -> list[float]:
    array = np.asarray(values, dtype=np.float64)
    return [round(float(array.mean()), 6), round(float(array.std(ddof=1)) if array.size > 1 else 0.0, 6)]


@dataclass
class RequestAudit:
    """Everything measured for one request (JSON-able via :meth:`to_dict`)."""

    spec: str
    request: dict
    n_forget: int
    retain_ids: int
    reference: dict
    methods: dict[str, dict] = field(default_factory=dict)
    per_example_ids: dict[str, list] = field(default_factory=dict)  # the examples behind the per-example lists
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _phi(logits: Logits, labels: torch.Tensor, ids: torch.Tensor) -> np.ndarray:
    return logit_scaled_confidence(logits.train[ids], labels[ids])


def analyse(request: Request, data: Dataset, originals: list[Logits], references: list[dict],
            unlearned: dict[str, list[tuple[Logits, dict]]], settings: AuditSettings, *,
            mia_shadow_size: int | None, memorization: np.ndarray | None = None,
            mia_attack: str = "svc") -> RequestAudit:
    """Per-example attacks and population metrics for every method of one request.

    ``references`` holds, per k, the retrained reference's logits and manifest cost (``{"logits", "cost"}``);
    ``unlearned`` maps a method label to N (logits, record) pairs; the label ``original`` may be absent (it is
    added from ``originals``).
    """
    n = settings.models
    labels = data.y_train
    forget = request.forget
    retain_ids = _retain_sample(request, settings.retain_sample, request.seed)
    ref_logits = [r["logits"] for r in references]
    ref_forget = np.stack([_phi(l, labels, forget) for l in ref_logits])
    ref_retain = np.stack([_phi(l, labels, retain_ids) for l in ref_logits])
    ref_test = np.stack([logit_scaled_confidence(l.test, data.y_test) for l in ref_logits])

    # Population metrics of the retrained references and originals, once; every method is compared with them.
    ref_evals = [evaluate(outputs_from_logits(l.train, l.test), request, data, mia_shadow_size=mia_shadow_size,
                          mia_attack=mia_attack, seed=k)
                 for k, l in enumerate(ref_logits)]
    orig_evals = [evaluate(outputs_from_logits(l.train, l.test), request, data, reference=ref_evals[k],
                           mia_shadow_size=mia_shadow_size, mia_attack=mia_attack, seed=k)
                  for k, l in enumerate(originals)]
    ref_ra = float(np.mean([e["RA"] for e in ref_evals]))
    ref_ta = float(np.mean([e["TA"] for e in ref_evals]))
    ref_passes = float(np.mean([sample_passes(r["cost"]) for r in references]))
    ref_seconds = float(np.mean([r["cost"]["seconds"] for r in references]))
    audit = RequestAudit(
        spec=request.spec, request={k: v for k, v in request.describe().items() if k != "ids"},
        n_forget=int(forget.numel()), retain_ids=int(retain_ids.numel()),
        reference={"RA": _mean_std([e["RA"] for e in ref_evals]), "TA": _mean_std([e["TA"] for e in ref_evals]),
                   "UA": _mean_std([e["UA"] for e in ref_evals]), "MIA": _mean_std([e["MIA"] for e in ref_evals]),
                   "retrain_s": round(ref_seconds, 4), "retrain_passes": ref_passes},
    )
    rows = dict(unlearned)
    rows[ORIGINAL] = [(l, {"cost": Cost().to_dict(), "config": {}}) for l in originals]
    orig_level = float(np.mean([_phi(l, labels, forget) for l in originals]))
    ref_level = float(ref_forget.mean())
    other_variance = "per_example" if stats.resolve_variance(settings.variance, n - 1) == "global" else "global"
    for label, models in rows.items():
        if len(models) != n:
            raise UnlearnKitError(f"{label}: {len(models)} unlearned models, expected {n}")
        u_forget = np.stack([_phi(l, labels, forget) for l, _ in models])
        u_retain = np.stack([_phi(l, labels, retain_ids) for l, _ in models])
        u_test = np.stack([logit_scaled_confidence(l.test, data.y_test) for l, _ in models])
        klom_forget = klom_stats.klom(u_forget, ref_forget)
        klom_rows = {
            estimator: {split: klom_stats.summary(klom_stats.klom(u, o, estimator))
                        for split, u, o in (("forget", u_forget, ref_forget), ("retain", u_retain, ref_retain),
                                            ("test", u_test, ref_test))}
            for estimator in klom_stats.ESTIMATORS
        }
        attack = stats.ulira(u_forget, ref_forget, settings.variance)
        attack_other = stats.ulira(u_forget, ref_forget, other_variance)
        exposure = stats.ulira(u_retain, ref_retain, settings.variance)
        epsilons = stats.example_epsilons(u_forget, ref_forget, settings.delta)
        points = stats.example_points(epsilons, n)
        evals = []
        for k, (l, record) in enumerate(models):
            if label == ORIGINAL:
                evals.append(orig_evals[k])
                continue
            c = record["cost"]
            evals.append(
                evaluate(
                    outputs_from_logits(l.train, l.test),
                    request,
                    data,
                    reference=ref_evals[k],
                    original=orig_evals[k],
                    cost=Cost(c["seconds"], c["forward_samples"], c["backward_samples"]),
                    retrain_seconds=references[k]["cost"]["seconds"],
                    mia_shadow_size=mia_shadow_size,
                    mia_attack=mia_attack,
                    seed=k,
                )
            )
        ra = float(np.mean([e["RA"] for e in evals]))
        ta = float(np.mean([e["TA"] for e in evals]))
        forget_quality = float(points.mean())
        costs = [record["cost"] for _, record in models]
        row = {
            "method": label if label == ORIGINAL else models[0][1]["method"],
            "config": models[0][1].get("config", {}),
            "ulira": attack.to_dict(),
            f"ulira_{other_variance}_variance": attack_other.to_dict(),
            "challenge": {
                "forget_quality": round(forget_quality, 6),
                "score": round(stats.challenge_score(forget_quality, ra, ref_ra, ta, ref_ta), 6),
                "mean_epsilon": round(float(epsilons.mean()), 4),
                "capped_examples": int((epsilons >= stats.EPSILON_CAP).sum()),
            },
            "retain_exposure": exposure.to_dict(),
            # KL divergence of margins (Georgiev et al. 2024), N unlearned vs N retrained models per example:
            # median / 95th percentile / mean over D_f, the attacked retain sample and the test set
            "klom": klom_rows["gaussian"],
            "klom_histogram": klom_rows["histogram"],
            # How far the mean φ on D_f moved from the original's towards retraining's (0 = not at all, 100 = as
            # far as retraining, > 100 = past it): says whether a method did anything, not whether it is right.
            "forget_shift_pct": round(100.0 * (orig_level - float(u_forget.mean())) / (orig_level - ref_level), 2)
            if orig_level != ref_level
            else None,
            "population": {key: _mean_std([e[key] for e in evals]) for key in ("UA", "RA", "TA", "MIA", "avg_gap")},
            "cost": {
                "seconds": _mean_std([c["seconds"] for c in costs]),
                "passes": float(np.mean([sample_passes(c) for c in costs])),
                "work_pct": round(100.0 * float(np.mean([sample_passes(c) for c in costs])) / ref_passes, 3)
                if ref_passes
                else None,
                "time_pct": round(100.0 * float(np.mean([c["seconds"] for c in costs])) / ref_seconds, 3)
                if ref_seconds
                else None,
            },
            "stopped_early": sum(1 for _, record in models if (record.get("notes") or {}).get("stopped_early")),
            "relearn": relearn_summary([record for _, record in models]),
            "per_example": {
                "ulira_accuracy": [round(float(v), 3) for v in attack.per_example_accuracy],
                "epsilon": [round(float(v), 4) for v in epsilons],
                "retain_ulira_accuracy": [round(float(v), 3) for v in exposure.per_example_accuracy],
                "klom_forget": [round(float(v), 4) for v in klom_forget],
            },
        }
        audit.methods[label] = row
    audit.per_example_ids = {
        "forget": forget.tolist(),
        "retain_sample": retain_ids.tolist(),
        **(
            {"memorization": [round(float(memorization[i]), 6) for i in forget.tolist()]}
            if memorization is not None
            else {}
        ),
    }
    return audit


def run_audit(
    suite: Suite,
    out_dir: str | Path,
    *,
    settings: AuditSettings | None = None,
    cache_dir: str | Path | None = None,
    methods: list[str] | None = None,
    requests: list[str] | None = None,
    data_dir: str | None = None,
    command: str | None = None,
    quiet: bool = False,
    log: Callable[[str], None] | None = None,
    backend: Backend | None = None,
) -> dict:
    """Audit ``methods`` (default: the suite's) on ``requests`` (default: the suite's) with N models per side;
    write ``results.json``, ``report.md`` and plots under ``out_dir`` and return the results. The models are trained
    as tasks of ``backend`` (default: here for one worker, else a local Ray instance of ``settings.workers`` tasks);
    on a cluster ``cache_dir`` must be on storage every node can read."""

    settings = settings or AuditSettings()
    out_dir = Path(out_dir)
    started_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    started = time.perf_counter()
    ctx = Context(suite, str(Path(cache_dir) if cache_dir else out_dir / "cache"), data_dir, settings.device, quiet)
    say = log or ctx.log
    data = ctx.data
    variants = audit_variants(suite, methods)
    specs = list(requests) if requests else list(suite.requests)
    if not specs:
        raise UnlearnKitError("the audit needs at least one request")
    request_seed = (
        settings.request_seed if settings.request_seed is not None else (suite.seeds[0] if suite.seeds else 0)
    )
    for spec in specs:  # fail before training anything (memorized:K without a file once its scores exist)
        if parse_spec(spec)[0].effect != "remove":
            raise UnlearnKitError(f"the audit handles remove requests ({_remove_types()}), not {spec!r}")
        if not needs_memorization_scores(spec):
            build_request(spec, data, request_seed)
    n = settings.models
    timings: dict[str, float] = {}
    results: dict = {
        "suite": suite.name, "suite_file": suite.path, "dataset": data.name, "data_fingerprint": data.fingerprint,
        "model": suite.model, "train": suite.train_config().to_dict(), "models": n, "request_seed": request_seed,
        "settings": asdict(settings), "variants": [v.label for v in variants], "command": command,
        "machine": machine(), "versions": versions(), "started": started_at,
        "reference_seed_offset": REFERENCE_SEED_OFFSET, "requests": {},
    }
    memorization: np.ndarray | None = None
    with Runner(ctx, settings.workers, settings.threads, backend=backend) as runner:
        results["backend"] = runner.backend.name
        t = time.perf_counter()
        say(f"audit {suite.name}: {n} originals")
        trained = runner.run([Job("original", k) for k in range(n)], stage="originals")
        originals = [checkpoint_logits(ctx, r["path"]) for r in trained]
        timings["originals_s"] = round(time.perf_counter() - t, 2)

        if any(needs_memorization_scores(spec) for spec in specs):
            t = time.perf_counter()
            m = settings.memorization_models or (n + n % 2)
            splits = split_requests(data, m)
            say(f"audit {suite.name}: {m} split models for memorisation scores")
            paths = runner.run([Job("retrained", 0, request_job_record(r), train_seed=r.seed) for r in splits],
                               stage="memorisation splits")
            probs, inside = [], []
            for r, p in zip(splits, paths):
                logits = checkpoint_logits(ctx, p["path"])
                probs.append(torch.softmax(logits.train.double(), 1)[torch.arange(data.n_train), data.y_train].numpy())
                mask = np.ones(data.n_train, dtype=bool)
                mask[r.forget.numpy()] = False
                inside.append(mask)
            memorization = memorization_scores(np.stack(probs), np.stack(inside))
            register_memorization_scores(data, torch.from_numpy(memorization))
            write_json_atomic(out_dir / "memorization.json", scores_record(data, memorization, {
                "split_models": m, "split_fraction": 0.5, "paths": [p["path"] for p in paths]}))
            timings["memorization_s"] = round(time.perf_counter() - t, 2)

        for spec in specs:
            t = time.perf_counter()
            request = build_request(spec, data, request_seed)
            record = request_job_record(request)
            ref_jobs = [Job("retrained", k, record, train_seed=REFERENCE_SEED_OFFSET + k) for k in range(n)]
            unl_jobs = [
                Job("unlearned", k, record, method=v.method, options=_options(suite, v),
                    relearn=settings.relearn_settings(k))
                for v in variants
                for k in range(n)
            ]
            labels = [v.label for v in variants for _ in range(n)]
            say(f"audit {suite.name}: {spec} ({request.forget.numel()} samples): {n} retrained references, "
                f"{len(variants)} methods × {n} unlearned models")
            done = runner.run(ref_jobs + unl_jobs, stage=f"{spec} models")
            references = [{"logits": checkpoint_logits(ctx, r["path"]), "cost": read_manifest(r["path"])["cost"]}
                          for r in done[:n]]
            unlearned: dict[str, list] = {}
            for label, job, r in zip(labels, unl_jobs, done[n:]):
                unlearned.setdefault(label, []).append(read_unlearned(r["path"], job.relearn))
            timings[f"{spec}_models_s"] = round(time.perf_counter() - t, 2)
            t2 = time.perf_counter()
            audit = analyse(request, data, originals, references, unlearned, settings,
                            mia_shadow_size=suite.mia_shadow_size, mia_attack=suite.mia_attack,
                            memorization=memorization if selects_by_memorization(spec) else None)
            timings[f"{spec}_analysis_s"] = round(time.perf_counter() - t2, 2)
            audit.seconds = round(time.perf_counter() - t, 2)
            results["requests"][spec] = audit.to_dict()
    results["timings"] = timings
    results["wall_s"] = round(time.perf_counter() - started, 2)
    write_json_atomic(out_dir / "results.json", results)
    write_report(out_dir, results)
    say(f"audit {suite.name}: done in {results['wall_s']:.0f} s; report in {out_dir}/report.md")
    return results
