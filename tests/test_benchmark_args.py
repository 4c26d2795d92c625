"""The committed benchmark scripts refuse bad arguments before any run: exit 2, argparse's usage and one error line,
no traceback, nothing written to their output folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "seed000 seeds": ("seed000_claim.py", ["--seeds", "0,x"], "--seeds '0,x'"),
    "seed000 spec": ("seed000_claim.py", ["--specs", "none,bogus:0.9"], "--specs bogus:0.9: unknown pruning method"),
    "seed000 sparsity": ("seed000_claim.py", ["--specs", "omp:2"], "--specs omp:2:"),
    "seed000 variant": ("seed000_claim.py", ["--methods", "finetune[lr=0.01];nope"], "--methods: nope not in suite"),
    "seed000 suite": ("seed000_claim.py", ["--suite", "no-such.toml"], "no such suite file"),
    "defaults data": ("defaults_transfer.py", ["--data", "digits,cifar"], "--data: unknown cifar"),
    "hashes revision": ("weight_hashes.py", ["--against", "no-such-rev"], "not a commit of this repository"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_benchmark_scripts_refuse_bad_arguments_before_any_run(case, tmp_path):
    script, argv, message = CASES[case]
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *argv, "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("usage:") and "Traceback" not in done.stderr
    assert message in lines[-1], lines[-1]
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("script", ["defaults_transfer.py", "scrub_cap_spread.py"])
def test_an_output_that_cannot_be_a_folder_is_refused_before_any_run(script, tmp_path):
    taken = tmp_path / "a-file"
    taken.write_text("keep")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--out", str(taken / "out")],
                          capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"--out {taken / 'out'}: Not a directory" in done.stderr.strip().splitlines()[-1]
    assert taken.read_text() == "keep"
