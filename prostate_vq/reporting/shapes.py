"""The shapes of the JSON files a report reads (metrics.json, samples.json), checked on reading: a file edited
by hand or written by another tool is one line naming the file and the key, never a TypeError while the
report compares or formats it.

A shape is NUMBER (int or float, not bool; None allowed: "not measured"), TEXT (any scalar), a dict of
shapes (`"*"` for the keys not named) or a one-item list (every item of that shape).
"""

from __future__ import annotations

from pathlib import Path

from prostate_vq.errors import UserInputError

NUMBER, TEXT = "a number", "a text or number"
_INTERVAL = [NUMBER]
_STAT = {"mean": NUMBER, "ci95": _INTERVAL, "n_units": NUMBER, "unit": TEXT}
METRICS = {
    "split": TEXT,
    "preset": TEXT,
    "task": TEXT,
    "checkpoint": TEXT,
    "data_root": TEXT,
    "n_slices": NUMBER,
    "spatial_size": [NUMBER],
    **{
        key: NUMBER
        for key in (
            "ssim_mean",
            "ssim_std",
            "ssim_pass_rate",
            "ssim_region_mean",
            "psnr_mean",
            "dice_mean",
            "dice_mean_monai",
            "dice_mean_case3d",
            "dice_prostate_monai",
            "codebook_size",
            "codes_used",
            "codebook_usage_pct",
            "perplexity",
            "bits_per_pixel",
            "effective_bits_per_pixel",
            "joint_codes_used",
            "joint_codes_possible",
            "joint_usage_pct",
            "joint_perplexity",
            "run_steps",
        )
    },
    **{key: {"*": NUMBER} for key in ("dice_per_class", "dice_per_class_monai", "dice_per_class_case3d", "dice_slices_scored")},
    "figures": {"*": TEXT},
    "per_patient": {"cases": {"*": {"*": NUMBER}}, "n_patients": NUMBER, "*": _STAT},
    "levels": [{"name": TEXT, "grid": [NUMBER], "*": NUMBER}],
    "baselines": {
        "codecs": {"*": {"*": None, "bpp_mean": NUMBER, "fit_pct": NUMBER, "ssim_mean": NUMBER, "psnr_mean": NUMBER}},
        "ours_minus_best": {"*": _STAT},
        "bits_per_pixel": NUMBER,
        "best": TEXT,
        "rule": TEXT,
        "*": None,
    },
}
_SIMILARITY = {"mean": NUMBER, "max": NUMBER, "*": None}
SAMPLES = {
    "n": NUMBER,
    "arch": TEXT,
    "temperature": NUMBER,
    "seed": NUMBER,
    "similarity": TEXT,
    "summary": {"nearest_train_similarity": _SIMILARITY, "*": None},
    "reference": {"nearest_train_similarity": _SIMILARITY, "*": None},
}


def check_shape(value, shape, path: str | Path, where: str = "") -> None:
    """Raise a UserInputError naming `path` and the key when `value` does not have `shape` (None: anything)."""

    def bad(expected: str):
        raise UserInputError(f"{where or 'the file'} must be {expected}, got {value!r:.80}", path)

    if shape is None or value is None:
        return
    if shape == NUMBER:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            bad(NUMBER)
    elif shape == TEXT:
        if isinstance(value, (dict, list)):
            bad(TEXT)
    elif isinstance(shape, list):
        if not isinstance(value, list):
            bad("a list")
        for k, item in enumerate(value):
            check_shape(item, shape[0], path, f"{where}[{k}]")
    elif not isinstance(value, dict):
        bad("a mapping")
    else:
        for key, item in value.items():
            if key in shape or "*" in shape:
                check_shape(item, shape.get(key, shape.get("*")), path, f"{where}.{key}" if where else str(key))
