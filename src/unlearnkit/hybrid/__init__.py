"""The hybrid planner (Qu, Li et al., 2024): estimate what a batch of deletions costs each way, retrain
exactly (SISA) when that is cheap enough, otherwise modify the affected shards directly and amend them;
record every request in a durable ledger. See docs/sisa.md."""

from .approx import ApproxResult, amend, approximate_delete
from .calibrate import calibrate
from .cost import Calibration, Estimate, Policy, estimate_approx, estimate_exact, exact_work, makespan
from .ledger import Ledger, RequestRecord
from .planner import ApproxSettings, Plan, make_plan, validate_ids
from .service import Unlearner, ids_from_request, model_lock

__all__ = [
    "ApproxResult", "amend", "approximate_delete", "calibrate", "Calibration", "Estimate", "Policy", "estimate_approx",
    "estimate_exact", "exact_work", "makespan", "Ledger", "RequestRecord", "ApproxSettings", "Plan", "make_plan",
    "validate_ids", "Unlearner", "ids_from_request", "model_lock",
]
