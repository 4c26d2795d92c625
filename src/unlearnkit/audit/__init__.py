"""Evidence of forgetting that can be trusted: per-example attacks against many retrained models.

``unlearnkit audit`` (or :func:`run_audit`) trains N originals and, per request, N retrained references (cached
and reused), runs each method on each original, and measures per forget example how well an attacker tells
the unlearned models from the retrained ones: U-LiRA (Hayes et al. 2024), the NeurIPS 2023 unlearning
challenge's ε score, and the same attack on retained examples. See docs/audit.md.
"""

from .core import ORIGINAL, AuditSettings, analyse, audit_variants, run_audit
from .memorization import memorization_scores, split_requests
from .stats import (
    AttackSummary,
    challenge_score,
    epsilon_from_rates,
    example_epsilon,
    example_epsilons,
    forgetting_quality,
    held_out_likelihood_ratios,
    roc_auc,
    tpr_at_fpr,
    ulira,
)

__all__ = [
    "AuditSettings",
    "run_audit",
    "analyse",
    "audit_variants",
    "ORIGINAL",
    "memorization_scores",
    "split_requests",
    "AttackSummary",
    "ulira",
    "held_out_likelihood_ratios",
    "roc_auc",
    "tpr_at_fpr",
    "epsilon_from_rates",
    "example_epsilon",
    "example_epsilons",
    "forgetting_quality",
    "challenge_score",
]
