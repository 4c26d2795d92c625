"""The contract every registered method keeps (in the style of scikit-learn's ``check_param_validation`` and
Opacus's shared ``run_test``): parametrised over the registry, so a new method is checked by being registered.

On tiny digits data (an MLP whose first layer is half pruned), for each method:

* each request type whose effect it declares is handled (random, class, relabel, backdoor, feature): the original
  model is untouched (bitwise), the result is finite,
  its pruning mask holds, entries a method freezes (``trainable`` masks given to the loop) do not move, and the
  cost (seconds, sample passes) is reported; each request of an effect it does not declare is refused with
  UnlearnKitError before any sample pass;
* every declared option refuses each bad value generated from its declaration (wrong type, below or above its
  range, non-finite, not a choice) with one UnlearnKitError line that names it — before any sample pass, counted
  both by the cost meter and by a forward hook on the model;
* every numeric option declares both bounds, so "out of range" is defined for each.

Speed: options named in ``SMALL`` are set to small values when a method declares them (epochs=1, few curvature
samples); any other option keeps its default.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import unlearnkit as uk
import unlearnkit.methods.base as base
from unlearnkit.errors import UnlearnKitError
from unlearnkit.masks import attach_prune_masks, prune_masks
from unlearnkit.methods import METHODS, recorded_config, register, unlearn
from unlearnkit.methods.base import option
from unlearnkit.options import options_of
from unlearnkit.training import metered

# Requests of every type but memorized: (its scores need many trained models), grouped by effect (what the request
# does to the training set): a method must handle each of the types whose effect it declares.
REQUESTS = {"remove": ["random:0.1", "class:3"], "relabel": ["relabel:0.1"],
            "edit": ["backdoor:0.05:0", "feature:0.5:6"]}
SMALL = {"epochs": 1, "max_epochs": 1, "curvature_samples": 64, "retain_samples": 128, "fisher_samples": 128,
         "train_samples": 256, "forget_samples": 128, "max_iter": 5, "lissa_depth": 5, "probe_size": 64, "probes": 4,
         "batch_size": 64}
PRUNED_LAYER = "features.1.weight"
# Every method the package registers (other test modules may register test-only methods into the same registry).
SHIPPED = sorted(name for name, info in METHODS.items() if info.run.__module__.startswith("unlearnkit."))


@pytest.fixture(scope="module")
def original(digits):
    trained = uk.train(digits, "mlp", config=uk.TrainConfig(epochs=3, batch_size=64, lr=0.05), seed=0, device="cpu",
                       model_options={"width": 32, "depth": 1})
    model = trained.model
    weight = dict(model.named_parameters())[PRUNED_LAYER]
    keep = torch.rand(weight.shape, generator=torch.Generator().manual_seed(1)) > 0.5
    attach_prune_masks(model, {PRUNED_LAYER: keep})
    return trained


@pytest.fixture(scope="module")
def requests(digits):
    return {effect: [uk.build_request(spec, digits, seed=0) for spec in specs] for effect, specs in REQUESTS.items()}


def _small(method: str) -> dict:
    declared = options_of(METHODS[method].config)
    return {k: v for k, v in SMALL.items() if k in declared}


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class PassCounter:
    """Counts samples through the model's forward (the hook travels with every deep copy of the model)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.samples = 0
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, module, inputs) -> None:
        self.samples += int(inputs[0].shape[0])


@pytest.fixture
def frozen_checked(monkeypatch):
    """Wrap the loop every method's ``task.fit`` calls: entries a ``trainable`` mask freezes must not move."""
    real_fit = base.fit
    checked = []

    def fit(model, phases, config, *, trainable=None, **kwargs):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        report = real_fit(model, phases, config, trainable=trainable, **kwargs)
        if trainable is not None:
            for name, p in model.named_parameters():
                frozen = ~trainable[name].to(p.device) if name in trainable else torch.ones_like(p, dtype=torch.bool)
                assert torch.equal(p.detach()[frozen], before[name][frozen]), f"frozen entries of {name} moved"
            checked.append(True)
        return report

    monkeypatch.setattr(base, "fit", fit)
    return checked


def check_contract(method: str, original, digits, requests) -> None:
    """Run ``method`` on a request of every effect and check the contract (see the module docstring)."""
    info = METHODS[method]
    model = original.model
    before = _snapshot(model)
    mask = prune_masks(model)[PRUNED_LAYER]
    for effect, request in ((e, r) for e, group in requests.items() for r in group):
        kwargs = dict(device="cpu", seed=0, model_name=original.model_name, model_args=original.model_args,
                      original_test_acc=original.metrics["test_acc"], **_small(method))
        if effect not in info.effects:
            with metered() as cost, pytest.raises(UnlearnKitError, match=f"handles .* not {effect}"):
                unlearn(model, request, digits, method, **kwargs)
            assert cost.forward == cost.backward == 0
            continue
        result = unlearn(model, request, digits, method, **kwargs)
        where = f"{method} on {request.spec}"
        for key, value in _snapshot(model).items():  # the original is untouched, bitwise
            assert torch.equal(value, before[key]), f"{where} changed the original's {key}"
        new = dict(result.model.named_parameters())
        assert new[PRUNED_LAYER].data_ptr() != dict(model.named_parameters())[PRUNED_LAYER].data_ptr()
        for name, p in result.model.state_dict().items():
            if p.is_floating_point():
                assert torch.isfinite(p).all(), f"{where}: {name} is not finite"
        assert torch.equal(prune_masks(result.model)[PRUNED_LAYER].cpu(), mask), f"{where} lost the pruning mask"
        assert (new[PRUNED_LAYER].detach().cpu()[~mask] == 0).all(), f"{where} revived pruned weights"
        cost = result.cost.to_dict()
        assert set(cost) == {"seconds", "forward_samples", "backward_samples"}
        assert result.cost.seconds > 0 and result.cost.forward > 0, f"{where} reported no cost: {cost}"
        own = {k: v for k, v in result.config.items() if not k.startswith("uses:")}  # without the methods it runs
        assert recorded_config(METHODS[method], METHODS[method].config(**own)) == result.config


