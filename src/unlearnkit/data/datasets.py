"""In-memory image classification data sets and the registry that loads them by name.

A :class:`Dataset` holds float32 images in [0, 1] (N x C x H x W) and int64 labels as tensors, plus the
per-channel mean/std that models normalise with (normalisation lives in the model, so triggers, GAN
budgets and edits are all expressed in pixel space). Its ``fingerprint`` is a SHA-256 of the decoded
pixels and labels: it does not depend on how the files were compressed, and it is recorded with every
checkpoint and result so that a figure can be traced to the exact data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .._util import sha256_tensors
from ..errors import UnlearnKitError
from . import formats

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    class_names: tuple[str, ...]
    # Augmentation used when training on this data set (see ``loader.Augment``).
    crop_padding: int = 0
    horizontal_flip: bool = False
    source: str = ""
    # (mean, std, fingerprint) computed elsewhere in bounded memory (``images.image_stats``), for readers of
    # users' data and memory-mapped tensors; None: computed here from the tensors in memory.
    stats: tuple[tuple[float, ...], tuple[float, ...], str] | None = field(default=None, repr=False)
    mean: tuple[float, ...] = field(init=False)
    std: tuple[float, ...] = field(init=False)
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        if self.x_train.ndim == 4 and self.x_train.shape[0] == 0:
            raise UnlearnKitError(f"{self.name} has no training images")
        if self.x_train.ndim == 4 and self.x_test.ndim == 4 and self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise UnlearnKitError(f"{self.name}: test images are {tuple(self.x_test.shape[1:])}, training images "
                                  f"{tuple(self.x_train.shape[1:])}; both splits must have one shape")
        for split, (x, y) in {"train": (self.x_train, self.y_train), "test": (self.x_test, self.y_test)}.items():
            if x.ndim != 4 or x.dtype != torch.float32:
                raise UnlearnKitError(
                    f"{self.name} {split}: images must be float32 N x C x H x W, got {x.dtype} {tuple(x.shape)}"
                )
            if y.ndim != 1 or y.shape[0] != x.shape[0] or y.dtype != torch.int64:
                raise UnlearnKitError(f"{self.name} {split}: labels must be int64 of length {x.shape[0]}")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise UnlearnKitError(f"{self.name} {split}: labels outside 0..{self.num_classes - 1}")
        if self.stats is not None:
            self.mean, self.std, self.fingerprint = (tuple(self.stats[0]), tuple(self.stats[1]), self.stats[2])
            return
        flat = self.x_train.transpose(0, 1).reshape(self.channels, -1)
        self.mean = tuple(float(v) for v in flat.mean(1))
        self.std = tuple(max(float(v), 1e-6) for v in flat.std(1))
        self.fingerprint = sha256_tensors(
            _to_uint8(self.x_train), self.y_train, _to_uint8(self.x_test), self.y_test
        )[:16]

    @property
    def channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[2])

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    def model_args(self) -> dict:
        """The shape arguments every registered model takes."""
        if self.x_train.shape[2] != self.x_train.shape[3]:
            raise UnlearnKitError(f"{self.name}: the registered models need square images, these are "
                                  f"{self.x_train.shape[2]}x{self.x_train.shape[3]}; resize them (--resize HxW)")
        return {
            "in_channels": self.channels,
            "image_size": self.image_size,
            "num_classes": self.num_classes,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def _identity(self) -> dict:
        """What every data set's description starts with (images and text alike)."""
        return {"name": self.name, "fingerprint": self.fingerprint, "n_train": self.n_train,
                "n_test": int(self.x_test.shape[0]), "num_classes": self.num_classes}

    def describe(self) -> dict:
        return {
            **self._identity(),
            "shape": [self.channels, int(self.x_train.shape[2]), int(self.x_train.shape[3])],
            "source": self.source,
            "class_names": list(self.class_names),
        }

    def subset(self, n_train: int | None = None, n_test: int | None = None, seed: int = 0) -> "Dataset":
        """A seeded, class-stratified subset (for quick experiments and tests); named ``NAME[nTR,nTE]``."""
        gen = torch.Generator().manual_seed(seed)

        def pick(y: torch.Tensor, n: int | None) -> torch.Tensor:
            if n is None or n >= y.numel():
                return torch.arange(y.numel())
            if n <= 0:
                raise UnlearnKitError("a subset needs at least one sample")
            order = torch.randperm(y.numel(), generator=gen)
            # Deal the samples round-robin over the classes, each class in a random order: the first n
            # of that deal hold (nearly) equal counts per class.
            deal = torch.empty_like(order)
            for c in range(self.num_classes):
                members = order[y[order] == c]
                deal[members] = torch.arange(members.numel()) * self.num_classes + c
            return torch.sort(torch.argsort(deal)[:n]).values

        tr, te = pick(self.y_train, n_train), pick(self.y_test, n_test)
        return Dataset(
            name=f"{self.name}[{tr.numel()},{te.numel()}]",
            x_train=self.x_train[tr].contiguous(), y_train=self.y_train[tr].contiguous(),
            x_test=self.x_test[te].contiguous(), y_test=self.y_test[te].contiguous(),
            num_classes=self.num_classes, class_names=self.class_names,
            crop_padding=self.crop_padding, horizontal_flip=self.horizontal_flip,
            source=f"subset(seed={seed}) of {self.source}",
        )


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


