"""Per-slice SSIM and Dice in the one convention training and evaluation share: the single home of SSIM.

SSIM here is Wang et al. (2004) as MONAI computes it: reconstruction clamped to [0, 1], data range
``SSIM_DATA_RANGE`` (1), an ``SSIM_WINDOW`` x ``SSIM_WINDOW`` (11x11) Gaussian window with sigma ``SSIM_SIGMA``
(1.5), stability constants ``SSIM_K1``/``SSIM_K2``, valid region only. It lives below training and evaluation
(runtime) so that training's validation, its 1 - SSIM loss and evaluation's reported SSIM all read these
constants from one place:

* ``ssim_map`` / ``ssim_per_slice``: MONAI's ``compute_ssim_and_cs`` (the function behind its ``SSIMMetric``,
  without the metric object's cumulative buffers); what validation logs and evaluation reports.
* ``ssim_mean``: the same formula and window written out with separable convolutions, differentiable, for the
  loss: MONAI's ``SSIMLoss`` is about 8x slower on CPU (its 2-D single-channel convolutions). A test checks it
  against MONAI's ``SSIMMetric``.

Dice per slice and class is NaN where a class is in neither prediction nor reference (not scored).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.metrics import compute_dice
from monai.metrics.regression import compute_ssim_and_cs
from torch import Tensor

from prostate_vq.data.layout import NUM_CLASSES

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_DATA_RANGE = 1.0
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def ssim_map(recon: Tensor, image: Tensor) -> Tensor:
    """MONAI's SSIM map [B, 1, H - 10, W - 10] (valid region) of [B, 1, H, W] slices, recon clamped to [0, 1]."""
    ssim, _ = compute_ssim_and_cs(
        recon.float().clamp(0, 1),
        image.float(),
        spatial_dims=2,
        kernel_size=(SSIM_WINDOW, SSIM_WINDOW),
        kernel_sigma=(SSIM_SIGMA, SSIM_SIGMA),
        data_range=SSIM_DATA_RANGE,
        k1=SSIM_K1,
        k2=SSIM_K2,
    )
    return ssim


def ssim_per_slice(recon: Tensor, image: Tensor) -> Tensor:
    """Mean SSIM of each slice, [B]: exactly MONAI's ``SSIMMetric(reduction="none")`` with the constants above
    (the same map, averaged per slice the same way; a test checks the two are equal)."""
    return ssim_map(recon, image).flatten(1).mean(1)


def ssim_mean(x: Tensor, y: Tensor) -> Tensor:
    """Mean SSIM of [B, 1, H, W] images, differentiable (no clamp: the loss sees the decoder's own output).
    The formula, window and constants of ``ssim_per_slice``, with two 1-D passes instead of MONAI's 2-D kernel."""
    c1, c2 = (SSIM_K1 * SSIM_DATA_RANGE) ** 2, (SSIM_K2 * SSIM_DATA_RANGE) ** 2
    g = torch.arange(SSIM_WINDOW, dtype=x.dtype, device=x.device) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-g.pow(2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    stats = torch.cat([x, y, x * x, y * y, x * y], 1)
    stats = F.conv2d(stats, g.view(1, 1, 1, -1).expand(5, 1, 1, -1), groups=5)
    stats = F.conv2d(stats, g.view(1, 1, -1, 1).expand(5, 1, -1, 1), groups=5)
    mx, my, xx, yy, xy = stats.unbind(1)
    var_x, var_y, cov = xx - mx * mx, yy - my * my, xy - mx * my
    ssim = (2 * mx * my + c1) * (2 * cov + c2) / ((mx * mx + my * my + c1) * (var_x + var_y + c2))
    return ssim.mean()


def dice_per_slice(pred: Tensor, label: Tensor, num_classes: int = NUM_CLASSES) -> Tensor:
    """Dice [B, C] of label maps [B, 1, H, W]; NaN where a class is in neither (not scored)."""
    dice = compute_dice(pred, label, include_background=True, ignore_empty=False, num_classes=num_classes).float()
    classes = torch.arange(num_classes, device=pred.device).view(1, -1, 1, 1)
    present = ((pred == classes) | (label == classes)).flatten(2).any(-1)
    return torch.where(present, dice, torch.full_like(dice, float("nan")))
