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
        return self.apply(x, self.draw(x.shape[0], generator))

    def draw(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The random offsets and flips of ``n`` samples, drawn on ``generator``'s device (a CUDA generator keeps the
        whole step on the GPU; the CPU one is reproducible across machines). Drawn for a whole global batch, so each
        process of a data-parallel run takes its part of the same draws (:meth:`apply` on a slice)."""
        drawn: dict[str, torch.Tensor] = {}
        on = generator.device
        if self.crop_padding > 0:
            span = 2 * self.crop_padding + 1
            drawn["dy"] = torch.randint(0, span, (n,), generator=generator, device=on)
            drawn["dx"] = torch.randint(0, span, (n,), generator=generator, device=on)
        if self.horizontal_flip:
            drawn["flip"] = torch.rand(n, generator=generator, device=on) < 0.5
        return drawn

    def apply(self, x: torch.Tensor, drawn: dict[str, torch.Tensor]) -> torch.Tensor:
        n, _, h, w = x.shape
        if self.crop_padding > 0:
            p = self.crop_padding
            padded = torch.nn.functional.pad(x, (p, p, p, p))
            dy, dx = drawn["dy"].to(x.device), drawn["dx"].to(x.device)
            rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # n x h x 1
            cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # n x 1 x w
            batch = torch.arange(n, device=x.device)[:, None, None]
            x = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
        if self.horizontal_flip:
            flip = drawn["flip"].to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x.contiguous()


def augment_for(data) -> Augment:
    """The training augmentation a data set declares (its ``crop_padding`` and ``horizontal_flip``)."""
    return Augment(data.crop_padding, data.horizontal_flip)


@dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor  # positions of these samples in the source's x/y (sample ids), on the CPU
    # A process's part of a global batch (data-parallel training, ``shard=``): the global batch's size, and the weight
    # that makes the average over processes of ``weight`` x this part's mean loss the global batch's mean loss
    # (processes x part size / global size; 0 for a stand-in sample where the global batch has fewer samples than
    # there are processes).
    whole: int | None = None
    weight: float = 1.0

    @property
    def samples(self) -> int:
        """Real samples in this batch (a zero-weight stand-in counts none)."""
        return 0 if self.weight == 0 else int(self.y.shape[0])


def part_of(n: int, rank: int, world: int) -> tuple[int, int]:
    """Positions ``[lo, hi)`` of process ``rank``'s part of a global batch of ``n``: contiguous, sizes differing by at
    most one (``torch.tensor_split``'s rule), so the parts of all processes are the global batch in order."""
    size, extra = divmod(n, world)
    lo = rank * size + min(rank, extra)
    return lo, lo + size + (1 if rank < extra else 0)


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

    def batches(self, generator: torch.Generator | None = None, device: torch.device | None = None, *,
                augment_generator: torch.Generator | None = None,
                shard: tuple[int, int] | None = None) -> Iterator[Batch]:
        """The epoch's batches. ``generator`` (CPU) draws the order; augmentation draws on ``augment_generator``
        (default: ``generator``; a CUDA generator keeps augmentation on the GPU). Images on the CPU bound for a CUDA
        ``device`` are gathered into pinned memory and copied without blocking; images already on the device (see
        :meth:`to`) are gathered there, from an order copied once per epoch.

        ``shard=(rank, world)`` yields only process ``rank``'s part of each global batch (:func:`part_of`): every
        process draws the same order and augmentation, so the parts of all processes are exactly the batches of
        the one-process run (what ``DistributedSampler`` does per epoch, but per global batch, without padding)."""
        order = self.indices
        if self.shuffle:
            if generator is None:
                raise ValueError("a shuffled source needs a generator (for reproducible order)")
            if self.sample_size:
                pool = self.sample_from
                order = torch.cat([order, pool[torch.randperm(pool.numel(), generator=generator)[: self.sample_size]]])
            order = order[torch.randperm(order.numel(), generator=generator)]
        aug_generator = augment_generator if augment_generator is not None else generator
        if self.augment is not None and aug_generator is None:
            aug_generator = torch.Generator().manual_seed(0)
        resident = self.x.device.type != "cpu"
        # One host-to-device copy of the order per epoch, not one small blocking copy per batch.
        dev_order = _to_device(order, self.x.device) if resident else order
        pin = not resident and device is not None and torch.device(device).type == "cuda"
        rank, world = shard if shard is not None else (0, 1)
        stop = len(order) - (len(order) % self.batch_size if self.drop_last else 0)
        for start in range(0, stop, self.batch_size):
            whole = min(self.batch_size, stop - start)
            lo, hi = part_of(whole, rank, world)
            weight = world * (hi - lo) / whole
            if hi == lo:  # fewer samples than processes: a zero-weight stand-in keeps the collective calls in step
                lo, hi = 0, 1
            idx = order[start + lo : start + hi]
            xb = _gather(self.x, dev_order[start + lo : start + hi], pin)
            yb = _gather(self.y, dev_order[start + lo : start + hi], pin)
            if device is not None:
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            if self.augment is not None:
                drawn = self.augment.draw(whole, aug_generator)
                xb = self.augment.apply(xb, {k: v[lo:hi] for k, v in drawn.items()})
            yield Batch(xb, yb, idx, whole if shard is not None else None, weight)


def _gather(t: torch.Tensor, idx: torch.Tensor, pin: bool) -> torch.Tensor:
    if not pin:
        return t[idx]
    # Pinned buffers come from torch's caching host allocator, which keeps one alive until its copy has finished.
    out = torch.empty((idx.numel(), *t.shape[1:]), dtype=t.dtype, pin_memory=True)
    return torch.index_select(t, 0, idx, out=out)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)
