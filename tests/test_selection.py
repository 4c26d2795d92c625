import pytest
import torch

from unlearnkit import selection
from unlearnkit.errors import UnlearnKitError
from unlearnkit.models import build_model


def _scores():
    gen = torch.Generator().manual_seed(0)
    return {
        "a": torch.rand(10, 5, generator=gen),
        "b": torch.rand(7, generator=gen),
        "c": torch.rand(3, 2, 2, generator=gen),
    }


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.37, 0.5, 1.0])
def test_top_fraction_is_exact_and_picks_the_largest(fraction):
    scores = _scores()
    mask = selection.top_fraction(scores, fraction)
    flat = torch.cat([s.flatten() for s in scores.values()])
    chosen = torch.cat([mask[n].flatten() for n in scores])
    k = round(fraction * flat.numel())
    assert int(chosen.sum()) == k
    if 0 < k < flat.numel():
        assert flat[chosen].min() > flat[~chosen].max()
    smallest = selection.top_fraction(scores, fraction, largest=False)
    chosen = torch.cat([smallest[n].flatten() for n in scores])
    if 0 < k < flat.numel():
        assert flat[chosen].max() < flat[~chosen].min()


def test_per_parameter_and_ties():
    mask = selection.top_fraction(_scores(), 0.5, per_parameter=True)
    assert int(mask["a"].sum()) == 25 and int(mask["b"].sum()) == 4 and int(mask["c"].sum()) == 6
    tied = selection.top_k({"t": torch.ones(6)}, 3)
    assert tied["t"].tolist() == [True, True, True, False, False, False]


def test_random_fraction_is_seeded_and_sized():
    model = build_model("mlp", in_channels=1, image_size=4, num_classes=3)
    a = selection.random_fraction(model, 0.25, torch.Generator().manual_seed(1))
    b = selection.random_fraction(model, 0.25, torch.Generator().manual_seed(1))
    c = selection.random_fraction(model, 0.25, torch.Generator().manual_seed(2))
    picked, total = selection.count(a)
    assert picked == round(0.25 * total)
    assert all(torch.equal(a[n], b[n]) for n in a) and not all(torch.equal(a[n], c[n]) for n in a)


def test_last_layer_mask():
    model = build_model("small-cnn", in_channels=1, image_size=8, num_classes=3)
    mask = selection.last_layer(model)
    assert mask["classifier.weight"].all() and mask["classifier.bias"].all()
    assert not any(m.any() for n, m in mask.items() if not n.startswith("classifier"))


def test_bad_fraction():
    with pytest.raises(UnlearnKitError):
        selection.top_fraction(_scores(), 1.5)
