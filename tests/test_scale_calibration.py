"""The scale calibration of one-shot steps and perturbations (``ScaleCalibrated``, docs/methods.md): for a removal
it doubles the configured step (or noise) until the forget accuracy on a probe has moved half-way to a retrained
model's, and the result is exactly the method's result at that multiple of its configured strength."""

import pytest
import torch

import unlearnkit as uk
from unlearnkit.methods import forget_retain_accuracy, unlearn


def _run(trained, request, digits, method, **options):
    result = unlearn(trained.model, request, digits, method, device="cpu", seed=0,
                     original_test_acc=trained.metrics["test_acc"], **options)
    return result, forget_retain_accuracy(result.model, request, digits, device="cpu")


def _max_diff(a, b) -> float:
    return max(float((p - q).abs().max()) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("method, scale_option, base", [("warnecke_first", "tau", 1.0),
                                                        ("influence", "alpha", 0.02)])
def test_a_step_that_does_nothing_is_doubled_until_the_class_moves_half_way(digits_mlp, digits_class0, digits, method,
                                                                            scale_option, base):
    plain, plain_acc = _run(digits_mlp, digits_class0, digits, method, calibrate=False)
    assert plain_acc["forget_acc"] > 95  # the configured step leaves the class in place
    calibrated, acc = _run(digits_mlp, digits_class0, digits, method)
    scale = calibrated.resolved["calibration_scale"]
    assert scale > 1 and acc["forget_acc"] <= 50 and acc["retain_acc"] > 90, (scale, acc)
    # it stopped at the first doubling that reached half-way: half the scale did not
    _, half = _run(digits_mlp, digits_class0, digits, method, calibrate=False, **{scale_option: base * scale / 2})
    assert half["forget_acc"] > 50
    # and the calibrated model is the configured step at that multiple (applied in increments: float rounding only)
    once, _ = _run(digits_mlp, digits_class0, digits, method, calibrate=False, **{scale_option: base * scale})
    assert _max_diff(calibrated.model, once.model) < 1e-5
    assert calibrated.notes["step_norm"] == pytest.approx(once.notes["step_norm"], rel=1e-6)


def test_max_scale_bounds_the_doubling(digits_mlp, digits_class0, digits):
    result, acc = _run(digits_mlp, digits_class0, digits, "warnecke_first", max_scale=4)
    assert result.resolved["calibration_scale"] == 4 and acc["forget_acc"] > 95


def test_a_perturbation_is_redrawn_from_the_original_at_the_larger_noise(digits_mlp, digits_class0, digits):
    calibrated, acc = _run(digits_mlp, digits_class0, digits, "topk_perturb")
    scale = calibrated.resolved["calibration_scale"]
    plain, plain_acc = _run(digits_mlp, digits_class0, digits, "topk_perturb", calibrate=False)
    assert scale > 1 and plain_acc["forget_acc"] > 50 >= acc["forget_acc"], (scale, plain_acc, acc)
    # the same selection, draws and repair at sigma x scale: bitwise the same model
    again, _ = _run(digits_mlp, digits_class0, digits, "topk_perturb", calibrate=False, sigma=scale)
    assert all(torch.equal(p, q) for p, q in zip(calibrated.model.parameters(), again.model.parameters()))
    # each try paid its repair: the calibrated run did (tries) x the repair's backward passes, plus the importance
    tries = int(torch.log2(torch.tensor(scale))) + 1
    repair = plain.cost.backward - digits_class0.forget.numel()
    assert calibrated.cost.backward == digits_class0.forget.numel() + tries * repair


def test_corrections_and_explicit_opt_outs_are_not_calibrated(digits_mlp, digits_class0, digits):
    relabel = uk.build_request("relabel:0.1", digits, seed=0)  # what a retrained model scores on it is not known
    result = unlearn(digits_mlp.model, relabel, digits, "warnecke_first", device="cpu", seed=0,
                     original_test_acc=digits_mlp.metrics["test_acc"])
    assert "calibration_scale" not in result.resolved
    off, _ = _run(digits_mlp, digits_class0, digits, "warnecke_second", calibrate=False)
    assert "calibration_scale" not in off.resolved


def test_saps_takes_the_calibrated_step_for_removals_and_masked_sgd_for_corrections(digits_mlp, digits_class0, digits):
    removal, acc = _run(digits_mlp, digits_class0, digits, "saps")
    assert removal.resolved["update"] == "first" and removal.resolved["calibration_scale"] > 1
    assert acc["forget_acc"] <= 50  # masked SGD on D_r alone left the class at 100 %
    relabel = uk.build_request("relabel:0.1", digits, seed=0)
    correction = unlearn(digits_mlp.model, relabel, digits, "saps", device="cpu", seed=0, epochs=1,
                         original_test_acc=digits_mlp.metrics["test_acc"])
    assert correction.resolved["update"] == "sgd" and "calibration_scale" not in correction.resolved
