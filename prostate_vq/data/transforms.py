"""MONAI dictionary transforms for one slice, and the batched random augmentation used in training.

The deterministic part (load, channel first, intensity scaling, geometry) runs once per slice and is
cached; augmentation runs on whole batches after the cache (see ``BatchAugment``).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Compose, MapTransform, Resize, ResizeWithPadOrCrop, ScaleIntensityRange
from monai.utils import convert_to_tensor

from prostate_vq.data.nifti import load_slice
from prostate_vq.errors import DataError
from prostate_vq.schema import DEFAULT_SPATIAL_SIZE

# Per-slice robust min-max: the 0.5th and 99.5th intensity percentiles of the slice map to 0 and 1,
# values beyond are clipped. MRI has no absolute intensity scale (it changes with coil, gain and bias
# field from volume to volume), so each slice is scaled on its own; percentiles instead of min/max keep
# a few bright voxels (vessels, fat, noise spikes) from squashing the tissue contrast. Saved into every
# checkpoint so evaluation repeats exactly this scaling.
INTENSITY_SCALING = {
    "method": "percentile",
    "per": "slice",
    "lower": 0.5,
    "upper": 99.5,
    "b_min": 0.0,
    "b_max": 1.0,
    "clip": True,
}

# Slices are zoomed so that their row count equals spatial_size[0] (aspect ratio kept), then the
# columns are centre padded or cropped to spatial_size[1]. At the default 256x128 HipMRI slices are
# untouched and the one 256x144 volume loses 8 background columns on each side at its own pixel
# spacing, instead of being squeezed.
GEOMETRY = {"method": "zoom_rows_then_center_pad_crop", "pad_value": 0}


class LoadSliced(MapTransform):
    """Load ``image`` (float32) and ``label`` (uint8) slices as channel-first arrays.

    Our own loader instead of MONAI's LoadImaged: it turns every broken file into a one-line DataError
    and validates labels, and skips MetaTensor bookkeeping that a cached 2-D pipeline does not use.
    """

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            kind = "mask" if key == "label" else "image"
            d[f"{key}_path"] = str(d[key])
            d[key] = load_slice(d[key], kind)[None]
        if "label" in d and d["label"].shape != d["image"].shape:
            raise DataError(
                f"image is {_shape(d['image'])} but its mask {d['label_path']} is {_shape(d['label'])}", d["image_path"]
            )
        return d


class ScaleIntensityPercentilesd(MapTransform):
    """Per-slice percentile scaling, with a warning naming the file for a constant slice.

    The percentiles come from numpy (partition-based, ~20x faster than the torch.quantile inside MONAI's
    ScaleIntensityRangePercentiles on a 256x128 slice); MONAI's ScaleIntensityRange does the mapping.
    A constant slice (lower == upper percentile) becomes all zeros instead of a division by zero.
    """

    def __init__(self, keys, scaling: dict = INTENSITY_SCALING):
        super().__init__(keys)
        self.scaling = dict(scaling)

    def __call__(self, data):
        d = dict(data)
        s = self.scaling
        for key in self.key_iterator(d):
            image = np.asarray(d[key], dtype=np.float32)
            lo, hi = (float(v) for v in np.percentile(image, [s["lower"], s["upper"]]))
            if hi <= lo:
                warnings.warn(
                    f"{d.get(f'{key}_path', key)}: constant slice (no contrast between the "
                    f"{s['lower']}th and {s['upper']}th percentiles), scaled to zeros",
                    stacklevel=2,
                )
                d[key] = np.zeros_like(image)
            else:
                d[key] = ScaleIntensityRange(lo, hi, s["b_min"], s["b_max"], clip=s["clip"])(image)
        return d


class FitSized(MapTransform):
    """Zoom each slice (aspect ratio kept) so its row count matches, then centre pad/crop the columns.

    Masks are zoomed nearest-neighbour at pixel centres ("nearest-exact"; plain "nearest" floors and
    shifts labels by up to half an input pixel against the area-resampled image). Slices already at
    ``spatial_size`` pass through untouched.
    """

    def __init__(self, keys, spatial_size):
        super().__init__(keys)
        self.spatial_size = tuple(int(n) for n in spatial_size)

    def __call__(self, data):
        d = dict(data)
        rows, cols = self.spatial_size
        height, width = d["image"].shape[-2:]
        if (height, width) == self.spatial_size:
            return d
        size = (rows, max(1, round(width * rows / height)))
        for key in self.key_iterator(d):
            value = d[key]
            if height != rows:
                if key == "label":
                    value = Resize(size, mode="nearest-exact")(value)  # samples pixel centres
                else:  # area averaging when shrinking (no aliasing), bilinear when enlarging
                    value = Resize(size, mode="area" if rows < height else "bilinear")(value)
            if value.shape[-1] != cols:
                value = ResizeWithPadOrCrop(self.spatial_size, mode="constant", value=0)(value)
            d[key] = value
        return d


class ToCompactd(MapTransform):
    """Plain tensors for the cache: image float32, label uint8 (no MONAI metadata)."""

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            dtype = torch.uint8 if key == "label" else torch.float32
            d[key] = convert_to_tensor(d[key], dtype=dtype, track_meta=False)
        return d


def _shape(array) -> str:
    return "x".join(str(n) for n in array.shape[-2:])


class SliceCompose(Compose):
    """MONAI Compose that lets a DataError through as itself: Compose wraps every exception in a
    RuntimeError("applying transform ..."), which would turn a one-line user error into a traceback."""

    def __call__(self, data, *args, **kwargs):
        try:
            return super().__call__(data, *args, **kwargs)
        except RuntimeError as error:
            cause = error
            while cause is not None and not isinstance(cause, DataError):
                cause = cause.__cause__
            if cause is None:
                raise
            raise cause from None


def slice_transforms(spatial_size=DEFAULT_SPATIAL_SIZE, with_label: bool = True, intensity: dict | None = None) -> Compose:
    """The deterministic per-slice pipeline: dict of file paths -> dict of channel-first tensors.
    ``intensity`` replaces INTENSITY_SCALING (evaluation passes the one saved in the checkpoint)."""
    keys = ["image", "label"] if with_label else ["image"]
    return SliceCompose(
        [
            LoadSliced(keys),
            ScaleIntensityPercentilesd("image", intensity or INTENSITY_SCALING),
            FitSized(keys, spatial_size),
            ToCompactd(keys),
        ]
    )


class BatchAugment:
    """Random flips, small affine and intensity jitter on a whole batch ``[B, 1, H, W]``; with ``mri``, then
    MONAI's MRI-typical transforms per slice (``data/mri_augment.py``).

    Batched torch ops instead of per-item MONAI Rand*d transforms: per-item affine resampling costs
    about a millisecond per slice, which would cap the cached loader far below 2,000 slices/s.
    The flip is left-right only (the row axis of HipMRI slices): an anterior-posterior flip would put
    the bladder behind the rectum. Works on any device: on a GPU, leave ``dataset.augment`` unset and
    call ``BatchAugment()(image, label)`` on the batch after moving it (the CPU then only gathers).
    """

    def __init__(
        self,
        flip_prob: float = 0.5,
        affine_prob: float = 0.8,
        rotate_deg: float = 10.0,
        scale: float = 0.1,
        translate: float = 0.05,
        intensity_prob: float = 0.8,
        gamma: float = 0.25,
        contrast: float = 0.1,
        shift: float = 0.05,
        mri: bool = False,
    ):
        from prostate_vq.data.mri_augment import MRIAugment

        self.flip_prob, self.affine_prob, self.intensity_prob = flip_prob, affine_prob, intensity_prob
        self.mri = MRIAugment() if mri else None  # bias field, Gibbs ringing, Rician noise, low resolution
        self.rotate, self.scale, self.translate = math.radians(rotate_deg), scale, translate
        self.gamma, self.contrast, self.shift = gamma, contrast, shift

    def __call__(self, image: torch.Tensor, label: torch.Tensor | None = None, generator=None):
        b, h, w = image.shape[0], image.shape[-2], image.shape[-1]
        image = image.clone()
        label = None if label is None else label.clone()

        device = image.device  # random draws on the CPU (reproducible), the pixel work where the batch is

        def uniform(n, low, high):
            return (torch.rand(n, generator=generator) * (high - low) + low).to(device)

        # Geometry: flip and affine folded into one resampling, only for the slices that drew one.
        flip = torch.rand(b, generator=generator) < self.flip_prob
        affine = torch.rand(b, generator=generator) < self.affine_prob
        moved = torch.nonzero(flip | affine).flatten().to(device)
        if moved.numel():
            n = moved.numel()
            on = affine.to(device)[moved].float()
            angle = uniform(n, -self.rotate, self.rotate) * on
            zoom = 1.0 + uniform(n, -self.scale, self.scale) * on
            aspect = w / h  # rotate in pixel space, not in the unit square
            cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
            sign = 1.0 - 2.0 * flip.to(device)[moved].float()  # x -> -x along the row axis (normalised y)
            theta = torch.zeros(n, 2, 3, device=device)
            theta[:, 0, 0], theta[:, 0, 1] = cos, -sin / aspect * sign
            theta[:, 1, 0], theta[:, 1, 1] = sin * aspect, cos * sign
            theta[:, 0, 2] = uniform(n, -self.translate, self.translate) * 2 * on
            theta[:, 1, 2] = uniform(n, -self.translate, self.translate) * 2 * on
            grid = _affine_grid(theta, h, w)
            image[moved] = F.grid_sample(image[moved], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            if label is not None:
                label[moved] = F.grid_sample(
                    label[moved].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False
                ).to(label.dtype)

        # Intensity: gamma, contrast and brightness jitter (MRI gain and bias vary between scans).
        picked = torch.nonzero(torch.rand(b, generator=generator) < self.intensity_prob).flatten().to(device)
        if picked.numel():
            n = picked.numel()
            gamma = torch.exp(uniform(n, -self.gamma, self.gamma)).view(n, 1, 1, 1)
            gain = 1.0 + uniform(n, -self.contrast, self.contrast).view(n, 1, 1, 1)
            offset = uniform(n, -self.shift, self.shift).view(n, 1, 1, 1)
            values = image[picked].clamp_(0, 1).pow_(gamma).mul_(gain).add_(offset).clamp_(0, 1)
            image[picked] = values
        if self.mri is not None:
            image = self.mri(image, generator)
        return image, label


def _affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Same grid as ``F.affine_grid(theta, [B, C, H, W], align_corners=False)``, by broadcasting: the
    batched matmul inside affine_grid is about 10x slower on CPU for 2-D slices."""
    ys = (torch.arange(height, dtype=theta.dtype, device=theta.device) * 2 + 1) / height - 1
    xs = (torch.arange(width, dtype=theta.dtype, device=theta.device) * 2 + 1) / width - 1
    X, Y = xs.view(1, 1, width), ys.view(1, height, 1)
    t = theta.view(-1, 6, 1, 1)
    grid = torch.empty(theta.shape[0], height, width, 2, dtype=theta.dtype, device=theta.device)
    # Each coordinate is one broadcast add of a row term and a column term, written in place.
    torch.add(t[:, 0] * X + t[:, 2], t[:, 1] * Y, out=grid[..., 0])
    torch.add(t[:, 3] * X + t[:, 5], t[:, 4] * Y, out=grid[..., 1])
    return grid


def training_augment(geometry_and_intensity: bool, mri: bool) -> BatchAugment | None:
    """The training set's augmentation from ``training.augment`` and ``training.mri_augment`` (either alone)."""
    if not (geometry_and_intensity or mri):
        return None
    if geometry_and_intensity:
        return BatchAugment(mri=mri)
    return BatchAugment(flip_prob=0.0, affine_prob=0.0, intensity_prob=0.0, mri=True)
