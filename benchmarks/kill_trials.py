"""SIGKILL trials of `unlearnkit forget`: is a deletion still exact, applied once, and purged after a crash?

    PYTHONPATH=src python benchmarks/kill_trials.py                 # 22 trials on a tiny digits SISA model
    PYTHONPATH=src python benchmarks/kill_trials.py --only exact    # a subset (substring of the trial name)

A small SISA model (scikit-learn digits, MLP, 2 shards x 3 slices) is trained once under --work. Every trial
copies it, runs a real `unlearnkit forget` subprocess and kills it with SIGKILL — at a named point
(``UNLEARNKIT_FAULT``, see ``unlearnkit/_fault.py``: during stage retraining, while a stage checkpoint or a
version is being written, between the weights commit and the purge, inside the purge, before ``done``), or
after a random delay — optionally kills the `requests resume` that follows too, then runs `requests resume`
to the end, and records:

* whether the request is ``done`` exactly once (one ``done`` row and one ``done`` event, no other request);
* whether the final weights are bitwise equal to an uninterrupted run of the same request;
* how many artefacts under the model directory were trained on a deleted id, judged from content
  (``SisaStore.trained_on``: stage checkpoints from their recorded exclusions through the provenance, with
  the key re-derived; versions from their per-sample status). An approximate deletion leaves the deleted
  samples' influence in its shards' *current* weights by design; those are counted apart ("approximate,
  by design"), every other holder counts;
* leftover temporary folders and unfinished purges after the recovery.

Trials cover the exact path with 1 and 2 workers and the approximate path (whose planner is told 1 or 2
workers; it runs in the main process either way); --parallel trials run side by side, each on its own
copy of the model (the random delays are drawn before, from --seed). Writes results.json and README.md to --out (default
benchmarks/results/kill-trials).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from unlearnkit.data import load_dataset  # noqa: E402
from unlearnkit.hybrid import Ledger  # noqa: E402
from unlearnkit.results import machine, versions, write_json_atomic, write_text_atomic  # noqa: E402
from unlearnkit.sisa import SisaModel, train_sisa  # noqa: E402
from unlearnkit.training import TrainConfig  # noqa: E402

# (mode, workers, kills): each kill is "POINT:N" (UNLEARNKIT_FAULT) or "timed:SECONDS" (SIGKILL after that
# long); the first kills `forget`, each further one the `requests resume` that recovers from the one before.
TRIALS = [
    ("exact", 1, ["stage-trained:1"]),
    ("exact", 1, ["stage-trained:3"]),
    ("exact", 1, ["stage-write:1"]),
    ("exact", 1, ["stage-write:3"]),
    ("exact", 1, ["version-written:1"]),
    ("exact", 1, ["committed:1"]),
    ("exact", 1, ["purge:1"]),
    ("exact", 1, ["purge:3"]),
    ("exact", 1, ["purged:1"]),
    ("exact", 1, ["stage-trained:2", "committed:1", "purge:1"]),
    ("exact", 1, ["timed:random"]),
    ("exact", 2, ["stage-trained:1"]),
    ("exact", 2, ["stage-write:2"]),
    ("exact", 2, ["committed:1"]),
    ("exact", 2, ["purge:2"]),
    ("exact", 2, ["timed:random"]),
    ("approx", 1, ["approx-done:1"]),
    ("approx", 1, ["version-written:1"]),
    ("approx", 1, ["committed:1"]),
    ("approx", 1, ["purge:1", "purged:1"]),
    ("approx", 2, ["approx-done:1"]),
    ("approx", 2, ["timed:random"]),
]


def cli(args: list[str], fault: str | None = None, timed: float | None = None) -> tuple[int, str, float]:
    """Run `unlearnkit ARGS` in a subprocess; SIGKILL it at ``fault`` or after ``timed`` seconds."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    env.pop("UNLEARNKIT_FAULT", None)
    env.pop("UNLEARNKIT_FAULT_OWNER", None)
    if fault:
        env["UNLEARNKIT_FAULT"] = fault
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "unlearnkit", "--threads", "1", *args], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if timed is not None:
        try:
            process.wait(timeout=timed)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
    out, err = process.communicate(timeout=600)
    return process.returncode, (out + err)[-2000:], time.perf_counter() - started


def has_request(path: Path, request_id: str) -> bool:
    if not path.exists():
        return False
    ledger = Ledger(path)
    try:
        return ledger.find(request_id) is not None
    finally:
        ledger.close()


