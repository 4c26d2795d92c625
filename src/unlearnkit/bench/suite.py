"""Benchmark suites: small TOML files naming a data set, a model, requests, method variants and seeds.

    name = "fmnist-small"
    dataset = "fashion-mnist"
    model = "small-cnn"
    requests = ["random:0.1", "class:0"]
    methods = ["finetune", "salun", "l1_sparse[alpha=1e-4]"]   # NAME or NAME[key=value,...]
    seeds = [0, 1, 2]
    prune = "omp:0.95"       # optional: prune first, then unlearn (originals pruned, Retrain keeps the mask)
    prune_finetune_epochs = 2   # optional: fine-tuning after pruning (default: 2 after a one-shot prune)

    [train]                  # overrides of the data set's training recipe
    epochs = 10

    [options.finetune]       # overrides of a method's defaults, for every variant of it
    lr = 0.02

    [options.retrain]        # options of the reference Retrain too (e.g. use_corrections = false)

    [sweep.salun]            # a grid: each combination becomes a variant salun[lr=...,epochs=...]
    lr = [0.005, 0.01]
    epochs = [1, 2]

    [spdgan]                 # optional: train an SPD-GAN per (request, seed) and report the unlearning degree
    epsilon = 0.1

    klom_bank = 3            # optional: per (request, seed), this many more models retrained with seeds 3000..3000+B−1
                             # form the bank every record's KLoM is measured against (B ≥ 2; 0: no KLoM)
"""

from __future__ import annotations

import itertools
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UnlearnKitError
from ..evaluation import MIA_ATTACKS
from ..training import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class Variant:
    method: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        if not self.options:
            return self.method
        return f"{self.method}[{','.join(f'{k}={_fmt(v)}' for k, v in self.options)}]"

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.=-]+", "_", self.label).strip("_")


