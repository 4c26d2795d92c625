"""The one loop: determinism, learning, frozen entries that do not drift, prune masks, augmentation."""

import torch
import torch.nn.functional as F

from unlearnkit.api import train
from unlearnkit.data import Augment, Source
from unlearnkit.masks import attach_prune_masks, prune_masks
from unlearnkit.models import new_model
from unlearnkit.training import Phase, StopTraining, TrainConfig, accuracy, fit, metered, predict_logits


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_same_seed_same_weights(digits):
    config = TrainConfig(epochs=2, batch_size=64, lr=0.05)
    a = train(digits, "small-cnn", config=config, seed=7, device="cpu")
    b = train(digits, "small-cnn", config=config, seed=7, device="cpu")
    c = train(digits, "small-cnn", config=config, seed=8, device="cpu")
    sa, sb, sc = _state(a.model), _state(b.model), _state(c.model)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_mlp_learns_digits(digits):
    trained = train(digits, "mlp", config=TrainConfig(epochs=15, batch_size=64, lr=0.05), seed=0, device="cpu")
    assert trained.metrics["test_acc"] > 93.0
    assert len(trained.report.history) == 15
    assert {"epoch", "loss", "acc", "test_acc", "seconds", "lr"} <= set(trained.report.history[0])
    assert trained.report.cost.forward >= 15 * digits.n_train


def test_frozen_entries_do_not_drift_under_momentum_and_weight_decay(digits):
    model, _ = new_model("mlp", digits, seed=0)
    before = _state(model)
    gen = torch.Generator().manual_seed(0)
    trainable = {name: torch.rand(p.shape, generator=gen) < 0.3 for name, p in model.named_parameters()}
    del trainable["classifier.bias"]  # unnamed parameters are frozen entirely
    config = TrainConfig(epochs=3, batch_size=64, lr=0.1, momentum=0.9, weight_decay=5e-2)
    fit(model, Phase(Source(digits.x_train, digits.y_train, batch_size=64)), config, trainable=trainable, seed=0)
    after = dict(model.named_parameters())
    for name, p in after.items():
        mask = trainable.get(name, torch.zeros_like(p, dtype=torch.bool))
        assert torch.equal(p.detach()[~mask], before[name][~mask]), name
        if mask.any():
            assert not torch.equal(p.detach()[mask], before[name][mask]), name


def test_prune_masks_survive_training(digits):
    model, _ = new_model("mlp", digits, seed=0)
    masks = {n: torch.rand(p.shape) < 0.5 for n, p in model.named_parameters() if p.ndim > 1}
    attach_prune_masks(model, masks)
    fit(model, Phase(Source(digits.x_train, digits.y_train, batch_size=64)),
        TrainConfig(epochs=2, lr=0.1, weight_decay=1e-2), seed=0)
    params = dict(model.named_parameters())
    for name, mask in prune_masks(model).items():
        assert (params[name].detach()[~mask] == 0).all()
        assert (params[name].detach()[mask] != 0).float().mean() > 0.99


def test_stop_training_and_regulariser(digits):
    model, _ = new_model("mlp", digits, seed=0)
    calls = []

    def loss(m, batch, ctx):
        calls.append(ctx.step)
        if ctx.step == 3:
            raise StopTraining("guard tripped")
        return F.cross_entropy(m(batch.x), batch.y)

    report = fit(model, Phase(Source(digits.x_train, digits.y_train, batch_size=64), loss=loss),
                 TrainConfig(epochs=5), regularizer=lambda m, ctx: 0.0 * sum(p.sum() for p in m.parameters()))
    assert report.stopped_early == "guard tripped" and calls == [0, 1, 2, 3]


def test_phases_can_be_skipped_per_epoch(digits):
    model, _ = new_model("mlp", digits, seed=0)
    seen = []

    def tag(name):
        def loss(m, batch, ctx):
            seen.append((ctx.epoch, name))
            return F.cross_entropy(m(batch.x), batch.y)
        return loss

    src = Source(digits.x_train, digits.y_train, torch.arange(64), batch_size=64)
    fit(
        model,
        [Phase(src, tag("max"), "max", when=lambda e: e < 1), Phase(src, tag("min"), "min")],
        TrainConfig(epochs=3),
    )
    assert seen == [(0, "max"), (0, "min"), (1, "min"), (2, "min")]


def test_augmentation_is_seeded_and_shape_preserving():
    x = torch.rand(16, 3, 8, 8)
    aug = Augment(crop_padding=2, horizontal_flip=True)
    a = aug(x, torch.Generator().manual_seed(0))
    b = aug(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    only_flip = Augment(horizontal_flip=True)(x, torch.Generator().manual_seed(1))
    for i in range(16):  # each image is either itself or its mirror
        assert torch.equal(only_flip[i], x[i]) or torch.equal(only_flip[i], x[i].flip(2))
    crop = Augment(crop_padding=1)(torch.ones(4, 1, 5, 5), torch.Generator().manual_seed(2))
    assert set(crop.unique().tolist()) <= {0.0, 1.0} and crop.sum() >= 4 * 16  # at most one padded row+column


def test_meter_counts_passes(digits):
    model, _ = new_model("mlp", digits, seed=0)
    with metered() as cost:
        logits = predict_logits(model, digits.x_test)
    assert cost.forward == digits.x_test.shape[0] and cost.backward == 0 and cost.seconds > 0
    assert 0 <= accuracy(logits, digits.y_test) <= 100


def test_divergence_rolls_back_to_the_epoch_start(digits):
    model, _ = new_model("mlp", digits, seed=0)
    starts = {}

    def exploding(m, batch, ctx):
        starts.setdefault(ctx.epoch, {k: v.clone() for k, v in m.state_dict().items()})
        logits = m(batch.x)
        loss = F.cross_entropy(logits, batch.y)
        return loss * (float("inf") if ctx.epoch == 1 and ctx.step > 30 else 1.0)

    report = fit(model, Phase(Source(digits.x_train, digits.y_train, batch_size=64), loss=exploding),
                 TrainConfig(epochs=3, lr=0.05))
    assert "non-finite loss" in report.stopped_early and "rolled back" in report.stopped_early
    state = model.state_dict()
    assert all(torch.isfinite(v).all() for v in state.values())
    assert all(torch.equal(state[k], starts[1][k]) for k in state)  # exactly the start of epoch 2
