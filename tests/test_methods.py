"""Every method moves forget accuracy the right way while retain accuracy stays within a stated bound;
masks truly freeze; FF leaves unrelated class rows alone; the registry validates options."""

import pytest
import torch

import unlearnkit as uk
from unlearnkit.errors import UnlearnKitError
from unlearnkit.methods import METHODS, unlearn
from unlearnkit.methods.salun import saliency_mask
from unlearnkit.training import accuracy, predict_logits

RECIPE = uk.TrainConfig(epochs=30, batch_size=64, lr=0.05)

# Settings under which each method acts visibly on digits (148 forget samples: a few batches per epoch).
# The Fashion-MNIST defaults were chosen by the committed sweep (benchmarks/results/fmnist-sweep).
CLASS_REQUEST_SETTINGS = {
    "finetune": dict(epochs=10, lr=0.1, retain_per_forget=None, batch_size=32),
    "grad_ascent": dict(epochs=5, lr=0.003, batch_size=32),
    "random_label": dict(epochs=5, lr=0.02, batch_size=32),
    "l1_sparse": dict(epochs=10, lr=0.05, alpha=1e-3, retain_per_forget=None, batch_size=32),
    "salun": dict(epochs=5, lr=0.02, batch_size=32),
    "scrub": dict(epochs=10, max_epochs=5, lr=4e-3, batch_size=32, retain_per_forget=3.0, temperature=2.0, kl_cap=None),
    "boundary_shrink": dict(epochs=5, lr=0.005, batch_size=32),
}
# How far each method must push forget accuracy down from the original's 100 %, and how much retain
# accuracy it may lose, on class:3.
MIN_FORGET_DROP = {"grad_ascent": 20.0}
MAX_RETAIN_LOSS = 5.0


@pytest.fixture(scope="module")
def setup(digits):
    trained = uk.train(digits, "mlp", config=RECIPE, seed=0, device="cpu")
    return trained


def _accs(model, data, request):
    x, y = request.training_data(data)
    forget = accuracy(predict_logits(model, x[request.forget]), y[request.forget])
    retain = accuracy(predict_logits(model, x[request.retain]), y[request.retain])
    return forget, retain


@pytest.mark.parametrize("method", sorted(CLASS_REQUEST_SETTINGS))
def test_method_forgets_a_class_and_keeps_the_rest(setup, digits, method):
    request = uk.build_request("class:3", digits, seed=0)
    before_forget, before_retain = _accs(setup.model, digits, request)
    result = unlearn(setup.model, request, digits, method, device="cpu",
                     original_test_acc=setup.metrics["test_acc"], **CLASS_REQUEST_SETTINGS[method])
    forget, retain = _accs(result.model, digits, request)
    assert forget <= before_forget - MIN_FORGET_DROP.get(method, 90.0), (forget, before_forget)
    assert retain >= before_retain - MAX_RETAIN_LOSS, (retain, before_retain)
    assert result.cost.seconds > 0 and result.cost.forward > 0
    # The original model is never modified.
    assert _accs(setup.model, digits, request) == (before_forget, before_retain)


@pytest.mark.parametrize("method", ["finetune", "random_label", "salun", "l1_sparse"])
def test_random_forgetting_moves_forget_accuracy_down(setup, digits, method):
    request = uk.build_request("random:0.3", digits, seed=0)
    before_forget, before_retain = _accs(setup.model, digits, request)
    result = unlearn(setup.model, request, digits, method, device="cpu", **CLASS_REQUEST_SETTINGS[method])
    forget, retain = _accs(result.model, digits, request)
    assert forget < before_forget
    assert retain >= before_retain - MAX_RETAIN_LOSS


def test_retrain_equals_training_from_scratch_on_the_retain_set(setup, digits):
    request = uk.build_request("random:0.1", digits, seed=0)
    result = unlearn(setup.model, request, digits, "retrain", seed=5, device="cpu", recipe=RECIPE,
                     model_name="mlp", model_args=setup.model_args)
    from unlearnkit.models import new_model
    from unlearnkit.training import train_classifier

    scratch, _ = new_model("mlp", digits, 5)
    train_classifier(scratch, digits.x_train, digits.y_train, request.retain, RECIPE, seed=5, device="cpu")
    for (name, a), b in zip(result.model.state_dict().items(), scratch.state_dict().values()):
        assert torch.equal(a, b), name


