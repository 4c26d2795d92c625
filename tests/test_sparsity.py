"""Pruning: OMP is exact and equals a direct re-computation; masks survive training, unlearning, one-shot
edits and checkpoints; IMP reaches its target over rounds and rewinds survivors; SynFlow's scores equal a
hand computation, avoid layer collapse and leave the model untouched apart from its mask."""

import copy
import json

import pytest
import torch
import torch.nn as nn

import unlearnkit as uk
from conftest import make_tiny
from unlearnkit import sparsity as sp
from unlearnkit.checkpoint import load_checkpoint
from unlearnkit.cli import main
from unlearnkit.data import Source
from unlearnkit.errors import UnlearnKitError
from unlearnkit.masks import enforce_prune_masks, prune_masks
from unlearnkit.models import build_model
from unlearnkit.training import Phase, TrainConfig, fit


def _mlp(seed=0, width=64, image_size=8, classes=10):
    torch.manual_seed(seed)
    return build_model("mlp", in_channels=1, image_size=image_size, num_classes=classes, width=width)


def _direct_keep(model, names, sparsity):
    """Survivors by sorting every prunable magnitude here (stable: ties go to the earlier entry)."""
    params = dict(model.named_parameters())
    flat = torch.cat([params[n].detach().abs().flatten() for n in names])
    keep = flat.numel() - round(sparsity * flat.numel())
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[torch.argsort(flat, descending=True, stable=True)[:keep]] = True
    out, at = {}, 0
    for n in names:
        out[n] = chosen[at : at + params[n].numel()].view_as(params[n])
        at += params[n].numel()
    return out


# -- which layers --------------------------------------------------------------------------------------
def test_prunable_names_are_conv_and_linear_weights_only():
    resnet = build_model("resnet18", in_channels=3, image_size=8, num_classes=10, width=8)
    names = sp.prunable_names(resnet)
    assert names[-1] == "classifier.weight" and "stem.0.weight" in names
    assert all(n.endswith(".weight") for n in names)
    modules = dict(resnet.named_modules())
    assert all(isinstance(modules[n.rsplit(".", 1)[0]], (nn.Conv2d, nn.Linear)) for n in names)
    assert not any("bn" in n or "bias" in n or "normalize" in n for n in names)
    assert "classifier.weight" not in sp.prunable_names(resnet, include_classifier=False)
    assert all("classifier" not in n for n in sp.prunable_names(resnet, layers="conv"))
    cnn = build_model("small-cnn", in_channels=1, image_size=8, num_classes=3)
    assert sp.prunable_names(cnn) == ["conv1.weight", "conv2.weight", "fc.weight", "classifier.weight"]


def test_nothing_prunable_is_a_clear_error():
    with pytest.raises(UnlearnKitError, match="no convolution weights"):
        sp.prunable_names(_mlp(), layers="conv")
    with pytest.raises(UnlearnKitError, match="no convolution or linear weights besides the classifier"):
        sp.prunable_names(nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 2)), include_classifier=False)
    with pytest.raises(UnlearnKitError, match="unknown layer choice"):
        sp.prunable_names(_mlp(), layers="attention")


