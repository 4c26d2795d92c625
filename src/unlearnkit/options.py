"""Declared options: every option is declared once, with its type, range or choices and help.

A declaration is a field of a config dataclass made by :func:`option`; its type is the field's annotation
(``int``, ``float``, ``bool``, ``str``, ``Literal[...]`` for choices, ``tuple[float, ...]``, ``X | None`` when
null is allowed) and its range is given by ``ge``/``gt``/``le``/``lt`` (for tuples: of each item). From these
declarations alone come

* validation — :func:`build` (a config from user values) and :func:`check_fields` (called by a config's
  ``__post_init__``, so a config built any other way is checked too) refuse a wrong type, an out-of-range or
  non-finite value with one :class:`~unlearnkit.errors.UnlearnKitError` line that names the option, its type
  and its allowed range, before anything expensive runs;
* ``unlearnkit info`` and the option tables of the docs (:func:`markdown_table`);
* bad-input cases for tests (:meth:`Declared.bad_values`).

Owners register their config class with :func:`declare` (methods through ``methods.register``, the training
recipe, each model, SPD-GAN, and the command-line flags of every sub-command); :func:`declared` lists every
option of every registered owner. The command-line flags are registered when ``unlearnkit.cli`` is imported.

Booleans are never accepted as numbers, nor numbers as booleans; an integer option accepts an integral float
(``2.0``) but not ``1.5``; strings are never converted to numbers (``lr="0.1"`` is a type error) except by
:func:`parse_text`, which reads a command-line word as JSON (``true``, ``1e-3``, ``[0.5, 0.75]``, ``null``),
as a float literal (``nan``, ``inf``) or else as the plain string.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import UnlearnKitError

# A declared bound that no value of a real run comes near, used where an option has no natural limit.
BIG = 1e6


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric option (or of each item of a tuple option); None means unbounded on that side."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    @property
    def low(self) -> float | None:
        return self.gt if self.gt is not None else self.ge

    @property
    def high(self) -> float | None:
        return self.lt if self.lt is not None else self.le

    def contains(self, v: float) -> bool:
        return not ((self.ge is not None and v < self.ge) or (self.gt is not None and v <= self.gt)
                    or (self.le is not None and v > self.le) or (self.lt is not None and v >= self.lt))

    def text(self) -> str:
        if self.low is None and self.high is None:
            return ""
        left = "(" if self.gt is not None or self.low is None else "["
        right = ")" if self.lt is not None or self.high is None else "]"
        low = _num(self.low) if self.low is not None else "-inf"
        high = _num(self.high) if self.high is not None else "inf"
        return f"{left}{low}, {high}{right}"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:g}"


def option(default: Any, help: str, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None, length: int | None = None, **kwargs) -> Any:
    """A config field with its documentation and its allowed values (numeric bounds: ``ge``/``gt``/``le``/``lt``;
    choices come from a ``Literal`` annotation; ``length`` fixes a tuple's length)."""
    metadata = {"help": help, "range": Range(ge, gt, le, lt), "length": length}
    return field(default=default, metadata=metadata, **kwargs)


# -- the type of a declared option --------------------------------------------------------------------------
@dataclass(frozen=True)
class Kind:
    base: type  # int, float, bool, str or tuple
    nullable: bool = False
    choices: tuple | None = None
    item: type | None = None  # tuple items

    def text(self, rng: Range, length: int | None) -> str:
        if self.choices is not None:
            out = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.base is bool:
            out = "true or false"
        elif self.base is tuple:
            noun = {int: "integers", float: "finite floats", str: "strings"}.get(self.item, "values")
            out = f"a list of {length} {noun}" if length else f"a list of {noun}"
            out += f" in {rng.text()}" if rng.text() else ""
        else:
            out = {int: "an integer", float: "a finite float", str: "a string"}[self.base]
            out += f" in {rng.text()}" if rng.text() else ""
        return out + (" or null" if self.nullable else "")

    @property
    def name(self) -> str:
        base = f"tuple[{self.item.__name__}]" if self.base is tuple else self.base.__name__
        if self.choices is not None:
            base = "choice"
        return base + (" | None" if self.nullable else "")


def kind_of(hint: Any) -> Kind:
    """The option type an annotation declares."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1 or len(rest) == len(args):
            raise TypeError(f"options must be one type or one type | None, not {hint}")
        return dataclasses.replace(kind_of(rest[0]), nullable=True)
    if origin is typing.Literal:
        return Kind(type(args[0]), choices=tuple(args))
    if origin is tuple or hint is tuple:
        item = args[0] if args else float
        return Kind(tuple, item=item)
    if hint in (int, float, bool, str):
        return Kind(hint)
    raise TypeError(f"unsupported option type {hint!r}")


# -- one declared option --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Declared:
    """One option as declared: who owns it, its name, type, default, range or choices, and help.

    ``owner`` is e.g. ``"finetune"`` (kind ``"method"``), ``"recipe"`` (kind ``"train"``), ``"mlp"`` (kind
    ``"model"``) or ``"sisa train"`` (kind ``"command"``, whose ``flag`` is ``--workers``-style).
    """

    kind: str
    owner: str
    name: str
    type: Kind
    default: Any
    range: Range
    length: int | None
    help: str
    flag: str | None = None

    @property
    def low(self) -> float | None:
        return self.range.low

    @property
    def high(self) -> float | None:
        return self.range.high

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING

    @property
    def choices(self) -> tuple | None:
        return self.type.choices

    @property
    def label(self) -> str:
        return self.flag or self.name

    def allowed(self) -> str:
        """What the option accepts, in words: "a finite float in (0, 10]"."""
        return self.type.text(self.range, self.length)

    def error(self, value: Any) -> UnlearnKitError:
        return UnlearnKitError(f"option {self.label} of {self.owner} must be {self.allowed()}; got {_show(value)}")

    def check(self, value: Any) -> Any:
        """The value as the option's type (int for an integral float, tuple for a list), or UnlearnKitError."""
        t = self.type
        if value is None:
            if t.nullable:
                return None
            raise self.error(value)
        if t.base is tuple:
            if not isinstance(value, (list, tuple)) or (self.length is not None and len(value) != self.length):
                raise self.error(value)
            try:
                return tuple(_scalar(item, t.item, self.range, None) for item in value)
            except _Refused:
                raise self.error(value) from None
        try:
            return _scalar(value, t.base, self.range, t.choices)
        except _Refused:
            raise self.error(value) from None

    def bad_values(self) -> list[tuple[str, Any]]:
        """Values the option must refuse, each with what is wrong with it: a wrong type, below or above the
        range, non-finite, not one of the choices. Generated from the declaration, for tests."""
        t, r = self.type, self.range
        out: list[tuple[str, Any]] = []
        if t.choices is not None:
            return [("not a choice", "no-such-choice" if t.base is str else -12345), ("wrong type", [1])]
        if t.base is bool:
            return [("number for a bool", 1), ("string for a bool", "maybe")]
        if t.base is str:
            return [("number for a string", 3)]
        if t.base is tuple:
            out += [("string for a list", "abc")]
            if t.item in (int, float):
                n = self.length or 1
                out += [("string item", ["abc"] * n), ("non-finite item", [math.nan] * n)]
                if r.low is not None:
                    out.append(("item below range", [r.low - 1] * n))
                if r.high is not None:
                    out.append(("item above range", [r.high + 1] * n))
            if self.length is not None:
                out.append(("wrong length", [r.low if r.low is not None else 1] * (self.length + 1)))
            return out
        out += [("string for a number", "abc"), ("bool for a number", True)]
        if t.base is int:
            out.append(("fraction for an int", 1.5))
        out += [("nan", math.nan), ("infinity", math.inf)]
        if r.low is not None:
            out.append(("below range", _below(r, t.base)))
        if r.high is not None:
            out.append(("above range", _above(r, t.base)))
        return out

    def bad_texts(self) -> list[tuple[str, str]]:
        """:meth:`bad_values` as command-line words (``--set KEY=WORD``, ``--flag WORD``): :func:`parse_text` reads
        each back to the bad value."""
        return [(why, value if isinstance(value, str) else json.dumps(value)) for why, value in self.bad_values()]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "owner": self.owner, "name": self.name, "flag": self.flag, "type": self.type.name,
                "default": None if self.required else list(self.default) if isinstance(self.default, tuple)
                else self.default,
                "required": self.required,
                "low": self.low, "high": self.high, "low_open": self.range.gt is not None,
                "high_open": self.range.lt is not None,
                "choices": list(self.choices) if self.choices is not None else None, "nullable": self.type.nullable,
                "allowed": self.allowed(), "help": self.help}


