"""Default training recipes per (data set, model): what `unlearnkit train` uses unless told otherwise.

Measured on this project's reference CPU (2 cores): the small CNN reaches about 92 % test accuracy on
Fashion-MNIST in 10 epochs with this recipe (see the closing notes / benchmarks). The CIFAR/SVHN recipes
follow the field's ResNet-18 protocol (SGD, momentum 0.9, weight decay 5e-4) and are meant for a GPU.
"""

from __future__ import annotations

from .training import TrainConfig

_BY_DATASET = {
    "fashion-mnist": TrainConfig(epochs=10, batch_size=128, lr=0.05),
    "mnist": TrainConfig(epochs=10, batch_size=128, lr=0.05),
    "digits": TrainConfig(epochs=30, batch_size=64, lr=0.05),
    "cifar10": TrainConfig(epochs=60, batch_size=256, lr=0.1),
    "cifar100": TrainConfig(epochs=60, batch_size=256, lr=0.1),
    "svhn": TrainConfig(epochs=30, batch_size=256, lr=0.05),
}

DEFAULT_MODEL = {
    "fashion-mnist": "small-cnn",
    "mnist": "small-cnn",
    "digits": "mlp",
    "cifar10": "resnet18",
    "cifar100": "resnet18",
    "svhn": "resnet18",
}


def base_name(dataset_name: str) -> str:
    return dataset_name.split("[", 1)[0]


def default_recipe(dataset_name: str, model_name: str | None = None) -> TrainConfig:
    return _BY_DATASET.get(base_name(dataset_name), TrainConfig()).replace()


def default_model(dataset_name: str) -> str:
    return DEFAULT_MODEL.get(base_name(dataset_name), "small-cnn")
