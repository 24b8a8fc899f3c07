"""Soft quantisation (reference 003, MinVQVAE): a temperature softmax over codes while training,
the hard nearest code at evaluation.

Hand-written: vector-quantize-pytorch has no soft-assignment quantizer with a learned codebook.
In training the decoder sees sum_k softmax(-||z - e_k||^2 / T) e_k, so the reconstruction loss
trains the codebook directly; the codebook and commitment losses of the hard code pull encoder
outputs and codes together so that training (soft) and evaluation (hard) agree.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import QuantizerOutput, entropy_loss, to_map
from .vq import VectorQuantizer


class SoftQuantizer(VectorQuantizer):
    def __init__(self, dim: int, codebook_size: int = 512, temperature: float = 0.1, **kwargs):
        super().__init__(dim, codebook_size, **kwargs)
        self.temperature = temperature

    def forward(self, z: Tensor) -> QuantizerOutput:
        if not self.training:
            out = super().forward(z)
            return QuantizerOutput(out.quantized, out.indices, {}, out.latents)
        x = self.project(z)
        codebook = self.codebook
        # the softmax needs every distance, so this path holds the full [N, K] matrix
        neg_distance = 2 * x @ codebook.t() - codebook.pow(2).sum(1) - x.pow(2).sum(1, keepdim=True)
        probs = F.softmax(neg_distance / self.temperature, dim=1)
        indices = neg_distance.argmax(1)
        hard = F.embedding(indices, codebook)
        losses = {"codebook": F.mse_loss(hard, x.detach()), "commitment": self.beta * F.mse_loss(x, hard.detach())}
        if self.entropy_weight > 0:
            losses["entropy"] = self.entropy_weight * entropy_loss(neg_distance, self.entropy_temperature)
        if self.dead_code_threshold > 0:
            self._restart_dead_codes(x.detach(), indices)
        quantized = to_map(self.project_out(probs @ codebook), z)
        return QuantizerOutput(quantized, indices.reshape(z.shape[0], *z.shape[2:]), losses, to_map(x, z))
