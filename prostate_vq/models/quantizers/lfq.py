"""Lookup-free quantisation (Yu et al. 2023, MAGVIT-v2) via vector-quantize-pytorch's LFQ.

Each of log2(K) projected channels is binarised to +-1; the entropy loss (low per-sample entropy,
high codebook entropy) keeps the 2^dim implicit codebook in use.
"""

from __future__ import annotations

from torch import Tensor
from vector_quantize_pytorch import LFQ

from .base import CODEBOOK_SIZE, Quantizer, QuantizerOutput
from .registry import register_quantizer


@register_quantizer("lfq")
class LFQQuantizer(Quantizer):
    summary = "LFQ (Yu 2023), log2(K) binary channels, `entropy_weight`"
    implementation = "vector-quantize-pytorch `LFQ`"
    loss_text = "commitment loss plus an entropy term that spreads codes over the binary codebook"
    references = ("lfq",)
    citations = {
        "lfq": "L. Yu et al. *Language Model Beats Diffusion: Tokenizer is Key to Visual Generation.* ICLR 2024. arXiv:2310.05737"
    }
    # log2(K) binary channels: K must be a power of two (checked with the config, before any data loads)
    option_limits = {"codebook_size": {**CODEBOOK_SIZE, "minimum": 2, "power_of_two": True}}
    loss_weights = ("beta", "entropy_weight")
    small_options = {"codebook_size": 16}
    onnx_unsupported = (
        "lfq: not exported to ONNX: LFQ's code lookup uses a bitwise AND on integer tensors, which "
        "torch.onnx cannot export (the TorchScript files and the safetensors weights cover this model)"
    )

    def __init__(
        self, dim: int, codebook_size: int = 512, entropy_weight: float = 0.1, beta: float = 0.25, diversity_gamma: float = 1.0
    ):
        super().__init__()
        if codebook_size & (codebook_size - 1):
            raise ValueError(f"LFQ needs a power-of-two codebook_size, got {codebook_size}")
        self.codebook_size = codebook_size
        self.lfq = LFQ(
            dim=dim,
            codebook_size=codebook_size,
            entropy_loss_weight=entropy_weight,
            commitment_loss_weight=beta,
            diversity_gamma=diversity_gamma,
            channel_first=True,
        )

    def forward(self, z: Tensor) -> QuantizerOutput:
        q, indices, aux = self.lfq(z)
        losses = {"lfq": aux} if self.training else {}
        return QuantizerOutput(q, indices.long(), losses, z.detach())

    def lookup(self, indices: Tensor) -> Tensor:
        return self.lfq.indices_to_codes(indices)
