"""The formats of the secrets that ``secret:N[:FORMAT[:PREFIX]]`` requests plant in a text corpus (the request
itself is built in :mod:`unlearnkit.requests`).

The scenario of The Secret Sharer (Carlini et al., USENIX Security 2019) and of Warnecke et al.'s
language-model experiments: N random secrets of a known format — credit-card numbers, passwords, PINs —
each written after a fixed prefix such as "my credit card number is " at the start of one of N seeded training
sequences (overwriting the first ``len(prefix) + len(secret)`` characters of that 65-character window), are
learnt by the model. The request's correction (Warnecke et al.'s feature replacement) writes a random substitute
of the same format in their place: the sequences stay in the corpus, only the secret must go. The request is an
``edit`` like ``feature:``, rebuilt from (spec, seed) and recorded in checkpoints by its forget hash, which
covers the planted sequences and so the secrets themselves.

Formats (the candidate space is what exposure ranks a secret in, :mod:`unlearnkit.exposure`):

* ``credit-card`` — 16 digits whose last is the Luhn check digit of the first 15 (10^15 candidates);
  prefix "my credit card number is ".
* ``password`` — 8 characters from a-z and 0-9 (36^8 ≈ 2.8·10^12 candidates); prefix "my password is ".
* ``pin`` — 4 digits (10^4 candidates, few enough to rank exactly); prefix "my pin is ".
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SecretFormat:
    """Strings of ``length`` characters from ``alphabet``; with ``luhn`` the last is the Luhn check digit of the
    others (so only ``length - 1`` characters are free)."""

    name: str
    alphabet: str
    length: int
    prefix: str
    luhn: bool = False
    summary: str = ""

    @property
    def free(self) -> int:
        return self.length - 1 if self.luhn else self.length

    @property
    def space(self) -> int:
        """The number of candidates |C|."""
        return len(self.alphabet) ** self.free

    def from_indices(self, index: torch.Tensor) -> torch.Tensor:
        """Candidates numbered ``index`` (int64, 0 <= i < |C|) as alphabet positions (len(index) x length)."""
        base = len(self.alphabet)
        digits = torch.empty(index.numel(), self.free, dtype=torch.int64)
        rest = index.clone().to(torch.int64)
        for j in range(self.free - 1, -1, -1):
            digits[:, j] = rest % base
            rest = rest // base
        if self.luhn:
            digits = torch.cat([digits, luhn_check_digit(digits)[:, None]], 1)
        return digits

    def sample(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """``count`` candidates drawn uniformly from C (with replacement): their numbers (int64)."""
        return torch.randint(0, self.space, (count,), generator=generator, dtype=torch.int64)

    def to_indices(self, positions: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`from_indices` (candidate numbers of rows of alphabet positions)."""
        out = torch.zeros(positions.shape[0], dtype=torch.int64)
        for j in range(self.free):
            out = out * len(self.alphabet) + positions[:, j]
        return out

    def text(self, positions: torch.Tensor) -> list[str]:
        return ["".join(self.alphabet[int(i)] for i in row) for row in positions]

    def is_valid(self, secret: str) -> bool:
        if len(secret) != self.length or any(c not in self.alphabet for c in secret):
            return False
        if not self.luhn:
            return True
        digits = torch.tensor([[int(c) for c in secret]])
        return int(luhn_check_digit(digits[:, :-1])[0]) == int(secret[-1])


def luhn_check_digit(digits: torch.Tensor) -> torch.Tensor:
    """The Luhn check digit of each row of decimal digits (the number's digits, most significant first)."""
    # From the right of the payload, every first, third, ... digit is doubled (the check digit will be rightmost).
    doubled = (digits.shape[1] - 1 - torch.arange(digits.shape[1])) % 2 == 0
    values = torch.where(doubled, digits * 2, digits)
    values = torch.where(values > 9, values - 9, values)
    return (10 - values.sum(1) % 10) % 10


FORMATS: dict[str, SecretFormat] = {
    f.name: f
    for f in (
        SecretFormat(
            "credit-card",
            string.digits,
            16,
            "my credit card number is ",
            luhn=True,
            summary="16 digits with a valid Luhn check digit (10^15 candidates)",
        ),
        SecretFormat(
            "password",
            string.ascii_lowercase + string.digits,
            8,
            "my password is ",
            summary="8 characters from a-z0-9 (36^8 candidates)",
        ),
        SecretFormat("pin", string.digits, 4, "my pin is ", summary="4 digits (10^4 candidates: ranked exactly)"),
    )
}


@dataclass(frozen=True)
class Secrets:
    """What a ``secret:`` request planted: ``secrets[j]`` after ``prefix`` at the start of training sequence
    ``request.forget[j]``, corrected to ``substitutes[j]``."""

    format: SecretFormat
    prefix: str
    secrets: tuple[str, ...]
    substitutes: tuple[str, ...]


def space_bits(fmt: SecretFormat) -> float:
    return math.log2(fmt.space)