# -- OMP ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.95, 0.999])
def test_omp_global_is_exact_and_equals_a_direct_recomputation(sparsity):
    model = _mlp()
    before = copy.deepcopy(model)
    names = sp.prunable_names(model)
    result = sp.prune(model, f"omp:{sparsity}")
    masks = prune_masks(model)
    assert sorted(masks) == sorted(names)
    total = sum(m.numel() for m in masks.values())
    assert total - sum(int(m.sum()) for m in masks.values()) == round(sparsity * total)
    expected = _direct_keep(before, names, sparsity)
    for n in names:
        assert torch.equal(masks[n], expected[n]), n
    # Largest magnitudes kept; pruned weights are exactly zero, the others untouched; biases untouched.
    old = dict(before.named_parameters())
    kept = torch.cat([old[n].detach().abs()[masks[n]] for n in names])
    dropped = torch.cat([old[n].detach().abs()[~masks[n]] for n in names])
    if 0 < dropped.numel() < total:
        assert kept.min() >= dropped.max()
    for n, p in model.named_parameters():
        ref = old[n] * masks[n] if n in masks else old[n]
        assert torch.equal(p, ref), n
    assert result.describe(model)["achieved_sparsity"] == pytest.approx(round(sparsity * total) / total, abs=1e-6)


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.97])
def test_omp_per_layer_hits_the_sparsity_in_each_layer(sparsity):
    model = _mlp()
    before = copy.deepcopy(model)
    sp.prune(model, f"omp:{sparsity}:scope=layer")
    for name, mask in prune_masks(model).items():
        assert mask.numel() - int(mask.sum()) == round(sparsity * mask.numel()), name
        assert torch.equal(mask, _direct_keep(before, [name], sparsity)[name]), name


def test_pruned_entries_stay_pruned_and_pruning_never_revives():
    model = _mlp()
    sp.prune(model, "omp:0.5")
    first = {n: m.clone() for n, m in prune_masks(model).items()}
    with torch.no_grad():  # shuffle the ranking of the survivors
        for n, p in model.named_parameters():
            if n in first:
                p.mul_(torch.rand(p.shape, generator=torch.Generator().manual_seed(1)) * 10 + 0.01)
        enforce_prune_masks(model)
    sp.prune(model, "omp:0.8")
    second = prune_masks(model)
    total = sum(m.numel() for m in second.values())
    assert total - sum(int(m.sum()) for m in second.values()) == round(0.8 * total)
    assert all(not (second[n] & ~first[n]).any() for n in first)  # nothing pruned came back
    with pytest.raises(UnlearnKitError, match="never revives"):
        sp.prune(model, "omp:0.3")


def test_excluding_the_classifier_leaves_it_dense():
    model = _mlp()
    sp.prune(model, "omp:0.9:classifier=false")
    masks = prune_masks(model)
    assert "classifier.weight" not in masks and model.classifier.weight.ne(0).all()


