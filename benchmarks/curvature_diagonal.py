"""How cheaply can the Hessian diagonal of the trained small CNN (Fashion-MNIST) be estimated well enough to
rank parameters (SAPS)? Quality is Spearman's rank correlation; cost is seconds and sample passes next to one
training epoch measured in the same run (before and after the estimates, as the CPU is shared).

Estimators (``unlearnkit.curvature``):
* Hutchinson, mean of z ⊙ Hz over Rademacher probes z, on S_h samples, in chunks of 8 probes with their own
  seeds, so that P-probe estimates and disjoint 10P-probe estimates come from one run;
* the exact Gauss-Newton (GGN) diagonal, which for this ReLU/max-pool network *is* the exact Hessian
  diagonal (checked here entry by entry against Hessian-vector products with unit vectors, in float64);
* the sampled Fisher (one label drawn from the model's softmax per sample), an unbiased estimate of it.

Sample sets are disjoint blocks of one seeded permutation of the training set; the data reference is the
exact diagonal on ``--reference-samples`` samples, at least 10x every candidate set it is compared with.
Hutchinson's probe counts beyond those run are extrapolated from the measured per-entry probe variance
(Gaussian model, validated against the measured points).

    PYTHONPATH=src python benchmarks/curvature_diagonal.py            # ~15 min on 1 CPU thread
    PYTHONPATH=src python benchmarks/curvature_diagonal.py --quick    # smoke test of this script
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from unlearnkit import curvature as C
from unlearnkit.checkpoint import load_checkpoint
from unlearnkit.data import Source, augment_for
from unlearnkit.results import machine, versions, write_json_atomic, write_text_atomic
from unlearnkit.training import TrainConfig, metered, train_classifier

CHUNK = 8  # Hutchinson probes per call


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def spearman(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    if where is not None:
        a, b = a[where], b[where]
    return float(spearmanr(a, b)[0])


def cost_dict(cost) -> dict:
    return {"seconds": round(cost.seconds, 3), "forward": cost.forward, "backward": cost.backward}


def epoch_cost(model, data, manifest) -> dict:
    """One training epoch with the checkpoint's own recipe (augmentation included), on a copy of the model."""
    config = TrainConfig.from_dict(manifest["train"]).replace(epochs=1)
    net = copy.deepcopy(model)
    report = train_classifier(net, data.x_train, data.y_train, torch.arange(data.n_train), config,
                              augment=augment_for(data), seed=0, device="cpu")
    return cost_dict(report.cost)


def relative(cost: dict, epoch: dict) -> dict:
    passes = cost["forward"] + cost["backward"]
    return {**cost, "epochs_by_seconds": round(cost["seconds"] / epoch["seconds"], 4),
            "epochs_by_passes": round(passes / (epoch["forward"] + epoch["backward"]), 4)}


def flat(vector) -> np.ndarray:
    return C.flatten(vector).detach().double().numpy()


def identity_check(model, source: Source, per_parameter: int, seed: int) -> dict:
    """diag(H) by unit-vector HVPs against the exact GGN diagonal on random entries of every parameter (float64)."""
    net = copy.deepcopy(model).double()
    gen = torch.Generator().manual_seed(seed)
    mask = {}
    for name, p in net.named_parameters():
        chosen = torch.zeros(p.numel(), dtype=torch.bool)
        chosen[torch.randperm(p.numel(), generator=gen)[:per_parameter]] = True
        mask[name] = chosen.view_as(p)
    hessian = flat(C.exact_hessian_diagonal(net, source, mask=mask))
    ggn = flat(C.fisher_diagonal(net, source, kind="exact", mask=mask))
    keep = C.flatten(mask).numpy()
    h, g = hessian[keep], ggn[keep]
    return {"entries": int(keep.sum()), "samples": len(source), "dtype": "float64",
            "max_abs_difference": float(np.abs(h - g).max()), "max_abs_diagonal": float(np.abs(h).max()),
            "max_relative_difference": float((np.abs(h - g) / np.maximum(np.abs(h), 1e-300)).max())}


