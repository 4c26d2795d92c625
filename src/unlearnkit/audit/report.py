"""The audit's report: a table per request (U-LiRA, the challenge's ε score, retain exposure, Avg. Gap, cost),
how the strong audit's ranking compares with Avg. Gap's, and histograms of the per-example scores."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from .._util import atomic_path, write_text_atomic
from ..evaluation import metric_score

ORIGINAL = "original"  # the pseudo-method "no unlearning"

FIXED = ("retrain", ORIGINAL)


def _order(methods: dict) -> list[str]:
    return [m for m in FIXED if m in methods] + sorted(m for m in methods if m not in FIXED)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")


def _pm(pair: list[float], digits: int = 2) -> str:
    return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"


def _name(label: str) -> str:
    return {"retrain": "Retrain (exact: chance level)", ORIGINAL: "Original (no unlearning)"}.get(label, label)


def _ranks(values: dict[str, float], metric: str) -> dict[str, int]:
    """Competition ranks (1 = best in the metric's declared direction; equal values share a rank)."""
    scores = {m: metric_score(metric, v) for m, v in values.items()}
    scores = {m: math.inf if s is None else s for m, s in scores.items()}  # an unmeasured value ranks last
    ordered = sorted(scores.values())
    return {m: 1 + ordered.index(s) for m, s in scores.items()}


# (title, metric whose declared direction ranks it, value in an audit result)
RANKINGS = [
    ("Avg. Gap", "avg_gap", lambda r: r["population"]["avg_gap"][0]),
    ("U-LiRA acc.", "ulira_acc", lambda r: r["ulira"]["accuracy"]),
    ("TPR@1% FPR", "ulira_tpr_at_1pct_fpr", lambda r: r["ulira"]["tpr_at_1pct_fpr"]),
    ("challenge score", "challenge_score", lambda r: r["challenge"]["score"]),
    ("KLoM D_f (median)", "KLoM_forget_median", lambda r: (r.get("klom") or {}).get("forget", {}).get("median")),
]


def rankings(methods: dict) -> dict[str, dict[str, int]]:
    """Ranks of the approximate methods (not Retrain, not the original) under each criterion."""
    approx = {m: r for m, r in methods.items() if m not in FIXED}
    return {title: _ranks({m: key(r) for m, r in approx.items()}, metric) for title, metric, key in RANKINGS}


def ranked_differently(methods: dict) -> dict[str, list[str]]:
    """Per strong criterion, the methods whose rank differs from their Avg. Gap rank."""
    ranks = rankings(methods)
    base = ranks["Avg. Gap"]
    return {title: sorted(m for m in base if ranks[title][m] != base[m]) for title, _, _ in RANKINGS[1:]}


def markdown(results: dict) -> str:
    n = results["models"]
    machine = results.get("machine", {})
    v = results.get("versions", {})
    timings = results.get("timings", {})
    lines = [
        f"# Audit: {results['suite']} — {results['dataset']}, {results.get('model') or 'default model'}, N = {n} "
        "models per side",
        "",
        f"Machine: {machine.get('processor', '?')}, {machine.get('cpu_count', '?')} CPUs; "
        f"{results['settings']['workers']} worker "
        f"process(es) × {results['settings']['threads']} torch thread(s). Versions: "
        + ", ".join(f"{k} {x}" for k, x in v.items())
        + ".",
        f"Command: `{results['command']}`." if results.get("command") else "Command: not recorded (Python API).",
        f"Wall time: {results['wall_s']:.0f} s in all ("
        + ", ".join(f"{k} {x:.0f} s" for k, x in timings.items())
        + "); cached models are not trained again, so a re-run or an extension costs only what is new.",
        "",
        "Protocol (docs/audit.md): per forget example, the logit-scaled confidence φ under N unlearned models (the "
        "method "
        "run on N originals with seeds 0..N−1) and N retrained models (seeds 1000..). **U-LiRA** fits a Gaussian to "
        "each "
        "side per example on N − 1 models and scores the held-out pair (leave one pair out); accuracy of the "
        "likelihood-"
        "ratio rule (50 % = indistinguishable), AUC, TPR at 1 % / 0.1 % FPR pooled over examples × held-out targets. "
        "**F** is the NeurIPS 2023 challenge's forgetting quality (per-example ε from threshold tests, δ = 1e-5, "
        f"binned: 1, ½, ¼, … per 0.5 of ε up to ceil(log(N − 1)) = {math.ceil(math.log(n - 1))}); the **challenge "
        "score** is "
        "F × RA/RA_retrain × TA/TA_retrain. **Retain exposure** is U-LiRA on retained examples. **φ shift** is how far "
        "the mean φ on D_f moved from the original's towards the retrained models' (0 = not at all, 100 = as far, > "
        "100 = past it). Avg. Gap and UA/RA/TA/MIA "
        "come from `unlearnkit.evaluate` against retrained reference k, mean ± std over the N models. Retrain's row "
        "is what "
        "chance looks like with N models (F < 1 there is the estimator's small-N bias, not a leak).",
        "",
    ]
    for spec, req in results["requests"].items():
        methods = req["methods"]
        ref = req["reference"]
        lines += [
            f"## {spec}: {req['n_forget']} forget examples, {req['retain_ids']} retained examples attacked",
            "",
            f"Retrained references: RA {_pm(ref['RA'])}, TA {_pm(ref['TA'])}, UA {_pm(ref['UA'])}, MIA "
            f"{_pm(ref['MIA'])}; "
            f"retraining takes {ref['retrain_s']:.1f} s per model. Audit of this request: {req['seconds']:.0f} s.",
            "",
            "| method | U-LiRA acc. (%) | AUC | TPR@1% FPR (%) | TPR@0.1% FPR (%) | F | challenge score | D_r "
            "exposure: U-LiRA acc. (%) "
            "| D_r TPR@1% FPR (%) | φ shift on D_f (%) | Avg. Gap | UA | RA | TA | MIA | time (s) | work (% Retrain) |",
            "| --- |" + " --- |" * 17,
        ]
        for label in _order(methods):
            r = methods[label]
            u, c, e, p, cost = r["ulira"], r["challenge"], r["retain_exposure"], r["population"], r["cost"]
            work = "–" if label == ORIGINAL or cost.get("work_pct") is None else f"{cost['work_pct']:.1f}"
            lines.append(
                f"| {_name(label)} | {u['accuracy']:.1f} | {u['auc']:.3f} | {u['tpr_at_1pct_fpr']:.1f} | "
                f"{u['tpr_at_0.1pct_fpr']:.1f} "
                f"| {c['forget_quality']:.3f} | {c['score']:.3f} | {e['accuracy']:.1f} | {e['tpr_at_1pct_fpr']:.1f} "
                f"| {'–' if r.get('forget_shift_pct') is None else format(r['forget_shift_pct'], '.0f')} | "
                f"{_pm(p['avg_gap'])} | {_pm(p['UA'])} | {_pm(p['RA'])} | {_pm(p['TA'])} | {_pm(p['MIA'])} "
                f"| {cost['seconds'][0]:.2f} | {work} |"
            )
        lines += _evidence_table(spec, methods)
        stopped = {m: r["stopped_early"] for m, r in methods.items() if r.get("stopped_early")}
        if stopped:
            lines += [
                "",
                "Stopped early (guards, divergence roll-backs): "
                + ", ".join(f"{m} {k}/{n}" for m, k in sorted(stopped.items()))
                + ".",
            ]
        ranks = rankings(methods)
        if ranks["Avg. Gap"]:
            titles = [t for t, _, _ in RANKINGS]
            lines += ["", f"Ranks of the approximate methods (1 = closest to retraining) — {spec}:", "",
                      "| method | " + " | ".join(titles) + " |", "| --- |" + " --- |" * len(titles)]
            for m in sorted(ranks["Avg. Gap"], key=lambda m: ranks["Avg. Gap"][m]):
                lines.append(f"| {m} | " + " | ".join(str(ranks[t][m]) for t in titles) + " |")
            lines.append("")
            for title, moved in ranked_differently(methods).items():
                lines.append(f"- {title} ranks differently from Avg. Gap: {', '.join(moved) if moved else 'none'}.")
        lines += ["", f"![per-example scores](plots/per_example_{_slug(spec)}.png)", ""]
    return "\n".join(lines)


def _num(value, digits: int = 2) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _evidence_table(spec: str, methods: dict) -> list[str]:
    """KLoM (Gaussian fits; the histogram estimator's D_f median beside it) and the relearning attack, per method."""
    if not any(r.get("klom") for r in methods.values()):
        return []
    lines = ["", f"KLoM (KL divergence of margins, nats; N unlearned vs N retrained models per example, Gaussian fits; "
             f"Retrain's row is the noise floor) and the relearning attack — {spec}:", "",
             "| method | KLoM D_f median | D_f p95 | D_f median (histogram) | D_r median | D_r p95 | test median "
             "| test p95 | relearn: recovered | steps (median) | samples (median) | control: recovered "
             "| control steps |",
             "| --- |" + " --- |" * 12]
    for label in _order(methods):
        r = methods[label]
        k, h, rl = r.get("klom") or {}, r.get("klom_histogram") or {}, r.get("relearn")
        cells = [_num(k.get(split, {}).get(stat)) for split, stat in (("forget", "median"), ("forget", "p95"))]
        cells.append(_num(h.get("forget", {}).get("median")))
        cells += [_num(k.get(split, {}).get(stat)) for split in ("retain", "test") for stat in ("median", "p95")]
        if rl:
            f, c = rl["forget"], rl["control"]
            cells += [f"{f['recovered']}/{rl['models']}", _num(f["median_steps"], 0), _num(f["median_samples"], 0),
                      f"{c['recovered']}/{rl['models']}", _num(c["median_steps"], 0)]
        else:
            cells += ["–"] * 5
        lines.append(f"| {_name(label)} | " + " | ".join(cells) + " |")
    attacked = next((r["relearn"] for r in methods.values() if r.get("relearn")), None)
    if attacked:
        s = attacked["settings"]
        lines += ["", "Relearning attack (docs/audit.md): fine-tune on a seeded "
                  f"{s.get('fraction', 0.1):g} of D_f (control: as many retained samples) until the accuracy on the "
                  "rest of D_f is within the tolerance of the original's; steps to recovery, '–' when not within the "
                  f"cap. Settings: {s or 'defaults'}; target accuracy (mean) {attacked['target_acc']:.1f} %."]
    return lines


def plot(results: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    cap = 3.0
    for spec, req in results["requests"].items():
        methods = req["methods"]
        order = _order(methods)
        fig, axes = plt.subplots(len(order), 2, figsize=(10, 1.7 * len(order) + 0.8), squeeze=False, sharex="col")
        for row, label in enumerate(order):
            per = methods[label]["per_example"]
            ax = axes[row][0]
            ax.hist(per["ulira_accuracy"], bins=np.linspace(0, 100, 21), color="tab:red", alpha=0.6, density=True,
                    label=f"forget ({methods[label]['ulira']['accuracy']:.1f} %)")
            ax.hist(per["retain_ulira_accuracy"], bins=np.linspace(0, 100, 21), histtype="step", color="tab:blue",
                    density=True, label=f"retained ({methods[label]['retain_exposure']['accuracy']:.1f} %)")
            ax.axvline(50, color="grey", lw=0.8, ls="--")
            ax.set_ylabel(_name(label).split(" (")[0], fontsize=8)
            ax.legend(fontsize=7, loc="upper left")
            ax = axes[row][1]
            eps = np.minimum(np.asarray(per["epsilon"]), cap + 0.25)
            ax.hist(eps, bins=np.arange(0, cap + 0.5, 0.25), color="tab:purple", alpha=0.7,
                    label=f"F = {methods[label]['challenge']['forget_quality']:.3f}")
            ax.legend(fontsize=7, loc="upper right")
        axes[-1][0].set_xlabel("per-example U-LiRA accuracy (%) over held-out targets (50 = indistinguishable)")
        axes[-1][1].set_xlabel(f"per-example ε (challenge estimate; last bin: ≥ {cap:g}, incl. the cap)")
        fig.suptitle(f"{results['suite']}: {spec}, N = {results['models']}", fontsize=10)
        fig.tight_layout()
        path = out_dir / "plots" / f"per_example_{_slug(spec)}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(out_dir: str | Path, results: dict) -> str:
    out_dir = Path(out_dir)
    text = markdown(results)
    write_text_atomic(out_dir / "report.md", text)
    plot(results, out_dir)
    return text
