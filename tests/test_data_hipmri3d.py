"""The HipMRI download: --data at the download root, and the 3D release imported in one command."""

from __future__ import annotations

import csv
import shutil

import nibabel as nib
import numpy as np
import pytest

from prostate_vq.cli import main
from prostate_vq.data import make_dataset
from prostate_vq.data.hipmri3d import pair_volumes, parse_volume_name
from prostate_vq.data.layout import discover
from prostate_vq.errors import DataError


def test_data_may_point_at_the_download_root(phantom_root, tmp_path, capsys):
    download = tmp_path / "HipMRI_Study_open"
    shutil.copytree(phantom_root, download / "keras_slices_data")
    (download / "semantic_MRs").mkdir()
    assert main(["manifest", "--data", str(download), "--check"]) == 0
    assert "using the slices in" in capsys.readouterr().err  # it says which folder it used
    assert len(make_dataset(download, "test", "image", spatial_size=(64, 32))) == 6
    assert discover(tmp_path)["train"]  # the folder above the download works too


def _volume(path, labels=False, slices=3):
    data = np.zeros((16, 12, slices), np.float32)
    data[4:12, 3:9] = 2.0 if labels else 100.0
    if not labels:
        data += np.random.default_rng(0).random(data.shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data.astype(np.uint8) if labels else data, np.eye(4)), path)


@pytest.fixture
def release(tmp_path):
    root = tmp_path / "HipMRI_Study_open"
    (root / "semantic_MRs").mkdir(parents=True)
    (root / "semantic_labels_only").mkdir()
    for mr, lab in (
        ("Case_004_Week0_LFOV", "Case_004_Week0_SEMANTIC_LFOV"),
        ("Case_004_Week1_LFOV", "Case_004_Week1_SEMANTIC_LFOV"),
        ("B006_Week0_LFOV", "B006_Week0_SEMANTIC"),
        ("Case_010_Week0_LFOV", "Case_010_Week0_SEMANTIC_LFOV"),
    ):
        _volume(root / "semantic_MRs" / f"{mr}.nii.gz")
        _volume(root / "semantic_labels_only" / f"{lab}.nii.gz", labels=True)
    return root


def test_names_pair_mr_with_labels(release):
    assert parse_volume_name(release / "semantic_MRs" / "B006_Week0_LFOV.nii.gz") == ("B006", 0, False)
    assert parse_volume_name(release / "semantic_labels_only" / "Case_004_Week1_SEMANTIC_LFOV.nii.gz") == ("004", 1, True)
    pairs = pair_volumes(release / "semantic_MRs", release / "semantic_labels_only")
    labels = {(c, w): lab.name for c, w, _, lab in pairs}
    assert labels[("004", 0)] == "Case_004_Week0_SEMANTIC_LFOV.nii.gz" and labels[("B006", 0)] == "B006_Week0_SEMANTIC.nii.gz"
    (release / "semantic_labels_only" / "B006_Week0_SEMANTIC.nii.gz").unlink()
    with pytest.raises(DataError, match="no label volume for case B006 week 0"):
        pair_volumes(release / "semantic_MRs", release / "semantic_labels_only")


def test_import_the_3d_release_in_one_command(release, tmp_path):
    # the slice release beside it places case 004 in validate: the 3D import keeps that split
    slices = release / "keras_slices_data" / "keras_slices_validate"
    slices.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.zeros((16, 12), np.float32), np.eye(4)), slices / "case_004_week_0_slice_0.nii.gz")
    out = tmp_path / "imported"
    assert main(["import", str(release), "--out", str(out)]) == 0
    with open(out / "import_plan.csv", newline="", encoding="utf-8") as handle:
        plan = {(row["case"], row["week"]): row for row in csv.DictReader(handle)}
    assert plan[("004", "0")]["split"] == plan[("004", "1")]["split"] == "validate"
    assert plan[("004", "0")]["split_source"] == "slice release"
    assert "seeded" in plan[("B006", "0")]["split_source"]
    found = discover(out, [s for s in ("train", "validate", "test") if (out / f"keras_slices_{s}").is_dir()], require_masks=True)
    records = [r for rs in found.values() for r in rs]
    assert len(records) == 4 * 3 and all(r.mask is not None for r in records)
    cases = {}
    for split, rs in found.items():
        for r in rs:
            cases.setdefault(r.case, set()).add(split)
    assert all(len(splits) == 1 for splits in cases.values())  # split by patient


def test_one_volume_still_needs_case_and_split(release, tmp_path, capsys):
    assert main(["import", str(release / "semantic_MRs" / "B006_Week0_LFOV.nii.gz"), "--out", str(tmp_path / "o")]) == 2
    assert "--case and --split are required" in capsys.readouterr().err
