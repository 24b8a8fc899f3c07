"""Shared machinery of the autoregressive priors: code embedding, likelihood in bits, raster sampling.

A prior sees code maps ``[B, h, w]`` (one codebook) or ``[B, h, w, depth]`` (several codes per position:
RQ levels, VQ-VAE-2 sub-codes, see ``prior/codes.py``). Positions are modelled in raster order; the codes
that share one position are predicted together from the earlier positions and are conditionally
independent of each other given them. That is a valid (if factorised) likelihood, so the bits per code
are honest, and every sample decodes.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from functools import reduce

import torch
import torch.nn.functional as F
from torch import nn

from prostate_vq.errors import UserInputError


class CodePrior(nn.Module):
    """Base class: subclasses implement ``features(embedded)``, causal in raster order."""

    arch = "base"
    offsets: torch.Tensor  # buffer: each level's first index in the shared embedding table

    def __init__(self, vocab_sizes: Sequence[int] | int, dim: int):
        super().__init__()
        if isinstance(vocab_sizes, int):
            vocab_sizes = (vocab_sizes,)
        self.vocab_sizes = tuple(int(v) for v in vocab_sizes)
        if not self.vocab_sizes or min(self.vocab_sizes) < 2:
            raise UserInputError(f"a prior needs at least 2 codes per level, got {self.vocab_sizes}")
        offsets = torch.tensor([0, *torch.tensor(self.vocab_sizes).cumsum(0)[:-1].tolist()])
        self.register_buffer("offsets", offsets, persistent=False)
        self.dim = dim
        # One table for all levels (offset indices); embeddings of a position's levels are summed.
        self.embed = nn.Embedding(sum(self.vocab_sizes), dim)
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(dim, dim, 1), nn.ReLU(), nn.Conv2d(dim, sum(self.vocab_sizes), 1))

    @property
    def depth(self) -> int:
        return len(self.vocab_sizes)

    @property
    def num_codes(self) -> int:
        return sum(self.vocab_sizes)

    @torch.no_grad()
    def init_output_bias(self, codes: torch.Tensor) -> None:
        """Start from the training codes' frequencies (log, add-one smoothed) instead of from uniform: the
        first epochs then learn spatial structure rather than the code histogram."""
        codes = self._as_4d(codes)
        biases = []
        for level, k in enumerate(self.vocab_sizes):
            counts = torch.bincount(codes[..., level].reshape(-1).cpu(), minlength=k).float() + 1.0
            biases.append(torch.log(counts / counts.sum()))
        last = self.head[-1]
        if not isinstance(last, nn.Conv2d) or last.bias is None:
            raise TypeError(f"the prior's head must end in a Conv2d with a bias, not {last}")
        last.bias.copy_(torch.cat(biases).to(last.bias.device))
        last.weight.mul_(0.1)

    # --- forward ------------------------------------------------------------------------------

    def _as_4d(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.dim() == 3:
            codes = codes.unsqueeze(-1)
        if codes.dim() != 4 or codes.shape[-1] != self.depth:
            raise UserInputError(f"expected codes [B, h, w] or [B, h, w, {self.depth}], got {tuple(codes.shape)}")
        return codes.long()

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """``[B, h, w(, depth)]`` integer codes -> ``[B, dim, h, w]``."""
        codes = self._as_4d(codes)
        return self.embed(codes + self.offsets).sum(-2).permute(0, 3, 1, 2)

    def features(self, embedded: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, sum(vocab_sizes), h, w]``; the output at a position sees only earlier positions."""
        return self.head(self.features(self.embed_codes(codes)))

    def level_logits(self, logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Split ``forward``'s logits into one ``[B, K_d, h, w]`` tensor per level."""
        return torch.split(logits, list(self.vocab_sizes), dim=1)

    def nll(self, codes: torch.Tensor, logits: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
        """Negative log-likelihood in bits per code (``reduction="none"``: bits per code, per map)."""
        codes = self._as_4d(codes)
        if logits is None:
            logits = self(codes)
        per_level = [
            F.cross_entropy(level_logits.float(), codes[..., level], reduction="none").flatten(1).sum(1)
            for level, level_logits in enumerate(self.level_logits(logits))
        ]  # [B, h, w] summed: [B]
        bits = reduce(operator.add, per_level) / (codes[0].numel() * math.log(2.0))
        return bits.mean() if reduction == "mean" else bits

    # --- sampling -----------------------------------------------------------------------------

    @property
    def receptive_rows(self) -> int | None:
        """Rows above a position that its output can depend on (None: all); sampling crops the context to them."""
        return None

    @staticmethod
    def _check_sampling(n: int, temperature: float) -> None:
        if not temperature > 0:
            raise UserInputError(f"temperature must be > 0, got {temperature}")
        if n < 1:
            raise UserInputError(f"the number of samples must be >= 1, got {n}")

    def _draw(self, logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
        """One code per level from ``[n, sum(vocab_sizes)]`` logits -> ``[n, depth]``."""
        drawn = []
        for level_logits in torch.split(logits, list(self.vocab_sizes), dim=1):
            probs = torch.softmax(level_logits.float() / temperature, dim=1)
            drawn.append(torch.multinomial(probs, 1, generator=generator))
        return torch.cat(drawn, dim=1)

    def _check_shape(self, h: int, w: int) -> None:
        """Refuse code-map sizes the network cannot produce (the transformer's positions are finite)."""

    @torch.no_grad()
    def sample(
        self,
        n: int,
        shape: Sequence[int],
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Draw ``n`` code maps of ``shape = (h, w)`` position by position in raster order.

        Returns ``[n, h, w]`` (one level) or ``[n, h, w, depth]``. Reproducible for a seeded ``generator``
        (which must live on ``device``).
        """
        self._check_sampling(n, temperature)
        h, w = (int(s) for s in shape)
        self._check_shape(h, w)
        device = torch.device(device) if device is not None else self.offsets.device
        was_training = self.training
        self.eval()
        codes = torch.zeros(n, h, w, self.depth, dtype=torch.long, device=device)
        try:
            self.fill(codes, lambda logits: self._draw(logits, temperature, generator))
        finally:
            self.train(was_training)
        return codes[..., 0] if self.depth == 1 else codes

    @torch.no_grad()
    def fill(self, codes: torch.Tensor, choose) -> None:
        """Visit ``codes`` (``[n, h, w, depth]``, all zeros) position by position in raster order: hand the
        logits ``[n, sum(vocab_sizes)]`` of the next position, computed from the codes written so far, to
        ``choose`` and write the ``[n, depth]`` codes it returns there.

        Sampling draws in ``choose``; the entropy coder (``prior/compress.py``) encodes or decodes there. Both
        directions of the coder run this same computation on the same partial maps, so the probabilities they
        see are bitwise equal and decoding is exact."""
        self._fill(codes, choose)

    def _fill(self, codes: torch.Tensor, choose) -> None:
        """The reference stepper: each step re-runs the network on the rows the next output can see
        (``receptive_rows``), which is exact because the network is causal. Subclasses visit the same
        positions with the same distributions faster."""
        h, w = codes.shape[1:3]
        for i in range(h):
            top = 0 if self.receptive_rows is None else max(0, i - self.receptive_rows)
            for j in range(w):
                logits = self(codes[:, top : i + 1])[:, :, i - top, j]  # [n, sum K]
                codes[:, i, j] = choose(logits)