def _fmt(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def parse_variant(text: str) -> Variant:
    """``name`` or ``name[key=value,...]`` (values parsed as JSON where possible)."""
    text = text.strip()
    match = re.fullmatch(r"([A-Za-z0-9_]+)(?:\[(.*)\])?", text)
    if not match:
        raise UnlearnKitError(f"bad method entry {text!r}; use NAME or NAME[key=value,...]")
    name, body = match.group(1), match.group(2)
    options = []
    for item in filter(None, (body or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise UnlearnKitError(f"bad option {item!r} in {text!r}; use key=value")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        options.append((key.strip(), parsed))
    return Variant(name, tuple(sorted(options)))


@dataclass
class Suite:
    name: str
    dataset: str
    model: str | None
    requests: list[str]
    variants: list[Variant]
    seeds: list[int]
    train: dict[str, Any] = field(default_factory=dict)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_options: dict[str, Any] = field(default_factory=dict)
    mia_shadow_size: int | None = 3000
    # Suites keep the SVC on every point (the field's convention, and what every committed record used); "binned"
    # is evaluate()'s faster default (see unlearnkit.evaluation).
    mia_attack: str = "svc"
    spdgan: dict[str, Any] | None = (
        None  # SPD-GAN options (see unlearnkit.spdgan.SpdGanConfig); None: no unlearning degree
    )
    path: str | None = None
    # Prune first, then unlearn (Jia et al., NeurIPS 2023): every original is the dense original pruned by this spec and
    # fine-tuned (see unlearnkit.sparsity.prune_first); the reference Retrain keeps its mask.
    prune: str | None = None
    prune_finetune_epochs: int | None = None  # None: sparsity.prune_first_finetune_epochs(spec)
    prune_finetune_lr: float | None = None  # None: a fifth of the recipe's
    # KLoM (Georgiev et al. 2024) against a bank of B models retrained per (request, seed) with seeds 3000..3000+B−1,
    # cached like the reference; 0: no bank, no KLoM.
    klom_bank: int = 0

    def method_options(self, variant: Variant) -> dict[str, Any]:
        return {**self.options.get(variant.method, {}), **dict(variant.options)}

    def retrain_options(self) -> dict[str, Any]:
        """Options of the reference Retrain (``[options.retrain]``); they are part of its cache key."""
        return dict(self.options.get("retrain", {}))

    def train_config(self) -> TrainConfig:
        from ..recipes import default_model, default_recipe

        return default_recipe(self.dataset, self.model or default_model(self.dataset)).replace(**self.train)


def load_suite(path_or_name: str | Path, search: Path | None = None) -> Suite:
    """Load ``benchmarks/suites/NAME.toml`` (or any path) and validate every name in it."""
    path = Path(path_or_name)
    if not path.suffix and not path.exists():
        path = (search or Path("benchmarks/suites")) / f"{path_or_name}.toml"
    if not path.is_file():
        raise UnlearnKitError(f"suite {path_or_name!r} not found (looked for {path})")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UnlearnKitError(f"{path}: not valid TOML: {exc}") from None
    return suite_from_dict(raw, path=str(path))


def suite_from_dict(raw: dict, path: str | None = None) -> Suite:
    from ..methods import METHODS, make_config

    where = path or "suite"
    for key in ("name", "dataset", "requests", "methods"):
        if key not in raw:
            raise UnlearnKitError(f"{where}: missing '{key}'")
    variants = [parse_variant(m) for m in raw["methods"]]
    for method, grid in raw.get("sweep", {}).items():
        keys = sorted(grid)
        values = [grid[k] if isinstance(grid[k], list) else [grid[k]] for k in keys]
        variants += [Variant(method, tuple(zip(keys, combo))) for combo in itertools.product(*values)]
    options = raw.get("options", {})
    seen = set()
    unique = []
    for variant in variants:
        if variant.method not in METHODS:
            raise UnlearnKitError(f"{where}: unknown method {variant.method!r}; known: {', '.join(METHODS)}")
        make_config(METHODS[variant.method], {**options.get(variant.method, {}), **dict(variant.options)})
        if variant.label not in seen:
            seen.add(variant.label)
            unique.append(variant)
    if "retrain" in options:
        make_config(METHODS["retrain"], options["retrain"])
    mia_attack = raw.get("mia_attack", "svc")
    if mia_attack not in MIA_ATTACKS:
        raise UnlearnKitError(f"{where}: mia_attack must be one of {', '.join(MIA_ATTACKS)}, got {mia_attack!r}")
    prune = raw.get("prune")
    if prune is not None:
        from ..sparsity import parse_prune_spec

        prune = str(parse_prune_spec(prune))
    finetune_epochs = raw.get("prune_finetune_epochs")
    finetune_lr = raw.get("prune_finetune_lr")
    if prune is None and (finetune_epochs is not None or finetune_lr is not None):
        raise UnlearnKitError(
            f"{where}: prune_finetune_epochs/prune_finetune_lr need a prune spec (e.g. prune = \"omp:0.95\")"
        )
    if finetune_epochs is not None and (isinstance(finetune_epochs, bool) or not isinstance(finetune_epochs, int)
                                        or finetune_epochs < 0):
        raise UnlearnKitError(f"{where}: prune_finetune_epochs must be an integer >= 0, got {finetune_epochs!r}")
    if finetune_lr is not None and (isinstance(finetune_lr, bool) or not isinstance(finetune_lr, (int, float))
                                    or not finetune_lr > 0):
        raise UnlearnKitError(f"{where}: prune_finetune_lr must be a positive number, got {finetune_lr!r}")
    klom_bank = raw.get("klom_bank", 0)
    if isinstance(klom_bank, bool) or not isinstance(klom_bank, int) or klom_bank == 1 or not 0 <= klom_bank <= 1000:
        raise UnlearnKitError(f"{where}: klom_bank must be 0 (no KLoM) or a number of retrained models in 2..1000, "
                              f"got {klom_bank!r}")
    suite = Suite(
        name=raw["name"], dataset=raw["dataset"], model=raw.get("model"), requests=list(raw["requests"]),
        variants=unique, seeds=[int(s) for s in raw.get("seeds", [0])], train=raw.get("train", {}),
        options=options, model_options=raw.get("model_options", {}),
        mia_shadow_size=raw.get("mia_shadow_size", 3000), mia_attack=mia_attack, spdgan=raw.get("spdgan"), path=path,
        prune=prune, prune_finetune_epochs=finetune_epochs,
        prune_finetune_lr=None if finetune_lr is None else float(finetune_lr), klom_bank=klom_bank,
    )
    suite.train_config()  # validates the recipe overrides
    if suite.spdgan is not None:
        from ..spdgan import SpdGanConfig

        if not isinstance(suite.spdgan, dict):
            raise UnlearnKitError(f"{where}: [spdgan] must be a table of SPD-GAN options")
        SpdGanConfig.from_dict(suite.spdgan)  # validates the options
    return suite


def select_variants(suite: Suite, names: list[str]) -> list[str]:
    """``names`` as :func:`run_suite`'s ``methods`` filter: each a method name or a variant (``NAME[k=v,...]``,
    matched by its normalised label); a name the suite does not have is refused, listing the suite's variants."""
    selected = [name if "[" not in name else parse_variant(name).label for name in names]
    known = {v.method for v in suite.variants} | {v.label for v in suite.variants}
    unknown = [name for name in selected if name not in known]
    if unknown:
        raise UnlearnKitError(f"--methods: {', '.join(unknown)} not in suite {suite.name!r} "
                              f"(its variants: {', '.join(v.label for v in suite.variants)})")
    return selected


def with_prune(suite: Suite, spec: str | None, *, finetune_epochs: int | None = None,
               finetune_lr: float | None = None) -> Suite:
    """A copy of ``suite`` whose originals are pruned by ``spec`` (``None``: dense), e.g. for ``bench --prune``
    or one point of a sparsity sweep."""
    import dataclasses

    raw_spec = None
    if spec is not None:
        from ..sparsity import parse_prune_spec

        raw_spec = str(parse_prune_spec(spec))
    return dataclasses.replace(suite, prune=raw_spec, prune_finetune_epochs=finetune_epochs if spec else None,
                               prune_finetune_lr=finetune_lr if spec else None)
