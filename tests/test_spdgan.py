"""SPD-GAN: outputs stay within ε for any input and any weights; training records its losses and keeps labels;
saved generators round-trip and refuse the wrong data/request/original; the unlearning degree, FR and MRR equal
hand computations; the CLI trains a generator and `evaluate --spdgan` reuses it."""

import json

import pytest
import torch
import torch.nn.functional as F

import unlearnkit as uk
from conftest import make_tiny
from unlearnkit.cli import main
from unlearnkit.errors import UnlearnKitError
from unlearnkit.evaluation import Outputs, evaluate
from unlearnkit.spdgan import Generator, SpdGanConfig, load_spdgan, perturb, save_spdgan, train_for_request

RECIPE = uk.TrainConfig(epochs=15, batch_size=64, lr=0.05)


@pytest.fixture(scope="module")
def original(digits):
    return uk.train(digits, "mlp", config=RECIPE, seed=0, device="cpu", model_options={"width": 64})


@pytest.fixture(scope="module")
def gan(original, digits):
    request = uk.build_request("class:3", digits, seed=0)
    return train_for_request(original.model, digits, request, SpdGanConfig(epsilon=0.1, epochs=3, width=8),
                             seed=0, device="cpu")


@pytest.mark.parametrize("epsilon", [0.01, 0.1, 0.5])
def test_generator_stays_within_epsilon_for_any_input_and_weights(epsilon):
    gen = torch.Generator().manual_seed(1)
    g = Generator(channels=3, epsilon=epsilon, width=8, noise_channels=2)
    with torch.no_grad():
        for p in g.parameters():  # huge weights saturate tanh: the budget must still hold
            p.copy_(torch.randn(p.shape, generator=gen) * 50)
    x = torch.cat([torch.rand(16, 3, 9, 9, generator=gen), torch.zeros(2, 3, 9, 9), torch.ones(2, 3, 9, 9)])
    z = torch.randn(20, 2, 9, 9, generator=gen) * 100
    with torch.no_grad():
        out = g(x, z)
    assert float((out - x).abs().max()) <= epsilon + 1e-6
    assert float((out - x).abs().max()) >= 0.9 * epsilon  # saturated: it does use the budget
    assert out.min() >= 0 and out.max() <= 1
    # perturb() (seeded noise, batched) obeys the same bound and is reproducible.
    a, b = perturb(g, x, seed=3, batch_size=7), perturb(g, x, seed=3)
    assert torch.equal(a, b) and float((a - x).abs().max()) <= epsilon + 1e-6
    assert not torch.equal(a, perturb(g, x, seed=4))


def test_training_keeps_labels_records_losses_and_counts_cost(gan, original, digits):
    history = gan.manifest["history"]
    assert len(history) == 3
    for key in ("d_loss", "adversarial", "closeness", "label", "diversity", "kept_label", "mean_delta", "max_delta"):
        assert key in history[-1]
    assert history[-1]["kept_label"] > 90
    assert 0 < history[-1]["mean_delta"] <= history[-1]["max_delta"] <= 1.0 + 1e-6
    request = uk.build_request("class:3", digits, seed=0)
    x, _ = request.training_data(digits)
    images = gan.perturb_forget(digits, request, original=original.model)
    assert images.shape == x[request.forget].shape
    assert float((images - x[request.forget]).abs().max()) <= 0.1 + 1e-6
    assert gan.manifest["cost"]["forward_samples"] >= 3 * request.forget.numel()
    assert original.model.training is False and all(p.requires_grad for p in original.model.parameters())


def test_discriminator_learns_when_the_two_sets_can_be_told_apart(original, digits):
    """The regression for the dead discriminator: with the adversarial term off the generator is free to add large
    noise (ε = 0.3, pushed out by the diversity term), so real and generated images are separable and the
    discriminator's loss must fall clearly below chance (2 ln 2 = 1.386); a fresh probe must also tell them apart.
    At the old setting (the discriminator at the generator's learning rate) the same run stays at chance."""
    request = uk.build_request("class:3", digits, seed=0)
    options = dict(epsilon=0.3, epochs=30, batch_size=16, width=8, adversarial_weight=0.0, probe_steps=150)
    learned = train_for_request(original.model, digits, request, SpdGanConfig(**options), seed=0, device="cpu")
    history = learned.manifest["history"]
    assert history[-1]["d_loss"] < 1.0, [h["d_loss"] for h in history]
    assert history[-1]["probe_accuracy"] > 75  # 50 = chance
    old = train_for_request(original.model, digits, request, SpdGanConfig(**options, d_lr=2e-4), seed=0, device="cpu")
    assert old.manifest["history"][-1]["d_loss"] > 1.3


