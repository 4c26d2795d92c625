import pytest
import torch

# One intra-op thread: the tests' models are tiny, so a second thread buys nothing, and on a busy machine
# OpenMP threads spin-wait for a descheduled partner (measured: 100x slower fine-tuning of a digits MLP).
torch.set_num_threads(1)

from unlearnkit.data import Dataset, load_dataset  # noqa: E402  (after the thread setting)


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_dataset("digits")


@pytest.fixture(scope="session")
def digits_mlp(digits):
    """The digits MLP trained with its default recipe, seed 0 (tests hand it to ``unlearn``, which copies it)."""
    from unlearnkit import train
    from unlearnkit.recipes import default_recipe

    return train(digits, "mlp", config=default_recipe("digits"), seed=0, device="cpu")


@pytest.fixture(scope="session")
def digits_class0(digits):
    """The class:0 request on digits (seed 0)."""
    from unlearnkit import build_request

    return build_request("class:0", digits, seed=0)


def make_tiny(
    n_train: int = 200, n_test: int = 100, classes: int = 4, size: int = 8, channels: int = 1, seed: int = 0
) -> Dataset:
    """A learnable synthetic image data set: each class is a noisy copy of its own random template."""
    gen = torch.Generator().manual_seed(seed)
    templates = torch.rand(classes, channels, size, size, generator=gen)

    def draw(n):
        y = torch.arange(n) % classes
        x = (templates[y] + 0.25 * torch.randn(n, channels, size, size, generator=gen)).clamp(0, 1)
        return x.float(), y.long()

    xtr, ytr = draw(n_train)
    xte, yte = draw(n_test)
    return Dataset("tiny", xtr, ytr, xte, yte, num_classes=classes, class_names=tuple(map(str, range(classes))))


@pytest.fixture
def tiny() -> Dataset:
    return make_tiny()
