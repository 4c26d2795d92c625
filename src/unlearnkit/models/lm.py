"""Character-level language models. Each takes ``vocab_size`` and ``seq_len`` (from the text data set), maps
token ids (B x T, int64) to next-character logits (B x T x vocab_size), and names its output layer
``classifier`` like the image models, so every method that touches "the last layer" works on them.

Both are small enough to train on a CPU in minutes (docs/text.md) and are built from layers ``torch.func``
differentiates per sample (the curvature operators behind the Warnecke updates and SAPS use it).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import UnlearnKitError
from ..options import option

# torch.func's vmap runs the LSTM kernel per sample (no batching rule for it yet): correct, and said once here.
warnings.filterwarnings("ignore", message=".*batching rule for aten::mkldnn_rnn_layer.*")


@dataclass
class CharLSTMOptions:
    embedding: int = option(32, "character embedding size", ge=1, le=4096)
    hidden: int = option(256, "LSTM hidden units", ge=1, le=8192)
    layers: int = option(1, "stacked LSTM layers", ge=1, le=16)


@dataclass
class CharTransformerOptions:
    width: int = option(128, "model width (embedding size)", ge=1, le=8192)
    depth: int = option(2, "transformer blocks", ge=1, le=64)
    heads: int = option(4, "attention heads (must divide the width)", ge=1, le=128)


class CharLSTM(nn.Module):
    """Character LSTM (as in Warnecke et al.'s language-model experiments): embedding, LSTM, linear read-out."""

    def __init__(
        self,
        vocab_size: int,
        seq_len: int,
        embedding: int = CharLSTMOptions.embedding,
        hidden: int = CharLSTMOptions.hidden,
        layers: int = CharLSTMOptions.layers,
    ):
        super().__init__()
        if vocab_size < 2 or seq_len < 1:
            raise UnlearnKitError(f"char-lstm needs vocab_size >= 2 and seq_len >= 1, got {vocab_size}, {seq_len}")
        self.seq_len = seq_len
        self.embed = nn.Embedding(vocab_size, embedding)
        self.lstm = nn.LSTM(embedding, hidden, num_layers=layers, batch_first=True)
        self.classifier = nn.Linear(hidden, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.embed(x))
        return self.classifier(h)


class Block(nn.Module):
    """Pre-norm transformer block: causal multi-head self-attention, then a GELU MLP, each residual."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(c, dim=-1)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        # Written out (not scaled_dot_product_attention) so that torch.func's vmap and double backward apply.
        scores = q @ k.transpose(-2, -1) / math.sqrt(c // self.heads)
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        attn = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.norm2(x))


class CharTransformer(nn.Module):
    """Small causal transformer (GPT-style): token and learned position embeddings, pre-norm blocks, read-out."""

    def __init__(
        self,
        vocab_size: int,
        seq_len: int,
        width: int = CharTransformerOptions.width,
        depth: int = CharTransformerOptions.depth,
        heads: int = CharTransformerOptions.heads,
    ):
        super().__init__()
        if width % heads:
            raise UnlearnKitError(f"char-transformer: width {width} is not a multiple of heads {heads}")
        if vocab_size < 2 or seq_len < 1:
            raise UnlearnKitError(
                f"char-transformer needs vocab_size >= 2 and seq_len >= 1, got {vocab_size}, {seq_len}"
            )
        self.seq_len = seq_len
        self.embed = nn.Embedding(vocab_size, width)
        self.position = nn.Embedding(seq_len, width)
        self.blocks = nn.Sequential(*(Block(width, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.classifier = nn.Linear(width, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[-1]
        if t > self.seq_len:
            raise UnlearnKitError(f"char-transformer was built for sequences of at most {self.seq_len} tokens, got {t}")
        h = self.embed(x) + self.position(torch.arange(t, device=x.device))
        return self.classifier(self.norm(self.blocks(h)))