def _below(r: Range, base: type) -> float:
    low = r.low
    step = 1 if base is int else max(abs(low) * 0.5, 1.0)
    return low - step if r.gt is None else low  # an open bound refuses the bound itself


def _above(r: Range, base: type) -> float:
    high = r.high
    step = 1 if base is int else max(abs(high), 1.0)
    return high + step if r.lt is None else high


class _Refused(Exception):
    pass


def _scalar(value: Any, base: type, rng: Range, choices: tuple | None) -> Any:
    if choices is not None:
        if type(value) is not base or value not in choices:
            raise _Refused
        return value
    if base is bool:
        if isinstance(value, bool):
            return value
        raise _Refused
    if base is str:
        if isinstance(value, str):
            return value
        raise _Refused
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Refused
    if not math.isfinite(value):
        raise _Refused
    if base is int:
        if isinstance(value, float) and not value.is_integer():
            raise _Refused
        value = int(value)
    else:
        value = float(value)
    if not rng.contains(value):
        raise _Refused
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- owners: config classes whose fields are declarations --------------------------------------------------------
@dataclass(frozen=True)
class Owner:
    kind: str
    name: str
    config: type
    flags: bool = False  # command-line flags: field "batch_size" is "--batch-size"


OWNERS: dict[tuple[str, str], Owner] = {}