# -- masks hold --------------------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_masked_weights_stay_zero_through_training_with_momentum_and_weight_decay(optimizer):
    data = make_tiny()
    model = build_model("small-cnn", **{**data.model_args(), "channels": (4, 8), "hidden": 16})
    sp.prune(model, "omp:0.8")
    masks = {n: m.clone() for n, m in prune_masks(model).items()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = TrainConfig(epochs=3, batch_size=32, lr=0.05, momentum=0.9, weight_decay=5e-2, optimizer=optimizer)
    fit(
        model,
        Phase(Source(data.x_train, data.y_train, torch.arange(data.n_train), batch_size=32)),
        config,
        device="cpu",
    )
    params = dict(model.named_parameters())
    for n, mask in masks.items():
        assert torch.equal(prune_masks(model)[n], mask)
        assert params[n][~mask].eq(0).all(), n
        assert not torch.equal(params[n][mask], before[n][mask]), f"{n} did not train"
    # A one-shot update (what FF/IU/Top-K perturbations do) is undone by re-applying the masks.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    enforce_prune_masks(model)
    assert all(params[n][~m].eq(0).all() and params[n][m].ne(0).any() for n, m in masks.items())


@pytest.mark.parametrize("method, options", [
    ("finetune", dict(epochs=2, lr=0.1)),
    ("l1_sparse", dict(epochs=2, lr=0.1, alpha=1e-3)),
    ("random_label", dict(epochs=2, lr=0.05)),
    ("salun", dict(epochs=2, lr=0.05)),
    ("grad_ascent", dict(epochs=2, lr=0.01)),
    ("retrain", dict(epochs=2)),
])
def test_unlearning_keeps_the_mask(digits, method, options):
    trained = uk.train(digits, "mlp", config=TrainConfig(epochs=2, batch_size=64), seed=0, device="cpu",
                       model_options={"width": 64})
    sp.prune(trained.model, "omp:0.9")
    masks = {n: m.clone() for n, m in prune_masks(trained.model).items()}
    from unlearnkit.methods import unlearn

    result = unlearn(trained.model, "class:3", digits, method, device="cpu", recipe=trained.config,
                     model_name="mlp", model_args=trained.model_args, **options)
    got = prune_masks(result.model)
    params = dict(result.model.named_parameters())
    for n, mask in masks.items():
        assert torch.equal(got[n].cpu(), mask), n
        assert params[n][~mask].eq(0).all(), n


# -- checkpoints and the CLI -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("sparse") / "original"
    uk.train(digits, "mlp", config=TrainConfig(epochs=3, batch_size=64), seed=0, device="cpu", out=out,
             model_options={"width": 64})
    return out


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_prune_command_writes_a_checkpoint_that_reloads_with_its_mask(capsys, tmp_path, digits_checkpoint):
    out = tmp_path / "pruned"
    code, stdout, err = run(capsys, "prune", "--checkpoint", digits_checkpoint, "--method", "omp", "--sparsity", "0.9",
                            "--out", out, "--finetune-epochs", "1", "--device", "cpu")
    assert code == 0, err
    assert "omp:0.9: sparsity 0.9000" in stdout and f"checkpoint written to {out}" in stdout
    parent = load_checkpoint(digits_checkpoint)
    loaded = load_checkpoint(out)
    manifest = loaded.manifest
    assert manifest["kind"] == "pruned"
    record = manifest["pruning"]
    assert record["method"] == "omp" and record["sparsity"] == 0.9 and record["scope"] == "global"
    assert set(record["layers"]) == set(sp.prunable_names(parent.model))
    assert record["finetune"]["epochs"] == 1
    assert manifest["parent"] == {"path": str(digits_checkpoint), "sha256": parent.manifest["weights"]["sha256"],
                                  "kind": "original"}
    assert manifest["train"] == parent.manifest["train"] and manifest["seed"] == 0
    masks = prune_masks(loaded.model)
    total = sum(m.numel() for m in masks.values())
    assert total - sum(int(m.sum()) for m in masks.values()) == round(0.9 * total)
    params = dict(loaded.model.named_parameters())
    assert all(params[n][~m].eq(0).all() for n, m in masks.items())
    # The pruned checkpoint is an ordinary checkpoint: evaluate and unlearn take it as it is.
    code, stdout, _ = run(capsys, "evaluate", "--checkpoint", out, "--json", "--device", "cpu")
    assert code == 0 and json.loads(stdout)["test_acc"] == manifest["metrics"]["test_acc"]
    code, stdout, err = run(capsys, "unlearn", "--checkpoint", out, "--method", "finetune", "--request", "class:1",
                            "--set", "epochs=1", "--out", tmp_path / "unlearned", "--device", "cpu")
    assert code == 0, err
    unlearned = load_checkpoint(tmp_path / "unlearned").model
    assert all(torch.equal(prune_masks(unlearned)[n], m) for n, m in masks.items())


def test_prune_command_without_finetuning_keeps_the_parents_other_weights(capsys, tmp_path, digits_checkpoint):
    out = tmp_path / "p"
    code, _, err = run(capsys, "prune", "--checkpoint", digits_checkpoint, "--method", "omp", "--sparsity", "0.5",
                       "--scope", "layer", "--exclude-classifier", "--out", out, "--json", "--device", "cpu")
    assert code == 0, err
    parent, pruned = load_checkpoint(digits_checkpoint).model, load_checkpoint(out).model
    masks = prune_masks(pruned)
    assert "classifier.weight" not in masks
    for (n, a), b in zip(parent.named_parameters(), pruned.parameters()):
        assert torch.equal(b, a * masks[n] if n in masks else a), n


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--method", "omp", "--sparsity", "1.0"],
            "option --sparsity of pruning spec must be a finite float in [0, 1); got 1.0",
        ),
        (
            ["--method", "omp", "--sparsity", "-0.1"],
            "option --sparsity of pruning spec must be a finite float in [0, 1)",
        ),
        (["--method", "snip", "--sparsity", "0.5"], "unknown pruning method 'snip'"),
        (["--method", "omp", "--sparsity", "0.5", "--layers", "conv"], "no convolution weights"),
        (["--method", "synflow", "--sparsity", "0.5"], "SynFlow prunes at initialisation"),
        (["--method", "omp", "--sparsity", "0.5", "--set", "rate=0.3"], "option rate does not apply to omp"),
        (["--method", "imp", "--sparsity", "0.5", "--set", "rewind_epoch=7"], "beyond the recipe's 3 epochs"),
        (["--method", "omp", "--sparsity", "0.5", "--at-init"], "--at-init applies to synflow only"),
    ],
)
def test_bad_prune_requests_are_one_line_errors(capsys, tmp_path, digits_checkpoint, argv, message):
    code, _, err = run(
        capsys, "prune", "--checkpoint", digits_checkpoint, "--out", tmp_path / "x", "--device", "cpu", *argv
    )
    assert code == 2 and err.startswith("unlearnkit: error:") and err.count("\n") == 1
    assert message in err
    assert not (tmp_path / "x").exists()


