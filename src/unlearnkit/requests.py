"""Unlearning requests: what must be forgotten, built from a short spec string.

The same syntax is used by the CLI and the Python API::

    random:0.1            a seeded random 10 % of the training set is removed
    class:3 / class:3,7   every training sample of these classes is removed
    ids:FILE              explicit training-set ids, one per line ('#' starts a comment)
    relabel:0.1[:C]       a seeded 10 % of class C (or of every class) was trained with wrong labels;
                          the correction is the true labels
    backdoor:0.05[:T]     a seeded 5 % of the training set (taken from classes other than T, default 0)
                          carries a BadNets-style trigger patch and label T; the correction is the clean
                          image with its true label
    feature:0.5[:C]       a seeded 50 % of class C (default 0) carries a planted feature (a solid bright square
                          in the top-left corner) with its true label — a shortcut the model can learn; the
                          correction is the image without it (the feature is removed, the samples stay)
    memorized:K[:FILE]    the K training samples with the largest memorisation scores (a hard forget set);
                          the scores come from FILE (written by `unlearnkit audit`) or from scores
                          registered in this process with :func:`register_memorization_scores`
    memlevel:LEVEL:K[:FILE]  K seeded samples of one memorisation band (Zhao et al., NeurIPS 2024): low, medium or
                          high (the lowest, middle and highest third of the training set by memorisation score),
                          or mix (a third of K from each band); high is the hard set, low the easy one

Vocabulary: the part before the first colon is the request's **type** (``random``, ``class``, ...; the registry
:data:`REQUEST_TYPES`, where each type declares its argument syntax and its effect); the **effect** is what the
request does to the training data: ``remove`` samples (random, class, ids, memorized), ``relabel`` them (relabel)
or ``edit`` their inputs (backdoor, feature). A method declares the effects it supports.

A :class:`Request` holds the forget ids D_f, the retain ids D_r, and for ``relabel``/``backdoor`` the
samples as the original model saw them and their corrections (``feature`` too). Requests are rebuilt deterministically
from (spec, seed) and checked against a hash of their forget ids, so a checkpoint can record them cheaply.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .data.datasets import Dataset
from .errors import UnlearnKitError
from .secrets import FORMATS, Secrets

EFFECTS = ("remove", "relabel", "edit")  # what a request does to the training data


@dataclass(frozen=True)
class Trigger:
    """A square patch stamped into a corner of every channel (pixel space): a checkerboard in the
    bottom-right corner for ``backdoor:`` requests, a solid bright square in the top-left corner for the
    planted feature of ``feature:`` requests."""

    size: int
    margin: int
    corner: str = "bottom-right"  # or "top-left"
    fill: str = "checker"  # or "solid" (every pixel 1.0)

    @staticmethod
    def for_image_size(image_size: int) -> "Trigger":
        return Trigger(size=max(2, image_size // 9), margin=1 if image_size >= 16 else 0)

    @staticmethod
    def feature_for_image_size(image_size: int) -> "Trigger":
        return Trigger(
            size=max(2, image_size // 7), margin=1 if image_size >= 16 else 0, corner="top-left", fill="solid"
        )

    def pattern(self, channels: int) -> torch.Tensor:
        if self.fill == "solid":
            return torch.ones(channels, self.size, self.size)
        grid = torch.arange(self.size)
        checker = ((grid[:, None] + grid[None, :]) % 2 == 0).float()
        return checker.expand(channels, -1, -1)

    def region(self, h: int, w: int) -> tuple[slice, slice]:
        """Rows and columns of the patch in an ``h`` x ``w`` image."""
        if self.corner == "top-left":
            top, left = self.margin, self.margin
        else:
            top, left = h - self.margin - self.size, w - self.margin - self.size
        return slice(top, top + self.size), slice(left, left + self.size)

    def stamp(self, x: torch.Tensor) -> torch.Tensor:
        """Return a copy of the images ``x`` (N x C x H x W) with the patch applied."""
        out = x.clone()
        rows, cols = self.region(*x.shape[-2:])
        out[..., rows, cols] = self.pattern(x.shape[1]).to(x)
        return out


@dataclass
class Request:
    spec: str
    effect: str  # what it does to the training data: "remove", "relabel" or "edit" (see EFFECTS)
    seed: int
    forget: torch.Tensor  # sorted int64 training-set ids
    retain: torch.Tensor  # sorted int64, the complement
    classes: tuple[int, ...] = ()  # forgotten classes (class requests)
    # The forget samples as the original model was trained on them; None means "as in the data set".
    trained_x: torch.Tensor | None = None
    trained_y: torch.Tensor | None = None
    # Their corrections (relabel / edit requests); None means "as in the data set".
    corrected_x: torch.Tensor | None = None
    corrected_y: torch.Tensor | None = None
    target: int | None = None  # backdoor target class / the class carrying a planted feature
    trigger: Trigger | None = None  # the backdoor trigger / the planted feature (evaluation stamps it: ASR)
    ids: list[int] | None = field(default=None, repr=False)  # explicit ids (ids: requests), for manifests
    secrets: Any = field(default=None, repr=False)  # secret: requests: the planted secrets (unlearnkit.secrets.Secrets)

    @property
    def type(self) -> str:
        """The request type: the spec's prefix (``random``, ``class``, ...)."""
        return self.spec.partition(":")[0]

    # -- the data each party sees ------------------------------------------------------------------
    @property
    def modifies_training_data(self) -> bool:
        return self.trained_x is not None or self.trained_y is not None

    def training_data(self, data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels the original model is trained on (poisoned for relabel/backdoor)."""
        return self._substituted(data, self.trained_x, self.trained_y)

    def training_labels(self, data: Dataset) -> torch.Tensor:
        """The labels of :meth:`training_data` (without copying the images)."""
        if self.trained_y is None:
            return data.y_train
        y = data.y_train.clone()
        y[self.forget] = self.trained_y
        return y

    def corrected_data(self, data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels with the forget samples corrected (the data set itself for remove requests)."""
        return self._substituted(data, self.corrected_x, self.corrected_y)

    def _substituted(self, data: Dataset, x_new, y_new) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = data.x_train, data.y_train
        if x_new is not None:
            x = x.clone()
            x[self.forget] = x_new
        if y_new is not None:
            y = y.clone()
            y[self.forget] = y_new
        return x, y

    # -- identity ----------------------------------------------------------------------------------
    @property
    def forget_hash(self) -> str:
        digest = hashlib.sha256(self.forget.numpy().tobytes())
        for t in (self.trained_x, self.trained_y):
            if t is not None:
                digest.update(t.contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def describe(self) -> dict:
        """A JSON-able record from which :func:`request_from_record` rebuilds this request."""
        return self._record("effect")

    def cache_key(self) -> dict:
        """The request's part of a model-cache key. It names the effect ``kind``, as records did before the field
        was renamed ``effect``, so that the keys -- and the models cached under them -- stay the same."""
        return self._record("kind")

    def _record(self, effect_field: str) -> dict:
        record = {
            "spec": self.spec, effect_field: self.effect, "seed": self.seed,
            "n_forget": int(self.forget.numel()), "forget_hash": self.forget_hash,
        }
        if self.classes:
            record["classes"] = list(self.classes)
        if self.target is not None:
            record["target"] = self.target
        if self.ids is not None:
            record["ids"] = self.ids
        return record


# -- request types ----------------------------------------------------------------------------------
Builder = Callable[[Dataset, list[str], int], Request]


@dataclass(frozen=True)
class RequestType:
    """A request type: the spec prefix ``name``, its argument ``syntax`` (after ``NAME:``), its ``effect`` on the
    training data, and how the text after the colon splits into arguments: on every ``:``, or into at most
    ``max_args`` (the last keeps its colons, e.g. a file path)."""

    name: str
    syntax: str
    effect: str
    build: Callable[[Dataset, list[str], int], Request]
    doc: str = ""
    max_args: int | None = None
    file_args: tuple[int, ...] = ()  # positions of the arguments that name files the request reads
    modality: str | None = "image"  # the data it needs: "image", "text", or None (any)
    scores_arg: int | None = None  # types that select by memorisation score: the position of the optional scores file

    def split(self, text: str) -> list[str]:
        return text.split(":") if self.max_args is None else text.split(":", self.max_args - 1)

    def describe(self) -> dict:
        return {"syntax": f"{self.name}:{self.syntax}", "effect": self.effect, "doc": self.doc}


REQUEST_TYPES: dict[str, RequestType] = {}


def request_type(name: str, syntax: str, effect: str, doc: str = "", *, max_args: int | None = None,
                 file_args: tuple[int, ...] = (), modality: str | None = "image",
                 scores_arg: int | None = None) -> Callable[[Builder], Builder]:
    """Register a request builder ``fn(dataset, args, seed) -> Request`` as the type ``name`` (see
    :class:`RequestType`), for data sets of ``modality`` ("image", "text", or None for any); ``scores_arg``: the
    position of the optional memorisation-scores file of a type that selects by memorisation."""
    if effect not in EFFECTS:
        raise ValueError(f"effect {effect!r} is not one of {EFFECTS}")

    def register(fn: Builder) -> Builder:
        REQUEST_TYPES[name] = RequestType(name, syntax, effect, fn, doc, max_args, tuple(file_args), modality,
                                          scores_arg)
        return fn

    return register


def request_syntax() -> str:
    """Every registered type's syntax, for error messages."""
    return ", ".join(f"{t.name}:{t.syntax}" for t in REQUEST_TYPES.values())


def parse_spec(spec: str) -> tuple[RequestType, list[str]]:
    """The type of a spec and its arguments, split as the type declares; nothing is built or read."""
    if not isinstance(spec, str) or ":" not in spec:
        raise UnlearnKitError(f"bad request {spec!r}; use one of {request_syntax()}")
    name, _, rest = spec.strip().partition(":")
    if name not in REQUEST_TYPES:
        raise UnlearnKitError(f"unknown request type {name!r} in {spec!r}; use one of {request_syntax()}")
    rtype = REQUEST_TYPES[name]
    return rtype, rtype.split(rest)


def request_files(spec: str | None) -> list[str]:
    """The files a request spec reads (the arguments its type declares as files, e.g. ``ids:FILE``,
    ``memorized:K:FILE``); none for a spec that does not parse (building it reports why)."""
    if not spec:
        return []
    try:
        rtype, args = parse_spec(spec)
    except UnlearnKitError:
        return []
    return [args[i] for i in rtype.file_args if i < len(args) and args[i]]


def build_request(spec: str, data: Dataset, seed: int = 0) -> Request:
    """Turn a spec string such as ``random:0.1`` into a validated :class:`Request` for ``data``."""
    rtype, args = parse_spec(spec)
    has = getattr(data, "modality", "image")
    if rtype.modality is not None and rtype.modality != has:
        needs = "an image classification" if rtype.modality == "image" else "a text"
        raise UnlearnKitError(f"request type {rtype.name!r} needs {needs} "
                              f"data set; {data.name} is {'a text' if has == 'text' else 'an image'} data set")
    request = rtype.build(data, args, seed)
    if request.effect != rtype.effect:
        raise RuntimeError(
            f"request type {rtype.name!r} is registered as {rtype.effect}, but built a {request.effect} request"
        )
    _check_sizes(request, data)
    return request


def request_from_record(record: dict, data: Dataset) -> Request:
    """Rebuild a request recorded by :meth:`Request.describe` (or :meth:`Request.cache_key`; records written
    before the effect field was renamed call it ``kind``) and check it is the same one."""
    if record.get("ids") is not None:
        request = _from_ids(data, [int(i) for i in record["ids"]], int(record.get("seed", 0)), record["spec"])
        _check_sizes(request, data)
    else:
        request = build_request(record["spec"], data, int(record.get("seed", 0)))
    if request.forget_hash != record.get("forget_hash"):
        raise UnlearnKitError(
            f"request {record['spec']!r} (seed {record.get('seed')}) does not rebuild to the recorded forget set; "
            "was the data set or unlearnkit's request code changed?"
        )
    return request


def _check_sizes(request: Request, data: Dataset) -> None:
    n_forget = int(request.forget.numel())
    if n_forget == 0:
        raise UnlearnKitError(f"request {request.spec!r} selects no samples: the forget set would be empty")
    if n_forget >= data.n_train:
        raise UnlearnKitError(
            f"request {request.spec!r} selects the whole training set; nothing would be left to retain"
        )


def _complement(forget: torch.Tensor, n: int) -> torch.Tensor:
    keep = torch.ones(n, dtype=torch.bool)
    keep[forget] = False
    return keep.nonzero().flatten()


def _fraction(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UnlearnKitError(f"bad fraction {text!r} in request {spec!r}; use a number in (0, 1)") from None
    if not 0.0 < value < 1.0:
        raise UnlearnKitError(f"fraction {value} in request {spec!r} must be in (0, 1)")
    return value


def _class(text: str, data: Dataset, spec: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UnlearnKitError(f"bad class {text!r} in request {spec!r}; classes are integers") from None
    if not 0 <= value < data.num_classes:
        raise UnlearnKitError(
            f"class {value} in request {spec!r} does not exist in {data.name} (0..{data.num_classes - 1})"
        )
    return value


def _generator(seed: int, salt: str) -> torch.Generator:
    # Separate streams per request type, so that e.g. relabel:0.1 and random:0.1 do not pick the same ids.
    offset = int(hashlib.sha256(salt.encode()).hexdigest()[:8], 16)
    return torch.Generator().manual_seed((seed * 1_000_003 + offset) % (2**63))


def _seeded_subset(pool: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` ids drawn from ``pool`` by a seeded permutation, sorted."""
    return torch.sort(pool[torch.randperm(pool.numel(), generator=generator)[:count]]).values


def _fraction_and_class(args: list[str], data: Dataset, spec: str) -> tuple[float, int | None]:
    """FRACTION[:CLASS] (relabel, backdoor, feature); the class is None when not given."""
    _arity(args, 1, 2, spec)
    return _fraction(args[0], spec), (_class(args[1], data, spec) if len(args) == 2 else None)


def _stamped(spec: str, data: Dataset, seed: int, forget: torch.Tensor, patch: Trigger, target: int,
             trained_y: torch.Tensor | None = None) -> Request:
    """An edit request: the forget samples were trained with ``patch`` stamped on (and with ``trained_y`` if given);
    the correction is the clean image with its true label."""
    clean_x = data.x_train[forget]
    return Request(spec, "edit", seed, forget, _complement(forget, data.n_train),
                   trained_x=patch.stamp(clean_x), trained_y=trained_y,
                   corrected_x=clean_x.clone(), corrected_y=None if trained_y is None else data.y_train[forget].clone(),
                   target=target, trigger=patch)


def _arity(args: list[str], lo: int, hi: int, spec: str) -> None:
    if not lo <= len(args) <= hi or any(a == "" for a in args):
        raise UnlearnKitError(f"bad request {spec!r}; use one of {request_syntax()}")


@request_type("random", "FRACTION", "remove", "a seeded random FRACTION of the training set", modality=None)
def _random(data: Dataset, args: list[str], seed: int) -> Request:
    spec = "random:" + ":".join(args)
    _arity(args, 1, 1, spec)
    fraction = _fraction(args[0], spec)
    n = data.n_train
    forget = _seeded_subset(torch.arange(n), int(round(fraction * n)), _generator(seed, "random"))
    return Request(spec, "remove", seed, forget, _complement(forget, n))


@request_type("class", "C[,C...]", "remove", "every training sample of these classes")
def _classes(data: Dataset, args: list[str], seed: int) -> Request:
    spec = "class:" + ":".join(args)
    _arity(args, 1, 1, spec)
    classes = tuple(sorted({_class(c.strip(), data, spec) for c in args[0].split(",") if c.strip()}))
    if not classes:
        raise UnlearnKitError(f"request {spec!r} names no class")
    forget = torch.isin(data.y_train, torch.tensor(classes)).nonzero().flatten()
    return Request(spec, "remove", seed, forget, _complement(forget, data.n_train), classes=classes)


# An ids file holds at most one line per training sample; a line is an id (up to 20 digits) and maybe a comment.
# Files larger than this bound (per training sample, plus slack for comments) are refused unread.
IDS_BYTES_PER_SAMPLE = 32
IDS_SLACK_BYTES = 1 << 20


def read_ids_file(path: str | Path, n_train: int) -> list[int]:
    """Sample ids from a text file, one per line ('#' starts a comment), read with a size bound.

    Errors name the file and the line number but never echo the line (an ids file may sit next to secrets).
    """
    path = Path(path)
    limit = IDS_BYTES_PER_SAMPLE * max(n_train, 1) + IDS_SLACK_BYTES
    try:
        if path.is_dir():
            raise UnlearnKitError(f"ids file {path} is a directory")
        with open(path, "rb") as handle:
            raw = handle.read(limit + 1)
    except OSError as exc:
        raise UnlearnKitError(f"cannot read ids file {path}: {exc.strerror or exc}") from None
    if len(raw) > limit:
        raise UnlearnKitError(f"ids file {path} is larger than {limit} bytes, more than {n_train} ids and comments "
                              "can take; is it the right file?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UnlearnKitError(
            f"{path}:{line}: not UTF-8 text; an ids file holds one integer sample id per line"
        ) from None
    ids = []
    for number, line in enumerate(text.splitlines(), 1):
        item = line.split("#", 1)[0].strip()
        if not item:
            continue
        digits = item[1:] if item[:1] in "+-" else item
        if not (digits.isascii() and digits.isdigit()):
            raise UnlearnKitError(f"{path}:{number}: not an integer sample id (one per line, '#' starts a comment)")
        if item.startswith("-") or len(digits) > 19 or int(digits) >= n_train:
            raise UnlearnKitError(f"{path}:{number}: sample id outside 0..{n_train - 1}")
        ids.append(int(digits))
    return ids


@request_type("ids", "FILE", "remove", "explicit training-set ids, one per line ('#' starts a comment)", modality=None,
              max_args=1, file_args=(0,))
def _ids_file(data: Dataset, args: list[str], seed: int) -> Request:
    path = Path(args[0])
    spec = f"ids:{path}"
    return _from_ids(data, read_ids_file(path, data.n_train), seed, spec)


def _from_ids(data: Dataset, ids: list[int], seed: int, spec: str) -> Request:
    if not ids:
        raise UnlearnKitError(f"request {spec!r} lists no ids: the forget set would be empty")
    bad = [i for i in ids if not 0 <= i < data.n_train]
    if bad:
        raise UnlearnKitError(f"request {spec!r}: {len(bad)} id(s) outside 0..{data.n_train - 1}")
    tensor = torch.tensor(ids, dtype=torch.long)
    unique, counts = torch.unique(tensor, return_counts=True)
    if (counts > 1).any():
        dupes = unique[counts > 1]
        raise UnlearnKitError(f"request {spec!r}: {dupes.numel()} id(s) given more than once (first: {int(dupes[0])})")
    forget = torch.sort(tensor).values
    return Request(spec, "remove", seed, forget, _complement(forget, data.n_train), ids=sorted(ids))


@request_type("relabel", "FRACTION[:CLASS]", "relabel", "a seeded FRACTION (of class CLASS) trained with wrong labels")
def _relabel(data: Dataset, args: list[str], seed: int) -> Request:
    spec = "relabel:" + ":".join(args)
    fraction, cls = _fraction_and_class(args, data, spec)
    gen = _generator(seed, "relabel")
    pool = torch.arange(data.n_train) if cls is None else (data.y_train == cls).nonzero().flatten()
    forget = _seeded_subset(pool, int(round(fraction * pool.numel())), gen)
    true = data.y_train[forget]
    # A shift in 1..K-1 never maps a label onto itself.
    shift = torch.randint(1, data.num_classes, (forget.numel(),), generator=gen)
    flipped = (true + shift) % data.num_classes
    return Request(spec, "relabel", seed, forget, _complement(forget, data.n_train),
                   trained_y=flipped, corrected_y=true.clone())


@request_type("backdoor", "FRACTION[:TARGET]", "edit",
              "a seeded FRACTION carrying a trigger patch and label TARGET (default 0)")
def _backdoor(data: Dataset, args: list[str], seed: int) -> Request:
    spec = "backdoor:" + ":".join(args)
    fraction, target = _fraction_and_class(args, data, spec)
    target = 0 if target is None else target
    pool = (data.y_train != target).nonzero().flatten()
    count = int(round(fraction * data.n_train))
    if count > pool.numel():
        raise UnlearnKitError(
            f"request {spec!r} asks for {count} poisoned samples; only {pool.numel()} are not of class {target}"
        )
    forget = _seeded_subset(pool, count, _generator(seed, "backdoor"))
    return _stamped(spec, data, seed, forget, Trigger.for_image_size(data.image_size), target,
                    trained_y=torch.full_like(forget, target))


@request_type("feature", "FRACTION[:CLASS]", "edit",
              "a seeded FRACTION of class CLASS (default 0) carrying a planted feature")
def _feature(data: Dataset, args: list[str], seed: int) -> Request:
    # Feature removal (Warnecke et al.): the samples stay in the training set with their labels, only a feature
    # of their inputs must go. The feature here is planted, so its influence can be measured: it appears only on
    # class C, so the original model can learn "square => C" as a shortcut, and ASR (the square stamped on test
    # images of other classes) measures how much it did; a model trained on the corrected data never saw it.
    spec = "feature:" + ":".join(args)
    fraction, target = _fraction_and_class(args, data, spec)
    target = 0 if target is None else target
    pool = (data.y_train == target).nonzero().flatten()
    count = int(round(fraction * pool.numel()))
    if count == 0:
        raise UnlearnKitError(
            f"request {spec!r} selects no samples: class {target} has {pool.numel()} training samples"
        )
    forget = _seeded_subset(pool, count, _generator(seed, "feature"))
    return _stamped(spec, data, seed, forget, Trigger.feature_for_image_size(data.image_size), target)


# -- hard forget sets ----------------------------------------------------------------------------------
# Memorisation scores per data set fingerprint, registered by whoever computed them in this process (the
# audit computes them from reference models; see unlearnkit.audit.memorization).
MEMORIZATION_SCORES: dict[str, torch.Tensor] = {}
SCORES_FORMAT = "unlearnkit-memorization/1"


def register_memorization_scores(data: Dataset, scores: torch.Tensor | list[float]) -> None:
    """Make ``memorized:K`` (without a file) use ``scores`` (one per training sample) for ``data``."""
    scores = torch.as_tensor(scores, dtype=torch.float64).flatten()
    if scores.numel() != data.n_train:
        raise UnlearnKitError(f"memorisation scores: {scores.numel()} values for {data.n_train} training samples")
    if not torch.isfinite(scores).all():
        raise UnlearnKitError("memorisation scores must be finite numbers")
    MEMORIZATION_SCORES[data.fingerprint] = scores


def read_memorization_scores(path: str | Path, data: Dataset) -> torch.Tensor:
    """Scores from a file written by the audit, checked against ``data``'s fingerprint."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except OSError as exc:
        raise UnlearnKitError(f"cannot read memorisation scores {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError:
        raise UnlearnKitError(f"{path} is not a memorisation scores file (not JSON)") from None
    if not isinstance(record, dict) or record.get("format") != SCORES_FORMAT:
        raise UnlearnKitError(
            f"{path} is not a memorisation scores file ({SCORES_FORMAT}); write one with `unlearnkit audit`"
        )
    if record.get("data_fingerprint") != data.fingerprint:
        raise UnlearnKitError(f"{path} holds scores for data set fingerprint {record.get('data_fingerprint')}, "
                              f"not {data.name} ({data.fingerprint})")
    values = record.get("scores")
    if not isinstance(values, list) or len(values) != data.n_train or not all(
            isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        raise UnlearnKitError(f"{path}: 'scores' must be {data.n_train} finite numbers, one per training sample")
    return torch.tensor(values, dtype=torch.float64)


def needs_memorization_scores(spec: str) -> bool:
    """Whether ``spec`` selects by memorisation score (``memorized:``, ``memlevel:``) without a scores file: it needs
    scores registered in this process (:func:`register_memorization_scores`), as the audit computes them."""
    rtype, args = parse_spec(spec)
    return rtype.scores_arg is not None and (len(args) <= rtype.scores_arg or not args[rtype.scores_arg])


def selects_by_memorization(spec: str) -> bool:
    """Whether the request type of ``spec`` selects its forget set by memorisation score."""
    return parse_spec(spec)[0].scores_arg is not None


def _count(text: str, spec: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise UnlearnKitError(f"bad count {text!r} in request {spec!r}; K is a whole number of samples") from None
    if count < 1:
        raise UnlearnKitError(f"request {spec!r}: K must be at least 1")
    return count


def _scores(data: Dataset, path: str | None, spec: str, usage: str) -> torch.Tensor:
    if path:
        return read_memorization_scores(path, data)
    if data.fingerprint in MEMORIZATION_SCORES:
        return MEMORIZATION_SCORES[data.fingerprint]
    raise UnlearnKitError(
        f"request {spec!r} needs memorisation scores for {data.name}: run `unlearnkit audit` with this request "
        f"(it computes them from reference models), or give the file it wrote, {usage}"
    )


@request_type("memorized", "K[:SCORES_FILE]", "remove",
              "the K training samples with the largest memorisation scores", max_args=2, file_args=(1,), modality=None,
              scores_arg=1)
def _memorized(data: Dataset, args: list[str], seed: int) -> Request:
    spec = "memorized:" + ":".join(args)
    if not args or args[0] == "":
        raise UnlearnKitError(f"bad request {spec!r}; use memorized:K or memorized:K:SCORES_FILE")
    count = _count(args[0], spec)
    scores = _scores(data, args[1] if len(args) == 2 else None, spec, "memorized:K:PATH")
    if count >= data.n_train:
        raise UnlearnKitError(f"request {spec!r} selects the whole training set; nothing would be left to retain")
    # Largest scores first; ties broken by the smaller id, so the set is fully determined by the scores.
    order = torch.sort(-scores, stable=True).indices
    return _from_ids(data, sorted(order[:count].tolist()), seed, spec)


MEMORIZATION_LEVELS = ("low", "medium", "high", "mix")


def memorization_bands(scores: torch.Tensor) -> list[torch.Tensor]:
    """The training set cut into thirds by memorisation score (low, medium, high), each as sorted ids; ties are
    broken by the smaller id, so the bands are fully determined by the scores."""
    order = torch.sort(scores, stable=True).indices
    n = order.numel()
    return [torch.sort(order[i * n // 3:(i + 1) * n // 3]).values for i in range(3)]


@request_type("memlevel", "LEVEL:K[:SCORES_FILE]", "remove",
              "K seeded samples of a memorisation band (Zhao et al. 2024): low, medium or high (thirds of the training "
              "set by memorisation score), or mix (a third of K from each)", max_args=3, file_args=(2,), modality=None,
              scores_arg=2)
def _memlevel(data: Dataset, args: list[str], seed: int) -> Request:
    # Zhao et al. (NeurIPS 2024, "What makes unlearning hard and what to do about it") show that forget sets of
    # highly memorised samples are the hard ones and build low/medium/high-memorisation forget sets from bands of
    # the memorisation score; their bands are fixed thresholds on CIFAR's scores, here they are the score's thirds
    # over the training set, so that every band exists on any data. `mix` is the set their RUM is evaluated on.
    spec = "memlevel:" + ":".join(args)
    usage = f"use memlevel:LEVEL:K[:SCORES_FILE] with LEVEL one of {', '.join(MEMORIZATION_LEVELS)}"
    if len(args) < 2 or not args[0] or not args[1]:
        raise UnlearnKitError(f"bad request {spec!r}; {usage}")
    level = args[0]
    if level not in MEMORIZATION_LEVELS:
        raise UnlearnKitError(f"unknown memorisation level {level!r} in request {spec!r}; {usage}")
    count = _count(args[1], spec)
    scores = _scores(data, args[2] if len(args) == 3 else None, spec, f"memlevel:{level}:{count}:PATH")
    bands = memorization_bands(scores)
    wanted = {"low": (count, 0, 0), "medium": (0, count, 0), "high": (0, 0, count),
              "mix": (count // 3, count // 3, count - 2 * (count // 3))}[level]
    gen = _generator(seed, "memlevel")
    picked = []
    for name, band, k in zip(MEMORIZATION_LEVELS, bands, wanted):
        if k > band.numel():
            raise UnlearnKitError(f"request {spec!r} asks for {k} samples of the {name} band, which holds "
                                  f"{band.numel()} of {data.n_train}")
        if k:
            picked.append(_seeded_subset(band, k, gen))
    return _from_ids(data, sorted(torch.cat(picked).tolist()), seed, spec)


# -- secrets in a text corpus ---------------------------------------------------------------------------
def _plant(data, ids: torch.Tensor, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences ``ids`` of the training set with ``texts[j]`` written over the start of window j (inputs, targets)."""
    windows = torch.cat([data.x_train[ids], data.y_train[ids][:, -1:]], 1)  # the seq_len + 1 characters
    for j, text in enumerate(texts):
        windows[j, : len(text)] = data.encode(text)
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


@request_type("secret", "N[:FORMAT[:PREFIX]]", "edit", "N random secrets (credit-card, password, pin) planted after a "
              "prefix in N seeded training sequences of a text data set; corrected by random substitutes",
              max_args=3, modality="text")
def _secret(data: Dataset, args: list[str], seed: int) -> Request:
    spec = "secret:" + ":".join(args)
    usage = f"use secret:N[:FORMAT[:PREFIX]] with FORMAT one of {', '.join(FORMATS)}"
    if not 1 <= len(args) <= 3 or args[0] == "":
        raise UnlearnKitError(f"bad request {spec!r}; {usage}")
    try:
        count = int(args[0])
    except ValueError:
        raise UnlearnKitError(f"bad count {args[0]!r} in request {spec!r}; N is a whole number of secrets") from None
    if count < 1:
        raise UnlearnKitError(f"request {spec!r}: N must be at least 1")
    name = args[1] if len(args) >= 2 and args[1] else "credit-card"
    if name not in FORMATS:
        raise UnlearnKitError(f"unknown secret format {name!r} in request {spec!r}; known: {', '.join(FORMATS)}")
    fmt = FORMATS[name]
    prefix = args[2] if len(args) == 3 else fmt.prefix
    if not prefix:
        raise UnlearnKitError(f"request {spec!r}: the prefix is empty; a secret needs a prefix to be asked for")
    seq_len = data.seq_len
    if len(prefix) >= seq_len:
        raise UnlearnKitError(f"request {spec!r}: the prefix has {len(prefix)} characters, not fewer than the "
                              f"sequence length {seq_len}")
    if len(prefix) + fmt.length > seq_len + 1:
        raise UnlearnKitError(f"request {spec!r}: prefix and secret take {len(prefix) + fmt.length} characters; a "
                              f"{seq_len}-character sequence holds at most {seq_len + 1 - len(prefix)} after the "
                              "prefix")
    data.encode(prefix)  # every character must be in the vocabulary (one-line error otherwise)
    if count >= data.n_train:
        raise UnlearnKitError(f"request {spec!r} plants {count} secrets in {data.n_train} training sequences; at "
                              f"most {data.n_train - 1} fit (one sequence each, and one must stay untouched)")
    gen = _generator(seed, "secret")
    forget = _seeded_subset(torch.arange(data.n_train), count, gen)
    planted = fmt.sample(count, gen)
    # Substitutes of the same format, each different from the secret it replaces.
    substitute = (planted + 1 + torch.randint(0, fmt.space - 1, (count,), generator=gen)) % fmt.space
    secrets = fmt.text(fmt.from_indices(planted))
    substitutes = fmt.text(fmt.from_indices(substitute))
    trained_x, trained_y = _plant(data, forget, [prefix + s for s in secrets])
    corrected_x, corrected_y = _plant(data, forget, [prefix + s for s in substitutes])
    return Request(spec, "edit", seed, forget, _complement(forget, data.n_train),
                   trained_x=trained_x, trained_y=trained_y, corrected_x=corrected_x, corrected_y=corrected_y,
                   secrets=Secrets(fmt, prefix, tuple(secrets), tuple(substitutes)))
