"""Curvature of a classifier's training loss: gradients, Fisher/GGN and Hessian diagonals, Hessian-vector
products and inverse-Hessian-vector products, each restricted to a parameter mask when one is given.

These operators serve the second-order unlearning methods: Fisher forgetting (diagonal Fisher), influence
unlearning (WoodFisher, LiSSA or CG inverse), Warnecke et al.'s closed-form feature/label update θ − H⁻¹G,
and sharpness-aware parameter selection (SAPS; the Hessian diagonal at the trained weights).

Conventions
-----------
* A parameter *vector* is a dict ``{name: tensor}`` keyed like ``model.named_parameters()`` (trainable
  parameters only, i.e. ``requires_grad``). Every function returns one entry per trainable parameter.
* *Data* is a :class:`~unlearnkit.data.Source` or an ``(x, y)`` pair of tensors. Sources are read in index
  order (``source.indices``), without shuffling and without augmentation: curvature is that of the loss on
  the stored samples. ``batch_size`` only bounds memory; results do not depend on it (up to rounding).
* The loss is the **mean** over the data of a per-sample loss, by default cross-entropy (for a sequence model
  the mean over the sequence's positions, :func:`unlearnkit.training.sample_losses`); ``loss`` may be any
  callable ``(logits, y) -> per-sample losses``. Everything is computed on the model's device and in its
  dtype (data are cast), with the model in eval mode (BatchNorm uses its running statistics, so per-sample
  quantities are well defined); the model's previous mode is restored afterwards.
* ``mask`` (``{name: bool tensor}``, True = selected; unnamed parameters are not selected) restricts every
  operator to the selected coordinates: vectors are zero outside the mask, operators are P·H·P restricted
  to the subspace, and inverses are taken inside the subspace. Parameters with no selected entry are not
  differentiated at all, so a last-layer mask makes per-sample work correspondingly cheaper.
* Cost is counted with :func:`unlearnkit.training.count_passes`: a sample's gradient is one forward and one
  backward pass; a Hessian-vector product (HVP) on a sample is one forward and two backward passes (it is
  computed as a double backward); see each function for its count.

Everything is built on ``torch.func`` (``functional_call``, ``grad``, ``vjp``, ``vmap``).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn as nn
from torch.func import functional_call, grad, vjp, vmap

from .data.loader import Source
from .errors import UnlearnKitError
from .training import count_passes, sample_losses

Vector = dict[str, torch.Tensor]
Mask = dict[str, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, y) -> per-sample losses
Data = Source | tuple[torch.Tensor, torch.Tensor]

DEFAULT_BATCH = 128
# Per-sample work holds (chunk x outputs x selected parameters) numbers at once; this bounds it (~256 MB
# in float64, 128 MB in float32).
PER_SAMPLE_BUDGET = 1 << 25
# Probes x samples per vmapped HVP call: 256 was fastest for the small CNN on a CPU (fewer is call overhead,
# more is cache traffic).
PROBE_SAMPLES = 256


# -- vectors -----------------------------------------------------------------------------------------
def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters curvature is taken over: ``named_parameters()`` that require gradients."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def flatten(vector: Vector, names: list[str] | None = None) -> torch.Tensor:
    """Concatenate the entries of ``vector`` (in ``names`` order, default its own) into one 1-D tensor."""
    names = list(vector) if names is None else names
    if not names:
        return torch.empty(0)
    return torch.cat([vector[n].reshape(-1) for n in names])


def unflatten(flat: torch.Tensor, like: Vector | nn.Module) -> Vector:
    """Split a 1-D tensor into a vector shaped like ``like`` (a vector or a model's trainable parameters)."""
    shapes = {n: p.shape for n, p in (trainable_parameters(like) if isinstance(like, nn.Module) else like).items()}
    total = sum(math.prod(s) for s in shapes.values())
    if flat.dim() != 1 or flat.numel() != total:
        raise UnlearnKitError(f"cannot unflatten {tuple(flat.shape)} into {total} parameter entries")
    out, offset = {}, 0
    for name, shape in shapes.items():
        n = math.prod(shape)
        out[name] = flat[offset : offset + n].view(shape)
        offset += n
    return out


def dot(a: Vector, b: Vector) -> torch.Tensor:
    """Σ over shared names of ⟨a[name], b[name]⟩ (a 0-d tensor)."""
    terms = [(a[n] * b[n]).sum() for n in a if n in b]
    return torch.stack(terms).sum() if terms else torch.tensor(0.0)


def apply_mask(vector: Vector, mask: Mask | None) -> Vector:
    """``vector`` with every entry outside ``mask`` set to zero (names missing from ``mask`` become zero)."""
    if mask is None:
        return dict(vector)
    out = {}
    for name, value in vector.items():
        m = mask.get(name)
        out[name] = torch.zeros_like(value) if m is None else value * m.to(device=value.device, dtype=torch.bool)
    return out


# -- the subspace an operator acts on ----------------------------------------------------------------
class _Space:
    """The model viewed as a function of its selected parameters (those with any masked entry)."""

    def __init__(self, model: nn.Module, mask: Mask | None) -> None:
        named = trainable_parameters(model)
        if not named:
            raise UnlearnKitError(f"{type(model).__name__} has no trainable parameters")
        first = next(iter(named.values()))
        self.model = model
        self.device, self.dtype = first.device, first.dtype
        self.names = list(named)
        self.shapes = {n: p.shape for n, p in named.items()}
        self.masks: dict[str, torch.Tensor | None] = {}
        if mask is None:
            self.active = list(self.names)
            self.masks = {n: None for n in self.names}
        else:
            unknown = sorted(set(mask) - set(named))
            if unknown:
                raise UnlearnKitError(f"mask names {unknown[:3]}, which are not trainable parameters of the model")
            self.active = []
            for name in self.names:
                m = mask.get(name)
                if m is None:
                    continue
                if tuple(m.shape) != tuple(self.shapes[name]):
                    raise UnlearnKitError(
                        f"mask for {name} has shape {tuple(m.shape)}, the parameter {tuple(self.shapes[name])}"
                    )
                m = m.to(device=self.device, dtype=torch.bool)
                if bool(m.any()):
                    self.active.append(name)
                    self.masks[name] = None if bool(m.all()) else m
            if not self.active:
                raise UnlearnKitError("the mask selects no parameter entry; select at least one")
        self.params = {n: named[n].detach() for n in self.active}
        self.inactive = {n: named[n].detach() for n in self.names if n not in self.params}
        self.size = sum(math.prod(self.shapes[n]) for n in self.active)

    # functional model
    def logits(self, params: Vector, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, {**self.inactive, **params}, (x,))

    # vectors over the active parameters
    def restrict(self, vector: Vector) -> Vector:
        """Validate a caller's full vector and return its masked active part (missing names count as zero)."""
        unknown = sorted(set(vector) - set(self.names))
        if unknown:
            raise UnlearnKitError(f"vector names {unknown[:3]}, which are not trainable parameters of the model")
        out = {}
        for name in self.active:
            value = vector.get(name)
            if value is None:
                out[name] = torch.zeros(self.shapes[name], device=self.device, dtype=self.dtype)
                continue
            if tuple(value.shape) != tuple(self.shapes[name]):
                raise UnlearnKitError(
                    f"vector entry {name} has shape {tuple(value.shape)}, the parameter {tuple(self.shapes[name])}"
                )
            out[name] = self.project_one(name, value.detach().to(device=self.device, dtype=self.dtype))
        return out

    def project_one(self, name: str, value: torch.Tensor) -> torch.Tensor:
        m = self.masks[name]
        return value if m is None else value * m  # broadcasts over leading (batch/probe) dimensions

    def project(self, vector: Vector) -> Vector:
        return {n: self.project_one(n, vector[n]) for n in self.active}

    def expand(self, active: Vector, lead: tuple[int, ...] = ()) -> Vector:
        """A full vector: ``active`` (masked) for selected parameters, zeros for the others."""
        out = {}
        for name in self.names:
            if name in active:
                out[name] = self.project_one(name, active[name]).detach()
            else:
                out[name] = torch.zeros(lead + tuple(self.shapes[name]), device=self.device, dtype=self.dtype)
        return out

    def zeros(self, lead: tuple[int, ...] = ()) -> Vector:
        return {n: torch.zeros(lead + tuple(self.shapes[n]), device=self.device, dtype=self.dtype) for n in self.active}

    def flat(self, active: Vector) -> torch.Tensor:
        return torch.cat([active[n].reshape(-1) for n in self.active])

    def unflat(self, flat: torch.Tensor) -> Vector:
        out, offset = {}, 0
        for name in self.active:
            n = math.prod(self.shapes[name])
            out[name] = flat[offset : offset + n].view(self.shapes[name])
            offset += n
        return out

    def flat_mask(self) -> torch.Tensor:
        parts = [torch.ones(math.prod(self.shapes[n]), dtype=torch.bool, device=self.device) if self.masks[n] is None
                 else self.masks[n].reshape(-1) for n in self.active]
        return torch.cat(parts)

    def rademacher(self, lead: tuple[int, ...], generator: torch.Generator) -> Vector:
        """±1 entries (drawn on the CPU generator, so results do not depend on the device), masked."""
        out = {}
        for name in self.active:
            signs = torch.randint(0, 2, lead + tuple(self.shapes[name]), generator=generator)
            out[name] = self.project_one(name, (2 * signs - 1).to(device=self.device, dtype=self.dtype))
        return out


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _loss_fn(loss: LossFn | None) -> LossFn:
    return sample_losses if loss is None else loss


def _as_source(data: Data) -> Source:
    if isinstance(data, Source):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise UnlearnKitError(f"data has {x.shape[0]} inputs but {y.shape[0]} labels")
        return Source(x, y, shuffle=False, name="data")
    raise UnlearnKitError("data must be a unlearnkit.data.Source or an (x, y) pair of tensors")


def _subsample(source: Source, max_samples: int | None, generator: torch.Generator) -> Source:
    """The first ``max_samples`` of a seeded permutation of the source's samples (all when None or larger)."""
    if max_samples is None or max_samples >= len(source):
        return source
    if max_samples < 1:
        raise UnlearnKitError(f"max_samples must be >= 1, got {max_samples}")
    chosen = source.indices[torch.randperm(len(source), generator=generator)[:max_samples]]
    return Source(source.x, source.y, chosen, batch_size=source.batch_size, shuffle=False, name=source.name)


def _check_nonempty(source: Source) -> int:
    n = len(source)
    if n == 0:
        raise UnlearnKitError(f"{source.name} holds no samples; curvature needs at least one")
    return n


def _batches(source: Source, space: _Space, batch_size: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` chunks of the source in index order, on the model's device, inputs in the model's dtype."""
    order = source.indices
    size = int(batch_size or DEFAULT_BATCH)
    if size < 1:
        raise UnlearnKitError(f"batch_size must be >= 1, got {size}")
    for start in range(0, order.numel(), size):
        idx = order[start : start + size].to(source.x.device)
        x, y = source.x[idx], source.y[idx]
        x = x.to(device=space.device, dtype=space.dtype if x.is_floating_point() else x.dtype)
        yield x, y.to(space.device)


def _generator(generator: torch.Generator | None) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(0)


def _per_sample_chunk(space: _Space, outputs: int, requested: int | None) -> int:
    if requested is not None:
        return max(1, int(requested))
    return max(1, min(DEFAULT_BATCH, PER_SAMPLE_BUDGET // max(1, outputs * space.size)))


# -- gradients ---------------------------------------------------------------------------------------
def gradient(model: nn.Module, data: Data, *, loss: LossFn | None = None, mask: Mask | None = None,
             batch_size: int | None = None) -> Vector:
    """∇ of the mean loss over ``data``. Cost: N forward and N backward passes."""
    space, source, loss_fn = _Space(model, mask), _as_source(data), _loss_fn(loss)
    n = _check_nonempty(source)
    total = space.zeros()
    with _evaluating(model):
        for x, y in _batches(source, space, batch_size):
            g = grad(lambda p: loss_fn(space.logits(p, x), y).sum() / n)(space.params)
            for name in space.active:
                total[name] += g[name]
            count_passes(forward=x.shape[0], backward=x.shape[0])
    return space.expand(total)


def _single_loss(space: _Space, loss_fn: LossFn):  # the loss of one sample, for vmap over samples
    def per_sample(params: Vector, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return loss_fn(space.logits(params, xi.unsqueeze(0)), yi.unsqueeze(0)).sum()
    return per_sample


def _per_sample_grads(space: _Space, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> Vector:
    """``{active name: (B, *shape)}`` per-sample gradients (unmasked), by vmap(grad)."""
    return vmap(grad(_single_loss(space, loss_fn)), in_dims=(None, 0, 0))(space.params, x, y)


def per_sample_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, loss: LossFn | None = None,
                         mask: Mask | None = None) -> Vector:
    """``{name: Tensor(B, *shape)}``: the gradient of each sample's loss (``torch.func.vmap(grad)``).

    Cost: B forward and B backward passes. Memory: B copies of the selected parameters.
    """
    if x.shape[0] != y.shape[0]:
        raise UnlearnKitError(f"{x.shape[0]} inputs but {y.shape[0]} labels")
    space, loss_fn = _Space(model, mask), _loss_fn(loss)
    with _evaluating(model):
        x = x.to(device=space.device, dtype=space.dtype if x.is_floating_point() else x.dtype)
        grads = _per_sample_grads(space, x, y.to(space.device), loss_fn)
    count_passes(forward=x.shape[0], backward=x.shape[0])
    return space.expand(grads, lead=(x.shape[0],))


# -- Fisher / generalised Gauss-Newton diagonal ------------------------------------------------------
FISHER_KINDS = ("empirical", "sampled", "exact")


def fisher_diagonal(model: nn.Module, data: Data, *, kind: str = "empirical", max_samples: int | None = None,
                    mc_samples: int = 1, generator: torch.Generator | None = None, mask: Mask | None = None,
                    loss: LossFn | None = None, chunk_size: int | None = None) -> Vector:
    """Diagonal of a Fisher information matrix of the mean loss, (1/N) Σ_i E[g_i ⊙ g_i].

    * ``empirical``: g_i is the gradient of sample i's loss at its true label (``loss`` may replace
      cross-entropy here). This is the matrix WoodFisher inverts; it is *not* the Fisher in general.
    * ``sampled``: g_i is the cross-entropy gradient at ``mc_samples`` labels drawn from the model's own
      softmax (weighted 1/mc_samples): an unbiased Monte-Carlo estimate of the true Fisher.
    * ``exact``: the expectation over all K classes, Σ_k p_k g_{i,k}², which for softmax cross-entropy is
      the diagonal of the generalised Gauss–Newton matrix (1/N) Σ_i J_iᵀ (diag p_i − p_i p_iᵀ) J_i.

    The Hessian is H = GGN + Σ_i Σ_k (∂ℓ_i/∂f_k) ∇²f_k(x_i). When the network is piecewise linear in each
    single parameter (linear/conv layers, ReLU, max/avg pooling, residual sums, eval-mode BatchNorm: every
    registered model), ∂²f_k/∂θ_j² = 0, so **diag(H) = diag(GGN) exactly**: ``exact`` is then the exact
    Hessian diagonal and ``sampled`` an unbiased, low-variance estimate of it (tested; verified on the
    trained small CNN in ``benchmarks/results/curvature``). Off the diagonal, and for smooth activations
    (tanh, GELU, SiLU), H and the GGN differ.

    ``max_samples`` uses a seeded random subset of the data (``generator``; seed 0 when None).
    Cost: N forward passes and N (empirical), N·mc_samples (sampled) or N·K (exact) backward passes; one
    forward per sample is shared by its backward passes (``torch.func.vjp`` under ``vmap``).
    """
    if kind not in FISHER_KINDS:
        raise UnlearnKitError(f"unknown Fisher kind {kind!r}; use one of {', '.join(FISHER_KINDS)}")
    if loss is not None and kind != "empirical":
        raise UnlearnKitError(
            f"a custom loss defines only the empirical Fisher; the {kind} Fisher is for softmax cross-entropy"
        )
    if mc_samples < 1:
        raise UnlearnKitError(f"mc_samples must be >= 1, got {mc_samples}")
    generator = _generator(generator)
    space = _Space(model, mask)
    source = _subsample(_as_source(data), max_samples, generator)
    n = _check_nonempty(source)
    total = space.zeros()
    with _evaluating(model):
        if kind == "empirical":
            loss_fn = _loss_fn(loss)
            for x, y in _batches(source, space, _per_sample_chunk(space, 1, chunk_size)):
                grads = _per_sample_grads(space, x, y, loss_fn)
                for name in space.active:
                    total[name] += grads[name].square().sum(0)
                count_passes(forward=x.shape[0], backward=x.shape[0])
        else:
            first_x, _ = next(_batches(source, space, 1))
            shape = _output_shape(space, first_x)  # (K,) for a classifier, (T, V) for a sequence model
            outputs = mc_samples if kind == "sampled" else math.prod(shape)
            for x, _ in _batches(source, space, _per_sample_chunk(space, outputs, chunk_size)):
                if kind == "sampled":  # one uniform per draw and output position
                    uniforms = torch.rand(x.shape[0], mc_samples, *shape[:-1], generator=generator, dtype=torch.float64)
                    extra = uniforms.to(device=space.device, dtype=space.dtype)
                else:
                    extra = torch.zeros(x.shape[0], 1, device=space.device, dtype=space.dtype)
                squares = _output_gradient_squares(space, x, extra, kind)
                for name in space.active:
                    total[name] += squares[name]
                count_passes(forward=x.shape[0], backward=x.shape[0] * outputs)
    return space.expand({name: value / n for name, value in total.items()})


def _output_shape(space: _Space, x: torch.Tensor) -> tuple[int, ...]:
    """One sample's logits' shape, from a shape-only (meta-device) forward; one counted real forward if that fails."""
    meta = {
        n: torch.empty_like(t, device="meta")
        for n, t in [*space.model.named_parameters(), *space.model.named_buffers()]
    }
    try:
        return tuple(functional_call(space.model, meta, (torch.empty_like(x[:1], device="meta"),)).shape[1:])
    except (RuntimeError, NotImplementedError, TypeError, ValueError):  # a layer without meta support
        with torch.no_grad():
            outputs = space.logits(space.params, x[:1])
        count_passes(forward=1)
        return tuple(outputs.shape[1:])


def _output_gradient_squares(space: _Space, x: torch.Tensor, extra: torch.Tensor, kind: str) -> Vector:
    """Σ_i Σ_m (J_iᵀ c_{i,m})² for the output cotangents c of the sampled or the exact Fisher.

    A sequence model's sample loss is the mean of its P positions' cross-entropies, whose GGN is
    (1/P) Σ_t J_tᵀ (diag p_t − p_t p_tᵀ) J_t: the exact rows are one per (position, class), zero at the other
    positions, and a sampled draw takes an independent label at every position (the cross terms have mean
    zero); both carry the factor 1/√P. A classifier is the case P = 1.
    """

    def cotangents(logits: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits, dim=-1)  # (K,) or (..., V)
        classes = torch.arange(probs.shape[-1], device=probs.device)
        positions = math.prod(probs.shape[:-1])
        if kind == "exact":
            # Σ_k p_k (p − e_k)(p − e_k)ᵀ = diag(p) − ppᵀ, so these K rows square-sum to the GGN diagonal.
            eye = (classes[:, None] == classes[None, :]).to(probs.dtype)
            flat = probs.reshape(positions, -1)
            rows = flat.sqrt()[:, :, None] * (flat[:, None, :] - eye)  # (P, K, K): row (t, k) at position t
            at = torch.eye(positions, dtype=probs.dtype, device=probs.device)[:, None, :, None]
            return (rows[:, :, None, :] * at).reshape(positions * probs.shape[-1], *probs.shape) / math.sqrt(positions)
        # Inverse-CDF draws from the softmax; the clamp guards against rounding at the top of the CDF.
        labels = (torch.cumsum(probs, -1)[None] < draws[..., None]).sum(-1).clamp(max=probs.shape[-1] - 1)
        onehot = (labels[..., None] == classes).to(probs.dtype)
        return (probs[None] - onehot) / math.sqrt(draws.shape[0] * positions)

    def one(xi: torch.Tensor, draws: torch.Tensor) -> Vector:
        logits, pullback = vjp(lambda p: space.logits(p, xi.unsqueeze(0)).squeeze(0), space.params)
        (grads,) = vmap(pullback)(cotangents(logits, draws))
        return {name: g.square().sum(0) for name, g in grads.items()}

    return {name: v.sum(0) for name, v in vmap(one)(x, extra).items()}


# -- Hessian-vector products -------------------------------------------------------------------------
def _hvp_on(space: _Space, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, weight: float):
    """v ↦ weight · Σ_{i in batch} ∇²ℓ_i v over the active parameters.

    Reverse-over-reverse: one forward and backward build the gradient's graph, then each product is one more
    backward through it (``vjp`` of ``grad``; H is symmetric, so the vjp is Hv). Under ``vmap`` many probes
    share the forward and first backward. (Forward-over-reverse, ``jvp`` of ``grad``, costs the same on
    the full-size CNN but is ~10x slower on tiny conv nets, whose convolution-backward jvp is decomposed.)
    """
    _, pullback = vjp(grad(lambda p: loss_fn(space.logits(p, x), y).sum() * weight), space.params)

    def product(v: Vector) -> Vector:
        return pullback(v)[0]

    return product


def _hvp_full(space: _Space, source: Source, v: Vector, loss_fn: LossFn, batch_size: int | None,
              probes: int | None = None) -> Vector:
    """P·H·P v for the mean loss over ``source``; with ``probes`` v has a leading probe dimension (vmap)."""
    n = len(source)
    total = space.zeros(() if probes is None else (probes,))
    for x, y in _batches(source, space, batch_size):
        product = _hvp_on(space, x, y, loss_fn, 1.0 / n)
        hv = product(v) if probes is None else vmap(product)(v)
        for name in space.active:
            total[name] += hv[name]
        count_passes(forward=x.shape[0] * (probes or 1), backward=2 * x.shape[0] * (probes or 1))
    return space.project(total)


def hvp(model: nn.Module, data: Data, v: Vector, *, loss: LossFn | None = None, mask: Mask | None = None,
        batch_size: int | None = None) -> Vector:
    """Exact Hessian-vector product H v of the mean loss (P·H·P v under a mask).

    Reverse-over-reverse (``vjp`` of ``grad``) on batches of the data, summed with weights 1/N.
    Cost: N forward and 2N backward passes.
    """
    space, source, loss_fn = _Space(model, mask), _as_source(data), _loss_fn(loss)
    _check_nonempty(source)
    with _evaluating(model):
        return space.expand(_hvp_full(space, source, space.restrict(v), loss_fn, batch_size))


def hutchinson_diagonal(model: nn.Module, data: Data, *, probes: int, generator: torch.Generator | None = None,
                        batch_probes: int = 8, max_samples: int | None = None, loss: LossFn | None = None,
                        mask: Mask | None = None, batch_size: int | None = None) -> Vector:
    """Hutchinson's estimate of the Hessian diagonal: the mean over probes of z ⊙ H z, z Rademacher (±1).

    Unbiased, E[z ⊙ Hz] = diag(H); the error of entry j has variance Σ_{k≠j} H_jk² / probes, so it needs
    many probes wherever a row's off-diagonal mass dwarfs its diagonal entry — which is the norm for trained
    networks: on the trained small CNN (Fashion-MNIST) 1,000 probes still rank the 0.42 M entries poorly (see
    ``docs/curvature.md``). For networks that are piecewise linear in each single parameter (ReLU, max/avg
    pooling, linear/conv layers, eval-mode BatchNorm: every registered model) diag(H) equals the
    Gauss–Newton diagonal *exactly*, so ``fisher_diagonal(kind="exact")`` computes it without probe noise
    and ``kind="sampled"`` estimates it far more cheaply; Hutchinson is for the other networks.

    Each probe is applied to the mean Hessian of all (or ``max_samples`` seeded random) samples;
    ``batch_probes`` probes run at once under ``vmap`` and share each batch's forward and first backward.
    ``batch_size`` (default 256 / batch_probes) bounds memory: probes × batch activations are alive at once.
    Cost: probes · N HVP samples, i.e. probes·N forward and 2·probes·N backward passes.
    """
    if probes < 1 or batch_probes < 1:
        raise UnlearnKitError("probes and batch_probes must be >= 1")
    generator = _generator(generator)
    space, loss_fn = _Space(model, mask), _loss_fn(loss)
    source = _subsample(_as_source(data), max_samples, generator)
    _check_nonempty(source)
    total = space.zeros()
    with _evaluating(model):
        done = 0
        while done < probes:
            count = min(batch_probes, probes - done)
            z = space.rademacher((count,), generator)
            hz = _hvp_full(space, source, z, loss_fn, batch_size or max(1, PROBE_SAMPLES // count), probes=count)
            for name in space.active:
                total[name] += (z[name] * hz[name]).sum(0)
            done += count
    return space.expand({name: value / probes for name, value in total.items()})


def exact_hessian_diagonal(model: nn.Module, data: Data, *, loss: LossFn | None = None, mask: Mask | None = None,
                           batch_size: int | None = None, chunk: int = 64, max_entries: int = 20_000) -> Vector:
    """diag(H) exactly, one HVP with a unit vector per selected entry (for tiny models and tests).

    Cost: (selected entries) · N HVP samples. Refuses more than ``max_entries`` selected entries.
    """
    space, source, loss_fn = _Space(model, mask), _as_source(data), _loss_fn(loss)
    _check_nonempty(source)
    selected = torch.nonzero(space.flat_mask()).squeeze(1)
    if selected.numel() > max_entries:
        raise UnlearnKitError(
            f"the exact Hessian diagonal of {selected.numel()} entries is {selected.numel()} HVPs over the "
            f"data; use hutchinson_diagonal, a mask, or raise max_entries"
        )
    diagonal = torch.zeros(space.size, device=space.device, dtype=space.dtype)
    with _evaluating(model):
        for start in range(0, selected.numel(), chunk):
            rows = selected[start : start + chunk]
            positions = torch.arange(rows.numel(), device=space.device)
            basis = torch.zeros(rows.numel(), space.size, device=space.device, dtype=space.dtype)
            basis[positions, rows] = 1
            stacked = {
                n: t.reshape((rows.numel(),) + tuple(space.shapes[n])) for n, t in _split_rows(space, basis).items()
            }
            products = _hvp_full(space, source, stacked, loss_fn, batch_size, probes=rows.numel())
            flat = torch.cat([products[n].reshape(rows.numel(), -1) for n in space.active], dim=1)
            diagonal[rows] = flat[positions, rows]
    return space.expand(space.unflat(diagonal))


def _split_rows(space: _Space, rows: torch.Tensor) -> Vector:
    out, offset = {}, 0
    for name in space.active:
        n = math.prod(space.shapes[name])
        out[name] = rows[:, offset : offset + n]
        offset += n
    return out


def top_eigenvalue(model: nn.Module, data: Data, *, iterations: int = 20, generator: torch.Generator | None = None,
                   loss: LossFn | None = None, mask: Mask | None = None, batch_size: int | None = None,
                   tol: float = 1e-4) -> float:
    """The eigenvalue of largest magnitude of (P·H·P) by power iteration (e.g. to choose LiSSA's ``scale``).

    Stops when the Rayleigh quotient changes by less than ``tol`` (relative). Cost: one full-data HVP per
    iteration (N forward, 2N backward passes).
    """
    generator = _generator(generator)
    space, source, loss_fn = _Space(model, mask), _as_source(data), _loss_fn(loss)
    _check_nonempty(source)
    v = space.project(
        {
            n: torch.randn(space.shapes[n], generator=generator, dtype=torch.float64).to(space.device, space.dtype)
            for n in space.active
        }
    )
    estimate = 0.0
    with _evaluating(model):
        for _ in range(max(1, iterations)):
            norm = space.flat(v).norm()
            if float(norm) == 0.0:
                return 0.0
            v = {n: t / norm for n, t in v.items()}
            hv = _hvp_full(space, source, v, loss_fn, batch_size)
            previous, estimate = estimate, float(space.flat(v) @ space.flat(hv))
            v = hv
            if previous != 0.0 and abs(estimate - previous) <= tol * abs(previous):
                break
    return estimate


# -- inverse-Hessian-vector products -----------------------------------------------------------------
def lissa(model: nn.Module, data: Data, v: Vector, *, damping: float, scale: float, depth: int, repeats: int = 1,
          batch_size: int = 128, generator: torch.Generator | None = None, loss: LossFn | None = None,
          mask: Mask | None = None) -> Vector:
    """(H + λI)⁻¹ v by the LiSSA recursion (Agarwal et al. 2017, as used by Koh & Liang 2017).

    h₀ = v, h_j = v + (I − (H_j + λI)/s) h_{j−1}, with H_j the Hessian of a fresh mini-batch of
    ``batch_size`` samples (a seeded shuffled pass over the data, reshuffled when exhausted; the whole data
    every step when ``batch_size`` ≥ N, which makes the recursion deterministic). The estimate is h_depth / s,
    averaged over ``repeats`` independent recursions.

    Convergence: the fixed point is s·(H + λI)⁻¹ v when H + λI is positive definite, and the iteration
    contracts when every eigenvalue μ of each H_j + λI lies in (0, 2s): choose ``scale`` s above the top
    eigenvalue of H + λI (:func:`top_eigenvalue`) and λ above −(smallest eigenvalue of H). With the full
    batch the error after ``depth`` steps is at most ‖v‖ (1 − μ_min/s)^depth / μ_min with μ_min the smallest
    eigenvalue of H + λI, so depth ≈ (s/μ_min)·ln(1/ε) steps reach relative accuracy ε; mini-batches add
    noise of order the batch Hessian's spread, which averages down over ``repeats``. Raises if it diverges.

    Cost: repeats · depth · batch_size HVP samples.
    """
    if not scale > 0 or damping < 0 or depth < 1 or repeats < 1 or batch_size < 1:
        raise UnlearnKitError("lissa needs scale > 0, damping >= 0, depth >= 1, repeats >= 1 and batch_size >= 1")
    generator = _generator(generator)
    space, source, loss_fn = _Space(model, mask), _as_source(data), _loss_fn(loss)
    n = _check_nonempty(source)
    target = space.restrict(v)
    limit = 1e6 * max(float(space.flat(target).norm()), 1e-30) * scale / max(damping, 1e-12)
    estimate = space.zeros()
    with _evaluating(model):
        for _ in range(repeats):
            h = dict(target)
            order, position = source.indices[torch.randperm(n, generator=generator)], 0
            for _ in range(depth):
                if batch_size >= n:
                    batch = source
                else:
                    if position + batch_size > n:
                        order, position = source.indices[torch.randperm(n, generator=generator)], 0
                    batch = Source(source.x, source.y, order[position : position + batch_size], shuffle=False)
                    position += batch_size
                hh = _hvp_full(space, batch, h, loss_fn, batch_size)
                h = {name: target[name] + h[name] - (hh[name] + damping * h[name]) / scale for name in space.active}
                norm = float(space.flat(h).norm())
                if not math.isfinite(norm) or norm > limit:
                    raise UnlearnKitError(
                        f"LiSSA diverged (|h| = {norm:.3g}); raise scale above the top eigenvalue of H + "
                        f"damping·I (see curvature.top_eigenvalue) or raise damping"
                    )
            for name in space.active:
                estimate[name] += h[name] / (scale * repeats)
    return space.expand(estimate)


@dataclass
class CGInfo:
    """How conjugate gradients ended: iterations run, final relative residual ‖b − Ax‖/‖b‖, and why."""

    iterations: int
    residual: float
    converged: bool
    reason: str


def conjugate_gradient(model: nn.Module, data: Data, v: Vector, *, damping: float, max_iter: int = 100,
                       tol: float = 1e-6, loss: LossFn | None = None, mask: Mask | None = None,
                       batch_size: int | None = None) -> tuple[Vector, CGInfo]:
    """(H + λI)⁻¹ v by conjugate gradients on the full-data HVP (in the masked subspace).

    Needs H + λI positive definite on the subspace; CG stops with ``reason="negative curvature"`` (and
    returns its current iterate) if it meets a direction p with pᵀ(H + λI)p ≤ 0. Converges to relative
    residual ``tol`` in at most (selected entries) iterations in exact arithmetic, typically in
    O(√κ · ln(1/tol)) with κ the condition number of H + λI. Cost: one full-data HVP (N forward and
    2N backward passes) per iteration.
    """
    if damping < 0 or max_iter < 0 or not tol > 0:
        raise UnlearnKitError("conjugate_gradient needs damping >= 0, max_iter >= 0 and tol > 0")
    space, source, loss_fn = _Space(model, mask), _as_source(data), _loss_fn(loss)
    _check_nonempty(source)
    b = space.flat(space.restrict(v))
    b_norm = float(b.norm())
    x = torch.zeros_like(b)
    if b_norm == 0.0:
        return space.expand(space.unflat(x)), CGInfo(0, 0.0, True, "zero right-hand side")

    def apply(p: torch.Tensor) -> torch.Tensor:
        return space.flat(_hvp_full(space, source, space.unflat(p), loss_fn, batch_size)) + damping * p

    r, p = b.clone(), b.clone()
    rr = float(r @ r)
    info = CGInfo(0, 1.0, False, "max_iter reached")
    with _evaluating(model):
        for iteration in range(1, max_iter + 1):
            ap = apply(p)
            curvature = float(p @ ap)
            if curvature <= 0.0:
                info = CGInfo(iteration - 1, math.sqrt(rr) / b_norm, False, "negative curvature")
                break
            alpha = rr / curvature
            x += alpha * p
            r -= alpha * ap
            rr_new = float(r @ r)
            info = CGInfo(iteration, math.sqrt(rr_new) / b_norm, False, "max_iter reached")
            if info.residual <= tol:
                info.converged, info.reason = True, "converged"
                break
            p = r + (rr_new / rr) * p
            rr = rr_new
    return space.expand(space.unflat(x)), info


def woodfisher_inverse(model: nn.Module, data: Data, v: Vector, *, damping: float, n_samples: int | None = None,
                       generator: torch.Generator | None = None, loss: LossFn | None = None, mask: Mask | None = None,
                       chunk_size: int | None = None) -> Vector:
    """(λI + GᵀG/N)⁻¹ v exactly, G the N×d matrix of per-sample gradients (the empirical Fisher).

    By the Woodbury identity, (λI + GᵀG/N)⁻¹ v = (v − Gᵀ (λN·I + GGᵀ)⁻¹ G v) / λ: one N×N Cholesky solve.
    G is computed chunk by chunk (per-sample gradients under ``vmap``) into one N×d buffer, so memory stays
    about N·d numbers plus N². ``n_samples`` uses a seeded random subset (all samples when None); this is
    the WoodFisher estimate of Singh & Alistarh (2020) computed in one shot rather than by N rank-one
    updates (the same matrix). Under a mask, G's columns outside it are zero and the inverse is taken in the
    subspace. Cost: N forward and N backward passes.
    """
    if not damping > 0:
        raise UnlearnKitError("woodfisher_inverse needs damping > 0 (λI makes the matrix invertible)")
    generator = _generator(generator)
    space, loss_fn = _Space(model, mask), _loss_fn(loss)
    source = _subsample(_as_source(data), n_samples, generator)
    n = _check_nonempty(source)
    target = space.flat(space.restrict(v))
    keep = space.flat_mask()
    rows = torch.empty(n, space.size, device=space.device, dtype=space.dtype)
    with _evaluating(model):
        start = 0
        for x, y in _batches(source, space, _per_sample_chunk(space, 1, chunk_size)):
            grads = _per_sample_grads(space, x, y, loss_fn)
            rows[start : start + x.shape[0]] = torch.cat(
                [grads[name].reshape(x.shape[0], -1) for name in space.active], dim=1
            )
            start += x.shape[0]
            count_passes(forward=x.shape[0], backward=x.shape[0])
    rows *= keep
    gram = rows @ rows.T
    gram.diagonal().add_(damping * n)
    factor, info = torch.linalg.cholesky_ex(gram)
    if int(info) != 0:
        raise UnlearnKitError("the WoodFisher system is not positive definite in this precision; raise damping")
    coefficients = torch.cholesky_solve((rows @ target).unsqueeze(1), factor).squeeze(1)
    solution = (target - rows.T @ coefficients) / damping
    return space.expand(space.unflat(solution * keep))


def diagonal_inverse(diag: Vector, v: Vector, *, damping: float, mask: Mask | None = None) -> Vector:
    """v / (diag + λ) entry-wise, zero outside ``mask``: the inverse of a diagonal curvature estimate.

    Refuses a selected entry with diag + λ ≤ 0 (a Hessian diagonal may be negative: use a Fisher/GGN
    diagonal, its absolute value, or a larger damping).
    """
    missing = sorted(set(v) - set(diag))
    if missing:
        raise UnlearnKitError(f"the diagonal lacks entries for {missing[:3]}")
    out = {}
    for name, value in v.items():
        d = diag[name].to(device=value.device, dtype=value.dtype)
        if d.shape != value.shape:
            raise UnlearnKitError(f"diagonal entry {name} has shape {tuple(d.shape)}, the vector {tuple(value.shape)}")
        if mask is None:
            selected = torch.ones_like(value, dtype=torch.bool)
        elif name in mask:
            selected = mask[name].to(device=value.device, dtype=torch.bool)
        else:
            selected = torch.zeros_like(value, dtype=torch.bool)
        denominator = torch.where(selected, d + damping, torch.ones_like(d))
        if bool((denominator <= 0).any()):
            raise UnlearnKitError(
                f"diag + damping is not positive for some selected entries of {name}; use a non-negative "
                f"(Fisher/GGN or absolute) diagonal or a larger damping"
            )
        out[name] = torch.where(selected, value / denominator, torch.zeros_like(value))
    return out


__all__ = [
    "Vector", "Mask", "LossFn", "Data", "FISHER_KINDS", "CGInfo",
    "trainable_parameters", "flatten", "unflatten", "dot", "apply_mask",
    "gradient", "per_sample_gradients", "fisher_diagonal", "hvp", "hutchinson_diagonal", "exact_hessian_diagonal",
    "top_eigenvalue", "lissa", "conjugate_gradient", "woodfisher_inverse", "diagonal_inverse",
]
