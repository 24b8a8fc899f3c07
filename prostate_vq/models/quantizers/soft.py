"""Soft quantisation (reference 003, MinVQVAE): a temperature softmax over codes while training,
the hard nearest code at evaluation.

Hand-written: vector-quantize-pytorch has no soft-assignment quantizer with a learned codebook.
The softmax works on unit vectors (cosine codes), so `temperature` has a fixed meaning: squared
distances between unit vectors lie in [0, 4], whatever the encoder's scale. (On raw distances with the
classic +-1/K code initialisation every code is equally far and the softmax is uniform: the decoder
then sees one constant vector.) Every code gets a gradient through its soft weight, so none is left
behind. With `hard_forward` (the default) the decoder sees the hard code and the gradient flows
through the soft assignment (straight-through), so training and evaluation decode the same vectors;
without it the decoder sees the soft mixture in training, as in MinVQVAE.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import QuantizerOutput, entropy_loss, to_map
from .registry import register_quantizer
from .vq import VectorQuantizer


@register_quantizer("soft")
class SoftQuantizer(VectorQuantizer):
    summary = (
        "softmax over cosine distances (unit vectors: squared distances in [0, 4], so `temperature` means "
        "the same at any encoder scale) at `temperature` in training; with `hard_forward` (default) the "
        "decoder sees the hard code and the gradient flows through the soft weights, so training and "
        "evaluation decode the same vectors; hard codes at evaluation"
    )
    implementation = "hand-written (no library equivalent)"
    loss_text = (
        "codebook and commitment losses on a softmax-weighted (soft) assignment during training; "
        "hard nearest-code assignment at evaluation"
    )
    references = ("vq",)
    option_limits = {"temperature": {"above": 0}, "l2_normalize": {"choices": (True,)}}
    supports_refit = False  # ReFiT's fine-tuning is defined for hard assignment (vq, ema)
    small_options = {"codebook_size": 16, "temperature": 0.5}

    def __init__(
        self,
        dim: int,
        codebook_size: int = 512,
        temperature: float = 0.1,
        hard_forward: bool = True,
        l2_normalize: bool = True,
        **kwargs,
    ):
        if not temperature > 0:
            raise ValueError(f"soft: temperature must be positive, got {temperature}")
        if not l2_normalize:
            raise ValueError("soft: the softmax temperature is defined on unit vectors; keep l2_normalize true")
        super().__init__(dim, codebook_size, l2_normalize=True, **kwargs)
        self.temperature = temperature
        self.hard_forward = hard_forward

    def assignment(self, x: Tensor, codebook: Tensor) -> tuple[Tensor, Tensor]:
        """(soft weights [N, K], negative squared distances [N, K]) of unit vectors `x` to unit codes."""
        neg_distance = 2 * x @ codebook.t() - 2  # -||x - e||^2 for unit vectors
        return F.softmax(neg_distance / self.temperature, dim=1), neg_distance

    def forward(self, z: Tensor) -> QuantizerOutput:
        if not self.training:
            out = super().forward(z)
            return QuantizerOutput(out.quantized, out.indices, {}, out.latents)
        x = self.project(z)
        if not bool(self.initted):
            self._kmeans_init(x.detach())
        codebook = self.codebook
        # the softmax needs every distance, so this path holds the full [N, K] matrix
        probs, neg_distance = self.assignment(x, codebook)
        indices = neg_distance.argmax(1)
        hard = F.embedding(indices, codebook)
        soft = probs @ codebook
        losses = {"codebook": F.mse_loss(hard, x.detach()), "commitment": self.beta * F.mse_loss(x, hard.detach())}
        if self.entropy_weight > 0:
            losses["entropy"] = self.entropy_weight * entropy_loss(neg_distance, self.entropy_temperature)
        if self.dead_code_threshold > 0:
            self._restart_dead_codes(x.detach(), indices)
        q = soft + (hard - soft).detach() if self.hard_forward else soft
        quantized = to_map(self.project_out(q), z)
        return QuantizerOutput(quantized, indices.reshape(z.shape[0], *z.shape[2:]), losses, to_map(x, z))
