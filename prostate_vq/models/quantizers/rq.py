"""Residual quantisation (RQ-VAE, Lee et al. 2022) via vector-quantize-pytorch's ResidualVQ.

`depth` EMA codebooks quantise the successive residuals; the codes of a position are its `depth`
indices, returned as [B, depth, h, w] (coarse to fine). As in the paper, one straight-through estimator
carries the gradient past the summed codes: the library's per-level estimators would multiply the
encoder's gradient by the depth.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from vector_quantize_pytorch import ResidualVQ

from prostate_vq.models.rate import CodeLevel

from .base import (
    CODEBOOK_SIZE,
    Quantizer,
    QuantizerOutput,
    broadcast_buffers,
    code_counts,
    no_lazy_init,
    to_map,
    to_vectors,
)
from .registry import register_quantizer


@register_quantizer("rq")
class ResidualQuantizer(Quantizer):
    summary = (
        "RQ-VAE (Lee 2022), `depth` EMA codebooks on successive residuals, one straight-through estimator "
        "on the sum of the codes (the library's one per level would multiply the encoder's gradient by the "
        "depth)"
    )
    implementation = "vector-quantize-pytorch `ResidualVQ`"
    loss_text = "commitment losses of every residual level; codebooks updated by EMA"
    references = ("rq",)
    citations = {
        "rq": "D. Lee, C. Kim, S. Kim, M. Cho, W.-S. Han. *Autoregressive Image Generation using Residual "
        "Quantization.* CVPR 2022. arXiv:2203.01941"
    }
    option_limits = {
        "codebook_size": CODEBOOK_SIZE,
        "depth": {"maximum": 64},
        "codebook_dim": {"kind": int, "minimum": 1, "maximum": 4096},
        "decay": {"maximum": 1},
    }
    loss_weights = ("beta",)
    small_options = {"codebook_size": 16, "depth": 3}

    def __init__(
        self,
        dim: int,
        codebook_size: int = 512,
        depth: int = 4,
        beta: float = 0.25,
        decay: float = 0.99,
        codebook_dim: int | None = None,
        l2_normalize: bool = False,
        dead_code_threshold: float = 0.0,
        kmeans_init: bool = False,
        shared_codebook: bool = False,
    ):
        super().__init__()
        if codebook_dim not in (None, dim):
            raise ValueError(
                "rq: codebook_dim must equal the embedding dimension (one straight-through "
                "estimator on the sum of the codes needs codes in the encoder's space)"
            )
        self.depth = depth
        self.level_size = codebook_size
        self.codebook_size = codebook_size
        self.dead_code_threshold = float(dead_code_threshold)
        self.rvq = ResidualVQ(
            dim=dim,
            num_quantizers=depth,
            codebook_size=codebook_size,
            codebook_dim=codebook_dim,
            shared_codebook=shared_codebook,
            decay=decay,
            commitment_weight=beta,
            use_cosine_sim=l2_normalize,
            kmeans_init=kmeans_init,
            threshold_ema_dead_code=self.dead_code_threshold,
            rotation_trick=False,  # plain straight-through; replaced by one on the sum in forward()
            sync_kmeans=False,
        )  # the library's cross-rank sampling races; see ema.py

    @property
    def num_codes(self) -> int:
        return self.depth * self.level_size

    def code_counts(self, indices: Tensor) -> Tensor:
        """Level l's code k counts as code l*K + k, so usage covers every level's codebook."""
        offsets = torch.arange(self.depth, device=indices.device).view(1, -1, 1, 1) * self.level_size
        return code_counts(indices + offsets, self.num_codes)

    def index_shape(self, h: int, w: int) -> tuple[int, ...]:
        return (self.depth, h, w)

    def code_levels(self, h: int, w: int, prefix: str = "") -> list[CodeLevel]:
        """One level per residual depth (coarse to fine), each with its own codebook."""
        return [CodeLevel(f"{prefix or 'rq'}{i + 1}", (h, w), int(self.level_size)) for i in range(self.depth)]

    def forward(self, z: Tensor) -> QuantizerOutput:
        b, _, h, w = z.shape
        x = to_vectors(z).reshape(b, h * w, -1)
        with no_lazy_init([layer._codebook for layer in self.rvq.layers], not self.training):
            q, indices, commit = self.rvq(x)
        if self.training:
            q = x + (q - x).detach()  # one straight-through on the sum (RQ-VAE, Lee et al. 2022)
        losses = {"commitment": commit.sum()} if self.training else {}
        if self.training:
            broadcast_buffers(self)
        if self.training and self.dead_code_threshold > 0:
            for layer in self.rvq.layers:
                self.restarted += int((layer._codebook.cluster_size == self.dead_code_threshold).sum())
        indices = indices.reshape(b, h, w, self.depth).permute(0, 3, 1, 2)
        return QuantizerOutput(to_map(q.reshape(b * h * w, -1), z), indices, losses, z.detach())

    def lookup(self, indices: Tensor) -> Tensor:
        """The sum of each level's code (the library's get_output_from_indices, written out: its einops packing
        bakes the grid size into a torch.jit trace, and the exported decoder must take any size)."""
        codebooks = self.rvq.codebooks  # [depth, K, D]: every level has the same codebook size here
        q = sum(F.embedding(indices[:, level], codebooks[level]) for level in range(self.depth))
        return self.rvq.project_out(q).permute(0, 3, 1, 2)