def test_training_shows_progress_and_losses(original, digits, capsys):
    request = uk.build_request("class:5", digits, seed=0)
    train_for_request(original.model, digits, request, SpdGanConfig(epochs=2, width=4), seed=0, device="cpu", echo=True)
    out = capsys.readouterr().out
    assert "spdgan epoch 2/2" in out and "adversarial" in out and "label kept" in out


def test_save_load_round_trip_and_refusals(gan, original, digits, tmp_path):
    request = uk.build_request("class:3", digits, seed=0)
    path = save_spdgan(tmp_path / "g", gan)
    loaded = load_spdgan(path)
    assert loaded.epsilon == 0.1 and loaded.manifest["request"]["spec"] == "class:3"
    assert torch.equal(loaded.perturb_forget(digits, request), gan.perturb_forget(digits, request))
    with pytest.raises(UnlearnKitError, match="trained for request class:3"):
        loaded.perturb_forget(digits, uk.build_request("class:4", digits, seed=0))
    other = uk.train(digits, "mlp", config=RECIPE.replace(epochs=1), seed=1, device="cpu", model_options={"width": 64})
    with pytest.raises(UnlearnKitError, match="different original"):
        loaded.perturb_forget(digits, request, original=other.model)
    with pytest.raises(UnlearnKitError, match="trained on data set digits"):
        loaded.check(make_tiny(), request)
    weights = path / "generator.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(UnlearnKitError, match="does not match the SHA-256"):
        load_spdgan(path)
    with pytest.raises(UnlearnKitError, match="not an SPD-GAN directory"):
        load_spdgan(tmp_path / "nowhere")


def test_bad_options():
    with pytest.raises(UnlearnKitError, match=r"option epsilon of SPD-GAN must be a finite float in \(0, 1\]"):
        SpdGanConfig(epsilon=0.0)
    with pytest.raises(UnlearnKitError, match="SPD-GAN has no option"):
        SpdGanConfig.from_dict({"epsilom": 0.1})
    with pytest.raises(UnlearnKitError, match=r"option epochs of SPD-GAN must be an integer in \[0, 10000\]; got 1.5"):
        SpdGanConfig.from_dict({"epochs": 1.5})


# -- metrics by hand --------------------------------------------------------------------------------------
def _one_hot_outputs(data, train_pred, test_pred=None, perturbed_pred=None) -> Outputs:
    c = data.num_classes
    probs = lambda pred: F.one_hot(pred, c).float() * 0.9 + 0.1 / c
    test_pred = data.y_test if test_pred is None else test_pred
    return Outputs(train=probs(train_pred), test=probs(test_pred),
                   perturbed_forget=None if perturbed_pred is None else probs(perturbed_pred))


def test_forgetting_rate_and_memory_retention_rate_by_hand():
    data = make_tiny(n_train=200, n_test=40, classes=4)
    request = uk.build_request("random:0.2", data, seed=0)  # 40 forget, 160 retain
    y = data.y_train
    f, r = request.forget, request.retain
    wrong = (y + 1) % 4

    def predictions(forget_right: int, retain_right: int):
        pred = wrong.clone()
        pred[f[:forget_right]] = y[f[:forget_right]]
        pred[r[:retain_right]] = y[r[:retain_right]]
        return pred

    original = evaluate(_one_hot_outputs(data, predictions(36, 152)), request, data)  # 90 % on D_f, 95 % on D_r
    unlearned = evaluate(_one_hot_outputs(data, predictions(12, 144)), request, data, original=original)  # 30 %, 90 %
    assert unlearned["FR"] == pytest.approx((90 - 30) / 90)
    assert unlearned["MRR"] == pytest.approx(90 / 95)
    same = evaluate(_one_hot_outputs(data, predictions(36, 152)), request, data, original=original)
    assert same["FR"] == pytest.approx(0.0) and same["MRR"] == pytest.approx(1.0)


