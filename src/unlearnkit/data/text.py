"""Character-level text data sets for language models.

A :class:`TextDataset` is a :class:`~unlearnkit.data.datasets.Dataset` whose samples are fixed-length token
sequences: ``x_train[i]`` is sequence ``i`` of the training text (``seq_len`` character ids) and
``y_train[i]`` the same window shifted by one character (the next-token targets), so every request, source,
method and checkpoint that works by sample id works on sequences unchanged. ``x_test``/``y_test`` are the
validation sequences.

The text is cut into consecutive windows of ``seq_len + 1`` characters that overlap by one (every character
but the first is a target exactly once); every tenth window (ids 9, 19, ...) is held out for validation. Ids
are stable: window ``k`` of the text is always the same sequence, and the training/validation ids are the
windows' ranks in their split. The vocabulary is every character of the text plus the digits and the ASCII
letters (so planted secrets are always expressible), sorted; the fingerprint hashes the vocabulary and every
token, so a checkpoint names the exact text it was trained on.

Data sets:

* ``fortunes`` — the English fortune cookies of the Debian package ``fortunes`` (BSD fortune-mod; folder
  ``/usr/share/games/fortunes``, one file per topic, cookies separated by lines holding ``%``): every plain
  file of the folder, in name order, cookies joined by a blank line, tabs as four spaces, and only printable
  ASCII and newlines kept (about 2.6 M characters, 96 distinct).
* ``text`` — any UTF-8 plain-text file, or every ``*.txt`` file of a folder (``--data-dir``).

``fortunes[2000,200]`` (as for images) takes a seeded subset of 2,000 training and 200 validation sequences.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._util import sha256_tensors
from ..errors import UnlearnKitError
from .datasets import DATASET_INFO, DATASETS, Dataset

FORTUNES_DIR = "/usr/share/games/fortunes"
FORTUNES_HOW = (
    "install the Debian package with `apt-get install fortunes` (it puts the cookie files in "
    f"{FORTUNES_DIR}), or pass --data-dir to a folder of fortune files"
)
SEQ_LEN = 64
VALIDATION_EVERY = 10  # window k is a validation sequence when k % 10 == 9
# Characters every vocabulary holds, so that the secrets of `secret:` requests can always be written.
ALWAYS = string.digits + string.ascii_lowercase + string.ascii_uppercase + " "


@dataclass
class TextDataset(Dataset):
    """Token sequences of a character-level text (see the module docstring). ``num_classes`` is the vocabulary
    size, so a model's output has one logit per character."""

    vocab: str = ""
    seq_len: int = SEQ_LEN
    modality: str = field(default="text", init=False)

    def __post_init__(self) -> None:
        if len(set(self.vocab)) != len(self.vocab) or not self.vocab:
            raise UnlearnKitError(f"{self.name}: the vocabulary must be non-empty distinct characters")
        for split, (x, y) in {"train": (self.x_train, self.y_train), "validation": (self.x_test, self.y_test)}.items():
            if x.ndim != 2 or x.dtype != torch.int64 or x.shape[1] != self.seq_len:
                raise UnlearnKitError(
                    f"{self.name} {split}: sequences must be int64 N x {self.seq_len}, got {x.dtype} {tuple(x.shape)}"
                )
            if y.shape != x.shape or y.dtype != torch.int64:
                raise UnlearnKitError(f"{self.name} {split}: targets must match the sequences' shape")
            if x.numel() and (
                int(torch.minimum(x.min(), y.min())) < 0 or int(torch.maximum(x.max(), y.max())) >= len(self.vocab)
            ):
                raise UnlearnKitError(f"{self.name} {split}: token ids outside the vocabulary")
        if self.x_train.shape[0] < 2 or self.x_test.shape[0] < 1:
            raise UnlearnKitError(
                f"{self.name}: the text is too short for {self.seq_len}-character sequences "
                f"({self.x_train.shape[0]} training and {self.x_test.shape[0]} validation ones); "
                f"it needs at least {3 * VALIDATION_EVERY * (self.seq_len + 1)} characters"
            )
        self.num_classes = len(self.vocab)
        self.mean, self.std = (), ()
        vocab_codes = torch.tensor([ord(c) for c in self.vocab], dtype=torch.int64)
        self.fingerprint = sha256_tensors(vocab_codes, self.x_train, self.y_train, self.x_test, self.y_test)[:16]

    @property
    def channels(self) -> int:  # not an image: no channels
        return 0

    @property
    def image_size(self) -> int:
        return 0

    def model_args(self) -> dict:
        return {"vocab_size": len(self.vocab), "seq_len": self.seq_len}

    def describe(self) -> dict:
        return {
            **self._identity(),
            "modality": "text",
            "vocab_size": len(self.vocab),
            "seq_len": self.seq_len,
            "source": self.source,
        }

    # -- characters <-> ids ------------------------------------------------------------------------
    def encode(self, text: str) -> torch.Tensor:
        index = {c: i for i, c in enumerate(self.vocab)}
        missing = sorted(set(text) - set(index))
        if missing:
            raise UnlearnKitError(f"{self.name}: characters {missing[:5]} are not in the vocabulary")
        return torch.tensor([index[c] for c in text], dtype=torch.int64)

    def decode(self, ids) -> str:
        return "".join(self.vocab[int(i)] for i in ids)

    def subset(self, n_train: int | None = None, n_test: int | None = None, seed: int = 0) -> "TextDataset":
        """A seeded random subset of the sequences (ids keep their order); named ``NAME[nTR,nTE]``."""
        gen = torch.Generator().manual_seed(seed)

        def pick(n_all: int, n: int | None) -> torch.Tensor:
            if n is None or n >= n_all:
                return torch.arange(n_all)
            if n <= 0:
                raise UnlearnKitError("a subset needs at least one sequence")
            return torch.sort(torch.randperm(n_all, generator=gen)[:n]).values

        tr, te = pick(self.n_train, n_train), pick(int(self.x_test.shape[0]), n_test)
        return TextDataset(
            name=f"{self.name}[{tr.numel()},{te.numel()}]",
            x_train=self.x_train[tr].contiguous(),
            y_train=self.y_train[tr].contiguous(),
            x_test=self.x_test[te].contiguous(),
            y_test=self.y_test[te].contiguous(),
            num_classes=len(self.vocab),
            class_names=self.class_names,
            source=f"subset(seed={seed}) of {self.source}",
            vocab=self.vocab,
            seq_len=self.seq_len,
        )


