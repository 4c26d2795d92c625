"""Request builders give disjoint, seeded, reproducible forget/retain sets, and refuse bad input."""

import json

import pytest
import torch

from unlearnkit.errors import UnlearnKitError
from unlearnkit.requests import Trigger, build_request, request_from_record


def _partition_ok(req, n):
    assert torch.equal(torch.sort(torch.cat([req.forget, req.retain])).values, torch.arange(n))
    assert not torch.isin(req.forget, req.retain).any()
    assert torch.equal(req.forget, torch.sort(req.forget).values)


@pytest.mark.parametrize(
    "spec",
    [
        "random:0.1",
        "class:3",
        "class:3,7",
        "relabel:0.2",
        "relabel:0.5:2",
        "backdoor:0.05",
        "backdoor:0.05:4",
        "feature:0.5",
        "feature:0.3:2",
    ],
)
def test_disjoint_seeded_reproducible(digits, spec):
    a = build_request(spec, digits, seed=0)
    b = build_request(spec, digits, seed=0)
    _partition_ok(a, digits.n_train)
    assert torch.equal(a.forget, b.forget) and a.forget_hash == b.forget_hash
    if not spec.startswith("class"):
        c = build_request(spec, digits, seed=1)
        assert not torch.equal(a.forget, c.forget)  # the seed matters


def test_random_fraction_and_class_membership(digits):
    req = build_request("random:0.1", digits)
    assert req.forget.numel() == round(0.1 * digits.n_train)
    req = build_request("class:3,7", digits)
    assert set(digits.y_train[req.forget].tolist()) == {3, 7}
    assert not torch.isin(digits.y_train[req.retain], torch.tensor([3, 7])).any()
    assert req.classes == (3, 7)


def test_relabel_never_keeps_the_true_label(digits):
    req = build_request("relabel:0.3", digits)
    assert req.effect == "relabel"
    assert (req.trained_y != digits.y_train[req.forget]).all()
    assert torch.equal(req.corrected_y, digits.y_train[req.forget])
    x, y = req.training_data(digits)
    assert torch.equal(y[req.forget], req.trained_y) and torch.equal(y[req.retain], digits.y_train[req.retain])
    assert torch.equal(req.corrected_data(digits)[1], digits.y_train)
    one_class = build_request("relabel:0.5:2", digits)
    assert (digits.y_train[one_class.forget] == 2).all()


def test_backdoor_stamps_trigger_and_target(digits):
    req = build_request("backdoor:0.05:4", digits)
    assert req.effect == "edit" and req.target == 4
    assert (digits.y_train[req.forget] != 4).all()
    assert (req.trained_y == 4).all()
    trig = req.trigger
    h = digits.image_size
    patch = req.trained_x[
        ..., h - trig.margin - trig.size : h - trig.margin, h - trig.margin - trig.size : h - trig.margin
    ]
    assert torch.equal(patch, trig.pattern(1).expand_as(patch))
    assert torch.equal(req.corrected_x, digits.x_train[req.forget])
    x, y = req.training_data(digits)
    assert torch.equal(x[req.forget], req.trained_x) and torch.equal(x[req.retain], digits.x_train[req.retain])
    assert Trigger.for_image_size(28) == Trigger(size=3, margin=1)


def test_feature_plants_a_patch_on_one_class_and_keeps_labels(digits):
    req = build_request("feature:0.5:2", digits, seed=0)
    assert req.effect == "edit" and req.target == 2 and req.trained_y is None and req.corrected_y is None
    assert (digits.y_train[req.forget] == 2).all()
    assert req.forget.numel() == round(0.5 * int((digits.y_train == 2).sum()))
    feature = req.trigger
    assert feature == Trigger.feature_for_image_size(digits.image_size) and feature.corner == "top-left"
    rows, cols = feature.region(digits.image_size, digits.image_size)
    clean = digits.x_train[req.forget]
    assert torch.equal(req.corrected_x, clean)
    assert (req.trained_x[..., rows, cols] == 1.0).all()  # a solid square
    outside = torch.ones_like(clean, dtype=torch.bool)
    outside[..., rows, cols] = False
    assert torch.equal(req.trained_x[outside], clean[outside])  # nothing else changes
    x, y = req.training_data(digits)
    assert torch.equal(y, digits.y_train) and torch.equal(x[req.retain], digits.x_train[req.retain])
    assert torch.equal(req.corrected_data(digits)[0], digits.x_train)
    # The feature sits in the opposite corner from the backdoor trigger, so the two never overlap.
    b_rows, b_cols = Trigger.for_image_size(28).region(28, 28)
    f_rows, f_cols = Trigger.feature_for_image_size(28).region(28, 28)
    assert f_rows.stop <= b_rows.start and f_cols.stop <= b_cols.start