def test_salun_freezes_weights_outside_its_mask(setup, digits):
    request = uk.build_request("class:3", digits, seed=0)
    result = unlearn(setup.model, request, digits, "salun", device="cpu", mask_fraction=0.3, epochs=3, lr=0.05)
    # Recompute the saliency mask at the original weights and check every unselected entry is untouched,
    # despite momentum 0.9 and weight decay 5e-4 in the optimiser.
    from unlearnkit.methods.base import Task

    x, y = request.training_data(digits)
    import copy

    task = Task(copy.deepcopy(setup.model), setup.model, digits, request, x, y, torch.device("cpu"), 0, RECIPE)
    mask = saliency_mask(task, 0.3)
    original = dict(setup.model.named_parameters())
    changed = 0
    for name, param in result.model.named_parameters():
        assert torch.equal(param.detach()[~mask[name]], original[name].detach()[~mask[name]]), name
        changed += int((param.detach() != original[name].detach())[mask[name]].sum())
    assert changed > 0
    assert result.notes["mask_fraction"] == pytest.approx(0.3, abs=1e-4)


def test_random_labels_are_never_the_true_label(digits):
    from unlearnkit.methods.base import random_wrong_labels

    ids = torch.arange(digits.n_train)
    labels = random_wrong_labels(digits.y_train, ids, 10, torch.Generator().manual_seed(0))
    assert (labels != digits.y_train).all()
    assert len(labels.unique()) == 10


def test_grad_ascent_guard_stops_at_the_floor(setup, digits):
    request = uk.build_request("class:3", digits, seed=0)
    result = unlearn(setup.model, request, digits, "grad_ascent", device="cpu", epochs=50, lr=0.01,
                     batch_size=16, check_every=1, target_forget_acc=50.0)
    assert "reached the floor 50.0" in result.notes["stopped_early"]
    forget, retain = _accs(result.model, digits, request)
    assert forget <= 50.0 and retain > 50.0


def test_unknown_method_and_bad_options(setup, digits):
    request = uk.build_request("class:3", digits)
    with pytest.raises(UnlearnKitError, match="unknown method 'magic'"):
        unlearn(setup.model, request, digits, "magic")
    with pytest.raises(UnlearnKitError, match="has no option"):
        unlearn(setup.model, request, digits, "finetune", learning_rate=0.1)
    with pytest.raises(UnlearnKitError,
                       match=r"option lr of finetune must be a finite float in \(0, 10\] or null; got 'fast'"):
        unlearn(setup.model, request, digits, "finetune", lr="fast")
    with pytest.raises(UnlearnKitError, match="needs the architecture"):
        unlearn(setup.model, request, digits, "retrain")
    for method in ("finetune", "random_label", "saps"):  # used to be read as "one retain sample"
        with pytest.raises(UnlearnKitError, match="option retain_per_forget of .* must be a finite float in \\(0"):
            unlearn(setup.model, request, digits, method, retain_per_forget=-1.0, device="cpu")


def test_every_method_is_documented():
    for name, info in METHODS.items():
        described = info.describe()
        assert described["summary"] and described["touches"]
        for option, meta in described["config"].items():
            assert meta["help"], f"{name}.{option} has no help text"


def test_scrub_kl_cap_prevents_collapse(setup, digits):
    """At lr 0.05 the uncapped max-steps destroy the model; the cap keeps retain accuracy and still forgets."""
    request = uk.build_request("class:3", digits, seed=0)
    common = dict(epochs=10, max_epochs=5, lr=0.05, batch_size=32, retain_per_forget=3.0, device="cpu")
    uncapped = _accs(unlearn(setup.model, request, digits, "scrub", kl_cap=None, **common).model, digits, request)
    capped = _accs(unlearn(setup.model, request, digits, "scrub", kl_cap=2.0, **common).model, digits, request)
    assert uncapped[1] < 50  # retain accuracy collapsed
    # forgets at least half of the class, as the defaults test asks (tests/test_defaults.py). Where it lands is
    # chaotic: over originals and unlearning seeds 0-2 the capped run left 0-68.5 % (8 of 9 below 40 %) with retain
    # 97.4-99.4 %, and this seed gave 27.4 % on an Intel CPU where an AMD one gave below 20 %
    # (python benchmarks/scrub_cap_spread.py, benchmarks/results/scrub-cap)
    assert capped[0] < 50 and capped[1] > 95