def test_unlearning_degree_by_hand_on_fixed_perturbed_predictions():
    data = make_tiny(n_train=100, n_test=20, classes=5)
    request = uk.build_request("random:0.2", data, seed=0)  # 20 forget samples
    y_f = data.y_train[request.forget]
    wrong = (y_f + 1) % 5

    def outputs(perturbed_right: int):
        pred = wrong.clone()
        pred[:perturbed_right] = y_f[:perturbed_right]
        return _one_hot_outputs(data, data.y_train, perturbed_pred=pred)

    original = evaluate(outputs(19), request, data)  # 95 % on G(D_f)
    retrained = evaluate(outputs(14), request, data, original=original)  # 70 %
    unlearned = evaluate(outputs(16), request, data, original=original, reference=retrained)  # 80 %
    assert original["spd_acc"] == pytest.approx(95.0)
    assert unlearned["UD_acc"] == pytest.approx(95 - 80)
    assert unlearned["UD_acc_retrain"] == pytest.approx(95 - 70) == retrained["UD_acc"]
    assert unlearned["gap_UD_acc"] == pytest.approx(10.0)
    # Losses: a right one-hot-ish prediction has p_y = 0.92, a wrong one 0.02.
    import math
    loss = lambda right: -(right * math.log(0.92) + (20 - right) * math.log(0.02)) / 20
    assert unlearned["spd_loss"] == pytest.approx(loss(16))
    assert unlearned["UD_loss"] == pytest.approx(loss(16) - loss(19))
    assert unlearned["UD_loss_retrain"] == pytest.approx(loss(14) - loss(19))


def test_unlearning_degree_on_a_fixed_generator_equals_direct_computation(original, digits):
    request = uk.build_request("random:0.2", digits, seed=0)
    torch.manual_seed(7)
    g = Generator(channels=1, epsilon=0.3, width=4, noise_channels=1)  # fixed (untrained) weights
    unlearned = uk.unlearn(original.model, request, digits, "finetune", device="cpu", epochs=3, lr=0.1)
    ev = evaluate(
        unlearned.model,
        request,
        digits,
        original=original.model,
        spdgan=perturb(g, digits.x_train[request.forget], seed=0),
    )

    x, y = request.training_data(digits)
    images = perturb(g, x[request.forget], seed=0)
    assert float((images - x[request.forget]).abs().max()) > 0.05  # really perturbed
    with torch.no_grad():
        lo, lu = original.model(images).double(), unlearned.model(images).double()
    y_f = y[request.forget]
    acc = lambda logits: 100.0 * float((logits.argmax(1) == y_f).double().mean())
    assert ev["spd_acc"] == pytest.approx(acc(lu), abs=1e-4)
    assert ev["UD_acc"] == pytest.approx(acc(lo) - acc(lu), abs=1e-4)
    assert ev["UD_loss"] == pytest.approx(
        float(F.cross_entropy(lu, y_f) - F.cross_entropy(lo, y_f)), rel=1e-4, abs=1e-5
    )
    with pytest.raises(UnlearnKitError, match="perturbed forget images for a forget set"):
        evaluate(unlearned.model, request, digits, spdgan=images[:-1])


# -- the command line ------------------------------------------------------------------------------------
def test_cli_trains_a_generator_and_evaluate_reuses_it(capsys, tmp_path):
    o, u, r, g = (str(tmp_path / n) for n in ("o", "u", "r", "g"))
    run = lambda *argv: (main(list(argv)), capsys.readouterr())
    assert run("train", "--dataset", "digits", "--model", "mlp", "--epochs", "8", "--out", o)[0] == 0
    code, (out, err) = run("spdgan", "train", "--checkpoint", o, "--request", "class:3", "--out", g,
                           "--epsilon", "0.2", "--epochs", "2", "--set", "width=4")
    assert code == 0, err
    assert "spdgan epoch 2/2" in out and f"generator written to {g}" in out
    code, (out, err) = run("spdgan", "show", g)
    assert code == 0 and "ε 0.2" in out and "class:3" in out
    assert run("unlearn", "--checkpoint", o, "--method", "topk_perturb", "--request", "class:3",
               "--set", "fraction=0.02", "--set", "epochs=0", "--out", u)[0] == 0
    assert run("unlearn", "--checkpoint", o, "--method", "retrain", "--request", "class:3", "--out", r)[0] == 0
    code, (out, err) = run("evaluate", "--checkpoint", u, "--reference", r, "--spdgan", g, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert {"spd_acc", "spd_loss", "UD_acc", "UD_loss", "UD_acc_retrain", "gap_UD_acc", "FR", "MRR"} <= set(report)
    assert report["UD_acc_retrain"] > 50  # the retrained model never saw class 3
    code, (_, err) = run("evaluate", "--checkpoint", u, "--request", "class:4", "--spdgan", g)
    assert code == 2 and "trained for request class:3" in err and err.count("\n") == 1
    code, (_, err) = run(
        "spdgan", "train", "--checkpoint", o, "--request", "class:3", "--out", g + "2", "--epsilon", "2"
    )
    assert code == 2 and "option --epsilon of SPD-GAN must be a finite float in (0, 1]" in err
