"""Parameter masks that live in the model's state.

Pruning masks are buffers named ``<parameter>_prune_mask`` on the module that owns the parameter, so
they travel with ``state_dict()``, safetensors checkpoints and ``model.to(device)``. The training loop
re-applies them after every optimiser step and :func:`unlearnkit.unlearn` after every method, so no
weight decay, momentum or one-shot update can revive a pruned weight.
"""

from __future__ import annotations

import torch
import torch.nn as nn

PRUNE_SUFFIX = "_prune_mask"


def prune_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{parameter name: bool mask}`` for every pruned parameter of ``model``."""
    masks = {}
    for module_name, module in model.named_modules():
        for param_name in module._parameters:
            mask = module._buffers.get(param_name + PRUNE_SUFFIX)
            if mask is not None:
                masks[f"{module_name}.{param_name}" if module_name else param_name] = mask
    return masks


def attach_prune_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Store ``masks`` as buffers beside their parameters and zero the pruned weights."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in params:
            raise KeyError(f"no parameter {name!r} to mask")
        if mask.shape != params[name].shape:
            raise ValueError(f"mask for {name} has shape {tuple(mask.shape)}, parameter {tuple(params[name].shape)}")
        module_name, _, param_name = name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        buffer = mask.to(device=params[name].device, dtype=torch.bool).clone()
        if param_name + PRUNE_SUFFIX in module._buffers:
            module._buffers[param_name + PRUNE_SUFFIX] = buffer
        else:
            module.register_buffer(param_name + PRUNE_SUFFIX, buffer)
    enforce_prune_masks(model)


def remove_prune_masks(model: nn.Module) -> None:
    for module in model.modules():
        for key in [k for k in module._buffers if k.endswith(PRUNE_SUFFIX)]:
            del module._buffers[key]


def register_mask_buffers(model: nn.Module, state_keys: set[str]) -> None:
    """Before loading a state dict that holds prune masks, create the buffers it expects."""
    params = dict(model.named_parameters())
    for key in state_keys:
        if key.endswith(PRUNE_SUFFIX):
            pname = key[: -len(PRUNE_SUFFIX)]
            if pname in params:
                module_name, _, param_name = pname.rpartition(".")
                module = model.get_submodule(module_name) if module_name else model
                module.register_buffer(param_name + PRUNE_SUFFIX, torch.ones_like(params[pname], dtype=torch.bool))


@torch.no_grad()
def enforce_prune_masks(model: nn.Module) -> None:
    for module in model.modules():
        for param_name, param in module._parameters.items():
            mask = module._buffers.get(param_name + PRUNE_SUFFIX)
            if mask is not None and param is not None:
                param.mul_(mask)


def sparsity(model: nn.Module) -> float:
    """Fraction of zero entries over the masked parameters (0.0 for a dense model)."""
    masks = prune_masks(model)
    total = sum(m.numel() for m in masks.values())
    return 0.0 if total == 0 else 1.0 - sum(int(m.sum()) for m in masks.values()) / total