def request_ids(sisa: SisaModel, workers: int) -> np.ndarray:
    prov = sisa.provenance
    first = prov.members[0][prov.member_slices[0] == 0][:3]  # slice 0 of shard 0: every stage is retrained
    if workers == 1:
        return first
    return np.concatenate([first, prov.members[1][prov.member_slices[1] == 0][:2]])  # both shards: in parallel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "unlearnkit-kill-trials"),
                        help="scratch folder (model, trial copies)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kill-trials"))
    parser.add_argument("--only", default=None, help="run only trials whose name contains this")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random kill delays")
    parser.add_argument("--parallel", type=int, default=3, help="trials run side by side (each on its own copy)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work)
    began = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - began:7.1f} s] {text}", file=sys.stderr, flush=True)

    data = load_dataset("digits")
    base_path = work / "base"
    shutil.rmtree(work, ignore_errors=True)
    base = train_sisa(
        data,
        "mlp",
        out=base_path,
        shards=2,
        slices=3,
        config=TrainConfig(epochs=8, batch_size=64, lr=0.05),
        seed=0,
        workers=1,
        threads=1,
    )
    log("trained the base model")

    for workers in (1, 2):
        (work / f"ids-{workers}.txt").write_text("\n".join(map(str, request_ids(base, workers).tolist())) + "\n")

    def run_reference(mode: str, workers: int) -> tuple[list, float]:
        # The uninterrupted run, through the same command line (its time also scales the random kills).
        path = work / f"reference-{mode}-{workers}"
        shutil.copytree(base_path, path)
        code, text, seconds = cli(["forget", "--model", str(path), "--ids", str(work / f"ids-{workers}.txt"), "--mode",
                                   mode, "--request-id", "victim", "--workers", str(workers)])
        assert code == 0, text
        log(f"reference {mode}, {workers} worker(s): {seconds:.1f} s")
        return SisaModel.open(path, data=data).version(1).states, seconds

    keys = [(m, w) for m in ("exact", "approx") for w in (1, 2)]
    with ThreadPoolExecutor(args.parallel) as pool:
        done = dict(zip(keys, pool.map(lambda k: run_reference(*k), keys)))
    references = {k: v[0] for k, v in done.items()}
    durations = {k: v[1] for k, v in done.items()}

    def run_trial(number: int, mode: str, workers: int, kills: list[str], delay: float) -> dict:
        name = f"{mode}-{workers}w-" + "+".join(kills)
        path = work / f"trial-{number:02d}"
        shutil.copytree(base_path, path)
        ids = request_ids(base, workers)
        ids_file = work / f"ids-{workers}.txt"
        forget = ["forget", "--model", str(path), "--ids", str(ids_file), "--mode", mode, "--request-id", "victim",
                  "--workers", str(workers)]
        killed_at, kill_codes = [], []
        for step, kill in enumerate(kills):
            fault, timed = (None, delay) if kill.startswith("timed:") else (kill, None)
            command = forget if step == 0 else ["requests", "resume", "--model", str(path)]
            code, text, _ = cli(command, fault, timed)
            kill_codes.append(code)
            killed_at.append(f"{command[0]}: " + (f"after {timed:.1f} s" if timed is not None else kill)
                             + ("" if code == -signal.SIGKILL else f" (not killed: exit {code})"))
        code, text, _ = cli(["requests", "resume", "--model", str(path)])
        resume_ok = code == 0
        resubmitted = False
        if resume_ok and not has_request(path / "ledger.sqlite", "victim"):
            # A random kill that landed before the request reached the ledger: the client sends it again.
            resubmitted = True
            code, text, _ = cli(forget)
            resume_ok = code == 0
        sisa = SisaModel.open(path, data=data)
        ledger = Ledger(sisa.store.ledger_path)
        records = ledger.list()
        done_events = [e for r in records for e in ledger.events(r.id) if e["state"] == "done"]
        one_done = len(records) == 1 and records[0].state == "done" and len(done_events) == 1
        pending = len(ledger.pending_purges())
        purged = len(ledger.purges(all_requests=True))
        ledger.close()
        try:
            final = sisa.version(1).states
            bitwise = all(
                torch.equal(got[k], want[k]) for got, want in zip(final, references[mode, workers]) for k in want
            )
        except Exception as exc:  # noqa: BLE001 - a damaged model is a failed trial, recorded as such
            bitwise, text = False, f"{text}\n{type(exc).__name__}: {exc}"
        deleted = np.zeros(sisa.provenance.n, dtype=bool)
        deleted[ids] = True
        holders = sisa.store.trained_on(deleted)
        by_design = [h for h in holders if h.get("approximate")]
        remaining = [h for h in holders if not h.get("approximate")]
        temporaries = len(sisa.store.temporaries())
        row = {
            "trial": number, "name": name, "mode": mode, "workers": workers, "killed_at": killed_at,
            "all_kills_landed": all(c == -signal.SIGKILL for c in kill_codes), "resume_exit": code,
            "resubmitted": resubmitted, "one_done": one_done, "bitwise_equal": bitwise,
            "artefacts_trained_on_deleted": len(remaining), "remaining": remaining,
            "approximate_current_shards": len(by_design), "temporaries_left": temporaries, "pending_purges": pending,
            "purged_rows": purged,
            "ok": bool(resume_ok and one_done and bitwise and not remaining and not temporaries and not pending),
            "tail": "" if resume_ok else text,
        }
        log(f"trial {number:2d} {name:<44} killed={killed_at} done-once={one_done} bitwise={bitwise} "
            f"holders={len(remaining)} (+{len(by_design)} approx by design) tmp={temporaries}")
        shutil.rmtree(path, ignore_errors=True)
        return row

    rng = random.Random(args.seed)
    chosen = [(number, mode, workers, kills, rng.uniform(0.5, 1.0) * durations[mode, workers])
              for number, (mode, workers, kills) in enumerate(TRIALS)
              if not args.only or args.only in f"{mode}-{workers}w-" + "+".join(kills)]
    with ThreadPoolExecutor(args.parallel) as pool:
        rows = sorted(pool.map(lambda t: run_trial(*t), chosen), key=lambda r: r["trial"])

    out = Path(args.out)
    results = {
        "command": "PYTHONPATH=src python benchmarks/kill_trials.py" + (f" --only {args.only}" if args.only else "")
                   + (f" --parallel {args.parallel}" if args.parallel != 3 else ""),
        "machine": machine(), "versions": versions(), "seconds": round(time.perf_counter() - began, 1),
        "model": "digits, mlp, 2 shards x 3 slices, 8 epochs per stage, 1 thread",
        "reference_seconds": {f"{m}-{w}w": round(s, 2) for (m, w), s in durations.items()},
        "trials": rows,
        "summary": {
            "trials": len(rows),
            "ok": sum(r["ok"] for r in rows),
            "one_done": sum(r["one_done"] for r in rows),
            "bitwise_equal": sum(r["bitwise_equal"] for r in rows),
            "artefacts_trained_on_deleted": sum(r["artefacts_trained_on_deleted"] for r in rows),
            "temporaries_left": sum(r["temporaries_left"] for r in rows),
            "kills_landed": sum(r["all_kills_landed"] for r in rows),
        },
    }
    write_json_atomic(out / "results.json", results)
    write_text_atomic(out / "README.md", markdown(results))
    log(f"wrote {out}: {results['summary']}")
    shutil.rmtree(work, ignore_errors=True)


