"""Scale-out benchmarks of the Ray execution backend (issue 16; docs/scale.md). Writes JSON + Markdown under
benchmarks/results/scale/ with the machine, versions, load average and command of each part:

    PYTHONPATH=src python benchmarks/scale.py overhead   # Ray's start-up cost and per-task overhead (empty, 1 s tasks)
    PYTHONPATH=src python benchmarks/scale.py speedup    # SISA on Fashion-MNIST (5 shards) and a digits audit, 1 vs 2
                                                         # Ray workers side by side (use the quiet window)
    PYTHONPATH=src python benchmarks/scale.py ceiling    # the same trainings in 1 vs 2 plain processes (no Ray)
    PYTHONPATH=src python benchmarks/scale.py fault      # two-node cluster, worker node killed mid-job vs a clean run
    PYTHONPATH=src python benchmarks/scale.py audit-compare --n64 DIR   # an N = 64 audit vs the committed N = 16 one

With QUIET_GRANTED=FILE, the results record whether that file (written by a watcher that stopped the machine's
background jobs) existed during the run. Each part is one run on this machine; ratios are only compared within a
run (the CPU is shared: the load average before and after is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from unlearnkit.backends import InProcess, RayBackend
from unlearnkit.results import machine, versions, write_json_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "results" / "scale"
QUIET = os.environ.get("QUIET_GRANTED")  # the file a quiet-window watcher writes while background jobs are stopped


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def header(part: str) -> dict:
    return {"part": part, "command": "PYTHONPATH=src python " + " ".join(["benchmarks/scale.py", *sys.argv[1:]]),
            "machine": machine(), "versions": versions(), "load_before": load(),
            "quiet_window": bool(QUIET and Path(QUIET).exists())}


def save(name: str, result: dict, markdown: list[str]) -> None:
    result["load_after"] = load()
    write_json_atomic(OUT / f"{name}.json", result)
    md = [*markdown, "", f"Command: `{result['command']}`. Machine: {result['machine'].get('processor', '?')}, "
          f"{result['machine'].get('cpu_count', '?')} CPUs, shared; load average (1, 5, 15 min) before "
          f"{result['load_before']}, after {result['load_after']}; quiet window: {result['quiet_window']}. "
          f"Versions: torch {result['versions'].get('torch')}, ray {_ray_version()}.", ""]
    write_text_atomic(OUT / f"{name}.md", "\n".join(md))
    print("\n".join(md))


def _ray_version() -> str:
    import ray

    return ray.__version__


# -- (b) overhead ---------------------------------------------------------------------------------------------
def _empty(job):
    return job


def _sleep(seconds):
    time.sleep(seconds)
    return seconds


def overhead(args) -> None:
    result = header("overhead")
    rows = {}
    started = time.perf_counter()
    backend = RayBackend(num_cpus=2, progress_bar=False)
    backend.map(_empty, [0])  # ray.init + one worker process started + one task
    rows["start_s"] = round(time.perf_counter() - started, 3)
    try:
        backend.map(_empty, list(range(2)))  # both workers up
        for n in (100,):
            t = time.perf_counter()
            backend.map(_empty, list(range(n)))
            rows["empty_task_ms"] = round(1000 * (time.perf_counter() - t) / n, 3)
        t = time.perf_counter()
        InProcess(progress_bar=False).map(_empty, list(range(100)))
        rows["empty_in_process_ms"] = round(1000 * (time.perf_counter() - t) / 100, 4)
        jobs = [1.0] * 8
        t = time.perf_counter()
        backend.map(_sleep, jobs)
        wall = time.perf_counter() - t
        rows["one_second_tasks"] = {"tasks": 8, "cpus": 2, "wall_s": round(wall, 3), "ideal_s": 4.0,
                                    "overhead_per_task_ms": round(1000 * (wall - 4.0) / 8 * 2, 1)}
    finally:
        t = time.perf_counter()
        backend.close()
        rows["shutdown_s"] = round(time.perf_counter() - t, 3)
    result["results"] = rows
    one = rows["one_second_tasks"]
    save("overhead", result, [
        "# Ray's overhead on this machine", "",
        "| what | measured |", "| --- | --- |",
        f"| start-up: `ray.init` of a local instance (2 CPUs) until the first task returned | {rows['start_s']} s |",
        f"| an empty task (100 through `RayBackend.map`, 2 workers), per task | {rows['empty_task_ms']} ms |",
        f"| the same in process (`InProcess.map`), per task | {rows['empty_in_process_ms']} ms |",
        f"| 8 one-second tasks on 2 CPUs (ideal 4 s) | {one['wall_s']} s: {one['overhead_per_task_ms']} ms per task |",
        f"| shutdown of the local instance | {rows['shutdown_s']} s |", "",
        "Ray pays off when the work per task is well above the per-task overhead and the whole job well above the "
        "start-up: a SISA shard or an audit model (seconds to minutes each) qualifies; a sub-second task does not."])


# -- (a) speed-up -------------------------------------------------------------------------------------------
def _sisa(out: Path, backend, dataset: str, shards: int) -> float:
    from unlearnkit.sisa import train_sisa
    from unlearnkit.training import TrainConfig

    t = time.perf_counter()
    train_sisa(dataset, "small-cnn", out=out, shards=shards, slices=2, config=TrainConfig(epochs=2, batch_size=128,
               lr=0.05), seed=0, threads=1, backend=backend)
    return time.perf_counter() - t


def _audit(out: Path, backend, models: int) -> float:
    from unlearnkit.audit import AuditSettings, run_audit
    from unlearnkit.bench import load_suite

    suite = load_suite("digits-audit")
    t = time.perf_counter()
    run_audit(suite, out / "audit", settings=AuditSettings(models=models, workers=2, retain_sample=200),
              cache_dir=out / "cache", methods=["finetune", "random_label", "salun"], requests=["random:0.1"],
              quiet=True, backend=backend)
    return time.perf_counter() - t


def _time_maps(backend) -> list[float]:
    """Record the wall time of every ``backend.map`` call (the part of a job that runs as tasks)."""
    spent: list[float] = []
    inner = backend.map

    def timed(fn, jobs, **kwargs):
        t = time.perf_counter()
        try:
            return inner(fn, jobs, **kwargs)
        finally:
            spent.append(time.perf_counter() - t)

    backend.map = timed
    return spent


def speedup(args) -> None:
    result = header("speedup")
    work = Path(tempfile.mkdtemp(prefix="scale-speedup-"))
    rows = []
    try:
        # 1, 2, 2, 1, ...: an ABBA order, so that the first run's cold caches and a drift in the machine's load do
        # not fall on one side only; each side's figures are means over its runs
        order = [w for r in range(args.repeats) for w in ((1, 2) if r % 2 == 0 else (2, 1))]
        for run, workers in enumerate(order):
            t = time.perf_counter()
            with RayBackend(num_cpus=workers, progress_bar=False) as backend:
                backend.map(_empty, list(range(workers)))  # start-up, measured apart
                start = time.perf_counter() - t
                in_tasks = _time_maps(backend)
                sisa = _sisa(work / f"sisa{run}", backend, args.dataset, args.shards)
                sisa_tasks = sum(in_tasks)
                in_tasks.clear()
                audit = _audit(work / f"audit{run}", backend, args.models)
                audit_tasks = sum(in_tasks)
            rows.append({"workers": workers, "start_s": round(start, 2), "sisa_s": round(sisa, 2),
                         "audit_s": round(audit, 2), "sisa_tasks_s": round(sisa_tasks, 2),
                         "audit_tasks_s": round(audit_tasks, 2), "load": load()})
            print(rows[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    keys = ("start_s", "sisa_s", "audit_s", "sisa_tasks_s", "audit_tasks_s")
    one, two = ({k: float(np.mean([r[k] for r in rows if r["workers"] == w])) for k in keys} for w in (1, 2))
    ratio = {k: round(one[k] / two[k], 3) for k in ("sisa_s", "audit_s", "sisa_tasks_s", "audit_tasks_s")}
    ratio["both"] = round((one["sisa_s"] + one["audit_s"]) / (two["sisa_s"] + two["audit_s"]), 3)
    ratio["both_with_start"] = round((one["sisa_s"] + one["audit_s"] + one["start_s"])
                                     / (two["sisa_s"] + two["audit_s"] + two["start_s"]), 3)
    result.update({"dataset": args.dataset, "audit_models": args.models, "repeats": args.repeats, "rows": rows,
                   "speedup": ratio,
                   "sisa": f"small-cnn, {args.shards} shards x 2 slices, 2 epochs per stage, batch 128, 1 torch thread "
                           "per task",
                   "audit": f"digits-audit suite, random:0.1, N = {args.models}, finetune/random_label/salun + retrain "
                            "and original rows, retain sample 200"})
    save("speedup" + (f"-{args.tag}" if args.tag else ""), result, [
        "# 1 vs 2 Ray workers, side by side", "",
        f"SISA: {result['sisa']} on `{args.dataset}`. Audit: {result['audit']}. Each run with a fresh model cache "
        f"and a fresh local Ray instance; {args.repeats} run(s) per side in the order {order} (ratios of the means).",
        "",
        "| workers | Ray start-up (s) | SISA train (s) | of which in Ray tasks (s) | digits audit (s) "
        "| of which in Ray tasks (s) | load after |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *[f"| {r['workers']} | {r['start_s']} | {r['sisa_s']} | {r['sisa_tasks_s']} | {r['audit_s']} | "
          f"{r['audit_tasks_s']} | {r['load']} |" for r in rows], "",
        f"Speed-up 2 vs 1 worker: SISA {ratio['sisa_s']}x ({args.shards} equal shards on 2 workers: at most "
        f"{args.shards}/{-(-args.shards // 2)} = {args.shards / -(-args.shards // 2):.2f}x), "
        f"audit {ratio['audit_s']}x, both jobs {ratio['both']}x ({ratio['both_with_start']}x with Ray's start-up). "
        f"The distributed part alone (time inside `backend.map`): SISA {ratio['sisa_tasks_s']}x, audit "
        f"{ratio['audit_tasks_s']}x; the rest (loading data, the driver's evaluation, writing versions and records) "
        "runs in the driver either way. `ceiling.md` gives what two plain processes gain on the same machine."])


# -- (a') the machine's own ceiling for two processes ------------------------------------------------------------
def _plain_training(seed: int) -> float:
    """One CPU-bound training with no Ray and no unlearnkit I/O: small-cnn, 2 epochs over 6,000 Fashion-MNIST-shaped
    samples, 1 torch thread. Returns its seconds."""
    from unlearnkit.models import build_model
    from unlearnkit.training import TrainConfig, train_classifier

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(6000, 1, 28, 28, generator=g), torch.randint(0, 10, (6000,), generator=g)
    model = build_model("small-cnn", in_channels=1, image_size=28, num_classes=10)
    t = time.perf_counter()
    train_classifier(model, x, y, torch.arange(6000), TrainConfig(epochs=2, batch_size=128, lr=0.05), seed=seed,
                     progress=False)
    return time.perf_counter() - t


def _warm(_):
    from unlearnkit.training import train_classifier  # noqa: F401  the imports a task needs

    time.sleep(0.5)  # keeps the first worker busy so that the second one starts too


def ceiling(args) -> None:
    """The same four trainings one after another in one process, then as two plain processes at once (no Ray): the
    speed-up this machine itself allows two workers, against which Ray's 2-worker speed-up is read."""
    import multiprocessing as mp

    result = header("ceiling")
    t = time.perf_counter()
    alone = [_plain_training(s) for s in range(args.tasks)]
    sequential = time.perf_counter() - t
    t = time.perf_counter()
    with mp.get_context("spawn").Pool(2) as pool:
        pool.map(_warm, range(2), chunksize=1)  # process start-up and imports, measured apart as Ray's start-up is
        t = time.perf_counter()
        paired = pool.map(_plain_training, range(args.tasks), chunksize=1)
        parallel = time.perf_counter() - t
    rows = {"tasks": args.tasks, "sequential_s": round(sequential, 2), "two_processes_s": round(parallel, 2),
            "task_alone_s": [round(v, 2) for v in alone], "task_paired_s": [round(v, 2) for v in paired],
            "speedup": round(sequential / parallel, 3),
            "per_task_slowdown_when_paired": round(float(np.mean(paired) / np.mean(alone)), 3)}
    result["results"] = rows
    save("ceiling", result, [
        "# What two processes gain on this machine without Ray", "",
        f"{args.tasks} identical trainings (small-cnn, 2 epochs over 6,000 Fashion-MNIST-shaped samples, 1 torch "
        "thread each): one after another in one process, then on a pool of two plain processes (started and warmed "
        "before the clock starts).", "",
        "| run | wall (s) | mean time of one training (s) |", "| --- | --- | --- |",
        f"| one process | {rows['sequential_s']} | {float(np.mean(alone)):.2f} |",
        f"| two processes | {rows['two_processes_s']} | {float(np.mean(paired)):.2f} |", "",
        f"Speed-up {rows['speedup']}x; one training runs {rows['per_task_slowdown_when_paired']}x slower beside "
        "another than alone (two cores sharing caches, memory bandwidth and the host's other tenants). This is "
        "the ceiling for Ray's 2-worker speed-up in `speedup*.md` on the same machine."])


