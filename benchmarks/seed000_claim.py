"""The headline claim of the prune-first paper, tested fairly (Jia et al., NeurIPS 2023, "Model sparsity can
simplify machine unlearning"): "77 % unlearning efficacy gain of fine-tuning when using sparsity-aware unlearning".

The suite ``benchmarks/suites/seed000-claim.toml`` (class-wise forgetting; FT and ℓ1-sparse each at lr 0.01 — the
paper's FT rate — and at 0.1, with pinned epochs and budget) is run once per original: the dense one and 95 %-sparse
ones made by OMP with rewinding, IMP with rewinding and SynFlow (``--specs``). Records go to ``OUT/<spec>/`` through
the one benchmark runner (resumable; originals, pruned originals and retrained models cached in ``--cache``), then
this script writes ``OUT/report.md``, ``OUT/summary.json`` and ``OUT/plots/ua_by_original.png``.

Unlearning efficacy is UA (100 − forget accuracy) and MIA-efficacy, as in the paper. For each original and learning
rate, the gain of ℓ1-sparse over FT is computed per seed (both runs share the seed's original) as
  * the point gain E(ℓ1-sparse) − E(FT), in percentage points, and
  * the share of FT's gap to Retrain that ℓ1-sparse closes, (E(ℓ1) − E(FT)) / (E(Retrain) − E(FT)),
and the prune-first gain of FT (FT on the sparse original − FT on the dense one, paired by seed). Each is reported as
mean with a 95 % t confidence interval over the seeds. The verdict lines are computed from these intervals.

Usage (one torch thread on a shared CPU):
    python benchmarks/seed000_claim.py                                  # every spec, the suite's seeds
    python benchmarks/seed000_claim.py --specs none,omp:0.95:rewind_epoch=1 --seeds 0,1,2,3,4
    python benchmarks/seed000_claim.py --specs none --methods "finetune[epochs=10,lr=0.01,retain_per_forget=null]"
    python benchmarks/seed000_claim.py --report-only
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections import defaultdict
from pathlib import Path
from statistics import mean, stdev

import torch

from unlearnkit.bench import load_records, load_suite, run_suite, with_prune
from unlearnkit.bench.report import provenance
from unlearnkit.bench.suite import select_variants
from unlearnkit.errors import UnlearnKitError
from unlearnkit.results import save_figure, write_json_atomic, write_text_atomic
from unlearnkit.training import sample_passes

ROOT = Path(__file__).resolve().parent
SUITE = ROOT / "suites" / "seed000-claim.toml"
SPECS = ["none", "omp:0.95:rewind_epoch=1", "imp:0.95:rate=0.5", "synflow:0.95"]
LABELS = {"none": "dense", "omp": "OMP 95 % (rewind to epoch 1)", "imp": "IMP 95 % (rate 0.5, rewind to epoch 1)",
          "synflow": "SynFlow 95 %"}
EFFICACY = (("UA", "UA"), ("MIA", "MIA-efficacy"))
# (setting, FT variant, ℓ1-sparse variant): the suite's pinned budget (4 epochs of |D_f| retain samples) at both
# rates, and the paper's FT budget (10 epochs over all of D_r) at its rate.
PAIRS = [
    ("lr 0.01", "finetune[lr=0.01]", "l1_sparse[lr=0.01]"),
    ("lr 0.1", "finetune[lr=0.1]", "l1_sparse[lr=0.1]"),
    ("lr 0.01, 10 epochs of D_r", "finetune[epochs=10,lr=0.01,retain_per_forget=null]",
     "l1_sparse[epochs=10,lr=0.01,retain_per_forget=null]"),
]
NAMES = {label: f"{'FT' if label.startswith('finetune') else 'ℓ1-sparse'} ({setting})"
         for setting, *labels in PAIRS for label in labels}
PAPER_GAIN = 77.0  # the abstract's figure, read here as percentage points of efficacy (see report)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def folder(spec: str) -> str:
    return "dense" if spec == "none" else spec.replace(":", "_")


def label(spec: str) -> str:
    return LABELS.get(spec.split(":")[0], spec)


def ci(values: list[float]) -> dict:
    """Mean and 95 % t interval (half-width) over seeds; n = 1 gives no interval."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return {"mean": float("nan"), "half": float("nan"), "n": 0}
    if len(values) == 1:
        return {"mean": values[0], "half": float("nan"), "n": 1}
    half = T95.get(len(values) - 1, 1.96) * stdev(values) / math.sqrt(len(values))
    return {"mean": mean(values), "half": half, "n": len(values)}


