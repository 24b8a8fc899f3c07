"""MRI-typical intensity augmentation from MONAI, per slice of a batch: a smooth bias field (coil
inhomogeneity), Gibbs ringing (k-space truncation), Rician noise (magnitude images) and a lower acquired
resolution (thicker or coarser scans), the ways one scanner's T2 differs from another's.

MONAI's array transforms, not our own: they are the field's reference implementations. Each slice draws its
own transforms; the draws are seeded from the batch's torch generator, so a seeded loader stays reproducible.
Applied to the image only (labels keep their geometry): the reconstruction target is the augmented slice.
"""

from __future__ import annotations

import torch
from monai.transforms import Compose, RandBiasField, RandGibbsNoise, RandRicianNoise, RandSimulateLowResolution

# Probabilities and strengths for [0, 1]-scaled T2 slices: visible, never anatomy-destroying.
MRI_AUGMENT = {
    "bias_field": {"prob": 0.3, "degree": 3, "coeff_range": (0.0, 0.1)},
    "gibbs": {"prob": 0.2, "alpha": (0.0, 0.4)},
    "rician": {"prob": 0.2, "std": 0.03, "relative": False, "sample_std": True},
    "low_resolution": {"prob": 0.2, "zoom_range": (0.5, 1.0), "upsample_mode": "bilinear"},
}


class MRIAugment:
    """``__call__(image [B, 1, H, W] in [0, 1], generator) -> image``: MONAI's MRI transforms per slice."""

    def __init__(self, settings: dict | None = None):
        s = {**MRI_AUGMENT, **(settings or {})}
        self.transform = Compose(
            [
                RandBiasField(**s["bias_field"]),
                RandGibbsNoise(**s["gibbs"]),
                RandRicianNoise(**s["rician"]),
                RandSimulateLowResolution(**s["low_resolution"]),
            ]
        )

    def __call__(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        self.transform.set_random_state(seed=seed)
        out = torch.stack([torch.as_tensor(self.transform(item.cpu()), dtype=image.dtype) for item in image])
        return out.to(image.device).clamp_(0, 1)
