"""The calibration of the methods that train on D_r alone (``RetainCalibrated``: fine-tune and ℓ1-sparse,
docs/methods.md): for a class removal whose planned run leaves the forget accuracy on the probe where it was, rungs of
two epochs in halving batches run until the probe moves, a rung that breaks the retain sample is undone, and the rest
of ``max_budget`` re-fits D_r. Where the planned run forgets, and for sample removals, corrections and explicit
settings, nothing changes."""

import pytest
import torch

import unlearnkit as uk
from unlearnkit.methods import forget_retain_accuracy, unlearn
from unlearnkit.methods.base import Task, retain_sample
from unlearnkit.recipes import default_recipe

METHODS = ["finetune", "l1_sparse"]


def _run(trained, request, digits, method, *, model=None, seed=0, **options):
    return unlearn(model or trained.model, request, digits, method, device="cpu", seed=seed,
                   original_test_acc=trained.metrics["test_acc"], **options)


def _same(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def _retain_work(request) -> float:
    return default_recipe("digits").epochs * request.retain.numel()


@pytest.mark.parametrize("method", METHODS)
def test_a_planned_run_that_leaves_the_class_is_knocked_loose_and_repaired(digits_mlp, digits_class0, digits, method):
    planned = _run(digits_mlp, digits_class0, digits, method, calibrate=False)
    assert forget_retain_accuracy(planned.model, digits_class0, digits, device="cpu")["forget_acc"] == 100.0

    result = _run(digits_mlp, digits_class0, digits, method)
    r, n_forget = result.resolved, digits_class0.forget.numel()
    assert r["calibration_batches"] == [64, 32, 16, 8] and r["calibration_undone"] is None
    repair = r["calibration_epochs"] - 2 * len(r["calibration_batches"])
    assert repair > 0
    spent = (r["epochs"] + r["calibration_epochs"]) * n_forget
    assert result.cost.backward == spent <= 0.1 * _retain_work(digits_class0)
    after = forget_retain_accuracy(result.model, digits_class0, digits, device="cpu")
    assert after["forget_acc"] <= 50 and after["retain_acc"] >= 80, after
    # exactly the planned run, then each rung and the repair as runs of their own (a fresh optimiser, the next seed)
    model = planned.model
    for i, batch in enumerate(r["calibration_batches"]):
        model = _run(digits_mlp, digits_class0, digits, method, model=model, seed=i + 1, calibrate=False, epochs=2,
                     lr=r["lr"], batch_size=batch, schedule="constant").model
    model = _run(digits_mlp, digits_class0, digits, method, model=model, seed=len(r["calibration_batches"]) + 2,
                 calibrate=False, epochs=repair, lr=r["lr"]).model
    assert _same(result.model, model)


def test_a_rung_that_breaks_the_retain_sample_is_undone(digits_mlp, digits_class0, digits, monkeypatch):
    """The first retain probe (of the planned model) is measured; every later one reports a collapse: the first rung
    is undone, the ladder stops, nothing is repaired, and the undone rung's work is still counted."""
    measured = Task.retain_accuracy
    calls = []

    def collapsed_after_the_first(self, model, limit=None):
        calls.append(limit)
        return measured(self, model, limit) if len(calls) == 1 else 10.0

    monkeypatch.setattr(Task, "retain_accuracy", collapsed_after_the_first)
    result = _run(digits_mlp, digits_class0, digits, "finetune")
    assert calls == [512, 512]
    assert result.resolved["calibration_batches"] == [] and result.resolved["calibration_undone"] == 64
    assert result.resolved["calibration_epochs"] == 2
    assert result.cost.backward == (result.resolved["epochs"] + 2) * digits_class0.forget.numel()
    assert _same(result.model, _run(digits_mlp, digits_class0, digits, "finetune", calibrate=False).model)


def test_the_retain_probe_is_the_fixed_sample_unlearn_reports_on(digits_mlp, digits_class0, digits):
    retain = digits_class0.retain
    probe, check = retain_sample(retain, 512), retain_sample(retain, 1024)
    assert probe.numel() == 512 and torch.equal(probe, torch.sort(probe).values)
    assert torch.equal(probe, retain_sample(retain, 512)) and torch.isin(probe, check).all()  # fixed; nested
    assert torch.isin(check, retain).all() and torch.equal(retain_sample(retain, None), retain)
    assert not torch.equal(probe, retain[:512]) and not torch.equal(probe, retain_sample(retain, 512, seed=1))
    # Task.retain_accuracy scores those ids, as forget_retain_accuracy (what `unlearn` prints) does: on an untrained
    # model, whose accuracy differs from one sample to another
    torch.manual_seed(0)
    untrained = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    task = Task(model=untrained, original=untrained, data=digits, request=digits_class0, x=digits.x_train,
                y=digits.y_train, device=torch.device("cpu"), seed=0, recipe=default_recipe("digits"))
    for limit in (100, 512, None):
        shown = forget_retain_accuracy(untrained, digits_class0, digits, device="cpu",
                                       retain_samples=limit or 10**6)["retain_acc"]
        assert task.retain_accuracy(untrained, limit=limit) == shown
    assert task.retain_accuracy(digits_mlp.model, limit=512) > 95


@pytest.mark.parametrize("method", METHODS)
def test_where_the_planned_run_forgets_calibration_changes_nothing(digits_mlp, digits_class0, digits, method):
    options = dict(batch_size=16, budget=0.07)  # small batches: the planned run itself takes the class
    result = _run(digits_mlp, digits_class0, digits, method, **options)
    assert forget_retain_accuracy(result.model, digits_class0, digits, device="cpu")["forget_acc"] <= 50
    assert result.resolved["calibration_epochs"] == 0 and result.resolved["calibration_batches"] == []
    assert _same(result.model, _run(digits_mlp, digits_class0, digits, method, calibrate=False, **options).model)


@pytest.mark.parametrize("spec, options", [("random:0.1", {}), ("relabel:0.1", {}), ("class:0", {"lr": 0.1}),
                                           ("class:0", {"epochs": 12})])
def test_sample_removals_corrections_and_explicit_settings_are_not_calibrated(digits_mlp, digits, spec, options):
    request = uk.build_request(spec, digits, seed=0)
    result = _run(digits_mlp, request, digits, "finetune", **options)
    assert "calibration_epochs" not in result.resolved
    assert _same(result.model, _run(digits_mlp, request, digits, "finetune", calibrate=False, **options).model)
