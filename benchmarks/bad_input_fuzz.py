"""Every bad-input case of tests/badinput.py against the real CLI, with the table committed.

    PYTHONPATH=src python benchmarks/bad_input_fuzz.py                 # processes forked after import (fast)
    PYTHONPATH=src python benchmarks/bad_input_fuzz.py --mode exec     # a fresh `python -m unlearnkit.cli` per case

Writes benchmarks/results/bad-input/results.json and report.md: per case its class, exit status, whether Python
printed a traceback, whether the input was accepted (exit 0), whether stderr was one `unlearnkit:` line, which
files in the case's sandbox were created/changed/removed, and the error line. The run passes when every case
exits 2 with one line, no traceback, nothing changed (inputs byte-identical) and no secret echoed.

Modes: ``fork`` runs each case in a child forked from this process after unlearnkit and torch are imported --
the same ``unlearnkit.cli.main`` entry point, argv, working folder, stdin/stdout/stderr and exit status as the
console script, without paying the interpreter start (~2-20 s on a shared 2-core machine) 230 times. ``exec``
starts a new interpreter per case (what tests/test_bad_input.py does for its subset).
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from badinput import all_cases, build_fixtures, option_cases, run_all, run_forked, sampled_option_cases  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["fork", "exec"], default="fork")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", default=None, help="run the cases whose name starts with this")
    parser.add_argument(
        "--option-stride",
        type=int,
        default=40,
        help="of the cases generated from the declared options, run every Nth plus the first of each "
        "option (1: all of them)",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bad-input"))
    args = parser.parse_args()

    import torch

    from unlearnkit.results import machine, versions

    torch.set_num_threads(1)
    generated = len(option_cases())
    cases = [c for c in all_cases() if c.klass != "options"] + sampled_option_cases(args.option_stride)
    cases = [c for c in cases if args.only is None or c.name.startswith(args.only)]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="unlearnkit-bad-input-") as tmp:
        fixtures = build_fixtures(Path(tmp) / "fixtures")
        runner = run_forked if args.mode == "fork" else run_all
        done = [0]

        def progress(outcome) -> None:
            done[0] += 1
            mark = "ok  " if outcome.ok else "FAIL"
            print(
                f"[{done[0]:>3}/{len(cases)}] {mark} {outcome.case} ({outcome.seconds:.1f} s)",
                file=sys.stderr,
                flush=True,
            )

        outcomes = runner(cases, fixtures, Path(tmp) / "runs", workers=args.workers, progress=progress)
    wall = time.perf_counter() - started

    rows = []
    for o in outcomes:
        last = [line for line in o.stderr.splitlines() if line.strip()]
        rows.append(
            {
                "case": o.case,
                "class": o.klass,
                "argv": o.argv,
                "exit_code": o.exit_code,
                "traceback": o.traceback,
                "accepted": o.accepted,
                "one_line": o.one_line,
                "files_changed": o.changed,
                "secret_leaked": o.leaked,
                "extra_check": o.extra,
                "ok": o.ok,
                "error": last[-1][:300] if last else "",
                "seconds": o.seconds,
            }
        )
    by_class = collections.Counter(r["class"] for r in rows)
    summary = {
        "cases": len(rows),
        "distinct": len({r["case"] for r in rows}),
        "by_class": dict(by_class),
        "passed": sum(r["ok"] for r in rows),
        "tracebacks": sum(r["traceback"] for r in rows),
        "silent_acceptances": sum(r["accepted"] for r in rows),
        "cases_with_files_changed": sum(bool(r["files_changed"]) for r in rows),
        "secrets_leaked": sum(r["secret_leaked"] for r in rows),
        "not_one_line": sum(not r["one_line"] for r in rows),
        "exit_codes": dict(collections.Counter(str(r["exit_code"]) for r in rows)),
        "option_cases_generated": generated,
        "option_cases_run": by_class.get("options", 0),
        "option_stride": args.option_stride,
    }
    record = {
        "benchmark": "bad-input",
        "mode": args.mode,
        "summary": summary,
        "wall_s": round(wall, 1),
        "command": "PYTHONPATH=src python benchmarks/bad_input_fuzz.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "versions": versions(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cases": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "report.md").write_text(report(record))
    print(json.dumps(summary, indent=2))
    print(f"wrote {out}/results.json and report.md ({wall:.0f} s)")
    return 0 if summary["passed"] == summary["cases"] else 1


def report(record: dict) -> str:
    s = record["summary"]
    lines = [
        "# Bad input against the real CLI",
        "",
        f"Command: `{record['command']}` ({record['mode']} mode), {record['date']}, {record['wall_s']:.0f} s. "
        f"Machine: {record['machine']['processor']}, {record['machine']['cpu_count']} CPUs (shared with other jobs); "
        f"unlearnkit {record['versions']['unlearnkit']}, torch {record['versions']['torch']}, "
        f"Python {record['versions']['python']}.",
        "",
        "Each case runs `unlearnkit ARGV` in its own sandbox folder (copies of a digits checkpoint, "
        "a 2 x 2 SISA model, "
        "a user's folder with a file, ...). It passes when the exit status is 2, stderr is one `unlearnkit:` line (or "
        "argparse's usage and one error line; after progress lines for a device that fills up or a loss that "
        "diverges), there is no traceback, no file in the sandbox was created, changed or removed (the inputs' bytes "
        "are unchanged) and no secret from an input file is echoed. The cases are defined in `tests/badinput.py`.",
        "",
        f"**{s['cases']} distinct cases, {s['passed']} passed: {s['tracebacks']} tracebacks, "
        f"{s['silent_acceptances']} silent acceptances, {s['cases_with_files_changed']} with files created/changed/"
        f"removed, {s['secrets_leaked']} secrets echoed, {s['not_one_line']} not one line.**",
        "",
        f"Option cases: {s['option_cases_run']} of the {s['option_cases_generated']} generated from the declared "
        f"options (`unlearnkit.options`: every option's wrong type, below/above range, non-finite, not a choice) -- "
        f"every {s['option_stride']}th plus the first of each option; `--option-stride 1` runs all of them.",
        "",
        "| class | cases |",
        "| --- | ---: |",
        *[f"| {k} | {v} |" for k, v in sorted(s["by_class"].items())],
        "",
        "| case | class | exit | traceback | accepted | files changed | error line |",
        "| --- | --- | ---: | --- | --- | --- | --- |",
    ]
    for r in record["cases"]:
        error = r["error"].replace("|", "\\|")[:160]
        changed = ", ".join(r["files_changed"][:3]) or "none"
        lines.append(
            f"| {r['case']} | {r['class']} | {r['exit_code']} | {'yes' if r['traceback'] else 'no'} | "
            f"{'yes' if r['accepted'] else 'no'} | {changed} | {error} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
