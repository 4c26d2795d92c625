"""Tables and plots from benchmark records, in the layout the papers print.

Per request: one row per method variant (Retrain first, then the untouched original, then the rest), cells
"mean ± std (gap)" over seeds where gap = |mean − Retrain's mean|, the best cell per column in bold, in the
direction each metric declares beside its definition (``evaluation.METRICS``: closest to Retrain for UA/RA/TA/MIA,
lowest Avg. Gap and run time, highest forgetting rate, unlearning degree and retention rate). Written as Markdown,
CSV and LaTeX, with the machine, versions and command that produced the records, plus PNG plots of Avg. Gap against run
time. When a method
has several variants (a sweep), a selection table ranks them by mean Avg. Gap over the requests.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path
from statistics import mean, stdev
from typing import Any

from .._util import save_figure, write_text_atomic
from ..evaluation import LOWER, metric_score
from ..training import sample_passes
from .runner import load_records

COLUMNS = [("UA", "UA"), ("RA", "RA"), ("TA", "TA"), ("MIA", "MIA-Eff."), ("avg_gap", "Avg. Gap"),
           ("rte_s", "RTE (s)"), ("rte_pct", "RTE (% Retrain)"), ("work_pct", "Work (% Retrain)")]
EXTRA = [
    ("ToW", "ToW"),
    ("KLoM_forget_median", "KLoM D_f (median)"),
    ("KLoM_forget_p95", "KLoM D_f (p95)"),
    ("KLoM_retain_median", "KLoM D_r (median)"),
    ("KLoM_test_median", "KLoM test (median)"),
    ("FR", "FR"),
    ("MRR", "MRR"),
    ("UD_acc", "UD acc"),
    ("UD_loss", "UD loss"),
    ("gap_UD_acc", "|UD − UD_r|"),
    ("spd_acc", "Acc G(D_f)"),
    ("js_forget", "JS D_f"),
    ("js_test", "JS test"),
    ("l2_to_reference", "L2 to Retrain"),
    ("MIA_entropy", "MIA ent."),
    ("MIA_m_entropy", "MIA m-ent."),
    ("ASR", "ASR"),
    ("forget_acc_corrected", "Acc D_f (true)"),
]
GAPPED = {"UA", "RA", "TA", "MIA"}
# The report's own columns (derived here from records, so declared here); every other column's direction is
# declared with the metric in evaluation.METRICS.
REPORT_BETTER = {"rte_pct": LOWER, "work_pct": LOWER}


def stats(values: list[float | None]) -> tuple[float, float, int]:
    """(mean, std, n) over the values that are present (None and NaN are left out); NaNs when none is."""
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return float("nan"), float("nan"), 0
    return mean(values), (stdev(values) if len(values) > 1 else 0.0), len(values)


def _stats(values: list[float]) -> tuple[float, float]:
    return stats(values)[:2]


def provenance(record: dict, shared_cpu: bool = False) -> str:
    """"Machine: …, N CPUs, torch threads T. Versions: …." from a benchmark record."""
    machine, versions = record.get("machine", {}), record.get("versions", {})
    return (
        f"Machine: {machine.get('processor', '?')}, {machine.get('cpu_count', '?')} "
        f"CPUs{' (shared)' if shared_cpu else ''}, "
        "torch threads "
        f"{machine.get('torch_threads', '?')}{', ' + machine['cuda_device'] if 'cuda_device' in machine else ''}. "
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + "."
    )


def summarise(records: list[dict]) -> dict[str, dict[str, dict[str, Any]]]:
    """{request: {variant: {metric: (mean, std), 'n': seeds, 'method': name}}}.

    ``work_pct`` is the method's forward+backward sample passes as a % of retraining's (same request and
    seed): unlike wall-clock time it does not change with the machine's load.
    """
    grouped: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    retrain_work = {(r["request"], r["seed"]): sample_passes(r.get("cost"))
                    for r in records if r["variant"] == "retrain"}
    for r in records:
        base = retrain_work.get((r["request"], r["seed"]))
        if base and r["variant"] != "original":
            r = {**r, "work_pct": 100.0 * sample_passes(r.get("cost")) / base}
        grouped[r["request"]][r["variant"]].append(r)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for request, variants in grouped.items():
        out[request] = {}
        for variant, rows in variants.items():
            summary: dict[str, Any] = {"n": len(rows), "method": rows[0]["method"]}
            for key, _ in COLUMNS + EXTRA:
                if key == "rte_pct":
                    values = [100.0 * r["rte_s"] / r["retrain_s"] for r in rows if r.get("retrain_s")]
                else:
                    values = [r[key] for r in rows if key in r]
                if values:
                    summary[key] = _stats(values)
            out[request][variant] = summary
    return out


def _order(variants: dict[str, dict]) -> list[str]:
    first = [v for v in ("retrain", "original") if v in variants]
    return first + sorted(v for v in variants if v not in first)


def _best(request_summary: dict[str, dict], key: str) -> str | None:
    """The variant with the best value in a column (ignoring Retrain and the original), in the metric's declared
    direction; None when the metric is not ranked (or needs Retrain's value and there is none)."""
    ref = request_summary.get("retrain", {}).get(key)
    candidates = {}
    for variant, s in request_summary.items():
        if variant in ("retrain", "original") or key not in s:
            continue
        score = metric_score(key, s[key][0], ref[0] if ref else None, better=REPORT_BETTER.get(key))
        if score is not None:
            candidates[variant] = score
    return min(candidates, key=candidates.get) if candidates else None


def _cell(summary: dict, key: str, ref: tuple[float, float] | None, digits: int = 2) -> str:
    if key not in summary:
        return "–"
    m, s = summary[key]
    text = f"{m:.{digits}f} ± {s:.{digits}f}"
    if key in GAPPED and ref is not None:
        text += f" ({abs(m - ref[0]):.{digits}f})"
    return text


def markdown(summary: dict, header: str = "", columns=COLUMNS) -> str:
    lines = [header] if header else []
    for request in sorted(summary):
        rows = summary[request]
        ref = rows.get("retrain", {})
        best = {key: _best(rows, key) for key, _ in columns}
        n = max(s["n"] for s in rows.values())
        lines += [f"### {request} ({n} seed{'s' if n > 1 else ''})", "",
                  "| method | " + " | ".join(title for _, title in columns) + " |",
                  "| --- |" + " --- |" * len(columns)]
        for variant in _order(rows):
            cells = []
            for key, _ in columns:
                cell = _cell(rows[variant], key, ref.get(key))
                cells.append(f"**{cell}**" if best[key] == variant else cell)
            name = (
                "Retrain"
                if variant == "retrain"
                else ("Original (no unlearning)" if variant == "original" else variant)
            )
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def csv_text(summary: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    keys = [k for k, _ in COLUMNS + EXTRA]
    writer.writerow(["request", "variant", "seeds"] + [f"{k}_{s}" for k in keys for s in ("mean", "std")])
    for request in sorted(summary):
        for variant in _order(summary[request]):
            s = summary[request][variant]
            row = [request, variant, s["n"]]
            for k in keys:
                row += [f"{s[k][0]:.4f}", f"{s[k][1]:.4f}"] if k in s else ["", ""]
            writer.writerow(row)
    return buffer.getvalue()


def latex(summary: dict) -> str:
    out = []
    for request in sorted(summary):
        rows = summary[request]
        ref = rows.get("retrain", {})
        best = {key: _best(rows, key) for key, _ in COLUMNS}
        out += [f"% {request}", "\\begin{tabular}{l" + "c" * len(COLUMNS) + "}", "\\toprule",
                "Method & " + " & ".join(t.replace("%", "\\%") for _, t in COLUMNS) + " \\\\", "\\midrule"]
        for variant in _order(rows):
            cells = []
            for key, _ in COLUMNS:
                cell = _cell(rows[variant], key, ref.get(key)).replace("±", "$\\pm$")
                cells.append(f"\\textbf{{{cell}}}" if best[key] == variant else cell)
            name = variant.replace("_", "\\_")
            out.append(f"{name} & " + " & ".join(cells) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(out)


def selection_table(summary: dict, budget: float = 0.05) -> tuple[str, dict[str, str]]:
    """Rank each method's variants by mean Avg. Gap over the requests; choose the best whose work (sample
    passes) is within ``budget`` × Retrain's, or the cheapest if none fits. Work, not wall-clock time, so that
    a sweep run on a busy machine selects the same defaults as a quiet one."""
    per_method: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for request, rows in summary.items():
        for variant, s in rows.items():
            if variant in ("retrain", "original") or "avg_gap" not in s:
                continue
            per_method[s["method"]][variant]["gap"].append(s["avg_gap"][0])
            per_method[s["method"]][variant]["time"].append(
                s.get("work_pct", s.get("rte_pct", (float("nan"), 0)))[0] / 100.0
            )
    chosen: dict[str, str] = {}
    lines = [
        "| method | variant | mean Avg. Gap over requests | mean work (% Retrain) | chosen (budget "
        f"{100 * budget:.0f} %) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for method in sorted(per_method):
        variants = per_method[method]
        if len(variants) < 2:
            continue
        scored = {v: (mean(d["gap"]), mean(d["time"])) for v, d in variants.items()}
        within = [v for v, (g, t) in scored.items() if t <= budget]
        pick = min(within, key=lambda v: scored[v][0]) if within else min(scored, key=lambda v: scored[v][1])
        chosen[method] = pick
        for v in sorted(scored, key=lambda v: scored[v][0]):
            g, t = scored[v]
            lines.append(f"| {method} | {v} | {g:.2f} | {100 * t:.1f} | {'**yes**' if v == pick else ''} |")
    return ("\n".join(lines) if chosen else ""), chosen


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    requests = sorted(summary)
    fig, axes = plt.subplots(1, len(requests), figsize=(6.5 * len(requests), 5), squeeze=False)
    for ax, request in zip(axes[0], requests):
        for variant, s in summary[request].items():
            if variant in ("retrain", "original") or "avg_gap" not in s or "rte_pct" not in s:
                continue
            ax.errorbar(max(s["rte_pct"][0], 1e-2), s["avg_gap"][0], yerr=s["avg_gap"][1], fmt="o", capsize=3)
            ax.annotate(
                variant,
                (max(s["rte_pct"][0], 1e-2), s["avg_gap"][0]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
        if "original" in summary[request] and "avg_gap" in summary[request]["original"]:
            ax.axhline(
                summary[request]["original"]["avg_gap"][0],
                color="grey",
                ls="--",
                lw=1,
                label="original (no unlearning)",
            )
            ax.legend(fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("run time (% of Retrain, log scale)")
        ax.set_ylabel("Avg. Gap to Retrain (lower is better)")
        ax.set_title(request)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def write_report(out_dir: str | Path, *, budget: float = 0.05) -> str:
    out_dir = Path(out_dir)
    records = [r for r in load_records(out_dir)]
    if not records:
        from ..errors import UnlearnKitError

        raise UnlearnKitError(f"no benchmark records under {out_dir}/records; run `unlearnkit bench` first")
    summary = summarise(records)
    first = records[0]
    runs = sorted((out_dir / "runs").glob("*.json")) if (out_dir / "runs").is_dir() else []
    commands = []
    for run in runs:
        import json

        info = json.loads(run.read_text())
        if info.get("command"):
            commands.append(info["command"])
    header = "\n".join(
        [
            f"# {first.get('suite', 'benchmark')}: {first['dataset']}, {first['model']}",
            "",
            f"Records: {len(records)}. " + provenance(first),
            "Command(s): "
            + ("; ".join(f"`{c}`" for c in dict.fromkeys(commands)) if commands else "not recorded")
            + ".",
            "",
            "Cells are mean ± std over seeds; for UA/RA/TA/MIA-Eff. the gap to Retrain is in parentheses; the best "
            "cell per column (excluding Retrain and the original) is bold: closest to Retrain for UA, RA, TA, MIA and "
            "the "
            "other accuracies, lowest for gaps, divergences, distances, ASR and cost, highest for FR, MRR and UD. RTE "
            "is "
            "the wall-clock time of the unlearning call alone, measured in the same run as the methods it is compared "
            "with only when the records say so "
            "(see `retrain_s` and timestamps in the records).",
            "",
        ]
    )
    text = markdown(summary, header)
    extra = markdown(
        summary,
        "## More metrics\n",
        columns=[c for c in EXTRA if any(c[0] in s for r in summary.values() for s in r.values())],
    )
    selection, chosen = selection_table(summary, budget)
    if selection:
        text += "\n## Variant selection\n\n" + selection + "\n"
    text += "\n" + extra + "\n\n![Avg. Gap against run time](plots/gap_vs_time.png)\n"
    write_text_atomic(out_dir / "report.md", text)
    write_text_atomic(out_dir / "results.csv", csv_text(summary))
    write_text_atomic(out_dir / "results.tex", latex(summary))
    plot(summary, out_dir / "plots" / "gap_vs_time.png")
    return text
