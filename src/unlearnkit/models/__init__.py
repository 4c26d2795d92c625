"""Classifiers by name. Every model takes the data set's shape (``in_channels``, ``image_size``,
``num_classes``) and its per-channel ``mean``/``std``: normalisation is the model's first layer, so data,
triggers and perturbation budgets stay in pixel space [0, 1].

Each model names its final linear layer ``classifier`` (methods that touch "the last layer" use it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._util import seed_everything
from ..errors import UnlearnKitError
from ..options import build, declare, option, options_of

if TYPE_CHECKING:
    from ..data import Dataset


class Normalize(nn.Module):
    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _norm(in_channels: int, mean, std) -> Normalize:
    mean = [0.0] * in_channels if mean is None else mean
    std = [1.0] * in_channels if std is None else std
    if len(mean) != in_channels or len(std) != in_channels:
        raise UnlearnKitError(f"mean/std need {in_channels} values, got {len(mean)}/{len(std)}")
    return Normalize(mean, std)


# Each model's own options (besides the data set's shape), declared once: the constructors take their defaults
# from these, and `build_model` validates user values against them.
@dataclass
class MLPOptions:
    width: int = option(256, "hidden units per layer", ge=1, le=16_384)
    depth: int = option(2, "hidden layers", ge=0, le=64)


@dataclass
class SmallCNNOptions:
    channels: tuple[int, ...] = option((32, 64), "output channels of the two conv layers", ge=1, le=1024, length=2)
    hidden: int = option(128, "units of the hidden linear layer", ge=1, le=16_384)


@dataclass
class ResNet18Options:
    width: int = option(64, "channels of the first stage (doubled at each of the next three)", ge=1, le=512)


@dataclass
class NoOptions:
    pass


class MLP(nn.Module):
    """Flatten, ``depth`` hidden layers of ``width`` ReLU units, linear classifier."""

    def __init__(self, in_channels, image_size, num_classes, mean=None, std=None, width: int = MLPOptions.width,
                 depth: int = MLPOptions.depth):
        super().__init__()
        self.normalize = _norm(in_channels, mean, std)
        layers, fan_in = [], in_channels * image_size * image_size
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width), nn.ReLU()]
            fan_in = width
        self.features = nn.Sequential(nn.Flatten(), *layers)
        self.classifier = nn.Linear(fan_in, num_classes)

    def forward(self, x):
        return self.classifier(self.features(self.normalize(x)))


class SmallCNN(nn.Module):
    """Two 3x3 conv layers (each followed by 2x2 max-pool then ReLU) and two linear layers.

    With 32/64 channels and 128 hidden units this is about 0.42 M parameters on 28x28 inputs. Pooling
    before the ReLU computes the same function as ReLU-then-pool (they commute) at a quarter of the
    element-wise cost, which is a third of an epoch on a 2-core CPU.
    """

    def __init__(self, in_channels, image_size, num_classes, mean=None, std=None,
                 channels: Sequence[int] = SmallCNNOptions.channels, hidden: int = SmallCNNOptions.hidden):
        super().__init__()
        c1, c2 = channels
        self.normalize = _norm(in_channels, mean, std)
        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        side = image_size // 2 // 2
        if side < 1:
            raise UnlearnKitError(f"small-cnn needs images of at least 4x4, got {image_size}")
        self.fc = nn.Linear(c2 * side * side, hidden)
        self.classifier = nn.Linear(hidden, num_classes)

    def features(self, x):
        x = F.relu(F.max_pool2d(self.conv1(self.normalize(x)), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, x):
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18, CIFAR variant: 3x3 stride-1 stem and no max-pool (as in the unlearning literature)."""

    def __init__(self, in_channels, image_size, num_classes, mean=None, std=None, width: int = ResNet18Options.width):
        super().__init__()
        self.normalize = _norm(in_channels, mean, std)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks, c_in = [], width
        for i, c_out in enumerate([width, 2 * width, 4 * width, 8 * width]):
            stride = 1 if i == 0 else 2
            blocks += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.layers = nn.Sequential(*blocks)
        self.classifier = nn.Linear(c_in, num_classes)

    def features(self, x):
        x = self.layers(self.stem(self.normalize(x)))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def forward(self, x):
        return self.classifier(self.features(x))


_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG16BN(nn.Module):
    """VGG-16 with batch norm, CIFAR style (one linear classifier after global pooling).

    Max-pools that would shrink the feature map below 1x1 (small images such as 28x28 or 8x8) are skipped.
    """

    def __init__(self, in_channels, image_size, num_classes, mean=None, std=None):
        super().__init__()
        self.normalize = _norm(in_channels, mean, std)
        layers, c_in, side = [], in_channels, image_size
        for item in _VGG16:
            if item == "M":
                if side >= 2:
                    layers.append(nn.MaxPool2d(2))
                    side //= 2
            else:
                layers += [nn.Conv2d(c_in, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU()]
                c_in = item
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in, num_classes)

    def features(self, x):
        return F.adaptive_avg_pool2d(self.body(self.normalize(x)), 1).flatten(1)

    def forward(self, x):
        return self.classifier(self.features(x))


