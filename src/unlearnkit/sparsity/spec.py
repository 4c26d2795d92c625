"""Pruning specs: ``METHOD:SPARSITY[:KEY=VALUE,...]`` strings such as ``omp:0.95``, ``imp:0.9:rate=0.2``
or ``synflow:0.95:iterations=100``, the form the ``--prune`` options take."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from ..errors import UnlearnKitError
from .layers import LAYER_CHOICES

PRUNE_METHODS = {
    "omp": "one-shot global magnitude pruning of the given weights",
    "imp": "iterative magnitude pruning: rounds of `rate` of the remaining weights, rewinding survivors to an early epoch",
    "synflow": "SynFlow (Tanaka et al. 2020): data-free iterative pruning by synaptic flow, meant at initialisation",
}

# option -> (methods it applies to, help)
OPTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "scope": (("omp", "imp", "synflow"), "global: one threshold over all chosen layers; layer: the same sparsity in each layer"),
    "layers": (("omp", "imp", "synflow"), "which weights are prunable: conv+linear (default), conv, linear"),
    "classifier": (("omp", "imp", "synflow"), "whether the final linear layer is prunable (default true)"),
    "rate": (("imp",), "fraction of the remaining weights each IMP round prunes (default 0.2)"),
    "rewind_epoch": (("omp", "imp"), "rewind survivors to the weights after this many epochs of the dense run, then "
                                     "retrain (IMP default 1; OMP: none from `prune`, 1 under `train --prune`)"),
    "epochs": (("omp", "imp"), "epochs of each retraining after a rewind (default: the recipe's)"),
    "iterations": (("synflow",), "SynFlow scoring/pruning rounds on the exponential schedule (default 100, the paper's)"),
}


@dataclass(frozen=True)
class PruneSpec:
    """A pruning request. ``sparsity`` is the fraction of the prunable weights set to zero, in [0, 1)."""

    method: str
    sparsity: float
    scope: str = "global"
    layers: str = "conv+linear"
    classifier: bool = True
    rate: float = 0.2
    rewind_epoch: int | None = None
    epochs: int | None = None
    iterations: int = 100

    def __post_init__(self) -> None:
        if self.method not in PRUNE_METHODS:
            raise UnlearnKitError(f"unknown pruning method {self.method!r}; use {', '.join(PRUNE_METHODS)}")
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)) or not 0.0 <= self.sparsity < 1.0:
            raise UnlearnKitError(f"sparsity must be a number in [0, 1) (the fraction of weights set to zero), got {self.sparsity!r}")
        object.__setattr__(self, "sparsity", float(self.sparsity))
        if self.scope not in ("global", "layer"):
            raise UnlearnKitError(f"pruning scope must be global or layer, got {self.scope!r}")
        if self.layers not in LAYER_CHOICES:
            raise UnlearnKitError(f"pruning layers must be one of {', '.join(LAYER_CHOICES)}, got {self.layers!r}")
        if not isinstance(self.classifier, bool):
            raise UnlearnKitError(f"classifier must be true or false, got {self.classifier!r}")
        if isinstance(self.rate, bool) or not isinstance(self.rate, (int, float)) or not 0.0 < self.rate < 1.0:
            raise UnlearnKitError(f"IMP rate must be in (0, 1), got {self.rate!r}")
        for key, low in (("rewind_epoch", 0), ("epochs", 1), ("iterations", 1)):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise UnlearnKitError(f"{key} must be an integer >= {low}, got {value!r}")
        defaults = PruneSpec.__dataclass_fields__
        for key, (methods, _) in OPTIONS.items():
            if self.method not in methods and getattr(self, key) != defaults[key].default:
                raise UnlearnKitError(f"option {key} does not apply to {self.method} (it applies to {', '.join(methods)})")

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
        raise UnlearnKitError(f"bad sparsity {parts[1]!r} in pruning spec {text!r}; give a fraction such as 0.95") from None
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
