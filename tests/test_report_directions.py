"""Reports pick "best" in each metric's declared direction (evaluation.METRICS): closest to Retrain for UA/RA/TA/MIA,
lowest for gaps and cost, highest for the forgetting rate, the unlearning degree and the retention rate."""

import re

import pytest

from unlearnkit.audit.report import rankings
from unlearnkit.bench.report import COLUMNS, EXTRA, REPORT_BETTER, latex, markdown
from unlearnkit.evaluation import HIGHER, LOWER, METRIC_BETTER, METRIC_DOCS, REF, metric_score


def _row(method: str, **values) -> dict:
    return {"n": 1, "method": method, **{k: (v, 0.0) for k, v in values.items()}}


SUMMARY = {"random:0.1": {
    "retrain": _row("retrain", UA=10.0, RA=99.0, TA=90.0, MIA=20.0, avg_gap=0.0, FR=0.1, MRR=1.0, UD_acc=5.0,
                    js_forget=0.0, spd_acc=50.0),
    "original": _row("original", UA=0.0, RA=100.0, TA=91.0, MIA=2.0, avg_gap=6.0, FR=0.0, MRR=1.0, UD_acc=0.0,
                     js_forget=0.2, spd_acc=90.0),
    # "forgets": more forgetting (FR, UD), better retention (MRR); UA far past Retrain's; lower JS.
    "forgets": _row("forgets", UA=40.0, RA=98.0, TA=89.0, MIA=21.0, avg_gap=8.0, FR=0.4, MRR=0.99, UD_acc=30.0,
                    js_forget=0.05, spd_acc=20.0),
    # "timid": the smaller FR/MRR/UD (what the old reports bolded), UA close to Retrain's, lower Avg. Gap.
    "timid": _row("timid", UA=11.0, RA=97.0, TA=88.0, MIA=25.0, avg_gap=2.0, FR=0.02, MRR=0.95, UD_acc=1.0,
                  js_forget=0.1, spd_acc=60.0),
}}


def _bold(table: str, title: str, pattern: str = r"\*\*") -> str | None:
    """The method whose cell in column ``title`` is bold."""
    lines = [line for line in table.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    column = header.index(title)
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if re.match(pattern, cells[column]):
            return cells[0]
    return None


def test_markdown_bolds_the_best_in_each_declared_direction():
    main = markdown(SUMMARY)
    assert _bold(main, "UA") == "timid"  # |11 − 10| < |40 − 10|, not the smallest UA
    assert _bold(main, "MIA-Eff.") == "forgets"  # |21 − 20| < |25 − 20|
    assert _bold(main, "Avg. Gap") == "timid"
    extra = markdown(SUMMARY, columns=[c for c in EXTRA if c[0] in ("FR", "MRR", "UD_acc", "js_forget", "spd_acc")])
    assert _bold(extra, "FR") == "forgets"  # highest forgetting rate (the old report bolded the lowest)
    assert _bold(extra, "MRR") == "forgets"  # highest retention
    assert _bold(extra, "UD acc") == "forgets"  # highest unlearning degree
    assert _bold(extra, "JS D_f") == "forgets"  # lowest divergence
    assert _bold(extra, "Acc G(D_f)") == "timid"  # closest to Retrain's 50


def test_latex_uses_the_same_directions():
    table = latex(SUMMARY)
    rows = {line.split(" & ")[0]: line.split(" & ")[1:] for line in table.splitlines() if " & " in line}
    keys = [k for k, _ in COLUMNS]
    assert rows["timid"][keys.index("UA")].startswith("\\textbf")
    assert rows["timid"][keys.index("avg_gap")].startswith("\\textbf")
    assert not rows["forgets"][keys.index("UA")].startswith("\\textbf")


def test_every_report_column_and_metric_declares_a_direction():
    for key, _ in COLUMNS + EXTRA:
        assert key in REPORT_BETTER or key in METRIC_BETTER, key
    assert set(METRIC_BETTER) == set(METRIC_DOCS)
    for name, better in METRIC_BETTER.items():
        assert better in (LOWER, HIGHER, REF, None) or isinstance(better, float), name


@pytest.mark.parametrize("name, values, reference, best", [
    ("FR", {"a": 0.1, "b": 0.5}, None, "b"),
    ("avg_gap", {"a": 0.1, "b": 0.5}, None, "a"),
    ("UA", {"a": 2.0, "b": 9.0}, 10.0, "b"),
    ("ulira_acc", {"a": 45.0, "b": 60.0}, None, "a"),  # closer to 50 % (chance)
])
def test_metric_score_ranks_by_direction(name, values, reference, best):
    scores = {k: metric_score(name, v, reference) for k, v in values.items()}
    assert min(scores, key=scores.get) == best
    assert metric_score("UA", 3.0) is None  # closer-to-reference needs the reference


def test_audit_ranks_follow_the_declared_directions():
    def result(gap, acc, tpr, score):
        return {"population": {"avg_gap": [gap, 0]}, "ulira": {"accuracy": acc, "tpr_at_1pct_fpr": tpr},
                "challenge": {"score": score}}

    ranks = rankings({"retrain": result(0, 50, 1, 1), "a": result(1.0, 48.0, 5.0, 0.2),
                      "b": result(2.0, 70.0, 2.0, 0.6)})
    assert ranks["Avg. Gap"] == {"a": 1, "b": 2}
    assert ranks["U-LiRA acc."] == {"a": 1, "b": 2}
    assert ranks["TPR@1% FPR"] == {"b": 1, "a": 2}
    assert ranks["challenge score"] == {"b": 1, "a": 2}  # higher is better
