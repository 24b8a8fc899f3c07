"""MONAI's `monai.networks.nets.VQVAE` encoder and decoder behind our model interface (`model.architecture:
monai`), so the stock MONAI network trains through `prostate-vq train` with any preset's recipe, selection and
evaluation. With `quantizer.kind: monai-ema` (MONAI's own EMA quantizer) it is MONAI's VQVAE as shipped; the
anchor presets `monai-stock` and `monai-stock-default-recipe` are that network under our recipes."""

from __future__ import annotations

import math

from prostate_vq.data.layout import NUM_CLASSES
from prostate_vq.errors import UserInputError

from .quantizers import build_quantizer
from .vqvae import VQVAE


class MonaiVQVAE(VQVAE):
    """One stride-2 stage per `model.channels` entry after the first log2(downsample) (MONAI's layout: channels
    per stage, residual channels equal to them, 4x4 stride-2 convolutions, ReLU)."""

    def _build(self, cfg: dict, quantizer_cfg: dict, in_channels: int) -> None:
        from monai.networks.nets import VQVAE as MonaiNet

        stages = round(math.log2(self.downsample))
        channels = list(cfg["channels"])
        channels = (channels + [channels[-1]] * stages)[:stages]  # a short list repeats its last, as ours does
        d = int(cfg["embedding_dim"])
        if cfg.get("dlcr_stages"):
            raise UserInputError("model.dlcr_stages is not available with model.architecture monai")

        def net(in_ch: int, out_ch: int):
            return MonaiNet(
                spatial_dims=2,
                in_channels=in_ch,
                out_channels=out_ch,
                channels=tuple(channels),
                num_res_layers=int(cfg["res_layers"]),
                num_res_channels=tuple(channels),
                downsample_parameters=((2, 4, 1, 1),) * stages,
                upsample_parameters=((2, 4, 1, 1, 0),) * stages,
                num_embeddings=int(quantizer_cfg.get("codebook_size", 512)),
                embedding_dim=d,
            )

        main = net(in_channels, NUM_CLASSES if self.task == "mask" else 1)
        self.encoder, self.decoder = main.encoder, main.decoder  # MONAI's quantizer is replaced by ours below
        self.quantizer = build_quantizer(quantizer_cfg, d)
        self.seg_decoder = net(in_channels, NUM_CLASSES).decoder if self.task == "joint" else None

    @property
    def supports_refit(self) -> bool:
        return False  # ReFiT is defined (and tested) on our own VQ-VAE network