def test_ids_file(tmp_path, digits):
    path = tmp_path / "ids.txt"
    path.write_text("# forget these\n5\n3\n\n100  # trailing comment\n")
    req = build_request(f"ids:{path}", digits)
    assert req.forget.tolist() == [3, 5, 100]
    again = request_from_record(req.describe(), digits)  # ids are stored, the file is not needed
    path.unlink()
    assert torch.equal(again.forget, req.forget)


def test_each_request_type_declares_its_syntax_and_effect(digits, tmp_path):
    from unlearnkit.requests import EFFECTS, REQUEST_TYPES, parse_spec

    assert set(REQUEST_TYPES) == {"random", "class", "ids", "relabel", "backdoor", "feature", "memorized", "memlevel",
                                  "secret"}
    assert REQUEST_TYPES["secret"].modality == "text" and REQUEST_TYPES["random"].modality is None  # test_text.py
    assert {t.effect for t in REQUEST_TYPES.values()} <= set(EFFECTS)
    # the type's declared effect is the built request's
    path = tmp_path / "ids.txt"
    path.write_text("1\n2\n")
    for spec in ("random:0.1", "class:1", f"ids:{path}", "relabel:0.1", "backdoor:0.05", "feature:0.5:1"):
        request = build_request(spec, digits)
        assert request.effect == REQUEST_TYPES[request.type].effect, spec
    # arguments split as the type declares: a path keeps its colons
    assert parse_spec("ids:/a:b/c.txt")[1] == ["/a:b/c.txt"]
    assert parse_spec("memorized:5:/x:y.json")[1] == ["5", "/x:y.json"]
    assert parse_spec("relabel:0.1:3")[1] == ["0.1", "3"]