# -- (d) two-node fault -----------------------------------------------------------------------------------------
def _two_node_run(out: Path, kill: bool) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from unlearnkit.sisa import train_sisa
    from unlearnkit.training import TrainConfig

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        victim = cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        finished: dict = {}

        def train():
            with RayBackend(cluster.address, max_retries=2, progress_bar=False) as backend:
                t = time.perf_counter()
                finished["model"] = train_sisa("digits", "mlp", out=out, shards=2, slices=4, seed=2, threads=1,
                                               config=TrainConfig(epochs=3, batch_size=32, lr=0.05), backend=backend)
                finished["seconds"] = time.perf_counter() - t

        driver = threading.Thread(target=train)
        driver.start()
        killed_at = None
        if kill:
            while driver.is_alive() and not any(p.name.startswith("stage-01-")
                                                for p in (out / "stages").glob("shard-*/stage-*")):
                time.sleep(0.05)
            if driver.is_alive():
                cluster.remove_node(victim, allow_graceful=False)
                killed_at = time.perf_counter()
                cluster.add_node(num_cpus=2)
        driver.join()
    finally:
        ray.shutdown()
        cluster.shutdown()
    model = finished["model"]
    stages = sorted(p.name for p in (out / "stages").glob("shard-*/stage-*") if not p.name.startswith(".tmp-"))
    return {"model": model, "seconds": finished["seconds"], "killed": killed_at is not None, "stages": stages}


