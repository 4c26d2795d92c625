"""Metrics equal direct re-computations on fixed inputs."""

import math

import numpy as np
import pytest
import torch
from sklearn.svm import SVC

import unlearnkit as uk
from conftest import make_tiny
from unlearnkit.evaluation import (
    Outputs,
    entropy,
    evaluate,
    js_divergence,
    mia_efficacy,
    modified_entropy,
    svc_efficacy,
    true_class_probability,
)


def _fixed_outputs(data, seed=0, sharp=3.0):
    gen = torch.Generator().manual_seed(seed)
    def probs(y, n):
        logits = torch.randn(n, data.num_classes, generator=gen)
        logits[torch.arange(n), y] += sharp
        return torch.softmax(logits, 1)
    return Outputs(train=probs(data.y_train, data.n_train), test=probs(data.y_test, data.y_test.numel()))


def test_feature_formulas_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3]])
    labels = np.array([0, 1, 2])
    assert np.allclose(true_class_probability(probs, labels), [0.7, 0.1, 1 / 3])
    for row, p in enumerate(probs):
        h = -sum(q * math.log(q) for q in p)
        assert entropy(probs)[row] == pytest.approx(h)
        y = labels[row]
        m = -(1 - p[y]) * math.log(p[y]) - sum(p[i] * math.log(1 - p[i]) for i in range(3) if i != y)
        assert modified_entropy(probs, labels)[row] == pytest.approx(m)


def test_svc_efficacy_is_the_conventional_svc():
    rng = np.random.default_rng(0)
    members, non_members, targets = rng.beta(9, 1, 300), rng.beta(3, 1, 300), rng.beta(5, 1, 100)
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(
        np.r_[members, non_members][:, None], np.r_[np.ones(300), np.zeros(300)]
    )
    expected = 100 * np.mean(clf.predict(targets[:, None]) == 0)
    assert svc_efficacy(members, non_members, targets) == pytest.approx(expected)
    # Distinct target values are predicted once: repeated targets count as often as they occur.
    repeated = np.r_[targets, targets[:30], np.ones(20)]
    expected = 100 * np.mean(clf.predict(repeated[:, None]) == 0)
    assert svc_efficacy(members, non_members, repeated) == expected


def test_binned_svc_agrees_with_the_svc_on_every_point():
    """The default attack fits the same SVC on quantile-binned, count-weighted points: it summarises the 3,000
    points to at most 2 x bins weighted ones (each bin's mean per side, weights summing to the counts) and calls
    the targets as the SVC on every point does, up to a fraction of a point."""
    from unlearnkit.evaluation import MIA_BINS, _binned

    rng = np.random.default_rng(1)
    members, non_members, targets = rng.beta(9, 1, 1500), rng.beta(4, 1, 1500), rng.beta(6, 1, 2000)
    x, y, w = _binned(members, non_members, 64)
    assert len(x) <= 128 and w[y == 1].sum() == 1500 and w[y == 0].sum() == 1500
    assert x.min() >= min(members.min(), non_members.min()) and x.max() <= max(members.max(), non_members.max())
    exact = svc_efficacy(members, non_members, targets)
    binned = svc_efficacy(members, non_members, targets, bins=MIA_BINS)
    assert 20 < exact < 80 and abs(binned - exact) <= 0.5, (exact, binned)
    assert abs(svc_efficacy(members, non_members, targets, bins=64) - exact) <= 2.0  # coarser, still close


