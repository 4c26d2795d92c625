"""What moved between two runs of a suite: the records of OLD and NEW (results folders holding ``records/``), matched by
request, variant and seed, compared metric by metric — bitwise-equal records, and for the others the change of each
headline metric (and of the variant's mean over seeds).

Usage:
    python benchmarks/compare_records.py OLD NEW [--out FILE.md] [--metrics UA,RA,TA,MIA,avg_gap]
Writes Markdown to --out and a JSON summary beside it (and prints the Markdown); exits 0 whatever moved
(it is a report, not a test).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from statistics import mean

from unlearnkit.bench import load_records
from unlearnkit.results import machine, versions, write_json_atomic, write_text_atomic

DEFAULT_METRICS = "UA,RA,TA,MIA,avg_gap"


def keyed(folder: Path) -> dict[tuple[str, str, int], dict]:
    return {(r["request"], r["variant"], r["seed"]): r for r in load_records(folder)}


def compare(old: dict, new: dict, metrics: list[str]) -> tuple[list[str], dict]:
    both = sorted(set(old) & set(new))
    lines = ["| request | variant | seed | " + " | ".join(f"{m} old → new" for m in metrics) + " | equal |",
             "| --- | --- | --- | " + "--- | " * len(metrics) + "--- |"]
    moved: dict = defaultdict(lambda: defaultdict(list))
    equal = 0
    for key in both:
        a, b = old[key], new[key]
        same = all(a.get(m) == b.get(m) for m in metrics)
        equal += same
        cells = []
        for m in metrics:
            x, y = a.get(m), b.get(m)
            if isinstance(x, (int, float)) and isinstance(y, (int, float)):
                cells.append(f"{x:.2f} → {y:.2f}")
                moved[(key[0], key[1])][m].append(y - x)
            else:
                cells.append(f"{x} → {y}")
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + f" | {'yes' if same else 'no'} |")
    summary = {"matched": len(both), "equal": equal, "only_old": sorted(map(str, set(old) - set(new))),
               "only_new": sorted(map(str, set(new) - set(old))),
               "mean_change": {f"{r} {v}": {m: mean(d) for m, d in ms.items()} for (r, v), ms in moved.items()}}
    return lines, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--metrics", default=DEFAULT_METRICS)
    args = parser.parse_args()
    metrics = args.metrics.split(",")
    lines, summary = compare(keyed(args.old), keyed(args.new), metrics)
    largest = sorted(((max(abs(x) for x in ms.values()), name) for name, ms in summary["mean_change"].items()),
                     reverse=True)[:5]
    text = "\n".join([
        f"# Records compared: `{args.old}` → `{args.new}`", "",
        f"Matched records: {summary['matched']}; equal in {', '.join(metrics)}: {summary['equal']}. "
        f"Only in the old run: {len(summary['only_old'])}; only in the new: {len(summary['only_new'])}.", "",
        "Largest mean change over seeds (absolute, in the metric's units): "
        + "; ".join(f"{name} {value:.2f}" for value, name in largest) + ".", "",
        *lines, "",
    ])
    if args.out:
        write_text_atomic(args.out, text)
        write_json_atomic(args.out.with_suffix(".json"), {
            "old": str(args.old), "new": str(args.new), "metrics": metrics, **summary,
            "command": "python benchmarks/compare_records.py " + " ".join(sys.argv[1:]),
            "machine": machine(), "versions": versions()})
    print(text)


if __name__ == "__main__":
    main()
