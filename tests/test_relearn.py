"""The relearning attack: deterministic per seed, recovers a forgotten class from a few of its samples, the control
(fine-tuning on retained samples) does not, and the original needs no step at all."""

import torch

import unlearnkit as uk
from unlearnkit.relearn import RelearnConfig, _samples_in, relearn_split, relearning_attack

RECIPE = uk.TrainConfig(epochs=8, batch_size=32, lr=0.05)


def _retrain(original, request, data):
    return uk.unlearn(original, request, data, method="retrain", device="cpu", recipe=RECIPE, model_name="mlp",
                      model_args={}).model


def test_relearning_attack(tiny):
    original = uk.train(tiny, "mlp", config=RECIPE, seed=0, device="cpu").model
    request = uk.build_request("class:1", tiny, seed=0)
    retrained = _retrain(original, request, tiny)
    config = RelearnConfig(fraction=0.2, lr=0.05, batch_size=8, max_steps=60, check_every=2, tolerance=5.0)

    first = relearning_attack(retrained, original, tiny, request, config, seed=3, device="cpu")
    again = relearning_attack(retrained, original, tiny, request, config, seed=3, device="cpu")
    assert first == again  # deterministic for a seed
    assert first.start_acc == 0.0 and first.recovered and 0 < first.steps <= 60
    assert first.steps % 2 == 0 and first.final_acc >= first.target_acc
    assert first.samples == _samples_in(first.steps, first.relearn_samples, 8)
    assert first.relearn_samples == 10  # 20 % of the 50 samples of class 1

    control = relearning_attack(retrained, original, tiny, request, config, control=True, seed=3, device="cpu")
    assert not control.recovered and control.steps is None and control.final_acc < 5.0
    assert control.curve[-1][0] == 60  # ran to the cap

    unchanged = relearning_attack(original, original, tiny, request, config, seed=3, device="cpu")
    assert unchanged.steps == 0 and unchanged.samples == 0
    # the attacked model is a copy: the inputs are untouched
    assert all(torch.equal(a, b) for a, b in zip(retrained.state_dict().values(),
                                                  _retrain(original, request, tiny).state_dict().values()))


def test_split_and_sample_counts(tiny):
    request = uk.build_request("class:1", tiny, seed=0)
    relearn, held = relearn_split(request, 0.1, seed=0)
    assert relearn.numel() == 5 and held.numel() == 45
    assert set(relearn.tolist()) | set(held.tolist()) == set(request.forget.tolist())
    assert not set(relearn.tolist()) & set(held.tolist())
    whole, measured = relearn_split(request, 1.0, seed=0)
    assert torch.equal(whole, request.forget) and torch.equal(measured, request.forget)
    assert _samples_in(0, 10, 4) == 0 and _samples_in(2, 10, 4) == 8 and _samples_in(3, 10, 4) == 10
    assert _samples_in(4, 10, 4) == 14
