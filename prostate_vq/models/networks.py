"""Residual convolutional encoder/decoder (van den Oord 2017 style) and the DLCR channel-reduction head.

Plain Conv2d/ReLU stacks: every op has a channels_last kernel and there are no Python loops over
pixels or codes in the forward pass.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

# What the spatial convolutions see beyond the slice edge (nn.Conv2d's padding modes; the schema offers three).
PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]


def stage_channels(channels: list[int], downsample: int) -> list[int]:
    """One channel count per stride-2 stage (log2(downsample) of them); a short list repeats its last."""
    if downsample not in (2, 4, 8, 16):
        raise ValueError(f"downsample must be 2, 4, 8 or 16, got {downsample}")
    n = int(math.log2(downsample))
    channels = list(channels)
    return (channels + [channels[-1]] * n)[:n]


OUTPUT_INIT_SCALE = 0.1


@torch.no_grad()
def he_init(module: nn.Module, output: nn.Conv2d | nn.ConvTranspose2d | None = None) -> None:
    """He (Kaiming) normal initialisation of every convolution, zero biases; `output` (a decoder's last
    layer) scaled down so the first reconstructions are near the data. PyTorch's default initialisation
    shrinks the signal through each ReLU stage: the quantizer then sees a nearly constant map (spatial std
    0.008 on real T2 slices) and every quantizer starts with one or two codes in use."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(
                layer.weight, nonlinearity="relu", mode="fan_out" if isinstance(layer, nn.ConvTranspose2d) else "fan_in"
            )
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    if output is not None:
        output.weight.mul_(OUTPUT_INIT_SCALE)


class ResidualBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))) with a narrow hidden width."""

    def __init__(self, channels: int, hidden: int, padding_mode: PaddingMode = "zeros"):
        super().__init__()
        self.block = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, hidden, 3, padding=1, padding_mode=padding_mode),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class ResidualStack(nn.Sequential):
    def __init__(self, channels: int, hidden: int, layers: int, padding_mode: PaddingMode = "zeros"):
        super().__init__(*[ResidualBlock(channels, hidden, padding_mode) for _ in range(layers)], nn.ReLU())


class DLCRHead(nn.Module):
    """Dense layer channel reduction (reference 004): 1x1 stages, each the concatenation of a linear
    and a ReLU branch with half the input channels in total, then a 1x1 projection to `out_channels`."""

    def __init__(self, in_channels: int, out_channels: int, stages: int):
        super().__init__()
        layers, ch = [], in_channels
        for _ in range(stages):
            half = max(ch // 2, 2)
            layers.append(_DLCRStage(ch, half))
            ch = half
        self.stages = nn.Sequential(*layers)
        self.out = nn.Conv2d(ch, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.stages(x))


class _DLCRStage(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.linear = nn.Conv2d(in_channels, out_channels // 2, 1)
        self.nonlinear = nn.Sequential(nn.Conv2d(in_channels, out_channels - out_channels // 2, 1), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.linear(x), self.nonlinear(x)], dim=1)


class Encoder(nn.Module):
    """Stride-2 4x4 convolutions (one per factor of 2), residual stack, then a 1x1 (or DLCR) head.

    ``padding_mode`` (``model.padding_mode``): what the spatial convolutions see beyond the slice edge; zeros
    (the paper's) make a dark frame the network must learn to undo, replicate/reflect continue the anatomy."""

    def __init__(
        self,
        in_channels: int,
        channels: list[int],
        downsample: int,
        res_layers: int,
        res_channels: int,
        out_channels: int,
        dlcr_stages: int = 0,
        padding_mode: PaddingMode = "zeros",
    ):
        super().__init__()
        chans = stage_channels(channels, downsample)
        layers: list[nn.Module] = []
        prev = in_channels
        for ch in chans:
            layers += [nn.Conv2d(prev, ch, 4, stride=2, padding=1, padding_mode=padding_mode), nn.ReLU()]
            prev = ch
        layers.append(nn.Conv2d(prev, prev, 3, padding=1, padding_mode=padding_mode))
        layers.append(ResidualStack(prev, res_channels, res_layers, padding_mode))
        self.body = nn.Sequential(*layers)
        self.head = DLCRHead(prev, out_channels, dlcr_stages) if dlcr_stages else nn.Conv2d(prev, out_channels, 1)
        he_init(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class Decoder(nn.Module):
    """Mirror of the encoder: 3x3 conv, residual stack, stride-2 upsampling stages.

    ``upsample`` (``model.upsample``): ``transposed`` (4x4 stride-2 transposed convolutions, the paper's) or
    ``nearest`` (nearest-neighbour x2 then a 3x3 convolution, as in the VQGAN/diffusers decoders: no
    checkerboard from uneven kernel overlap, and it honours ``padding_mode`` at the edge)."""

    def __init__(
        self,
        in_channels: int,
        channels: list[int],
        downsample: int,
        res_layers: int,
        res_channels: int,
        out_channels: int,
        padding_mode: PaddingMode = "zeros",
        upsample: str = "transposed",
    ):
        super().__init__()
        if upsample not in ("transposed", "nearest"):
            raise ValueError(f"upsample must be transposed or nearest, got {upsample!r}")
        chans = stage_channels(channels, downsample)[::-1]
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, chans[0], 3, padding=1, padding_mode=padding_mode),
            ResidualStack(chans[0], res_channels, res_layers, padding_mode),
        ]
        conv: nn.Conv2d | nn.ConvTranspose2d | None = None
        for i, ch in enumerate(chans):
            last = i == len(chans) - 1
            nxt = out_channels if last else chans[i + 1]
            if upsample == "nearest":
                conv = nn.Conv2d(ch, nxt, 3, padding=1, padding_mode=padding_mode)
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), conv]
            else:
                conv = nn.ConvTranspose2d(ch, nxt, 4, stride=2, padding=1)
                layers.append(conv)
            if not last:
                layers.append(nn.ReLU())
        self.body = nn.Sequential(*layers)
        he_init(self, output=conv)  # the last stage's convolution: the decoder's output layer

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)
