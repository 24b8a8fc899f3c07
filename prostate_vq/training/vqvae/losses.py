"""Task losses: image MSE (+ optional L1 and 1 - SSIM), mask cross-entropy + Dice, joint = both; plus the model's aux losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import Tensor

from prostate_vq.runtime.slice_scores import SSIM_SIGMA, SSIM_WINDOW


class TaskLoss(torch.nn.Module):
    """`forward(output, batch_target) -> (total, parts)`; parts stay on device (no host syncs)."""

    def __init__(self, task: str, l1_weight: float = 0.0, dice_weight: float = 1.0, seg_weight: float = 1.0,
                 ssim_weight: float = 0.0):
        super().__init__()
        self.task = task
        self.l1_weight = float(l1_weight)
        self.ssim_weight = float(ssim_weight)

        self.dice_weight = float(dice_weight)
        self.seg_weight = float(seg_weight)
        # softmax + one-hot target inside MONAI; background excluded so the body does not dominate.
        self.dice = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, smooth_nr=1e-5, smooth_dr=1e-5)

    def forward(self, output, image: Tensor, label: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        parts: dict[str, Tensor] = {}
        if self.task in ("image", "joint"):
            recon = output.recon.float()
            parts["mse"] = F.mse_loss(recon, image)
            if self.l1_weight:
                parts["l1"] = self.l1_weight * F.l1_loss(recon, image)
            if self.ssim_weight:
                # 1 - SSIM with the metric's window: trains for the structure SSIM scores, not only for MSE
                parts["ssim"] = self.ssim_weight * (1.0 - ssim_mean(recon, image))
        if self.task in ("mask", "joint"):
            logits = output.seg_logits.float()
            parts["ce"] = self.seg_weight * F.cross_entropy(logits, label[:, 0].long())
            if self.dice_weight:
                parts["dice"] = self.seg_weight * self.dice_weight * self.dice(logits, label.long())
        for name, value in (output.aux_losses or {}).items():
            parts[f"{AUX_PREFIX}{name}"] = value.float()
        total = torch.stack(list(parts.values())).sum()
        return total, parts


def ssim_mean(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Mean SSIM of [B, 1, H, W] images, the formula and window of MONAI's SSIMMetric (11x11 Gaussian,
    sigma 1.5, valid region), differentiable. Hand-written because MONAI's SSIMLoss is about 8x slower on
    CPU (its single-channel convolutions); a test checks the two agree."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    g = torch.arange(SSIM_WINDOW, dtype=x.dtype, device=x.device) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-g.pow(2) / (2 * SSIM_SIGMA ** 2))
    g = g / g.sum()
    stats = torch.cat([x, y, x * x, y * y, x * y], 1)
    stats = F.conv2d(stats, g.view(1, 1, 1, -1).expand(5, 1, 1, -1), groups=5)
    stats = F.conv2d(stats, g.view(1, 1, -1, 1).expand(5, 1, -1, 1), groups=5)
    mx, my, xx, yy, xy = stats.unbind(1)
    var_x, var_y, cov = xx - mx * mx, yy - my * my, xy - mx * my
    ssim = (2 * mx * my + c1) * (2 * cov + c2) / ((mx * mx + my * my + c1) * (var_x + var_y + c2))
    return ssim.mean()


AUX_PREFIX = "aux_"


def split_loss(parts: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(task loss, quantizer loss) of TaskLoss parts: models are selected on the task's quality alone,
    the quantizer's auxiliary terms (codebook, commitment, entropy) are only logged."""
    task = [v for k, v in parts.items() if not k.startswith(AUX_PREFIX)]
    aux = [v for k, v in parts.items() if k.startswith(AUX_PREFIX)]
    zero = next(iter(parts.values())).new_zeros(())
    return (torch.stack(task).sum() if task else zero), (torch.stack(aux).sum() if aux else zero)
