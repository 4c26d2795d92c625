"""Pruning: which weights are prunable, one-shot magnitude pruning (OMP), iterative magnitude pruning with
weight rewinding (IMP), SynFlow, pruning specs (``omp:0.95``) and the ``unlearnkit prune`` command.

Masks live in the model as ``<param>_prune_mask`` buffers (:mod:`unlearnkit.masks`, re-exported here):
they travel with ``state_dict``, checkpoints and ``.to(device)``, the training loop re-applies them after
every optimiser step and :func:`unlearnkit.methods.unlearn` after every method. See ``docs/sparsity.md``.
"""

from ..masks import PRUNE_SUFFIX, attach_prune_masks, enforce_prune_masks, prune_masks, remove_prune_masks
from .layers import LAYER_CHOICES, global_sparsity, layer_sparsity, prunable_names
from .magnitude import (
    imp_schedule,
    iterative_magnitude_prune,
    magnitude_prune,
    rewind,
    select_survivors,
    snapshot,
    train_with_snapshot,
)
from .spec import PRUNE_METHODS, PruneSpec, parse_prune_spec
from .synflow import SynFlowScorer, input_shape_of, synflow_prune, synflow_scores
from .workflow import (
    PRUNE_FIRST_FINETUNE_EPOCHS,
    ClassifierTrainer,
    Pruned,
    PruneResult,
    prune,
    prune_checkpoint,
    prune_first,
    prune_first_finetune_epochs,
    replay_rewind_state,
    save_pruned,
    train_sparse,
)

__all__ = [
    "PRUNE_SUFFIX", "attach_prune_masks", "enforce_prune_masks", "prune_masks", "remove_prune_masks",
    "LAYER_CHOICES", "global_sparsity", "layer_sparsity", "prunable_names",
    "imp_schedule", "iterative_magnitude_prune", "magnitude_prune", "rewind", "select_survivors", "snapshot",
    "train_with_snapshot", "PRUNE_METHODS", "PruneSpec", "parse_prune_spec", "SynFlowScorer", "input_shape_of",
    "synflow_prune", "synflow_scores", "ClassifierTrainer", "PruneResult", "Pruned", "prune", "prune_checkpoint",
    "replay_rewind_state", "save_pruned", "train_sparse", "PRUNE_FIRST_FINETUNE_EPOCHS", "prune_first",
    "prune_first_finetune_epochs",
]
