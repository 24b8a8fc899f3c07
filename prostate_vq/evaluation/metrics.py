"""Per-slice metrics (MONAI where it has them) and their JSON-serialisable summaries.

Conventions, fixed here so every report means the same thing:
* SSIM and PSNR are computed on images in [0, 1] (reconstructions are clamped), data range 1; SSIM with an
  11x11 Gaussian window with sigma 1.5 (Wang et al. 2004), MONAI's SSIMMetric as runtime.slice_scores computes
  it: SSIM's one home, shared with training's validation and its SSIM loss, so the constants cannot drift.
* PSNR of a perfect slice is +inf; summaries average the finite values and count the perfect slices.
* Dice per slice and class: NaN when the class is absent from both the reference and the
  prediction (nothing to score), 0 when it is predicted but absent from the reference. A class's Dice
  is the mean over the slices where it is scored; ``dice_mean`` averages the foreground classes.
* The brief's bar: a slice passes when its SSIM > 0.6; the model passes when the mean SSIM > 0.6.
* MS-SSIM (Wang, Simoncelli & Bovik 2003; MONAI's ``MultiScaleSSIMMetric``): the standard 5 scales and
  weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), 2x2 average pooling between scales, a 7x7 Gaussian
  window with sigma 1.5 (not 11x11: MONAI needs each side // 16 > window - 1, so 11 would need 176 px and
  128x128 slices would be refused; with 7 any side of at least 112 px works, 128x128 and 256x128 included).
  Smaller slices get no MS-SSIM (null in metrics.json, an empty per_slice.csv cell).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from monai.metrics import MultiScaleSSIMMetric, PSNRMetric

from prostate_vq.data import LABEL_NAMES
from prostate_vq.files import json_float
from prostate_vq.models import code_stats
from prostate_vq.runtime.slice_scores import SSIM_WINDOW, ssim_per_slice
from prostate_vq.runtime.slice_scores import dice_per_slice as training_dice

SSIM_THRESHOLD = 0.6
MS_SSIM_WINDOW = 7
MS_SSIM_SIGMA = 1.5
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_MIN_SIDE = 16 * (MS_SSIM_WINDOW - 1) + 16  # MONAI: side // 16 > window - 1


def ms_ssim_fits(shape) -> bool:
    """Whether slices of this (H, W) are large enough for MS-SSIM at our window and scales."""
    return min(int(s) for s in shape[-2:]) >= MS_SSIM_MIN_SIDE


def ms_ssim_per_slice(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor | None:
    """MS-SSIM of each pair of ``[B, 1, H, W]`` slices in [0, 1] (clamped), or None when they are too small."""
    if not ms_ssim_fits(a.shape):
        return None
    metric = MultiScaleSSIMMetric(
        spatial_dims=2,
        data_range=1.0,
        kernel_type="gaussian",
        kernel_size=MS_SSIM_WINDOW,
        kernel_sigma=MS_SSIM_SIGMA,
        weights=MS_SSIM_WEIGHTS,
        reduction="none",
    )
    return _tensor(metric(a.detach().float().clamp(0, 1), b.detach().float().clamp(0, 1))).reshape(-1).cpu()


def _tensor(value: torch.Tensor | object) -> torch.Tensor:
    """A MONAI metric's value for one batch tensor: typed as tensor-or-sequence, a tensor for tensor input."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"expected the metric of a batch tensor, got {type(value).__name__}")
    return value


# --- per-slice values -----------------------------------------------------------------------


