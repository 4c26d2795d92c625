"""A stream of deletion requests on a SISA model: always-exact vs always-approximate vs the hybrid planner.

    PYTHONPATH=src python benchmarks/sisa_stream.py                  # Fashion-MNIST, 5 x 5 small CNN (~45 min)
    PYTHONPATH=src python benchmarks/sisa_stream.py --quick          # a 6,000-sample smoke run (~3 min)

One SISA model is trained (cached under --work) and calibrated; three copies of it then honour the same
stream of requests, each through ``unlearnkit.hybrid.Unlearner`` (ledger, plan, new version per request):
``--mode exact`` for every request, ``--mode approx`` for every request, and ``auto`` (the planner). The
stream mixes request sizes from one sample to 1 % of the training set, ids spread uniformly or concentrated
in one or two shards, in early or late slices. Afterwards every final ensemble is evaluated on all deleted
samples with ``unlearnkit.evaluate`` (UA, RA, TA, MIA-efficacy), next to always-exact. A boundary sweep
measures both paths on one-sample requests at three slice positions, and the planner's
decision is drawn over request size x first affected slice.

Writes results.json, README.md and boundary.png to --out (default benchmarks/results/sisa-stream).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from unlearnkit.data import load_dataset  # noqa: E402
from unlearnkit.errors import UnlearnKitError  # noqa: E402
from unlearnkit.evaluation import Outputs, evaluate  # noqa: E402
from unlearnkit.hybrid import Unlearner, calibrate  # noqa: E402
from unlearnkit.requests import Request  # noqa: E402
from unlearnkit.results import machine, versions, write_json_atomic, write_text_atomic  # noqa: E402
from unlearnkit.sisa import SisaModel, train_sisa  # noqa: E402
from unlearnkit.sisa.model import default_stage_config  # noqa: E402
from unlearnkit.training import predict_logits  # noqa: E402

STRATEGIES = [("always-exact", "exact"), ("always-approx", "approx"), ("hybrid", "auto")]

# (size, placement, slices): placement "uniform" draws from every shard and slice; "one shard"/"two shards"
# draw from that many randomly chosen shards, in their first ("early") or last ("late") slice.
STREAM = [
    (1, "one shard", "late"),
    (10, "uniform", None),
    (1, "one shard", "early"),
    (0.00167, "two shards", "late"),  # fractions of the training set: 100 of 60,000
    (0.01, "uniform", None),  # 1 %
    (10, "one shard", "early"),
    (0.01, "two shards", "early"),
    (10, "one shard", "late"),
    (0.00167, "two shards", "early"),
    (0.01, "two shards", "late"),
]


def build_stream(sisa: SisaModel, seed: int) -> list[dict]:
    prov = sisa.provenance
    rng = np.random.default_rng(seed)
    taken = np.zeros(prov.n, dtype=bool)
    stream = []
    for size, placement, where in STREAM:
        n = int(round(size * prov.n)) if isinstance(size, float) else size
        if placement == "uniform":
            pool = np.flatnonzero(~taken)
        else:
            shards = rng.choice(prov.shards, 1 if placement == "one shard" else 2, replace=False)
            wanted = 0 if where == "early" else prov.slices - 1
            pool = np.flatnonzero(np.isin(prov.shard_of, shards) & (prov.slice_of == wanted) & ~taken)
        ids = np.sort(rng.choice(pool, n, replace=False))
        taken[ids] = True
        name = f"{n} {placement}" + (f", {where}" if where else "")
        stream.append({"name": name, "size": n, "placement": placement, "slices": where or "any",
                       "shards": sorted(set(prov.shard_of[ids].tolist())), "first_slice": int(prov.slice_of[ids].min()),
                       "ids": ids})
    return stream


def fresh_copy(base: SisaModel, path: Path) -> SisaModel:
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(base.path, path, ignore=shutil.ignore_patterns("ledger.sqlite*", ".lock"))
    return SisaModel.open(path, data=base.data)


def run_streams(base: SisaModel, stream: list[dict], work: Path, workers: int, log) -> dict:
    """Every strategy on its own copy of the trained model, the requests interleaved: request ``i`` is served
    by all three before request ``i+1`` (in a rotating order), so that a change in the shared CPU's load
    falls on all three alike."""
    copies = {name: fresh_copy(base, work / name) for name, _ in STRATEGIES}
    services = {name: Unlearner(copies[name], workers=workers) for name, _ in STRATEGIES}
    rows: dict[str, list[dict]] = {name: [] for name, _ in STRATEGIES}
    try:
        for i, request in enumerate(stream):
            order = STRATEGIES[i % 3:] + STRATEGIES[:i % 3]
            for name, mode in order:
                record = services[name].forget(request["ids"], f"{i:02d}", mode=mode, source=request["name"])
                plan = record.plan or {}
                rows[name].append({
                    "request": i, "name": request["name"], "decision": record.decision,
                    "estimated_seconds": record.estimated_seconds, "seconds": record.actual_seconds,
                    "samples": record.actual_samples,
                    "estimated_exact_seconds": (plan.get("exact") or {}).get("seconds"),
                    "estimated_approx_seconds": (plan.get("approx") or {}).get("seconds"),
                    "exact_workers": (plan.get("exact") or {}).get("workers"),
                    "first_slice_exact": plan.get("first_slice"),
                    "amend_rounds": [s["amend"]["rounds"] for s in record.metrics.get("shards", []) if "amend" in s],
                })
                log(
                    f"  {name:<13} #{i:02d} {request['name']:<28} {record.decision:<6} est "
                    f"{record.estimated_seconds or 0:7.2f} s  "
                    f"took {record.actual_seconds:7.2f} s"
                )
    finally:
        for service in services.values():
            service.close()
    return {name: {"rows": rows[name], "total_seconds": float(sum(r["seconds"] for r in rows[name])),
                   "estimated_seconds": float(sum(r["estimated_seconds"] or 0 for r in rows[name])),
                   "samples": int(sum(r["samples"] or 0 for r in rows[name])), "model": copies[name]}
            for name, _ in STRATEGIES}


def boundary_grid(sisa: SisaModel, service: Unlearner, sizes: list[int], seed: int) -> dict:
    """The planner's decision (no earlier deletions) for requests of ``size`` whose first affected slice is ``s``:
    concentrated in one shard, or spread over all shards (one id at slice ``s``, the rest in slices >= ``s``)."""
    prov = sisa.provenance
    status = sisa.version(0).status
    rng = np.random.default_rng(seed)
    out = {}
    for placement in ("one shard", "all shards"):
        cells = []
        for s in range(prov.slices):
            for n in sizes:
                shards = [0] if placement == "one shard" else list(range(prov.shards))
                ids = []
                for j, k in enumerate(shards):
                    share = n // len(shards) + (1 if j < n % len(shards) else 0)
                    if share == 0:
                        continue
                    members, slices = prov.members[k], prov.member_slices[k]
                    if s == prov.slices - 1:
                        ids.append(rng.choice(members[slices == s], share, replace=False))
                    else:
                        ids.append(rng.choice(members[slices == s], 1, replace=False))
                        ids.append(rng.choice(members[slices > s], share - 1, replace=False))
                plan = service.plan(np.concatenate(ids), "auto", status)
                cells.append({"size": n, "first_slice": s, "decision": plan.decision,
                              "exact_seconds": plan.exact.seconds, "approx_seconds": plan.approx.seconds})
        out[placement] = cells
    return out


def boundary_sweep(
    base: SisaModel, work: Path, sizes: list[int], slices: list[int], workers: int, seed: int, log
) -> list[dict]:
    """Measured times of both paths for single-shard requests (each on a fresh copy of the trained model)."""
    prov = base.provenance
    rng = np.random.default_rng(seed)
    cells = []
    for s in slices:
        for n in sizes:
            members = prov.members[0][prov.member_slices[0] == s]
            ids = np.sort(rng.choice(members, n, replace=False))
            cell = {"size": n, "slice": s}
            for mode in ("exact", "approx"):
                sisa = fresh_copy(base, work / "sweep")
                with Unlearner(sisa, workers=workers) as service:
                    record = service.forget(ids, f"sweep-{mode}", mode=mode)
                    auto = service.plan(ids, "auto", sisa.version(0).status)
                cell[f"{mode}_seconds"] = record.actual_seconds
                cell[f"{mode}_estimated"] = record.estimated_seconds
                cell["decision"] = auto.decision
                log(
                    f"  sweep {n:>4} ids in slice {s}: {mode:<6} est {record.estimated_seconds:6.2f} s, took "
                    f"{record.actual_seconds:6.2f} s"
                )
            cells.append(cell)
    shutil.rmtree(work / "sweep", ignore_errors=True)
    return cells


def plot(grid: dict, sweep: list[dict], stream_rows: dict, slices: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    colours = {"exact": "#2b8cbe", "approx": "#f03b20"}
    for ax, placement in zip(axes[:2], ("one shard", "all shards")):
        cells = grid[placement]
        sizes = sorted({c["size"] for c in cells})
        for c in cells:
            x = sizes.index(c["size"])
            ax.add_patch(
                plt.Rectangle((x - 0.5, c["first_slice"] - 0.5), 1, 1, color=colours[c["decision"]], alpha=0.55)
            )
            ax.text(
                x,
                c["first_slice"],
                f"{c['exact_seconds']:.0f}\n{c['approx_seconds']:.1f}",
                ha="center",
                va="center",
                fontsize=7,
            )
        ax.set_xlim(-0.5, len(sizes) - 0.5)
        ax.set_ylim(-0.5, slices - 0.5)
        ax.set_xticks(range(len(sizes)), [str(s) for s in sizes])
        ax.set_yticks(range(slices))
        ax.set_xlabel("request size (ids)")
        ax.set_ylabel("first affected slice (0 = earliest)")
        ax.set_title(f"planner decision, ids in {placement}\n(cells: estimated s exact / approx)")
    axes[1].legend(
        handles=[Patch(color=colours[k], alpha=0.55, label=k) for k in colours], loc="upper right", fontsize=8
    )
    ax = axes[2]
    for n, marker in zip(sorted({c["size"] for c in sweep}), ("o", "s", "^")):
        cells = [c for c in sweep if c["size"] == n]
        xs = [c["slice"] for c in cells]
        ax.plot(
            xs,
            [c["exact_seconds"] for c in cells],
            marker=marker,
            color=colours["exact"],
            label=f"exact, {n} ids (measured)",
        )
        ax.plot(xs, [c["exact_estimated"] for c in cells], marker=marker, color=colours["exact"], ls=":", alpha=0.6)
        ax.plot(
            xs,
            [c["approx_seconds"] for c in cells],
            marker=marker,
            color=colours["approx"],
            label=f"approx, {n} ids (measured)",
        )
        ax.plot(xs, [c["approx_estimated"] for c in cells], marker=marker, color=colours["approx"], ls=":", alpha=0.6)
    ax.set_xlabel("slice of the deleted ids (one shard)")
    ax.set_ylabel("seconds per request (dotted: estimated)")
    ax.set_yscale("log")
    ax.set_title("measured cost of both paths")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def planning_speed(service: Unlearner, sisa: SisaModel) -> float:
    ids = np.random.default_rng(0).choice(sisa.provenance.n, min(10_000, sisa.provenance.n // 6), replace=False)
    status = sisa.version().status
    times = []
    for _ in range(5):
        started = time.perf_counter()
        service.plan(ids, "auto", status)
        times.append(time.perf_counter() - started)
    return 1000 * min(times)


def fmt(value, digits=2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def report(results: dict) -> str:
    setup, totals, quality = results["setup"], results["totals"], results["quality"]
    lines = [
        "# SISA request stream: always-exact vs always-approximate vs the hybrid planner",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']['processor']}, {results['machine']['cpu_count']} cores (shared with other "
        "sessions); "
        f"torch {results['versions']['torch']}; {results['date']}",
        "",
        "## Setup",
        "",
        f"- {setup['dataset']} ({setup['n_train']} train / {setup['n_test']} test), {setup['model']}, "
        f"{setup['shards']} shards x {setup['slices']} slices, {setup['epochs_per_stage']} epochs per stage, "
        f"{setup['workers']} shard workers x {setup['threads']} thread; the serving process runs 1 thread.",
        f"- SISA training: {setup['train_seconds']:.0f} s; ensemble test accuracy {setup['test_acc']:.2f} % "
        f"(shards alone: {', '.join(f'{a:.1f}' for a in setup['shard_test_acc'])} %).",
        "- Calibration (ms per sample pass): stage training "
        f"{1e3 * setup['calibration']['train_seconds_per_sample']:.3f}, "
        f"approximate path {1e3 * setup['calibration']['approx_seconds_per_sample']:.3f}; amend rounds "
        f"{setup['calibration']['amend_rounds']:.1f}; request overhead "
        f"{setup['calibration']['request_overhead_seconds']:.2f} s; "
        f"worker-pool start {setup['calibration']['pool_overhead_seconds']:.2f} s.",
        f"- Policy: {setup['policy']} (exact when its estimate is within max(budget, beta x approximate); "
        f"budget = {setup['policy']['budget_stages']} x the estimated time of retraining one shard's last stage "
        f"= {setup['budget_seconds']:.1f} s).",
        f"- Approximate path: {setup['approx']['method']} (registry defaults) on the affected shards, then amend "
        f"(lr {setup['approx']['amend_lr']}, rounds of {setup['approx']['amend_round_size']} samples, patience "
        f"{setup['approx']['amend_patience']}, at most {setup['approx']['amend_max_rounds']} rounds).",
        f"- Planning {setup['planning_ids']} ids: {setup['planning_ms']:.1f} ms (best of 5; target <= 50 ms).",
        "",
        "## The stream",
        "",
        "| # | request | shards | hybrid chose | est. exact s | est. approx s | always-exact s | always-approx s | "
        "hybrid s |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows = {name: results["streams"][name]["rows"] for name, _ in STRATEGIES}
    for i, request in enumerate(results["stream"]):
        h = rows["hybrid"][i]
        lines.append(
            f"| {i} | {request['name']} | {len(request['shards'])} | {h['decision']} | "
            f"{fmt(h['estimated_exact_seconds'], 1)} | "
            f"{fmt(h['estimated_approx_seconds'], 1)} | {fmt(rows['always-exact'][i]['seconds'], 1)} | "
            f"{fmt(rows['always-approx'][i]['seconds'], 1)} | {fmt(h['seconds'], 1)} |"
        )
    lines += [
        "",
        "(Estimates are the hybrid's plans, made against its own state: after approximate deletions a shard's exact "
        "retrain must also go back before the slices of those earlier ids.)",
        "",
        "## Totals and quality after the whole stream",
        "",
        "| strategy | total s | speed-up vs always-exact | TA | RA | UA | MIA-efficacy | gap TA | gap MIA |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in ["original"] + [n for n, _ in STRATEGIES]:
        q = quality[name]
        total = totals.get(name)
        speed = None if total is None else totals["always-exact"] / total
        lines.append(
            f"| {name} | {fmt(total, 1)} | {fmt(speed, 1)}{'x' if speed else ''} | {q['TA']:.2f} | {q['RA']:.2f} | "
            f"{q['UA']:.2f} | {q['MIA']:.2f} | {fmt(q.get('gap_TA'))} | {fmt(q.get('gap_MIA'))} |"
        )
    streams = results["streams"]
    exact_est, exact_work = streams["always-exact"]["estimated_seconds"], streams["always-exact"]["samples"]
    lines += [
        "",
        "The same totals in load-independent units: the cost model's calibrated estimates, and training sample passes.",
        "",
        "| strategy | estimated s | speed-up by estimate | training passes | ratio of passes |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, _ in STRATEGIES:
        s = streams[name]
        lines.append(f"| {name} | {s['estimated_seconds']:.1f} | {exact_est / s['estimated_seconds']:.1f}x | "
                     f"{s['samples']:,} | {exact_work / max(1, s['samples']):.1f}x |")
    lines += [
        "",
        "MIA-efficacy with the attack's other features (entropy, modified entropy), for the attack's sensitivity:",
        "",
        "| strategy | MIA (true-class prob.) | MIA_entropy | MIA_m_entropy |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name in ["original"] + [n for n, _ in STRATEGIES]:
        q = quality[name]
        lines.append(
            f"| {name} | {q['MIA']:.2f} | {q.get('MIA_entropy', float('nan')):.2f} | "
            f"{q.get('MIA_m_entropy', float('nan')):.2f} |"
        )
    n_del = results["targets"]["deleted"]
    p = quality["always-exact"]["MIA"] / 100
    se = 100 * (p * (1 - p) / n_del) ** 0.5
    lines += [
        "",
        f"Resolution: on {n_del} deleted samples an efficacy near {100 * p:.0f} % has a binomial standard error of "
        f"{se:.1f} points per model; 'original' (which deleted nothing) is "
        f"{quality['original'].get('gap_MIA', float('nan')):.2f} "
        "points from always-exact, which is how little a membership attack sees of one sample in a five-shard "
        "ensemble.",
    ]
    t = results["targets"]
    lines += [
        "",
        "UA = 100 - accuracy on the deleted samples, RA = accuracy on the retained training samples, TA = test "
        "accuracy, "
        "MIA-efficacy = % of the deleted samples an SVC membership attack calls non-members (unlearnkit.evaluate, "
        f"shadow sets of {results['mia_shadow_size']} points). RA and the attack's member set use a seeded sample of "
        f"{results['retained_sample']} retained ids. 'original' is version 0 (nothing deleted) on the same samples.",
        "",
        "## Targets",
        "",
        f"- Hybrid speed-up over always-exact (measured, requests interleaved): **{t['speedup']:.1f}x** (target >= "
        f"10x): {'met' if t['speedup'] >= 10 else 'NOT met'}.",
        f"- Test-accuracy gap to always-exact: **{t['gap_TA']:.2f} points** (target <= 0.5): "
        f"{'met' if t['gap_TA'] <= 0.5 else 'NOT met'}.",
        f"- MIA-efficacy gap to always-exact on the {t['deleted']} deleted samples: **{t['gap_MIA']:.2f} points** "
        f"(target <= 2): {'met' if t['gap_MIA'] <= 2 else 'NOT met'}.",
        f"- Planning 10,000 ids: {setup['planning_ms']:.1f} ms (target <= 50 ms): "
        f"{'met' if setup['planning_ms'] <= 50 else 'NOT met'}.",
        "",
        "## Decision boundary",
        "",
        "![boundary](boundary.png)",
        "",
        "Left and middle: the planner's decision over request size and first affected slice (no earlier deletions), "
        "with the estimated seconds of exact retraining / the approximate path in each cell. Right: both paths "
        "measured "
        "on single-shard requests (each on a fresh copy of the trained model), estimates dotted.",
        "",
        "| ids (one shard) | slice | planner | exact est. s | exact s | approx est. s | approx s |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for c in results["sweep"]:
        lines.append(
            f"| {c['size']} | {c['slice']} | {c['decision']} | {c['exact_estimated']:.1f} | {c['exact_seconds']:.1f} | "
            f"{c['approx_estimated']:.1f} | {c['approx_seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--model", default="small-cnn")
    parser.add_argument("--shards", type=int, default=5)
    parser.add_argument("--slices", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mia-shadow-size", type=int, default=3000)
    parser.add_argument("--quick", action="store_true", help="6,000 training samples, for a smoke run")
    parser.add_argument(
        "--work", default=str(ROOT / "runs" / "sisa-stream"), help="models (the trained one is cached here)"
    )
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results/sisa-stream)")
    parser.add_argument(
        "--report-only", action="store_true", help="re-render README.md and boundary.png from results.json"
    )
    args = parser.parse_args(argv)
    if args.report_only:
        out = Path(args.out or ROOT / "benchmarks" / "results" / ("sisa-stream-quick" if args.quick else "sisa-stream"))
        results = json.loads((out / "results.json").read_text())
        plot(
            results["boundary_grid"],
            results["sweep"],
            results["streams"],
            results["setup"]["slices"],
            out / "boundary.png",
        )
        write_text_atomic(out / "README.md", report(results))
        return 0
    torch.set_num_threads(1)
    dataset = f"{args.dataset}[6000,2000]" if args.quick else args.dataset
    out = Path(args.out or ROOT / "benchmarks" / "results" / ("sisa-stream-quick" if args.quick else "sisa-stream"))
    work = Path(args.work) / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - began:7.1f} s] {text}", file=sys.stderr, flush=True)

    data = load_dataset(dataset)
    base_path = work / "base"
    config = default_stage_config(data, args.model, args.slices)
    try:
        base = SisaModel.open(base_path, data=data)
        base.version(0)
        log(f"reusing the trained model in {base_path}")
    except UnlearnKitError:  # not there, or interrupted: train_sisa resumes from the stage checkpoints written
        log(f"training {args.shards} x {args.slices} {args.model} on {data.name} ...")
        base = train_sisa(data, args.model, out=base_path, shards=args.shards, slices=args.slices, config=config,
                          seed=args.seed, workers=args.workers, threads=1, echo=True)
    calibration = calibrate(base, workers=args.workers, echo=True)
    log("calibrated")
    v0 = base.version(0)
    stream = build_stream(base, args.seed)

    with Unlearner(base, workers=args.workers) as probe:
        planning_ms = planning_speed(probe, base)
        budget = probe.plan(stream[0]["ids"], "auto", v0.status).budget_seconds
        policy, approx = probe.policy.to_dict(), dict(vars(probe.approx))
        smallest_slice = int(base.provenance.counts(v0.status).min())
        grid = boundary_grid(base, probe, [n for n in (1, 3, 10, 30, 100, 300, 1000) if n < smallest_slice], args.seed)
    log(f"planning 10k ids: {planning_ms:.1f} ms")

    log("the stream, requests interleaved across the three strategies")
    streams = run_streams(base, stream, work, args.workers, log)
    for name, _ in STRATEGIES:
        log(f"{name}: {streams[name]['total_seconds']:.1f} s in requests")

    deleted = np.sort(np.concatenate([r["ids"] for r in stream]))
    keep = np.ones(data.n_train, dtype=bool)
    keep[deleted] = False
    # RA and the MIA's member shadow set use a seeded sample of retained ids (as many as the test set): an
    # ensemble of five CNNs over all 60,000 training images costs minutes on a busy CPU and tells no more.
    retained = np.flatnonzero(keep)
    retained = np.sort(np.random.default_rng(args.seed).choice(retained, min(retained.size, int(data.x_test.shape[0])),
                                                                 replace=False))
    request = Request(spec="sisa-stream", effect="remove", seed=args.seed, forget=torch.from_numpy(deleted),
                      retain=torch.from_numpy(retained))
    needed = torch.from_numpy(np.concatenate([deleted, retained]))

    def outputs(net) -> Outputs:
        train = torch.zeros(data.n_train, data.num_classes)
        train[needed] = torch.softmax(predict_logits(net, data.x_train[needed], device="cpu"), 1)
        return Outputs(train, torch.softmax(predict_logits(net, data.x_test, device="cpu"), 1))

    log("evaluating the final ensembles ...")
    kw = {"mia_shadow_size": args.mia_shadow_size, "mia_attack": "svc", "seed": args.seed, "device": "cpu"}
    reference = evaluate(outputs(streams["always-exact"]["model"].ensemble()), request, data, **kw)
    quality = {"always-exact": reference.metrics}
    for name in ("always-approx", "hybrid"):
        quality[name] = evaluate(
            outputs(streams[name]["model"].ensemble()), request, data, reference=reference, **kw
        ).metrics
    quality["original"] = evaluate(outputs(base.ensemble(0)), request, data, reference=reference, **kw).metrics
    log("evaluated")

    log("boundary sweep ...")
    sweep = boundary_sweep(base, work, [1], [0, 2, args.slices - 1], args.workers, args.seed, log)

    totals = {name: streams[name]["total_seconds"] for name, _ in STRATEGIES}
    results = {
        "command": "PYTHONPATH=src python benchmarks/sisa_stream.py" + (" " + " ".join(argv or sys.argv[1:])).rstrip(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(), "versions": versions(),
        "setup": {
            "dataset": data.name, "n_train": data.n_train, "n_test": int(data.x_test.shape[0]), "model": args.model,
            "shards": args.shards, "slices": args.slices, "epochs_per_stage": config.epochs, "workers": args.workers,
            "threads": 1, "train_seconds": v0.info["cost"]["seconds"], "test_acc": v0.info["metrics"]["test_acc"],
            "shard_test_acc": base.meta.get("shard_test_acc"), "calibration": calibration.to_dict(), "policy": policy,
            "budget_seconds": budget, "approx": approx, "planning_ms": planning_ms,
            "planning_ids": min(10_000, data.n_train // 6),
        },
        "stream": [{k: v for k, v in r.items() if k != "ids"} | {"ids": r["ids"].tolist()} for r in stream],
        "streams": {name: {k: v for k, v in s.items() if k != "model"} for name, s in streams.items()},
        "interleaved": True,
        "totals": totals,
        "quality": quality,
        "mia_shadow_size": args.mia_shadow_size,
        "retained_sample": int(retained.size),
        "targets": {
            "speedup": totals["always-exact"] / totals["hybrid"],
            "gap_TA": abs(quality["hybrid"]["TA"] - quality["always-exact"]["TA"]),
            "gap_MIA": abs(quality["hybrid"]["MIA"] - quality["always-exact"]["MIA"]),
            "deleted": int(deleted.size),
        },
        "boundary_grid": grid,
        "sweep": sweep,
        "wall_seconds": time.perf_counter() - began,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", results)
    plot(grid, sweep, streams, args.slices, out / "boundary.png")
    write_text_atomic(out / "README.md", report(results))
    log(f"done: {out}  (hybrid {results['targets']['speedup']:.1f}x faster than always-exact; TA gap "
        f"{results['targets']['gap_TA']:.2f}, MIA gap {results['targets']['gap_MIA']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
