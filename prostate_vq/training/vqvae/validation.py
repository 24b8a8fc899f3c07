"""Validation metrics accumulated on the device (one host sync per epoch) and summed across ranks.

Conventions match prostate_vq.evaluation: SSIM on recon clamped to [0, 1], data range 1, 11x11 Gaussian
window, sigma 1.5; Dice per slice and foreground class, a class absent from both prediction and
reference is not scored, `val_dice` = mean over foreground classes of the per-class mean. A validation that
uses under 10% of the codes (of any level) is a codebook collapse, said in one warning.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from prostate_vq.data.layout import NUM_CLASSES
from prostate_vq.models import code_stats
from prostate_vq.runtime.slice_scores import dice_per_slice, ssim_per_slice

COLLAPSE_USAGE_PCT = 10.0  # validation usage below which a run warns that its codebook collapsed


class ValidationAccumulator:
    """Running sums on one device; `totals()` is a flat tensor so DDP can all-reduce it in one call."""

    def __init__(self, num_codes: int, device: torch.device, num_classes: int = NUM_CLASSES):
        self.num_codes = int(num_codes)
        self.num_classes = num_classes
        self.device = device
        self.slices = 0  # host-side counts: no device round trip per batch
        self.ssim_slices = 0
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.quantizer_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.ssim_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.dice_sum = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.dice_count = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.counts = torch.zeros(self.num_codes, dtype=torch.float64, device=device)

    def add(
        self, loss: Tensor, output, image: Tensor, label: Tensor | None, code_counts: Tensor, quantizer_loss: Tensor | None = None
    ) -> None:
        """`loss` is the task loss (what selection uses); `quantizer_loss` the auxiliary terms, logged apart."""
        n = image.shape[0]
        self.slices += n
        self.loss_sum += loss.detach().double() * n
        if quantizer_loss is not None:
            self.quantizer_sum += quantizer_loss.detach().double() * n
        if output.recon is not None:
            self.ssim_sum += ssim_per_slice(output.recon.detach(), image).double().sum()
            self.ssim_slices += n
        if output.seg_logits is not None and label is not None:
            dice = dice_per_slice(output.seg_logits.detach().argmax(1, keepdim=True), label.long(), self.num_classes)
            scored = ~torch.isnan(dice)
            self.dice_sum += torch.where(scored, dice, torch.zeros_like(dice)).sum(0).double()
            self.dice_count += scored.sum(0).double()
        self.counts += code_counts.to(self.counts.device).double()

    def totals(self) -> Tensor:
        """[loss_sum, slices, ssim_sum, ssim_slices, quantizer_sum, dice_sum (C), dice_count (C), code counts (K)]."""
        host = torch.tensor([float(self.slices), float(self.ssim_slices)], dtype=torch.float64, device=self.device)
        return torch.cat(
            [
                self.loss_sum[None],
                host[:1],
                self.ssim_sum[None],
                host[1:],
                self.quantizer_sum[None],
                self.dice_sum,
                self.dice_count,
                self.counts,
            ]
        )

    def compute(self, totals: Tensor | None = None) -> dict:
        """Final metrics from (possibly all-reduced) totals: one host transfer."""
        t = (self.totals() if totals is None else totals).cpu()
        c = self.num_classes
        loss_sum, loss_n, ssim_sum, ssim_n, quantizer_sum = t[:5].tolist()
        dice_sum, dice_count = t[5 : 5 + c], t[5 + c : 5 + 2 * c]
        counts = t[5 + 2 * c :]
        per_class = torch.where(dice_count > 0, dice_sum / dice_count.clamp(min=1), torch.full_like(dice_sum, math.nan))
        foreground = per_class[1:]
        foreground = foreground[~torch.isnan(foreground)]
        return {
            "val_loss": loss_sum / loss_n if loss_n else math.nan,
            "val_quantizer_loss": quantizer_sum / loss_n if loss_n else math.nan,
            "val_ssim": ssim_sum / ssim_n if ssim_n else math.nan,
            "val_dice": float(foreground.mean()) if foreground.numel() else math.nan,
            "val_dice_per_class": per_class.tolist(),
            "codebook_usage_pct": 100.0 * code_stats.usage(counts),  # models.code_stats: the one home of both
            "perplexity": code_stats.perplexity(counts),
            "code_counts": counts.long(),
        }


class CodebookCollapseWarning(UserWarning):
    """The validation set uses under 10% of the codes: the codebook has (nearly) collapsed."""


def warn_if_collapsed(metrics: dict, epoch: int, num_codes: int, levels: list[dict] | None = None) -> bool:
    """One warning line when the validation set uses under 10% of the codes, of any one level when the model
    has several (pooled usage hides a collapsed level: a VQ-VAE-2 whose top uses 1 code reports 50%)."""
    candidates = (
        [(lv["name"], lv["codebook_usage_pct"], lv["perplexity"], lv["codebook_size"]) for lv in levels]
        if levels and len(levels) > 1
        else []
    )
    candidates.append(("", metrics["codebook_usage_pct"], metrics["perplexity"], num_codes))
    for name, usage, perplexity, size in candidates:
        if math.isfinite(usage) and usage < COLLAPSE_USAGE_PCT:
            where = f"level {name} " if name else ""
            warnings.warn(
                f"codebook collapse: epoch {epoch} {where}uses {usage:.1f}% of {size} codes (perplexity "
                f"{perplexity:.1f}); consider the ema or l2-codes presets, dead-code restart, or ReFiT",
                CodebookCollapseWarning,
                stacklevel=2,
            )
            return True
    return False