def fmt(c: dict, digits: int = 2) -> str:
    if c["n"] == 0:
        return "–"
    if math.isnan(c["half"]):
        return f"{c['mean']:.{digits}f} (n=1)"
    return f"{c['mean']:.{digits}f} ± {c['half']:.{digits}f} (n={c['n']})"


def summarise(by_spec: dict[str, list[dict]]) -> dict:
    out: dict = {}
    dense_ft: dict = {}  # (setting, seed) -> FT record on the dense original
    for spec, records in by_spec.items():
        cell: dict = defaultdict(dict)  # variant label -> seed -> record
        reference: dict = {}
        for r in records:
            if r["variant"] == "retrain":
                reference[r["seed"]] = r
            else:
                cell[r["variant"]][r["seed"]] = r
        table: dict = {"retrain": {k: ci([r.get(k) for r in reference.values()]) for k in ("UA", "MIA", "RA", "TA")}}
        for name, rows in sorted(cell.items()):
            table[name] = {k: ci([r.get(k) for r in rows.values()]) for k in ("UA", "MIA", "RA", "TA")}
            # sample passes against the same seed's same-sparsity Retrain (wall-clock ratios mix loads)
            table[name]["work_pct"] = ci([100 * sample_passes(r.get("cost")) / sample_passes(reference[seed]["cost"])
                                          if seed in reference and sample_passes(reference[seed].get("cost")) else None
                                          for seed, r in rows.items()])
        gains: dict = {}
        for setting, ft_label, l1_label in PAIRS:
            ft, l1 = cell.get(ft_label, {}), cell.get(l1_label, {})
            if spec == "none":
                dense_ft.update({(setting, s): r for s, r in ft.items()})
            seeds = sorted(set(ft) & set(l1))
            if not seeds:
                continue
            for key, _ in EFFICACY:
                points = [l1[s][key] - ft[s][key] for s in seeds]
                shares = [(l1[s][key] - ft[s][key]) / (reference[s][key] - ft[s][key])
                          for s in seeds if s in reference and abs(reference[s][key] - ft[s][key]) > 1e-9]
                gains[f"{key}@{setting}"] = {"points": ci(points), "share_closed": ci([100 * x for x in shares])}
        table["gains"] = gains
        out[spec] = table
    # Prune first (FT on the sparse original vs FT on the dense one, same seed and setting).
    for spec, records in by_spec.items():
        if spec == "none":
            continue
        prune_gain = {}
        for setting, ft_label, _ in PAIRS:
            rows = {r["seed"]: r for r in records if r["variant"] == ft_label}
            for key, _ in EFFICACY:
                values = [rows[s][key] - dense_ft[(setting, s)][key] for s in rows if (setting, s) in dense_ft]
                if values:
                    prune_gain[f"{key}@{setting}"] = ci(values)
        out[spec]["prune_first_gain"] = prune_gain
    return out


