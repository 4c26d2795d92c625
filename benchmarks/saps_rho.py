"""SAPS against rho (issue 5): the report and plots of the ``saps-rho`` suite.

Reads the records that ``unlearnkit bench --suite benchmarks/suites/saps-rho.toml`` wrote and, per request,
tabulates the scenario's efficacy metric, test accuracy, Avg. Gap to the model retrained on the corrected data and
run time for each selection criterion at each rho (mean ± std over seeds), next to the same update on all entries
(``saps[fraction=1.0]``), the last layer, fine-tuning, the closed-form Warnecke updates, the original and Retrain.

Efficacy: for ``relabel:`` the accuracy on D_f against the true labels (higher is better, Retrain's is the
target); for ``feature:``/``backdoor:`` the attack success rate of the planted feature/trigger (lower is better).

Usage:
    python benchmarks/saps_rho.py [--out benchmarks/results/saps-rho]
Writes OUT/rho-report.md, OUT/rho-summary.json and OUT/plots/efficacy_vs_rho_<request>.png.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from unlearnkit.bench import load_records, provenance, stats
from unlearnkit.results import save_figure, write_json_atomic, write_text_atomic

CRITERIA = ["largest", "newton_gain", "gradient", "random", "smallest"]
CRITERION_NAMES = {"largest": "largest |h|", "smallest": "smallest |h|", "newton_gain": "Newton gain G²/(|h|+λ)",
                   "gradient": "gradient |G|", "random": "random"}
REFERENCES = [
    ("retrain", "Retrain (corrected data)"),
    ("original", "Original"),
    ("finetune", "FT (retain set)"),
    ("warnecke_first", "first-order θ − τG"),
    ("warnecke_second", "second-order θ − H⁻¹G"),
    ("saps[criterion=last_layer]", "masked SGD, last layer"),
    ("saps[fraction=1.0]", "masked SGD, all entries (ρ = 100 %)"),
    # diagnostics: 9 retain samples per corrected one (class-balanced batches for a one-class correction)
    ("saps[fraction=1.0,retain_per_forget=9]", "masked SGD, all entries, 9 retain per corrected"),
    (
        "saps[criterion=largest,fraction=0.1,retain_per_forget=9]",
        "masked SGD, largest |h| 10 %, 9 retain per corrected",
    ),
    ("saps[criterion=random,fraction=0.1,retain_per_forget=9]", "masked SGD, random 10 %, 9 retain per corrected"),
    # the earlier phased batches: corrected samples first, then retain samples
    ("saps[fraction=1.0,mixed=false]", "masked SGD, all entries, phased"),
    ("saps[criterion=largest,fraction=0.1,mixed=false]", "masked SGD, largest |h| 10 %, phased"),
]


def efficacy_key(request: str) -> tuple[str, str, bool]:
    """(metric, title, higher_is_better) of a request's scenario."""
    if request.startswith("relabel"):
        return "forget_acc_corrected", "accuracy on D_f, true labels (%)", True
    return "ASR", "attack success rate of the feature/trigger (%)", False


def cell(s: tuple[float, float, int] | None, seeds: int) -> str:
    if not s or s[2] == 0:
        return "–"
    return f"{s[0]:.2f} ± {s[1]:.2f}" + ("" if s[2] == seeds else f" (n={s[2]})")


def reference_kind(record: dict) -> str | None:
    """"grid" for a masked-SGD SAPS point with ρ < 100 %, a REFERENCES key for the rows beside it, else None
    (other variants of the first-round suite, e.g. the diagonal-Newton step)."""
    opts = record.get("options") or {}
    if record["method"] == "saps":
        if opts.get("update") not in ("sgd", "auto"):  # auto is sgd for the corrections run here
            return None
        if opts.get("retain_per_forget", 1.0) != 1.0 or opts.get("mixed") is False:
            return record["variant"] if record["variant"] in dict(REFERENCES) else None
        if opts.get("criterion") == "last_layer":
            return "saps[criterion=last_layer]"
        return "grid" if opts.get("fraction", 1.0) < 1.0 else "saps[fraction=1.0]"
    return record["variant"] if record["variant"] in dict(REFERENCES) else None