def _images(array: np.ndarray) -> torch.Tensor:
    """uint8 N x C x H x W (or N x H x W) array -> float32 tensor in [0, 1]."""
    if array.ndim == 3:
        array = array[:, None]
    return torch.from_numpy(np.ascontiguousarray(array)).float().div_(255.0)


def _labels(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array).astype(np.int64))


def _need_files(root: Path, names: dict[str, list[str]], how_to_get: str) -> dict[str, Path]:
    """Find each wanted file (any of its accepted names) in ``root`` or say exactly what is missing."""
    if root.exists() and not root.is_dir():
        raise UnlearnKitError(f"data directory {root} is not a directory; {how_to_get}")
    if not root.is_dir():
        raise UnlearnKitError(f"data directory {root} does not exist; {how_to_get}")
    found, missing = {}, []
    for key, candidates in names.items():
        hit = next((root / c for c in candidates if (root / c).is_file()), None)
        if hit is None:
            missing.append(candidates[0])
        else:
            found[key] = hit
    if missing:
        raise UnlearnKitError(f"{root} lacks {', '.join(missing)}; {how_to_get}")
    return found


def _idx_pair(root: Path, prefix: str) -> dict[str, list[str]]:
    return {
        f"{prefix}_images": [
            f"{prefix}-images-idx3-ubyte.gz",
            f"{prefix}-images-idx3-ubyte",
            f"{prefix}-images.idx3-ubyte",
        ],
        f"{prefix}_labels": [
            f"{prefix}-labels-idx1-ubyte.gz",
            f"{prefix}-labels-idx1-ubyte",
            f"{prefix}-labels.idx1-ubyte",
        ],
    }


def _load_idx_dataset(name: str, root: Path, how_to_get: str, class_names: tuple[str, ...]) -> Dataset:
    files = _need_files(root, {**_idx_pair(root, "train"), **_idx_pair(root, "t10k")}, how_to_get)
    arrays = {k: formats.read_idx(p) for k, p in files.items()}
    for split in ("train", "t10k"):
        imgs, labs = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if imgs.ndim != 3 or labs.ndim != 1 or imgs.shape[0] != labs.shape[0]:
            raise UnlearnKitError(f"{root}: {split} images {imgs.shape} and labels {labs.shape} do not match")
    return Dataset(
        name=name,
        x_train=_images(arrays["train_images"]), y_train=_labels(arrays["train_labels"]),
        x_test=_images(arrays["t10k_images"]), y_test=_labels(arrays["t10k_labels"]),
        num_classes=10, class_names=class_names, source=str(root),
    )


def load_fashion_mnist(root: str | Path | None = None) -> Dataset:
    return _load_idx_dataset(
        "fashion-mnist", Path(root or FASHION_MNIST_DIR),
        "install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or pass --data-dir "
        "to a folder holding the four IDX files",
        FASHION_MNIST_CLASSES,
    )


def load_mnist(root: str | Path | None = None) -> Dataset:
    if root is None:
        raise UnlearnKitError(
            "MNIST needs --data-dir: a folder with train-images-idx3-ubyte(.gz) and the other three IDX files"
        )
    return _load_idx_dataset(
        "mnist", Path(root), "put the four MNIST IDX files (train-/t10k- images and labels) there",
        tuple(str(i) for i in range(10)),
    )


def _load_cifar(root: str | Path | None, fine: bool) -> Dataset:
    name = "cifar100" if fine else "cifar10"
    if root is None:
        raise UnlearnKitError(f"{name} needs --data-dir: the extracted 'python version' folder of {name.upper()}")
    root = Path(root)
    how = f"extract the python version of {name.upper()} (cifar-{'100' if fine else '10'}-python.tar.gz) there"
    if fine:
        files = _need_files(root, {"train": ["train"], "test": ["test"]}, how)
        train_batches, key = [files["train"]], "fine_labels"
    else:
        files = _need_files(root, {f"b{i}": [f"data_batch_{i}"] for i in range(1, 6)} | {"test": ["test_batch"]}, how)
        train_batches, key = [files[f"b{i}"] for i in range(1, 6)], "labels"
    xs, ys = [], []
    for path in train_batches:
        batch = formats.read_cifar_batch(path)
        xs.append(formats.cifar_images(batch, path))
        ys.append(formats.cifar_labels(batch, key, path))
    test_path = files["test"]
    test = formats.read_cifar_batch(test_path)
    n_classes = 100 if fine else 10
    return Dataset(
        name=name,
        x_train=_images(np.concatenate(xs)),
        y_train=_labels(np.concatenate(ys)),
        x_test=_images(formats.cifar_images(test, test_path)),
        y_test=_labels(formats.cifar_labels(test, key, test_path)),
        num_classes=n_classes,
        class_names=tuple(str(i) for i in range(n_classes)),
        crop_padding=4,
        horizontal_flip=True,
        source=str(root),
    )