def text_dataset(name: str, text: str, source: str, seq_len: int = SEQ_LEN) -> TextDataset:
    """Cut ``text`` into training and validation sequences (see the module docstring)."""
    vocab = "".join(sorted(set(text) | set(ALWAYS)))
    index = {c: i for i, c in enumerate(vocab)}
    tokens = torch.tensor([index[c] for c in text], dtype=torch.int64)
    n_windows = (tokens.numel() - 1) // seq_len
    if n_windows < VALIDATION_EVERY:
        raise UnlearnKitError(
            f"{source}: {len(text)} characters are too few for {seq_len}-character sequences; "
            f"it needs at least {3 * VALIDATION_EVERY * (seq_len + 1)}"
        )
    starts = torch.arange(n_windows) * seq_len
    windows = tokens[starts[:, None] + torch.arange(seq_len + 1)]
    held_out = torch.arange(n_windows) % VALIDATION_EVERY == VALIDATION_EVERY - 1
    train, val = windows[~held_out], windows[held_out]
    return TextDataset(
        name=name,
        x_train=train[:, :-1].contiguous(),
        y_train=train[:, 1:].contiguous(),
        x_test=val[:, :-1].contiguous(),
        y_test=val[:, 1:].contiguous(),
        num_classes=len(vocab),
        class_names=tuple(vocab),
        source=source,
        vocab=vocab,
        seq_len=seq_len,
    )


def read_text(path: Path) -> str:
    """A UTF-8 text file's content; unreadable, non-UTF-8 or empty files are one-line errors."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UnlearnKitError(f"cannot read text file {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnlearnKitError(
            f"{path} is not UTF-8 text (byte {exc.start}: {raw[exc.start : exc.start + 1]!r})"
        ) from None
    if not text.strip():
        raise UnlearnKitError(f"{path} is empty: a language model needs text to train on")
    return text.replace("\r\n", "\n")


def fortune_cookies(text: str) -> list[str]:
    """The cookies of a fortune file: blocks separated by lines holding only ``%``."""
    cookies, current = [], []
    for line in text.split("\n"):
        if line.strip() == "%":
            cookies.append("\n".join(current).strip("\n"))
            current = []
        else:
            current.append(line)
    cookies.append("\n".join(current).strip("\n"))
    return [c for c in cookies if c.strip()]


def load_fortunes(root: str | Path | None = None) -> TextDataset:
    root = Path(root or FORTUNES_DIR)
    if not root.is_dir():
        raise UnlearnKitError(f"fortune folder {root} does not exist; {FORTUNES_HOW}")
    # Plain cookie files only: not the strfile indexes (.dat) nor the .u8 links to the same files.
    files = sorted(
        p
        for p in root.iterdir()
        if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8") and not p.name.startswith(".")
    )
    if not files:
        raise UnlearnKitError(f"{root} holds no fortune files; {FORTUNES_HOW}")
    cookies = [c for path in files for c in fortune_cookies(read_text(path))]
    text = "\n\n".join(cookies).replace("\t", "    ") + "\n"
    # Plain English: printable ASCII and newlines (the files also hold a few terminal control characters, used for
    # overstrike, and some mis-encoded bytes; they are dropped).
    return text_dataset("fortunes", "".join(c for c in text if c == "\n" or " " <= c <= "~"), str(root))


def load_text(root: str | Path | None = None) -> TextDataset:
    if root is None:
        raise UnlearnKitError("data set 'text' needs --data-dir: a UTF-8 text file or a folder of *.txt files")
    root = Path(root)
    if root.is_dir():
        files = sorted(root.glob("*.txt"))
        if not files:
            raise UnlearnKitError(f"{root} holds no *.txt files")
    elif root.exists():
        files = [root]
    else:
        raise UnlearnKitError(f"text file {root} does not exist")
    return text_dataset("text", "\n\n".join(read_text(p) for p in files), str(root))


DATASETS.update({"fortunes": load_fortunes, "text": load_text})
DATASET_INFO.update(
    {
        "fortunes": {
            "default_dir": FORTUNES_DIR,
            "format": "fortune cookie files (Debian package fortunes)",
            "shape": [SEQ_LEN],
            "classes": "characters",
            "modality": "text",
        },
        "text": {
            "default_dir": None,
            "format": "UTF-8 plain text (a file or a folder of *.txt)",
            "shape": [SEQ_LEN],
            "classes": "characters",
            "modality": "text",
        },
    }
)


def is_text(data: Dataset) -> bool:
    return getattr(data, "modality", "image") == "text"
