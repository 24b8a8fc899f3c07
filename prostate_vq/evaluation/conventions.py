"""The standard conventions beside our per-slice one: Dice as MONAI's DiceMetric scores it, per-case 3D Dice,
SSIM inside a region (zero padding and air inflate whole-slice SSIM), and per-patient statistics with a
bootstrap interval over patients (slices of one patient are not independent samples).

Every number says which convention made it: `DICE_CONVENTIONS` is written into metrics.json and the report.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import compute_dice

from prostate_vq.data import LABEL_NAMES
from prostate_vq.runtime.slice_scores import SSIM_WINDOW, ssim_map

PROSTATE = LABEL_NAMES.index("prostate")
DICE_CONVENTIONS = {
    "per_slice": "per slice and class, mean over slices where the class is in the reference or the prediction "
    "(a false positive on a slice without the class scores 0); keys dice_mean, dice_per_class",
    "monai": "MONAI DiceMetric(ignore_empty=True): per slice and class, slices whose reference lacks the class are "
    "not scored (false positives there are ignored); mean over scored slices; keys *_monai",
    "case3d": "per case and week: the slices stacked into a volume, Dice per class on the volume (a volume whose "
    "reference lacks the class is not scored); mean over volumes; keys *_case3d",
}
FOREGROUND_THRESHOLD = 0.02  # region for SSIM without masks: reference above this (scaled to [0, 1]), dilated
BOOTSTRAP_DRAWS = 2000


def dice_monai(pred: torch.Tensor, label: torch.Tensor, num_classes: int = len(LABEL_NAMES)) -> torch.Tensor:
    """[B, C] Dice of label maps [B, 1, H, W] with MONAI's ignore_empty convention (NaN = not scored)."""
    return compute_dice(
        pred.long().cpu(), label.long().cpu(), include_background=True, ignore_empty=True, num_classes=num_classes
    ).float()


def overlap_counts(pred: torch.Tensor, label: torch.Tensor, num_classes: int = len(LABEL_NAMES)) -> torch.Tensor:
    """[B, C, 3] (intersection, predicted, reference) voxel counts per slice and class: summed over a case's
    slices they give the Dice of the stacked volume without holding the volume."""
    classes = torch.arange(num_classes, device=pred.device).view(1, -1, 1, 1)
    p, r = pred.long() == classes, label.long() == classes
    return torch.stack([(p & r).flatten(2).sum(-1), p.flatten(2).sum(-1), r.flatten(2).sum(-1)], -1).cpu()


def dice_case3d(counts: np.ndarray, volumes: list) -> tuple[np.ndarray, list]:
    """[V, C] Dice per volume from per-slice `overlap_counts` and each slice's volume key; NaN where the
    volume's reference lacks the class. Returns (dice, volume keys in order)."""
    keys = list(dict.fromkeys(volumes))
    index = {key: i for i, key in enumerate(keys)}
    total = np.zeros((len(keys), counts.shape[1], 3))
    np.add.at(total, [index[v] for v in volumes], counts)
    inter, pred, ref = total[..., 0], total[..., 1], total[..., 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(ref > 0, 2 * inter / (pred + ref), np.nan)
    return dice, keys


def ssim_in_region(recon: torch.Tensor, image: torch.Tensor, label: torch.Tensor | None) -> torch.Tensor:
    """[B] mean of the SSIM map (runtime.slice_scores.ssim_map: the reported SSIM's own map) inside the body
    (label > 0) or, without masks, inside the reference's foreground (above FOREGROUND_THRESHOLD, dilated by
    half a window)."""
    scores = ssim_map(recon, image)
    if label is not None:
        region = (label > 0).float()
    else:
        region = F.max_pool2d((image > FOREGROUND_THRESHOLD).float(), SSIM_WINDOW, 1, SSIM_WINDOW // 2)
    half = SSIM_WINDOW // 2  # the map covers the valid region only
    region = region[..., half : region.shape[-2] - half, half : region.shape[-1] - half].to(scores.device)
    area = region.flatten(1).sum(1)
    return torch.where(area > 0, (scores * region).flatten(1).sum(1) / area.clamp(min=1), torch.full_like(area, math.nan)).cpu()


def finite_mean(values) -> float | None:
    """Mean over the finite values (NaN marks 'not scored'); None where none is."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def class_means(dice: np.ndarray, names=LABEL_NAMES) -> dict[str, float | None]:
    """Mean per class over scored rows (NaN rows skipped); None where no row is scored."""
    return {name: finite_mean(dice[:, c]) for c, name in enumerate(names)}


def foreground_mean(per_class: dict[str, float | None]) -> float | None:
    values = [v for name, v in per_class.items() if name != LABEL_NAMES[0] and v is not None]
    return float(np.mean(values)) if values else None


def bootstrap_ci(values: np.ndarray, draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> list[float] | None:
    """95% percentile bootstrap interval of the mean over patients; None with fewer than two patients."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size < 2:
        return None
    picks = np.random.default_rng(seed).integers(0, values.size, size=(draws, values.size))
    means = values[picks].mean(1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def per_patient(cases: list[str], per_slice: dict[str, np.ndarray | None], volume_dice=None) -> dict:
    """Per-patient means (each patient counts once) of per-slice metrics and of per-volume prostate Dice,
    with their mean and 95% bootstrap interval over patients."""
    patients = sorted({c for c in cases if c != ""})
    out: dict = {"n_patients": len(patients), "cases": {p: {} for p in patients}}
    if not patients:
        return out
    per_row = {
        name: (np.asarray(values, dtype=np.float64), np.asarray(cases))
        for name, values in per_slice.items()
        if values is not None
    }
    if volume_dice is not None:  # one row per (case, week) volume
        dice, keys = volume_dice
        per_row["dice_prostate_case3d"] = (np.asarray(dice[:, PROSTATE], dtype=np.float64), np.asarray([key[0] for key in keys]))
    for name, (values, owners) in per_row.items():
        patient_means = [finite_mean(values[owners == p]) for p in patients]
        for p, m in zip(patients, patient_means):
            out["cases"][p][name] = m
        means = np.asarray([math.nan if m is None else m for m in patient_means])
        out[name] = {"mean": finite_mean(means), "ci95": bootstrap_ci(means)}
    return out
