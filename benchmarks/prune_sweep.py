"""The sparsity sweep of Jia et al. (NeurIPS 2023; prune first, then unlearn): how UA, MIA-efficacy, RA, TA and Avg.
Gap of
each method move with the sparsity of the model it unlearns from, each next to the retrained model of the
same sparsity.

Each sparsity S is the suite ``benchmarks/suites/prune-sweep.toml`` with ``prune = "omp:S"`` (S = 0 is the
dense suite), run by the one benchmark runner into ``OUT/omp-S/`` (or ``OUT/dense/``) with its own report;
the originals, pruned originals and retrained models are cached in ``--cache`` and shared between runs, and
records are resumable, so the sweep can be run in parts (e.g. the headline sparsities with three seeds first).
This script then writes the sweep-level report: ``OUT/report.md`` (tables of each metric against sparsity),
``OUT/summary.json`` and ``OUT/plots/metrics_vs_sparsity_<request>.png``.

Usage (one torch thread on a shared CPU):
    python benchmarks/prune_sweep.py --sparsities 0,0.95 --seeds 0,1,2
    python benchmarks/prune_sweep.py --sparsities 0.5,0.8,0.9,0.99 --seeds 0
    python benchmarks/prune_sweep.py --report-only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from unlearnkit.bench import load_records, load_suite, provenance, run_suite, stats, with_prune, write_report
from unlearnkit.results import machine, save_figure, versions, write_json_atomic, write_text_atomic

TITLES = {
    "UA": "UA",
    "MIA": "MIA-efficacy",
    "RA": "RA",
    "TA": "TA",
    "avg_gap": "Avg. Gap",
    "TA_all": "clean test accuracy",
    "ASR": "attack success rate (ASR)",
    "forget_acc_corrected": "accuracy on D_f as trained (triggered images) against the true labels",
    "MIA_entropy": "MIA-efficacy (entropy)",
}
METRICS = [(k, TITLES[k]) for k in ("UA", "MIA", "RA", "TA", "avg_gap")]
NAMES = {
    "retrain": "Retrain (same sparsity)",
    "original": "Original (no unlearning)",
    "finetune": "FT",
    "finetune[lr=0.01]": "FT (lr 0.01)",
    "grad_ascent": "GA",
    "fisher": "FF",
    "influence": "IU",
    "l1_sparse": "ℓ1-sparse",
    "grad_ascent[target_forget_acc=0]": "GA (no early stop)",
    "random_label": "RL",
    "salun": "SalUn",
    "scrub": "SCRUB",
    "boundary_shrink": "Boundary Shrink",
}
ORDER = [
    "retrain",
    "original",
    "finetune",
    "finetune[lr=0.01]",
    "grad_ascent",
    "grad_ascent[target_forget_acc=0]",
    "fisher",
    "influence",
    "l1_sparse",
    "random_label",
    "salun",
    "scrub",
    "boundary_shrink",
]


def folder(sparsity: float) -> str:
    return "dense" if sparsity == 0 else f"omp-{sparsity:g}"


def spec(sparsity: float) -> str | None:
    return None if sparsity == 0 else f"omp:{sparsity:g}"


def collect(out: Path) -> list[dict]:
    records = []
    for sub in sorted(p for p in out.iterdir() if p.is_dir() and (p / "records").is_dir()):
        records += load_records(sub)
    return records


def summarise(records: list[dict]) -> dict:
    """{request: {variant: {sparsity: {metric: (mean, std, n)}}}} over seeds, plus work % of Retrain."""
    grouped: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    retrain_work = {}
    for r in records:
        if r["variant"] == "retrain":
            c = r.get("cost") or {}
            retrain_work[(r["request"], r["seed"], r.get("prune"))] = c.get("forward_samples", 0) + c.get(
                "backward_samples", 0
            )
    for r in records:
        nominal = 0.0 if r.get("prune") is None else float(r["prune"].split(":")[1])
        grouped[r["request"]][r["variant"]][nominal].append(r)
    out: dict = {}
    for request, variants in grouped.items():
        out[request] = {}
        for variant, by_sparsity in variants.items():
            out[request][variant] = {}
            for sparsity, rows in sorted(by_sparsity.items()):
                cell = {key: stats([row.get(key) for row in rows]) for key in TITLES}
                cell["sparsity_achieved"] = stats([row.get("sparsity") for row in rows])
                cell["rte_s"] = stats([row.get("rte_s") for row in rows])
                if variant not in ("retrain", "original"):
                    work = []
                    for row in rows:
                        base = retrain_work.get((request, row["seed"], row.get("prune")))
                        c = row.get("cost") or {}
                        if base:
                            work.append(100.0 * (c.get("forward_samples", 0) + c.get("backward_samples", 0)) / base)
                    cell["work_pct"] = stats(work)
                cell["seeds"] = sorted(row["seed"] for row in rows)
                out[request][variant][sparsity] = cell
    return out


def _fmt(cell: dict | None, key: str) -> str:
    if not cell or key not in cell or cell[key][2] == 0:
        return "–"
    m, s, n = cell[key]
    return f"{m:.2f} ± {s:.2f}" + ("" if n == 3 else f" (n={n})")


def variants_in(rows: dict) -> list[str]:
    known = [v for v in ORDER if v in rows]
    return known + sorted(v for v in rows if v not in known)


def markdown(summary: dict, sparsities: list[float], metrics=METRICS) -> str:
    lines = []
    for request in sorted(summary):
        rows = summary[request]
        lines += [f"## {request}", ""]
        for key, title in metrics:
            lines += [f"### {title}", "", "| method | " + " | ".join(f"{s:g}" for s in sparsities) + " |",
                      "| --- |" + " --- |" * len(sparsities)]
            for variant in variants_in(rows):
                if key == "avg_gap" and variant == "retrain":
                    continue
                cells = [_fmt(rows[variant].get(s), key) for s in sparsities]
                lines.append(f"| {NAMES.get(variant, variant)} | " + " | ".join(cells) + " |")
            lines.append("")
        lines += [
            "### Work (sample passes, % of the same-sparsity Retrain's)",
            "",
            "| method | " + " | ".join(f"{s:g}" for s in sparsities) + " |",
            "| --- |" + " --- |" * len(sparsities),
        ]
        for variant in variants_in(rows):
            if variant in ("retrain", "original"):
                continue
            lines.append(
                f"| {NAMES.get(variant, variant)} | "
                + " | ".join(_fmt(rows[variant].get(s), "work_pct") for s in sparsities)
                + " |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(summary: dict, sparsities: list[float], out: Path, metrics=METRICS) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    xs = list(range(len(sparsities)))
    for request in sorted(summary):
        rows = summary[request]
        fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 4), squeeze=False)
        shown = variants_in(rows)
        for ax, (key, title) in zip(axes[0], metrics):
            for i, variant in enumerate(shown):
                if key == "avg_gap" and variant == "retrain":
                    continue
                jitter = 0.06 * (i - (len(shown) - 1) / 2)  # so that overlapping methods stay visible
                points = [(x + jitter, rows[variant][s][key]) for x, s in zip(xs, sparsities)
                          if s in rows[variant] and rows[variant][s][key][2]]
                if not points:
                    continue
                style = {"retrain": dict(color="black", ls="--", marker="s"),
                         "original": dict(color="grey", ls=":", marker="x")}.get(variant, dict(marker="o"))
                ax.errorbar([p[0] for p in points], [p[1][0] for p in points], yerr=[p[1][1] for p in points],
                            capsize=3, label=NAMES.get(variant, variant), **style)
            ax.set_xticks(xs, [f"{s:g}" for s in sparsities])
            ax.set_xlabel("sparsity (OMP)")
            ax.set_title(title)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"{request}: metrics against sparsity (mean ± std over seeds)")
        fig.tight_layout()
        paths.append(save_figure(fig, out / "plots" / f"metrics_vs_sparsity_{request.replace(':', '_')}.png"))
    return paths


def write_sweep_report(out: Path, command: str, suite_path: str | None, metrics=METRICS, title: str | None = None,
                       note: str | None = None) -> str:
    records = collect(out)
    if not records:
        raise SystemExit(f"no records under {out}/*/records")
    summary = summarise(records)
    sparsities = sorted({s for rows in summary.values() for v in rows.values() for s in v})
    first = records[0]
    runs = []
    for sub in sorted(p for p in out.iterdir() if p.is_dir()):
        for run in sorted((sub / "runs").glob("*.json")) if (sub / "runs").is_dir() else []:
            info = json.loads(run.read_text())
            if info.get("command"):
                runs.append(info["command"])
    header = [
        f"# {title or 'Sparsity sweep: prune first, then unlearn'} ({first['dataset']}, {first['model']})",
        "",
        f"Records: {len(records)} (from `{out}/*/records`). " + provenance(first, shared_cpu=True),
        f"Suite: `{suite_path}`. Commands: "
        + "; ".join(f"`{c}`" for c in dict.fromkeys(runs))
        + f"; report: `{command}`.",
        "",
        "Originals: the dense 10-epoch original of each seed; at sparsity S > 0, that model pruned by global one-shot "
        "magnitude pruning (conv and linear weights, classifier included) and fine-tuned 2 epochs at lr 0.01 on the "
        "full training set (`sparsity.prune_first`). Retrain: 10 epochs from a fresh initialisation on D_r under the "
        "pruned original's mask. Methods at their registry defaults unless the variant names options. Cells: mean ± "
        "std "
        "over seeds (n = 3 unless marked). Gaps and Avg. Gap are to the Retrain of the same sparsity and seed.",
        "",
    ] + ([note, ""] if note else [])
    text = "\n".join(header) + "\n" + markdown(summary, sparsities, metrics)
    text += "\n" + "\n".join(f"![{p.stem}](plots/{p.name})" for p in plot(summary, sparsities, out, metrics)) + "\n"
    write_text_atomic(out / "report.md", text)
    write_json_atomic(out / "summary.json", {
        "machine": machine(), "versions": versions(), "command": command, "suite": suite_path,
        "summary": {req: {var: {f"{s:g}": cell for s, cell in by.items()} for var, by in rows.items()}
                    for req, rows in summary.items()},
    })
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="benchmarks/suites/prune-sweep.toml")
    parser.add_argument("--sparsities", default="0,0.5,0.8,0.9,0.95,0.99")
    parser.add_argument("--seeds", default=None, help="comma list (default: the suite's)")
    parser.add_argument("--methods", default=None, help="comma list of methods/variants (default: the suite's)")
    parser.add_argument("--cache", default="runs/prune-sweep-cache")
    parser.add_argument("--out", default="benchmarks/results/prune-sweep")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--metrics", default="UA,MIA,RA,TA,avg_gap", help=f"report columns, from {', '.join(TITLES)}")
    parser.add_argument("--title", default=None, help="report title")
    parser.add_argument("--note", default=None, help="a paragraph for the report's header")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    command = "python " + " ".join(sys.argv)
    out = Path(args.out)
    suite = load_suite(args.suite)
    if not args.report_only:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
        methods = args.methods.split(",") if args.methods else None
        for sparsity in [float(s) for s in args.sparsities.split(",")]:
            started = time.time()
            print(f"== sparsity {sparsity:g}", file=sys.stderr, flush=True)
            point = with_prune(suite, spec(sparsity))
            run_suite(point, out / folder(sparsity), cache_dir=args.cache, device="cpu", seeds=seeds, methods=methods,
                      command=command)
            write_report(out / folder(sparsity))
            print(f"== sparsity {sparsity:g} done in {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    metrics = [(k, TITLES[k]) for k in args.metrics.split(",")]
    print(write_sweep_report(out, command, args.suite, metrics, args.title, args.note))


if __name__ == "__main__":
    main()
