"""Bring your own model: a classifier trained by a plain PyTorch loop, saved with safetensors, imported,
unlearned with two methods and retrained; and every way an import can go wrong, each one line, nothing written."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

import unlearnkit as uk
from unlearnkit.data.datasets import USER_DATA_CACHE as _CACHE
from unlearnkit.errors import UnlearnKitError
from unlearnkit.models import last_layer

MODEL_CODE = textwrap.dedent('''
    import torch.nn as nn

    class Net(nn.Module):
        def __init__(self, num_classes=10, hidden=32):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU())
            self.head = nn.Linear(hidden, num_classes)

        def forward(self, x):
            return self.head(self.body(x))

    def build(num_classes=10, hidden=32):
        return Net(num_classes, hidden)

    def broken(**kwargs):
        raise RuntimeError("no GPU here")

    def not_a_module():
        return 42
''')


def write_digits_folder(root: Path, n_train: int = 500, n_test: int = 200) -> None:
    """scikit-learn's digits as 8x8 grey PNGs in class folders (the layout users keep)."""
    digits = uk.load_dataset("digits")
    for split, x, y, n in (
        ("train", digits.x_train, digits.y_train, n_train),
        ("test", digits.x_test, digits.y_test, n_test),
    ):
        for i in range(n):
            folder = root / split / f"digit{int(y[i])}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((x[i, 0] * 255).round().to(torch.uint8).numpy()).save(folder / f"{i:04d}.png")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """An image folder, a model module (importable by name) and weights trained by a plain PyTorch loop."""
    root = tmp_path_factory.mktemp("byod")
    write_digits_folder(root / "digits")
    (root / "byod_net.py").write_text(MODEL_CODE)
    sys.path.insert(0, str(root))
    sys.modules.pop("byod_net", None)
    import byod_net

    _CACHE.clear()
    data = uk.load_dataset(f"imagefolder:{root / 'digits'}")
    torch.manual_seed(0)
    model = byod_net.build(num_classes=10, hidden=32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(15):
        order = torch.randperm(data.n_train)
        for start in range(0, data.n_train, 50):
            idx = order[start : start + 50]
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    save_file(model.state_dict(), str(root / "net.safetensors"))
    torch.save(model.state_dict(), root / "net.pt")
    torch.save(model, root / "whole.pt")  # a pickled module: must be refused
    yield root, data, model
    sys.path.remove(str(root))
    sys.modules.pop("byod_net", None)


def test_import_round_trip_unlearn_two_methods_and_retrain(workspace):
    root, data, trained = workspace
    out = root / "runs" / "imported"
    ckpt = uk.import_model("byod_net:build", root / "net.safetensors", f"imagefolder:{root / 'digits'}",
                           factory_args={"num_classes": 10, "hidden": 32}, out=out, device="cpu",
                           recipe=uk.TrainConfig(epochs=10, batch_size=32, lr=0.05))
    assert ckpt.path == out and ckpt.dataset() is not None
    manifest = uk.load_checkpoint(out).manifest
    assert manifest["model"] == {"name": "imported", "args": {"factory": "byod_net:build",
                                 "factory_args": {"num_classes": 10, "hidden": 32}, "classifier_layer": "head"}}
    assert manifest["dataset"]["class_names"] == [f"digit{i}" for i in range(10)]
    assert manifest["recipe_source"] == "given" and manifest["train"]["batch_size"] == 32
    assert manifest["metrics"]["test_acc"] > 85 and manifest["metrics"]["train_acc"] > 90
    loaded = uk.load_checkpoint(out)
    for a, b in zip(loaded.model.state_dict().values(), trained.state_dict().values()):
        assert torch.equal(a, b)
    assert last_layer(loaded.model) is loaded.model.head
    assert loaded.dataset().fingerprint == data.fingerprint

    request = uk.build_request("class:3", data, seed=0)
    results, models = {}, {}
    for method, options in (
        ("retrain", {}),
        ("finetune", {"epochs": 3}),
        ("grad_ascent", {"epochs": 30, "lr": 0.005, "check_every": 1}),
        ("fisher", {}),
    ):
        result = uk.unlearn(loaded, request, method=method, device="cpu", **options)
        assert type(result.model).__name__ == "Net"
        models[method] = result.model
        results[method] = uk.accuracy_report(result.model, data, request, device="cpu")
    assert results["retrain"]["forget_acc"] == 0.0 and results["retrain"]["test_acc"] > 60
    original = uk.accuracy_report(loaded.model, data, request, device="cpu")
    assert original["forget_acc"] > 80
    for method in ("grad_ascent", "fisher"):  # both really unlearn class 3 and keep most of the rest
        assert results[method]["forget_acc"] < original["forget_acc"] - 30, (method, results[method])
        assert results[method]["retain_acc"] > 60, (method, results[method])
        metrics = uk.evaluate(models[method], request, data, reference=models["retrain"], device="cpu").metrics
        assert 0 <= metrics["avg_gap"] < 100 and metrics["UA"] > 30
    # a fresh Retrain is built by the factory, not copied: with 0 epochs it is at chance on the retain set
    fresh = uk.unlearn(loaded, request, method="retrain", device="cpu", epochs=0)
    assert uk.accuracy_report(fresh.model, data, request)["retain_acc"] < 40


def test_pt_state_dict_recipe_and_classifier_layer(workspace, tmp_path):
    root, data, _ = workspace
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("epochs = 4\nlr = 0.1\nschedule = 'constant'\n")
    ckpt = uk.import_model("byod_net:build", root / "net.pt", data, recipe=recipe, classifier_layer="head")
    assert ckpt.path is None and ckpt.manifest["train"]["epochs"] == 4 and ckpt.manifest["recipe_source"] == str(recipe)
    assert ckpt.dataset() is data
    default = uk.import_model("byod_net:build", root / "net.safetensors", data)
    assert default.manifest["recipe_source"] == "default" and default.manifest["train"] == uk.TrainConfig().to_dict()
    (tmp_path / "suite-style.toml").write_text("[train]\nepochs = 2\n")
    assert (
        uk.import_model("byod_net:build", root / "net.pt", data, recipe=tmp_path / "suite-style.toml").manifest[
            "train"
        ]["epochs"]
        == 2
    )


@pytest.mark.parametrize(
    "factory, weights, kwargs, message",
    [
        ("no_such_module_xyz:build", "net.safetensors", {}, "cannot import the factory's module 'no_such_module_xyz'"),
        ("byod_net:nope", "net.safetensors", {}, "has no 'nope'"),
        ("byod_net", "net.safetensors", {}, "package.module:function"),
        ("byod_net:broken", "net.safetensors", {}, "raised RuntimeError: no GPU here"),
        ("byod_net:not_a_module", "net.safetensors", {}, "returned int, not a torch.nn.Module"),
        ("byod_net:build", "net.safetensors", {"factory_args": {"colour": 1}}, "raised TypeError"),
        (
            "byod_net:build",
            "net.safetensors",
            {"factory_args": {"hidden": 16}},
            "shape mismatch body.1.bias \\(32,\\) vs model \\(16,\\), body.1.weight",
        ),
        ("byod_net:build", "whole.pt", {}, "needs unpickling beyond weights"),
        ("byod_net:build", "missing.safetensors", {}, "does not exist"),
        ("byod_net:build", "garbage.safetensors", {}, "cannot be read as safetensors"),
        ("byod_net:build", "extra.safetensors", {}, "unexpected extra.weight"),
        ("byod_net:build", "partial.safetensors", {}, "missing head.bias"),
        ("byod_net:build", "net.safetensors", {"factory_args": {"num_classes": 7}}, "shape mismatch"),
        (
            "byod_net:build",
            "seven.safetensors",
            {"factory_args": {"num_classes": 7}},
            "7 outputs but .* has 10 classes",
        ),
        ("byod_net:build", "net.safetensors", {"classifier_layer": "body.1x"}, "no layer 'body.1x'"),
        ("byod_net:build", "net.safetensors", {"classifier_layer": "body"}, "is a Sequential, not a torch.nn.Linear"),
        ("byod_net:build", "net.safetensors", {"classifier_layer": "body.1"}, "32 outputs, but the data has 10"),
        ("byod_net:build", "net.safetensors", {"recipe": "bad.toml"}, "recipe .* unknown training option"),
    ],
)
def test_bad_imports_are_one_line_and_write_nothing(workspace, tmp_path, factory, weights, kwargs, message):
    root, data, trained = workspace
    state = trained.state_dict()
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 40)
    save_file({**state, "extra.weight": torch.zeros(2)}, str(tmp_path / "extra.safetensors"))
    save_file({k: v for k, v in state.items() if k != "head.bias"}, str(tmp_path / "partial.safetensors"))
    import byod_net

    save_file(byod_net.build(num_classes=7, hidden=32).state_dict(), str(tmp_path / "seven.safetensors"))
    (tmp_path / "bad.toml").write_text("epochs = 3\nlearning_rate = 0.1\n")
    for name in ("net.safetensors", "whole.pt"):
        (tmp_path / name).write_bytes((root / name).read_bytes())
    if "recipe" in kwargs:
        kwargs = {**kwargs, "recipe": tmp_path / kwargs["recipe"]}
    out = tmp_path / "out"
    with pytest.raises(UnlearnKitError, match=message) as err:
        uk.import_model(factory, tmp_path / weights, data, out=out, **kwargs)
    assert "\n" not in str(err.value)
    assert not out.exists()


def test_a_model_without_linear_layer_is_imported_and_fisher_says_why(workspace, tmp_path, monkeypatch):
    root, data, _ = workspace
    (tmp_path / "conv_only.py").write_text(textwrap.dedent('''
        import torch.nn as nn
        def build():
            return nn.Sequential(nn.Conv2d(1, 10, 8), nn.Flatten())
    '''))
    monkeypatch.chdir(tmp_path)  # the factory's module is found in the current directory, as with python -m
    import torch.nn as nn

    net = nn.Sequential(nn.Conv2d(1, 10, 8), nn.Flatten())
    save_file(net.state_dict(), str(tmp_path / "conv.safetensors"))
    ckpt = uk.import_model("conv_only:build", tmp_path / "conv.safetensors", data)
    assert ckpt.manifest["model"]["args"]["classifier_layer"] is None
    request = uk.build_request("class:1", data, seed=0)
    with pytest.raises(UnlearnKitError, match="classifier-layer"):
        uk.unlearn(ckpt, request, method="fisher", device="cpu")
    assert uk.unlearn(ckpt, request, method="grad_ascent", device="cpu").model is not None
