"""The audit: its statistics match hand computations and dense references, hard forget sets are what they
say, and on real (small) models the sanity holds — retraining audited against retraining scores at chance,
the untouched original is clearly detected, and a deliberately leaky method lands in between."""

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.stats import norm

from unlearnkit.audit import AuditSettings, run_audit, stats
from unlearnkit.audit.memorization import memorization_scores, split_requests
from unlearnkit.bench import suite_from_dict
from unlearnkit.cli import main
from unlearnkit.errors import UnlearnKitError
from unlearnkit.evaluation import logit_scaled_confidence
from unlearnkit.methods import METHODS, register
from unlearnkit.methods.base import option
from unlearnkit.methods.retrain import RetrainConfig, retrain
from unlearnkit.requests import (
    MEMORIZATION_SCORES,
    SCORES_FORMAT,
    build_request,
    register_memorization_scores,
    request_from_record,
)


# -- the per-example feature ------------------------------------------------------------------------------
def test_logit_scaled_confidence_is_exact_and_stable():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 5, generator=gen, dtype=torch.float64) * 3
    labels = torch.randint(0, 5, (50,), generator=gen)
    p = torch.softmax(logits, 1)[torch.arange(50), labels].numpy()
    assert np.allclose(logit_scaled_confidence(logits, labels), np.log(p / (1 - p)), atol=1e-9)
    # p_y = 1 − 2e-26 rounds to 1 in float64, yet φ = 60 − log 2 exactly.
    extreme = torch.tensor([[60.0, 0.0, 0.0], [0.0, 0.0, float("nan")]])
    phi = logit_scaled_confidence(extreme, torch.tensor([0, 1]))
    assert phi[0] == pytest.approx(60 - math.log(2), abs=1e-12)
    assert phi[1] == pytest.approx(-math.log(2))  # a diverged row counts as uniform: log((1/3) / (2/3))


# -- U-LiRA ---------------------------------------------------------------------------------------------
def test_gaussian_likelihood_ratio_matches_scipy():
    x, ma, va, mb, vb = 0.3, 1.0, 0.5, -0.4, 2.0
    expected = norm.logpdf(x, ma, math.sqrt(va)) - norm.logpdf(x, mb, math.sqrt(vb))
    assert stats.gaussian_log_likelihood_ratio(x, ma, va, mb, vb) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("variance", ["per_example", "global"])
def test_held_out_scores_match_an_explicit_loop(variance):
    rng = np.random.default_rng(1)
    u, r = rng.normal(1, 1, (5, 3)), rng.normal(0, 2, (5, 3))
    scores_u, scores_r = stats.held_out_likelihood_ratios(u, r, variance)
    for k in range(5):
        others = [j for j in range(5) if j != k]
        var_u = [np.var(u[others, i], ddof=1) for i in range(3)]
        var_r = [np.var(r[others, i], ddof=1) for i in range(3)]
        if variance == "global":
            var_u, var_r = [np.mean(var_u)] * 3, [np.mean(var_r)] * 3
        for i in range(3):
            mu_u, mu_r = np.mean(u[others, i]), np.mean(r[others, i])
            for target, got in ((u[k, i], scores_u[k, i]), (r[k, i], scores_r[k, i])):
                want = norm.logpdf(target, mu_u, math.sqrt(var_u[i])) - norm.logpdf(target, mu_r, math.sqrt(var_r[i]))
                assert got == pytest.approx(want, abs=1e-10)


def test_auc_tpr_and_accuracy_by_hand():
    pos, neg = [0.9, 0.8, 0.4], [0.7, 0.4, 0.1, 0.0]
    # 0.9 and 0.8 beat all 4 negatives, 0.4 beats 2 and ties 1: (4 + 4 + 2.5) / 12.
    assert stats.roc_auc(pos, neg) == pytest.approx(10.5 / 12)
    assert stats.tpr_at_fpr(pos, neg, 0.0) == pytest.approx(200 / 3)  # τ just above 0.7
    assert stats.tpr_at_fpr(pos, neg, 0.25) == pytest.approx(200 / 3)  # flagging 0.4 would cost FPR 1/2
    assert stats.tpr_at_fpr(pos, neg, 0.5) == pytest.approx(100.0)
    assert stats.decision_accuracy(np.array([1.0, -1.0, 0.0]), np.array([-2.0, 0.0])) == pytest.approx(
        100 * 0.5 * ((1 + 0 + 0.5) / 3 + (1 + 0.5) / 2))


