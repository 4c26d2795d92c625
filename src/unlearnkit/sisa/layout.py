"""Provenance (sample id -> shard, slice), per-sample status, and the ids every training stage sees.

Vocabulary used throughout :mod:`unlearnkit.sisa` and :mod:`unlearnkit.hybrid`:

* shards ``k = 0..S-1`` and slices ``j = 0..R-1`` are 0-based; every training sample belongs to exactly
  one (shard, slice), chosen once by a seeded random permutation and never changed;
* **stage** ``r = 0..R`` of a shard is its model after training on slices ``0..r-1``: stage 0 is the seeded
  initialisation, stage ``r >= 1`` trains on the still-present ids of slices ``0..r-1`` for the configured
  epochs, starting from stage ``r-1``. A deletion whose first affected slice is ``j`` therefore resumes
  from stage ``j`` and retrains stages ``j+1..R``;
* a stage's **key** hashes everything that determines its weights: the recipe (root) and, stage by stage,
  the sorted ids it trained on. Stage checkpoints are stored under their key, so a retrain reuses exactly
  those stages whose history is unchanged, and nothing else;
* per-sample **status**: ``ACTIVE``, ``DELETED_EXACT`` (its shard was retrained without it) or
  ``DELETED_APPROX`` (removed by the approximate path; the shard's stage checkpoints still contain it, so
  the next exact retrain of that shard must start before its slice too).

Everything here is vectorised numpy: locating 10,000 ids and counting what a plan leaves is a handful of
array operations, never a Python loop over ids.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import UnlearnKitError

ACTIVE, DELETED_EXACT, DELETED_APPROX = 0, 1, 2


def derived_seed(*parts: object) -> int:
    """A 60-bit seed that is a pure function of ``parts`` (e.g. the run seed, a shard and a stage)."""
    text = ":".join(str(p) for p in parts)
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)


def stage_seed(seed: int, shard: int, stage: int) -> int:
    """Seed of shard ``shard``'s stage ``stage`` (stage 0: the model's initialisation)."""
    return derived_seed("sisa-stage", seed, shard, stage)


def ids_digest(ids: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(ids, dtype="<i8").tobytes()).hexdigest()


@dataclass
class Provenance:
    """Which shard and slice holds every training sample id (immutable after training)."""

    shard_of: np.ndarray  # int16 [N]
    slice_of: np.ndarray  # int16 [N]
    shards: int
    slices: int
    members: list[np.ndarray] = field(init=False, repr=False)  # per shard: its ids, sorted
    member_slices: list[np.ndarray] = field(init=False, repr=False)  # per shard: the slice of each member

    def __post_init__(self) -> None:
        self.shard_of = np.asarray(self.shard_of, dtype=np.int16)
        self.slice_of = np.asarray(self.slice_of, dtype=np.int16)
        if self.shard_of.shape != self.slice_of.shape or self.shard_of.ndim != 1:
            raise UnlearnKitError("provenance arrays must be 1-D and of equal length")
        if self.n and (self.shard_of.min() < 0 or self.shard_of.max() >= self.shards
                       or self.slice_of.min() < 0 or self.slice_of.max() >= self.slices):
            raise UnlearnKitError("provenance names shards or slices outside the configured grid")
        self.members = [np.flatnonzero(self.shard_of == k) for k in range(self.shards)]
        self.member_slices = [self.slice_of[m] for m in self.members]

    @property
    def n(self) -> int:
        return int(self.shard_of.shape[0])

    @classmethod
    def assign(cls, n: int, shards: int, slices: int, seed: int) -> "Provenance":
        """Deal a seeded random permutation of ``0..n-1`` into ``shards`` equal shards of ``slices`` equal slices."""
        if shards < 1 or slices < 1:
            raise UnlearnKitError("a SISA model needs at least one shard and one slice")
        if n < shards * slices:
            raise UnlearnKitError(f"{n} training samples cannot fill {shards} shards x {slices} slices; use fewer")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(derived_seed("sisa-provenance", seed))).numpy()
        shard_of = np.empty(n, dtype=np.int16)
        slice_of = np.empty(n, dtype=np.int16)
        for k, part in enumerate(np.array_split(perm, shards)):
            shard_of[part] = k
            for j, piece in enumerate(np.array_split(part, slices)):
                slice_of[piece] = j
        return cls(shard_of, slice_of, shards, slices)

    # -- lookups (vectorised) -----------------------------------------------------------------------
    def counts(self, status: np.ndarray) -> np.ndarray:
        """Active samples per (shard, slice): an ``S x R`` int64 array."""
        cell = self.shard_of.astype(np.int64) * self.slices + self.slice_of
        return np.bincount(cell, weights=(status == ACTIVE), minlength=self.shards * self.slices) \
            .astype(np.int64).reshape(self.shards, self.slices)

    def shard_sizes(self) -> np.ndarray:
        return np.bincount(self.shard_of, minlength=self.shards).astype(np.int64)

    def stage_ids(self, shard: int, stage: int, removed: np.ndarray) -> np.ndarray:
        """Sorted ids that stage ``stage`` (>= 1) of ``shard`` trains on: slices ``0..stage-1`` minus ``removed``."""
        members = self.members[shard]
        keep = (self.member_slices[shard] < stage) & ~removed[members]
        return members[keep]

    def stage_keys(self, shard: int, removed: np.ndarray, root: str) -> list[str]:
        """Keys of stages ``0..R`` of ``shard`` when the ids flagged in ``removed`` are left out.

        ``key[r] = sha256(key[r-1] | sha256(ids of stage r))`` with ``key[0] = sha256(root | shard)``: equal keys
        mean equal training histories, so equal weights.
        """
        key = hashlib.sha256(f"{root}|shard={shard}".encode()).hexdigest()
        keys = [key]
        for stage in range(1, self.slices + 1):
            key = hashlib.sha256(f"{key}|{ids_digest(self.stage_ids(shard, stage, removed))}".encode()).hexdigest()
            keys.append(key)
        return keys

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"shard_of": torch.from_numpy(self.shard_of.copy()), "slice_of": torch.from_numpy(self.slice_of.copy())}
