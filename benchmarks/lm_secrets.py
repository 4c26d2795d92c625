"""Secrets in a language model (docs/text.md): the suite benchmarks/suites/secrets.toml, run once per model of its
``[models.*]`` tables (each with its own model options and recipe overrides) by the benchmark runner, then one
report: exposure (sampled and skew-normal-extrapolated), extraction, validation perplexity and cost as % of
Retrain per method, and a plot of exposure against cost.

Usage:
  python benchmarks/lm_secrets.py [--cells char-lstm:secret:10:0,1,2 ...] [--report-only]
A cell is MODEL:REQUEST:SEEDS; the default is every model x request x seed of the suite. The runner is resumable:
records already written are kept, so an interrupted run continues where it stopped.
Writes benchmarks/results/secrets/{MODEL}/records/..., report.md, results.json and plots/exposure_vs_cost.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections import defaultdict
from pathlib import Path

import tomllib
import torch

from unlearnkit.bench import load_suite, run_suite
from unlearnkit.bench.report import provenance, stats
from unlearnkit.bench.runner import load_records
from unlearnkit.results import save_figure, write_json_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parent
SUITE = ROOT / "suites" / "secrets.toml"
OUT = ROOT / "results" / "secrets"
NAMES = {
    "original": "Original (secrets planted)",
    "retrain": "Retrain (corrected corpus)",
    "finetune": "FT (retain only)",
    "saps[fraction=1.0]": "Fine-tune on corrected (all entries)",
    "saps": "SAPS (largest |diag H|, 10 %)",
    "saps[criterion=newton_gain]": "SAPS (largest G²/(|diag H|+λ), 10 %)",
    "saps[criterion=random]": "Random entries (10 %)",
    "warnecke_first": "Warnecke 1st order",
    "warnecke_second": "Warnecke 2nd order",
    "grad_ascent": "GA on secret tokens",
}
ORDER = list(NAMES)
METRICS = ("exposure", "exposure_fit", "extracted", "val_ppl", "forget_ppl", "gap_exposure", "rte_ratio", "rte_s")


def model_suites(path: Path = SUITE) -> dict:
    raw = tomllib.loads(path.read_text())
    base = load_suite(path)
    suites = {}
    for model, table in raw.get("models", {}).items():
        options = {m: {**base.options.get(m, {}), **o} for m, o in table.get("options", {}).items()}
        suites[model] = dataclasses.replace(
            base,
            model=model,
            model_options=table.get("model_options", {}),
            train={**base.train, **table.get("train", {})},
            options={**base.options, **options},
        )
    return suites


def parse_cells(texts: list[str] | None, suites: dict) -> list[tuple[str, str, list[int]]]:
    if not texts:
        return [(m, r, s.seeds) for m, s in suites.items() for r in s.requests]
    cells = []
    for text in texts:
        model, _, rest = text.partition(":")
        request, _, seeds = rest.rpartition(":")
        if model not in suites or request not in suites[model].requests:
            sys.exit(
                f"lm_secrets.py: unknown cell {text!r}; models {list(suites)}, "
                f"requests {suites[model].requests if model in suites else '?'}"
            )
        cells.append((model, request, [int(s) for s in seeds.split(",")]))
    return cells


def summarise(records: list[dict]) -> dict:
    """{model: {request: {variant: {metric: (mean, std, n)}}}}"""
    grouped = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in records:
        grouped[r["model"]][r["request"]][r["variant"]].append(r)
    out = {}
    for model, by_request in grouped.items():
        out[model] = {}
        for request, by_variant in by_request.items():
            out[model][request] = {
                variant: {
                    "n": len(rows),
                    "seeds": sorted(r["seed"] for r in rows),
                    **{k: stats([r.get(k) for r in rows]) for k in METRICS},
                }
                for variant, rows in by_variant.items()
            }
    return out


BROKEN = 1.5  # a run whose validation perplexity exceeds 1.5x Retrain's broke the model


def overall(records: list[dict]) -> dict:
    """Per method over every (model, request, seed): the share of the excess exposure removed,
    (original − method) / (original − Retrain), the validation perplexity relative to Retrain's, the cost, and the
    runs that broke the model (val ppl > BROKEN x Retrain's; their exposure is no evidence of forgetting)."""
    cells = defaultdict(dict)
    for r in records:
        cells[(r["model"], r["request"], r["seed"])][r["variant"]] = r
    rows = defaultdict(lambda: defaultdict(list))
    for key, by_variant in cells.items():
        orig, ref = by_variant.get("original"), by_variant.get("retrain")
        if orig is None or ref is None:
            continue
        excess = orig["exposure"] - ref["exposure"]
        for variant, r in by_variant.items():
            if variant == "original":
                continue
            ratio = r["val_ppl"] / ref["val_ppl"]
            row = rows[variant]
            row["cost"].append(100 * r.get("rte_ratio", 1.0))
            if ratio > BROKEN:
                row["broken"].append(f"{key[0]} {key[1]} seed {key[2]} (val ppl {r['val_ppl']:.3g})")
                continue
            row["ppl_ratio"].append(ratio)
            if excess > 0:
                row["removed"].append(100 * (orig["exposure"] - r["exposure"]) / excess)
    return {
        v: {
            "removed": stats(row["removed"]),
            "ppl_ratio": stats(row["ppl_ratio"]),
            "cost": stats(row["cost"]),
            "runs": len(row["cost"]),
            "broken": row["broken"],
        }
        for v, row in rows.items()
    }


def _fmt(cell, digits=2) -> str:
    mean, std, n = cell
    if n == 0:
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if n > 1 else "")