def test_tpr_at_fpr_matches_sklearn_roc():
    from sklearn.metrics import roc_auc_score, roc_curve

    rng = np.random.default_rng(2)
    pos, neg = rng.normal(1, 1, 400).round(1), rng.normal(0, 1, 3000).round(1)  # rounding makes ties
    y = np.r_[np.ones(400), np.zeros(3000)]
    fpr, tpr, _ = roc_curve(y, np.r_[pos, neg])
    for alpha in (0.001, 0.01, 0.1):
        assert stats.tpr_at_fpr(pos, neg, alpha) == pytest.approx(100 * tpr[fpr <= alpha].max())
    assert stats.roc_auc(pos, neg) == pytest.approx(roc_auc_score(y, np.r_[pos, neg]))


def test_ulira_separates_shifted_distributions_and_not_equal_ones():
    rng = np.random.default_rng(3)
    same = stats.ulira(rng.normal(0, 1, (16, 300)), rng.normal(0, 1, (16, 300)))
    apart = stats.ulira(rng.normal(2, 1, (16, 300)), rng.normal(0, 1, (16, 300)))
    assert abs(same.accuracy - 50) < 2 and abs(same.auc - 0.5) < 0.03
    # Two unit Gaussians 2 apart: the Bayes rule is right with probability Φ(1) = 84 %.
    assert apart.accuracy == pytest.approx(100 * norm.cdf(1), abs=2)
    assert apart.tpr_at_1pct_fpr > 10 * same.tpr_at_1pct_fpr
    with pytest.raises(UnlearnKitError, match="at least 3 models"):
        stats.ulira(np.zeros((2, 4)), np.zeros((2, 4)))


# -- the challenge's ε ----------------------------------------------------------------------------------
def test_epsilon_from_rates_by_hand():
    d = 1e-5
    eps = stats.epsilon_from_rates([0.1, 0.0, 0.0, 0.5, 1.0], [0.2, 0.0, 0.3, 0.5, 0.0], d)
    assert eps[0] == pytest.approx(max(math.log(0.9 - d) - math.log(0.2), math.log(0.8 - d) - math.log(0.1)))
    assert eps[1] == math.inf  # perfect separation
    assert math.isnan(eps[2]) and math.isnan(eps[4])  # one error rate 0: no evidence, discarded
    assert eps[3] == 0.0  # log((0.5 − δ) / 0.5) < 0, clipped


