"""Manifest rows, CSV output, re-splitting by patient, and the committed demo manifest."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from prostate_vq.cli import main
from prostate_vq.data import build_manifest, check_manifest
from prostate_vq.data.manifest import COLUMNS, resplit_by_case
from prostate_vq.data.phantom import case_splits
from prostate_vq.errors import UserInputError

DEMO_MANIFEST = Path(__file__).resolve().parents[1] / "data_manifests" / "demo_phantom.csv"


def test_manifest_rows_describe_every_slice(phantom_root):
    df = build_manifest(phantom_root)
    assert list(df.columns) == COLUMNS and len(df) == 24
    row = df[(df["case"] == "001") & (df["slice"] == 3)].iloc[0]
    assert row["image"] == "keras_slices_train/case_001_week_0_slice_3.nii.gz"
    assert row["mask"] == "keras_slices_seg_train/seg_001_week_0_slice_3.nii.gz"
    assert row["shape"] == "256x144" and row["mask_shape"] == "256x144" and row["problem"] == ""
    assert set(" ".join(df["labels"]).split()) == {"0", "1", "2", "3", "4", "5"}
    assert check_manifest(df, phantom_root) == []


def test_manifest_command_writes_csv_with_relative_paths(phantom_root, tmp_path, capsys):
    out = tmp_path / "sub" / "manifest.csv"
    assert main(["manifest", "--data", str(phantom_root), "--out", str(out)]) == 0
    df = pd.read_csv(out, dtype={"case": str}, keep_default_na=False)
    assert len(df) == 24 and not any(str(phantom_root) in p for p in df["image"])
    printed = capsys.readouterr().out
    assert "train" in printed and "24 rows" in printed


def test_resplit_is_by_patient_and_reproducible(phantom_root, tmp_path):
    df = build_manifest(phantom_root)
    a = resplit_by_case(df, (0.5, 0.25, 0.25), seed=1)
    b = resplit_by_case(df, (0.5, 0.25, 0.25), seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert (a.groupby("case")["split"].nunique() == 1).all()
    assert a.groupby("split")["case"].nunique().to_dict() == {"train": 2, "validate": 1, "test": 1}
    assert check_manifest(a, phantom_root) == []
    with pytest.raises(UserInputError, match="sum to 1"):
        resplit_by_case(df, (0.5, 0.5, 0.5))
    out = tmp_path / "resplit.csv"
    assert (
        main(
            [
                "manifest",
                "--data",
                str(phantom_root),
                "--out",
                str(out),
                "--resplit",
                "0.5",
                "0.25",
                "0.25",
                "--seed",
                "1",
                "--check",
            ]
        )
        == 0
    )
    assert pd.read_csv(out, dtype={"case": str})["split"].tolist() == a["split"].tolist()


def test_committed_demo_manifest_matches_the_default_phantom():
    df = pd.read_csv(DEMO_MANIFEST, dtype={"case": str}, keep_default_na=False)
    assert list(df.columns) == COLUMNS and len(df) == 12 * 2 * 24
    assert dict(zip(df["case"], df["split"])) == case_splits(12)
    assert (df["problem"] == "").all()
    assert set(df.loc[(df["case"] == "001") & (df["week"] == 1), "shape"]) == {"256x144"}
