"""docs/your-own-model.md is executed, block by block, so the tutorial cannot rot.

``python`` blocks run in one namespace; a block whose first line is ``# NAME.py`` or ``# NAME.toml`` is written to
that file instead; ``bash`` blocks are ``unlearnkit`` command lines, run in this process through the CLI's
``main`` (one line each, ``\\`` continues a line). Everything runs in a fresh directory; the image folder is
written there by the tutorial's first block.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "your-own-model.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
FILE_HEADER = re.compile(r"^# ([\w.-]+\.(?:py|toml))\n")


def blocks() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(DOC.read_text())]


def command_lines(script: str) -> list[list[str]]:
    joined = re.sub(r"\\\n\s*", " ", script)
    return [shlex.split(line) for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_tutorial_runs_as_written(tmp_path, monkeypatch, capsys):
    from unlearnkit.cli import main

    found = blocks()
    kinds = [kind for kind, _ in found]
    assert kinds.count("python") >= 4 and "bash" in kinds and "toml" in kinds
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # as for a script saved beside my_model.py
    monkeypatch.setattr(sys, "argv", ["unlearnkit"])
    namespace: dict = {"__name__": "tutorial"}
    ran_commands = []
    try:
        for kind, code in found:
            header = FILE_HEADER.match(code)
            if header:
                (tmp_path / header.group(1)).write_text(code)
            elif kind == "python":
                exec(compile(code, f"{DOC.name}:python", "exec"), namespace)
            elif kind == "bash":
                for argv in command_lines(code):
                    assert argv[0] == "unlearnkit", f"the tutorial's shell blocks run unlearnkit only: {argv}"
                    assert main(["--threads", "1", *argv[1:]]) == 0, argv
                    ran_commands.append(argv[1])
            else:
                pytest.fail(f"a {kind} block that is neither a file nor runnable")
    finally:
        sys.modules.pop("my_model", None)
    out = capsys.readouterr().out
    print(out)  # shown with -s: the tutorial's output
    assert ran_commands == ["import", "unlearn", "unlearn", "evaluate", "data"]
    # the CLI wrote checkpoints; the Python part printed the table with a row per method
    assert all((tmp_path / "runs" / name / "manifest.json").is_file() for name in ("imported", "retrained", "salun"))
    for method in ("retrain", "finetune", "grad_ascent", "l1_sparse", "salun", "fisher", "scrub"):
        assert re.search(rf"^\| {method} \| [\d.]+ \|", out, re.M), method
    assert (tmp_path / "runs" / "digits-prepared" / "prepared.json").is_file()
    assert len((tmp_path / "forget.txt").read_text().split()) == 40