def _dense_epsilon(pos, neg, delta=stats.DELTA):
    """The challenge's rules spelled out test by test with boolean masks (pos: the side with the larger median)."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    tprs, fprs = [], []  # of the "positive" class of each test
    both = np.r_[pos, neg]
    for t in np.linspace(both.min(), both.max(), int(math.ceil((both.max() - both.min()) * 100))):
        tprs.append([np.mean(pos >= t)])
        fprs.append([np.mean(neg >= t)])
    peaky, other = (neg, pos) if np.ptp(pos) >= np.ptp(neg) else (pos, neg)
    width = min(np.ptp(pos), np.ptp(neg))
    lo, hi = peaky.min() + width - 2, peaky.max() + 2
    for r in np.linspace(lo, hi, int(math.ceil((hi - lo) * 100))):
        left = np.linspace(r - width - 2, r - width + 2, 400)[:, None]
        tprs.append(((peaky >= left) & (peaky <= r)).mean(1))
        fprs.append(((other >= left) & (other <= r)).mean(1))
    tpr, fpr = np.concatenate(tprs), np.concatenate(fprs)
    fnr = 1 - tpr
    if np.any((fpr == 0) & (fnr == 0)):
        return stats.EPSILON_CAP
    keep = (fpr > 0) & (fnr > 0)
    fpr, fnr = fpr[keep], fnr[keep]
    with np.errstate(invalid="ignore"):
        a = np.where(1 - delta - fpr > 0, np.log(np.abs(1 - delta - fpr)) - np.log(fnr), -np.inf)
        b = np.where(1 - delta - fnr > 0, np.log(np.abs(1 - delta - fnr)) - np.log(fpr), -np.inf)
    return float(np.clip(np.maximum(a, b), 0, None).max())


def test_example_epsilon_matches_the_dense_rules():
    rng = np.random.default_rng(4)
    for shift in (0.0, 0.8, 2.5):
        u, r = rng.normal(shift, 1, 8), rng.normal(0, 1.3, 8)
        pos, neg = (r, u) if np.median(r) > np.median(u) else (u, r)
        assert stats.example_epsilon(u, r) == pytest.approx(_dense_epsilon(pos, neg), abs=1e-12)


def test_example_epsilon_edge_cases():
    apart = stats.example_epsilon(np.arange(8.0) + 100, np.arange(8.0))
    assert apart == stats.EPSILON_CAP  # perfectly separated: FPR = FNR = 0 at some threshold
    peaky = stats.example_epsilon(np.linspace(0, 0.001, 8), np.linspace(-5, 5, 8))
    assert peaky == stats.EPSILON_CAP  # one side's range < 1 % of the other's
    assert stats.example_epsilon(np.ones(8), np.ones(8)) == 0.0
    same = stats.example_epsilons(np.tile(np.arange(8.0), (3, 1)).T, np.tile(np.arange(8.0), (3, 1)).T)
    assert np.all(same < 0.5)


def test_buckets_and_scores_by_hand():
    # N = 16: ceil(log 15) = 3, so six buckets of width 0.5 worth 1, 1/2, ..., 1/32.
    assert stats.bucket_points(16) == [(0.5, 1.0), (1.0, 0.5), (1.5, 0.25), (2.0, 0.125), (2.5, 0.0625), (3.0, 0.03125)]
    assert stats.forgetting_quality(np.array([0.2, 0.7, 2.9, 3.0, 50.0]), 16) == pytest.approx((1 + 0.5 + 0.03125) / 5)
    assert stats.challenge_score(0.5, 90.0, 100.0, 80.0, 100.0) == pytest.approx(0.5 * 0.9 * 0.8)


# -- hard forget sets -----------------------------------------------------------------------------------
def test_memorization_scores_by_hand():
    probs = np.array([[0.9, 0.5], [0.7, 0.5], [0.2, 0.1], [0.4, 0.3]])
    trained_on = np.array([[True, False], [True, True], [False, True], [False, False]])
    # example 0: in (0.9, 0.7), out (0.2, 0.4) -> 0.5; example 1: in (0.5, 0.1), out (0.5, 0.3) -> -0.1
    assert memorization_scores(probs, trained_on) == pytest.approx([0.5, -0.1])
    with pytest.raises(UnlearnKitError, match="held out"):
        memorization_scores(probs, np.ones_like(trained_on))


def test_split_requests_are_complementary_halves(digits):
    splits = split_requests(digits, 4)
    assert [r.seed for r in splits] == [2000, 2001, 2002, 2003]
    forgotten = torch.zeros(digits.n_train)
    for a, b in (splits[0:2], splits[2:4]):
        assert torch.equal(torch.sort(torch.cat([a.forget, b.forget])).values, torch.arange(digits.n_train))
        assert torch.equal(a.forget, b.retain)
        forgotten[a.forget] += 1
        forgotten[b.forget] += 1
    assert torch.all(forgotten == 2)  # every example is held out of exactly half the split models
    assert not torch.equal(splits[0].forget, splits[2].forget)
    assert torch.equal(request_from_record(splits[1].describe(), digits).forget, splits[1].forget)
    with pytest.raises(UnlearnKitError, match="even"):
        split_requests(digits, 3)


@pytest.fixture
def clean_scores():
    saved = dict(MEMORIZATION_SCORES)
    MEMORIZATION_SCORES.clear()
    yield
    MEMORIZATION_SCORES.clear()
    MEMORIZATION_SCORES.update(saved)


def test_memorized_request_takes_the_top_scores(digits, tmp_path, clean_scores):
    with pytest.raises(UnlearnKitError, match="needs memorisation scores"):
        build_request("memorized:5", digits)
    scores = torch.zeros(digits.n_train, dtype=torch.float64)
    scores[[7, 3, 100, 42]] = torch.tensor([0.9, 0.5, 0.5, 0.8], dtype=torch.float64)  # 3 and 100 tie
    register_memorization_scores(digits, scores)
    request = build_request("memorized:3", digits)
    assert request.forget.tolist() == [3, 7, 42]  # the tie goes to the smaller id
    assert request.effect == "remove" and request.retain.numel() == digits.n_train - 3
    assert torch.equal(request_from_record(request.describe(), digits).forget, request.forget)

    path = tmp_path / "scores.json"
    path.write_text(json.dumps({"format": SCORES_FORMAT, "data_fingerprint": digits.fingerprint,
                                "scores": scores.tolist()}))
    MEMORIZATION_SCORES.clear()
    assert build_request(f"memorized:2:{path}", digits).forget.tolist() == [7, 42]
    path.write_text(json.dumps({"format": SCORES_FORMAT, "data_fingerprint": "0" * 16, "scores": scores.tolist()}))
    with pytest.raises(UnlearnKitError, match="fingerprint"):
        build_request(f"memorized:2:{path}", digits)
    register_memorization_scores(digits, scores)
    for bad, message in (
        ("memorized:x", "whole number"),
        ("memorized:0", "at least 1"),
        (f"memorized:{digits.n_train}", "whole training set"),
        ("memorized:3:/nonexistent", "cannot read"),
    ):
        with pytest.raises(UnlearnKitError, match=message):
            build_request(bad, digits)


# -- the sanity of the whole audit on real models -------------------------------------------------------
class Mixture(nn.Module):
    """Logits ``keep`` × original + (1 − keep) × retrained: a method that undoes only part of D_f's influence."""

    def __init__(self, original: nn.Module, retrained: nn.Module, keep: float) -> None:
        super().__init__()
        self.original, self.retrained, self.keep = original, retrained, keep

    def forward(self, x):
        return self.keep * self.original(x) + (1 - self.keep) * self.retrained(x)


