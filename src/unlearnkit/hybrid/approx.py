"""The approximate path: modify the affected shards' parameters directly, then amend them.

For every shard that holds newly deleted ids:

1. **Modification**: a registered unlearning method (:func:`unlearnkit.methods.unlearn`, default
   ``grad_ascent`` at its registry defaults, with its forget-accuracy guard set to that shard's original test
   accuracy) runs on the shard model with the shard's deleted ids as the forget set and the shard's
   remaining ids as the retain set.
2. **Amend** (the paper's cheap repair step): fine-tune, through :func:`unlearnkit.training.fit`, on the
   remaining samples of the slices that held the deleted ids, in rounds of ``amend_round_size`` freshly
   drawn samples, until the loss stops improving. The loss is measured in eval mode on a fixed seeded probe
   of those samples after every round; amend stops when it is back to the unmodified shard's loss on the
   probe (nothing left to repair) or has not improved by ``amend_min_delta`` (relative) for
   ``amend_patience`` rounds, or after ``amend_max_rounds``.

The shard's stage checkpoints are left as they are: they still contain the deleted ids, which is why
those ids are marked ``DELETED_APPROX`` and the next exact retrain of the shard starts before their slices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import Source
from ..requests import Request
from ..sisa.layout import ACTIVE, DELETED_APPROX, derived_seed
from ..sisa.model import SisaModel
from ..sisa.store import Version
from ..training import Phase, TrainConfig, fit, predict_logits
from .planner import ApproxSettings


@dataclass
class ApproxResult:
    states: list[dict[str, torch.Tensor]]
    status: np.ndarray
    shards: list[dict] = field(default_factory=list)  # what happened in each modified shard


def probe_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, device) -> float:
    logits = predict_logits(model, x[ids], device=device)
    return float(F.cross_entropy(logits, y[ids]))


def _per_class(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, classes: int, device):
    """Per-class mean loss and true-class confidence of ``model`` on ``ids`` (NaN for an absent class)."""
    logits = predict_logits(model, x[ids], device=device).float()
    labels = y[ids]
    loss = F.cross_entropy(logits, labels, reduction="none")
    conf = torch.softmax(logits, 1).gather(1, labels[:, None])[:, 0]
    count = torch.bincount(labels, minlength=classes).double()
    mean = lambda v: torch.bincount(labels, weights=v.double(), minlength=classes) / count.clamp(min=1)  # noqa: E731
    nan = torch.full((classes,), float("nan"), dtype=torch.float64)
    return torch.where(count > 0, mean(loss), nan), torch.where(count > 0, mean(conf), nan)


def forgetting_evidence(model: nn.Module, data, forget: np.ndarray, retain: np.ndarray, *, seed: int, device,
                        reference_size: int = 2048) -> dict:
    """What an approximate deletion can show: the shard model's mean loss and true-class confidence on the
    deleted samples, next to held-out test samples and the shard's retained training samples *of the same
    classes*, weighted like the deleted samples' classes. A model that never saw the deleted samples scores
    them like held-out samples (gap ~ 0) and worse than its own training samples; this is evidence, not proof."""
    classes = int(data.num_classes)
    forget_t = torch.from_numpy(np.asarray(forget)).long()
    weights = torch.bincount(data.y_train[forget_t], minlength=classes).double()
    weights = weights / weights.sum()
    present = weights > 0
    generator = torch.Generator().manual_seed(derived_seed("evidence", seed))
    retain_t = torch.from_numpy(np.asarray(retain)).long()
    retain_t = retain_t[torch.randperm(retain_t.numel(), generator=generator)[:reference_size]]
    test_t = torch.arange(data.y_test.numel())
    test_t = test_t[present[data.y_test]]
    test_t = test_t[torch.randperm(test_t.numel(), generator=generator)[:reference_size]]
    out: dict = {"deleted": int(forget_t.numel()), "held_out": int(test_t.numel()), "retained": int(retain_t.numel())}
    for name, ids in (("deleted", forget_t), ("held_out", test_t), ("retained", retain_t)):
        loss, conf = _per_class(model, data.x_train if name != "held_out" else data.x_test,
                                data.y_train if name != "held_out" else data.y_test, ids, classes, device)
        covered = present & ~torch.isnan(loss)
        w = weights[covered] / weights[covered].sum() if covered.any() else weights[covered]
        out[f"{name}_loss"] = round(float((loss[covered] * w).sum()), 5) if covered.any() else None
        out[f"{name}_confidence"] = round(float((conf[covered] * w).sum()), 5) if covered.any() else None
    if out["held_out_loss"] is not None:
        out["loss_gap_to_held_out"] = round(out["deleted_loss"] - out["held_out_loss"], 5)
        out["confidence_gap_to_held_out"] = round(out["deleted_confidence"] - out["held_out_confidence"], 5)
    if out["retained_loss"] is not None:
        out["loss_gap_to_retained"] = round(out["deleted_loss"] - out["retained_loss"], 5)
        out["confidence_gap_to_retained"] = round(out["deleted_confidence"] - out["retained_confidence"], 5)
    return out


def amend_probe(pool: np.ndarray, size: int, seed: int) -> torch.Tensor:
    """A fixed seeded subset of the amend pool on which the amend step measures its loss."""
    generator = torch.Generator().manual_seed(derived_seed("amend-probe", seed))
    return torch.from_numpy(pool).long()[torch.randperm(pool.size, generator=generator)[:size]]


def amend(model: nn.Module, x: torch.Tensor, y: torch.Tensor, pool: np.ndarray, probe: torch.Tensor,
          baseline: float | None, settings: ApproxSettings, *, seed: int, device) -> dict:
    """Fine-tune ``model`` on ``pool`` in rounds until its loss on ``probe`` stops improving (see the module doc)."""
    pool_t = torch.from_numpy(pool).long()
    if pool_t.numel() > settings.amend_round_size:
        source = Source(x, y, pool_t[:0], batch_size=settings.amend_batch_size, sample_from=pool_t,
                        sample_size=settings.amend_round_size, name="amend")
    else:
        source = Source(x, y, pool_t, batch_size=settings.amend_batch_size, name="amend")
    config = TrainConfig(epochs=settings.amend_max_rounds, batch_size=settings.amend_batch_size, lr=settings.amend_lr,
                         schedule="constant", momentum=0.9, weight_decay=5e-4, augment=False)
    start = probe_loss(model, x, y, probe, device)
    track = {"best": start, "since": 0}
    losses: list[float] = []

    def after_round(m: nn.Module, record: dict) -> bool:
        loss = probe_loss(m, x, y, probe, device)
        record["probe_loss"] = round(loss, 5)
        losses.append(loss)
        if baseline is not None and loss <= baseline:
            record["stop_reason"] = f"probe loss {loss:.4f} is back to the unmodified shard's {baseline:.4f}"
            return True
        if loss < track["best"] * (1.0 - settings.amend_min_delta):
            track["best"], track["since"] = loss, 0
        else:
            track["since"] += 1
        if track["since"] >= settings.amend_patience:
            record["stop_reason"] = f"probe loss stopped improving ({loss:.4f}, best {track['best']:.4f})"
            return True
        return False

    report = fit(model, Phase(source, name="amend"), config, seed=seed, device=device, after_epoch=after_round)
    return {
        "rounds": len(report.history), "pool": int(pool.size), "probe": int(probe.numel()),
        "baseline_loss": None if baseline is None else round(baseline, 5), "loss_after_modification": round(start, 5),
        "probe_losses": [round(v, 5) for v in losses], "stopped": report.stopped_early or "max rounds",
        "samples": report.cost.backward,
    }


def approximate_delete(sisa: SisaModel, version: Version, new_ids: np.ndarray, settings: ApproxSettings, *,
                       seed: int, device: str | torch.device = "cpu") -> ApproxResult:
    """Remove ``new_ids`` from ``version`` by modification + amend in every shard that holds them."""
    from ..methods import unlearn  # the registry imports much; only the approximate path needs it

    data, prov = sisa.data, sisa.provenance
    status = version.status.copy()
    removed = status != ACTIVE
    removed[new_ids] = True
    states = list(version.states)
    shard_acc = sisa.meta.get("shard_test_acc") or [None] * sisa.shards
    shards: list[dict] = []
    for shard in np.unique(prov.shard_of[new_ids]).tolist():
        forget = new_ids[prov.shard_of[new_ids] == shard]
        members = prov.members[shard]
        retain = members[~removed[members]]
        shard_seed = derived_seed("approx", seed, shard)
        request = Request(spec=f"sisa-shard:{shard}", effect="remove", seed=shard_seed,
                          forget=torch.from_numpy(forget).long(), retain=torch.from_numpy(retain).long())
        original = sisa.store.model_from_state(states[shard])
        touched = np.isin(prov.member_slices[shard], np.unique(prov.slice_of[forget]))
        pool = members[touched & ~removed[members]]
        probe = amend_probe(pool, settings.amend_probe_size, shard_seed)
        baseline = probe_loss(original, data.x_train, data.y_train, probe, device)
        before = forgetting_evidence(original, data, forget, retain, seed=shard_seed, device=device)
        result = unlearn(
            original,
            request,
            data,
            method=settings.method,
            seed=shard_seed,
            device=device,
            recipe=sisa.config,
            model_name=sisa.meta["model"]["name"],
            model_args=sisa.meta["model"]["args"],
            original_test_acc=shard_acc[shard],
            **settings.method_options,
        )
        model = result.model
        amended = amend(
            model, data.x_train, data.y_train, pool, probe, baseline, settings, seed=shard_seed, device=device
        )
        states[shard] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        status[forget] = DELETED_APPROX
        shards.append(
            {
                "shard": shard,
                "deleted": int(forget.size),
                "modification": {
                    "method": settings.method,
                    "samples": result.cost.backward,
                    "seconds": round(result.cost.seconds, 4),
                    **({"stopped_early": result.notes["stopped_early"]} if "stopped_early" in result.notes else {}),
                },
                "amend": amended,
                "evidence": {
                    "before": before,
                    "after": forgetting_evidence(model, data, forget, retain, seed=shard_seed, device=device),
                },
            }
        )
    return ApproxResult(states, status, shards)
