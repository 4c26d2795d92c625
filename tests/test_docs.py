"""The docs stay true: no placeholder left in, no pointer to files users do not have, papers named by title.

``doc_files()`` lists every document these checks (and the option-table check) read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def doc_files() -> list[Path]:
    """README.md, docs/*.md and the READMEs/reports of committed benchmark results."""
    return sorted([ROOT / "README.md", *(ROOT / "docs").glob("**/*.md"),
                   *(ROOT / "benchmarks" / "results").glob("**/*.md")])


# What must never appear in a document: a placeholder, a path into the development workspace, or a paper called by
# its internal number ("seed 001") instead of its authors and title.
FORBIDDEN = {
    "a placeholder": re.compile(r"PLACEHOLDER|\bTODO\b|\bTBD\b|\bX{3,}\b|\bFIXME\b"),
    "a path users do not have": re.compile(r"\.\./shared/|/work/shared|\bDESIGN\.md\b"),
    "an internal paper number": re.compile(r"\bseed 00\d\b", re.IGNORECASE),
}


def problems(text: str) -> list[str]:
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        for what, pattern in FORBIDDEN.items():
            if pattern.search(line):
                out.append(f"line {number}: {what}: {line.strip()[:100]}")
    return out


def test_there_are_docs_to_check():
    names = {p.relative_to(ROOT).as_posix() for p in doc_files()}
    assert {"README.md", "docs/architecture.md", "docs/sisa.md", "docs/methods.md"} <= names


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_placeholder_or_unexplained_reference(path):
    assert problems(path.read_text()) == []


@pytest.mark.parametrize("text, found", [
    ("MEASURED_FIGURES_PLACEHOLDER", "a placeholder"), ("TODO: measure", "a placeholder"),
    (".tmp-NAME-XXXXXXXX", "a placeholder"),
    ("see ../shared/DESIGN.md", "a path users do not have"), ("as seed 000 runs it", "an internal paper number"),
    ("Seed 003 (Zuo et al.)", "an internal paper number"),
])
def test_the_check_catches(text, found):
    assert any(found in p for p in problems(text))


def test_the_check_passes_ordinary_text():
    assert problems("seeds 0..2; seed 0 alone: --seeds 0, ; a 10-request stream; TODOS are not words") == []


def test_the_method_template_in_the_docs_is_finetune_py():
    """docs/methods.md shows methods/finetune.py as the template for a new method: it must be that file's code."""
    doc = (ROOT / "docs" / "methods.md").read_text()
    block = doc.split("## Adding a method", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    source = (ROOT / "src" / "unlearnkit" / "methods" / "finetune.py").read_text()
    assert block.strip() == source[source.index("@dataclass"):].strip()
