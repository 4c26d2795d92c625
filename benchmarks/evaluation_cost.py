"""The cost of ``evaluate`` against its floor, and the agreement of its MIA attacks, written to
benchmarks/results/evaluation/.

Everything is measured side by side in this one process (torch at one thread; CPU-seconds by
``time.process_time``, which a busy shared machine disturbs far less than wall time):

1. **The floor**: the forward passes ``evaluate(model, request, data, reference=retrained)`` cannot avoid — both
   models over the training set as trained and the test set (Fashion-MNIST: 70,000 images per model), with the
   models as ``load_checkpoint`` returns them (channels-last).
2. The same passes with the models in NCHW (what ``load_checkpoint`` returned before it put convolutional models in
   the layout training leaves them in).
3. ``evaluate`` with the reference, as ``unlearnkit evaluate --reference`` runs it: the default MIA attack
   (``binned``) and ``svc`` (the SVC on every point, what benchmark suites use), as a ratio to the floor.
4. MIA-efficacy of ``binned`` against ``svc``: original and retrained models of random:0.1, the original on class:0
   (and its retrained model with ``--retrained-class``), with the default capped shadow sets (3,000 per side) and,
   with ``--full``, the full convention (10,000 per side).
5. ``train``'s optional final pass (``--train-acc``: accuracy over the whole training set) against a 1-epoch run
   (on a class-balanced subset: the pass's share does not depend on the size).

Usage: python benchmarks/evaluation_cost.py --original CKPT --retrained-random CKPT [--retrained-class CKPT]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import unlearnkit as uk
from unlearnkit.evaluation import MIA_BINS, evaluate, model_outputs
from unlearnkit.results import machine, versions, write_json_atomic, write_text_atomic
from unlearnkit.training import TrainConfig, predict_logits

MIA_KEYS = ("MIA", "MIA_entropy", "MIA_m_entropy")


def cpu(fn) -> tuple[float, object]:
    start = time.process_time()
    out = fn()
    return time.process_time() - start, out


def floor(models, data, request) -> None:
    """The forward passes evaluate needs: every model over the training set as trained and the test set."""
    x, _ = request.training_data(data)
    for model in models:
        predict_logits(model, x)
        predict_logits(model, data.x_test)


def nchw(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model).to(memory_format=torch.contiguous_format)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--original", required=True)
    parser.add_argument("--retrained-random", required=True, help="retrained without random:0.1 (seed 0)")
    parser.add_argument("--retrained-class", default=None,
                        help="retrained without class:0 (seed 0); without it class:0 agreement is on the original only")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full", action="store_true",
                        help="also compare the attacks at the full convention, 10,000 per side (~30 CPU-s per model)")
    parser.add_argument("--skip-train", action="store_true", help="skip the 1-epoch training measurement")
    parser.add_argument("--train-data", default="fashion-mnist[12000,2000]",
                        help="data set of the 1-epoch training measurement (the final pass's share does not depend on "
                             "the size)")
    parser.add_argument("--out", default="benchmarks/results/evaluation")
    args = parser.parse_args()
    torch.set_num_threads(1)

    original = uk.load_checkpoint(args.original)
    retrained = {"random:0.1": uk.load_checkpoint(args.retrained_random),
                 "class:0": uk.load_checkpoint(args.retrained_class) if args.retrained_class else None}
    data = original.dataset()
    request = uk.build_request("random:0.1", data, 0)
    model, reference = original.model, retrained["random:0.1"].model
    slow = [nchw(model), nchw(reference)]
    rounds = []
    for _ in range(args.repeats):  # interleaved, so that a change in the machine's load hits every figure alike
        row = {
            "floor": cpu(lambda: floor([model, reference], data, request))[0],
            "floor_nchw": cpu(lambda: floor(slow, data, request))[0],
            "evaluate_binned": cpu(lambda: evaluate(model, request, data, reference=reference))[0],
            "evaluate_svc": cpu(lambda: evaluate(model, request, data, reference=reference, mia_attack="svc"))[0],
        }
        rounds.append({k: round(v, 3) for k, v in row.items()})
        print(rounds[-1], flush=True)
    median = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    ratios = {k: round(median[k] / median["floor"], 3) for k in median}

    agreement = []
    for spec, ckpt in retrained.items():
        req = uk.build_request(spec, data, 0)
        for name, m in (("original", original.model), ("retrained", ckpt.model if ckpt else None)):
            if m is None:
                continue
            outputs = model_outputs(m, data, req)
            for shadow in (3000, None) if args.full else (3000,):
                row = {"request": spec, "model": name, "shadow": shadow or 10000}
                for attack in ("svc", "binned"):
                    seconds, ev = cpu(lambda: evaluate(outputs, req, data, mia_shadow_size=shadow, mia_attack=attack))
                    row.update({f"{k}_{attack}": ev.metrics[k] for k in MIA_KEYS})
                    row[f"seconds_{attack}"] = round(seconds, 3)
                agreement.append(row)
                print(row, flush=True)
    diffs = [abs(r[f"{k}_binned"] - r[f"{k}_svc"]) for r in agreement for k in MIA_KEYS]

    train = None
    if not args.skip_train:
        config = TrainConfig(epochs=1)
        small = uk.load_dataset(args.train_data)
        seconds, trained = cpu(lambda: uk.train(small, "small-cnn", config=config, seed=0, device="cpu"))
        final_pass, _ = cpu(lambda: predict_logits(trained.model, small.x_train))
        train = {"data": args.train_data, "one_epoch_cpu_s": round(seconds, 3),
                 "final_train_pass_cpu_s": round(final_pass, 3),
                 "share_of_run_with_pass": round(final_pass / (seconds + final_pass), 3)}
        print(train, flush=True)

    result = {
        "command": "python " + " ".join(sys.argv), "machine": machine(), "versions": versions(),
        "mia_bins": MIA_BINS, "rounds_cpu_s": rounds, "median_cpu_s": median, "ratio_to_floor": ratios,
        "target_ratio": 1.2, "mia_agreement": agreement, "mia_max_abs_diff": round(max(diffs), 4),
        "mia_mean_abs_diff": round(statistics.mean(diffs), 4), "train": train,
    }
    out = Path(args.out)
    write_json_atomic(out / "evaluation_cost.json", result)
    write_text_atomic(out / "README.md", report(result))
    print(report(result))


def report(r: dict) -> str:
    m, q = r["median_cpu_s"], r["ratio_to_floor"]
    lines = [
        "# Cost of `evaluate` against its floor, and agreement of the MIA attacks", "",
        f"Command: `{r['command']}`. Machine: {r['machine']['processor']}, {r['machine']['cpu_count']} CPUs "
        f"(shared with other jobs), torch threads {r['machine']['torch_threads']}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in r["versions"].items()) + ".", "",
        "Fashion-MNIST, small CNN, request random:0.1 (seed 0). CPU-seconds (`time.process_time`), median of "
        f"{len(r['rounds_cpu_s'])} round(s) in one process (measurements interleaved). The floor is the forward "
        "passes evaluate needs: "
        "the model and the retrained reference over the 60,000 training images (as trained) and the 10,000 test "
        "images.", "",
        "| what | CPU-s | × floor |", "| --- | --- | --- |",
        f"| floor: forward passes, models channels-last (as loaded now) | {m['floor']:.2f} | 1.00 |",
        f"| the same passes, models NCHW (as loaded before) | {m['floor_nchw']:.2f} | {q['floor_nchw']:.2f} |",
        f"| `evaluate(model, reference=)`, default MIA attack `binned` ({r['mia_bins']} bins) | "
        f"{m['evaluate_binned']:.2f} | **{q['evaluate_binned']:.2f}** |",
        f"| the same with `mia_attack=\"svc\"` (SVC on every point; the suites' choice) | {m['evaluate_svc']:.2f} | "
        f"{q['evaluate_svc']:.2f} |",
        "", f"Target: ≤ {r['target_ratio']} × floor.", "",
        f"MIA-efficacy (%): `binned` against `svc` (same RBF SVC, C=3, gamma=\"auto\"). Largest difference "
        f"{r['mia_max_abs_diff']:.3f} points, mean {r['mia_mean_abs_diff']:.3f}.", "",
        "| request | model | per side | MIA svc | binned | entropy svc | binned | m-entropy svc | binned "
        "| CPU-s svc | binned |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for a in r["mia_agreement"]:
        lines.append(f"| {a['request']} | {a['model']} | {a['shadow']} | " + " | ".join(
            f"{a[f'{k}_svc']:.2f} | {a[f'{k}_binned']:.2f}" for k in MIA_KEYS)
            + f" | {a['seconds_svc']:.2f} | {a['seconds_binned']:.2f} |")
    if not any(a["shadow"] == 10000 for a in r["mia_agreement"]):
        lines += ["", "This run compared the attacks at the default 3,000 per side only (`--full` adds 10,000 per "
                      "side)."]
    if r.get("train"):
        t = r["train"]
        lines += ["", f"`train`, 1 epoch (small CNN, {t['data']}): {t['one_epoch_cpu_s']:.1f} CPU-s; the final "
                  f"full-training-set accuracy pass (now only with `--train-acc`) costs "
                  f"{t['final_train_pass_cpu_s']:.1f} CPU-s, {100 * t['share_of_run_with_pass']:.0f} % of a run that "
                  "includes it."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
