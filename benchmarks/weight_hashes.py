"""Does the training loop still compute the same bits? Weight hashes of a few CPU trainings and unlearnings (one
thread), made by this checkout and by the code of an earlier commit, side by side.

Runs: a digits MLP; the small CNN with crop augmentation; the small CNN with Adam and gradient clipping; SalUn,
SCRUB, Retrain and ℓ1-sparse on random:0.1 of the MLP (explicit epochs and rates, so that the comparison does not
depend on how defaults resolve), and NegGrad+ and SCRUB with their loss caps hit on some steps; a char-LSTM on a
fortunes subset. The earlier commit runs in a temporary git
worktree (``git worktree add``) through this same script with ``--emit``.

Usage:
    python benchmarks/weight_hashes.py --against ddb3c16      # the commit before the DDP/GPU-path rewrite
    python benchmarks/weight_hashes.py --against 067f029 --out benchmarks/results/weight-hashes/caps
                                       # before the loss caps stopped reading the loss per step
Writes benchmarks/results/weight-hashes/{results.json,README.md}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UNLEARN = [("salun", {"epochs": 1, "lr": 0.005}), ("scrub", {"epochs": 1, "lr": 0.005}),
           ("retrain", {"epochs": 3}), ("l1_sparse", {"epochs": 4, "lr": 0.1}),
           # the loss caps, low enough that each run has steps above and below its cap
           ("neggrad_plus", {"epochs": 2, "lr": 0.1, "beta": 0.5, "ascent_cap": 0.05}),
           ("scrub", {"epochs": 2, "lr": 0.02, "kl_cap": 0.01})]


def weights_hash(model) -> str:
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def emit() -> dict:
    """The hashes made by the unlearnkit on the import path."""
    import torch

    import unlearnkit as uk
    from unlearnkit.training import TrainConfig

    torch.set_num_threads(1)
    out = {}
    mlp = uk.train("digits", "mlp", config=TrainConfig(epochs=5, batch_size=64, lr=0.05), device="cpu")
    out["digits mlp"] = weights_hash(mlp.model)
    cnn = uk.train("digits", "small-cnn", config=TrainConfig(epochs=2, batch_size=64, lr=0.05), device="cpu")
    out["digits small-cnn, crop augmentation"] = weights_hash(cnn.model)
    adam = uk.train("digits", "small-cnn", seed=3, device="cpu",
                    config=TrainConfig(epochs=2, batch_size=64, lr=0.05, grad_clip=1.0, optimizer="adam"))
    out["digits small-cnn, Adam + clipping"] = weights_hash(adam.model)
    data = uk.load_dataset("digits")
    for method, options in UNLEARN:
        result = uk.unlearn(mlp.model, "random:0.1", data, method, model_name="mlp", model_args=mlp.model_args,
                            recipe=mlp.config, device="cpu", **options)
        out[f"unlearn {method} {options}"] = weights_hash(result.model)
    lm = uk.train("fortunes[200,40]", "char-lstm", device="cpu",
                  config=TrainConfig(epochs=1, batch_size=32, optimizer="adam", lr=0.02, weight_decay=0.0,
                                     grad_clip=1.0, augment=False))
    out["fortunes char-lstm"] = weights_hash(lm.model)
    return out


def emit_at(rev: str) -> dict:
    """Run ``emit`` with the source of ``rev`` (a temporary worktree)."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), rev], check=True)
        try:
            env = {**os.environ, "PYTHONPATH": str(tree / "src"), "OMP_NUM_THREADS": "1"}
            result = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--emit"], env=env,
                                    capture_output=True, text=True)
            if result.returncode != 0:  # e.g. a commit older than an API these runs use
                last = (result.stderr.strip().splitlines() or ["no output"])[-1]
                sys.exit(f"weight_hashes: the code of {rev} could not make the runs: {last}")
            return json.loads(result.stdout)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--against", help="git revision whose code makes the reference hashes")
    parser.add_argument("--emit", action="store_true", help="print this code's hashes as JSON and stop")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "weight-hashes"))
    args = parser.parse_args()
    if args.emit:
        print(json.dumps(emit()))
        return 0
    if not args.against:
        parser.error("--against REV is needed")
    known = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{args.against}^{{commit}}"],
                           capture_output=True)
    if known.returncode != 0:
        parser.error(f"--against {args.against}: not a commit of this repository")
    from unlearnkit.results import machine, versions, write_json_atomic, write_text_atomic

    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    old, new = emit_at(args.against), emit()
    rows = [{"run": k, args.against: old.get(k), head: new.get(k), "equal": old.get(k) == new.get(k)} for k in new]
    result = {"against": args.against, "head": head, "rows": rows, "all_equal": all(r["equal"] for r in rows),
              "command": "python benchmarks/weight_hashes.py --against " + args.against,
              "machine": machine(), "versions": versions()}
    out = Path(args.out)
    write_json_atomic(out / "results.json", result)
    lines = [f"# Weight hashes: `{args.against}` against `{head}`", "",
             f"Command: `{result['command']}`. One CPU thread; {machine().get('processor')}.", "",
             f"| run | {args.against} | {head} | equal |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['run']} | `{r[args.against]}` | `{r[head]}` | {'yes' if r['equal'] else 'no'} |" for r in rows]
    write_text_atomic(out / "README.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if result["all_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