def fault(args) -> None:
    from unlearnkit.sisa import train_sisa
    from unlearnkit.training import TrainConfig

    result = header("fault")
    work = Path(tempfile.mkdtemp(prefix="scale-fault-"))
    try:
        local = train_sisa("digits", "mlp", out=work / "local", shards=2, slices=4, seed=2, threads=1,
                           config=TrainConfig(epochs=3, batch_size=32, lr=0.05))
        clean = _two_node_run(work / "clean", kill=False)
        faulted = _two_node_run(work / "faulted", kill=True)
        same = all(torch.equal(a[k], b[k]) for a, b in zip(local.version(0).states, faulted["model"].version(0).states)
                   for k in a)
        same_clean = all(torch.equal(a[k], b[k]) for a, b in
                         zip(clean["model"].version(0).states, faulted["model"].version(0).states) for k in a)
        temps = sorted(p.name for p in (work / "faulted").rglob(".tmp-*"))
        rows = {"clean_two_node_s": round(clean["seconds"], 2), "faulted_two_node_s": round(faulted["seconds"], 2),
                "time_lost_s": round(faulted["seconds"] - clean["seconds"], 2), "killed_mid_job": faulted["killed"],
                "weights_equal_in_process": same, "weights_equal_clean_ray": same_clean,
                "stage_checkpoints_equal": faulted["stages"] == clean["stages"], "stage_checkpoints": len(
                    faulted["stages"]), "leftover_temporaries": temps,
                "retries_bound": 2, "lost_tasks_rerun": "every shard task running on the killed node (both shards)"}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["results"] = rows
    save("fault", result, [
        "# Two-node fault: the worker node killed mid-job", "",
        "A `ray.cluster_utils.Cluster` on this machine: a head node with no CPUs and a worker node with 2; SISA on "
        "digits (MLP, 2 shards x 4 slices, 3 epochs per stage) through `RayBackend(address, max_retries=2)`. Once a "
        "shard has written its first stage, the worker node's raylet is SIGKILLed (`remove_node(allow_graceful="
        "False)`: its workers die with it) and a replacement node with 2 CPUs joins; Ray re-runs both lost shard "
        "tasks there, and each resumes from the stage checkpoints its killed predecessor wrote.", "",
        "| what | result |", "| --- | --- |",
        f"| clean two-node run | {rows['clean_two_node_s']} s |",
        f"| run with the node killed | {rows['faulted_two_node_s']} s (time lost: {rows['time_lost_s']} s, most of it "
        "the replacement node's start) |",
        f"| weights bitwise equal to the in-process run / the clean Ray run | {same} / {same_clean} |",
        f"| stage checkpoints: the same set as the clean run, each once | {rows['stage_checkpoints_equal']} "
        f"({rows['stage_checkpoints']}) |",
        f"| temporary folders left by the killed writers | {len(temps)} (removed by the next write or "
        "`unlearnkit gc`) |",
        "", "The same scenario is a test: tests/test_ray_faults.py."])