def test_memlevel_draws_from_thirds_of_the_memorisation_scores(digits, tmp_path):
    from unlearnkit.requests import (
        MEMORIZATION_SCORES,
        SCORES_FORMAT,
        memorization_bands,
        needs_memorization_scores,
        register_memorization_scores,
    )

    saved = dict(MEMORIZATION_SCORES)
    MEMORIZATION_SCORES.clear()
    try:
        with pytest.raises(UnlearnKitError, match="needs memorisation scores"):
            build_request("memlevel:high:10", digits)
        assert needs_memorization_scores("memlevel:high:10") and needs_memorization_scores("memorized:4")
        scores = torch.arange(digits.n_train, dtype=torch.float64).flip(0)  # id 0 is the most memorised
        register_memorization_scores(digits, scores)
        n = digits.n_train
        low, medium, high = memorization_bands(scores)
        assert high.tolist() == list(range(n - 2 * n // 3)) and low.numel() == n // 3  # thirds by score
        request = build_request("memlevel:high:30", digits, seed=1)
        assert request.forget.numel() == 30 and set(request.forget.tolist()) <= set(high.tolist())
        assert torch.equal(build_request("memlevel:high:30", digits, seed=1).forget, request.forget)  # seeded
        assert not torch.equal(build_request("memlevel:high:30", digits, seed=2).forget, request.forget)
        easy = build_request("memlevel:low:30", digits, seed=1).forget
        assert set(easy.tolist()) <= set(low.tolist())
        mix = build_request("memlevel:mix:31", digits, seed=0).forget
        per_band = [len(set(mix.tolist()) & set(b.tolist())) for b in (low, medium, high)]
        assert per_band == [10, 10, 11]  # a third of K from each band, the remainder from the high one
        assert torch.equal(request_from_record(request.describe(), digits).forget, request.forget)
        path = tmp_path / "scores.json"
        path.write_text(json.dumps({"format": SCORES_FORMAT, "data_fingerprint": digits.fingerprint,
                                    "scores": scores.tolist()}))
        MEMORIZATION_SCORES.clear()
        assert torch.equal(build_request(f"memlevel:high:30:{path}", digits, seed=1).forget, request.forget)
        assert not needs_memorization_scores(f"memlevel:high:30:{path}")
        register_memorization_scores(digits, scores)
        for bad, message in (("memlevel:hot:3", "unknown memorisation level"), ("memlevel:high", "bad request"),
                             ("memlevel:low:x", "whole number"), ("memlevel:low:0", "at least 1"),
                             (f"memlevel:low:{n}", "holds")):
            with pytest.raises(UnlearnKitError, match=message):
                build_request(bad, digits)
    finally:
        MEMORIZATION_SCORES.clear()
        MEMORIZATION_SCORES.update(saved)


def test_request_files_are_the_arguments_a_type_declares_as_files():
    from unlearnkit.requests import request_files

    assert request_files("ids:/a:b/ids.txt") == ["/a:b/ids.txt"]
    assert request_files("memorized:40:scores.json") == ["scores.json"] and request_files("memorized:40") == []
    assert request_files("random:0.1") == request_files("relabel:0.1:3") == request_files(None) == []
    assert request_files("nonsense:x") == []  # building it says what is wrong


def test_records_name_the_effect_and_old_records_load(digits):
    req = build_request("relabel:0.1", digits, seed=1)
    record = req.describe()
    assert record["effect"] == "relabel" and "kind" not in record
    old = {("kind" if k == "effect" else k): v for k, v in record.items()}  # a record written before the rename
    assert old == req.cache_key()  # cache keys keep the old field name, so cached models stay valid
    assert torch.equal(request_from_record(old, digits).forget, req.forget)


def test_record_roundtrip_detects_drift(digits):
    req = build_request("random:0.1", digits, seed=3)
    record = req.describe()
    assert torch.equal(request_from_record(record, digits).forget, req.forget)
    record["forget_hash"] = "0" * 16
    with pytest.raises(UnlearnKitError, match="does not rebuild"):
        request_from_record(record, digits)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("random", "bad request"),
        ("nonsense:1", "unknown request type 'nonsense'"),
        ("random:abc", "bad fraction"),
        ("random:1.5", "must be in \\(0, 1\\)"),
        ("random:0.0001", "forget set would be empty"),
        ("class:12", "class 12 .* does not exist"),
        ("class:x", "bad class"),
        ("class:0,1,2,3,4,5,6,7,8,9", "whole training set"),
        ("relabel:0.1:99", "does not exist"),
        ("backdoor:0.99", "only .* are not of class 0"),
        ("random:0.1:3", "bad request"),
        ("feature:0.1:10", "does not exist"),
        ("feature:0.001:0", "selects no samples"),
        ("feature:1", "must be in \\(0, 1\\)"),
        ("feature:0.5:1:2", "bad request"),
    ],
)
def test_bad_specs(digits, spec, message):
    with pytest.raises(UnlearnKitError, match=message):
        build_request(spec, digits)


@pytest.mark.parametrize(
    "content, message",
    [
        ("1\n2\n2\n", "more than once"),
        ("1\n99999\n", "outside 0.."),
        ("-1\n", "outside"),
        ("a\n", "not an integer"),
        ("# none\n", "lists no ids"),
    ],
)
def test_bad_ids(tmp_path, digits, content, message):
    path = tmp_path / "ids.txt"
    path.write_text(content)
    with pytest.raises(UnlearnKitError, match=message):
        build_request(f"ids:{path}", digits)


def test_missing_ids_file(digits, tmp_path):
    with pytest.raises(UnlearnKitError, match="cannot read ids file"):
        build_request(f"ids:{tmp_path / 'nope.txt'}", digits)