def test_spec_parsing():
    spec = sp.parse_prune_spec("imp:0.9:rate=0.3,rewind_epoch=2,scope=layer")
    assert (spec.method, spec.sparsity, spec.rate, spec.rewind_epoch, spec.scope) == ("imp", 0.9, 0.3, 2, "layer")
    assert sp.parse_prune_spec(str(spec)) == spec
    assert str(sp.parse_prune_spec("OMP:0.95")) == "omp:0.95"
    assert sp.parse_prune_spec("synflow:0.95:iterations=10,classifier=false").classifier is False
    for bad, message in [
        ("omp", "METHOD:SPARSITY"),
        ("omp:lots", "bad sparsity"),
        ("omp:0.5:depth=3", "unknown pruning option"),
        ("imp:0.5:rate=1.5", "option rate of pruning spec must be a finite float in (0, 1)"),
        ("synflow:0.5:iterations=0", "option iterations of pruning spec must be an integer in [1, "),
        ("omp:0.5:scope", "use KEY=VALUE"),
        ("omp:0.5:iterations=5", "does not apply to omp"),
    ]:
        with pytest.raises(UnlearnKitError) as info:
            sp.parse_prune_spec(bad)
        assert message in str(info.value), bad


# -- IMP ---------------------------------------------------------------------------------------------
def test_imp_reaches_its_target_over_rounds_and_rewinds_survivors_to_the_early_weights():
    data = make_tiny()
    config = TrainConfig(epochs=3, batch_size=32, lr=0.05)

    def build():
        torch.manual_seed(3)
        return build_model("mlp", **{**data.model_args(), "width": 32})

    def train(model, after_epoch=None):
        return uk.training.train_classifier(model, data.x_train, data.y_train, torch.arange(data.n_train), config,
                                            seed=0, device="cpu", after_epoch=after_epoch)

    model = build()
    rewind_state, dense = sp.train_with_snapshot(model, train, rewind_epoch=1)
    assert len(dense.history) == 3
    # θ_1 is the same run's weights after one epoch: rerun it and stop there.
    reference = build()
    train(reference, lambda m, record: True)
    assert all(torch.equal(rewind_state[k], v) for k, v in reference.state_dict().items())

    names = sp.prunable_names(model)
    seen = []

    def retrain(m):
        params = dict(m.named_parameters())
        masks = prune_masks(m)
        seen.append({n: masks[n].clone() for n in names})
        for n in names:  # survivors start from θ_1, the pruned ones at zero
            assert torch.equal(params[n], rewind_state[n] * masks[n]), n
        for n, p in params.items():
            if n not in names:
                assert torch.equal(p, rewind_state[n]), n
        return train(m)

    rounds = sp.iterative_magnitude_prune(model, retrain, rewind_state, 0.875, names, rate=0.5)
    assert [r["target_sparsity"] for r in rounds] == [0.5, 0.75, 0.875]
    total = sum(dict(model.named_parameters())[n].numel() for n in names)
    for record, masks in zip(rounds, seen):
        assert total - sum(int(m.sum()) for m in masks.values()) == round(record["target_sparsity"] * total)
    for earlier, later in zip(seen, seen[1:]):
        assert all(not (later[n] & ~earlier[n]).any() for n in names)  # each round only adds zeros
    assert sp.global_sparsity(model, names) == pytest.approx(round(0.875 * total) / total)


