"""Exposure of planted secrets (Carlini et al., "The Secret Sharer", USENIX Security 2019) and their extraction.

The **log-perplexity** of a candidate c given the prefix p is −log2 P(c | p) = −Σ_t log2 P(c_t | p, c_<t), in
bits, from the model's next-character distributions. The **rank** of a secret s among the candidate space C
of its format is 1 + the number of other candidates with a lower log-perplexity (ties favour the secret), and
its **exposure** is

    exposure(s) = log2 |C| − log2 rank(s),

0 for the least likely candidate, log2 |C| (49.8 bits for 16-digit card numbers, 47.7 for 8-character
passwords) when the secret is the model's first choice. A model that never saw s has an expected exposure
of about 1/ln 2 ≈ 1.44 bits (rank uniform on C).

C is enumerated when it has at most max(``samples`` + 1, 10,000) members (the ``pin`` format): the exposure is then
exact. Otherwise m = ``samples`` candidates are drawn uniformly from C (with replacement; draws equal to the
secret are left out), k of them have a lower log-perplexity than s, and

    exposure_sampled(s) = −log2((k + 1) / (m + 1)),

which estimates −log2(rank/|C|) with the rank estimated as |C|·(k + 1)/(m + 1). A model with non-finite outputs
(diverged) gets NaN exposures. With all m = |C| − 1 other
candidates it *is* the exact exposure; with a sample it is unbiased in the fraction k/m and capped at
log2(m + 1) bits (12 bits at the default 4,095 samples): a secret ranked above every sampled candidate is
reported at the cap, not above it. Beyond the cap, ``exposure_fit`` extrapolates as Carlini et al. do: a
skew-normal distribution fitted to the m sampled log-perplexities (scipy) stands in for C, and
exposure_fit(s) = −log2 F(logppl(s)), at most log2 |C|.

**Extraction**: a beam search of width W (the number of planted secrets) over the format's alphabet, from the
prefix, returns the W most likely completions of the secret's length; a secret counts as extracted when it is
one of them (for one secret this is the greedy completion).

The candidates are drawn from a generator seeded by the request's seed only, so the original, the retrained
and every unlearned model of one request are ranked against the same sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ._util import resolve_device
from .secrets import SecretFormat, Secrets
from .training import count_passes

DEFAULT_SAMPLES = 4095  # m: the sampled estimate is capped at log2(m + 1) = 12 bits
ENUMERATE = 10_000  # candidate spaces up to this size are ranked exactly (the pin format)


@dataclass
class Exposure:
    exposure: list[float]  # per secret: exact or sampled (see the module docstring)
    exposure_fit: list[float]  # per secret: skew-normal extrapolation (exact when C was enumerated)
    log_perplexity: list[float]  # per secret, bits
    lower: list[int]  # k: compared candidates with a lower log-perplexity
    compared: int  # m (+ 1 when C was enumerated, which includes the secret)
    space: int  # |C|
    exact: bool

    def rank(self, j: int) -> float:
        """The (estimated) rank of secret ``j`` in C."""
        return float(self.lower[j] + 1) if self.exact else self.space * (self.lower[j] + 1) / (self.compared + 1)


def _vocab_ids(data, fmt: SecretFormat) -> torch.Tensor:
    return data.encode(fmt.alphabet)


@torch.no_grad()
def log_perplexity(
    model: nn.Module,
    data,
    prefix: str,
    fmt: SecretFormat,
    candidates: torch.Tensor,
    *,
    batch_size: int = 1024,
    device=None,
) -> torch.Tensor:
    """−log2 P(candidate | prefix) in bits for each row of ``candidates`` (alphabet positions), float64."""
    device = resolve_device(device if device is not None else next(model.parameters()).device)
    was_training = model.training
    model.eval()
    start = len(prefix)
    head = data.encode(prefix)
    lookup = _vocab_ids(data, fmt)
    out = []
    for chunk in candidates.split(batch_size):
        seq = torch.cat([head.expand(chunk.shape[0], -1), lookup[chunk]], 1).to(device)
        logp = torch.log_softmax(model(seq[:, :-1]).float(), -1)[:, start - 1 :]
        out.append(-logp.gather(2, seq[:, start:, None]).squeeze(2).double().sum(1).cpu() / math.log(2))
        count_passes(forward=int(chunk.shape[0]))
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.float64)


def secret_positions(fmt: SecretFormat, texts) -> torch.Tensor:
    return torch.tensor([[fmt.alphabet.index(c) for c in text] for text in texts], dtype=torch.int64)


def exposure(
    model: nn.Module,
    data,
    secrets: Secrets,
    *,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    device=None,
    candidates: torch.Tensor | None = None,
) -> Exposure:
    """The exposure of every planted secret (see the module docstring). ``candidates`` (candidate numbers) may
    replace the seeded draw."""
    fmt = secrets.format
    planted = secret_positions(fmt, secrets.secrets)
    planted_idx = fmt.to_indices(planted)
    exact = candidates is None and fmt.space <= max(samples + 1, ENUMERATE)
    if candidates is None:
        candidates = (
            torch.arange(fmt.space)
            if exact
            else fmt.sample(samples, torch.Generator().manual_seed(1_000_003 * seed + 17))
        )
    cand_lp = log_perplexity(model, data, secrets.prefix, fmt, fmt.from_indices(candidates), device=device)
    secret_lp = log_perplexity(model, data, secrets.prefix, fmt, planted, device=device)
    compared = int(candidates.numel()) - (1 if exact else 0)
    if not (torch.isfinite(cand_lp).all() and torch.isfinite(secret_lp).all()):
        # A diverged model (non-finite outputs) ranks nothing: its exposure is not a number, not a figure.
        nan = [float("nan")] * len(secrets.secrets)
        return Exposure(nan, nan, [float(v) for v in secret_lp], [-1] * len(nan), compared, fmt.space, exact)
    fit = _skewnorm(cand_lp) if not exact else None
    space_bits = math.log2(fmt.space)
    values, fitted, lower = [], [], []
    for j in range(len(secrets.secrets)):
        others = candidates != planted_idx[j]
        m = int(others.sum())
        k = int((cand_lp[others] < secret_lp[j]).sum())
        lower.append(k)
        value = math.log2(m + 1) - math.log2(k + 1)
        values.append(value)
        fitted.append(value if fit is None else min(space_bits, fit(float(secret_lp[j]))))
    return Exposure(values, fitted, [float(v) for v in secret_lp], lower, compared, fmt.space, exact)


def _skewnorm(sample: torch.Tensor):
    """x ↦ −log2 F(x) for the skew-normal distribution F fitted to ``sample`` (the log-perplexities)."""
    from scipy.stats import skewnorm

    values = sample.numpy()
    params = skewnorm.fit(values)
    return lambda x: float(max(0.0, -skewnorm.logcdf(x, *params) / math.log(2)))


@torch.no_grad()
def beam_search(model: nn.Module, data, prefix: str, fmt: SecretFormat, width: int, device=None) -> list[str]:
    """The ``width`` most likely completions of ``prefix`` by ``fmt.length`` characters of the format's alphabet."""
    device = resolve_device(device if device is not None else next(model.parameters()).device)
    was_training = model.training
    model.eval()
    head = data.encode(prefix).to(device)
    lookup = _vocab_ids(data, fmt).to(device)
    beams = torch.zeros(1, 0, dtype=torch.int64, device=device)
    scores = torch.zeros(1, dtype=torch.float64, device=device)
    for _ in range(fmt.length):
        seq = torch.cat([head.expand(beams.shape[0], -1), lookup[beams]], 1)
        logp = torch.log_softmax(model(seq).float()[:, -1], -1)[:, lookup].double()
        count_passes(forward=int(beams.shape[0]))
        total = (scores[:, None] + logp).flatten()
        scores, best = total.topk(min(width, total.numel()))
        beams = torch.cat([beams[best // lookup.numel()], (best % lookup.numel())[:, None]], 1)
    model.train(was_training)
    return fmt.text(beams.cpu())


def extracted(model: nn.Module, data, secrets: Secrets, device=None) -> list[bool]:
    """Whether each secret is among the beam search's top-N completions (N = number of secrets)."""
    found = set(beam_search(model, data, secrets.prefix, secrets.format, len(secrets.secrets), device))
    return [s in found for s in secrets.secrets]
