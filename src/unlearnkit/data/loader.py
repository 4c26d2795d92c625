"""Index batching over in-memory tensors, with augmentation as batched tensor ops.

No per-sample Python work: a :class:`Source` holds the full image and label tensors and a vector of
indices; each epoch it shuffles the indices with a seeded generator and yields index slices, so the
same code runs on CPU and GPU and the batch order is a pure function of the seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass(frozen=True)
class Augment:
    """Random crop after zero padding, and random horizontal flip; both applied per sample."""

    crop_padding: int = 0
    horizontal_flip: bool = False

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.horizontal_flip

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        if self.crop_padding > 0:
            p = self.crop_padding
            padded = torch.nn.functional.pad(x, (p, p, p, p))
            # Random offsets drawn on the CPU generator (reproducible), then moved to x's device.
            dy = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(x.device)
            dx = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(x.device)
            rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # n x h x 1
            cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # n x 1 x w
            batch = torch.arange(n, device=x.device)[:, None, None]
            x = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
        if self.horizontal_flip:
            flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x.contiguous()


def augment_for(data) -> Augment:
    """The training augmentation a data set declares (its ``crop_padding`` and ``horizontal_flip``)."""
    return Augment(data.crop_padding, data.horizontal_flip)


@dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor  # positions of these samples in the source's x/y (sample ids)


class Source:
    """A shuffled, batched view of ``x[indices]``, ``y[indices]``.

    ``x`` and ``y`` are whole-data-set tensors (kept on ``device`` if given); ``indices`` picks the samples.
    ``y`` may differ from the data set's labels (e.g. random labels for the forget set).
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        indices: torch.Tensor | None = None,
        *,
        batch_size: int = 128,
        shuffle: bool = True,
        augment: Augment | None = None,
        drop_last: bool = False,
        sample_from: torch.Tensor | None = None,
        sample_size: int = 0,
        name: str = "data",
    ) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{name}: {x.shape[0]} images but {y.shape[0]} labels")
        self.x, self.y = x, y
        self.indices = torch.arange(x.shape[0]) if indices is None else indices.to(torch.long).cpu()
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.augment = augment if augment is not None and augment.active else None
        self.drop_last = drop_last
        # Each pass adds a fresh seeded random sample of ``sample_size`` ids drawn from ``sample_from``
        # (e.g. a different part of the retain set every epoch, at a fixed cost per epoch).
        self.sample_from = None if sample_from is None else sample_from.to(torch.long).cpu()
        self.sample_size = int(min(sample_size, 0 if sample_from is None else sample_from.numel()))
        if self.sample_size and not shuffle:
            raise ValueError(f"{name}: sampling from a pool needs a shuffled source")
        self.name = name

    def __len__(self) -> int:
        """Number of samples in one pass."""
        return int(self.indices.numel()) + self.sample_size

    def num_batches(self) -> int:
        n = len(self)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def to(self, device: torch.device) -> "Source":
        clone = Source.__new__(Source)
        clone.__dict__.update(self.__dict__)
        clone.x, clone.y = self.x.to(device), self.y.to(device)
        return clone

    def batches(self, generator: torch.Generator | None = None, device: torch.device | None = None) -> Iterator[Batch]:
        order = self.indices
        if self.shuffle:
            if generator is None:
                raise ValueError("a shuffled source needs a generator (for reproducible order)")
            if self.sample_size:
                pool = self.sample_from
                order = torch.cat([order, pool[torch.randperm(pool.numel(), generator=generator)[: self.sample_size]]])
            order = order[torch.randperm(order.numel(), generator=generator)]
        stop = len(order) - (len(order) % self.batch_size if self.drop_last else 0)
        for start in range(0, stop, self.batch_size):
            idx = order[start : start + self.batch_size]
            dev_idx = idx.to(self.x.device)
            xb, yb = self.x[dev_idx], self.y[dev_idx]
            if device is not None:
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            if self.augment is not None:
                xb = self.augment(xb, generator if generator is not None else torch.Generator().manual_seed(0))
            yield Batch(xb, yb, idx)
