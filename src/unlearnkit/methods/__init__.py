"""Unlearning methods: one module each, all registered in :data:`METHODS` and run by :func:`unlearn`."""

from .base import (
    METHODS,
    MethodInfo,
    Task,
    Unlearned,
    forget_retain_accuracy,
    make_config,
    recorded_config,
    register,
    unlearn,
)

# Importing a method module registers it; this order is the registry's (`unlearnkit info`, the docs' tables).
# isort: off
from . import retrain, finetune, grad_ascent, random_label, l1_sparse, salun, scrub, boundary_shrink, perturb  # noqa: F401
from . import fisher, influence, ssd, warnecke, saps, neggrad_plus, rum, scar  # noqa: F401
# isort: on

__all__ = ["METHODS", "MethodInfo", "Task", "Unlearned", "forget_retain_accuracy", "make_config", "recorded_config",
           "register", "unlearn"]
