"""Transfer after unlearning (an application Jia et al., NeurIPS 2023, report, at this machine's scale): does a model
that unlearned a
source class transfer better or worse to a downstream task than the original, and than the model retrained
without that class — dense and 95 % sparse?

Source: the prune-sweep suite's models (Fashion-MNIST 10,000/5,000 subset, small CNN, request ``class:0``,
T-shirt/top): the original, the retrained model and the unlearned models of each method, at sparsity 0 (dense)
and 0.95 (OMP + 2-epoch fine-tune, Retrain under the same mask). Originals and retrained models come from the
sweep's cache (trained there if missing); the unlearning methods are rerun here at their defaults (the runner
keeps records, not models), with the same seeds, so they are the sweep's models.

Downstream: scikit-learn's handwritten digits (1,797 8x8 images, the only other image data installed), upsampled
bilinearly to 28x28; a seeded stratified ``--shots`` per class to train on, the rest (about 1,500) to test on.
  * linear probe: the frozen source network's penultimate features (the input of ``model.classifier``),
    standardised, and an L2-regularised multinomial logistic regression (scikit-learn, C = 1) — convex, so the
    result depends on the features only;
  * full fine-tune: a new seeded linear head, then every weight trained with the one training loop
    (``--ft-epochs`` epochs of SGD, lr ``--ft-lr``, momentum 0.9, weight decay 5e-4, cosine, batch 32); pruned
    sources keep their masks (sparse fine-tuning), the new head is dense;
  * baselines: a randomly initialised network (probe and training from scratch with the same recipe).

Usage: python benchmarks/transfer.py --seeds 0,1,2 --sparsities 0,0.95
Writes benchmarks/results/transfer/{results.json,report.md,plots/transfer.png}.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from statistics import mean, stdev

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from unlearnkit.bench import load_suite, with_prune
from unlearnkit.bench.runner import ModelCache
from unlearnkit.checkpoint import load_checkpoint
from unlearnkit.data import load_dataset
from unlearnkit.methods import unlearn
from unlearnkit.models import last_layer, new_model
from unlearnkit.requests import build_request
from unlearnkit.results import machine, save_figure, seed_everything, versions, write_json_atomic, write_text_atomic
from unlearnkit.sparsity import global_sparsity
from unlearnkit.training import TrainConfig, accuracy, metered, predict_logits, train_classifier

NAMES = {"scratch": "Random init (no source)", "original": "Original", "retrain": "Retrain (without class 0)",
         "finetune": "FT", "grad_ascent": "GA", "fisher": "FF", "influence": "IU", "l1_sparse": "ℓ1-sparse"}


def downstream_data(image_size: int, shots: int, seed: int):
    """Digits upsampled to the source's image size; ``shots`` per class to train on (seeded), the rest to test."""
    digits = load_dataset("digits")
    x = torch.cat([digits.x_train, digits.x_test])
    y = torch.cat([digits.y_train, digits.y_test])
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False).clamp(0, 1)
    gen = torch.Generator().manual_seed(1000 + seed)
    train = torch.cat([torch.nonzero(y == c).flatten()[torch.randperm(int((y == c).sum()), generator=gen)[:shots]]
                       for c in range(10)])
    test = torch.ones(len(y), dtype=torch.bool)
    test[train] = False
    return x, y, torch.sort(train).values, torch.nonzero(test).flatten()


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Penultimate activations: the input of the model's classifier."""
    captured = []
    head = last_layer(model)
    handle = head.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].detach().cpu()))
    try:
        predict_logits(model, x, device="cpu")
    finally:
        handle.remove()
    return torch.cat(captured)


def linear_probe(model: nn.Module, x, y, train, test) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    feats = features(model.eval(), x).double().numpy()
    scaler = StandardScaler().fit(feats[train])
    clf = LogisticRegression(C=1.0, max_iter=5000).fit(scaler.transform(feats[train]), y[train].numpy())
    return 100.0 * float((clf.predict(scaler.transform(feats[test])) == y[test].numpy()).mean())


