"""Finite scalar quantisation (Mentzer et al. 2023) via vector-quantize-pytorch's FSQ.

No codebook to learn or collapse: each of len(levels) projected channels is rounded to its own
number of levels; the implicit codebook has prod(levels) entries. No auxiliary loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor
from vector_quantize_pytorch import FSQ

from .base import Quantizer, QuantizerOutput
from .registry import register_quantizer


@register_quantizer("fsq")
class FSQQuantizer(Quantizer):
    summary = "FSQ (Mentzer 2023), `levels` (implicit codebook of prod(levels))"
    implementation = "vector-quantize-pytorch `FSQ`"
    loss_text = "none: finite scalar quantisation has an implicit, fixed codebook"
    references = ("fsq",)
    citations = {
        "fsq": "F. Mentzer, D. Minnen, E. Agustsson, M. Tschannen. *Finite Scalar Quantization: VQ-VAE "
        "Made Simple.* ICLR 2024. arXiv:2309.15505"
    }
    option_limits = {"levels": {"item_minimum": 2}}  # a level of 1 divides by zero inside FSQ
    small_options = {"levels": [5, 3]}

    def __init__(self, dim: int, levels: Sequence[int] = (8, 5, 5, 5)):
        super().__init__()
        self.levels = list(levels)
        self.codebook_size = math.prod(self.levels)
        self.fsq = FSQ(levels=self.levels, dim=dim, channel_first=True)

    def forward(self, z: Tensor) -> QuantizerOutput:
        q, indices = self.fsq(z)
        return QuantizerOutput(q, indices.long(), {}, z.detach())

    def lookup(self, indices: Tensor) -> Tensor:
        return self.fsq.indices_to_codes(indices)
