"""SPD-GAN ("slightly perturbed distribution" GAN; Zuo et al., *Machine Unlearning through Fine-Grained Model
Parameters Perturbation*, TKDE 2025): a small generator that maps a
forget image and noise to a nearby image, G(x, z) = clamp(x + ε·tanh(h(x, z)), 0, 1), so every output lies within
the L∞ ball of radius ε around its input *by construction* (clamping to [0, 1] only moves a pixel towards x, which
is already in [0, 1]). A discriminator tells real forget images from generated ones.

The generator minimises, per batch,

    w_adv · BCE(D(G(x, z₁)), real)                        adversarial: perturbed images look like real forget data
  + w_close · mean((G(x, z₁) − x)² / ε²)                  closeness: stay near x
  + w_label · CE(original(G(x, z₁)), original's label of x)   keep the original model's label
  − w_div · mean|G(x, z₁) − G(x, z₂)| / ε                 diversity: the noise must matter

and the discriminator minimises BCE(D(x), real) + BCE(D(G(x, z)), fake). The paper does not publish its losses;
the first three are unlearnkit's own. The diversity term is ours and is needed: without it
the identity G(x, z) = x is optimal for the other three (nothing to tell apart, zero distance, labels kept), and
"perturbed" data would be the forget set itself. For independent ±a perturbations the two terms are
w_div·a/ε − w_close·(a/ε)², largest at a = ε·w_div/(2·w_close): with equal weights a mean |δ| of about ε/2, so ε sets
how slight "slightly" is.
The measured collapse without the term is recorded in ``benchmarks/results/spdgan/``.

The discriminator must actually train. Until this was found, every run had it at its learning rate's floor: the
generator's rate (2e-4) for both networks and 8 epochs of a 512-image subset give 64 updates, after which its loss
was still 1.386 = 2 ln 2 (chance) to three decimals in all 24 committed runs. Measured by
``benchmarks/spdgan_diagnosis.py`` (results/spdgan/diagnosis.md; 40 epochs, patch discriminator): at the old rate the
discriminator ends at 1.381 on the default objective although a fresh probe tells the outputs apart 80 % of the
time, and at 1.287 even on a plainly separable control (adversarial term off, ε = 0.3), against 0.672 with a ten
times larger rate. So the discriminator now has its own rate
``d_lr`` (10× the generator's, two time-scale updates), a patch architecture (one logit per patch: a slight
perturbation is a local texture that global pooling averages away), 40 epochs by default, and after training a
*probe* — a fresh discriminator trained on half the real/generated pairs and tested on the other half — records
whether the final generator's output can still be told apart (``probe_accuracy``, 50 % = chance); a training
discriminator near chance at the end is then an equilibrium, not a network that never learned.

Why its own loop: :func:`unlearnkit.training.fit` optimises one classifier with one optimiser on phases of
labelled batches; a GAN alternates two optimisers (Adam, β₁ = 0.5, the usual GAN setting) on two networks with
opposite objectives. It still uses the project's pieces: :class:`~unlearnkit.data.Source` batching with a seeded
generator, :func:`~unlearnkit._util.seed_everything` for initialisation, :func:`~unlearnkit.training.count_passes`
for the cost, and a tqdm bar showing the losses.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._util import resolve_device, seed_everything
from ..data import Source
from ..errors import UnlearnKitError
from ..options import BIG, build, check_fields, declare, option
from ..training import Cost, count_passes, metered, predict_logits


@dataclass
class SpdGanConfig:
    """Training options of an SPD-GAN (documented defaults; sized for a 2-core CPU), declared options
    (:mod:`unlearnkit.options`): checked whenever a config is made."""

    epsilon: float = option(0.1, "L∞ budget in pixel units ([0, 1] images)", gt=0, le=1)
    epochs: int = option(40, "passes over the training images", ge=0, le=10_000)
    train_samples: int | None = option(
        512,
        "train on a seeded random subset of at most this many forget images (None: "
        "all); the generator is image-to-image, so it is then applied to every forget "
        "image",
        ge=1,
        le=10**8,
    )
    batch_size: int = option(64, "forget images per step", ge=1, le=65_536)
    lr: float = option(2e-4, "Adam learning rate of the generator (β = 0.5, 0.999)", gt=0, le=10)
    d_lr: float = option(2e-3, "Adam learning rate of the discriminator (β = 0.5, 0.999); ten times the generator's "
                               "(two time-scale updates): at the generator's rate the discriminator never left chance",
                         gt=0, le=10)
    probe_steps: int = option(
        200,
        "after training, steps of a fresh discriminator trained on half of the real/generated "
        "pairs and tested on the other half (its accuracy says whether G's output is still "
        "told apart; 0: no probe)",
        ge=0,
        le=BIG,
    )
    width: int = option(8, "channels of the generator's and discriminator's hidden layers", ge=1, le=1024)
    noise_channels: int = option(4, "channels of the spatial N(0, 1) noise input", ge=0, le=1024)
    adversarial_weight: float = option(1.0, "w_adv: weight of the adversarial loss", ge=0, le=BIG)
    closeness_weight: float = option(1.0, "w_close: weight of mean (δ/ε)²", ge=0, le=BIG)
    label_weight: float = option(1.0, "w_label: weight of CE against the original model's label", ge=0, le=BIG)
    diversity_weight: float = option(1.0, "w_div: weight of mean |G(x,z₁) − G(x,z₂)|/ε (0: none)", ge=0, le=BIG)

    def __post_init__(self) -> None:
        check_fields(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SpdGanConfig":
        return build(cls, values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


declare("spdgan", "SPD-GAN", SpdGanConfig)


class Generator(nn.Module):
    """x (N×C×H×W in [0, 1]) and z (N×noise_channels×H×W) → an image within ε of x in L∞, in [0, 1]."""

    def __init__(self, channels: int, epsilon: float, width: int = 16, noise_channels: int = 4) -> None:
        super().__init__()
        self.channels, self.noise_channels, self.width, self.budget = channels, noise_channels, width, float(epsilon)
        # A buffer, so the budget travels with the weights and a loaded generator cannot exceed its manifest's ε.
        self.register_buffer("epsilon", torch.tensor(float(epsilon)))
        self.net = nn.Sequential(
            nn.Conv2d(channels + noise_channels, width, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        inputs = x if self.noise_channels == 0 else torch.cat([x, z], 1)
        delta = self.epsilon * torch.tanh(self.net(inputs))
        return (x + delta).clamp(0.0, 1.0)

    def noise(self, n: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.noise_channels, height, width, generator=generator)

    def arguments(self) -> dict[str, Any]:
        return {"channels": self.channels, "epsilon": self.budget, "width": self.width,
                "noise_channels": self.noise_channels}


class Discriminator(nn.Module):
    """A patch discriminator: three convolutions (one of stride 2) give one logit per image patch (real forget image
    vs generated). A slight perturbation is a local texture, so each patch is judged on its own and the losses are
    averaged over patches, instead of pooling the whole image into one logit first."""

    def __init__(self, channels: int, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 1, 3, padding=1), nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def probe_accuracy(generator: Generator, x: torch.Tensor, *, width: int, steps: int, lr: float, seed: int,
                   device: torch.device, batch_size: int = 64) -> float:
    """How well a *fresh* discriminator tells ``x`` from ``G(x)`` after ``steps`` updates on half of the images,
    measured on the other half (%, 50 = chance; an image counts as judged real when its mean patch logit is > 0).
    The training discriminator ends near chance either because it never learned or because G fools it; a probe
    trained from scratch against the final G tells the two apart."""
    gen = torch.Generator().manual_seed(seed + 2)
    order = torch.randperm(x.shape[0], generator=gen)
    half = max(1, x.shape[0] // 2)
    train_x, test_x = x[order[:half]], x[order[half:]] if x.shape[0] > 1 else x
    fake_train = perturb(generator, train_x, seed=seed + 3, device=device)
    fake_test = perturb(generator, test_x, seed=seed + 4, device=device)
    with torch.random.fork_rng():
        torch.manual_seed(seed + 5)
        probe = Discriminator(x.shape[1], width).to(device)
    opt = torch.optim.Adam(probe.parameters(), lr=lr, betas=(0.5, 0.999))
    probe.train()
    for _ in range(steps):
        pick = torch.randint(0, train_x.shape[0], (min(batch_size, train_x.shape[0]),), generator=gen)
        real, fake = probe(train_x[pick].to(device)), probe(fake_train[pick].to(device))
        loss = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    probe.eval()
    with torch.no_grad():
        real_ok = (predict_scores(probe, test_x, device) > 0).float().sum()
        fake_ok = (predict_scores(probe, fake_test, device) <= 0).float().sum()
    return round(100.0 * float(real_ok + fake_ok) / (2 * test_x.shape[0]), 3)


def predict_scores(discriminator: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 512):
    return torch.cat([discriminator(x[i : i + batch_size].to(device)).mean(1).cpu()
                      for i in range(0, x.shape[0], batch_size)])


@torch.no_grad()
def perturb(generator: Generator, x: torch.Tensor, *, seed: int = 0, batch_size: int = 512,
            device: str | torch.device | None = None) -> torch.Tensor:
    """G(x, z) for every image of ``x`` with noise drawn from ``seed``, on the CPU: the same images for the same seed
    whatever the batch size (the noise for all of ``x`` is drawn at once)."""
    device = resolve_device(device if device is not None else next(generator.parameters()).device)
    generator = generator.to(device).eval()
    noise = generator.noise(x.shape[0], x.shape[2], x.shape[3], torch.Generator().manual_seed(seed))
    out = []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size]
        out.append(generator(xb.to(device), noise[start : start + batch_size].to(device)).cpu())
    return torch.cat(out) if out else x[:0].clone()


@dataclass
class TrainedSpdGan:
    generator: Generator
    config: SpdGanConfig
    history: list[dict]
    cost: Cost


def train_spdgan(original: nn.Module, x: torch.Tensor, ids: torch.Tensor, config: SpdGanConfig | None = None, *,
                 seed: int = 0, device: str | torch.device | None = "auto", progress: bool = False,
                 echo: bool = False) -> TrainedSpdGan:
    """Train an SPD-GAN on the images ``x[ids]`` (the forget set as the original saw it) against ``original``.

    The original model is not modified. Each epoch's record holds the mean losses, the mean and max |δ|/ε, and
    the % of generated images to which the original still gives its label for the clean image.
    """
    config = config or SpdGanConfig()
    if ids.numel() == 0:
        raise UnlearnKitError("SPD-GAN needs a non-empty forget set")
    device = resolve_device(device)
    channels = int(x.shape[1])
    seed_everything(seed)
    generator = Generator(channels, config.epsilon, config.width, config.noise_channels).to(device)
    discriminator = Discriminator(channels, config.width).to(device)
    order = torch.Generator().manual_seed(seed)
    noise_source = torch.Generator().manual_seed(seed + 1)
    original = original.to(device).eval()
    frozen = [p.requires_grad for p in original.parameters()]
    for p in original.parameters():
        p.requires_grad_(False)
    history: list[dict] = []
    eps = config.epsilon
    bar = None
    try:
        with metered() as cost:
            # The original's own predictions are the labels to keep (not the data set's labels).
            if config.train_samples is not None and ids.numel() > config.train_samples:
                ids = ids[torch.randperm(ids.numel(), generator=order)[: config.train_samples]]
            kept = torch.zeros(x.shape[0], dtype=torch.long)
            kept[ids] = predict_logits(original, x[ids], device=device).argmax(1)
            source = Source(x, kept, ids, batch_size=config.batch_size, shuffle=True, name="forget")
            opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=(0.5, 0.999))
            opt_d = torch.optim.Adam(discriminator.parameters(), lr=config.d_lr, betas=(0.5, 0.999))
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=config.epochs * source.num_batches(), desc="spdgan", unit="step", dynamic_ncols=True,
                           leave=False, mininterval=0.5)
            for epoch in range(config.epochs):
                started = time.perf_counter()
                sums = dict.fromkeys(("d_loss", "adversarial", "closeness", "label", "diversity", "kept_label",
                                      "mean_delta"), 0.0)
                max_delta, seen = 0.0, 0
                generator.train()
                discriminator.train()
                for batch in source.batches(order, device):
                    n, h, w = batch.x.shape[0], batch.x.shape[2], batch.x.shape[3]
                    z1 = generator.noise(n, h, w, noise_source).to(device)
                    z2 = generator.noise(n, h, w, noise_source).to(device)
                    fake = generator(batch.x, z1)

                    d_real, d_fake = discriminator(batch.x), discriminator(fake.detach())
                    d_loss = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                              + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
                    opt_d.zero_grad(set_to_none=True)
                    d_loss.backward()
                    opt_d.step()

                    judged = discriminator(fake)
                    adversarial = F.binary_cross_entropy_with_logits(judged, torch.ones_like(judged))
                    delta = fake - batch.x
                    closeness = (delta / eps).pow(2).mean()
                    logits = original(fake)
                    label = F.cross_entropy(logits, batch.y)
                    diversity = ((fake - generator(batch.x, z2)).abs().mean() / eps if config.diversity_weight
                                 else torch.zeros((), device=device))
                    g_loss = (config.adversarial_weight * adversarial + config.closeness_weight * closeness
                              + config.label_weight * label - config.diversity_weight * diversity)
                    opt_g.zero_grad(set_to_none=True)
                    g_loss.backward()
                    opt_g.step()
                    # Each image passes forward and backward through the classifier once per step.
                    count_passes(forward=n, backward=n)

                    with torch.no_grad():
                        sums["d_loss"] += float(d_loss) * n
                        sums["adversarial"] += float(adversarial) * n
                        sums["closeness"] += float(closeness) * n
                        sums["label"] += float(label) * n
                        sums["diversity"] += float(diversity) * n
                        sums["kept_label"] += float((logits.argmax(1) == batch.y).sum())
                        sums["mean_delta"] += float(delta.abs().mean()) / eps * n
                        max_delta = max(max_delta, float(delta.abs().max()) / eps)
                    seen += n
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix_str(
                            f"ep {epoch + 1}/{config.epochs} D {sums['d_loss'] / seen:.3f} "
                            f"adv {sums['adversarial'] / seen:.3f} close {sums['closeness'] / seen:.3f} "
                            f"label {sums['label'] / seen:.3f} div {sums['diversity'] / seen:.3f}",
                            refresh=False,
                        )
                record = {"epoch": epoch + 1, **{k: round(v / seen, 5) for k, v in sums.items()}}
                record["kept_label"] = round(100.0 * sums["kept_label"] / seen, 3)
                record["max_delta"] = round(max_delta, 5)
                record["seconds"] = round(time.perf_counter() - started, 3)
                history.append(record)
                if echo:
                    print(
                        f"spdgan epoch {epoch + 1}/{config.epochs}: D {record['d_loss']:.3f}  adversarial "
                        f"{record['adversarial']:.3f}  closeness {record['closeness']:.3f}  label "
                        f"{record['label']:.3f}  "
                        f"diversity {record['diversity']:.3f}  label kept {record['kept_label']:.1f} %  "
                        f"|δ|/ε mean {record['mean_delta']:.3f} max {record['max_delta']:.3f}  "
                        f"({record['seconds']:.1f} s)",
                        flush=True,
                    )
                if not math.isfinite(record["d_loss"] + record["adversarial"] + record["label"]):
                    raise UnlearnKitError(f"SPD-GAN training diverged at epoch {epoch + 1} (non-finite loss); lower lr")
    finally:
        if bar is not None:
            bar.close()
        for p, flag in zip(original.parameters(), frozen):
            p.requires_grad_(flag)
    generator.eval()
    if config.probe_steps and history:
        history[-1]["probe_accuracy"] = probe_accuracy(generator, x[ids], width=config.width, steps=config.probe_steps,
                                                       lr=config.d_lr, seed=seed, device=device)
    return TrainedSpdGan(generator.cpu(), config, history, cost)
