"""Demo phantom: determinism, HipMRI layout and quirks, image/mask agreement, variation."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from prostate_vq.data import discover, load_slice, synthesize
from prostate_vq.data.phantom import _volume, case_splits, split_sizes
from prostate_vq.errors import UserInputError


def test_split_sizes_follow_the_patient_split():
    assert split_sizes(12) == (8, 2, 2)
    assert split_sizes(4) == (2, 1, 1)
    assert list(case_splits(4).items()) == [("001", "train"), ("002", "train"), ("003", "validate"), ("004", "test")]


def test_volumes_are_deterministic_and_independent_of_case_count():
    a_img, a_lab = _volume(0, 3, 1, 4, 128)
    b_img, b_lab = _volume(0, 3, 1, 4, 128)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    c_img, _ = _volume(1, 3, 1, 4, 128)
    assert np.abs(a_img.astype(float) - c_img).mean() > 10  # another seed, another phantom


def test_synthesize_writes_hipmri_layout_with_quirks(phantom_root):
    info = json.loads((phantom_root / "phantom.json").read_text(encoding="utf-8"))
    assert info["cases"] == 4 and info["quirks"]["wide_256x144"] == ["001", 0]
    wide = nib.load(phantom_root / "keras_slices_train" / "case_001_week_0_slice_0.nii.gz")
    assert wide.shape == (256, 144)
    assert nib.load(phantom_root / "keras_slices_seg_train" / "seg_001_week_0_slice_0.nii.gz").get_data_dtype().kind == "f"
    trailing = nib.load(phantom_root / "keras_slices_train" / "case_002_week_0_slice_0.nii.gz")
    assert trailing.shape == (256, 128, 1)
    plain = nib.load(phantom_root / "keras_slices_test" / "case_004_week_0_slice_0.nii.gz")
    assert plain.shape == (256, 128)
    assert load_slice(trailing.get_filename()).shape == (256, 128)
    counts = {split: len(records) for split, records in discover(phantom_root, require_masks=True).items()}
    assert counts == {"train": 12, "validate": 6, "test": 6}


def test_masks_match_the_image():
    image, labels = _volume(0, 5, 0, 12, 128)
    image = image.astype(float)
    mean = {k: image[labels == k].mean() for k in range(6) if (labels == k).any()}
    assert set(mean) == {0, 1, 2, 3, 4, 5}
    assert mean[0] < 0.15 * mean[1]  # air is dark
    assert mean[3] > 1.5 * mean[1]  # urine is the brightest (T2)
    assert mean[4] < mean[3] and mean[2] < mean[3]
    # Organs appear where they should along the volume: bladder superior, prostate inferior.
    bladder, prostate = (labels == 3).sum(axis=(1, 2)), (labels == 5).sum(axis=(1, 2))
    assert bladder[:4].sum() > 0 and bladder[-2:].sum() == 0
    assert prostate[-5:].sum() > 0 and prostate[:2].sum() == 0


def test_variation_across_cases_weeks_and_slices():
    _, week0 = _volume(0, 2, 0, 8, 128)
    _, week1 = _volume(0, 2, 1, 8, 128)
    _, other = _volume(0, 7, 0, 8, 128)
    bladder = [(v == 3).sum() for v in (week0, week1)]
    assert abs(bladder[0] - bladder[1]) > 0.05 * max(bladder)  # bladder filling changes per week
    assert (week0 != other).mean() > 0.05
    assert (week0[0] != week0[-1]).mean() > 0.05


def test_noise_is_rician_not_clean():
    image, labels = _volume(0, 1, 0, 4, 128)
    air = image[labels == 0].astype(float)
    assert air.min() >= 0 and air.mean() > 5 and air.std() > 3  # Rician floor, not exact zeros


def test_synthesize_is_reproducible_and_refuses_non_empty_folders(tmp_path):
    a = synthesize(tmp_path / "a", cases=3, slices_per_volume=2, weeks=1)
    b = synthesize(tmp_path / "b", cases=3, slices_per_volume=2, weeks=1)
    for path in sorted(a.rglob("*.nii.gz")):
        other = b / path.relative_to(a)
        np.testing.assert_array_equal(np.asarray(nib.load(path).dataobj), np.asarray(nib.load(other).dataobj))
    with pytest.raises(UserInputError, match="not empty"):
        synthesize(a, cases=3, slices_per_volume=2, weeks=1)
    with pytest.raises(UserInputError, match="at least 3"):
        synthesize(tmp_path / "c", cases=2)
    assert not list(tmp_path.glob(".*partial*"))  # no temporary folder left behind
