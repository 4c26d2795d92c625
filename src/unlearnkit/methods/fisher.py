"""Fisher forgetting (FF; Golatkar et al., CVPR 2020): add Gaussian noise whose variance is ∝ the inverse
diagonal Fisher of the retain set, so parameters the retained data does not pin down are scrambled:
θ ← μ + sqrt(α · min(1/(F + ε), cap)) ⊙ z. For class requests μ sets the forgotten classes' rows of the
classifier to zero (with tiny variance); no other class is treated specially. The Fisher is estimated on
``fisher_samples`` retain samples (the reference code's defect of zeroing class 9's row in random forgetting,
by matching any parameter whose first dimension equals the class count, is not repeated)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .. import curvature
from ..models import last_layer
from .base import Task, option, register


@dataclass
class FisherConfig:
    alpha: float = option(1e-7, "noise scale α (variance = α / Fisher)", ge=0, le=1)
    fisher_samples: int = option(4096, "retain samples used to estimate the diagonal Fisher", ge=1, le=10**8)
    kind: Literal["sampled", "empirical", "exact"] = option("sampled", "Fisher estimator (see unlearnkit.curvature)")
    epsilon: float = option(1e-8, "added to the Fisher before inverting", gt=0, le=1)
    variance_cap: float = option(1e3, "upper bound on 1/(F + ε)", gt=0, le=1e12)
    zero_forgotten_rows: bool = option(True, "class requests: set the forgotten classes' classifier rows to zero")


@register("fisher", FisherConfig, touches=("retain",), summary="noise ∝ inverse diagonal Fisher of D_r (FF)")
def fisher(task: Task, cfg: FisherConfig) -> None:
    model = task.model
    source = task.retain_source(256, shuffle=False)
    fisher_diag = curvature.fisher_diagonal(model, source, kind=cfg.kind, max_samples=cfg.fisher_samples,
                                            generator=task.generator)
    head = last_layer(model)
    head_params = {id(head.weight): "weight", id(head.bias) if head.bias is not None else None: "bias"}
    forgotten = list(task.request.classes) if cfg.zero_forgotten_rows else []
    with torch.no_grad():
        for name, param in model.named_parameters():
            variance = (1.0 / (fisher_diag[name] + cfg.epsilon)).clamp(max=cfg.variance_cap)
            mean = param.detach().clone()
            if forgotten and id(param) in head_params:
                mean[forgotten] = 0.0
                variance[forgotten] = 1e-4
            noise = torch.randn(param.shape, generator=task.generator).to(param.device)
            param.copy_(mean + (cfg.alpha * variance).sqrt() * noise)
