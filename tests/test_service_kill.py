"""A small run of the kill test (benchmarks/service_kill.py has the full one: 10 server + 10 worker kills):
SIGKILL the server and, separately, its worker under load; every accepted request finishes exactly once, the
weights equal an uninterrupted run's, nothing trained on deleted ids remains, the hash chain verifies."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_kill_server_and_worker_under_load(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "service_kill.py"),
            "--kills",
            "2",
            "--worker-kills",
            "2",
            "--requests",
            "6",
            "--min-wait",
            "1.5",
            "--max-wait",
            "6",
            "--seed",
            "3",
            "--work",
            str(tmp_path / "work"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert (out / "results.json").is_file(), result.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    assert report["accepted_202"] == 6 and report["done_exactly_once"] == 6, report
    assert report["lost"] == [] and report["applied_other_than_once"] == [], report
    assert report["weights_equal_uninterrupted"] is True
    assert report["chain"]["ok"] is True
    assert report["leftover_count"] == 0, report["leftover_artefacts"]
    assert report["load"]["predictions_failed"] == 0 and report["load"]["predictions_ok"] > 0
    assert [t["target"] for t in report["trials"]].count("server") == 2
