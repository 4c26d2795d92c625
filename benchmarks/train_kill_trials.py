"""SIGKILL `unlearnkit train` at different moments, then run it again over the same --out; commit the table.

    PYTHONPATH=src python benchmarks/train_kill_trials.py            # 12 trials, writes benchmarks/results/train-kill/

Kill points: during training (after the first epoch line on stderr), the moment the checkpoint's temporary
folder ``.tmp-ck-*`` appears after the last epoch (plus 0-50 ms, i.e. while the weights and manifest are being
written or renamed),
and the same while replacing an existing checkpoint with ``--overwrite``. After each kill the script records what
is on disk (temporary folders left, whether ``runs/ck`` is absent, a complete checkpoint, or damaged), then runs
the same command again (with ``--overwrite`` when a checkpoint is there) and records its exit status, the
temporary folders left after it (must be 0: the next write of an output removes its killed writers' folders) and
whether the result loads and verifies.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }


def _command(out: str, overwrite: bool, epochs: int) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "unlearnkit",
        "--threads",
        "1",
        "train",
        "--dataset",
        "digits",
        "--epochs",
        str(epochs),
        "--no-progress",
        "--out",
        out,
    ]
    return cmd + (["--overwrite"] if overwrite else [])


def _temps(folder: Path) -> list[str]:
    return sorted(e for e in os.listdir(folder) if e.startswith(".tmp-")) if folder.is_dir() else []


def _state(path: Path) -> str:
    from unlearnkit.checkpoint import load_checkpoint
    from unlearnkit.errors import UnlearnKitError

    if not os.path.lexists(path):
        return "absent"
    try:
        ck = load_checkpoint(path)
    except UnlearnKitError as exc:
        return f"damaged: {exc}"
    return f"complete ({ck.manifest['weights']['sha256'][:12]})"


def trial(number: int, kind: str, delay: float, workdir: Path, epochs: int) -> dict:
    sandbox = workdir / f"trial-{number:02d}"
    runs = sandbox / "runs"
    runs.mkdir(parents=True)
    overwrite = kind == "overwrite"
    if overwrite:  # an existing checkpoint (trained with another seed) to be replaced
        subprocess.run(
            _command("runs/ck", False, 1) + ["--seed", "7"], cwd=sandbox, env=_env(), check=True, capture_output=True
        )
    before = _state(runs / "ck")
    proc = subprocess.Popen(
        _command("runs/ck", overwrite, epochs),
        cwd=sandbox,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    started = time.perf_counter()
    seen_tmp = False
    if kind == "training":
        for line in proc.stderr:  # kill once the first epoch has been reported: mid-training
            if line.startswith("epoch"):
                time.sleep(delay)
                break
    else:
        for line in proc.stderr:  # the last epoch is reported just before the checkpoint is written
            if line.startswith(f"epoch {epochs:>3}/"):
                break
        while proc.poll() is None:
            if any(t.startswith(".tmp-ck-") for t in _temps(runs)):
                seen_tmp = True
                time.sleep(delay)
                break
            time.sleep(0.0005)
    finished_first = proc.poll() is not None
    if not finished_first:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = round(time.perf_counter() - started, 3)
    left = _temps(runs)
    after_kill = _state(runs / "ck")
    rerun_overwrite = os.path.lexists(runs / "ck")
    again = subprocess.run(
        _command("runs/ck", rerun_overwrite, 1), cwd=sandbox, env=_env(), capture_output=True, text=True
    )
    return {
        "trial": number,
        "kill_point": kind,
        "delay_s": delay,
        "killed_after_s": killed_at,
        "temp_folder_seen_before_kill": seen_tmp,
        "process_had_finished": finished_first,
        "before": before,
        "after_kill": after_kill,
        "temp_folders_after_kill": len(left),
        "next_run_overwrite": rerun_overwrite,
        "next_run_exit": again.returncode,
        "next_run_error": (again.stderr.strip().splitlines() or [""])[-1] if again.returncode else "",
        "temp_folders_after_next_run": len(_temps(runs)),
        "after_next_run": _state(runs / "ck"),
    }


def main() -> int:
    import torch

    from unlearnkit.results import machine, versions

    torch.set_num_threads(1)
    if len(sys.argv) == 3 and sys.argv[1] == "--from-log":  # rebuild the table from the rows a run printed on stderr
        rows = [json.loads(line) for line in Path(sys.argv[2]).read_text().splitlines() if line.startswith('{"trial"')]
        return write(rows, None, machine(), versions())
    plan = (
        [("training", d) for d in (0.0, 0.05, 0.2, 0.5)]
        + [("saving", d) for d in (0.0, 0.002, 0.005, 0.01, 0.02, 0.05)]
        + [("overwrite", d) for d in (0.0, 0.005)]
    )
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="unlearnkit-train-kill-") as tmp:
        for number, (kind, delay) in enumerate(plan):
            row = trial(number, kind, delay, Path(tmp), epochs=3)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return write(rows, round(time.perf_counter() - started, 1), machine(), versions())


def write(rows: list[dict], wall: float | None, machine: dict, versions: dict) -> int:
    summary = {
        "trials": len(rows),
        "killed": sum(not r["process_had_finished"] for r in rows),
        "killed_with_temp_folder_left": sum(r["temp_folders_after_kill"] > 0 for r in rows),
        "damaged_after_kill": sum(r["after_kill"].startswith("damaged") for r in rows),
        "overwrite_trials_without_a_checkpoint_after_kill": sum(
            r["kill_point"] == "overwrite" and r["after_kill"] == "absent" for r in rows
        ),
        "next_run_failed": sum(r["next_run_exit"] != 0 for r in rows),
        "temp_folders_after_next_run": sum(r["temp_folders_after_next_run"] for r in rows),
        "complete_after_next_run": sum(r["after_next_run"].startswith("complete") for r in rows),
    }
    record = {
        "benchmark": "train-kill",
        "summary": summary,
        "wall_s": wall,
        "command": "PYTHONPATH=src python benchmarks/train_kill_trials.py",
        "machine": machine,
        "versions": versions,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "trials": rows,
    }
    out = ROOT / "benchmarks" / "results" / "train-kill"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "# SIGKILL of `unlearnkit train`, then the same command again",
        "",
        f"Command: `{record['command']}`, {record['date']}, "
        f"{'%.0f s' % wall if wall is not None else 'table rebuilt with --from-log from the rows the run printed'} on "
        f"{record['machine']['processor']} "
        f"({record['machine']['cpu_count']} CPUs, shared with other jobs); "
        f"unlearnkit {record['versions']['unlearnkit']}, "
        f"torch {record['versions']['torch']}.",
        "",
        "Each trial runs `unlearnkit train --dataset digits --epochs 3 --out runs/ck` (with `--overwrite` over an "
        "existing checkpoint in the overwrite trials), SIGKILLs it at the kill point, "
        "then runs `train ... --out runs/ck` "
        "again (`--overwrite` when a checkpoint is there).",
        "",
        f"**{summary['trials']} trials ({summary['killed']} killed, {summary['killed_with_temp_folder_left']} left a "
        f"`.tmp-*` folder): {summary['damaged_after_kill']} damaged checkpoints after a kill, "
        f"{summary['overwrite_trials_without_a_checkpoint_after_kill']} overwrite trials without a checkpoint, "
        f"{summary['next_run_failed']} failed next runs, {summary['temp_folders_after_next_run']} temporary folders "
        f"left after the next run, {summary['complete_after_next_run']} complete checkpoints after it.**",
        "",
        "| trial | kill point | delay s | killed after s | .tmp seen | before | after kill | .tmp left | "
        "next run exit | "
        ".tmp after next run | after next run |",
        "| ---: | --- | ---: | ---: | --- | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['trial']} | {r['kill_point']}{' (finished first)' if r['process_had_finished'] else ''} | "
            f"{r['delay_s']} | {r['killed_after_s']} | {'yes' if r['temp_folder_seen_before_kill'] else 'no'} | "
            f"{r['before']} | {r['after_kill']} | {r['temp_folders_after_kill']} | {r['next_run_exit']} | "
            f"{r['temp_folders_after_next_run']} | {r['after_next_run']} |"
        )
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(summary, indent=2))
    ok = (
        summary["damaged_after_kill"] == 0
        and summary["next_run_failed"] == 0
        and summary["temp_folders_after_next_run"] == 0
        and summary["complete_after_next_run"] == summary["trials"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