@pytest.mark.parametrize("method", SHIPPED)
def test_method_keeps_the_contract(method, original, digits, requests, frozen_checked):
    check_contract(method, original, digits, requests)


@pytest.mark.parametrize("method", SHIPPED)
def test_every_declared_option_refuses_bad_values_before_any_pass(method, original, digits, requests):
    declared = options_of(METHODS[method].config)
    assert declared or METHODS[method].config is not None
    counter = PassCounter(original.model)
    request = requests[METHODS[method].effects[0]][0]
    try:
        for name, d in declared.items():
            bad = d.bad_values()
            assert bad, f"{method}.{name} declares nothing it refuses"
            for why, value in bad:
                with metered() as cost, pytest.raises(UnlearnKitError) as caught:
                    unlearn(original.model, request, digits, method, device="cpu", **{name: value})
                message = str(caught.value)
                assert message.startswith(f"option {name} of {method} must be ") and "\n" not in message, (why, message)
                assert d.allowed() in message
                assert cost.forward == cost.backward == 0 and counter.samples == 0, f"{method}.{name}={value!r}: passes"
    finally:
        counter.handle.remove()


@pytest.mark.parametrize("method", SHIPPED)
def test_every_numeric_option_declares_both_bounds(method):
    for name, d in options_of(METHODS[method].config).items():
        if d.type.base in (int, float) and d.type.choices is None:
            assert d.low is not None and d.high is not None, f"{method}.{name} has no declared range"
        assert d.help, f"{method}.{name} has no help"


# -- the contract test itself fails on a method that breaks it -------------------------------------------------------
@pytest.fixture
def temporary_method():
    """Register methods for one test and remove them (and their declarations) afterwards."""
    from unlearnkit.options import OWNERS

    added = []

    def add(name, config, run, **kwargs):
        register(name, config, touches=("retain",), summary="test-only", **kwargs)(run)
        added.append(name)

    yield add
    for name in added:
        METHODS.pop(name, None)
        OWNERS.pop(("method", name), None)


@dataclasses.dataclass
class _Steps:
    epochs: int = option(1, "passes", ge=0, le=10)
    lr: float = option(0.01, "learning rate", gt=0, le=1)


def test_a_registered_method_gets_the_contract(temporary_method, original, digits, requests, frozen_checked):
    from unlearnkit.data import Source
    from unlearnkit.training import Phase, TrainConfig

    def remove_only(task, cfg):
        source = Source(task.x, task.y, task.request.retain[:64], batch_size=32)
        task.fit(Phase(source), TrainConfig(epochs=cfg.epochs, lr=cfg.lr, augment=False))

    temporary_method("remove_only", _Steps, remove_only, effects=("remove",))
    check_contract("remove_only", original, digits, requests)  # relabel and edit are refused before any pass
    test_every_declared_option_refuses_bad_values_before_any_pass("remove_only", original, digits, requests)


def test_the_contract_catches_a_method_that_breaks_it(temporary_method, original, digits, requests, frozen_checked):
    def scribbles_on_the_original(task, cfg):
        with torch.no_grad():
            for p in task.original.parameters():
                p.mul_(1.0)  # harmless
            next(task.model.parameters()).add_(float("nan"))  # a non-finite result

    temporary_method("broken", _Steps, scribbles_on_the_original, effects=("remove",))
    with pytest.raises(AssertionError, match="not finite"):
        check_contract("broken", original, digits, requests)

    @dataclasses.dataclass
    class Unbounded:
        scale: float = option(1.0, "no declared range")

    temporary_method("unbounded", Unbounded, lambda task, cfg: None)
    with pytest.raises(AssertionError, match="no declared range"):
        test_every_numeric_option_declares_both_bounds("unbounded")


def test_every_method_the_package_registers_is_checked():
    import pkgutil

    import unlearnkit.methods as package

    modules = {f"unlearnkit.methods.{m.name}" for m in pkgutil.iter_modules(package.__path__)}
    modules -= {"unlearnkit.methods.base"}
    registered_by = {METHODS[name].run.__module__ for name in SHIPPED}
    assert modules <= registered_by, f"method modules that register nothing: {modules - registered_by}"
    assert len(SHIPPED) >= 17