def full_finetune(model: nn.Module, x, y, train, test, *, epochs: int, lr: float, seed: int) -> float:
    model = copy.deepcopy(model)
    head = last_layer(model)
    seed_everything(seed)
    model.classifier = nn.Linear(head.in_features, 10)
    config = TrainConfig(epochs=epochs, batch_size=32, lr=lr, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                         augment=False)
    train_classifier(model, x, y, train, config, seed=seed, device="cpu")
    return accuracy(predict_logits(model, x[test], device="cpu"), y[test])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="benchmarks/suites/prune-sweep.toml")
    parser.add_argument("--request", default="class:0")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--sparsities", default="0,0.95")
    parser.add_argument("--methods", default="finetune,grad_ascent,l1_sparse")
    parser.add_argument("--shots", type=int, default=30, help="downstream training images per class")
    parser.add_argument("--ft-epochs", type=int, default=30)
    parser.add_argument("--ft-lr", type=float, default=0.01)
    parser.add_argument("--cache", default="runs/prune-sweep-cache")
    parser.add_argument("--out", default="benchmarks/results/transfer")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    command = "python " + " ".join(sys.argv)
    path = out / "results.json"
    saved = json.loads(path.read_text()) if path.exists() else {"rows": []}
    rows = saved["rows"]
    done = {(r["seed"], r["sparsity"], r["source"]) for r in rows}
    started = time.time()
    if not args.report_only:
        suite = load_suite(args.suite)
        data = load_dataset(suite.dataset)
        cache = ModelCache(Path(args.cache))
        log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
        for seed in [int(s) for s in args.seeds.split(",")]:
            x, y, train, test = downstream_data(data.image_size, args.shots, seed)
            request = build_request(args.request, data, seed)
            if (seed, 0.0, "scratch") not in done:
                scratch, _ = new_model(suite.model, data, 10_000 + seed)
                rows.append(
                    {
                        "seed": seed,
                        "sparsity": 0.0,
                        "source": "scratch",
                        "probe": linear_probe(scratch, x, y, train, test),
                        "finetune": full_finetune(
                            scratch, x, y, train, test, epochs=args.ft_epochs, lr=args.ft_lr, seed=seed
                        ),
                    }
                )
                log(f"seed {seed} scratch: {rows[-1]}")
            for sparsity in [float(s) for s in args.sparsities.split(",")]:
                point = with_prune(suite, None if sparsity == 0 else f"omp:{sparsity:g}")
                original_path, key = cache.original(point, data, seed, request, "cpu", log)
                retrained_path = cache.retrained(original_path, key, request, data, "cpu", log, point.retrain_options())
                original = load_checkpoint(original_path)
                sources = {
                    "original": lambda: (original.model, None),
                    "retrain": lambda: (load_checkpoint(retrained_path).model, None),
                }
                for method in args.methods.split(","):
                    sources[method] = (lambda m: lambda: _unlearned(original, request, data, m, seed))(method)
                for name, build in sources.items():
                    if (seed, sparsity, name) in done:
                        continue
                    model, cost = build()
                    with metered() as spent:
                        probe = linear_probe(model, x, y, train, test)
                        tuned = full_finetune(model, x, y, train, test, epochs=args.ft_epochs, lr=args.ft_lr, seed=seed)
                    rows.append(
                        {
                            "seed": seed,
                            "sparsity": sparsity,
                            "source": name,
                            "probe": probe,
                            "finetune": tuned,
                            "source_sparsity": round(global_sparsity(model), 6),
                            "source_forgotten_class_acc": _class_acc(model, data, 0),
                            "source_test_acc": accuracy(predict_logits(model, data.x_test, device="cpu"), data.y_test),
                            "unlearn_cost": cost,
                            "downstream_seconds": round(spent.seconds, 2),
                        }
                    )
                    log(f"seed {seed} sparsity {sparsity:g} {name:<12} probe {probe:6.2f} fine-tune {tuned:6.2f}")
                    write_json_atomic(path, {**saved, "rows": rows})
    if args.report_only and "command" in saved:  # a report rewrite keeps the provenance of the run that measured
        run = {k: saved[k] for k in ("machine", "versions", "command", "seconds", "settings") if k in saved}
    else:
        run = {"machine": machine(), "versions": versions(), "command": command,
               "seconds": round(time.time() - started, 1), "settings": dict(vars(args))}
    report(out, rows, run)


def _unlearned(original, request, data, method, seed):
    result = unlearn(original, request, data, method, seed=seed, device="cpu")
    return result.model, result.cost.to_dict()


def _class_acc(model, data, cls: int) -> float:
    keep = data.y_test == cls
    return accuracy(predict_logits(model, data.x_test[keep], device="cpu"), data.y_test[keep])


