"""Top-K / Random-k / global perturbation: exactly the chosen entries move, importances equal brute force,
selections are seeded, pruned entries are never chosen, and the noise has the stated scale."""


import pytest
import torch
import torch.nn.functional as F

import unlearnkit as uk
from unlearnkit import selection
from unlearnkit.errors import UnlearnKitError
from unlearnkit.masks import attach_prune_masks
from unlearnkit.methods import unlearn
from unlearnkit.methods.perturb import contrasted, importance
from unlearnkit.training import accuracy, predict_logits

RECIPE = uk.TrainConfig(epochs=15, batch_size=64, lr=0.05)


@pytest.fixture(scope="module")
def trained(digits):
    return uk.train(digits, "mlp", config=RECIPE, seed=0, device="cpu", model_options={"width": 64})


def _changed(before, after) -> dict[str, torch.Tensor]:
    old = dict(before.named_parameters())
    return {n: p.detach() != old[n].detach() for n, p in after.named_parameters()}


@pytest.mark.parametrize("kind", ["output", "loss"])
def test_importance_equals_per_sample_brute_force(digits, kind):
    torch.manual_seed(0)
    model = uk.build_model("mlp", **digits.model_args(), width=16, depth=1).double()
    ids = torch.arange(0, 40, 3)
    x, y = digits.x_train.double(), digits.y_train
    got = importance(model, x, y, ids, kind, batch_size=1)
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in ids.tolist():
        model.zero_grad()
        out = model(x[i : i + 1])
        (out.pow(2).sum() if kind == "output" else F.cross_entropy(out, y[i : i + 1])).backward()
        for n, p in model.named_parameters():
            expected[n] += p.grad.abs() / ids.numel()
    for n in expected:
        torch.testing.assert_close(got[n], expected[n], rtol=1e-10, atol=1e-12)
    # A batch of all samples is the magnitude of the mean gradient (SalUn's saliency for kind="loss").
    whole = importance(model, x, y, ids, kind, batch_size=ids.numel())
    model.zero_grad()
    out = model(x[ids])
    (out.pow(2).sum(1).mean() if kind == "output" else F.cross_entropy(out, y[ids])).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(whole[n], p.grad.abs(), rtol=1e-10, atol=1e-12)


def test_contrast_is_the_stated_ratio():
    f = {"a": torch.tensor([1.0, 2.0, 3.0]), "b": torch.tensor([[4.0]])}
    r = {"a": torch.tensor([1.0, 0.0, 3.0]), "b": torch.tensor([[0.0]])}
    floor = 0.5 * (1 + 0 + 3 + 0) / 4
    got = contrasted(f, r, 0.5)
    assert torch.equal(got["a"], torch.tensor([1 / (1 + floor), 2 / floor, 3 / (3 + floor)]))
    assert torch.equal(got["b"], torch.tensor([[4 / floor]]))


@pytest.mark.parametrize("contrast", ["none", "ratio"])
def test_topk_perturbs_exactly_the_k_most_important_entries(trained, digits, contrast):
    request = uk.build_request("class:3", digits, seed=0)
    k = 300
    options = dict(k=k, importance="output", contrast=contrast, scale="absolute", sigma=0.05, epochs=0,
                   importance_batch=64, retain_samples=200)
    result = unlearn(trained.model, request, digits, "topk_perturb", device="cpu", seed=0, **options)

    # The expected selection, recomputed independently at the original weights.
    x, y = request.training_data(digits)
    omega = importance(trained.model, x, y, request.forget, "output", batch_size=64)
    if contrast == "ratio":
        gen = torch.Generator().manual_seed(0)
        sample = request.retain[torch.randperm(request.retain.numel(), generator=gen)[:200]]
        omega = contrasted(omega, importance(trained.model, x, y, sample, "output", batch_size=64), 1e-3)
    expected = selection.top_k(omega, k)
    changed = _changed(trained.model, result.model)
    for name in expected:
        assert torch.equal(changed[name], expected[name]), name  # every selected entry moved, nothing else did
    assert sum(int(c.sum()) for c in changed.values()) == k
    assert result.notes["perturbed_entries"] == k

    # Guard: ranking by parameter value (|θ|) instead of importance selects a different set, so an implementation
    # that did so would fail the equality above.
    by_value = selection.top_k(selection.weight_magnitude(trained.model), k)
    overlap = sum(int((by_value[n] & expected[n]).sum()) for n in expected)
    assert overlap < k // 2


def test_topk_forgets_a_class_without_repair_and_random_k_does_not(trained, digits):
    request = uk.build_request("class:3", digits, seed=0)
    x, y = request.training_data(digits)
    opts = dict(fraction=0.02, sigma=1.0, scale="parameter", epochs=0, calibrate=False)  # the same noise for both
    result = unlearn(trained.model, request, digits, "topk_perturb", importance="output", device="cpu", **opts)
    random_k = unlearn(trained.model, request, digits, "randomk_perturb", device="cpu", **opts)
    accs = {name: (accuracy(predict_logits(r.model, x[request.forget]), y[request.forget]),
                   accuracy(predict_logits(r.model, x[request.retain]), y[request.retain]))
            for name, r in (("topk", result), ("randomk", random_k))}
    assert accs["topk"][0] < 75 and accs["topk"][1] > 95, accs  # measured: 61 % forget, 99.1 % retain
    assert accs["randomk"][0] > 95, accs  # the same noise on random entries barely touches the class
    # The cost counts the importance pass over D_f (forward and backward) and nothing else.
    assert result.cost.backward == request.forget.numel()


