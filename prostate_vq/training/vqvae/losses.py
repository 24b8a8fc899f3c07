"""Task losses: image MSE (+ optional L1 and 1 - SSIM), mask cross-entropy + Dice, joint = both; plus the model's aux losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import Tensor

from prostate_vq.runtime.slice_scores import ssim_mean


class TaskLoss(torch.nn.Module):
    """`forward(output, batch_target) -> (total, parts)`; parts stay on device (no host syncs)."""

    def __init__(
        self, task: str, l1_weight: float = 0.0, dice_weight: float = 1.0, seg_weight: float = 1.0, ssim_weight: float = 0.0
    ):
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
                # 1 - SSIM with the metric's window and constants (runtime.slice_scores, SSIM's one home): trains
                # for the structure SSIM scores, not only for MSE
                parts["ssim"] = self.ssim_weight * (1.0 - ssim_mean(recon, image))
        if self.task in ("mask", "joint"):
            if label is None:
                raise ValueError(f"the {self.task} task's loss needs the label maps")
            logits = output.seg_logits.float()
            parts["ce"] = self.seg_weight * F.cross_entropy(logits, label[:, 0].long())
            if self.dice_weight:
                parts["dice"] = self.seg_weight * self.dice_weight * self.dice(logits, label.long())
        for name, value in (output.aux_losses or {}).items():
            parts[f"{AUX_PREFIX}{name}"] = value.float()
        total = torch.stack(list(parts.values())).sum()
        return total, parts


AUX_PREFIX = "aux_"


def split_loss(parts: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(task loss, quantizer loss) of TaskLoss parts: models are selected on the task's quality alone,
    the quantizer's auxiliary terms (codebook, commitment, entropy) are only logged."""
    task = [v for k, v in parts.items() if not k.startswith(AUX_PREFIX)]
    aux = [v for k, v in parts.items() if k.startswith(AUX_PREFIX)]
    zero = next(iter(parts.values())).new_zeros(())
    return (torch.stack(task).sum() if task else zero), (torch.stack(aux).sum() if aux else zero)
