"""Lookup-free quantisation (Yu et al. 2023, MAGVIT-v2) via vector-quantize-pytorch's LFQ.

Each of log2(K) projected channels is binarised to +-1; the entropy loss (low per-sample entropy,
high codebook entropy) keeps the 2^dim implicit codebook in use.
"""

from __future__ import annotations

from torch import Tensor
from vector_quantize_pytorch import LFQ

from .base import Quantizer, QuantizerOutput


class LFQQuantizer(Quantizer):
    def __init__(self, dim: int, codebook_size: int = 512, entropy_weight: float = 0.1,
                 beta: float = 0.25, diversity_gamma: float = 1.0):
        super().__init__()
        if codebook_size & (codebook_size - 1):
            raise ValueError(f"LFQ needs a power-of-two codebook_size, got {codebook_size}")
        self.codebook_size = codebook_size
        self.lfq = LFQ(dim=dim, codebook_size=codebook_size, entropy_loss_weight=entropy_weight,
                       commitment_loss_weight=beta, diversity_gamma=diversity_gamma, channel_first=True)

    def forward(self, z: Tensor) -> QuantizerOutput:
        q, indices, aux = self.lfq(z)
        losses = {"lfq": aux} if self.training else {}
        return QuantizerOutput(q, indices.long(), losses, z.detach())

    def lookup(self, indices: Tensor) -> Tensor:
        return self.lfq.indices_to_codes(indices)
