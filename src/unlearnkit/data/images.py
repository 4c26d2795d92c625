"""What the readers of users' own data (``imagefolder:``, ``npz:``, ``hf:``) share.

A reader does not build tensors itself: it returns a :class:`Plan` — the class names, the image shape, the
labels (small, held in memory) and a function that decodes any range of images of a split into float32
N x C x H x W in [0, 1]. The same plan is then either materialised in memory (:func:`materialize`) or
written once to memory-mapped files by ``unlearnkit data prepare`` (:mod:`.prepared`), chunk by chunk, so
both paths hold exactly the same pixels. Their mean/std and fingerprint come from :func:`image_stats`,
which reads the images in chunks (bounded memory) and gives the same fingerprint as the built-in data sets
(SHA-256 of the decoded pixels as uint8 and the labels).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..errors import UnlearnKitError

SPLITS = ("train", "test")
CHUNK = 1024  # images decoded (or hashed) at a time: memory per chunk = CHUNK x C x H x W x 4 bytes

# Pillow modes read as one grey channel; every other supported mode is read as RGB (alpha is dropped).
GREY_MODES = frozenset({"1", "L", "LA"})
COLOUR_MODES = frozenset({"RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"})


@dataclass
class Plan:
    """How to read one data set: everything but the pixels is held in memory."""

    name: str  # the canonical spec that loads it again (recorded in checkpoints)
    source: str  # where it came from, for people
    class_names: tuple[str, ...]
    shape: tuple[int, int, int]  # C, H, W
    labels: dict[str, np.ndarray]  # split -> int64 labels
    read: Callable[[str, int, int], np.ndarray]  # (split, start, stop) -> float32 (stop-start) x C x H x W

    def count(self, split: str) -> int:
        return int(self.labels[split].shape[0])

    def chunks(self, split: str, size: int = CHUNK) -> Iterator[tuple[int, np.ndarray]]:
        n = self.count(split)
        for start in range(0, n, size):
            stop = min(start + size, n)
            block = self.read(split, start, stop)
            if block.shape != (stop - start, *self.shape) or block.dtype != np.float32:
                raise AssertionError(f"reader returned {block.dtype} {block.shape} for {split}[{start}:{stop}]")
            yield start, block


def parse_resize(text: str | None) -> tuple[int, int] | None:
    """``HxW`` (e.g. ``32x32``) -> (H, W); None stays None."""
    if text is None or text == "":
        return None
    h, sep, w = str(text).lower().partition("x")
    try:
        size = (int(h), int(w))
    except ValueError:
        size = (0, 0)
    if not sep or min(size) < 1 or max(size) > 4096:
        raise UnlearnKitError(f"bad resize {text!r}; use HxW with 1 <= H, W <= 4096, e.g. 32x32")
    return size


def channels_of(modes: set[str], where: str) -> int:
    """1 when every image is grey, 3 otherwise; 16-bit and float images are refused (convert them to 8-bit)."""
    odd = sorted(m for m in modes if m not in GREY_MODES and m not in COLOUR_MODES)
    if odd:
        raise UnlearnKitError(f"{where}: images of mode {odd[0]} (16-bit or float) are not supported; "
                              f"save them as 8-bit grey or RGB")
    return 1 if modes <= GREY_MODES else 3


def pil_to_array(image, channels: int, resize: tuple[int, int] | None) -> np.ndarray:
    """A decoded PIL image -> uint8 C x H x W (converted to grey or RGB, optionally resized to H x W)."""
    from PIL import Image

    image = image.convert("L" if channels == 1 else "RGB")
    if resize is not None and image.size != (resize[1], resize[0]):
        image = image.resize((resize[1], resize[0]), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def uint8_to_float(array: np.ndarray) -> np.ndarray:
    """uint8 -> float32 / 255, computed exactly as the built-in data sets do it (so fingerprints agree)."""
    return torch.from_numpy(np.ascontiguousarray(array)).float().div_(255.0).numpy()


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    """Integer labels in 0..num_classes-1 as int64, or one line naming the first bad one."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise UnlearnKitError(f"{where}: labels must be one-dimensional, got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise UnlearnKitError(f"{where}: labels must be integers, got {labels.dtype}")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise UnlearnKitError(f"{where}: label {int(labels[i])} at position {i} is outside 0..{num_classes - 1} "
                              f"({bad.size} such label(s))")
    return labels.astype(np.int64)


def image_stats(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                chunk: int = CHUNK) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """Per-channel mean and (unbiased) std of the training images, and the data set's fingerprint.

    Reads ``chunk`` images at a time, so it works on memory-mapped tensors in bounded memory. The
    fingerprint is byte-for-byte :func:`unlearnkit._util.sha256_tensors` over the images as uint8 and the
    labels (what :class:`~unlearnkit.data.Dataset` computes in one go), streamed.
    """
    digest = hashlib.sha256()
    channels = int(x_train.shape[1])
    count, mean, m2 = 0, np.zeros(channels), np.zeros(channels)
    for x, y, is_train in ((x_train, y_train, True), (x_test, y_test, False)):
        digest.update(f"{torch.uint8}:{tuple(x.shape)};".encode())
        for start in range(0, int(x.shape[0]), chunk):
            block = x[start : start + chunk]
            digest.update((block * 255).round().clamp(0, 255).to(torch.uint8).contiguous().numpy().tobytes())
            if is_train:  # Chan et al.'s pairwise update of count, mean and sum of squared deviations
                values = block.transpose(0, 1).reshape(channels, -1).double().numpy()
                n_b = values.shape[1]
                mean_b = values.mean(1)
                m2_b = ((values - mean_b[:, None]) ** 2).sum(1)
                delta = mean_b - mean
                total = count + n_b
                mean = mean + delta * n_b / total if total else mean
                m2 = m2 + m2_b + delta ** 2 * count * n_b / max(total, 1)
                count = total
        labels = y.contiguous()
        digest.update(f"{labels.dtype}:{tuple(labels.shape)};".encode())
        digest.update(labels.numpy().tobytes())
    std = np.sqrt(m2 / max(count - 1, 1))
    return (tuple(float(v) for v in mean), tuple(max(float(v), 1e-6) for v in std), digest.hexdigest()[:16])


def materialize(plan: Plan) -> dict:
    """The plan's images decoded into memory: the arguments of a :class:`~unlearnkit.data.Dataset`."""
    tensors = {}
    for split in SPLITS:
        x = torch.empty((plan.count(split), *plan.shape), dtype=torch.float32)
        for start, block in plan.chunks(split):
            x[start : start + block.shape[0]] = torch.from_numpy(block)
        tensors[split] = x
    return dataset_arguments(plan.name, plan.source, plan.class_names, tensors["train"],
                             torch.from_numpy(plan.labels["train"]), tensors["test"],
                             torch.from_numpy(plan.labels["test"]))


def dataset_arguments(name: str, source: str, class_names: tuple[str, ...], x_train: torch.Tensor,
                      y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor) -> dict:
    """``Dataset(**arguments)`` with statistics from :func:`image_stats` (the same in memory and disk-backed)."""
    return dict(name=name, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                num_classes=len(class_names), class_names=tuple(class_names), source=source,
                stats=image_stats(x_train, y_train, x_test, y_test))


def file_signature(paths: list[Path]) -> tuple:
    """Sizes and modification times: a cheap key that changes when any of the files does."""
    out = []
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            continue
        out.append((str(p), st.st_size, st.st_mtime_ns))
    return tuple(out)