@dataclass
class HalfRetrainConfig:
    keep: float = option(0.5, "weight of the original's logits")


def _half_retrain(task, cfg):
    return Mixture(task.original, retrain(task, RetrainConfig()), cfg.keep)


@pytest.fixture(scope="module")
def half_retrain_method():
    """Registers the test-only method "half_retrain_for_tests" for this module's audits (they run it in this
    process: one worker) and removes it, with its declared options, afterwards."""
    from unlearnkit.options import OWNERS

    register("half_retrain_for_tests", HalfRetrainConfig, touches=("retain",), effects=("remove",),
             summary="test only: half the original's logits plus half a retrained model's")(_half_retrain)
    yield "half_retrain_for_tests"
    METHODS.pop("half_retrain_for_tests", None)
    OWNERS.pop(("method", "half_retrain_for_tests"), None)


SANITY_SUITE = {
    "name": "audit-sanity", "dataset": "digits[600,200]", "model": "mlp", "model_options": {"width": 128},
    "requests": ["random:0.1"], "methods": ["half_retrain_for_tests"], "seeds": [0],
    "train": {"epochs": 30, "batch_size": 128, "lr": 0.1}, "mia_shadow_size": 200,
}


@pytest.fixture(scope="module")
def sanity(tmp_path_factory, half_retrain_method):
    root = tmp_path_factory.mktemp("audit")
    suite = suite_from_dict(SANITY_SUITE)
    settings = AuditSettings(models=8, workers=1, retain_sample=200)
    results = run_audit(suite, root / "out", settings=settings, cache_dir=root / "cache", quiet=True)
    return root, suite, settings, results


def test_sanity_retrain_at_chance_original_detected_leaky_between(sanity):
    _, _, _, results = sanity
    rows = results["requests"]["random:0.1"]["methods"]
    exact, leaky, original = rows["retrain"], rows["half_retrain_for_tests"], rows["original"]
    # Retraining against retraining: chance (the permutation null of this setting has sd ≈ 2.5 points).
    assert abs(exact["ulira"]["accuracy"] - 50) < 6 and abs(exact["ulira"]["auc"] - 0.5) < 0.07
    assert abs(exact["retain_exposure"]["accuracy"] - 50) < 4
    # The untouched original is clearly detected, on D_f and (having trained on D_f) on D_r too.
    assert original["ulira"]["accuracy"] > 65 and original["ulira"]["auc"] > 0.72
    assert original["ulira"]["tpr_at_1pct_fpr"] > 5 * max(exact["ulira"]["tpr_at_1pct_fpr"], 1.0)
    # Half the influence removed: in between, by a margin, on every attack summary.
    assert exact["ulira"]["accuracy"] + 4 < leaky["ulira"]["accuracy"] < original["ulira"]["accuracy"] - 4
    assert exact["ulira"]["auc"] < leaky["ulira"]["auc"] < original["ulira"]["auc"]
    assert (
        exact["challenge"]["forget_quality"]
        > leaky["challenge"]["forget_quality"]
        > original["challenge"]["forget_quality"]
    )
    # Costs: the original costs nothing, the leaky method a retraining.
    assert original["cost"]["passes"] == 0 and leaky["cost"]["work_pct"] == pytest.approx(100.0, rel=0.05)


def test_klom_orders_retrain_leaky_original(sanity):
    _, _, _, results = sanity
    rows = results["requests"]["random:0.1"]["methods"]
    exact, leaky, original = (rows[m]["klom"]["forget"] for m in ("retrain", "half_retrain_for_tests", "original"))
    assert exact["median"] < leaky["median"] < original["median"]  # KL of margins on D_f grows with the leak
    assert exact["median"] < exact["p95"] and rows["retrain"]["klom_histogram"]["forget"]["median"] >= 0
    assert set(rows["retrain"]["klom"]) == {"forget", "retain", "test"}
    assert len(rows["original"]["per_example"]["klom_forget"]) == results["requests"]["random:0.1"]["n_forget"]