# -- (c) N = 64 audit vs the committed N = 16 -------------------------------------------------------------------
def _ci(values: np.ndarray, stat, rng: np.random.Generator, reps: int = 2000) -> list[float]:
    n = len(values)
    boots = [stat(values[rng.integers(0, n, n)]) for _ in range(reps)]
    return [round(float(np.percentile(boots, 2.5)), 3), round(float(np.percentile(boots, 97.5)), 3)]


def audit_compare(args) -> None:
    from scipy.stats import spearmanr

    from unlearnkit.audit import stats

    result = header("audit-compare")
    for folder in (args.n16, args.n64):
        if not (Path(folder) / "results.json").is_file():
            print(f"scale.py audit-compare: {folder} holds no results.json of an audit", file=sys.stderr)
            sys.exit(2)
    small = json.loads((Path(args.n16) / "results.json").read_text())
    large = json.loads((Path(args.n64) / "results.json").read_text())
    rows = []
    for spec, request in large["requests"].items():
        if spec not in small["requests"]:
            continue
        for label, row in request["methods"].items():
            other = small["requests"][spec]["methods"].get(label)
            if other is None:
                continue
            entry = {"request": spec, "method": label, "same_config": row.get("config") == other.get("config")}
            for name, r, n in (("n16", other, small["models"]), ("n64", row, large["models"])):
                rng = np.random.default_rng(0)
                acc = np.asarray(r["per_example"]["ulira_accuracy"], dtype=np.float64)
                eps = np.asarray(r["per_example"]["epsilon"], dtype=np.float64)
                points = stats.example_points(eps, n)
                entry[name] = {"ulira": r["ulira"]["accuracy"], "ulira_ci": _ci(acc, np.mean, rng),
                               "forget_quality": r["challenge"]["forget_quality"],
                               "forget_quality_ci": _ci(points, np.mean, rng)}
            rows.append(entry)
    ranking = {}
    for spec in sorted({r["request"] for r in rows}):
        chosen = [r for r in rows if r["request"] == spec and r["same_config"]]  # defaults may change between runs
        rho_u = spearmanr([abs(r["n16"]["ulira"] - 50) for r in chosen], [abs(r["n64"]["ulira"] - 50) for r in chosen])
        rho_f = spearmanr([r["n16"]["forget_quality"] for r in chosen], [r["n64"]["forget_quality"] for r in chosen])
        ranking[spec] = {"methods": len(chosen), "spearman_ulira_distance_from_50": round(float(rho_u[0]), 3),
                         "spearman_forget_quality": round(float(rho_f[0]), 3)}
    width = {r["request"] + r["method"]: (r["n16"]["ulira_ci"][1] - r["n16"]["ulira_ci"][0],
                                          r["n64"]["ulira_ci"][1] - r["n64"]["ulira_ci"][0]) for r in rows}
    result.update({"n16": args.n16, "n16_command": small.get("command"), "n64": args.n64,
                   "n64_command": large.get("command"), "n64_wall_s": large.get("wall_s"),
                   "n64_backend": large.get("backend"), "rows": rows, "ranking": ranking,
                   "ci_width_ratio_median": round(float(np.median([b / a for a, b in width.values() if a])), 3)})
    lines = [f"# The digits audit at N = 64 models per side (Ray backend) against N = 16 (`{args.n16}`)", "",
             f"N = 16 run: `{small.get('command')}`. N = 64 run: `{large.get('command')}` ({large.get('wall_s')} s, "
             f"backend {large.get('backend')}). "
             "U-LiRA accuracy (%) and the challenge's forget quality F, each with a 95 % bootstrap interval over the "
             "forget examples (2,000 resamples, seed 0).", "",
             "| request | method | U-LiRA N=16 | U-LiRA N=64 | F N=16 | F N=64 |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        a, b = r["n16"], r["n64"]
        mark = "" if r["same_config"] else " (*)"
        lines.append(f"| {r['request']} | {r['method']}{mark} | {a['ulira']} {a['ulira_ci']} | {b['ulira']} "
                     f"{b['ulira_ci']} "
                     f"| {a['forget_quality']} {a['forget_quality_ci']} | {b['forget_quality']} "
                     f"{b['forget_quality_ci']} |")
    lines += ["", "(*) the method's resolved options differ between the two runs (its registry defaults were re-tuned "
              "in between): not comparable, left out of the ranking.", "",
              "Ranking agreement over the rows run with the same options (Spearman ρ between N = 16 and N = 64): "
              + "; ".join(
        f"{spec}: U-LiRA distance from 50 % ρ = {v['spearman_ulira_distance_from_50']}, F ρ = "
        f"{v['spearman_forget_quality']} ({v['methods']} rows)" for spec, v in ranking.items()) + ". Median width "
        f"of the U-LiRA interval at N = 64 over its width at N = 16: {result['ci_width_ratio_median']}."]
    save(args.tag or f"compare-{Path(args.n64).name}-vs-n16", result, lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="part", required=True)
    sub.add_parser("overhead")
    s = sub.add_parser("speedup")
    s.add_argument("--dataset", default="fashion-mnist[10000,2000]")
    s.add_argument("--models", type=int, default=8)
    s.add_argument("--shards", type=int, default=5, help="SISA shards (5 equal shards on 2 workers cap at 5/3)")
    s.add_argument("--repeats", type=int, default=2, help="runs per side, in ABBA order (default 2)")
    s.add_argument("--tag", default="", help="suffix of the result files (speedup-TAG)")
    c = sub.add_parser("ceiling")
    c.add_argument("--tasks", type=int, default=4)
    sub.add_parser("fault")
    a = sub.add_parser("audit-compare")
    a.add_argument("--n64", required=True, help="results folder of the N = 64 audit")
    a.add_argument("--n16", default=str(ROOT / "results" / "audit" / "digits-audit"),
                   help="results folder of the N = 16 audit (default: the committed one)")
    a.add_argument("--tag", default="", help="name of the result files (default: compare-N64FOLDER-vs-n16)")
    args = p.parse_args()
    torch.set_num_threads(1)
    parts = {"overhead": overhead, "speedup": speedup, "ceiling": ceiling, "fault": fault,
             "audit-compare": audit_compare}
    parts[args.part](args)


if __name__ == "__main__":
    main()