def test_repair_of_selected_entries_keeps_the_rest_frozen(trained, digits):
    request = uk.build_request("random:0.2", digits, seed=1)
    result = unlearn(trained.model, request, digits, "topk_perturb", device="cpu", fraction=0.02, sigma=0.5,
                     epochs=2, lr=0.05, repair_scope="selected", importance="output")
    x, y = request.training_data(digits)
    omega = importance(trained.model, x, y, request.forget, "output", batch_size=64)
    mask = selection.top_fraction(omega, 0.02)
    changed = _changed(trained.model, result.model)
    for name in mask:
        assert not bool((changed[name] & ~mask[name]).any()), name  # momentum and weight decay moved nothing else
    assert result.cost.backward > request.forget.numel()  # the repair ran


def test_randomk_is_seeded_and_touches_the_requested_fraction(trained, digits):
    request = uk.build_request("random:0.1", digits, seed=0)
    total = sum(p.numel() for p in trained.model.parameters())
    opts = dict(fraction=0.03, scale="absolute", sigma=0.1, epochs=0)
    a = unlearn(trained.model, request, digits, "randomk_perturb", device="cpu", seed=4, **opts)
    b = unlearn(trained.model, request, digits, "randomk_perturb", device="cpu", seed=4, **opts)
    c = unlearn(trained.model, request, digits, "randomk_perturb", device="cpu", seed=5, **opts)
    for (n, pa), pb in zip(a.model.named_parameters(), b.model.parameters()):
        assert torch.equal(pa, pb), n
    changed_a, changed_c = _changed(trained.model, a.model), _changed(trained.model, c.model)
    count = sum(int(m.sum()) for m in changed_a.values())
    assert count == round(0.03 * total)
    assert any(not torch.equal(changed_a[n], changed_c[n]) for n in changed_a)
    # Uniform over layers: each parameter gets close to its share (binomial spread).
    for name, mask in changed_a.items():
        n = mask.numel()
        if n >= 1000:
            assert abs(int(mask.sum()) - 0.03 * n) < 5 * (0.03 * 0.97 * n) ** 0.5, name


def test_global_perturbation_touches_every_entry_with_the_stated_scale(trained, digits):
    request = uk.build_request("random:0.1", digits, seed=0)
    layer = unlearn(trained.model, request, digits, "global_perturb", device="cpu", sigma=0.5, scale="layer", epochs=0)
    relative = unlearn(
        trained.model, request, digits, "global_perturb", device="cpu", sigma=0.5, scale="parameter", epochs=0
    )
    before = dict(trained.model.named_parameters())
    for name, p in layer.model.named_parameters():
        delta = (p - before[name]).detach()
        if delta.numel() >= 4000:
            assert float(delta.std() / before[name].detach().std(unbiased=False)) == pytest.approx(0.5, rel=0.05), name
    for name, p in relative.model.named_parameters():
        ratio = ((p - before[name]) / before[name]).detach()
        if ratio.numel() >= 4000:
            assert float(ratio.std()) == pytest.approx(0.5, rel=0.05), name
    assert layer.notes["selected_fraction"] == 1.0


def test_pruned_entries_are_never_selected(digits):
    torch.manual_seed(0)
    model = uk.build_model("mlp", **digits.model_args(), width=32, depth=1)
    weight = dict(model.named_parameters())["features.1.weight"]
    keep = torch.rand(weight.shape, generator=torch.Generator().manual_seed(0)) < 0.3
    attach_prune_masks(model, {"features.1.weight": keep})
    request = uk.build_request("class:1", digits, seed=0)
    live = sum(p.numel() for p in model.parameters()) - int((~keep).sum())
    for method, opts in [("topk_perturb", dict(fraction=0.5)), ("randomk_perturb", dict(fraction=0.5))]:
        result = unlearn(model, request, digits, method, device="cpu", scale="absolute", sigma=0.1, epochs=0, **opts)
        assert result.notes["selected_entries"] == round(0.5 * live)
        pruned_weight = dict(result.model.named_parameters())["features.1.weight"]
        assert torch.equal(pruned_weight[~keep], torch.zeros(int((~keep).sum())))
        changed = _changed(model, result.model)
        assert sum(int(c.sum()) for c in changed.values()) == round(0.5 * live)


def test_bad_options_are_one_line_errors(trained, digits):
    request = uk.build_request("class:3", digits)
    with pytest.raises(UnlearnKitError, match="must be one of"):
        unlearn(trained.model, request, digits, "topk_perturb", importance="hessian")
    with pytest.raises(UnlearnKitError, match="k must be between"):
        unlearn(trained.model, request, digits, "topk_perturb", k=10**9)
    with pytest.raises(UnlearnKitError, match="option sigma of randomk_perturb must be a finite float in"):
        unlearn(trained.model, request, digits, "randomk_perturb", sigma=-1.0)
    with pytest.raises(
        UnlearnKitError, match="option fraction of randomk_perturb must be a finite float in \\[0, 1\\]"
    ):
        unlearn(trained.model, request, digits, "randomk_perturb", fraction=1.5)
