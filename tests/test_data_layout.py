"""HipMRI layout: file-name parsing, pairing, discovery and its errors."""

from __future__ import annotations

import shutil

import pytest

from prostate_vq.data import SPLITS, SliceRecord, discover
from prostate_vq.data.layout import image_dir, mask_dir, parse_name, slice_name
from prostate_vq.errors import DataError


def test_parse_and_build_names_round_trip():
    assert parse_name("case_004_week_0_slice_12.nii.gz") == ("image", "004", 0, 12)
    assert parse_name("seg_004_week_7_slice_59.nii.gz") == ("mask", "004", 7, 59)
    assert parse_name("case_004_week_0_slice_1.nii") == ("image", "004", 0, 1)
    assert parse_name("case_004_slice_1.nii.gz") is None
    assert parse_name("notes.txt") is None
    assert slice_name("019", 1, 3) == "case_019_week_1_slice_3.nii.gz"
    assert slice_name("019", 1, 3, kind="mask") == "seg_019_week_1_slice_3.nii.gz"


def test_discover_pairs_images_with_masks_in_numeric_order(phantom_root):
    found = discover(phantom_root)
    assert tuple(found) == SPLITS
    assert {r.case for r in found["train"]} == {"001", "002"}
    assert {r.case for r in found["validate"]} == {"003"} and {r.case for r in found["test"]} == {"004"}
    train = found["train"]
    assert [r.slice for r in train[:6]] == [0, 1, 2, 3, 4, 5]  # numeric, not "0, 1, 10, 11"
    for record in train:
        assert isinstance(record, SliceRecord) and record.split == "train"
        assert record.mask.name == record.image.name.replace("case_", "seg_")
        assert record.mask.parent.name == "keras_slices_seg_train"


def test_discover_one_split_and_image_only(phantom_root, tmp_path):
    assert list(discover(phantom_root, "test")) == ["test"]
    root = tmp_path / "images-only"
    shutil.copytree(image_dir(phantom_root, "train"), image_dir(root, "train"))
    records = discover(root, ("train",))["train"]
    assert records and all(r.mask is None for r in records)
    with pytest.raises(DataError, match="keras_slices_seg_train"):
        discover(root, ("train",), require_masks=True)


def test_discover_errors_name_what_is_missing(phantom_root, tmp_path):
    with pytest.raises(DataError, match="not found") as error:
        discover(tmp_path / "nowhere")
    assert "nowhere" in str(error.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="keras_slices_train, keras_slices_validate, keras_slices_test"):
        discover(tmp_path / "empty")
    root = tmp_path / "partial"
    shutil.copytree(image_dir(phantom_root, "train"), image_dir(root, "train"))
    with pytest.raises(DataError, match="keras_slices_validate"):
        discover(root, ("validate",))


def test_image_without_mask_named_when_masks_required(phantom_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(phantom_root, root)
    (mask_dir(root, "test") / "seg_004_week_0_slice_2.nii.gz").unlink()
    records = discover(root, ("test",))["test"]
    assert [r.mask is None for r in records].count(True) == 1
    with pytest.raises(DataError, match="case_004_week_0_slice_2.nii.gz.*no mask"):
        discover(root, ("test",), require_masks=True)


def test_unexpected_file_names_are_errors_hidden_files_are_not(phantom_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(phantom_root, root)
    (image_dir(root, "test") / ".DS_Store").write_text("x")
    (image_dir(root, "test") / "README.txt").write_text("x")
    assert len(discover(root, ("test",))["test"]) == 6
    (image_dir(root, "test") / "scan1.nii.gz").write_bytes(b"")
    with pytest.raises(DataError, match="scan1.nii.gz.*expected case_<case>_week_<w>_slice_<k>"):
        discover(root, ("test",))
