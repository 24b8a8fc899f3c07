"""VQ-VAE models for the three tasks: `image`, `mask` (6-class one-hot in, logits out) and `joint`
(image in; one decoder reconstructs the image, a second predicts the segmentation from the same codes)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prostate_vq.data.layout import NUM_CLASSES, TASKS
from prostate_vq.errors import UserInputError
from prostate_vq.schema import defaults

from .networks import Decoder, Encoder
from .quantizers import Quantizer, QuantizerOutput, build_quantizer
from .rate import CodeLevel, bits_per_pixel

MODEL_DEFAULTS = defaults("model")  # prostate_vq.schema.ModelConfig says what each means


class ModelOutput(NamedTuple):
    """`recon` [B, 1, H, W] unbounded (None for mask), `seg_logits` [B, 6, H, W] (None for image),
    `indices` LongTensor code map, `aux_losses` already-weighted scalars, `latents` the
    pre-quantisation vectors in codebook space [B, D_code, h, w] (what ReFiT clusters).
    A NamedTuple so that torchinfo and torch.compile handle it."""

    recon: Tensor | None
    seg_logits: Tensor | None
    indices: Tensor
    aux_losses: dict[str, Tensor]
    latents: Tensor | None = None


class VQVAE(nn.Module):
    """Encoder -> quantizer -> task decoder(s)."""

    def __init__(self, model_cfg: dict, quantizer_cfg: dict, task: str):
        super().__init__()
        if task not in TASKS:
            raise UserInputError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        cfg = {**MODEL_DEFAULTS, **model_cfg}
        self.task = task
        self.downsample = int(cfg["downsample"])
        in_channels = NUM_CLASSES if task == "mask" else 1
        self._build(cfg, quantizer_cfg, in_channels)

    # --- construction (VQVAE2 overrides) -------------------------------------------------------
    def _build(self, cfg: dict, quantizer_cfg: dict, in_channels: int) -> None:
        d = int(cfg["embedding_dim"])
        net = dict(
            channels=cfg["channels"],
            downsample=self.downsample,
            res_layers=cfg["res_layers"],
            res_channels=cfg["res_channels"],
            padding_mode=cfg["padding_mode"],
        )
        up = dict(net, upsample=cfg["upsample"])
        self.encoder = Encoder(in_channels, out_channels=d, dlcr_stages=cfg["dlcr_stages"], **net)
        self.quantizer: Quantizer = build_quantizer(quantizer_cfg, d)
        self.decoder = Decoder(d, out_channels=NUM_CLASSES if self.task == "mask" else 1, **up)
        self.seg_decoder = Decoder(d, out_channels=NUM_CLASSES, **up) if self.task == "joint" else None

    def _quantize(self, x: Tensor) -> QuantizerOutput:
        return self.quantizer(self.encoder(x))

    def _features(self, indices: Tensor) -> Tensor:
        return self.quantizer.lookup(indices)

    def _decode(self, q: Tensor) -> tuple[Tensor | None, Tensor | None]:
        if self.task == "mask":
            return None, self.decoder(q)
        return self.decoder(q), (self.seg_decoder(q) if self.seg_decoder is not None else None)

    # --- public API ------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> ModelOutput:
        self._check_size(x.shape[-2:])
        out = self._quantize(x)
        recon, seg = self._decode(out.quantized)
        return ModelOutput(recon, seg, out.indices, out.losses, out.latents)

    def prepare_input(self, batch: dict) -> Tensor:
        """The network input from a dataset batch: the image, or the one-hot mask for the mask task."""
        device = next(self.parameters()).device
        if self.task == "mask":
            label = batch["label"].to(device, non_blocking=True)
            return F.one_hot(label[:, 0].long(), NUM_CLASSES).permute(0, 3, 1, 2).float()
        return batch["image"].to(device, non_blocking=True).float()

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Code map of `x` without touching codebook statistics."""
        was_training = self.training
        self.eval()
        try:
            self._check_size(x.shape[-2:])
            return self._quantize(x).indices
        finally:
            self.train(was_training)

    def decode_indices(self, indices: Tensor) -> ModelOutput:
        recon, seg = self._decode(self._features(indices))
        return ModelOutput(recon, seg, indices, {}, None)

    @property
    def num_codes(self) -> int:
        return self.quantizer.num_codes

    def code_counts(self, indices: Tensor) -> Tensor:
        return self.quantizer.code_counts(indices)

    @property
    def supports_refit(self) -> bool:
        """Whether ReFiT can re-build this model's codebook: the quantizer's capability, on one code map (the
        single path: `prostate-vq refit` asks this)."""
        return bool(self.quantizer.supports_refit)

    def code_shape(self, spatial_size: tuple[int, int]) -> tuple[int, ...]:
        """Shape of one slice's code map for an input of `spatial_size` (H, W)."""
        self._check_size(spatial_size)
        h, w = (int(s) // self.downsample for s in spatial_size)
        return self.quantizer.index_shape(h, w)

    def code_levels(self, spatial_size: tuple[int, int]) -> list[CodeLevel]:
        """The code maps of one slice of `spatial_size`, one entry per level (see models.rate)."""
        self._check_size(spatial_size)
        h, w = (int(s) // self.downsample for s in spatial_size)
        return self.quantizer.code_levels(h, w)

    def bits_per_pixel(self, spatial_size: tuple[int, int]) -> float:
        return bits_per_pixel(self.code_levels(spatial_size), spatial_size)

    def _check_size(self, size) -> None:
        """Every side a multiple of the total downsampling, with at least 2 cells of the coarsest code map (a
        model deeper than the slice codes it as one cell); the message names the nearest --spatial-size that
        works."""
        step = self.downsample * getattr(self, "extra_downsample", 1)
        if any(int(s) % step or int(s) < 2 * step for s in size):
            nearest = " ".join(str(max(2 * step, round(int(s) / step) * step)) for s in size)
            raise UserInputError(
                f"spatial size {tuple(int(s) for s in size)} must be divisible by {step} "
                f"and at least {2 * step} for this model (downsample {step}): the nearest that "
                f"works is --spatial-size {nearest}, or lower model.downsample"
            )


class VQVAE2(VQVAE):
    """Two-level hierarchy (Razavi et al. 2019): top codes at 2x the bottom's downsampling condition the
    bottom codes; the decoder sees both. `indices` is [B, 2, h, w] at the bottom grid: channel 0 the top
    codes (each repeated over its 2x2 block), channel 1 the bottom codes; `num_codes` counts both levels."""

    extra_downsample = 2

    def _build(self, cfg: dict, quantizer_cfg: dict, in_channels: int) -> None:
        d = int(cfg["embedding_dim"])
        ch = list(cfg["channels"])
        net = dict(res_layers=cfg["res_layers"], res_channels=cfg["res_channels"], padding_mode=cfg["padding_mode"])
        up = dict(net, upsample=cfg["upsample"])
        top_ch = ch[-1]
        self.encoder = Encoder(in_channels, ch, self.downsample, out_channels=top_ch, **net)
        self.encoder_top = Encoder(top_ch, [top_ch], 2, out_channels=d, **net)
        top_size = cfg.get("top_codebook_size")
        top_cfg = {**quantizer_cfg, "codebook_size": int(top_size)} if top_size else quantizer_cfg
        self.quantizer_top: Quantizer = build_quantizer(top_cfg, d)
        self.decoder_top = Decoder(d, [top_ch], 2, out_channels=d, **up)
        self.pre_bottom = nn.Conv2d(top_ch + d, d, 1)
        self.quantizer: Quantizer = build_quantizer(quantizer_cfg, d)
        self.upsample_top = nn.ConvTranspose2d(d, d, 4, stride=2, padding=1)
        out = NUM_CLASSES if self.task == "mask" else 1
        self.decoder = Decoder(2 * d, ch, self.downsample, out_channels=out, **up)
        self.seg_decoder = Decoder(2 * d, ch, self.downsample, out_channels=NUM_CLASSES, **up) if self.task == "joint" else None

    def _quantize(self, x: Tensor) -> QuantizerOutput:
        h_bottom = self.encoder(x)
        top = self.quantizer_top(self.encoder_top(h_bottom))
        bottom = self.quantizer(self.pre_bottom(torch.cat([h_bottom, self.decoder_top(top.quantized)], 1)))
        features = torch.cat([self.upsample_top(top.quantized), bottom.quantized], 1)
        losses = {f"top_{k}": v for k, v in top.losses.items()}
        losses.update({f"bottom_{k}": v for k, v in bottom.losses.items()})
        indices = torch.stack([_repeat2(top.indices), bottom.indices], 1)
        return QuantizerOutput(features, indices, losses, bottom.latents)

    def _features(self, indices: Tensor) -> Tensor:
        top = self.quantizer_top.lookup(indices[:, 0, ::2, ::2].contiguous())
        bottom = self.quantizer.lookup(indices[:, 1].contiguous())
        return torch.cat([self.upsample_top(top), bottom], 1)

    @property
    def num_codes(self) -> int:
        return self.quantizer_top.num_codes + self.quantizer.num_codes

    def code_counts(self, indices: Tensor) -> Tensor:
        return torch.cat([self.quantizer_top.code_counts(indices[:, 0, ::2, ::2]), self.quantizer.code_counts(indices[:, 1])])

    @property
    def supports_refit(self) -> bool:
        return False

    def code_shape(self, spatial_size: tuple[int, int]) -> tuple[int, ...]:
        self._check_size(spatial_size)
        h, w = (int(s) // self.downsample for s in spatial_size)
        return (2, h, w)

    def code_levels(self, spatial_size: tuple[int, int]) -> list[CodeLevel]:
        """Top codes on their own (half-resolution) grid, then the bottom codes (code_counts' order)."""
        self._check_size(spatial_size)
        h, w = (int(s) // self.downsample for s in spatial_size)
        return self.quantizer_top.code_levels(h // 2, w // 2, "top") + self.quantizer.code_levels(h, w, "bottom")


def _repeat2(indices: Tensor) -> Tensor:
    return indices.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
