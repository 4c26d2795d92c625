"""Issue 13's bad-input classes against the real command line (subprocesses; see tests/badinput.py).

For every case: exit status 2, one line on stderr starting with ``unlearnkit:`` (or argparse's usage and one
error line), no traceback, nothing in the case's sandbox created, changed or removed (so the inputs' bytes are
unchanged), no secret of an input file echoed. The default run takes the cases marked quick (every class, every
writing command); ``benchmarks/bad_input_fuzz.py`` runs all of them and commits the table.
"""

from __future__ import annotations

import os

import pytest

from badinput import all_cases, build_fixtures, run_all

CASES = [c for c in all_cases() if c.quick or os.environ.get("UNLEARNKIT_ALL_BAD_INPUT")]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    fixtures = build_fixtures(tmp_path_factory.mktemp("bad-input-fixtures"))
    results = run_all(CASES, fixtures, tmp_path_factory.mktemp("bad-input-runs"), workers=3)
    return {o.case: o for o in results}


@pytest.mark.slow
@pytest.mark.parametrize("case", [c.name for c in CASES])
def test_bad_input_is_refused_cleanly(outcomes, case):
    outcome = outcomes[case]
    assert outcome.ok, outcome.problems()


def test_the_quick_set_covers_every_class_and_writer():
    quick = [c for c in all_cases() if c.quick]
    assert {c.klass for c in quick} >= {"out", "confine", "leak", "manifest", "data", "ledger"}
    writers = {"train", "unlearn", "prune", "spdgan", "sisa", "bench", "audit", "report", "unlearn-pruned-out"}
    assert all(any(c.name.startswith(f"out-{w}-") for c in quick) for w in writers)
    assert len(all_cases()) >= 200


def test_every_declared_option_owner_is_covered():
    # A new option is covered without a new test; a new *owner* of options needs its base command in badinput.py.
    from badinput import uncovered_option_owners

    assert uncovered_option_owners() == []