def test_an_unknown_mia_attack_is_refused_before_any_pass():
    data = make_tiny(n_train=60, n_test=20)
    request = uk.build_request("random:0.2", data, seed=0)

    class Refuses(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("evaluated a model before checking the attack")

    with pytest.raises(uk.UnlearnKitError, match="unknown MIA attack 'lira'"):
        evaluate(Refuses(), request, data, mia_attack="lira")


def test_mia_follows_the_convention():
    data = make_tiny(n_train=300, n_test=80)
    outputs = _fixed_outputs(data)
    request = uk.build_request("random:0.2", data, seed=1)
    got = mia_efficacy(outputs, data, request, data.y_train, shadow_size=None, attack="svc")
    # Members: the first |test| retain samples; non-members: the test set; targets: the forget set.
    members = request.retain[:80]
    feature = lambda p, y: p.numpy()[np.arange(len(y)), y.numpy()]
    expected = svc_efficacy(feature(outputs.train[members], data.y_train[members]),
                            feature(outputs.test, data.y_test),
                            feature(outputs.train[request.forget], data.y_train[request.forget]))
    assert got["MIA"] == pytest.approx(expected)
    assert set(got) == {"MIA", "MIA_entropy", "MIA_m_entropy"}


def test_accuracies_gaps_and_rates_by_hand():
    data = make_tiny(n_train=200, n_test=100, classes=4)
    request = uk.build_request("class:2", data, seed=0)
    unlearned, reference, original = _fixed_outputs(data, 0), _fixed_outputs(data, 1), _fixed_outputs(data, 2, sharp=6)
    ev_ref = evaluate(reference, request, data)
    ev_orig = evaluate(original, request, data)
    ev = evaluate(unlearned, request, data, reference=ev_ref, original=ev_orig, cost=uk.training.Cost(2.0, 10, 5),
                  retrain_seconds=40.0)
    m = ev.metrics
    pred = unlearned.train.argmax(1)
    assert m["UA"] == pytest.approx(
        100 - 100 * (pred[request.forget] == data.y_train[request.forget]).float().mean().item()
    )
    assert m["RA"] == pytest.approx(100 * (pred[request.retain] == data.y_train[request.retain]).float().mean().item())
    keep = data.y_test != 2
    test_pred = unlearned.test.argmax(1)
    assert m["TA"] == pytest.approx(100 * (test_pred[keep] == data.y_test[keep]).float().mean().item())
    assert m["forgotten_class_test_acc"] == pytest.approx(100 * (test_pred[~keep] == 2).float().mean().item())
    gaps = [abs(m[k] - ev_ref.metrics[k]) for k in ("UA", "RA", "TA", "MIA")]
    assert m["avg_gap"] == pytest.approx(sum(gaps) / 4)
    # Tug-of-war: the product of accuracy agreements (in [0, 1]) on D_f, D_r and the test set.
    agreement = [1 - abs((100 - m["UA"]) - (100 - ev_ref.metrics["UA"])) / 100,
                 1 - abs(m["RA"] - ev_ref.metrics["RA"]) / 100, 1 - abs(m["TA"] - ev_ref.metrics["TA"]) / 100]
    assert m["ToW"] == pytest.approx(agreement[0] * agreement[1] * agreement[2], abs=1e-6) and m["ToW"] < 1
    a_o, a_u = 100 - ev_orig.metrics["UA"], 100 - m["UA"]
    assert m["FR"] == pytest.approx((a_o - a_u) / a_o)
    assert m["MRR"] == pytest.approx(m["RA"] / ev_orig.metrics["RA"])
    assert m["rte_s"] == 2.0 and m["rte_ratio"] == pytest.approx(0.05)


def test_forgetting_and_retention_rates_worked_example():
    """FR and MRR on a hand-made case: original 90 % / 80 %, unlearned 30 % / 76 % on D_f / D_r."""
    data = make_tiny(n_train=20, n_test=10, classes=2)
    request = uk.build_request("random:0.5", data, seed=0)  # 10 forget, 10 retain

    def outputs(forget_correct, retain_correct):
        y = data.y_train
        pred = 1 - y.clone()  # all wrong ...
        pred[request.forget[:forget_correct]] = y[request.forget[:forget_correct]]  # ... except these
        pred[request.retain[:retain_correct]] = y[request.retain[:retain_correct]]
        train = torch.nn.functional.one_hot(pred, 2).float()
        return Outputs(train=train, test=torch.nn.functional.one_hot(data.y_test, 2).float())

    orig = evaluate(outputs(9, 8), request, data, mia_shadow_size=None)
    ev = evaluate(outputs(3, 7), request, data, original=orig, mia_shadow_size=None)
    assert ev.metrics["FR"] == pytest.approx((90 - 30) / 90)
    assert ev.metrics["MRR"] == pytest.approx(70 / 80)


def test_js_divergence_bounds():
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    assert js_divergence(p, p) == pytest.approx(0.0, abs=1e-9)
    assert js_divergence(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])) == pytest.approx(1.0)


def test_backdoor_metrics(digits):
    request = uk.build_request("backdoor:0.1:0", digits, seed=0)
    trained = uk.train(
        digits, "mlp", request=request, config=uk.TrainConfig(epochs=30, batch_size=64), seed=0, device="cpu"
    )
    m = evaluate(trained.model, request, digits).metrics
    assert m["ASR"] > 80  # the trigger works on the poisoned model
    clean = uk.train(digits, "mlp", config=uk.TrainConfig(epochs=30, batch_size=64), seed=0, device="cpu")
    assert evaluate(clean.model, request, digits).metrics["ASR"] < 20
    assert m["forget_acc_corrected"] < 20  # it predicts the target, not the true class, on poisoned samples


def test_feature_request_plants_a_shortcut_that_retraining_on_the_corrections_lacks(digits):
    # 90 % of the ones carry a 2x2 square in the corner with their true label; the model learns "square => 1".
    request = uk.build_request("feature:0.9:1", digits, seed=0)
    recipe = uk.TrainConfig(epochs=30, batch_size=64)
    trained = uk.train(digits, "mlp", request=request, config=recipe, seed=0, device="cpu")
    assert evaluate(trained.model, request, digits).metrics["ASR"] > 30  # measured 45 %
    retrained = uk.unlearn(trained.model, request, digits, "retrain", seed=0, device="cpu", model_name="mlp",
                          model_args={}, recipe=recipe)
    m = evaluate(retrained.model, request, digits).metrics
    assert m["ASR"] < 10 and m["TA"] > 90  # trained on the images without the square: measured 1.5 %


def test_evaluate_from_models_matches_outputs(digits):
    trained = uk.train(digits, "mlp", config=uk.TrainConfig(epochs=5), seed=0, device="cpu")
    request = uk.build_request("random:0.1", digits)
    from unlearnkit.evaluation import model_outputs

    a = evaluate(trained.model, request, digits, reference=trained.model).metrics
    b = evaluate(model_outputs(trained.model, digits, request), request, digits,
                 reference=evaluate(trained.model, request, digits)).metrics
    assert a == b
    assert a["avg_gap"] == 0 and a["ToW"] == 1 and a["l2_to_reference"] == 0
    assert a["js_forget"] == pytest.approx(0, abs=1e-9)


def test_non_finite_outputs_are_counted_not_fatal():
    data = make_tiny(n_train=100, n_test=40)
    request = uk.build_request("random:0.2", data, seed=0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
    with torch.no_grad():
        model[1].weight.fill_(float("nan"))
    m = evaluate(model, request, data, mia_shadow_size=None).metrics
    assert m["non_finite_outputs"] == 140
    assert 0 <= m["MIA"] <= 100 and m["TA"] == pytest.approx(100 * float((data.y_test == 0).float().mean()))
