"""The HipMRI folder layout: split folders, file names, and pairing images with masks.

HipMRI ships 2-D NIfTI slices in ``keras_slices_<split>`` (images) and ``keras_slices_seg_<split>``
(masks); ``case_004_week_0_slice_12.nii.gz`` pairs with ``seg_004_week_0_slice_12.nii.gz``.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from prostate_vq.errors import DataError

LABEL_NAMES = ("background", "body", "bones", "bladder", "rectum", "prostate")
NUM_CLASSES = len(LABEL_NAMES)
TASKS = ("image", "mask", "joint")  # image: reconstruct the slice; mask: the 6-class mask; joint: image in, both out
SPLITS = ("train", "validate", "test")

# Case ids are letters/digits/hyphens so that the underscore-separated name parses back unambiguously.
CASE_ID = re.compile(r"^[A-Za-z0-9-]+$")
_NAME = re.compile(r"^(?P<kind>case|seg)_(?P<case>[A-Za-z0-9-]+)_week_(?P<week>\d+)_slice_(?P<slice>\d+)\.nii(?:\.gz)?$")


@dataclass(frozen=True)
class SliceRecord:
    image: Path
    mask: Path | None
    case: str
    week: int
    slice: int
    split: str

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.case, self.week, self.slice)


def image_dir(root: str | Path, split: str) -> Path:
    return Path(root) / f"keras_slices_{split}"


def mask_dir(root: str | Path, split: str) -> Path:
    return Path(root) / f"keras_slices_seg_{split}"


def slice_name(case: str, week: int, index: int, kind: str = "image") -> str:
    prefix = "seg" if kind == "mask" else "case"
    return f"{prefix}_{case}_week_{int(week)}_slice_{int(index)}.nii.gz"


def parse_name(name: str) -> tuple[str, str, int, int] | None:
    """``(kind, case, week, slice)`` for a HipMRI file name, ``None`` for anything else."""
    match = _NAME.match(name)
    if match is None:
        return None
    kind = "mask" if match["kind"] == "seg" else "image"
    return kind, match["case"], int(match["week"]), int(match["slice"])


def _case_order(case: str):
    # Numeric ids sort as numbers (9 before 10) whatever their zero padding.
    return (0, int(case), case) if case.isdigit() else (1, 0, case)


def _sort_key(key: tuple[str, int, int]):
    return (_case_order(key[0]), key[1], key[2])


def _is_nifti(path: Path) -> bool:
    return path.is_file() and (path.name.endswith(".nii.gz") or path.name.endswith(".nii"))


class SkippedFilesWarning(UserWarning):
    """A split folder holds entries that are not slice files (folders, broken or looping links, other files)."""


def _skip_reason(path: Path) -> str | None:
    """Why a visible entry of a split folder is not read as a slice (None: it is a NIfTI file)."""
    if path.is_symlink() and not path.exists():
        return "broken or looping links"
    if path.is_dir():
        return "folders"
    return None if _is_nifti(path) else "files that are not NIfTI (.nii, .nii.gz)"


def _scan(folder: Path, expected_kind: str) -> dict[tuple[str, int, int], Path]:
    found: dict[tuple[str, int, int], Path] = {}
    pattern = "case_<case>_week_<w>_slice_<k>.nii.gz" if expected_kind == "image" else "seg_<case>_week_<w>_slice_<k>.nii.gz"
    skipped: dict[str, int] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue  # hidden files (.DS_Store, our temporaries): never slices
        reason = _skip_reason(path)
        if reason is not None:  # notes, thumbnails, sub-folders: not slices, and the user is told how many
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        parsed = parse_name(path.name)
        if parsed is None or parsed[0] != expected_kind:
            raise DataError(f"unexpected file name in {folder.name}, expected {pattern}", path)
        key = parsed[1:]
        if key in found:
            raise DataError(f"duplicate slice (also {found[key].name})", path)
        found[key] = path
    if skipped:
        warnings.warn(
            f"{folder}: skipped {sum(skipped.values())} entries that are not slice files ("
            + ", ".join(f"{n} {reason}" for reason, n in skipped.items())
            + ")",
            SkippedFilesWarning,
            stacklevel=3,
        )
    return found


def present_splits(root: str | Path) -> tuple[str, ...]:
    return tuple(split for split in SPLITS if image_dir(root, split).is_dir())


# Where the slice folders sit inside the HipMRI download (HipMRI_Study_open/keras_slices_data/keras_slices_*),
# so that --data may point at the download root or the folder above it.
DOWNLOAD_SUBFOLDERS = ("keras_slices_data", "HipMRI_Study_open/keras_slices_data")
_announced: set[Path] = set()


def resolve_root(root: str | Path) -> Path:
    """The folder holding keras_slices_*: `root` itself, or its keras_slices_data/ when `root` is the
    download root (said once per folder, on the prostate_vq.data logger)."""
    root = Path(root).expanduser()
    if not root.is_dir() or present_splits(root):
        return root
    for sub in DOWNLOAD_SUBFOLDERS:
        inner = root / sub
        if inner.is_dir() and present_splits(inner):
            if inner not in _announced:
                _announced.add(inner)
                logging.getLogger("prostate_vq.data").info("using the slices in %s", inner)
            return inner
    return root


def check_root(root: str | Path) -> Path:
    """The dataset root (the download root resolves to its keras_slices_data/), or a DataError that says
    what is missing."""
    root = resolve_root(root)
    if not root.exists():
        raise DataError("data folder not found", root)
    if not root.is_dir():
        raise DataError("not a folder (expected a HipMRI root with keras_slices_* folders)", root)
    if not present_splits(root):
        expected = ", ".join(f"keras_slices_{s}" for s in SPLITS)
        raise DataError(f"no HipMRI layout: expected folders {expected} (masks in keras_slices_seg_<split>)", root)
    return root


def discover(root: str | Path, splits=SPLITS, require_masks: bool = False) -> dict[str, list[SliceRecord]]:
    """Every slice of the requested splits, sorted by case, week and slice, paired with its mask.

    A split without a ``keras_slices_seg_<split>`` folder is image-only (masks are ``None``), which is
    valid for the image task; ``require_masks`` turns a missing mask into an error naming the image.
    """
    root = check_root(root)
    if isinstance(splits, str):
        splits = (splits,)
    result: dict[str, list[SliceRecord]] = {}
    for split in splits:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        images_folder, masks_folder = image_dir(root, split), mask_dir(root, split)
        if not images_folder.is_dir():
            raise DataError(f"missing folder for split {split!r}", images_folder)
        images = _scan(images_folder, "image")
        if not images:
            raise DataError("no slices found (expected case_<case>_week_<w>_slice_<k>.nii.gz files)", images_folder)
        masks = _scan(masks_folder, "mask") if masks_folder.is_dir() else {}
        if require_masks and not masks_folder.is_dir():
            raise DataError(f"missing mask folder for split {split!r} (this task needs masks)", masks_folder)
        records = []
        for key in sorted(images, key=_sort_key):
            mask = masks.get(key)
            if mask is None and require_masks:
                raise DataError(
                    f"image has no mask ({slice_name(*key, kind='mask')} missing in {masks_folder.name})", images[key]
                )
            records.append(SliceRecord(images[key], mask, key[0], key[1], key[2], split))
        result[split] = records
    return result


def orphan_masks(root: str | Path, split: str) -> list[Path]:
    """Masks whose image is missing (reported by ``manifest --check``)."""
    masks_folder = mask_dir(root, split)
    if not masks_folder.is_dir():
        return []
    images = _scan(image_dir(root, split), "image") if image_dir(root, split).is_dir() else {}
    return [
        path for key, path in sorted(_scan(masks_folder, "mask").items(), key=lambda kv: _sort_key(kv[0])) if key not in images
    ]
