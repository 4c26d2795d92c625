"""Pruning specs: ``METHOD:SPARSITY[:KEY=VALUE,...]`` strings such as ``omp:0.95``, ``imp:0.9:rate=0.2``
or ``synflow:0.95:iterations=100``, the form the ``--prune`` options take."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, fields
from typing import Literal

from ..errors import UnlearnKitError
from ..options import check_fields, declare, option, options_of

PRUNE_METHODS = {
    "omp": "one-shot global magnitude pruning of the given weights",
    "imp": "iterative magnitude pruning: rounds of `rate` of the remaining weights, rewinding survivors to an early "
           "epoch",
    "synflow": "SynFlow (Tanaka et al. 2020): data-free iterative pruning by synaptic flow, meant at initialisation",
}

# option -> the pruning methods it applies to (its type, range and help are declared on PruneSpec)
APPLIES_TO: dict[str, tuple[str, ...]] = {
    "scope": ("omp", "imp", "synflow"), "layers": ("omp", "imp", "synflow"), "classifier": ("omp", "imp", "synflow"),
    "rate": ("imp",), "rewind_epoch": ("omp", "imp"), "epochs": ("omp", "imp"), "iterations": ("synflow",),
}


@dataclass(frozen=True)
class PruneSpec:
    """A pruning request. ``sparsity`` is the fraction of the prunable weights set to zero, in [0, 1)."""

    method: str = option(dataclasses.MISSING, "pruning method: " + ", ".join(PRUNE_METHODS))
    sparsity: float = option(dataclasses.MISSING, "fraction of the prunable weights set to zero", ge=0, lt=1)
    scope: Literal["global", "layer"] = option(
        "global", "global: one threshold over all chosen layers; layer: the same sparsity in each layer")
    layers: Literal["conv+linear", "conv", "linear"] = option("conv+linear", "which weights are prunable")
    classifier: bool = option(True, "whether the final linear layer is prunable")
    rate: float = option(0.2, "fraction of the remaining weights each IMP round prunes", gt=0, lt=1)
    rewind_epoch: int | None = option(
        None,
        "rewind survivors to the weights after this many epochs of the dense run, "
        "then retrain (IMP default 1; OMP: none from `prune`, 1 under `train --prune`)",
        ge=0,
        le=10_000,
    )
    epochs: int | None = option(
        None, "epochs of each retraining after a rewind (default: the recipe's)", ge=1, le=10_000
    )
    iterations: int = option(100, "SynFlow scoring/pruning rounds on the exponential schedule (the paper's 100)", ge=1,
                             le=100_000)

    def __post_init__(self) -> None:
        if self.method not in PRUNE_METHODS:
            raise UnlearnKitError(f"unknown pruning method {self.method!r}; use {', '.join(PRUNE_METHODS)}")
        check_fields(self)
        defaults = PruneSpec.__dataclass_fields__
        for key, methods in APPLIES_TO.items():
            if self.method not in methods and getattr(self, key) != defaults[key].default:
                raise UnlearnKitError(
                    f"option {key} does not apply to {self.method} (it applies to {', '.join(methods)})"
                )

    @property
    def retrains(self) -> bool:
        """True when the spec itself asks for rewinding and retraining (IMP always does)."""
        return self.method == "imp" or self.rewind_epoch is not None

    def rewind_or(self, default: int) -> int:
        return default if self.rewind_epoch is None else self.rewind_epoch

    def options(self) -> dict:
        """Options that differ from the defaults."""
        defaults = PruneSpec.__dataclass_fields__
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("method", "sparsity") and getattr(self, f.name) != defaults[f.name].default}

    def __str__(self) -> str:
        opts = ",".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in self.options().items())
        return f"{self.method}:{self.sparsity:g}" + (f":{opts}" if opts else "")

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **changes) -> "PruneSpec":
        return PruneSpec(**{**asdict(self), **changes})


declare("prune", "pruning spec", PruneSpec)
# option -> (methods it applies to, help), for help texts
OPTIONS: dict[str, tuple[tuple[str, ...], str]] = {k: (m, options_of(PruneSpec)[k].help) for k, m in APPLIES_TO.items()}


def parse_prune_spec(text: str | PruneSpec) -> PruneSpec:
    """``omp:0.95`` → ``PruneSpec("omp", 0.95)``; options after a second colon, comma-separated."""
    if isinstance(text, PruneSpec):
        return text
    parts = str(text).strip().split(":", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise UnlearnKitError(f"bad pruning spec {text!r}; use METHOD:SPARSITY[:KEY=VALUE,...], e.g. omp:0.95 "
                              f"(methods: {', '.join(PRUNE_METHODS)})")
    method = parts[0].strip().lower()
    try:
        sparsity = float(parts[1])
    except ValueError:
        raise UnlearnKitError(
            f"bad sparsity {parts[1]!r} in pruning spec {text!r}; give a fraction such as 0.95"
        ) from None
    options = {}
    if len(parts) == 3 and parts[2].strip():
        for item in parts[2].split(","):
            key, sep, value = item.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or not key:
                raise UnlearnKitError(f"bad option {item!r} in pruning spec {text!r}; use KEY=VALUE")
            if key not in OPTIONS:
                raise UnlearnKitError(f"unknown pruning option {key!r}; known: {', '.join(OPTIONS)}")
            options[key] = _value(value.strip())
    return PruneSpec(method, sparsity, **options)


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