def summarise(records: list[dict]) -> dict:
    """{request: {"grid": {criterion: {rho: {metric: stats}}}, "refs": {variant: {metric: stats}}}}."""
    out: dict = {}
    by_request = defaultdict(list)
    for r in records:
        by_request[r["request"]].append(r)
    for request, rows in by_request.items():
        metric = efficacy_key(request)[0]
        keys = [metric, "TA", "avg_gap", "rte_s", "rte_ratio"]
        grid: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
        refs: dict = defaultdict(lambda: defaultdict(list))
        for r in rows:
            opts = r.get("options") or {}
            kind = reference_kind(r)
            if kind == "grid":
                target = grid[opts["criterion"]][float(opts["fraction"])]
            elif kind is not None:
                target = refs[kind]
            else:
                continue
            for k in keys:
                target[k].append(r.get(k))
        out[request] = {
            "metric": metric,
            "grid": {
                c: {rho: {k: stats(v) for k, v in m.items()} for rho, m in sorted(g.items())} for c, g in grid.items()
            },
            "refs": {v: {k: stats(vals) for k, vals in m.items()} for v, m in refs.items()},
        }
    return out


def markdown(summary: dict, seeds: int) -> list[str]:
    lines = []
    for request in sorted(summary):
        s = summary[request]
        metric, title, higher = efficacy_key(request)
        rhos = sorted({rho for g in s["grid"].values() for rho in g} | {1.0})
        lines += [
            f"## {request}",
            "",
            f"Efficacy: {title} ({'higher' if higher else 'lower'} is better; Retrain's is the target).",
            "",
        ]
        for key, name in [(metric, title), ("avg_gap", "Avg. Gap to Retrain"), ("TA", "test accuracy (%)"),
                          ("rte_ratio", "run time / Retrain's")]:
            lines += [
                f"### {name} by criterion and ρ",
                "",
                "| criterion | " + " | ".join(f"{r * 100:g} %" for r in rhos) + " |",
                "| --- |" + " --- |" * len(rhos),
            ]
            everything = s["refs"].get("saps[fraction=1.0]", {}).get(key)
            for c in CRITERIA:
                if c not in s["grid"]:
                    continue
                cells = [
                    cell(everything, seeds) if rho == 1.0 else cell(s["grid"][c].get(rho, {}).get(key), seeds)
                    for rho in rhos
                ]
                lines.append(f"| {CRITERION_NAMES[c]} | " + " | ".join(cells) + " |")
            lines.append("")
        lines += ["### References", "", f"| variant | {title} | Avg. Gap | TA | run time (s) | time / Retrain's |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for variant, name in REFERENCES:
            m = s["refs"].get(variant)
            if m:
                lines.append(
                    f"| {name} | {cell(m.get(metric), seeds)} | {cell(m.get('avg_gap'), seeds)} | "
                    f"{cell(m.get('TA'), seeds)} | "
                    f"{cell(m.get('rte_s'), seeds)} | {cell(m.get('rte_ratio'), seeds)} |"
                )
        lines.append("")
        lines += best_lines(s, request, seeds)
    return lines


def best_lines(s: dict, request: str, seeds: int) -> list[str]:
    """The best criterion/ρ by Avg. Gap and by efficacy, against all entries and the last layer."""
    metric, _, higher = efficacy_key(request)
    original = s["refs"].get("original", {})
    # only points measured on every seed compete (the first seed also ran a few extra rho values)
    points = [
        (c, rho, m) for c, g in s["grid"].items() for rho, m in g.items() if m.get("avg_gap", (0, 0, 0))[2] == seeds
    ]
    # `smallest` picks entries with h = G = 0 and changes nothing: it "ties" the original, which is not unlearning
    no_ops = {(c, rho) for c, rho, m in points if original.get("avg_gap") and m["avg_gap"][0] == original["avg_gap"][0]}
    points = [p for p in points if (p[0], p[1]) not in no_ops]
    if not points:
        return []
    by_gap = min(points, key=lambda p: p[2]["avg_gap"][0])
    by_eff = (max if higher else min)(points, key=lambda p: p[2][metric][0])
    lines = (
        [
            "- Left out as no-ops (the original's Avg. Gap exactly): "
            f"{', '.join(f'{c} {r * 100:g} %' for c, r in sorted(no_ops))}."
        ]
        if no_ops
        else []
    )
    for label, (c, rho, m) in [("lowest Avg. Gap", by_gap), ("best efficacy", by_eff)]:
        lines.append(
            f"- Best ρ < 100 % by {label}: {CRITERION_NAMES[c]} at ρ = {rho * 100:g} %: efficacy "
            f"{cell(m[metric], seeds)}, Avg. Gap {cell(m['avg_gap'], seeds)}, time / Retrain's "
            f"{cell(m['rte_ratio'], seeds)}."
        )
    for variant, name in [
        ("saps[fraction=1.0]", "all entries"),
        ("saps[criterion=last_layer]", "last layer"),
        ("original", "original"),
    ]:
        m = s["refs"].get(variant)
        if m:
            lines.append(
                f"- {name}: efficacy {cell(m[metric], seeds)}, Avg. Gap {cell(m['avg_gap'], seeds)}, time / Retrain's "
                f"{cell(m['rte_ratio'], seeds)}."
            )
    return lines + [""]


def plot(summary: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for request, s in summary.items():
        metric, title, _ = efficacy_key(request)
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, key, ylabel in [(axes[0], metric, title), (axes[1], "avg_gap", "Avg. Gap to Retrain")]:
            everything = s["refs"].get("saps[fraction=1.0]", {}).get(key)
            for c in CRITERIA:
                g = s["grid"].get(c)
                if not g:
                    continue
                rhos = sorted(g)
                ys = [g[r][key][0] for r in rhos]
                es = [g[r][key][1] for r in rhos]
                if everything and everything[2]:
                    rhos, ys, es = rhos + [1.0], ys + [everything[0]], es + [everything[1]]
                ax.errorbar([r * 100 for r in rhos], ys, yerr=es, marker="o", capsize=3, label=CRITERION_NAMES[c])
            for variant, name, color, line in [
                ("retrain", "Retrain", "black", "-"),
                ("original", "Original", "black", ":"),
                ("finetune", "FT", "grey", "--"),
                ("saps[criterion=last_layer]", "last layer", "C9", "-."),
            ]:
                m = s["refs"].get(variant, {}).get(key)
                if m and m[2] and not (key == "avg_gap" and variant == "retrain"):
                    ax.axhline(m[0], linestyle=line, color=color, label=name, lw=1)
            ax.set_xscale("log")
            ax.set_xlabel("ρ: % of parameter entries updated")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"SAPS (masked SGD on the corrected data) against ρ: {request}")
        fig.tight_layout()
        written.append(str(save_figure(fig, out / "plots" / f"efficacy_vs_rho_{request.replace(':', '_')}.png")))
    return written


def grid_options(records: list[dict]) -> str:
    """The SGD and curvature options the grid rows share, read from their records (not restated by hand)."""
    keys = ("epochs", "lr", "schedule", "retain_per_forget", "mixed", "curvature", "curvature_samples")
    shared = {}
    for r in records:
        if reference_kind(r) == "grid":
            for k in keys:
                value = (r.get("options") or {}).get(k)
                if value is not None:  # an option the records predate (first round: `mixed`) is not shown
                    shared.setdefault(k, set()).add(str(value))
    return ", ".join(f"{k} {'/'.join(sorted(v))}" for k, v in shared.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/saps-rho")
    args = parser.parse_args()
    out = Path(args.out)
    records = load_records(out)
    if not records:
        sys.exit(f"no records under {out}/records; run the saps-rho suite first")
    if any("mixed" in (r.get("options") or {}) for r in records):
        # records from before saps had `mixed` (phased batches) are stale here; the runner reruns them
        stale = [r for r in records if r["method"] == "saps" and "mixed" not in (r.get("options") or {})]
        if stale:
            print(f"leaving out {len(stale)} stale record(s) made before the `mixed` option", file=sys.stderr)
        records = [r for r in records if not (r["method"] == "saps" and "mixed" not in (r.get("options") or {}))]
    seeds = len({r["seed"] for r in records})
    summary = summarise(records)
    plots = plot(summary, out)
    first = records[0]
    header = [
        f"# SAPS against ρ (feature and label unlearning, {seeds} seed{'s' if seeds > 1 else ''})", "",
        f"Records: {len(records)} from `{out}/records` (suite `{first['suite']}`, {first['dataset']}, "
        f"{first['model']}, seeds {sorted({r['seed'] for r in records})}). " + provenance(first, shared_cpu=True),
        f"Commands: `unlearnkit --threads 1 bench --suite benchmarks/suites/{first['suite']}.toml --out {out} "
        "--cache runs/saps-cache` (the suite file says how it was split over processes); this report: "
        f"`python benchmarks/saps_rho.py --out {out}`.", "",
        f"Every SAPS grid row is masked SGD ({grid_options(records)}) on the entries its criterion picks. "
        "The ρ = 100 % column is one variant (every criterion selects everything). Cells: mean ± std over seeds "
        f"(n = {seeds} unless marked). Run times were measured with several benchmark processes sharing the CPU; "
        "compare them within this table only.", "",
    ]
    body = markdown(summary, seeds)
    write_text_atomic(
        out / "rho-report.md", "\n".join(header + body + [f"![{p}](plots/{Path(p).name})" for p in plots]) + "\n"
    )
    write_json_atomic(
        out / "rho-summary.json",
        {
            req: {
                "metric": s["metric"],
                "grid": {c: {str(r): v for r, v in g.items()} for c, g in s["grid"].items()},
                "refs": s["refs"],
            }
            for req, s in summary.items()
        },
    )
    print(f"wrote {out / 'rho-report.md'} and {len(plots)} plot(s)")


if __name__ == "__main__":
    main()