def verdict(summary: dict) -> list[str]:
    lines = []
    for spec, table in summary.items():
        for setting, *_ in PAIRS:
            g = table["gains"].get(f"UA@{setting}")
            if not g or g["points"]["n"] == 0:
                continue
            p = g["points"]
            low, high = p["mean"] - p["half"], p["mean"] + p["half"]
            if math.isnan(p["half"]):
                judged = "too few seeds for an interval"
            elif low > 0:
                judged = "ℓ1-sparse forgets more than FT (interval above 0)"
            elif high < 0:
                judged = "ℓ1-sparse forgets less than FT (interval below 0)"
            else:
                judged = "no difference resolved (interval contains 0)"
            reaches = "" if math.isnan(p["half"]) else (
                f"; the paper's {PAPER_GAIN:g} points {'lie inside' if low <= PAPER_GAIN <= high else 'lie outside'}"
                " the interval")
            lines.append(
                f"- {label(spec)}, {setting}: UA gain of ℓ1-sparse over FT {fmt(p)} points — {judged}{reaches}.")
    return lines


def markdown(summary: dict, records: list[dict], commands: list[str], suite: Path = SUITE) -> str:
    specs = list(summary)
    lines = [
        "# The prune-first paper's claim (Jia et al., NeurIPS 2023): ℓ1-sparse vs fine-tuning at matched learning "
        "rates (class-wise forgetting)",
        "",
        f"Suite `benchmarks/suites/{suite.name}` ({records[0]['dataset']}, {records[0]['model']}, class:0). "
        + provenance(records[0], shared_cpu=True),
        "Commands: " + "; ".join(f"`{c}`" for c in commands) + ".",
        "",
        "The claim (abstract of Jia et al., NeurIPS 2023): \"a 77 % unlearning efficacy gain of fine-tuning when using "
        "sparsity-aware unlearning\". Read here as percentage points of UA/MIA-efficacy between FT and ℓ1-sparse in "
        "class-wise forgetting (the abstract does not define it further). FT and ℓ1-sparse run 4 epochs of |D_f| "
        "retain samples each (4.4 % of Retrain's sample passes) at lr 0.01 and 0.1, and at the paper's FT budget, 10 "
        "epochs over all of D_r (as many sample passes as Retrain here, which has 10 epochs; the paper's Retrain has "
        "182), at lr 0.01; cosine schedule; ℓ1-sparse with α = 2e-4 (decaying linearly). Cells: mean "
        "± half-width of the 95 % t interval over seeds (n seeds). Retrain is the same-sparsity model retrained on "
        "D_r under the original's mask. The gain table also gives the other reading of the claim: the share of FT's "
        "gap to Retrain that ℓ1-sparse closes.",
        "",
        "## Verdict (computed from the intervals below)",
        "",
        *verdict(summary),
        "",
    ]
    for key, title in EFFICACY + (("RA", "RA"), ("TA", "TA")):
        lines += [f"## {title}", "", "| method | " + " | ".join(label(s) for s in specs) + " |",
                  "| --- |" + " --- |" * len(specs)]
        for row in ["retrain", *NAMES]:
            name = NAMES.get(row, "Retrain")
            lines.append(f"| {name} | " + " | ".join(fmt(summary[s].get(row, {}).get(key, {"n": 0})) for s in specs)
                         + " |")
        lines.append("")
    lines += ["## Gain of ℓ1-sparse over FT (paired by seed)", "",
              "| original | setting | UA gain (points) | share of FT's UA gap closed (%) | MIA-efficacy gain (points) "
              "| share of FT's MIA gap closed (%) |", "| --- | --- | --- | --- | --- | --- |"]
    for spec in specs:
        g = summary[spec]["gains"]
        for setting, *_ in PAIRS:
            if f"UA@{setting}" not in g:
                continue
            ua, mia = g[f"UA@{setting}"], g[f"MIA@{setting}"]
            lines.append(f"| {label(spec)} | {setting} | {fmt(ua['points'])} | {fmt(ua['share_closed'], 1)} | "
                         f"{fmt(mia['points'])} | {fmt(mia['share_closed'], 1)} |")
    lines += ["", "## Prune first: FT on the 95 % sparse original minus FT on the dense one (paired by seed)", "",
              "| original | setting | UA (points) | MIA-efficacy (points) |", "| --- | --- | --- | --- |"]
    for spec in specs:
        pg = summary[spec].get("prune_first_gain")
        if not pg:
            continue
        for setting, *_ in PAIRS:
            if f"UA@{setting}" in pg:
                lines.append(f"| {label(spec)} | {setting} | {fmt(pg[f'UA@{setting}'])} | "
                             f"{fmt(pg[f'MIA@{setting}'])} |")
    lines += ["", "## Work (sample passes, % of the same-sparsity Retrain's)", "",
              "| method | " + " | ".join(label(s) for s in specs) + " |", "| --- |" + " --- |" * len(specs)]
    for row, name in NAMES.items():
        lines.append(f"| {name} | " + " | ".join(fmt(summary[s].get(row, {}).get("work_pct", {"n": 0}), 1)
                                                 for s in specs) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = list(summary)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    rows = list(NAMES)
    width = 0.8 / len(rows)
    for ax, (key, title) in zip(axes, EFFICACY):
        for i, row in enumerate(rows):
            xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(specs))]
            cells = [summary[s].get(row, {}).get(key, {"mean": float("nan"), "half": 0.0, "n": 0}) for s in specs]
            ax.bar(xs, [c["mean"] for c in cells], width,
                   yerr=[0 if math.isnan(c["half"]) else c["half"] for c in cells], capsize=2,
                   label=NAMES[row])
        ax.set_xticks(range(len(specs)), [label(s).split(" (")[0] for s in specs])
        ax.set_ylabel(f"{title} (%)")
        ax.set_title(f"{title}, class-wise forgetting (Retrain: 100)")
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=8)
    path = out / "plots" / "ua_by_original.png"
    save_figure(fig, path)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", default=str(SUITE), help="the suite file (default: the 10k/5k subset study)")
    parser.add_argument("--specs", default=",".join(SPECS), help="comma list of prune specs ('none': dense)")
    parser.add_argument("--seeds", default=None, help="comma list (default: the suite's)")
    parser.add_argument("--methods", default=None, help="the suite's variants to run, separated by ';' (default: all)")
    parser.add_argument("--cache", default="runs/seed000-cache")
    parser.add_argument("--out", default="benchmarks/results/seed000-claim")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    suite_path = Path(args.suite)
    if not suite_path.is_file():
        parser.error(f"--suite {args.suite}: no such suite file")
    base = load_suite(suite_path)
    command = "python benchmarks/seed000_claim.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if not args.report_only:
        # every argument checked before the first (long) run
        try:
            seeds = None if args.seeds is None else [int(s) for s in args.seeds.split(",")]
        except ValueError:
            parser.error(f"--seeds {args.seeds!r}: a comma list of integers")
        suites = {}
        for spec in args.specs.split(","):
            try:
                suites[spec] = base if spec == "none" else with_prune(base, spec)
            except UnlearnKitError as err:
                parser.error(f"--specs {spec}: {err}")
        try:
            methods = None if args.methods is None else select_variants(base, args.methods.split(";"))
        except UnlearnKitError as err:
            parser.error(str(err))
        for spec, suite in suites.items():
            started = time.perf_counter()
            run_suite(suite, out / folder(spec), cache_dir=args.cache, seeds=seeds, command=command, methods=methods)
            print(f"{spec}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    by_spec = {}
    commands: list[str] = []
    for spec in SPECS:
        sub = out / folder(spec)
        if (sub / "records").is_dir():
            by_spec[spec] = load_records(sub)
            for run in sorted((sub / "runs").glob("*.json")):
                c = json.loads(run.read_text()).get("command")
                if c and c not in commands:
                    commands.append(c)
    if not by_spec:
        sys.exit("no records yet")
    summary = summarise(by_spec)
    records = [r for rs in by_spec.values() for r in rs]
    write_json_atomic(out / "summary.json", summary)
    write_text_atomic(out / "report.md", markdown(summary, records, commands, suite_path))
    plot(summary, out)
    print(f"wrote {out / 'report.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
