"""Declared options (unlearnkit.options): one declaration per option gives validation, `unlearnkit info` and the
docs. Every declared option of every owner — the training recipe, models, SPD-GAN, pruning specs, the hybrid
policy and each sub-command's flags (methods: tests/test_method_contract.py) — refuses each bad value generated from
its declaration, in the library and on the real command line, with one line naming it, its type and its range."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Literal

import pytest

import unlearnkit.cli  # noqa: F401  (registers the sub-commands' flags)
from unlearnkit.cli import main
from unlearnkit.cli.core import info
from unlearnkit.errors import UnlearnKitError
from unlearnkit.options import OWNERS, build, declare, declared, option, options_of, parse_text
from unlearnkit.training import TrainConfig

SHIPPED = [d for d in declared()
           if d.kind != "method" and OWNERS[(d.kind, d.owner)].config.__module__.startswith("unlearnkit.")]


@dataclasses.dataclass
class Example:
    count: int = option(3, "a count", ge=1, le=10)
    rate: float = option(0.5, "a rate", gt=0, lt=1)
    flag: bool = option(True, "a switch")
    mode: Literal["a", "b"] = option("a", "a choice")
    pair: tuple[float, ...] = option((0.1, 0.2), "two fractions", ge=0, le=1, length=2)
    limit: float | None = option(None, "optional", ge=0, le=5)


def test_values_are_typed_strictly():
    ok = build(Example, {"count": 4.0, "rate": 0.25, "flag": False, "mode": "b", "pair": [0.0, 1.0], "limit": None})
    assert (ok.count, type(ok.count), ok.pair) == (4, int, (0.0, 1.0))
    bad = [("count", True), ("count", 1.5), ("count", "3"), ("count", 0), ("count", 11), ("rate", 0.0), ("rate", 1.0),
           ("rate", math.nan), ("rate", math.inf), ("rate", False), ("flag", 1), ("flag", "true"), ("mode", "c"),
           ("pair", [0.5]), ("pair", [0.5, 2.0]), ("pair", "ab"), ("limit", -1)]
    for name, value in bad:
        with pytest.raises(UnlearnKitError, match=f"^option {name} of Example must be .*; got "):
            build(Example, {name: value})
    with pytest.raises(UnlearnKitError, match="has no option.*speed; it takes count, rate, flag, mode, pair, limit"):
        build(Example, {"speed": 1})


def test_the_message_names_type_and_range():
    d = options_of(Example)
    assert d["count"].allowed() == "an integer in [1, 10]"
    assert d["rate"].allowed() == "a finite float in (0, 1)"
    assert d["mode"].allowed() == "one of 'a', 'b'"
    assert d["pair"].allowed() == "a list of 2 finite floats in [0, 1]"
    assert d["limit"].allowed() == "a finite float in [0, 5] or null"
    with pytest.raises(UnlearnKitError) as caught:
        TrainConfig().replace(lr="abc")
    assert str(caught.value) == RECIPE.format("lr") + "a finite float in (0, 10]; got 'abc'"


def test_a_default_outside_its_range_is_refused_at_declaration():
    @dataclasses.dataclass
    class Broken:
        size: int = option(0, "size", ge=1, le=4)

    with pytest.raises(TypeError, match="default of test broken"):
        declare("test", "broken", Broken)
    assert ("test", "broken") not in OWNERS


def test_command_line_words():
    assert parse_text("1e-3") == 1e-3 and parse_text("true") is True and parse_text("null") is None
    assert math.isnan(parse_text("nan")) and parse_text("inf") == math.inf and parse_text("abc") == "abc"
    assert parse_text("[0.5, 0.75]") == [0.5, 0.75]


@pytest.mark.parametrize("d", SHIPPED, ids=lambda d: f"{d.kind}:{d.owner}:{d.name}")
def test_every_declared_option_refuses_its_bad_values(d):
    config = OWNERS[(d.kind, d.owner)].config
    assert d.default is dataclasses.MISSING or d.check(d.default) == d.default
    if d.type.base in (int, float) and d.choices is None:
        assert d.low is not None and d.high is not None, "numeric options declare both bounds"
    for why, value in d.bad_values():
        with pytest.raises(UnlearnKitError) as caught:
            build(config, {d.name: value})
        message = str(caught.value)
        assert message.startswith(f"option {d.label} of {d.owner} must be {d.allowed()}; got "), (why, message)


def _argv(d, text: str) -> list[str]:
    """Command words + the flag with a bad word (the parser checks it before required arguments or any work)."""
    words = [] if d.owner == "unlearnkit" else d.owner.split()
    return [d.flag, text, "info"] if d.owner == "unlearnkit" else [*words, d.flag, text]


@pytest.mark.parametrize("d", [d for d in SHIPPED if d.kind == "command"], ids=lambda d: f"{d.owner}:{d.flag}")
def test_every_command_flag_refuses_bad_words_on_the_command_line(d, capsys):
    for why, text in d.bad_texts():
        code = main(_argv(d, text))
        out, err = capsys.readouterr()
        assert code == 2 and out == "", (why, text, err)
        assert err.count("\n") == 1 and err.startswith(f"unlearnkit: error: option {d.flag} of {d.owner} must be "), err


TRAIN = ["train", "--dataset", "digits"]
RECIPE = "option {} of the training recipe must be "


@pytest.mark.parametrize("argv, message", [
    ([*TRAIN, "--set", "lr=abc"], RECIPE.format("lr") + "a finite float in (0, 10]; got 'abc'"),
    ([*TRAIN, "--set", "epochs=1.5"], RECIPE.format("epochs") + "an integer"),
    ([*TRAIN, "--set", "epochs=abc"], RECIPE.format("epochs") + "an integer"),
    ([*TRAIN, "--set", "momentum=-5"], RECIPE.format("momentum") + "a finite float in [0, 1)"),
    ([*TRAIN, "--set", "weight_decay=-1"], RECIPE.format("weight_decay")),
    ([*TRAIN, "--set", "milestones=abc"], RECIPE.format("milestones") + "a list"),
    ([*TRAIN, "--set", "gamma=abc"], RECIPE.format("gamma")),
    ([*TRAIN, "--set", "batch_size=2.5"], RECIPE.format("batch_size") + "an integer"),
    ([*TRAIN, "--set", "augment=maybe"], RECIPE.format("augment") + "true or false"),
    ([*TRAIN, "--set", "augment=1"], RECIPE.format("augment") + "true or false"),
    ([*TRAIN, "--set", "epochs=true"], RECIPE.format("epochs") + "an integer"),
    ([*TRAIN, "--set", "grad_clip=-1"], RECIPE.format("grad_clip")),
    ([*TRAIN, "--set", "lr=Infinity"], "got inf"),
    ([*TRAIN, "--set", "lr=1e30"], "got 1e+30"),
    ([*TRAIN, "--set", "lr=nan"], "got nan"),
    ([*TRAIN, "--model-option", "width=-5"], "option width of model mlp must be an integer in [1, "),
    ([*TRAIN, "--model-option", "depth=abc"], "option depth of model mlp must be an integer"),
    (["sisa", "train", "--dataset", "digits", "--workers", "-5"],
     "option --workers of sisa train must be an integer in [1, "),
    (["forget", "--model", "M", "--ids", "I", "--beta", "nan"],
     "option --beta of the hybrid policy must be a finite float"),
    (["unlearn", "--checkpoint", "C", "--method", "topk_perturb", "--set", "sigma=-1"],
     "option sigma of topk_perturb"),
])
def test_the_issue_cases_are_one_line_errors_before_any_work(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    writes = argv[0] in ("train", "unlearn") or argv[:2] == ["sisa", "train"]
    code = main([*argv, "--out", str(tmp_path / "out")] if writes else argv)
    out, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and err.startswith("unlearnkit: error: ") and message in err, err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_info_lists_every_declared_option():
    listed = info()
    assert listed["methods"]["finetune"]["config"]["lr"]["allowed"] == "a finite float in (0, 10] or null"
    options = listed["options"]
    assert options["the training recipe"]["lr"]["low"] == 0 and options["the training recipe"]["lr"]["low_open"]
    assert options["sisa train flags"]["--workers"]["high"] == 256
    assert options["model mlp"]["width"]["type"] == "int"
    assert listed["metrics"]["FR"] == {"doc": listed["metrics"]["FR"]["doc"], "better": "higher"}
    json.dumps(listed, default=str)
    for d in SHIPPED:
        key = f"{d.owner} flags" if d.kind == "command" else d.owner
        assert d.label in options[key], (key, d.label)


def test_every_generated_bad_command_line_is_refused_before_its_inputs_are_read(capsys, tmp_path, monkeypatch):
    from unlearnkit.cli import _bad_input_cases, bad_input_cases

    monkeypatch.chdir(tmp_path)  # "ck", "sisa", "ids.txt" do not exist here: a refusal must come before reading them
    cases = _bad_input_cases()
    assert len(cases) == len(bad_input_cases()) > 900
    assert len({label for label, _, _ in cases}) == len(cases)
    kinds = set()
    for label, argv, expected in cases:
        code = main([str(tmp_path / "out") if a == "OUT" else a for a in argv])
        out, err = capsys.readouterr()
        assert code == 2 and err.count("\n") == 1 and err.startswith("unlearnkit: error: " + expected), (label, err)
        kinds.add(label.split("-")[0])
    assert kinds == {"train", "accel", "model", "method", "spdgan", "prune", "policy", "command"}
    assert list(tmp_path.iterdir()) == []
