"""What pruning costs in accuracy on Fashion-MNIST (small CNN), and what a short fine-tune buys back.

1. OMP of the trained dense checkpoint at sparsities 0.5 / 0.8 / 0.9 / 0.95 / 0.99 (global over conv and
   linear weights): test accuracy right after pruning, then after a short fine-tune (the `prune` command's
   default: the recipe at a fifth of its learning rate, cosine), with the fine-tune's seconds and sample
   passes.
2. At 0.95, the fine-tune at the recipe's full learning rate, for comparison with the default.
3. SynFlow at initialisation (the dense checkpoint's own seed-0 initialisation) to 0.95, then the full
   10-epoch recipe: the data-free prune-at-init alternative, and a full training run measured in the same
   process as the fine-tunes, so that the cost ratio is side by side.
4. Optionally (--with-rewind), the seed-000 OMP recipe at 0.95: prune once, rewind to epoch 1, retrain.

Usage: python benchmarks/pruning.py --checkpoint runs/fmnist [--finetune-epochs 2] [--threads 1]
The checkpoint is only read.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch

import unlearnkit as uk
from unlearnkit import sparsity as sp
from unlearnkit.results import machine, versions, write_json_atomic, write_text_atomic
from unlearnkit.training import TrainConfig, metered

SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.99)


def layer_table(model, names):
    return {n: r["sparsity"] for n, r in sp.layer_sparsity(model, names).items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True, help="trained dense checkpoint (read only)")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared CPU)")
    parser.add_argument(
        "--with-rewind", action="store_true", help="also run the prune-rewind-retrain OMP recipe at 0.95"
    )
    parser.add_argument("--out", default="benchmarks/results/pruning")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    checkpoint = uk.load_checkpoint(args.checkpoint)
    data = checkpoint.dataset()
    recipe = TrainConfig.from_dict(checkpoint.manifest["train"])
    trainer = sp.ClassifierTrainer(data, recipe, seed=0, device="cpu", echo=True)
    dense_acc = trainer.test_accuracy(checkpoint.model)
    names = sp.prunable_names(checkpoint.model)
    n_prunable = sum(p.numel() for n, p in checkpoint.model.named_parameters() if n in names)
    finetune_lr = recipe.lr * 0.2
    model_name = checkpoint.manifest["model"]["name"]
    model_options = {k: v for k, v in checkpoint.manifest["model"]["args"].items() if k not in data.model_args()}
    seed = int(checkpoint.manifest.get("seed", 0))
    print(f"dense: test {dense_acc:.2f} %, {n_prunable} prunable weights", file=sys.stderr, flush=True)

    omp_rows = []
    for sparsity in SPARSITIES:
        model = copy.deepcopy(checkpoint.model)
        result = sp.prune(model, f"omp:{sparsity}")
        pruned_acc = trainer.test_accuracy(model)
        print(f"omp {sparsity}: test {pruned_acc:.2f} % after pruning; fine-tuning", file=sys.stderr, flush=True)
        with metered() as cost:
            report = trainer(model, None, recipe.replace(epochs=args.finetune_epochs, lr=finetune_lr))
        omp_rows.append({
            "sparsity": sparsity,
            "achieved": round(sp.global_sparsity(model, names), 6),
            "layers": layer_table(model, names),
            "prune_seconds": round(result.cost.seconds, 3),
            "test_acc_pruned": pruned_acc,
            "test_acc_finetune_by_epoch": [r["test_acc"] for r in report.history],
            "test_acc_finetuned": report.history[-1]["test_acc"],
            "finetune": {"epochs": args.finetune_epochs, "lr": finetune_lr, **cost.to_dict()},
        })

    # The same fine-tune at the recipe's full rate, at 0.95.
    model = copy.deepcopy(checkpoint.model)
    sp.prune(model, "omp:0.95")
    with metered() as cost:
        report = trainer(model, None, recipe.replace(epochs=args.finetune_epochs))
    full_lr = {"sparsity": 0.95, "lr": recipe.lr, "test_acc_finetune_by_epoch": [r["test_acc"] for r in report.history],
               **cost.to_dict()}

    # SynFlow at the checkpoint's own initialisation, then the full recipe.
    print("synflow 0.95 at init, then the full recipe", file=sys.stderr, flush=True)
    with metered() as cost:
        synflow = uk.train(data, model_name, config=recipe, seed=seed, device="cpu", prune="synflow:0.95", echo=True,
                           model_options=model_options)
    synflow_row = {
        "sparsity": 0.95,
        "achieved": synflow.pruning["achieved_sparsity"],
        "layers": {n: r["sparsity"] for n, r in synflow.pruning["layers"].items()},
        "prune_seconds": synflow.pruning["cost"]["seconds"],
        "test_acc_by_epoch": [r["test_acc"] for r in synflow.report.history],
        "test_acc": synflow.metrics["test_acc"],
        **cost.to_dict(),
    }
    # The same initialisation pruned by magnitude (OMP at init) for the layer-collapse contrast; not trained.
    init, _ = uk.models.new_model(model_name, data, seed, model_options)
    sp.prune(init, "omp:0.95")
    omp_at_init_layers = layer_table(init, names)

    rewind_row = None
    if args.with_rewind:
        print("omp 0.95 with rewinding to epoch 1 and retraining", file=sys.stderr, flush=True)
        with metered() as cost:
            pruned = sp.prune_checkpoint(checkpoint, "omp:0.95:rewind_epoch=1", device="cpu", echo=True)
        rewind_row = {"sparsity": 0.95, "test_acc": pruned.metrics["test_acc"], **cost.to_dict()}

    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": machine(), "versions": versions(), "load_average_at_end": os.getloadavg(),
        "checkpoint": {"path": str(checkpoint.path), "sha256": checkpoint.manifest["weights"]["sha256"],
                       "test_acc": dense_acc, "train_cost": checkpoint.manifest.get("cost")},
        "prunable_weights": n_prunable,
        "recipe_epochs": recipe.epochs,
        "omp": omp_rows,
        "omp_0.95_finetune_full_lr": full_lr,
        "synflow_at_init_then_train": synflow_row,
        "omp_at_init_layers_0.95": omp_at_init_layers,
        "omp_rewind_retrain": rewind_row,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    out = Path(args.out)
    write_json_atomic(out / "results.json", result)
    write_text_atomic(out / "README.md", render_report(result))
    plot(result, out / "accuracy_vs_sparsity.png")
    print(render_report(result))


def render_report(r: dict) -> str:
    dense = r["checkpoint"]["test_acc"]
    syn = r["synflow_at_init_then_train"]
    train_s = syn["seconds"]
    ft_epochs = r["omp"][0]["finetune"]["epochs"]
    lines = [
        "# Pruning: accuracy and fine-tune cost",
        "",
        f"Dense checkpoint `{r['checkpoint']['path']}` ({r['recipe_epochs']} epochs, seed 0): **{dense:.2f} %** test "
        "accuracy; "
        f"{r['prunable_weights']:,} prunable weights (conv and linear weights, classifier included).",
        "",
        f"OMP = global one-shot magnitude pruning of the trained weights; fine-tune = {ft_epochs} epochs of the recipe "
        f"(SGD, momentum 0.9, weight decay 5e-4, augmentation, cosine) at lr {r['omp'][0]['finetune']['lr']:g} "
        "(a fifth of the recipe's), masks held by the training loop.",
        "",
        "| sparsity | test acc after OMP | after fine-tune (per epoch) | Δ to dense | fine-tune s | fine-tune / full "
        "training (s, side by side) | prune s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in r["omp"]:
        ft = row["finetune"]
        lines.append(
            f"| {row['sparsity']} | {row['test_acc_pruned']:.2f} | {row['test_acc_finetuned']:.2f} "
            f"({' → '.join(f'{a:.2f}' for a in row['test_acc_finetune_by_epoch'])}) | "
            f"{row['test_acc_finetuned'] - dense:+.2f} "
            f"| {ft['seconds']:.0f} | {ft['seconds'] / train_s:.2f} | {row['prune_seconds']:.2f} |"
        )
    full = r["omp_0.95_finetune_full_lr"]
    omp95 = next(x for x in r["omp"] if x["sparsity"] == 0.95)
    lines += [
        "",
        f"Fine-tune sample passes: {r['omp'][0]['finetune']['backward_samples']:,} backward "
        f"({r['omp'][0]['finetune']['backward_samples'] / r['checkpoint']['train_cost']['backward_samples']:.2f} of "
        "the "
        "original training's).",
        "",
        f"At 0.95 the same fine-tune at the recipe's full lr {full['lr']:g}: "
        f"{' → '.join(f'{a:.2f}' for a in full['test_acc_finetune_by_epoch'])} % (default lr: "
        f"{' → '.join(f'{a:.2f}' for a in omp95['test_acc_finetune_by_epoch'])} %).",
        "",
        "## SynFlow at initialisation, then training",
        "",
        f"SynFlow (100 rounds, exponential schedule) pruned the seed-0 initialisation to {syn['achieved']:.4f} in "
        f"{syn['prune_seconds']:.1f} s; the full recipe then reached **{syn['test_acc']:.2f} %** "
        f"({syn['test_acc'] - dense:+.2f} to dense) in {train_s:.0f} s (per epoch: "
        f"{', '.join(f'{a:.1f}' for a in syn['test_acc_by_epoch'])}).",
        *(["", f"Note: {syn['note']}."] if syn.get("note") else []),
        "",
        "Per-layer sparsity at 0.95:",
        "",
        "| layer | OMP of the trained model | SynFlow at init | OMP at init (not trained) |",
        "| --- | --- | --- | --- |",
    ]
    omp95 = next(x for x in r["omp"] if x["sparsity"] == 0.95)["layers"]
    for name in omp95:
        lines.append(
            f"| {name} | {omp95[name]:.4f} | {syn['layers'][name]:.4f} | {r['omp_at_init_layers_0.95'][name]:.4f} |"
        )
    if r.get("omp_rewind_retrain"):
        rw = r["omp_rewind_retrain"]
        lines += [
            "",
            f"Seed-000 OMP recipe at 0.95 (prune, rewind to epoch 1, retrain {r['recipe_epochs']} epochs): "
            f"{rw['test_acc']:.2f} % "
            f"in {rw['seconds']:.0f} s.",
        ]
    lines += [
        "",
        f"Machine: {r['machine']['processor']}, {r['machine']['cpu_count']} cores shared with other sessions, "
        f"torch threads {r['machine']['torch_threads']}; load average at the end {r['load_average_at_end'][0]:.1f}. "
        f"Wall time {r['wall_seconds'] / 60:.1f} min. Seconds are comparable only within this run.",
        "",
        f"Command: `{r['command']}`",
        "",
        "![test accuracy against sparsity](accuracy_vs_sparsity.png)",
        "",
    ]
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [row["sparsity"] for row in r["omp"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.axhline(r["checkpoint"]["test_acc"], color="gray", ls="--", label="dense")
    ax.plot(xs, [row["test_acc_pruned"] for row in r["omp"]], "o-", label="OMP, no fine-tune")
    ax.plot(xs, [row["test_acc_finetuned"] for row in r["omp"]], "s-",
            label=f"OMP + {r['omp'][0]['finetune']['epochs']}-epoch fine-tune")
    syn = r["synflow_at_init_then_train"]
    ax.plot([syn["sparsity"]], [syn["test_acc"]], "*", ms=12, label=f"SynFlow at init + {r['recipe_epochs']} epochs")
    ax.set_xscale("logit")
    ax.set_xticks(xs)
    ax.set_xticklabels([str(x) for x in xs])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("sparsity (fraction of prunable weights zeroed)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Fashion-MNIST, small CNN")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