# The language models (after the image models: lm.py needs none of them).
from .lm import CharLSTM, CharLSTMOptions, CharTransformer, CharTransformerOptions  # noqa: E402

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "small-cnn": SmallCNN,
    "resnet18": ResNet18,
    "vgg16-bn": VGG16BN,
    "char-lstm": CharLSTM,
    "char-transformer": CharTransformer,
}

MODEL_OPTIONS: dict[str, type] = {
    "mlp": declare("model", "model mlp", MLPOptions),
    "small-cnn": declare("model", "model small-cnn", SmallCNNOptions),
    "resnet18": declare("model", "model resnet18", ResNet18Options),
    "vgg16-bn": declare("model", "model vgg16-bn", NoOptions),
    "char-lstm": declare("model", "model char-lstm", CharLSTMOptions),
    "char-transformer": declare("model", "model char-transformer", CharTransformerOptions),
}

LANGUAGE_MODELS = ("char-lstm", "char-transformer")  # built from a text data set's vocab_size and seq_len
IMAGE_MODELS = tuple(name for name in MODELS if name not in LANGUAGE_MODELS)

_IMAGE_SHAPE_ARGS = ("in_channels", "image_size", "num_classes", "mean", "std")
_TEXT_SHAPE_ARGS = ("vocab_size", "seq_len")
_SHAPE_ARGS = _IMAGE_SHAPE_ARGS + _TEXT_SHAPE_ARGS


def _shape_args(name: str) -> tuple[str, ...]:
    return _TEXT_SHAPE_ARGS if name in LANGUAGE_MODELS else _IMAGE_SHAPE_ARGS


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; ``kwargs`` are the shape arguments plus the model's own options.

    ``imported`` builds a user's model from its factory (``kwargs``: factory, factory_args, classifier_layer;
    see :mod:`unlearnkit.models.imported`)."""
    if name == "imported":
        from .imported import build_imported

        return build_imported(**kwargs)
    if name not in MODELS:
        raise UnlearnKitError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    cls = MODELS[name]
    required = ("vocab_size", "seq_len") if name in LANGUAGE_MODELS else ("in_channels", "image_size", "num_classes")
    missing = [a for a in required if a not in kwargs]
    if missing:
        raise UnlearnKitError(f"model {name!r} needs {', '.join(missing)}")
    shape_args = _shape_args(name)
    shape = {k: v for k, v in kwargs.items() if k in shape_args}
    own = check_model_options(name, {k: v for k, v in kwargs.items() if k not in shape_args})
    return cls(**shape, **own)


def check_model_options(name: str, options: dict) -> dict:
    """A model's own options checked against its declarations (unknown names, wrong types and out-of-range sizes
    are refused before any weight is allocated); returns them as the declared types."""
    if name not in MODELS:
        raise UnlearnKitError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    if name not in MODEL_OPTIONS:  # a model registered without declarations takes its options as given
        return dict(options)
    config = build(MODEL_OPTIONS[name], options, owner=f"model {name}")
    return {k: getattr(config, k) for k in options}


def new_model(model_name: str, data: Dataset, seed: int, options: dict | None = None) -> tuple[nn.Module, dict]:
    """A freshly initialised registered model for ``data`` (initialisation seeded by ``seed``) and its arguments.

    An ``imported`` model is built by its factory from its own arguments (no shape arguments from the data)."""
    args = dict(options or {}) if model_name == "imported" else {**data.model_args(), **(options or {})}
    seed_everything(seed)
    return build_model(model_name, **args), args


def model_info() -> dict[str, dict]:
    info = {}
    for name, cls in MODELS.items():
        declared = options_of(MODEL_OPTIONS[name]) if name in MODEL_OPTIONS else {}
        image = name not in LANGUAGE_MODELS
        probe = cls(in_channels=1, image_size=28, num_classes=10) if image else cls(vocab_size=96, seq_len=64)
        info[name] = {
            "doc": (cls.__doc__ or "").strip().splitlines()[0],
            "options": {k: list(d.default) if isinstance(d.default, tuple) else d.default for k, d in declared.items()},
            "option_types": {k: d.allowed() for k, d in declared.items()},
            # parameters at Fashion-MNIST's shapes (image models) or the fortunes vocabulary (language models)
            ("params_fmnist" if image else "params_fortunes"): sum(p.numel() for p in probe.parameters()),
        }
    return info


def last_layer(model: nn.Module) -> nn.Linear:
    """The classifier: the layer an imported model's checkpoint names, else the model's ``classifier``."""
    from .imported import CLASSIFIER_ATTR, classifier

    name = getattr(model, CLASSIFIER_ATTR, None)
    if name is not None:
        return classifier(model, name)
    head = getattr(model, "classifier", None)
    if not isinstance(head, nn.Linear):
        raise UnlearnKitError(f"{type(model).__name__} has no linear 'classifier' layer; an imported model names "
                              f"it with --classifier-layer NAME (or has a linear layer)")
    return head


def is_convolutional(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


__all__ = ["MODELS", "MODEL_OPTIONS", "IMAGE_MODELS", "LANGUAGE_MODELS", "CharLSTM", "CharTransformer",
           "build_model", "check_model_options", "new_model", "model_info", "last_layer",
           "Normalize", "MLP", "SmallCNN", "ResNet18", "VGG16BN",
           "is_convolutional"]
