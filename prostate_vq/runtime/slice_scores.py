"""Per-slice SSIM and Dice in the one convention training's validation and evaluation share (evaluation reads
them here, below training): SSIM on the reconstruction clamped to [0, 1], data range 1, 11x11 Gaussian window,
sigma 1.5; Dice per slice and class, NaN where a class is in neither prediction nor reference (not scored)."""

from __future__ import annotations

import torch
from monai.metrics import compute_dice
from monai.metrics.regression import compute_ssim_and_cs
from torch import Tensor

from prostate_vq.data.layout import NUM_CLASSES

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def ssim_per_slice(recon: Tensor, image: Tensor) -> Tensor:
    """Mean SSIM of each slice, [B] (MONAI's SSIM, without the metric object's host-side buffers)."""
    ssim_map, _ = compute_ssim_and_cs(recon.float().clamp(0, 1), image.float(), spatial_dims=2,
                                      kernel_size=(SSIM_WINDOW, SSIM_WINDOW), kernel_sigma=(SSIM_SIGMA, SSIM_SIGMA),
                                      data_range=1.0)
    return ssim_map.flatten(1).mean(1)


def dice_per_slice(pred: Tensor, label: Tensor, num_classes: int = NUM_CLASSES) -> Tensor:
    """Dice [B, C] of label maps [B, 1, H, W]; NaN where a class is in neither (not scored)."""
    dice = compute_dice(pred, label, include_background=True, ignore_empty=False, num_classes=num_classes).float()
    classes = torch.arange(num_classes, device=pred.device).view(1, -1, 1, 1)
    present = ((pred == classes) | (label == classes)).flatten(2).any(-1)
    return torch.where(present, dice, torch.full_like(dice, float("nan")))
