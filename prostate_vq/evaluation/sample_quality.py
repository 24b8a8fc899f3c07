"""Sample-quality metrics of generated slices against real ones, after MONAI's generative conventions:
diversity (mean pairwise MS-SSIM among the samples, and among as many real slices: lower is more diverse, and
samples far above the real figure have collapsed), MMD (MONAI `MMDMetric`, linear kernel on the pixels) between
equally many samples and real slices, and FID when a feature network is given (evaluation.perceptual)."""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import Tensor

from prostate_vq.evaluation.metrics import MS_SSIM_MIN_SIDE, ms_ssim_fits, ms_ssim_per_slice

MAX_PAIRS = 2016  # all pairs of 64 slices; more slices are subsampled to this many pairs (fixed seed)


def pairwise_ms_ssim(images: Tensor, batch_size: int = 64) -> float | None:
    """Mean MS-SSIM over pairs of distinct slices ``[N, 1, H, W]``; None with fewer than two or small slices."""
    if len(images) < 2 or not ms_ssim_fits(images.shape):
        return None
    pairs = list(itertools.combinations(range(len(images)), 2))
    if len(pairs) > MAX_PAIRS:
        keep = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(0))[:MAX_PAIRS]
        pairs = [pairs[int(i)] for i in keep]
    first, second = (torch.tensor(side) for side in zip(*pairs))
    values = []
    for s in range(0, len(pairs), batch_size):
        batch = ms_ssim_per_slice(images[first[s : s + batch_size]], images[second[s : s + batch_size]])
        assert batch is not None  # the slices fit MS-SSIM (checked above)
        values.append(batch)
    return float(torch.cat(values).double().mean())


def mmd(samples: Tensor, real: Tensor) -> float | None:
    """MONAI's MMD between the first min(N, M) samples and real slices (it needs equal counts, at least two)."""
    from monai.metrics import MMDMetric

    n = min(len(samples), len(real))
    if n < 2:
        return None
    return float(MMDMetric()(real[:n].float(), samples[:n].float()))


def sample_quality(samples: Tensor, real: Tensor | None, fid_net=None, fid_weights=None) -> dict:
    """samples.json's ``quality``: each value null where it cannot be computed, with why in ``notes``."""
    from prostate_vq.evaluation.perceptual import features, frechet_distance, weights_id

    notes = []
    if not ms_ssim_fits(samples.shape):
        notes.append(f"diversity needs slices of at least {MS_SSIM_MIN_SIDE} px a side (MS-SSIM)")
    out: dict[str, Any] = {
        "diversity_ms_ssim": pairwise_ms_ssim(samples),
        "n_samples": len(samples),
        "diversity_ms_ssim_real": None,
        "mmd": None,
        "n_real": 0 if real is None else len(real),
        "real_split": "validate",
    }
    if real is None or len(real) < 2:
        notes.append("no validation slices to compare with")
    else:
        out.update(diversity_ms_ssim_real=pairwise_ms_ssim(real), mmd=mmd(samples, real))
    if fid_net is not None:
        out["fid"] = None if real is None else frechet_distance(features(fid_net, samples), features(fid_net, real))
        out["fid_weights"] = weights_id(fid_weights)
    out["notes"] = notes
    return out
