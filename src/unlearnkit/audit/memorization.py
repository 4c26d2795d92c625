"""Memorisation scores for hard forget sets (``memorized:K`` requests).

An example is *memorised* when a model is much more confident on it if it was trained on it than if it was
not (Feldman & Zhang 2020). To see every training example both ways, the audit trains M "split" models in
complementary pairs: pair p draws a seeded random half H_p of the training set; one model is trained on H_p,
the other on the rest. Every example is thus trained on by exactly M/2 split models and held out of M/2, and

    mem(i) = mean over models that trained on i of p_y(i) − mean over models that did not,

with p_y the softmax probability of the true label, in [−1, 1]. The split models are ordinary retrained models
(the original recipe on half the data; cached by :class:`~unlearnkit.bench.runner.ModelCache` under a request
that "forgets" the other half), so they are trained once and reused. The originals are not mixed in: trained
on twice the data, they are more confident on *every* example, which would blur "was trained on i" with
"saw more data".
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from ..data import Dataset
from ..errors import UnlearnKitError
from ..requests import SCORES_FORMAT, Request

SPLIT_SEED_OFFSET = 2000  # split pair p uses seeds 2000 + 2p and 2001 + 2p (disjoint from the N models' seeds)


def split_requests(data: Dataset, n_models: int, seed_offset: int = SPLIT_SEED_OFFSET) -> list[Request]:
    """``n_models`` (even) requests whose retained sets are complementary seeded halves of the training set.

    Request 2p forgets H_p (its model trains on the rest), request 2p + 1 forgets the rest (trains on H_p).
    They carry their ids, so the checkpoints that record them can be reloaded like ``ids:`` requests.
    """
    if n_models < 2 or n_models % 2:
        raise UnlearnKitError(f"memorisation needs an even number (≥ 2) of split models, got {n_models}")
    n = data.n_train
    out = []
    for pair in range(n_models // 2):
        salt = int(hashlib.sha256(f"split:{pair}".encode()).hexdigest()[:8], 16)
        gen = torch.Generator().manual_seed(seed_offset * 1_000_003 + salt)
        perm = torch.randperm(n, generator=gen)
        half = torch.sort(perm[: n // 2]).values
        rest = torch.sort(perm[n // 2:]).values
        for k, (forget, retain) in enumerate(((half, rest), (rest, half))):
            seed = seed_offset + 2 * pair + k
            out.append(Request(f"split:{pair}{'ab'[k]}", "remove", seed, forget, retain, ids=forget.tolist()))
    return out


def memorization_scores(true_class_probs: np.ndarray, trained_on: np.ndarray) -> np.ndarray:
    """mean p_y over the models that trained on each example − mean over those that did not.

    ``true_class_probs`` and ``trained_on`` are models × examples (float, bool). Every example must be in
    and out of at least one model each.
    """
    probs = np.asarray(true_class_probs, dtype=np.float64)
    inside = np.asarray(trained_on, dtype=bool)
    if probs.shape != inside.shape:
        raise UnlearnKitError(f"memorisation: {probs.shape} probabilities but a {inside.shape} membership mask")
    n_in, n_out = inside.sum(0), (~inside).sum(0)
    if (n_in == 0).any() or (n_out == 0).any():
        raise UnlearnKitError(
            "memorisation: every example must be trained on by some split models and held out of others"
        )
    return (probs * inside).sum(0) / n_in - (probs * ~inside).sum(0) / n_out


def scores_record(data: Dataset, scores: np.ndarray, models: dict) -> dict:
    """The JSON a ``memorized:K:FILE`` request reads (see :func:`unlearnkit.requests.read_memorization_scores`)."""
    return {"format": SCORES_FORMAT, "dataset": data.name, "data_fingerprint": data.fingerprint,
            "definition": "mean true-class probability of split models trained on the example minus that of split "
                          "models not trained on it (complementary random halves)",
            "models": models, "scores": [round(float(s), 8) for s in scores]}