def test_imp_schedule():
    assert sp.imp_schedule(0.9, 0.2)[-1] == 0.9 and len(sp.imp_schedule(0.9, 0.2)) == 11
    assert sp.imp_schedule(0.95, 0.95) == [0.95]
    assert sp.imp_schedule(0.0, 0.2) == []


def test_train_with_prune_specs(digits, tmp_path):
    config = TrainConfig(epochs=2, batch_size=64)
    imp = uk.train(digits, "mlp", config=config, seed=0, device="cpu", model_options={"width": 64},
                   prune="imp:0.75:rate=0.5", out=tmp_path / "imp")
    assert [r["target_sparsity"] for r in imp.pruning["rounds"]] == [0.5, 0.75]
    assert [r["round"] for r in imp.report.history] == [0, 0, 1, 1, 2, 2]
    loaded = load_checkpoint(tmp_path / "imp")
    assert loaded.manifest["pruning"]["achieved_sparsity"] == pytest.approx(0.75, abs=1e-4)
    assert sp.global_sparsity(loaded.model) == pytest.approx(0.75, abs=1e-4)
    assert loaded.manifest["metrics"]["test_acc"] > 80
    # SynFlow keeps few hidden units of this small MLP (13 of 64 at 0.9): it trains slower than dense.
    syn = uk.train(digits, "mlp", config=config.replace(epochs=10), seed=0, device="cpu", model_options={"width": 64},
                   prune="synflow:0.9:iterations=20")
    assert syn.pruning["method"] == "synflow" and sp.global_sparsity(syn.model) == pytest.approx(0.9, abs=1e-4)
    assert all(r["round"] == 0 for r in syn.report.history) and syn.metrics["test_acc"] > 80


def test_checkpoint_replay_reproduces_the_recorded_run(digits_checkpoint):
    checkpoint = load_checkpoint(digits_checkpoint)
    data = checkpoint.dataset()
    recipe = TrainConfig.from_dict(checkpoint.manifest["train"])
    trainer = sp.ClassifierTrainer(data, recipe, seed=0, device="cpu")
    replayed = sp.replay_rewind_state(checkpoint.manifest["model"], 0, trainer, recipe.epochs)
    assert all(torch.equal(replayed[k], v) for k, v in checkpoint.model.state_dict().items())


def test_prune_command_imp_and_omp_with_rewinding(capsys, tmp_path, digits_checkpoint):
    code, stdout, err = run(
        capsys,
        "prune",
        "--checkpoint",
        digits_checkpoint,
        "--method",
        "imp",
        "--sparsity",
        "0.64",
        "--set",
        "rate=0.4",
        "--set",
        "epochs=1",
        "--out",
        tmp_path / "imp",
        "--json",
        "--device",
        "cpu",
    )
    assert code == 0, err
    record = json.loads(stdout)["pruning"]
    assert [r["target_sparsity"] for r in record["rounds"]] == [0.4, 0.64]
    assert record["rewind_epoch"] == 1 and all(r["epochs"] == 1 for r in record["rounds"])
    code, stdout, err = run(capsys, "prune", "--checkpoint", digits_checkpoint, "--method", "omp", "--sparsity", "0.8",
                            "--set", "rewind_epoch=0", "--out", tmp_path / "lt", "--json", "--device", "cpu")
    assert code == 0, err
    record = json.loads(stdout)
    assert len(record["pruning"]["rounds"]) == 1 and record["pruning"]["rewind_epoch"] == 0
    assert record["metrics"]["pruned_test_acc"] is None


