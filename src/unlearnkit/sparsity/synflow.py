"""SynFlow (Tanaka, Kunin, Yamins & Ganguli, NeurIPS 2020): data-free pruning at initialisation.

Linearise the network — every parameter replaced by its absolute value, BatchNorm in eval mode — feed it a
single all-ones input and let R be the sum of its outputs. R is a sum over input-output paths of the
products of the weights along them (the "synaptic flow"), and the score of a weight is
``|θ ⊙ ∂R/∂θ|``: the total flow through it. Pruning repeats scoring and pruning over ``iterations`` rounds
on an exponential schedule (round r keeps a fraction (1 - s)^(r/n) of the weights), so the scores adapt
to what was already removed; the paper shows this conserves flow across layers and avoids *layer
collapse* (a whole layer pruned away, which disconnects the network) up to the maximal compression.

Details of this implementation:

- Scoring runs on a private float64 copy of the model (the paper's own code has the double-precision
  switch; path products of deep nets leave float32's range), so the model's weights, signs, BatchNorm
  statistics and mode are never touched; only the final masks are attached to it.
- BatchNorm: eval mode with its running statistics set to mean 0 and variance 1 in the copy, i.e. the
  layer acts as its (absolute-valued) affine map. At initialisation — where SynFlow is meant to run —
  these *are* the running statistics, so this is exactly the paper's eval-mode network; on a trained
  model it keeps the linearised network positive, which subtracting |running mean| would not.
- The model's ``Normalize`` layer is set to the identity in the copy, so the all-ones input reaches the
  first convolution as ones, as in the paper (whose models take already-normalised input).
- Biases take part in R (absolute-valued, as in the paper) but are not pruned.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator

import torch
import torch.nn as nn

from ..masks import attach_prune_masks
from ..models import Normalize
from ..training import count_passes
from .magnitude import Mask, alive_masks, select_survivors


class SynFlowScorer:
    """Scores ``|θ ⊙ ∂R/∂θ|`` of the named weights on a linearised private copy of ``model``."""

    def __init__(self, model: nn.Module, names: list[str], input_shape: tuple[int, ...],
                 dtype: torch.dtype = torch.float64) -> None:
        self.names = list(names)
        self.net = copy.deepcopy(model).to(dtype=dtype)
        self.net.eval()
        with torch.no_grad():
            for param in self.net.parameters():
                param.abs_()
            for module in self.net.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                    module.running_mean.zero_()
                    module.running_var.fill_(1.0)
                elif isinstance(module, Normalize):
                    module.mean.zero_()
                    module.std.fill_(1.0)
        self.params = dict(self.net.named_parameters())
        self.magnitudes = {n: self.params[n].detach().clone() for n in self.names}
        device = next(self.net.parameters()).device
        self.ones = torch.ones((1, *input_shape), dtype=dtype, device=device)

    def __call__(self, alive: Mask) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            for n in self.names:
                self.params[n].copy_(self.magnitudes[n] * alive[n].to(self.magnitudes[n].device))
        flow = self.net(self.ones).sum()
        grads = torch.autograd.grad(flow, [self.params[n] for n in self.names])
        count_passes(forward=1, backward=1)
        return {n: (g * self.params[n]).detach().abs() for n, g in zip(self.names, grads)}


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """SynFlow is a hundred rounds of small sequential work (one sample, element-wise ops on the weights):
    too little to share between threads. On the busy 2-core reference CPU one scoring pass of the small CNN
    took 2.4 ms on one thread and 150 ms on two (spin-waiting), and 100 rounds 3.6 s against 23 s."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def synflow_scores(model: nn.Module, names: list[str], input_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """One round of SynFlow scores for the model as it is (pruned entries score 0)."""
    return SynFlowScorer(model, names, input_shape)(alive_masks(model, names))


def synflow_prune(model: nn.Module, sparsity: float, names: list[str], input_shape: tuple[int, ...], *,
                  iterations: int = 100, scope: str = "global") -> Mask:
    """Prune ``model`` in place to ``sparsity`` over ``names`` by iterative SynFlow; returns the masks."""
    alive = alive_masks(model, names)
    if sparsity > 0.0:
        scorer = SynFlowScorer(model, names, input_shape)
        with _one_cpu_thread(scorer.ones.device):
            for r in range(1, iterations + 1):
                final = r == iterations
                target = sparsity if final else 1.0 - (1.0 - sparsity) ** (r / iterations)
                alive = select_survivors(scorer(alive), alive, target, scope=scope, allow_sparser=not final)
    attach_prune_masks(model, alive)
    return alive


def input_shape_of(model_args: dict) -> tuple[int, int, int]:
    """The (channels, height, width) a registered model takes, from its recorded arguments."""
    return int(model_args["in_channels"]), int(model_args["image_size"]), int(model_args["image_size"])
