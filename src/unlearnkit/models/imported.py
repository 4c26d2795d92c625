"""Models unlearnkit did not define: built by the user's own factory, never unpickled.

A checkpoint of an imported model records ``{"name": "imported", "args": {"factory": "pkg.mod:build",
"factory_args": {...}, "classifier_layer": "fc"}}``; :func:`build_imported` calls the factory with those
arguments (so Retrain builds a fresh copy the same way), and the weights come from safetensors. A ``.pt``
state dict is read only with ``torch.load(weights_only=True)``, which refuses anything but tensors and
plain containers.

The factory's module is imported like ``python -m`` would: from the installed packages or the current
directory. Importing it runs its code — that is the user's own code, named by the user.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..errors import UnlearnKitError

IMPORTED = "imported"
CLASSIFIER_ATTR = "_unlearnkit_classifier"  # set on the module: the name of its classifier layer
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


@contextlib.contextmanager
def _cwd_on_path():
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def load_factory(spec: str) -> Callable[..., nn.Module]:
    """``package.module:function`` (or ``:Class``, or ``:obj.attr``) -> the callable; one-line errors."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise UnlearnKitError(f"factory must be 'package.module:function', got {spec!r}")
    module_name, attr = spec.split(":")
    with _cwd_on_path():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise UnlearnKitError(f"cannot import the factory's module {module_name!r}: {exc} (install it, or run "
                                  f"from the folder that holds it)") from None
        except Exception as exc:  # the user's module raised while importing
            raise UnlearnKitError(f"importing {module_name!r} raised {type(exc).__name__}: {exc}") from None
    target = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise UnlearnKitError(f"module {module_name!r} has no {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise UnlearnKitError(f"{spec} is not callable")
    return target


def build_imported(factory: str, factory_args: dict | None = None, classifier_layer: str | None = None) -> nn.Module:
    """Call the factory with its keyword arguments; the result must be an ``nn.Module``."""
    if factory_args is not None and not isinstance(factory_args, dict):
        raise UnlearnKitError(f"factory arguments must be a JSON object (keyword arguments), got {factory_args!r}")
    build = load_factory(factory)
    try:
        model = build(**(factory_args or {}))
    except Exception as exc:  # the user's factory raised
        raise UnlearnKitError(f"factory {factory}(**{json.dumps(factory_args or {})}) raised "
                              f"{type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise UnlearnKitError(f"factory {factory} returned {type(model).__name__}, not a torch.nn.Module")
    if classifier_layer is not None:
        classifier(model, classifier_layer)  # exists and is linear
        setattr(model, CLASSIFIER_ATTR, classifier_layer)
    return model


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors``, or from a ``.pt``/``.pth``/``.bin`` holding only tensors."""
    path = Path(path)
    if not path.is_file():
        raise UnlearnKitError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise UnlearnKitError(f"{path} cannot be read as safetensors: {exc}") from None
    if path.suffix not in WEIGHT_SUFFIXES:
        raise UnlearnKitError(f"weights must be a .safetensors file (or a .pt/.pth/.bin state dict), got {path.name}")
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnlearnKitError(f"{path} needs unpickling beyond weights ({first[:160]}); save model.state_dict() "
                              f"with safetensors.torch.save_file instead") from None
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise UnlearnKitError(f"cannot read {path} as a PyTorch state dict: {str(exc).splitlines()[0][:200]}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise UnlearnKitError(f"{path} is not a state dict (a mapping of parameter names to tensors)")
    return state


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load ``state`` strictly, or list what does not fit (missing and unexpected keys, shape mismatches)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        def some(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")

        parts = []
        if missing:
            parts.append(f"missing {some(missing)}")
        if unexpected:
            parts.append(f"unexpected {some(unexpected)}")
        if wrong:
            parts.append("shape mismatch " + ", ".join(
                f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}" for k in wrong[:3])
                + (f" and {len(wrong) - 3} more" if len(wrong) > 3 else ""))
        raise UnlearnKitError(f"weights {where} do not fit the model: {'; '.join(parts)}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def classifier(model: nn.Module, name: str) -> nn.Linear:
    try:
        layer = model.get_submodule(name)
    except AttributeError:
        raise UnlearnKitError(f"the model has no layer {name!r} (its linear layers: "
                              f"{', '.join(linear_layers(model)) or 'none'})") from None
    if not isinstance(layer, nn.Linear):
        raise UnlearnKitError(f"layer {name!r} is a {type(layer).__name__}, not a torch.nn.Linear classifier")
    return layer


def linear_layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def find_classifier(model: nn.Module, num_classes: int, name: str | None = None) -> str | None:
    """The classifier layer's name: ``name`` if given (checked), else ``classifier`` if the model has one,
    else the last ``nn.Linear`` registered; it must have ``num_classes`` outputs. None when there is no linear
    layer (methods that need a classifier then say so)."""
    if name is None:
        layers = linear_layers(model)
        if not layers:
            return None
        name = "classifier" if "classifier" in layers else layers[-1]
        how = "the last linear layer"
    else:
        how = "--classifier-layer"
    layer = classifier(model, name)
    if layer.out_features != num_classes:
        raise UnlearnKitError(f"{how} {name!r} has {layer.out_features} outputs, but the data has {num_classes} "
                              f"classes; name the classifier with --classifier-layer NAME")
    return name