def report(out: Path, rows: list[dict], run: dict) -> None:
    args = argparse.Namespace(**run["settings"])  # the settings the rows were measured with
    grouped = defaultdict(lambda: defaultdict(list))
    for r in rows:
        grouped[(r["sparsity"], r["source"])]["probe"].append(r["probe"])
        grouped[(r["sparsity"], r["source"])]["finetune"].append(r["finetune"])
        for key in ("source_test_acc", "source_forgotten_class_acc"):
            if key in r:
                grouped[(r["sparsity"], r["source"])][key].append(r[key])

    def cell(values):
        if not values:
            return "–"
        return f"{mean(values):.2f} ± {stdev(values) if len(values) > 1 else 0.0:.2f}" + (
            "" if len(values) == 3 else f" (n={len(values)})"
        )

    sparsities = sorted({r["sparsity"] for r in rows if r["source"] != "scratch"})
    order = ["original", "retrain", "finetune", "grad_ascent", "fisher", "influence", "l1_sparse"]
    sources = [s for s in order if any(r["source"] == s for r in rows)]
    lines = [
        "# Transfer after unlearning: Fashion-MNIST source (class 0 unlearned) → digits",
        "",
        f"Machine: {run['machine']['processor']}, {run['machine']['cpu_count']} CPUs (shared), torch threads "
        f"{run['settings'].get('threads', '?')}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in run["versions"].items())
        + ".",
        f"Command: `{run['command']}`.",
        "",
        f"Source models: suite `{args.suite}` (fashion-mnist[10000,5000], small CNN), request `{args.request}`; "
        "dense and OMP-pruned originals, Retrain (same mask), and each method at its default. Downstream: "
        f"scikit-learn digits upsampled to 28x28, {args.shots} training images per class (seeded per seed), the "
        f"other ~{1797 - 10 * args.shots} images as test. Linear probe: logistic regression (C = 1) on standardised "
        f"penultimate features. Full fine-tune: new head, all weights, {args.ft_epochs} epochs, SGD lr {args.ft_lr}, "
        "cosine, batch 32 (masks kept). Cells: downstream test accuracy (%), mean ± std over seeds.",
        "",
        "| source model | sparsity | linear probe | full fine-tune | source TA (all classes) "
        "| source acc. on class 0 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    s = grouped[(0.0, "scratch")]
    if s["probe"]:
        lines.append(f"| {NAMES['scratch']} | – | {cell(s['probe'])} | {cell(s['finetune'])} | – | – |")
    for sparsity in sparsities:
        for source in sources:
            g = grouped[(sparsity, source)]
            if not g["probe"]:
                continue
            lines.append(f"| {NAMES.get(source, source)} | {sparsity:g} | {cell(g['probe'])} | {cell(g['finetune'])} | "
                         f"{cell(g['source_test_acc'])} | {cell(g['source_forgotten_class_acc'])} |")
    lines += ["", "Paired differences to the original of the same seed and sparsity (downstream accuracy, points):", "",
              "| source model | sparsity | Δ linear probe | Δ full fine-tune |", "| --- | --- | --- | --- |"]
    by_key = {(r["seed"], r["sparsity"], r["source"]): r for r in rows}
    for sparsity in sparsities:
        for source in sources:
            if source == "original":
                continue
            deltas = defaultdict(list)
            for (seed, sp, src), r in by_key.items():
                base = by_key.get((seed, sp, "original"))
                if sp == sparsity and src == source and base:
                    deltas["probe"].append(r["probe"] - base["probe"])
                    deltas["finetune"].append(r["finetune"] - base["finetune"])
            if deltas["probe"]:
                lines.append(
                    f"| {NAMES.get(source, source)} | {sparsity:g} | {cell(deltas['probe'])} | "
                    f"{cell(deltas['finetune'])} |"
                )
    lines += ["", "![transfer](plots/transfer.png)", ""]
    write_text_atomic(out / "report.md", "\n".join(lines))
    write_json_atomic(out / "results.json", {**run, "rows": rows})
    _plot(grouped, sparsities, sources, out / "plots" / "transfer.png")
    print("\n".join(lines))


def _plot(grouped, sparsities, sources, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(1, len(sparsities))
    for ax, key, title in zip(axes, ("probe", "finetune"), ("linear probe", "full fine-tune")):
        for i, sparsity in enumerate(sparsities):
            means = [mean(grouped[(sparsity, s)][key]) if grouped[(sparsity, s)][key] else np.nan for s in sources]
            stds = [stdev(grouped[(sparsity, s)][key]) if len(grouped[(sparsity, s)][key]) > 1 else 0 for s in sources]
            ax.bar(
                np.arange(len(sources)) + i * width, means, width, yerr=stds, capsize=3, label=f"sparsity {sparsity:g}"
            )
        scratch = grouped[(0.0, "scratch")][key]
        if scratch:
            ax.axhline(mean(scratch), color="grey", ls=":", label="random init")
        ax.set_xticks(np.arange(len(sources)) + width * (len(sparsities) - 1) / 2, [NAMES.get(s, s) for s in sources],
                      rotation=20, fontsize=8)
        ax.set_title(f"digits, {title}")
        ax.set_ylabel("downstream test accuracy (%)")
        lows = [mean(v[key]) for v in grouped.values() if v[key]]
        ax.set_ylim(max(0, min(lows) - 5), 100)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