def simulate(truth: np.ndarray, variance: np.ndarray, probes: list[int], seed: int) -> list[dict]:
    """Spearman of a P-probe estimate (truth + N(0, variance/P)) against the truth and a 10P-probe estimate."""
    rng = np.random.default_rng(seed)
    sd = np.sqrt(np.maximum(variance, 0.0))
    rows = []
    for p in probes:
        est = truth + sd / np.sqrt(p) * rng.standard_normal(truth.shape)
        ref = truth + sd / np.sqrt(10 * p) * rng.standard_normal(truth.shape)
        rows.append({"probes": p, "vs_truth": spearman(est, truth), "vs_10x_probes": spearman(est, ref)})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True,
                        help="a trained small-cnn checkpoint on fashion-mnist (e.g. from `unlearnkit train`)")
    parser.add_argument("--out", default="benchmarks/results/curvature")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is steadier on a shared CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference-samples", type=int, default=2500)
    parser.add_argument("--exact-samples", default="50,100,250")
    parser.add_argument("--sampled-samples", default="50,100,250,500,1000,2500")
    parser.add_argument("--hutchinson-samples", type=int, default=128)
    parser.add_argument(
        "--hutchinson-probes", type=int, default=1056, help="a multiple of 8; P vs 10P needs 11P of them"
    )
    parser.add_argument("--identity-samples", type=int, default=64)
    parser.add_argument("--identity-entries", type=int, default=8, help="entries checked per parameter tensor")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to test this script")
    parser.add_argument("--report-only", action="store_true", help="rewrite README.md from results.json")
    args = parser.parse_args(argv)
    if args.report_only:
        import json

        out = Path(args.out)
        write_text_atomic(out / "README.md", report(json.loads((out / "results.json").read_text())))
        return 0
    if args.quick:
        args.reference_samples, args.exact_samples, args.sampled_samples = 100, "10", "10,20"
        args.hutchinson_samples, args.hutchinson_probes, args.identity_samples, args.identity_entries = 16, 88, 8, 2
    torch.set_num_threads(args.threads)
    command = "PYTHONPATH=src python " + " ".join(
        shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]
    )

    if not Path(args.checkpoint).exists():
        from unlearnkit.api import train
        log(f"no checkpoint at {args.checkpoint}: training small-cnn on fashion-mnist (seed 0)")
        train("fashion-mnist", "small-cnn", seed=0, device="cpu", out=args.checkpoint)
    checkpoint = load_checkpoint(args.checkpoint)
    model, manifest = checkpoint.model.eval(), checkpoint.manifest
    data = checkpoint.dataset()
    params = sum(p.numel() for p in model.parameters())
    perm = torch.randperm(data.n_train, generator=torch.Generator().manual_seed(args.seed))
    offset = 0

    def block_source(size: int) -> Source:
        """The next ``size`` samples of the permutation: every estimate sees its own, disjoint samples."""
        nonlocal offset
        if offset + size > data.n_train:
            raise SystemExit(f"the sample sets need {offset + size} samples, the training set has {data.n_train}")
        idx = perm[offset : offset + size]
        offset += size
        return Source(data.x_train, data.y_train, idx, shuffle=False)

    results: dict = {
        "benchmark": "curvature_diagonal",
        "command": command,
        "machine": machine(),
        "versions": versions(),
        "threads": torch.get_num_threads(),
        "checkpoint": str(args.checkpoint),
        "model": manifest["model"]["name"],
        "parameters": params,
        "checkpoint_test_acc": manifest.get("metrics", {}).get("test_acc"),
        "dataset": data.name,
        "n_train": data.n_train,
        "seed": args.seed,
        "quick": args.quick,
    }

    log("training epoch (before)")
    epoch_before = epoch_cost(model, data, manifest)
    log(f"  {epoch_before}")

    log("identity check: Hessian diagonal vs GGN diagonal")
    results["identity"] = identity_check(model, block_source(args.identity_samples), args.identity_entries, args.seed)
    log(f"  {results['identity']}")

    log(f"reference: exact GGN diagonal on {args.reference_samples} samples")
    with metered() as cost:
        reference = flat(C.fisher_diagonal(model, block_source(args.reference_samples), kind="exact"))
    reference_cost = cost_dict(cost)
    nonzero = reference != 0
    results["reference"] = {"samples": args.reference_samples, "cost": reference_cost,
                            "zero_fraction": round(float(1 - nonzero.mean()), 4)}

    rows, exact_blocks = [], {}
    for kind, sizes in (("exact", args.exact_samples), ("sampled", args.sampled_samples)):
        for size in [int(s) for s in sizes.split(",")]:
            source = block_source(size)
            with metered() as cost:
                estimate = flat(
                    C.fisher_diagonal(model, source, kind=kind, generator=torch.Generator().manual_seed(args.seed))
                )
            rows.append({"estimator": f"ggn-{kind}", "samples": size, "probes": None, "cost": cost_dict(cost),
                         "spearman_vs_reference": spearman(estimate, reference),
                         "spearman_vs_reference_nonzero": spearman(estimate, reference, nonzero)})
            if kind == "exact":
                exact_blocks[size] = (source, estimate)
            log(f"  {rows[-1]}")
    # sampled vs exact on the same samples (infinitely many label draws: stricter than 10x draws)
    for row in rows:
        if row["estimator"] == "ggn-sampled" and row["samples"] in exact_blocks:
            source, exact = exact_blocks[row["samples"]]
            sampled = flat(
                C.fisher_diagonal(model, source, kind="sampled", generator=torch.Generator().manual_seed(args.seed))
            )
            row["spearman_vs_exact_same_samples"] = spearman(sampled, exact)

    log(f"Hutchinson on {args.hutchinson_samples} samples, {args.hutchinson_probes} probes in chunks of {CHUNK}")
    hutch_source = block_source(args.hutchinson_samples)
    with metered() as cost:
        truth = flat(C.fisher_diagonal(model, hutch_source, kind="exact"))
    truth_cost = cost_dict(cost)
    chunks, chunk_costs = [], []
    for c in range(args.hutchinson_probes // CHUNK):
        with metered() as cost:
            chunks.append(
                flat(
                    C.hutchinson_diagonal(
                        model,
                        hutch_source,
                        probes=CHUNK,
                        batch_probes=CHUNK,
                        generator=torch.Generator().manual_seed(10_000 + c),
                    )
                ).astype(np.float32)
            )
        chunk_costs.append(cost_dict(cost))
        if c % 16 == 0:
            log(f"  chunk {c + 1}/{args.hutchinson_probes // CHUNK}: {chunk_costs[-1]['seconds']:.1f}s")
    stack = np.stack(chunks).astype(np.float64)
    per_probe = {k: sum(c[k] for c in chunk_costs) / args.hutchinson_probes for k in ("seconds", "forward", "backward")}
    hutch_rows = []
    for p in [8, 16, 32, 64, 128, 256, 512, 1024, args.hutchinson_probes]:
        if p > args.hutchinson_probes or p % CHUNK:
            continue
        estimate = stack[: p // CHUNK].mean(0)
        row = {"estimator": "hutchinson", "samples": args.hutchinson_samples, "probes": p,
               "cost": {k: round(per_probe[k] * p, 3) if k == "seconds" else int(per_probe[k] * p) for k in per_probe},
               "spearman_vs_exact_same_samples": spearman(estimate, truth),
               "spearman_vs_reference": spearman(estimate, reference)}
        if 11 * p <= args.hutchinson_probes:
            tenfold = stack[p // CHUNK : 11 * p // CHUNK].mean(0)
            row["spearman_vs_10x_probes"] = spearman(estimate, tenfold)
        hutch_rows.append(row)
        log(f"  {row}")
    variance = CHUNK * stack.var(0, ddof=1)  # per-probe variance of z_j (Hz)_j
    grid = sorted({int(round(v)) for v in np.logspace(0, 9, 28)} | {r["probes"] for r in hutch_rows})
    simulated = simulate(truth, variance, grid, args.seed)
    needed = next((r["probes"] for r in simulated if r["vs_10x_probes"] >= 0.9), None)
    needed_truth = next((r["probes"] for r in simulated if r["vs_truth"] >= 0.9), None)
    results["hutchinson"] = {
        "samples": args.hutchinson_samples, "probes_run": args.hutchinson_probes, "chunk": CHUNK,
        "per_probe_cost": per_probe, "truth_cost": truth_cost, "measured": hutch_rows, "simulated": simulated,
        "median_noise_to_signal": float(np.median(np.sqrt(variance[truth != 0]) / np.abs(truth[truth != 0]))),
        "probes_for_0.9_vs_10x_probes": needed, "probes_for_0.9_vs_truth": needed_truth,
    }

    log("training epoch (after)")
    epoch_after = epoch_cost(model, data, manifest)
    epoch = {k: (epoch_before[k] + epoch_after[k]) / 2 for k in epoch_before}
    results["epoch"] = {"before": epoch_before, "after": epoch_after, "mean": epoch}

    for row in rows + hutch_rows:
        row["relative_to_epoch"] = relative(row["cost"], epoch)
    results["reference"]["relative_to_epoch"] = relative(reference_cost, epoch)
    for key in ("probes_for_0.9_vs_10x_probes", "probes_for_0.9_vs_truth"):
        p = results["hutchinson"][key]
        if p is not None:
            projected = {k: per_probe[k] * p for k in per_probe}
            results["hutchinson"][key.replace("probes_for", "projected_cost_for")] = relative(
                {"seconds": projected["seconds"], "forward": projected["forward"], "backward": projected["backward"]},
                epoch,
            )
    results["ggn_rows"] = rows

    out = Path(args.out)
    write_json_atomic(out / ("results-quick.json" if args.quick else "results.json"), results)
    write_text_atomic(out / ("README-quick.md" if args.quick else "README.md"), report(results))
    log(f"wrote {out}")
    return 0


def report(r: dict) -> str:
    e = r["epoch"]
    lines = [
        "# Hessian diagonal of the trained small CNN: quality against cost",
        "",
        f"Model `{r['model']}` ({r['parameters']:,} parameters, test accuracy {r['checkpoint_test_acc']} %) from "
        f"`{r['checkpoint']}`, {r['dataset']} training set. Machine: {r['machine']['processor']}, "
        f"{r['threads']} torch thread(s); torch {r['versions']['torch']}. Command: `{r['command']}`.",
        "",
        f"One training epoch (same run, before/after): {e['before']['seconds']:.1f} s / {e['after']['seconds']:.1f} s, "
        f"{int(e['mean']['forward']):,} forward + {int(e['mean']['backward']):,} backward sample passes. Costs below "
        "are in "
        "epochs: by seconds and by sample passes (an HVP sample counts 1 forward + 2 backward; a Gauss-Newton "
        "sample 1 forward + K=10 backward, a sampled-Fisher sample 1 + 1).",
        "",
        "## diag(H) = diag(GGN) on this network",
        "",
        f"Checked on {r['identity']['entries']} random entries (every parameter tensor), {r['identity']['samples']} "
        f"samples, float64: max |diag H − diag GGN| = {r['identity']['max_abs_difference']:.2e} "
        f"(max |diag H| = {r['identity']['max_abs_diagonal']:.2e}, max relative difference "
        f"{r['identity']['max_relative_difference']:.2e}). The network is piecewise linear in each single "
        "parameter, so the Gauss-Newton diagonal is the exact Hessian diagonal.",
        "",
        f"## Data samples (reference: exact diagonal on {r['reference']['samples']:,} other samples, "
        f"{r['reference']['zero_fraction'] * 100:.1f} % of its entries exactly zero)",
        "",
        "| estimator | samples | reference ÷ samples | Spearman vs reference | same, nonzero entries | vs exact on "
        "same samples | seconds | epochs (s) | epochs (passes) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in r["ggn_rows"]:
        rel = row["relative_to_epoch"]
        same = row.get("spearman_vs_exact_same_samples")
        lines.append(f"| {row['estimator']} | {row['samples']} | {r['reference']['samples'] / row['samples']:.0f} | "
                     f"{row['spearman_vs_reference']:.3f} | "
                     f"{row['spearman_vs_reference_nonzero']:.3f} | {'' if same is None else f'{same:.3f}'} | "
                     f"{rel['seconds']:.1f} | {rel['epochs_by_seconds']:.3f} | {rel['epochs_by_passes']:.3f} |")
    h = r["hutchinson"]
    lines += [
        "",
        f"## Hutchinson probes ({h['samples']} samples; truth = exact diagonal on the same samples)",
        "",
        "| probes | Spearman vs 10x probes | vs truth | vs reference | seconds | epochs (s) | epochs (passes) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in h["measured"]:
        rel = row["relative_to_epoch"]
        ten = row.get("spearman_vs_10x_probes")
        lines.append(
            f"| {row['probes']} | {'' if ten is None else f'{ten:.3f}'} | {row['spearman_vs_exact_same_samples']:.3f} "
            "| "
            f"{row['spearman_vs_reference']:.3f} | {rel['seconds']:.1f} | {rel['epochs_by_seconds']:.3f} | "
            f"{rel['epochs_by_passes']:.3f} |"
        )
    lines += [
        "",
        f"Median per-entry noise-to-signal ratio of one probe: {h['median_noise_to_signal']:.0f}. Extrapolation from "
        "the measured per-entry probe variance (Gaussian model; measured vs simulated at the probe counts run: "
        + ", ".join(
            f"{m['probes']}: {m['spearman_vs_exact_same_samples']:.3f} vs "
            f"{next(s['vs_truth'] for s in h['simulated'] if s['probes'] == m['probes']):.3f}"
            for m in h["measured"]
        )
        + "):",
        "",
    ]
    for key, label in (("probes_for_0.9_vs_10x_probes", "Spearman ≥ 0.9 against a 10x-probe estimate"),
                       ("probes_for_0.9_vs_truth", "Spearman ≥ 0.9 against the exact diagonal")):
        p = h[key]
        if p is None:
            lines.append(f"- {label}: not reached within {h['simulated'][-1]['probes']:,} probes.")
        else:
            c = h[key.replace("probes_for", "projected_cost_for")]
            lines.append(
                f"- {label}: ≈ {p:,} probes on {h['samples']} samples ≈ {c['epochs_by_seconds']:.1f} epochs by "
                f"seconds, {c['epochs_by_passes']:.1f} by passes."
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
