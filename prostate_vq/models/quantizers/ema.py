"""EMA codebook (van den Oord 2017 appendix; Razavi 2019) via vector-quantize-pytorch's VectorQuantize.

The library implements it faithfully: EMA cluster sizes and sums with Laplace smoothing, `decay`,
k-means init on the first batch, dead-code expiry from the current batch, cosine codes, low-dimensional
codes with in/out projections, and under torch.distributed it all-reduces the EMA statistics.
Its cross-rank sampling for k-means and dead-code replacement races (asynchronous broadcasts that are
never waited on, seen as rank-dependent codebooks under gloo), so we sample locally and broadcast the
codebook state from rank 0 after every training step instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from vector_quantize_pytorch import VectorQuantize

from .base import CODEBOOK_SIZE, Quantizer, QuantizerOutput, broadcast_buffers, no_lazy_init, to_map, to_vectors
from .registry import register_quantizer


@register_quantizer("ema")
class EMAQuantizer(Quantizer):
    """Beta-weighted commitment loss only; the codebook follows its assigned encoder outputs by EMA."""

    summary = "EMA codebook with Laplace smoothing, `decay`"
    implementation = "vector-quantize-pytorch `VectorQuantize`"
    loss_text = (
        "beta times the commitment loss only; the codebook follows an exponential moving average of "
        "the encoder outputs assigned to each code"
    )
    references = ("ema",)
    citations = {
        "ema": "A. Razavi, A. van den Oord, O. Vinyals. *Generating Diverse High-Fidelity Images with "
        "VQ-VAE-2.* NeurIPS 2019. arXiv:1906.00446"
    }
    option_limits = {
        "codebook_size": CODEBOOK_SIZE,
        "codebook_dim": {"kind": int, "minimum": 1, "maximum": 4096},
        "decay": {"maximum": 1},
        "kmeans_iters": {"minimum": 0},
    }
    supports_refit = True
    loss_weights = ("beta", "entropy_weight")
    small_options = {"codebook_size": 16, "decay": 0.8}

    def __init__(
        self,
        dim: int,
        codebook_size: int = 512,
        beta: float = 0.25,
        decay: float = 0.99,
        codebook_dim: int | None = None,
        l2_normalize: bool = False,
        entropy_weight: float = 0.0,
        dead_code_threshold: float = 0.0,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
    ):
        super().__init__()
        self.dim = dim
        self.code_dim = codebook_dim or dim
        self.codebook_size = codebook_size
        self.dead_code_threshold = float(dead_code_threshold)
        self.l2_normalize = l2_normalize
        self.vq = VectorQuantize(
            dim=dim,
            codebook_size=codebook_size,
            codebook_dim=self.code_dim,
            decay=decay,
            commitment_weight=beta,
            use_cosine_sim=l2_normalize,
            kmeans_init=kmeans_init,
            kmeans_iters=kmeans_iters,
            threshold_ema_dead_code=self.dead_code_threshold,
            codebook_diversity_loss_weight=entropy_weight,
            rotation_trick=False,  # plain straight-through, as in the paper
            accept_image_fmap=False,
            channel_last=True,
            sync_kmeans=False,
        )  # local sampling; broadcast_buffers keeps the ranks identical
        self.entropy_weight = entropy_weight

    @property
    def _codebook(self):
        return self.vq._codebook

    @property
    def cosine_codes(self) -> bool:
        """Codes compared by angle (the library's cosine codebook): ReFiT clusters on the sphere too."""
        return bool(self._codebook.use_cosine_sim)

    @property
    def codebook(self) -> Tensor:
        """Codes [K, D_code] in the space latents live in."""
        return self._codebook.embed[0]

    @torch.no_grad()
    def set_codebook(self, new_codebook: Tensor) -> None:
        """Install `new_codebook` [K', D_code] (K' may differ) with fresh EMA statistics."""
        cb = self._codebook
        new = new_codebook.detach().to(cb.embed)
        if new.ndim != 2 or new.shape[1] != self.code_dim:
            raise ValueError(f"codebook must be [K, {self.code_dim}], got {list(new.shape)}")
        if cb.use_cosine_sim:
            new = F.normalize(new, dim=1)
        k = new.shape[0]
        cb.embed = new[None].clone()
        cb.embed_avg = new[None].clone()
        cb.cluster_size = torch.ones(1, k, device=new.device)
        cb.initted.fill_(True)
        cb.codebook_size = self.vq.codebook_size = self.codebook_size = k

    def project(self, z: Tensor) -> Tensor:
        """[B, C, h, w] -> vectors [N, D_code] in codebook space."""
        x = self.vq.project_in(to_vectors(z))
        return self._codebook.transform_input(x)

    def forward(self, z: Tensor) -> QuantizerOutput:
        b, _, h, w = z.shape
        x = to_vectors(z).reshape(b, h * w, -1)
        with no_lazy_init([self._codebook], not self.training):
            q, indices, _, breakdown = self.vq(x, return_loss_breakdown=True)
        losses = {}
        if self.training:
            broadcast_buffers(self)
            losses["commitment"] = breakdown.commitment * self.vq.commitment_weight
            if self.entropy_weight > 0:
                losses["entropy"] = breakdown.codebook_diversity * self.entropy_weight
            if self.dead_code_threshold > 0:
                # the library resets expired codes' cluster size to exactly the threshold
                self.restarted += int((self._codebook.cluster_size == self.dead_code_threshold).sum())
        with torch.no_grad():
            latents = to_map(self.project(z), z)
        return QuantizerOutput(to_map(q.reshape(b * h * w, -1), z), indices.reshape(b, h, w), losses, latents)

    def lookup(self, indices: Tensor) -> Tensor:
        b, h, w = indices.shape
        q = self.vq.get_output_from_indices(indices.reshape(b, h * w))
        return q.reshape(b, h, w, -1).permute(0, 3, 1, 2)
