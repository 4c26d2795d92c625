"""Which parameters pruning may touch, and how sparse they are.

By default the prunable parameters are the weights of every convolution and linear layer, the classifier
included: not biases, not BatchNorm's affine parameters, not buffers (such as ``Normalize``'s mean and
std). ``layers="conv"`` restricts pruning to convolutions — the choice of the seed-000 reference code, which
prunes ``nn.Conv2d`` weights only; on ResNet-18 that leaves out 0.05 % of the weights, but on the small CNN
(whose first linear layer holds 95 % of them) it would leave the model nearly dense, hence the default.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import UnlearnKitError
from ..masks import prune_masks

LAYER_CHOICES = ("conv+linear", "conv", "linear")
_KINDS = {
    "conv+linear": (nn.modules.conv._ConvNd, nn.Linear),
    "conv": (nn.modules.conv._ConvNd,),
    "linear": (nn.Linear,),
}


def prunable_names(model: nn.Module, *, layers: str = "conv+linear", include_classifier: bool = True) -> list[str]:
    """Names of the weights that pruning may zero, in ``named_parameters`` order.

    ``include_classifier=False`` leaves out the final linear layer (``model.classifier``, or the last
    ``nn.Linear`` of models without one). Raises :class:`UnlearnKitError` when nothing is left.
    """
    if layers not in _KINDS:
        raise UnlearnKitError(f"unknown layer choice {layers!r}; use {', '.join(LAYER_CHOICES)}")
    head = None if include_classifier else _classifier(model)
    names = []
    for module_name, module in model.named_modules():
        if module is head or not isinstance(module, _KINDS[layers]):
            continue
        weight = module._parameters.get("weight")
        if weight is not None:
            names.append(f"{module_name}.weight" if module_name else "weight")
    if not names:
        kind = {"conv+linear": "convolution or linear", "conv": "convolution", "linear": "linear"}[layers]
        extra = "" if include_classifier else " besides the classifier"
        raise UnlearnKitError(f"{type(model).__name__} has no {kind} weights{extra} to prune; "
                              f"choose other layers (layers=conv+linear) or include the classifier")
    return names


def _classifier(model: nn.Module) -> nn.Module:
    from ..models.imported import CLASSIFIER_ATTR

    if getattr(model, CLASSIFIER_ATTR, None):  # an imported model's named classifier
        return model.get_submodule(getattr(model, CLASSIFIER_ATTR))
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Linear):
        return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UnlearnKitError(f"{type(model).__name__} has no linear classifier to exclude")
    return linears[-1]


def layer_sparsity(model: nn.Module, names: list[str] | None = None) -> dict[str, dict]:
    """``{name: {"numel", "pruned", "sparsity"}}`` by prune mask, over ``names`` (default: the masked ones).

    A named parameter without a mask counts as dense.
    """
    masks = prune_masks(model)
    params = dict(model.named_parameters())
    out = {}
    for name in names if names is not None else list(masks):
        numel = params[name].numel()
        pruned = 0 if name not in masks else numel - int(masks[name].sum())
        out[name] = {"numel": numel, "pruned": pruned, "sparsity": round(pruned / numel, 6) if numel else 0.0}
    return out


def global_sparsity(model: nn.Module, names: list[str] | None = None) -> float:
    """Pruned fraction over ``names`` (default: all masked parameters); 0.0 for a dense model."""
    report = layer_sparsity(model, names)
    total = sum(r["numel"] for r in report.values())
    return 0.0 if total == 0 else sum(r["pruned"] for r in report.values()) / total


def zero_fraction(tensors: dict[str, torch.Tensor]) -> float:
    """Fraction of exact zeros (a check independent of the masks)."""
    total = sum(t.numel() for t in tensors.values())
    return 0.0 if total == 0 else sum(int((t == 0).sum()) for t in tensors.values()) / total
