"""Exact unlearning by SISA training (Bourtoule et al., 2021): S shards x R slices, a checkpoint after every
slice stage, provenance of every sample, ensemble prediction, and exact deletion that resumes each affected
shard from its last unaffected stage. See docs/sisa.md."""

from .ensemble import Ensemble
from .layout import ACTIVE, DELETED_APPROX, DELETED_EXACT, Provenance, stage_seed
from .model import ExactResult, SisaModel, default_stage_config, train_sisa
from .shards import ShardJob, ShardResult, StageSettings, run_shard_job
from .store import SisaStore, StageCorrupted, Version

__all__ = [
    "Ensemble",
    "Provenance",
    "stage_seed",
    "ACTIVE",
    "DELETED_EXACT",
    "DELETED_APPROX",
    "SisaModel",
    "ExactResult",
    "train_sisa",
    "default_stage_config",
    "ShardJob",
    "ShardResult",
    "StageSettings",
    "run_shard_job",
    "SisaStore",
    "StageCorrupted",
    "Version",
]