def load_cifar10(root: str | Path | None = None) -> Dataset:
    return _load_cifar(root, fine=False)


def load_cifar100(root: str | Path | None = None) -> Dataset:
    return _load_cifar(root, fine=True)


def load_svhn(root: str | Path | None = None) -> Dataset:
    if root is None:
        raise UnlearnKitError("svhn needs --data-dir: a folder with train_32x32.mat and test_32x32.mat")
    root = Path(root)
    files = _need_files(root, {"train": ["train_32x32.mat"], "test": ["test_32x32.mat"]},
                        "put SVHN's cropped-digit files train_32x32.mat and test_32x32.mat there")
    xtr, ytr = formats.read_svhn_mat(files["train"])
    xte, yte = formats.read_svhn_mat(files["test"])
    return Dataset(
        name="svhn", x_train=_images(xtr), y_train=_labels(ytr), x_test=_images(xte), y_test=_labels(yte),
        num_classes=10, class_names=tuple(str(i) for i in range(10)),
        crop_padding=2, horizontal_flip=False,  # flipping digits changes their meaning
        source=str(root),
    )


def load_digits(root: str | Path | None = None, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's 1,797 8x8 digits, split into train/test by a fixed stratified split (seed 0)."""
    if root is not None:
        raise UnlearnKitError("digits is built into scikit-learn; it reads no --data-dir")
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]
    labels = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(images, labels, test_size=test_fraction, random_state=0, stratify=labels)
    return Dataset(
        name="digits", x_train=torch.from_numpy(x_tr), y_train=torch.from_numpy(y_tr),
        x_test=torch.from_numpy(x_te), y_test=torch.from_numpy(y_te),
        num_classes=10, class_names=tuple(str(i) for i in range(10)), source="sklearn.datasets.load_digits",
    )


DATASETS: dict[str, Callable[..., Dataset]] = {
    "fashion-mnist": load_fashion_mnist,
    "mnist": load_mnist,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "svhn": load_svhn,
    "digits": load_digits,
}

DATASET_INFO = {
    "fashion-mnist": {"default_dir": FASHION_MNIST_DIR, "format": "IDX", "shape": [1, 28, 28], "classes": 10},
    "mnist": {"default_dir": None, "format": "IDX", "shape": [1, 28, 28], "classes": 10},
    "cifar10": {"default_dir": None, "format": "CIFAR python batches", "shape": [3, 32, 32], "classes": 10},
    "cifar100": {"default_dir": None, "format": "CIFAR python batches", "shape": [3, 32, 32], "classes": 100},
    "svhn": {"default_dir": None, "format": "SVHN .mat", "shape": [3, 32, 32], "classes": 10},
    "digits": {"default_dir": None, "format": "scikit-learn", "shape": [1, 8, 8], "classes": 10},
}

_CACHE: dict[tuple[str, str], Dataset] = {}
USER_DATA_CACHE: dict[tuple, Dataset] = {}


def load_dataset(
    name: str, data_dir: str | os.PathLike | None = None, *, subset: tuple[int, int] | None = None
) -> Dataset:
    """Load a registered data set by name (cached per process).

    ``subset=(n_train, n_test)`` returns a seeded class-stratified subset, e.g. for quick runs.
    A name may also carry the subset, as in ``fashion-mnist[6000,1000]``.
    """
    base, parsed_subset = _parse_name(name)
    subset = subset or parsed_subset
    from . import readers

    if readers.is_spec(base):  # imagefolder:PATH, npz:PATH, hf:PATH, prepared:DIR (docs/your-own-model.md)
        key = readers.cache_key(base, data_dir)
        if key is None:
            data = Dataset(**readers.load_spec(base, data_dir))
        else:  # decoded once per process until a file changes; one user data set at a time (they can be large)
            if key not in USER_DATA_CACHE:
                USER_DATA_CACHE.clear()
                USER_DATA_CACHE[key] = Dataset(**readers.load_spec(base, data_dir))
            data = USER_DATA_CACHE[key]
        return data.subset(*subset) if subset else data
    if base not in DATASETS:
        raise UnlearnKitError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}, or "
                              f"{', '.join(k + ':PATH' for k in readers.KINDS)}")
    key = (base, str(data_dir))
    if key not in _CACHE:
        _CACHE[key] = DATASETS[base](data_dir)
    data = _CACHE[key]
    return data.subset(*subset) if subset else data


def as_dataset(data: str | Dataset, data_dir: str | os.PathLike | None = None) -> Dataset:
    """``data`` itself when it is a :class:`Dataset`, else the registered data set of that name."""
    return data if isinstance(data, Dataset) else load_dataset(data, data_dir)


def _parse_name(name: str) -> tuple[str, tuple[int, int] | None]:
    name = name.strip()
    if name.endswith("]") and "[" in name:
        base, _, rest = name[:-1].partition("[")
        try:
            n_train, n_test = (int(v) for v in rest.split(","))
        except ValueError:
            raise UnlearnKitError(f"bad subset in data set name {name!r}; use NAME[N_TRAIN,N_TEST]") from None
        return base, (n_train, n_test)
    return name, None
