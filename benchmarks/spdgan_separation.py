"""Does the SPD-GAN unlearning degree separate the original model from the retrained one better than plain
forget-set accuracy does? (issue 6; SPD-GAN of Zuo et al., TKDE 2025)

For each request and seed, the original θ_o and the retrained θ_r (the ones the `perturb` suite uses, from the same
model cache) are measured on the forget set D_f and on SPD-GAN-perturbed copies G(D_f), for generators trained at
several budgets ε, for one generator trained without the diversity term (does it collapse to the identity?), and for
a control without a GAN: uniform noise with the same mean |δ| as the default generator's outputs.

Separation of a measurement M between the two models, over the seeds:
  * the gap mean_s(M_o − M_r) with its spread (std over seeds of the per-seed gap); for accuracy on G(D_f) the gap is
    the retrained model's unlearning degree UD_acc_retrain, for accuracy on D_f it is the forget-accuracy gap;
  * Cohen's d = (mean M_o − mean M_r) / sqrt((sd_o² + sd_r²) / 2): the gap in units of the seed-to-seed spread of
    the measurement itself (how many "seed noises" apart the two models sit);
  * the paired score mean(Δ)/sd(Δ) of the per-seed gaps Δ_s (a t-like statistic without the √n).
Accuracy measurements are in %, losses are mean cross-entropies.

Usage: python benchmarks/spdgan_separation.py [--cache runs/perturb-cache] [--seeds 0,1,2] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from statistics import mean, stdev

import torch
import torch.nn.functional as F

from unlearnkit.bench.runner import ModelCache
from unlearnkit.bench.suite import load_suite
from unlearnkit.checkpoint import load_checkpoint
from unlearnkit.data import load_dataset
from unlearnkit.requests import build_request
from unlearnkit.results import machine, versions, write_json_atomic, write_text_atomic
from unlearnkit.spdgan import load_spdgan
from unlearnkit.training import predict_logits


def measure(model, images, labels) -> dict[str, float]:
    logits = predict_logits(model, images)
    return {"acc": 100.0 * float((logits.argmax(1) == labels).float().mean()),
            "loss": float(F.cross_entropy(logits.double(), labels))}


def separation(o: list[float], r: list[float]) -> dict[str, float]:
    gaps = [a - b for a, b in zip(o, r)]
    sd_o, sd_r = (stdev(o), stdev(r)) if len(o) > 1 else (0.0, 0.0)
    pooled = math.sqrt((sd_o ** 2 + sd_r ** 2) / 2)
    sd_gap = stdev(gaps) if len(gaps) > 1 else 0.0
    return {"original_mean": mean(o), "original_sd": sd_o, "retrained_mean": mean(r), "retrained_sd": sd_r,
            "gap_mean": mean(gaps), "gap_sd": sd_gap,
            "cohens_d": mean(gaps) / pooled if pooled > 0 else float("inf"),
            "paired_score": mean(gaps) / sd_gap if sd_gap > 0 else float("inf")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--suite", default="perturb", help="the suite whose data, model, requests and SPD-GAN options are used"
    )
    parser.add_argument("--cache", default="runs/perturb-cache")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--epsilons", default="0.03,0.1,0.3", help="SPD-GAN budgets to compare (the suite's is always included)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/spdgan")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    log = lambda message: print(time.strftime("%H:%M:%S"), message, file=sys.stderr, flush=True)

    suite = load_suite(args.suite)
    data = load_dataset(suite.dataset)
    cache = ModelCache(Path(args.cache))
    seeds = [int(s) for s in args.seeds.split(",")]
    base = dict(suite.spdgan or {})
    default_eps = float(base.get("epsilon", 0.1))
    epsilons = sorted({float(e) for e in args.epsilons.split(",")} | {default_eps})
    variants = {f"eps={e:g}": {**base, "epsilon": e} for e in epsilons}
    variants[f"eps={default_eps:g},no-diversity"] = {**base, "epsilon": default_eps, "diversity_weight": 0.0}
    default_label = f"eps={default_eps:g}"

    rows = []
    samples = {}
    for spec in suite.requests:
        for seed in seeds:
            request = build_request(spec, data, seed)
            original_path, original_key = cache.original(suite, data, seed, request, "cpu", log)
            retrained_path = cache.retrained(original_path, original_key, request, data, "cpu", log)
            original, retrained = load_checkpoint(original_path).model, load_checkpoint(retrained_path).model
            x, y = request.training_data(data)
            clean, labels = x[request.forget], y[request.forget]
            row = {
                "request": spec,
                "seed": seed,
                "n_forget": int(request.forget.numel()),
                "clean": {"original": measure(original, clean, labels), "retrained": measure(retrained, clean, labels)},
                "perturbed": {},
            }
            for label, options in variants.items():
                path = cache.spdgan(original_path, original_key, request, data, options, "cpu", log)
                gan = load_spdgan(path)
                images = gan.perturb_forget(data, request, original=original)
                delta = (images - clean).abs()
                row["perturbed"][label] = {
                    "original": measure(original, images, labels), "retrained": measure(retrained, images, labels),
                    "mean_abs_delta": float(delta.mean()), "max_abs_delta": float(delta.max()),
                    "train_seconds": gan.manifest["cost"]["seconds"], "final_epoch": gan.manifest["final"],
                }
                if label == default_label:
                    # Control: no GAN, i.i.d. uniform noise with the same mean |δ| (uniform on [−2m, 2m] has mean |δ|
                    # m).
                    m = float(delta.mean())
                    noise = (torch.rand(clean.shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1) * 2 * m
                    noisy = (clean + noise).clamp(0, 1)
                    row["perturbed"]["uniform-noise control"] = {
                        "original": measure(original, noisy, labels),
                        "retrained": measure(retrained, noisy, labels),
                        "mean_abs_delta": float((noisy - clean).abs().mean()),
                        "max_abs_delta": float((noisy - clean).abs().max()),
                    }
                    if seed == seeds[0]:
                        samples[spec] = (clean[:8], images[:8])
            rows.append(row)
            log(
                f"{spec} seed {seed}: clean o {row['clean']['original']['acc']:.2f} r "
                f"{row['clean']['retrained']['acc']:.2f}; "
                + "; ".join(
                    f"{k} o {v['original']['acc']:.2f} r {v['retrained']['acc']:.2f}"
                    for k, v in row["perturbed"].items()
                )
            )

    summary = {}
    for spec in suite.requests:
        per = [r for r in rows if r["request"] == spec]
        entries = {"forget set D_f": [r["clean"] for r in per]}
        for label in list(per[0]["perturbed"]):
            entries[f"G(D_f), {label}"] = [r["perturbed"][label] for r in per]
        summary[spec] = {
            name: {metric: separation([e["original"][metric] for e in values], [e["retrained"][metric] for e in values])
                   for metric in ("acc", "loss")}
            | {"mean_abs_delta": mean(e.get("mean_abs_delta", 0.0) for e in values)}
            for name, values in entries.items()
        }
    command = "python " + " ".join(sys.argv)
    out = Path(args.out)
    write_json_atomic(out / "separation.json", {
        "suite": suite.name, "dataset": data.name, "model": suite.model, "seeds": seeds, "variants": variants,
        "rows": rows, "summary": summary, "machine": machine(), "versions": versions(), "command": command,
        "seconds": round(time.perf_counter() - started, 1)})
    write_text_atomic(out / "separation.md", _markdown(summary, suite, data, seeds, command))
    _plots(summary, samples, out / "plots")
    print(_markdown(summary, suite, data, seeds, command))


def _markdown(summary, suite, data, seeds, command) -> str:
    m = machine()
    lines = [
        f"# SPD-GAN separation: {data.name}, {suite.model}, seeds {', '.join(map(str, seeds))}",
        "",
        f"Machine: {m['processor']}, {m['cpu_count']} CPUs, torch threads {m['torch_threads']}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in versions().items())
        + f". Command: `{command}`.",
        "",
        "Accuracy (%) / loss of the original (o) and retrained (r) models, mean ± std over seeds; gap = o − r "
        "(for loss r − o) per seed, mean ± std; Cohen's d = mean gap / pooled seed std; paired = mean gap / std of "
        "the per-seed gaps. On G(D_f) the accuracy gap is the retrained model's unlearning degree UD_acc_retrain.",
        "",
    ]
    for spec, entries in summary.items():
        lines += [
            f"## {spec}",
            "",
            "| measured on | mean \\|δ\\| | acc o | acc r | acc gap (UD) | d (acc) | paired (acc) | loss o | loss r | "
            "loss gap | d (loss) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, s in entries.items():
            a, l = s["acc"], s["loss"]
            lines.append(
                f"| {name} | {s['mean_abs_delta']:.4f} | {a['original_mean']:.2f} ± {a['original_sd']:.2f} | "
                f"{a['retrained_mean']:.2f} ± {a['retrained_sd']:.2f} | {a['gap_mean']:.2f} ± {a['gap_sd']:.2f} | "
                f"{a['cohens_d']:.1f} | {a['paired_score']:.1f} | {l['original_mean']:.3f} ± {l['original_sd']:.3f} | "
                f"{l['retrained_mean']:.3f} ± {l['retrained_sd']:.3f} | {-l['gap_mean']:.3f} ± {l['gap_sd']:.3f} | "
                f"{-l['cohens_d']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def _plots(summary, samples, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    specs = list(summary)
    fig, axes = plt.subplots(1, len(specs), figsize=(7 * len(specs), 4.5), squeeze=False)
    for ax, spec in zip(axes[0], specs):
        names = list(summary[spec])
        gaps = [summary[spec][n]["acc"]["gap_mean"] for n in names]
        errs = [summary[spec][n]["acc"]["gap_sd"] for n in names]
        colours = [
            "tab:grey" if n.startswith("forget") else ("tab:orange" if "control" in n else "tab:blue") for n in names
        ]
        ax.bar(range(len(names)), gaps, yerr=errs, capsize=3, color=colours)
        for i, n in enumerate(names):
            ax.annotate(
                f"d={summary[spec][n]['acc']['cohens_d']:.1f}",
                (i, gaps[i]),
                ha="center",
                va="bottom",
                fontsize=7,
                xytext=(0, 4),
                textcoords="offset points",
            )
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([n.replace("G(D_f), ", "G: ") for n in names], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("accuracy of original − retrained (points)")
        ax.set_title(spec)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(folder / "separation.png", dpi=110)
    plt.close(fig)
    for spec, (clean, perturbed) in samples.items():
        fig, axes = plt.subplots(3, clean.shape[0], figsize=(1.4 * clean.shape[0], 4.4))
        for i in range(clean.shape[0]):
            for row, (img, cmap) in enumerate(((clean[i], "gray"), (perturbed[i], "gray"),
                                               ((perturbed[i] - clean[i]).abs(), "magma"))):
                axes[row, i].imshow(img.permute(1, 2, 0).squeeze(-1).numpy(), cmap=cmap,
                                    vmin=0, vmax=1 if row < 2 else None)
                axes[row, i].axis("off")
        axes[0, 0].set_title("x", fontsize=8, loc="left")
        axes[1, 0].set_title("G(x, z)", fontsize=8, loc="left")
        axes[2, 0].set_title("|δ| (own scale)", fontsize=8, loc="left")
        fig.tight_layout()
        fig.savefig(folder / f"samples_{spec.replace(':', '_')}.png", dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    main()