def reconstruction_per_slice(recon: torch.Tensor, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """SSIM, PSNR, MSE and MAE of each slice of a ``[B, 1, H, W]`` batch, recon clamped to [0, 1]."""
    if recon.shape != image.shape or recon.ndim != 4:
        raise ValueError(f"expected two [B, 1, H, W] tensors of one shape, got {tuple(recon.shape)} and {tuple(image.shape)}")
    if min(image.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs slices of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {tuple(image.shape[-2:])}")
    recon = recon.detach().float().clamp(0.0, 1.0)
    image = image.detach().float()
    diff = recon - image
    # A fresh metric object: MONAI's cumulative metrics buffer every call, a shared one would grow forever.
    psnr = PSNRMetric(max_val=1.0, reduction="none")
    out = {
        "ssim": ssim_per_slice(recon, image).cpu(),
        "psnr": _tensor(psnr(recon, image)).reshape(-1).cpu(),
        "mse": diff.pow(2).mean(dim=(1, 2, 3)).cpu(),
        "mae": diff.abs().mean(dim=(1, 2, 3)).cpu(),
    }
    ms_ssim = ms_ssim_per_slice(recon, image)
    if ms_ssim is not None:
        out["ms_ssim"] = ms_ssim
    return out


def dice_per_slice(pred: torch.Tensor, target: torch.Tensor, num_classes: int = len(LABEL_NAMES)) -> torch.Tensor:
    """Dice ``[B, C]`` of label maps ``[B, 1, H, W]`` (or ``[B, H, W]``); NaN where a class is in neither.

    The convention is the one training validates with (one implementation, so val and test agree)."""
    if pred.ndim == 3:
        pred, target = pred.unsqueeze(1), target.unsqueeze(1)
    return training_dice(pred.detach().long().cpu(), target.detach().long().cpu(), num_classes)


# --- summaries ------------------------------------------------------------------------------


@dataclass
class ReconstructionMetrics:
    ssim_mean: float
    ssim_std: float
    ssim_median: float
    ssim_min: float
    ssim_max: float
    ssim_pass_rate: float
    psnr_mean: float
    psnr_std: float
    psnr_infinite: int
    mse_mean: float
    mae_mean: float
    n_slices: int
    ssim_threshold: float = SSIM_THRESHOLD
    ms_ssim_mean: float | None = None  # None when the slices are too small for MS-SSIM (see the module docstring)
    ms_ssim_std: float | None = None

    @property
    def verdict(self) -> str:
        return "pass" if self.ssim_mean > self.ssim_threshold else "fail"

    def to_dict(self) -> dict:
        out = {k: (json_float(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}
        out["verdict"] = self.verdict
        return out


def summarize_reconstruction(values: dict[str, np.ndarray]) -> ReconstructionMetrics:
    """Summaries of per-slice arrays ``ssim``, ``psnr``, ``mse``, ``mae`` (and ``ms_ssim`` when present)."""
    ssim = np.asarray(values["ssim"], dtype=np.float64)
    if ssim.size == 0:
        raise ValueError("no slices to summarise")
    psnr = np.asarray(values["psnr"], dtype=np.float64)
    finite = psnr[np.isfinite(psnr)]
    ms_ssim = values.get("ms_ssim")
    ms_ssim = None if ms_ssim is None else np.asarray(ms_ssim, dtype=np.float64)
    return ReconstructionMetrics(
        ssim_mean=float(ssim.mean()),
        ssim_std=float(ssim.std()),
        ssim_median=float(np.median(ssim)),
        ssim_min=float(ssim.min()),
        ssim_max=float(ssim.max()),
        ssim_pass_rate=float((ssim > SSIM_THRESHOLD).mean()),
        psnr_mean=float(finite.mean()) if finite.size else math.inf,
        psnr_std=float(finite.std()) if finite.size else 0.0,
        psnr_infinite=int(psnr.size - finite.size),
        mse_mean=float(np.mean(values["mse"])),
        mae_mean=float(np.mean(values["mae"])),
        n_slices=int(ssim.size),
        ms_ssim_mean=None if ms_ssim is None else float(ms_ssim.mean()),
        ms_ssim_std=None if ms_ssim is None else float(ms_ssim.std()),
    )


@dataclass
class SegmentationMetrics:
    dice_per_class: dict[str, float | None]
    slices_scored: dict[str, int]
    dice_mean: float | None
    n_slices: int

    def to_dict(self) -> dict:
        return {
            "dice_mean": json_float(self.dice_mean),
            "dice_per_class": {k: json_float(v) for k, v in self.dice_per_class.items()},
            "dice_slices_scored": dict(self.slices_scored),
        }


def summarize_dice(dice: np.ndarray, names: tuple[str, ...] = LABEL_NAMES) -> SegmentationMetrics:
    """Class means over scored slices; ``dice_mean`` over the foreground classes (all but index 0)."""
    dice = np.asarray(dice, dtype=np.float64).reshape(-1, len(names))
    scored = ~np.isnan(dice)
    per_class: dict[str, float | None] = {}
    counts: dict[str, int] = {}
    for c, name in enumerate(names):
        counts[name] = int(scored[:, c].sum())
        per_class[name] = float(dice[scored[:, c], c].mean()) if counts[name] else None
    foreground = [v for n in names[1:] if (v := per_class[n]) is not None]
    return SegmentationMetrics(per_class, counts, float(np.mean(foreground)) if foreground else None, n_slices=int(dice.shape[0]))


@dataclass
class CodebookMetrics:
    codebook_size: int
    codes_used: int
    codebook_usage_pct: float
    perplexity: float
    code_counts: list[int] = field(repr=False)

    def to_dict(self) -> dict:
        return asdict(self)


def codebook_metrics(counts: torch.Tensor | np.ndarray) -> CodebookMetrics:
    """Usage and perplexity of the code histogram (models.code_stats: perplexity = K for uniform use of K codes,
    NaN, null in metrics.json, when no code was seen)."""
    counts = np.asarray(torch.as_tensor(counts).cpu(), dtype=np.int64).reshape(-1)
    if counts.size == 0:
        raise ValueError("empty codebook histogram")
    used = int((counts > 0).sum())
    return CodebookMetrics(
        codebook_size=int(counts.size),
        codes_used=used,
        codebook_usage_pct=100.0 * code_stats.usage(counts),
        perplexity=code_stats.perplexity(counts),
        code_counts=[int(c) for c in counts],
    )
