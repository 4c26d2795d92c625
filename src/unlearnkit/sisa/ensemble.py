"""The SISA ensemble: the mean of the shards' softmax probabilities, as one ``nn.Module``."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Ensemble(nn.Module):
    """Returns ``log(mean_k softmax(member_k(x)))``.

    These are valid logits: their softmax is exactly the mean of the members' probabilities, so every
    function of the project that takes a classifier (``predict_logits``, ``evaluate``, the MIA) sees the
    ensemble's averaged prediction.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_probs = torch.stack([F.log_softmax(m(x).float(), dim=1) for m in self.members])
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.members))
