"""Small causal (decoder-only, GPT-style) transformer over the raster-flattened code sequence.

The sequence is shifted right by one learned start token, so the output at position ``t`` depends on the
codes before ``t`` only; learned absolute position embeddings; pre-norm blocks whose attention is
``F.scaled_dot_product_attention(is_causal=True)`` (flash / memory-efficient kernels, no L x L mask).
The blocks are written here rather than taken from ``torch.nn.TransformerEncoder`` because sampling needs
a key/value cache: one new token per step instead of re-running the whole prefix (a 64x32 code map is
2,048 steps).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from prostate_vq.errors import UserInputError
from prostate_vq.prior.base import CodePrior


class Block(nn.Module):
    """Pre-norm causal self-attention + GELU MLP, with an optional key/value cache for decoding."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise UserInputError(f"transformer dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if cache is not None:  # decoding: x holds the newest token(s), earlier keys/values are cached
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        causal = cache is None or t > 1
        if cache is not None and t > 1 and k.shape[2] != t:
            raise ValueError("a cached forward takes one token at a time after the first call")
        # No dropout on the attention weights: it would force the math kernel (an L x L matrix per head);
        # dropout acts on the residual branches instead.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, t, c)))
        return x + self.drop(self.mlp(self.norm2(x)))


class CodeTransformer(CodePrior):
    """Autoregressive prior over ``[B, h, w(, depth)]`` codes of at most ``max_positions = h * w`` positions."""

    arch = "transformer"

    def __init__(
        self,
        vocab_sizes: Sequence[int] | int,
        code_shape: Sequence[int],
        dim: int = 128,
        layers: int = 4,
        heads: int = 4,
        dropout: float = 0.1,
    ):
        super().__init__(vocab_sizes, dim)
        h, w = (int(s) for s in code_shape)
        self.max_positions = h * w
        self.config = {
            "arch": self.arch,
            "vocab_sizes": list(self.vocab_sizes),
            "code_shape": [h, w],
            "dim": dim,
            "layers": layers,
            "heads": heads,
            "dropout": dropout,
        }
        self.start = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(torch.randn(1, self.max_positions, dim) * 0.02)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([Block(dim, heads, dropout) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)

    def features(self, embedded: torch.Tensor) -> torch.Tensor:
        b, c, h, w = embedded.shape
        length = h * w
        if length > self.max_positions:
            raise UserInputError(
                f"code map {h}x{w} is longer than the {self.max_positions} positions this transformer was built for"
            )
        tokens = embedded.flatten(2).transpose(1, 2)  # [B, L, C], raster order
        x = self.drop(torch.cat([self.start.expand(b, 1, c), tokens[:, :-1]], dim=1) + self.position[:, :length])
        for block in self.blocks:
            x = block(x)
        return self.norm(x).transpose(1, 2).reshape(b, c, h, w)

    def _step_logits(self, x: torch.Tensor, caches: list[dict]) -> torch.Tensor:
        for block, cache in zip(self.blocks, caches):
            x = block(x, cache)
        y = self.norm(x[:, -1])  # [n, C]
        return self.head(y[:, :, None, None])[:, :, 0, 0]  # the 1x1-conv head on one position

    def _check_shape(self, h: int, w: int) -> None:
        if h * w > self.max_positions:
            raise UserInputError(f"cannot sample {h}x{w} maps from a transformer built for {self.max_positions} positions")

    def _fill(self, codes: torch.Tensor, choose) -> None:
        """Raster order with a key/value cache (the same distributions as ``CodePrior._fill``)."""
        n, h, w, _ = codes.shape
        flat = codes.view(n, h * w, self.depth)  # shares storage with ``codes``
        caches: list[dict] = [{} for _ in self.blocks]
        x = self.start.expand(n, 1, self.dim) + self.position[:, :1]
        for t in range(h * w):
            flat[:, t] = choose(self._step_logits(x, caches))
            if t + 1 < h * w:
                x = self.embed(flat[:, t] + self.offsets).sum(1, keepdim=True) + self.position[:, t + 1 : t + 2]