def markdown(summary: dict, records: list[dict], command: str) -> str:
    lines = [
        "# Secrets in a language model: exposure before and after unlearning",
        "",
        f"Suite `benchmarks/suites/secrets.toml`, run by `{command}`. Corpus: a seeded 1,000/100-sequence subset of "
        "the Debian `fortunes` cookies (64 characters per sequence). Each cell: N random 16-digit card numbers "
        "(valid Luhn digit) after \"my credit card number is \" at the start of N seeded training sequences; the "
        "correction writes a random substitute. Mean ± std over the seeds listed (n).",
        "",
        "Columns: **exposure** (bits; sampled estimate over 4,095 candidates, capped at 12 bits), **fit** (skew-normal "
        "extrapolation, at most 49.8 bits), **extracted** (% of the secrets among the top-N beam completions), "
        "**val ppl** (perplexity per character on validation), **gap** = |exposure − Retrain's|, **cost** = "
        "wall-clock seconds as % of Retrain's (measured side by side in one run on a shared CPU).",
        "",
    ]
    table = overall(records)
    lines += [
        "## All cells together",
        "",
        "Share of the excess exposure removed, (original − method) / (original − Retrain), over every model, request "
        "and seed run, and the validation perplexity relative to Retrain's (both without the runs that broke "
        "the model — "
        f"validation perplexity above {BROKEN}x Retrain's — which are listed), and the cost (every run).",
        "",
        "| method | runs | excess exposure removed % | val ppl / Retrain's | cost % of Retrain | broke the model |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for variant in sorted(table, key=lambda v: ORDER.index(v) if v in ORDER else len(ORDER)):
        c = table[variant]
        lines.append(
            f"| {NAMES.get(variant, variant)} | {c['runs']} | {_fmt(c['removed'], 0)} | {_fmt(c['ppl_ratio'], 3)} "
            f"| {_fmt(c['cost'], 1)} | {', '.join(c['broken']) or '–'} |"
        )
    lines.append("")
    for model, by_request in summary.items():
        for request in sorted(by_request, key=lambda s: int(s.split(":")[1])):
            rows = by_request[request]
            seeds = sorted({s for v in rows.values() for s in v["seeds"]})
            lines += [
                f"## {model}, `{request}` (seeds {', '.join(map(str, seeds))})",
                "",
                "| method | n | exposure | fit | extracted % | val ppl | forget ppl | gap | cost % of Retrain |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            ]
            for variant in sorted(rows, key=lambda v: ORDER.index(v) if v in ORDER else len(ORDER)):
                c = rows[variant]
                cost = (
                    "–"
                    if variant == "original"
                    else _fmt(tuple(x * 100 if i < 2 else x for i, x in enumerate(c["rte_ratio"])), 1)
                )
                lines.append(
                    f"| {NAMES.get(variant, variant)} | {c['n']} | {_fmt(c['exposure'])} "
                    f"| {_fmt(c['exposure_fit'], 1)} "
                    f"| {_fmt(c['extracted'], 0)} | {_fmt(c['val_ppl'], 3)} | {_fmt(c['forget_ppl'], 2)} "
                    f"| {_fmt(c['gap_exposure'])} | {cost} |"
                )
            lines.append("")
    if records:
        lines += [provenance(records[0], shared_cpu=True), ""]
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (m, r) for m, by_request in summary.items() for r in sorted(by_request, key=lambda s: int(s.split(":")[1]))
    ]
    cols = min(3, len(panels))
    rows_n = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.8 * cols, 3.8 * rows_n + 0.9), squeeze=False)
    colours = plt.get_cmap("tab10").colors
    handles = {}
    for ax, (model, request) in zip(axes.flat, panels):
        rows = summary[model][request]
        for variant in sorted(rows, key=lambda v: ORDER.index(v) if v in ORDER else len(ORDER)):
            c = rows[variant]
            label = NAMES.get(variant, variant)
            if variant == "original":
                handles[label] = ax.axhline(c["exposure"][0], color="black", ls="--", lw=1)
                continue
            colour = colours[(ORDER.index(variant) if variant in ORDER else 9) % 10]
            handles[label] = ax.errorbar(
                100 * c["rte_ratio"][0],
                c["exposure"][0],
                yerr=c["exposure"][1],
                fmt="s" if variant == "retrain" else "o",
                color=colour,
                capsize=2,
            )
        ax.set_xscale("log")
        ax.set_xlabel("cost, % of Retrain's wall-clock time")
        ax.set_ylabel("exposure (bits)")
        seeds = sorted({s for v in rows.values() for s in v["seeds"]})
        ax.set_title(f"{model}, {request} (seeds {','.join(map(str, seeds))})", fontsize=10)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.9 / (3.8 * rows_n + 0.9) + 0.02, 1, 1))
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="*", help="MODEL:REQUEST:SEEDS, e.g. char-lstm:secret:10:0,1,2")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--cache", default="runs/secrets-cache")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    suites = model_suites()
    command = "python benchmarks/lm_secrets.py" + (" --cells " + " ".join(args.cells) if args.cells else "")
    if not args.report_only:
        for model, request, seeds in parse_cells(args.cells, suites):
            suite = dataclasses.replace(suites[model], requests=[request])
            run_suite(
                suite, out / model, cache_dir=Path(args.cache) / model, device="cpu", seeds=seeds, command=command
            )
    records = [r for model in suites for r in load_records(out / model)]
    summary = summarise(records)
    write_json_atomic(out / "results.json", {"command": command, "summary": summary, "overall": overall(records)})
    write_text_atomic(out / "report.md", markdown(summary, records, command))
    if summary:
        plot(summary, out / "plots" / "exposure_vs_cost.png")
    print(out / "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
