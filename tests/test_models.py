import pytest
import torch

from unlearnkit.errors import UnlearnKitError
from unlearnkit.models import IMAGE_MODELS, LANGUAGE_MODELS, build_model, last_layer


@pytest.mark.parametrize("name", sorted(IMAGE_MODELS))
@pytest.mark.parametrize("shape", [(1, 8), (1, 28), (3, 32)])
def test_every_model_fits_every_shape(name, shape):
    channels, size = shape
    model = build_model(name, in_channels=channels, image_size=size, num_classes=7)
    model.eval()
    out = model(torch.rand(2, channels, size, size))
    assert out.shape == (2, 7)
    assert last_layer(model).out_features == 7


@pytest.mark.parametrize("name", LANGUAGE_MODELS)
def test_language_models_map_ids_to_next_character_logits(name):
    model = build_model(name, vocab_size=11, seq_len=6).eval()
    out = model(torch.randint(0, 11, (2, 6)))
    assert out.shape == (2, 6, 11) and last_layer(model).out_features == 11
    with pytest.raises(UnlearnKitError, match="needs seq_len"):
        build_model(name, vocab_size=11)


def test_small_cnn_size():
    model = build_model("small-cnn", in_channels=1, image_size=28, num_classes=10)
    n = sum(p.numel() for p in model.parameters())
    assert 350_000 < n < 450_000


def test_resnet18_is_the_cifar_variant():
    model = build_model("resnet18", in_channels=3, image_size=32, num_classes=10)
    assert model.stem[0].kernel_size == (3, 3) and model.stem[0].stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert 11_000_000 < sum(p.numel() for p in model.parameters()) < 11_300_000


def test_normalisation_is_inside_the_model():
    model = build_model("mlp", in_channels=1, image_size=4, num_classes=2, mean=[0.5], std=[0.25])
    x = torch.full((1, 1, 4, 4), 0.5)
    assert torch.allclose(model.normalize(x), torch.zeros_like(x))


def test_bad_model_arguments():
    with pytest.raises(UnlearnKitError, match="unknown model 'resnet50'"):
        build_model("resnet50", in_channels=1, image_size=8, num_classes=2)
    with pytest.raises(UnlearnKitError, match="no option"):
        build_model("mlp", in_channels=1, image_size=8, num_classes=2, colour="red")
