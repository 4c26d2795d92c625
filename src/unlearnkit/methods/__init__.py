"""Unlearning methods: one module each, all registered in :data:`METHODS` and run by :func:`unlearn`."""

from .base import METHODS, MethodInfo, Task, Unlearned, make_config, register, unlearn

# Importing a method module registers it.
from . import retrain, finetune, grad_ascent, random_label, l1_sparse, salun, scrub, boundary_shrink, perturb  # noqa: E402,F401
from . import fisher, influence, ssd, warnecke, saps  # noqa: E402,F401

__all__ = ["METHODS", "MethodInfo", "Task", "Unlearned", "make_config", "register", "unlearn"]
