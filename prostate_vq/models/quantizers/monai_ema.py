"""MONAI's own EMA vector quantizer (`monai.networks.layers.EMAQuantizer`, the one inside
`monai.networks.nets.VQVAE`) behind our interface: with `model.architecture: monai` it makes the stock MONAI
VQVAE, trained by the same command, recipe and selection as every other preset (a fair anchor: differences are
then architecture and quantizer, not recipe)."""

from __future__ import annotations

from torch import Tensor

from .base import CODEBOOK_SIZE, Quantizer, QuantizerOutput
from .registry import register_quantizer


@register_quantizer("monai-ema")
class MonaiEMAQuantizer(Quantizer):
    summary = (
        "MONAI's own `EMAQuantizer` (the one inside `monai.networks.nets.VQVAE`): commitment `beta`, EMA "
        "`decay` (MONAI's default 0.5), normal initialisation"
    )
    implementation = "MONAI `monai.networks.layers.EMAQuantizer`"
    loss_text = (
        "MONAI's EMAQuantizer: beta times the commitment loss; the codebook follows an exponential moving "
        "average (decay 0.5) of the encoder outputs assigned to each code"
    )
    references = ("ema", "monai")
    option_limits = {
        "codebook_size": CODEBOOK_SIZE,
        "decay": {"maximum": 1},
        "embedding_init": {"choices": ("normal", "kaiming_uniform")},
    }
    loss_weights = ("beta",)
    small_options = {"codebook_size": 16}

    def __init__(
        self,
        dim: int,
        codebook_size: int = 512,
        beta: float = 0.25,
        decay: float = 0.5,
        epsilon: float = 1e-5,
        embedding_init: str = "normal",
    ):
        super().__init__()
        from monai.networks.layers.vector_quantizer import EMAQuantizer

        self.codebook_size = codebook_size
        # MONAI's defaults (decay 0.5, normal init); ddp_sync keeps the codebooks equal across torchrun ranks.
        self.ema = EMAQuantizer(
            spatial_dims=2,
            num_embeddings=codebook_size,
            embedding_dim=dim,
            commitment_cost=beta,
            decay=decay,
            epsilon=epsilon,
            embedding_init=embedding_init,
            ddp_sync=True,
        )

    def forward(self, z: Tensor) -> QuantizerOutput:
        quantized, loss, indices = self.ema(z.float())
        return QuantizerOutput(quantized.to(z.dtype), indices, {"commitment": loss}, z.detach())

    def lookup(self, indices: Tensor) -> Tensor:
        return self.ema.embed(indices)
