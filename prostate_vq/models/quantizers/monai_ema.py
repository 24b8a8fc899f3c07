"""MONAI's own EMA vector quantizer (`monai.networks.layers.EMAQuantizer`, the one inside
`monai.networks.nets.VQVAE`) behind our interface: with `model.architecture: monai` it makes the stock MONAI
VQVAE, trained by the same command, recipe and selection as every other preset (a fair anchor: differences are
then architecture and quantizer, not recipe)."""

from __future__ import annotations

from torch import Tensor

from .base import Quantizer, QuantizerOutput


class MonaiEMAQuantizer(Quantizer):
    def __init__(self, dim: int, codebook_size: int = 512, beta: float = 0.25, decay: float = 0.5,
                 epsilon: float = 1e-5, embedding_init: str = "normal"):
        super().__init__()
        from monai.networks.layers.vector_quantizer import EMAQuantizer

        self.codebook_size = codebook_size
        # MONAI's defaults (decay 0.5, normal init); ddp_sync keeps the codebooks equal across torchrun ranks.
        self.ema = EMAQuantizer(spatial_dims=2, num_embeddings=codebook_size, embedding_dim=dim,
                                commitment_cost=beta, decay=decay, epsilon=epsilon, embedding_init=embedding_init,
                                ddp_sync=True)

    def forward(self, z: Tensor) -> QuantizerOutput:
        quantized, loss, indices = self.ema(z.float())
        return QuantizerOutput(quantized.to(z.dtype), indices, {"commitment": loss}, z.detach())

    def lookup(self, indices: Tensor) -> Tensor:
        return self.ema.embed(indices)
