"""RUM refines D_f by memorisation and runs NegGrad+ on each third in turn; SCAR forgets a class from D_f and
surrogate images alone."""

import pytest
import torch

import unlearnkit as uk
from unlearnkit.methods import METHODS
from unlearnkit.methods.base import Task
from unlearnkit.methods.rum import refine
from unlearnkit.recipes import default_recipe
from unlearnkit.requests import MEMORIZATION_SCORES, register_memorization_scores

RECIPE = uk.TrainConfig(epochs=15, batch_size=64, lr=0.05)


@pytest.fixture(scope="module")
def original(digits):
    return uk.train(digits, "mlp", config=RECIPE, seed=0, device="cpu", model_options={"width": 64}).model


@pytest.fixture
def clean_scores():
    saved = dict(MEMORIZATION_SCORES)
    MEMORIZATION_SCORES.clear()
    yield
    MEMORIZATION_SCORES.clear()
    MEMORIZATION_SCORES.update(saved)


def _task(model, request, data):
    x, y = request.training_data(data)
    return Task(model, model, data, request, x, y, torch.device("cpu"), 0, default_recipe(data.name))


def test_rum_refines_by_registered_scores_or_the_proxy(original, digits, clean_scores):
    request = uk.build_request("random:0.1", digits, seed=0)
    parts, used = refine(_task(original, request, digits), "auto")
    assert used.startswith("proxy") and [p.numel() for p in parts] == [48, 48, 48]
    assert torch.equal(torch.sort(torch.cat(parts)).values, request.forget)
    scores = torch.zeros(digits.n_train, dtype=torch.float64)
    scores[request.forget] = torch.arange(request.forget.numel(), dtype=torch.float64)  # memorisation grows with id
    register_memorization_scores(digits, scores)
    parts, used = refine(_task(original, request, digits), "auto")
    assert used == "registered memorisation scores"
    assert [p.tolist() for p in parts] == [request.forget[i * 48:(i + 1) * 48].tolist() for i in range(3)]
    assert refine(_task(original, request, digits), "proxy")[1].startswith("proxy")


def test_rum_runs_neggrad_plus_on_each_third_at_scaled_settings(original, digits, clean_scores):
    request = uk.build_request("random:0.1", digits, seed=0)
    result = uk.unlearn(original, request, digits, method="rum", device="cpu", recipe=RECIPE)
    assert result.notes["rum_parts"] == {"low": 48, "medium": 48, "high": 48}
    ng = result.resolved["neggrad_plus"]  # NegGrad+'s relative defaults resolved on the whole request
    assert ng["epochs"] == 10  # 0.15 of Retrain's 15 x 1,293 sample passes over 2 x 144 per epoch
    # A part's epoch is as long as NegGrad+'s on the whole request: 144 retain samples (retain_per_forget 1 × |D_f|,
    # two steps of 128 + 16) and, beside each retain batch, one batch of the part's 48 forget samples (cycled)
    epochs = [ng["epochs"], ng["epochs"], 2 * ng["epochs"]]
    assert result.cost.backward == sum(e * (144 + 2 * 48) for e in epochs)
    assert result.cost.forward == result.cost.backward + 144  # and the proxy's pass of the original over D_f
    assert len(result.notes["history"]) == sum(epochs)
    before = uk.evaluate(original, request, digits).metrics
    after = uk.evaluate(result.model, request, digits).metrics
    assert after["RA"] > 95 and after["TA"] > 90
    # it moves D_f towards what a model that never saw it does (seen here: UA 0 -> 2.1 %, forget loss 0.02 -> 0.08;
    # Retrain's UA on digits random:0.1 is its test error, ~3 %)
    assert after["UA"] > before["UA"] and after["forget_loss"] > 1.5 * before["forget_loss"]
    assert result.model.state_dict().keys() == original.state_dict().keys()
    assert any(not torch.equal(a, b) for a, b in zip(result.model.state_dict().values(),
                                                     original.state_dict().values()))
    assert before["RA"] > 95


def test_rum_parts_keep_the_class_and_the_whole_request_epoch(original, digits, clean_scores, monkeypatch):
    """Each part is still a request for the class (so NegGrad+'s floor is a class's, 0 %), and a part's epoch reads
    as many retain samples as NegGrad+'s epoch on the whole request (the paper's epoch: one retain-loader pass)."""
    import dataclasses

    inner, seen = METHODS["neggrad_plus"], []

    def spy(task, cfg):
        seen.append((task.request.classes, task.request.forget.numel(), task.retain_pass(cfg.retain_per_forget)))
        return inner.run(task, cfg)

    monkeypatch.setitem(METHODS, "neggrad_plus", dataclasses.replace(inner, run=spy))
    request = uk.build_request("class:3", digits, seed=0)
    n = request.forget.numel()
    uk.unlearn(original, request, digits, method="rum", device="cpu", recipe=RECIPE)
    assert [classes for classes, _, _ in seen] == [request.classes] * 3 and request.classes
    assert sum(size for _, size, _ in seen) == n and all(size < n for _, size, _ in seen)
    assert [per_epoch for _, _, per_epoch in seen] == [n] * 3  # retain_per_forget 1 x |D_f|, not x |part|


def test_scar_forgets_a_class_without_the_retain_set(original, digits):
    request = uk.build_request("class:3", digits, seed=0)
    result = uk.unlearn(original, request, digits, method="scar", device="cpu", recipe=RECIPE)
    m = uk.evaluate(result.model, request, digits).metrics
    assert m["UA"] > 50  # forget accuracy from ~100 % to below half (Retrain: 0 %)
    assert m["RA"] > 85 and m["TA"] > 80  # distillation on surrogate images holds the other classes up
    assert METHODS["scar"].touches == ("forget",)


def test_scar_guard_stops_a_sample_removal_at_a_retrained_models_forget_accuracy(original, digits):
    """The pull sends every forget sample to another class; for a sample removal the guard stops it once the forget
    accuracy falls to the original's test accuracy (what a retrained model scores), and only then."""
    request = uk.build_request("random:0.2", digits, seed=0)
    test_acc = uk.accuracy_report(original, digits)["test_acc"]
    kwargs = dict(device="cpu", recipe=RECIPE, original_test_acc=test_acc, epochs=40, lr=3e-3)
    guarded = uk.unlearn(original, request, digits, method="scar", **kwargs)
    unguarded = uk.unlearn(original, request, digits, method="scar", target_forget_acc=None, **kwargs)
    assert "reached the floor" in guarded.notes["stopped_early"]
    assert "stopped_early" not in unguarded.notes
    assert guarded.cost.backward < unguarded.cost.backward
    g, u = (uk.evaluate(r.model, request, digits).metrics for r in (guarded, unguarded))
    assert 100 - g["UA"] <= test_acc + 3  # stopped near the floor (probe of 512 forget samples, checks every 5 steps)
    assert u["UA"] > g["UA"] + 10  # unguarded, the pull goes on past what a retrained model scores


def test_scar_refuses_a_guard_without_a_check_interval(original, digits):
    """check_every is an interval for SCAR (GA alone gives null a meaning): null is refused in one line, before any
    sample pass, instead of failing inside the loss."""
    with pytest.raises(uk.UnlearnKitError, match="check_every"):
        uk.unlearn(original, "random:0.1", digits, method="scar", device="cpu", recipe=RECIPE, check_every=None)
