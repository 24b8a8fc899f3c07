"""Classic VQ-VAE quantizer (van den Oord et al. 2017) with the codebook options of the literature.

Hand-written: vector-quantize-pytorch's learnable codebook has a single loss weight, while the paper
(and our model100..105 grid) needs a separate codebook loss and a beta-weighted commitment loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import (
    CODEBOOK_SIZE,
    Quantizer,
    QuantizerOutput,
    entropy_loss,
    is_distributed,
    nearest_code,
    to_map,
    to_vectors,
)
from .registry import register_quantizer


def kmeans(samples: Tensor, k: int, iters: int, cosine: bool) -> Tensor:
    """k-means centroids [k, D] of `samples` [N, D] (the library's batched k-means, one codebook)."""
    from vector_quantize_pytorch.vector_quantize_pytorch import kmeans as _kmeans

    means, _ = _kmeans(samples.float()[None], k, iters, use_cosine_sim=cosine)
    return means[0]


@register_quantizer("vq")
class VectorQuantizer(Quantizer):
    """Nearest-code quantisation with codebook loss + beta * commitment loss, straight-through gradients.

    Options: `codebook_dim` (low-dimensional factorised codes with linear in/out projections),
    `l2_normalize` (cosine codes), `entropy_weight` (codebook entropy regulariser),
    `dead_code_threshold` (restart codes whose usage EMA falls below it from random current encoder
    outputs), `kmeans_init` (codebook = k-means of the first training batch).
    """

    summary = "van den Oord 2017: codebook loss + `beta` x commitment, straight-through"
    implementation = "hand-written (the library's learnable codebook has one loss weight)"
    loss_text = "codebook loss ||sg[z_e] - e||² plus beta times the commitment loss ||z_e - sg[e]||² (straight-through gradients)"
    references = ("vq",)
    citations = {
        "vq": "A. van den Oord, O. Vinyals, K. Kavukcuoglu. *Neural Discrete Representation Learning.* "
        "NeurIPS 2017. arXiv:1711.00937"
    }
    option_limits = {
        "codebook_size": CODEBOOK_SIZE,
        "codebook_dim": {"kind": int, "minimum": 1, "maximum": 4096},
        "entropy_temperature": {"above": 0},
        "decay": {"maximum": 1},
        "kmeans_iters": {"minimum": 0},
    }
    supports_refit = True
    loss_weights = ("beta", "entropy_weight")
    small_options = {"codebook_size": 16}

    # Buffers (register_buffer in __init__), declared so that they read as tensors rather than nn.Module attributes.
    usage_ema: Tensor
    initted: Tensor

    def __init__(
        self,
        dim: int,
        codebook_size: int = 512,
        beta: float = 0.25,
        codebook_dim: int | None = None,
        l2_normalize: bool = False,
        entropy_weight: float = 0.0,
        entropy_temperature: float = 0.01,
        dead_code_threshold: float = 0.0,
        decay: float = 0.99,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
    ):
        super().__init__()
        self.dim = dim
        self.code_dim = codebook_dim or dim
        self.codebook_size = codebook_size
        self.beta = beta
        self.l2_normalize = l2_normalize
        self.entropy_weight = entropy_weight
        self.entropy_temperature = entropy_temperature
        self.dead_code_threshold = dead_code_threshold
        self.decay = decay
        self.kmeans_iters = kmeans_iters
        self.project_in = nn.Linear(dim, self.code_dim) if self.code_dim != dim else nn.Identity()
        self.project_out = nn.Linear(self.code_dim, dim) if self.code_dim != dim else nn.Identity()
        self.embedding = nn.Parameter(self._initial_codebook(codebook_size))
        # Usage starts at the threshold (vector-quantize-pytorch starts its cluster sizes at 1): from 0, the first
        # step's EMA (1 - decay) x count sat below the threshold for nearly every code in use, and all restarted.
        self.register_buffer("usage_ema", torch.full((codebook_size,), float(dead_code_threshold)))
        self.register_buffer("initted", torch.tensor(not kmeans_init))

    def _initial_codebook(self, k: int) -> Tensor:
        if self.l2_normalize:
            return F.normalize(torch.randn(k, self.code_dim), dim=1)
        return torch.empty(k, self.code_dim).uniform_(-1.0 / k, 1.0 / k)

    # --- ReFiT -------------------------------------------------------------------------------
    @property
    def cosine_codes(self) -> bool:
        """Codes compared by angle (unit vectors): ReFiT's k-means must cluster on the sphere too."""
        return bool(self.l2_normalize)

    @property
    def codebook(self) -> Tensor:
        """Codes [K, D_code] in the space latents live in (unit vectors for cosine codes)."""
        e = self.embedding
        return F.normalize(e, dim=1) if self.l2_normalize else e

    @torch.no_grad()
    def set_codebook(self, new_codebook: Tensor) -> None:
        """Install `new_codebook` [K', D_code] (K' may differ): rebuild the optimizer afterwards."""
        new_codebook = new_codebook.detach().to(self.embedding)
        if new_codebook.ndim != 2 or new_codebook.shape[1] != self.code_dim:
            raise ValueError(f"codebook must be [K, {self.code_dim}], got {list(new_codebook.shape)}")
        self.codebook_size = new_codebook.shape[0]
        self.embedding = nn.Parameter(new_codebook.clone())
        self.usage_ema = torch.full((self.codebook_size,), max(self.dead_code_threshold, 1.0), device=new_codebook.device)
        self.initted.fill_(True)

    # --- forward -----------------------------------------------------------------------------
    def project(self, z: Tensor) -> Tensor:
        """[B, C, h, w] -> vectors [N, D_code] in codebook space."""
        x = self.project_in(to_vectors(z))
        return F.normalize(x, dim=1) if self.l2_normalize else x

    def forward(self, z: Tensor) -> QuantizerOutput:
        x = self.project(z)
        if self.training and not bool(self.initted):
            self._kmeans_init(x.detach())
        codebook = self.codebook
        indices = nearest_code(x, codebook)
        q = F.embedding(indices, codebook)
        losses = {"codebook": F.mse_loss(q, x.detach()), "commitment": self.beta * F.mse_loss(x, q.detach())}
        if self.entropy_weight > 0:
            neg_distance = 2 * x @ codebook.t() - codebook.pow(2).sum(1)
            losses["entropy"] = self.entropy_weight * entropy_loss(neg_distance, self.entropy_temperature)
        if self.training and self.dead_code_threshold > 0:
            self._restart_dead_codes(x.detach(), indices)
        q = x + (q - x).detach()  # straight-through estimator
        quantized = to_map(self.project_out(q), z)
        return QuantizerOutput(quantized, indices.reshape(z.shape[0], *z.shape[2:]), losses, to_map(x, z))

    def lookup(self, indices: Tensor) -> Tensor:
        q = self.project_out(F.embedding(indices, self.codebook))
        return q.permute(0, 3, 1, 2)

    # --- codebook maintenance (identical on every rank under torch.distributed) ---------------
    @torch.no_grad()
    def _kmeans_init(self, x: Tensor) -> None:
        centroids = kmeans(x, self.codebook_size, self.kmeans_iters, self.l2_normalize)
        if is_distributed():
            torch.distributed.broadcast(centroids, src=0)
        self.embedding.data.copy_(centroids)
        self.initted.fill_(True)

    @torch.no_grad()
    def _restart_dead_codes(self, x: Tensor, indices: Tensor) -> None:
        """Move codes whose usage EMA fell below the threshold onto current encoder outputs, drawn at
        random with probability proportional to their squared quantisation error (k-means++ style), so
        restarted codes land where the data is badly served rather than on duplicates of busy codes."""
        counts = torch.bincount(indices, minlength=self.codebook_size).float()
        if is_distributed():
            torch.distributed.all_reduce(counts)
        self.usage_ema.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        dead = self.usage_ema < self.dead_code_threshold
        n = int(dead.sum())
        if n == 0:
            return
        error = (x - self.codebook.detach()[indices]).pow(2).sum(1)
        weights = error if float(error.sum()) > 0 else torch.ones_like(error)
        picks = x[torch.multinomial(weights, n, replacement=n > x.shape[0])]
        if is_distributed():
            torch.distributed.broadcast(picks, src=0)
        self.embedding.data[dead] = picks.to(self.embedding.dtype)
        self.usage_ema[dead] = self.dead_code_threshold
        self.restarted += n