def declare(kind: str, name: str, config: type, *, flags: bool = False) -> type:
    """Register ``config`` (a dataclass of :func:`option` fields) as the options of ``name``; returns it.

    Fails at import time, not at a user's first call, when a field lacks a supported type or its default
    is outside its own declared range."""
    owner = Owner(kind, name, config, flags)
    for d in _declarations(owner):
        if d.default is not dataclasses.MISSING:
            try:
                d.check(d.default)
            except UnlearnKitError as exc:
                raise TypeError(f"default of {kind} {name}: {exc}") from None
    OWNERS[(kind, name)] = owner
    _cache.pop(config, None)
    return config


_cache: dict[type, dict[str, Declared]] = {}


def _declarations(owner: Owner) -> list[Declared]:
    hints = typing.get_type_hints(owner.config)
    out = []
    for f in fields(owner.config):
        if not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)  # type: ignore[misc]
        out.append(Declared(owner.kind, owner.name, f.name, kind_of(hints[f.name]), default,
                            f.metadata.get("range", Range()), f.metadata.get("length"), f.metadata.get("help", ""),
                            "--" + f.name.replace("_", "-") if owner.flags else None))
    return out


def options_of(config: type, owner: str | None = None) -> dict[str, Declared]:
    """The declarations of a config class, by field name (registered or not)."""
    if config not in _cache or owner is not None:
        registered = [o for o in OWNERS.values() if o.config is config]
        base = registered[0] if registered else Owner("config", config.__name__, config)
        if owner is not None:
            base = dataclasses.replace(base, name=owner)
        result = {d.name: d for d in _declarations(base)}
        if owner is not None:
            return result
        _cache[config] = result
    return _cache[config]


def declared(kind: str | None = None) -> list[Declared]:
    """Every declared option of every registered owner (of one ``kind``: method, train, model, spdgan, command).

    The library's owners register when ``unlearnkit`` is imported; the sub-commands' flags when ``unlearnkit.cli``
    is. Each entry's :meth:`Declared.bad_values` gives the values it must refuse."""
    return [d for (k, _), o in OWNERS.items() if kind is None or k == kind for d in _declarations(o)]


# -- validation -------------------------------------------------------------------------------------------------
def check_fields(instance: Any, owner: str | None = None) -> None:
    """Validate (and normalise: tuples, ints) every declared field of a config instance; for ``__post_init__``."""
    decls = options_of(type(instance))
    for name, d in decls.items():
        value = getattr(instance, name)
        if owner is not None and owner != d.owner:
            d = dataclasses.replace(d, owner=owner)
        object.__setattr__(instance, name, d.check(value))


def build(config: type, values: dict[str, Any], owner: str | None = None) -> Any:
    """``config(**values)`` after refusing unknown names and bad values with one clear line each."""
    decls = options_of(config)
    label = owner or next((d.owner for d in decls.values()), config.__name__)
    unknown = sorted(set(values) - set(decls))
    if unknown:
        raise UnlearnKitError(f"{label} has no option(s) {', '.join(unknown)}; it takes {', '.join(decls) or 'none'}")
    checked = {}
    for key, value in values.items():
        d = decls[key] if owner is None else dataclasses.replace(decls[key], owner=owner)
        checked[key] = d.check(value)
    return config(**checked)


def parse_text(text: str) -> Any:
    """A command-line word as a value: JSON where it parses (numbers, true/false, null, lists), a float literal
    such as ``nan`` or ``inf``, else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


# -- documentation ------------------------------------------------------------------------------------------------
def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default_text(d: Declared) -> str:
    v = d.default
    if v is dataclasses.MISSING:
        return "required"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple):
        return json.dumps(list(v))
    return repr(v) if isinstance(v, (str, float)) else str(v)


def markdown_table(kind: str, name: str) -> str:
    """The option table of one owner, as the docs print it (generated; tests compare the docs with it)."""
    owner = OWNERS[(kind, name)]
    if not options_of(owner.config):
        return "No options."
    rows = ["| option | type | default | allowed | meaning |", "| --- | --- | --- | --- | --- |"]
    for d in options_of(owner.config).values():
        rows.append(f"| `{d.label}` | {_cell(d.type.name)} | `{_default_text(d)}` | {_cell(d.allowed())} "
                    f"| {_cell(d.help)} |")
    return "\n".join(rows)


__all__ = ["BIG", "Declared", "Kind", "OWNERS", "Range", "build", "check_fields", "declare", "declared", "kind_of",
           "markdown_table", "option", "options_of", "parse_text"]