def test_relearning_attack_in_the_audit(sanity, monkeypatch):
    root, suite, _, results = sanity
    settings = AuditSettings(models=8, workers=1, retain_sample=200, relearn_models=2,
                             relearn={"max_steps": 40, "check_every": 2, "lr": 0.05})
    attacked = run_audit(suite, root / "relearn", settings=settings, cache_dir=root / "cache", methods=[],
                         quiet=True)
    rows = attacked["requests"]["random:0.1"]["methods"]
    exact = rows["retrain"]["relearn"]
    assert exact["models"] == 2 and exact["settings"]["max_steps"] == 40
    assert set(exact["forget"]) >= {"recovered", "median_steps", "median_samples", "start_acc", "final_acc"}
    assert rows["original"]["relearn"] is None  # nothing to attack: the original is the target
    # the other statistics are those of the first audit (the models were cached, the attack is extra)
    assert rows["retrain"]["ulira"] == results["requests"]["random:0.1"]["methods"]["retrain"]["ulira"]
    assert "relearn: recovered" in (root / "relearn" / "report.md").read_text()

    import unlearnkit.audit.pool as pool

    monkeypatch.setattr(pool, "unlearn", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    again = run_audit(suite, root / "relearn2", settings=settings, cache_dir=root / "cache", methods=[], quiet=True)
    assert again["requests"]["random:0.1"]["methods"]["retrain"]["relearn"] == exact  # cached and deterministic


def test_audit_reuses_every_model(sanity, monkeypatch):
    root, suite, settings, results = sanity
    import unlearnkit.audit.pool as pool
    import unlearnkit.bench.runner as runner

    def refuse(*args, **kwargs):
        raise AssertionError("a cached model was computed again")

    monkeypatch.setattr(runner.api, "train", refuse)
    monkeypatch.setattr(runner, "unlearn", refuse)
    monkeypatch.setattr(pool, "unlearn", refuse)
    again = run_audit(suite, root / "again", settings=settings, cache_dir=root / "cache", quiet=True)
    assert again["requests"]["random:0.1"]["methods"] == results["requests"]["random:0.1"]["methods"]


def test_cli_writes_json_markdown_and_plot(sanity, tmp_path, capsys):
    root, suite, _, _ = sanity
    path = tmp_path / "suite.toml"
    path.write_text("\n".join([
        'name = "audit-sanity"', 'dataset = "digits[600,200]"', 'model = "mlp"', 'requests = ["random:0.1"]',
        'methods = ["half_retrain_for_tests"]', "seeds = [0]", "mia_shadow_size = 200",
        "[model_options]", "width = 128", "[train]", "epochs = 30", "batch_size = 128", "lr = 0.1"]))
    out = tmp_path / "out"
    code = main(["audit", "--suite", str(path), "--models", "8", "--workers", "1", "--retain-sample", "200",
                 "--cache", str(root / "cache"), "--out", str(out)])
    assert code == 0
    assert "U-LiRA" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["models"] == 8 and set(results["requests"]["random:0.1"]["methods"]) == {
        "retrain", "half_retrain_for_tests", "original"}
    report = (out / "report.md").read_text()
    assert "| Retrain (exact: chance level) |" in report and "| Original (no unlearning) |" in report
    assert (out / "plots" / "per_example_random_0.1.png").stat().st_size > 10_000
    assert (
        main(["audit", "--suite", str(path), "--models", "2", "--cache", str(root / "cache"), "--out", str(out)]) == 2
    )
    assert main(["audit", "--suite", str(path), "--models", "4", "--request", "relabel:0.1",
                 "--cache", str(root / "cache"), "--out", str(out)]) == 2


def test_memorized_request_end_to_end(sanity, clean_scores):
    root, suite, _, _ = sanity
    settings = AuditSettings(models=4, workers=1, retain_sample=100, memorization_models=4)
    results = run_audit(suite, root / "hard", settings=settings, cache_dir=root / "cache", requests=["memorized:40"],
                        methods=[], quiet=True)
    scores = np.array(json.loads((root / "hard" / "memorization.json").read_text())["scores"])
    request = results["requests"]["memorized:40"]
    chosen = np.array(request["per_example_ids"]["forget"])
    assert request["n_forget"] == 40 and len(chosen) == 40
    assert scores[chosen].min() >= np.sort(scores)[-40]  # exactly the 40 largest scores
    assert scores[chosen].mean() > scores.mean() + 0.1  # and they are memorised: far above the average example
    assert set(request["methods"]) == {"retrain", "original"}
