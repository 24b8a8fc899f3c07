"""Task losses: image MSE (+ optional L1), mask cross-entropy + Dice, joint = both; plus the model's aux losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import Tensor


class TaskLoss(torch.nn.Module):
    """`forward(output, batch_target) -> (total, parts)`; parts stay on device (no host syncs)."""

    def __init__(self, task: str, l1_weight: float = 0.0, dice_weight: float = 1.0, seg_weight: float = 1.0):
        super().__init__()
        self.task = task
        self.l1_weight = float(l1_weight)
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
        if self.task in ("mask", "joint"):
            logits = output.seg_logits.float()
            parts["ce"] = self.seg_weight * F.cross_entropy(logits, label[:, 0].long())
            if self.dice_weight:
                parts["dice"] = self.seg_weight * self.dice_weight * self.dice(logits, label.long())
        for name, value in (output.aux_losses or {}).items():
            parts[f"aux_{name}"] = value.float()
        total = torch.stack(list(parts.values())).sum()
        return total, parts