# -- SynFlow -----------------------------------------------------------------------------------------
def test_synflow_scores_equal_a_hand_computation():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    w1, b1, w2 = (t.detach().clone() for t in (net[0].weight, net[0].bias, net[2].weight))
    assert (w1 < 0).any() and (w2 < 0).any()  # the signs matter to the check
    names = ["0.weight", "2.weight"]

    def expected(w1, w2):
        hidden = w1.abs().sum(1) + b1.abs()  # |W1| 1 + |b1|: every hidden unit's flow from the all-ones input
        return {"0.weight": w1.abs() * w2.abs().sum(0)[:, None], "2.weight": w2.abs() * hidden[None, :]}

    scores = sp.synflow_scores(net, names, (4,))
    for n in names:
        torch.testing.assert_close(scores[n], expected(w1, w2)[n], rtol=1e-12, atol=0)
    # With an entry pruned, its score is 0 and the flow through it is gone from the others' scores.
    mask = torch.ones_like(w1, dtype=torch.bool)
    mask[1, 2] = False
    sp.attach_prune_masks(net, {"0.weight": mask})
    scores = sp.synflow_scores(net, names, (4,))
    for n in names:
        torch.testing.assert_close(scores[n], expected(w1 * mask, w2)[n], rtol=1e-12, atol=0)
    assert scores["0.weight"][1, 2] == 0


def test_synflow_avoids_layer_collapse_where_magnitude_pruning_at_init_does_not():
    torch.manual_seed(0)
    model = build_model("small-cnn", in_channels=1, image_size=28, num_classes=10)
    names = sp.prunable_names(model)
    omp = copy.deepcopy(model)
    sp.prune(omp, "omp:0.99")
    assert sp.layer_sparsity(omp, names)["fc.weight"]["sparsity"] == 1.0  # the widest layer disappears
    sp.prune(model, "synflow:0.99", input_shape=(1, 28, 28))
    layers = sp.layer_sparsity(model, names)
    total = sum(r["numel"] for r in layers.values())
    assert sum(r["pruned"] for r in layers.values()) == round(0.99 * total)
    assert all(r["pruned"] < r["numel"] for r in layers.values()), layers


def test_synflow_leaves_weights_signs_and_state_untouched_apart_from_the_mask():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3)
    )
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
        model[1].weight.uniform_(-1, 1)
    model.train()
    before = copy.deepcopy(model.state_dict())
    sp.prune(model, "synflow:0.7:iterations=10", input_shape=(2, 5, 5))
    masks = prune_masks(model)
    assert set(masks) == {"0.weight", "4.weight"}
    assert model.training and next(model.parameters()).dtype == torch.float32
    for key, value in model.state_dict().items():
        if key.endswith(sp.PRUNE_SUFFIX):
            continue
        name = key
        expected = before[key] * masks[name] if name in masks else before[key]
        assert torch.equal(value, expected), key
    total = sum(m.numel() for m in masks.values())
    assert total - sum(int(m.sum()) for m in masks.values()) == round(0.7 * total)


def test_train_command_with_prune(capsys, tmp_path):
    out = tmp_path / "lt"
    code, stdout, err = run(
        capsys,
        "train",
        "--dataset",
        "digits",
        "--model",
        "mlp",
        "--epochs",
        "2",
        "--prune",
        "omp:0.5",
        "--out",
        out,
        "--device",
        "cpu",
    )
    assert code == 0, err
    assert "pruned by omp:0.5:rewind_epoch=1: sparsity 0.5000" in stdout
    manifest = load_checkpoint(out).manifest
    assert manifest["kind"] == "original" and manifest["pruning"]["rewind_epoch"] == 1
    assert len(manifest["pruning"]["rounds"]) == 1
    code, _, err = run(capsys, "train", "--dataset", "digits", "--prune", "magnitude:0.5", "--out", tmp_path / "x")
    assert code == 2 and "unknown pruning method 'magnitude'" in err and not (tmp_path / "x").exists()