def markdown(results: dict) -> str:
    s = results["summary"]
    lines = [
        "# SIGKILL trials of `unlearnkit forget`",
        "",
        f"Command: `{results['command']}` ({results['seconds']:.0f} s). Model: {results['model']}. Every trial kills "
        "a real "
        "`forget` process (and, where listed, the `requests resume` runs after it) with SIGKILL at a named point "
        "(`UNLEARNKIT_FAULT`) or after a random delay (0.5-1 x the uninterrupted run's time), then runs "
        "`requests resume` to the end. \"Trained on deleted ids\" counts files under the model directory that were "
        "trained on a deleted id, judged from stage manifests' recorded exclusions through the provenance and from "
        "versions' per-sample status (not from names); the approximate path's current shard weights, which keep "
        "the deleted samples' influence by design until an exact retrain, are counted apart.",
        "",
        f"**{s['trials']} trials: {s['one_done']} ended with exactly one `done`, {s['bitwise_equal']} bitwise equal to "
        f"the uninterrupted run, {s['artefacts_trained_on_deleted']} artefacts trained on deleted ids after recovery, "
        f"{s['temporaries_left']} temporary folders left; {s['kills_landed']} trials had every kill land.**",
        "",
        "| # | mode | workers | killed | one `done` | bitwise equal | trained on deleted ids | approx. shards (by "
        "design) | temp. left | purge rows |",
        "| ---: | --- | ---: | --- | :---: | :---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results["trials"]:
        killed = "; ".join(r["killed_at"]) + (
            "; then resubmitted (killed before it reached the ledger)" if r["resubmitted"] else ""
        )
        lines.append(
            f"| {r['trial']} | {r['mode']} | {r['workers']} | {killed} | "
            f"{'yes' if r['one_done'] else '**no**'} | {'yes' if r['bitwise_equal'] else '**no**'} | "
            f"{r['artefacts_trained_on_deleted']} | {r['approximate_current_shards']} | {r['temporaries_left']} | "
            f"{r['purged_rows']} |"
        )
    m = results["machine"]
    lines += ["", f"Uninterrupted runs (s, one `forget` process, including its start): {results['reference_seconds']}.",
              "", f"Machine: {m.get('processor')}, {m.get('cpu_count')} CPUs (shared with other sessions). Versions: "
              + ", ".join(f"{k} {v}" for k, v in results["versions"].items()) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
