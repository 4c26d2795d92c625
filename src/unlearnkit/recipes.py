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
    # Character language models (docs/text.md): Adam with clipped gradients, no weight decay, no augmentation. On a
    # 1,000-sequence subset of fortunes the char-lstm (hidden 128) reaches a validation perplexity of about 5.3 and
    # memorises planted secrets in 12 epochs (~40 s of one CPU core).
    "fortunes": TrainConfig(epochs=12, batch_size=64, optimizer="adam", lr=0.02, weight_decay=0.0, grad_clip=1.0,
                            augment=False),
    "text": TrainConfig(epochs=12, batch_size=64, optimizer="adam", lr=0.02, weight_decay=0.0, grad_clip=1.0,
                        augment=False),
}

DEFAULT_MODEL = {
    "fashion-mnist": "small-cnn",
    "mnist": "small-cnn",
    "digits": "mlp",
    "cifar10": "resnet18",
    "cifar100": "resnet18",
    "svhn": "resnet18",
    "fortunes": "char-lstm",
    "text": "char-lstm",
}


def base_name(dataset_name: str) -> str:
    return dataset_name.split("[", 1)[0]


def default_recipe(dataset_name: str, model_name: str | None = None) -> TrainConfig:
    return _BY_DATASET.get(base_name(dataset_name), TrainConfig()).replace()


def default_model(dataset_name: str) -> str:
    return DEFAULT_MODEL.get(base_name(dataset_name), "small-cnn")
