"""Two measurements of the evaluation itself, written to benchmarks/results/evaluation/:

1. Wall time of ``evaluate()`` on all of Fashion-MNIST (60k train + 10k test images, every metric that needs no
   reference model), median of repeats, against the 20-second target.
2. MIA-efficacy with the default capped shadow sets (3000 points per side) versus the field's full convention
   (|T| = 10,000 per side), on original and retrained models of both requests.

Usage: python benchmarks/evaluation_cost.py --original CKPT --retrained-random CKPT --retrained-class CKPT
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

import unlearnkit as uk
from unlearnkit._util import machine, versions, write_json_atomic, write_text_atomic
from unlearnkit.evaluation import evaluate, model_outputs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--original", required=True)
    parser.add_argument("--retrained-random", required=True, help="retrained without random:0.1 (seed 0)")
    parser.add_argument("--retrained-class", required=True, help="retrained without class:0 (seed 0)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/evaluation")
    args = parser.parse_args()

    original = uk.load_checkpoint(args.original)
    data = original.dataset()
    timing = []
    request = uk.build_request("random:0.1", data, 0)
    for _ in range(args.repeats):
        start = time.perf_counter()
        evaluate(original.model, request, data)
        timing.append(time.perf_counter() - start)
    load = os.getloadavg()

    rows = []
    for spec, retrained_path in (("random:0.1", args.retrained_random), ("class:0", args.retrained_class)):
        request = uk.build_request(spec, data, 0)
        for name, ckpt in (("original", original), ("retrained", uk.load_checkpoint(retrained_path))):
            outputs = model_outputs(ckpt.model, data, request)
            capped = evaluate(outputs, request, data, mia_shadow_size=3000).metrics
            full = evaluate(outputs, request, data, mia_shadow_size=None).metrics
            rows.append({"request": spec, "model": name,
                         **{f"{k}_capped": capped[k] for k in ("MIA", "MIA_entropy", "MIA_m_entropy")},
                         **{f"{k}_full": full[k] for k in ("MIA", "MIA_entropy", "MIA_m_entropy")}})
    result = {
        "command": "python " + " ".join(sys.argv), "machine": machine(), "versions": versions(),
        "load_average_during_timing": load, "evaluate_seconds": timing,
        "evaluate_median_s": statistics.median(timing), "target_s": 20.0, "mia": rows,
    }
    out = Path(args.out)
    write_json_atomic(out / "evaluation_cost.json", result)
    lines = [
        "# Cost and fidelity of the evaluation", "",
        f"Command: `{result['command']}`. Machine: {machine()['processor']}, {machine()['cpu_count']} CPUs, "
        f"torch threads {torch.get_num_threads()}; load average during timing {load[0]:.2f}.", "",
        f"`evaluate()` on all of Fashion-MNIST (70,000 images, every metric that needs no reference): "
        f"median {result['evaluate_median_s']:.1f} s over {args.repeats} runs ({', '.join(f'{t:.1f}' for t in timing)}); target ≤ 20 s.", "",
        "MIA-efficacy (%) with capped shadow sets (3,000 per side, the default) and the full convention (10,000):", "",
        "| request | model | MIA capped | MIA full | entropy capped | entropy full | m-entropy capped | m-entropy full |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['request']} | {r['model']} | {r['MIA_capped']:.2f} | {r['MIA_full']:.2f} | "
                     f"{r['MIA_entropy_capped']:.2f} | {r['MIA_entropy_full']:.2f} | {r['MIA_m_entropy_capped']:.2f} | {r['MIA_m_entropy_full']:.2f} |")
    write_text_atomic(out / "README.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
