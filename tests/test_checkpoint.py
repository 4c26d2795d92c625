"""Checkpoints round-trip; tampered, truncated or mismatched ones are refused; writes are atomic."""

import json

import pytest
import torch

from unlearnkit.api import train
from unlearnkit.checkpoint import load_checkpoint
from unlearnkit.errors import UnlearnKitError
from unlearnkit.masks import attach_prune_masks, prune_masks
from unlearnkit.training import TrainConfig


@pytest.fixture(scope="module")
def saved(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("ckpt") / "model"
    trained = train(digits, "mlp", request="backdoor:0.05:1", config=TrainConfig(epochs=2), seed=0, out=out)
    return trained, out


def test_roundtrip(saved, digits):
    trained, out = saved
    ckpt = load_checkpoint(out)
    for key, value in trained.model.state_dict().items():
        assert torch.equal(ckpt.model.state_dict()[key], value.cpu())
    assert ckpt.manifest["dataset"]["fingerprint"] == digits.fingerprint
    assert ckpt.manifest["train"]["epochs"] == 2
    assert "torch" in ckpt.manifest["versions"]
    req = ckpt.request(ckpt.dataset())
    assert torch.equal(req.forget, trained.request.forget) and req.target == 1
    assert (out / "train_log.jsonl").read_text().count("\n") == 2


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_tampered_weights_are_refused(saved, tmp_path):
    bad = _copy(saved[1], tmp_path / "bad")
    raw = bytearray((bad / "model.safetensors").read_bytes())
    raw[-5] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(UnlearnKitError, match="does not match the SHA-256"):
        load_checkpoint(bad)


def test_truncated_weights_are_refused(saved, tmp_path):
    bad = _copy(saved[1], tmp_path / "bad")
    raw = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UnlearnKitError, match="truncated"):
        load_checkpoint(bad)


def test_other_architecture_is_refused(saved, tmp_path):
    bad = _copy(saved[1], tmp_path / "bad")
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["model"]["args"]["width"] = 128
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UnlearnKitError, match="do not fit a mlp"):
        load_checkpoint(bad)
    manifest["model"]["name"] = "small-cnn"
    del manifest["model"]["args"]["width"]
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UnlearnKitError, match="do not fit a small-cnn"):
        load_checkpoint(bad)


def test_corrupted_or_missing_manifest(saved, tmp_path):
    bad = _copy(saved[1], tmp_path / "bad")
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(UnlearnKitError, match="corrupted"):
        load_checkpoint(bad)
    (bad / "manifest.json").unlink()
    with pytest.raises(UnlearnKitError, match="no manifest.json"):
        load_checkpoint(bad)
    with pytest.raises(UnlearnKitError, match="does not exist"):
        load_checkpoint(tmp_path / "absent")


def test_fingerprint_mismatch_is_refused(saved, tmp_path):
    bad = _copy(saved[1], tmp_path / "bad")
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["dataset"]["fingerprint"] = "feedfacefeedface"
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UnlearnKitError, match="fingerprint"):
        load_checkpoint(bad).dataset()


def test_interrupted_save_leaves_old_checkpoint_intact(saved, tmp_path, monkeypatch, digits):
    trained, out = saved
    target = _copy(out, tmp_path / "target")
    before = (target / "model.safetensors").read_bytes()
    import unlearnkit.checkpoint as ck

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(target, trained.model, model_name="mlp", model_args=trained.model_args, dataset=digits)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(
            tmp_path / "fresh", trained.model, model_name="mlp", model_args=trained.model_args, dataset=digits
        )
    assert (target / "model.safetensors").read_bytes() == before
    assert not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "target"] or sorted(
        p.name for p in tmp_path.iterdir()
    ) == ["target"]


def test_pruned_checkpoint_reloads_with_its_masks(saved, tmp_path, digits):
    trained, _ = saved
    model = trained.model
    masks = {
        n: torch.rand(p.shape, generator=torch.Generator().manual_seed(0)) < 0.2
        for n, p in model.named_parameters()
        if p.ndim > 1
    }
    attach_prune_masks(model, masks)
    from unlearnkit.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "pruned", model, model_name="mlp", model_args=trained.model_args, dataset=digits)
    loaded = load_checkpoint(tmp_path / "pruned")
    got = prune_masks(loaded.model)
    assert set(got) == set(masks)
    assert all(torch.equal(got[n], masks[n]) for n in masks)
