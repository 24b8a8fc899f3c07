"""`import` refuses corrupt input (one line naming the file) and leaves nothing behind when it fails."""

from __future__ import annotations

import errno
import shutil

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from test_data_importer import PROSTATEX, X, Y, Z, _labels, _volume, _write_dicom_series

from prostate_vq.cli import main
from prostate_vq.data import import_volume, importer
from prostate_vq.files import is_own_temp


def _import(capsys, source, out, *extra) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["import", str(source), "--out", str(out), "--case", "1", "--split", "train", *extra])
    err = capsys.readouterr().err.strip()
    if code != 0:
        assert len(err.splitlines()) == 1, err
    return code, err


def _left_behind(out) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() or is_own_temp(p)) if out.exists() else []


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_cut_in_half_is_refused(tmp_path, capsys, suffix):
    volume = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(6, 40, 30)).astype(np.float32))
    sitk.WriteImage(volume, str(tmp_path / f"vol{suffix}"))
    data = (tmp_path / f"vol{suffix}").read_bytes()
    (tmp_path / f"cut{suffix}").write_bytes(data[: len(data) // 2])  # SimpleITK reads it: 3 slices of zeros
    code, err = _import(capsys, tmp_path / f"cut{suffix}", tmp_path / "out")
    assert code == 2 and f"cut{suffix}" in err and "truncated" in err
    assert _left_behind(tmp_path / "out") == []


def test_nan_voxels_in_nifti_are_refused(tmp_path, capsys):
    voxels = np.ones((X, Y, Z), dtype=np.float32)
    voxels[3, 2, 1] = np.nan  # SimpleITK reads it as 0
    nib.save(nib.Nifti1Image(voxels, np.eye(4)), str(tmp_path / "nan.nii.gz"))
    code, err = _import(capsys, tmp_path / "nan.nii.gz", tmp_path / "out")
    assert code == 2 and "nan.nii.gz" in err and "NaN" in err


def test_nan_voxels_in_a_nifti_segmentation_are_refused(tmp_path, capsys):
    sitk.WriteImage(_volume(), str(tmp_path / "vol.nii.gz"))
    labels = sitk.GetArrayFromImage(_labels()).astype(np.float32)
    labels[1, 2, 3] = np.nan
    seg = sitk.GetImageFromArray(labels)
    seg.CopyInformation(_volume())
    sitk.WriteImage(seg, str(tmp_path / "seg.nii.gz"))
    code, err = _import(capsys, tmp_path / "vol.nii.gz", tmp_path / "out", "--seg", str(tmp_path / "seg.nii.gz"))
    assert code == 2 and "seg.nii.gz" in err and "NaN" in err


def test_dicom_series_with_a_missing_file_is_refused(tmp_path, capsys):
    _write_dicom_series(_volume(), tmp_path / "dicom")
    (tmp_path / "dicom" / "IM0003.dcm").unlink()  # ITK would read 4 slices 4 mm apart instead of 3 mm
    code, err = _import(capsys, tmp_path / "dicom", tmp_path / "out")
    assert code == 2 and "dicom" in err and "not evenly spaced" in err and "6 mm" in err


@pytest.mark.parametrize("keep", [200, -100])
def test_dicom_series_with_a_truncated_file_is_refused(tmp_path, capsys, keep):
    _write_dicom_series(_volume(), tmp_path / "dicom")
    victim = tmp_path / "dicom" / "IM0002.dcm"
    victim.write_bytes(victim.read_bytes()[:keep])  # GDCM leaves it out of the series without a word
    code, err = _import(capsys, tmp_path / "dicom", tmp_path / "out")
    assert code == 2 and "IM0002.dcm" in err and "not part of the DICOM series" in err


@pytest.mark.skipif(not PROSTATEX.is_dir(), reason="real ProstateX DICOM not available (../shared)")
def test_real_series_with_a_missing_file_is_refused(tmp_path, capsys):
    series = tmp_path / "t2-tra"
    shutil.copytree(PROSTATEX / "ProstateX-0000" / "t2-tra", series)
    files = sorted(series.iterdir())
    files[len(files) // 2].unlink()
    code, err = _import(capsys, series, tmp_path / "out")
    assert code == 2 and "not evenly spaced" in err


def _shifted_labels(shift_mm: float, labelled_from: int = 0) -> sitk.Image:
    """The label volume moved `shift_mm` along x; labels only at x indices >= `labelled_from`."""
    array = sitk.GetArrayFromImage(_labels())
    array[:, :, :labelled_from] = 0
    array[:, :, labelled_from:] = np.maximum(array[:, :, labelled_from:], 1)
    seg = sitk.GetImageFromArray(array)
    seg.CopyInformation(_volume())
    origin = list(seg.GetOrigin())
    origin[0] += shift_mm
    seg.SetOrigin(origin)
    return seg


def test_segmentation_that_does_not_overlap_the_image_is_refused(tmp_path, capsys):
    sitk.WriteImage(_volume(), str(tmp_path / "vol.nii.gz"))
    sitk.WriteImage(_shifted_labels(100.0), str(tmp_path / "elsewhere.nii.gz"))
    code, err = _import(capsys, tmp_path / "vol.nii.gz", tmp_path / "out", "--seg", str(tmp_path / "elsewhere.nii.gz"))
    assert code == 2 and "elsewhere.nii.gz" in err and "does not overlap" in err
    # Overlapping extents, but every label lies outside the image: all-background masks otherwise.
    sitk.WriteImage(_shifted_labels(0.7 * X / 2, labelled_from=X // 2 + 1), str(tmp_path / "edge.nii.gz"))
    code, err = _import(capsys, tmp_path / "vol.nii.gz", tmp_path / "out", "--seg", str(tmp_path / "edge.nii.gz"))
    assert code == 2 and "edge.nii.gz" in err and "no label" in err
    assert _left_behind(tmp_path / "out") == []


def test_partly_overlapping_segmentation_is_still_imported(tmp_path):
    sitk.WriteImage(_volume(), str(tmp_path / "vol.nii.gz"))
    sitk.WriteImage(_shifted_labels(0.7 * X / 2), str(tmp_path / "half.nii.gz"))
    written = import_volume(tmp_path / "vol.nii.gz", tmp_path / "out", case="1", split="train", seg=tmp_path / "half.nii.gz")
    assert len(written) == Z


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_failed_import_leaves_nothing_and_the_retry_works(tmp_path, capsys, monkeypatch, failure):
    sitk.WriteImage(_volume(), str(tmp_path / "vol.nii.gz"))
    sitk.WriteImage(_labels(), str(tmp_path / "seg.nii.gz"))
    out = tmp_path / "out"
    calls = {"n": 0}
    original = importer.save_slice

    def fail_midway(array, path, affine=None):
        calls["n"] += 1
        if calls["n"] == 4:
            path.write_bytes(b"half a slice")
            raise failure
        return original(array, path, affine)

    monkeypatch.setattr(importer, "save_slice", fail_midway)
    if isinstance(failure, OSError):
        code, err = _import(capsys, tmp_path / "vol.nii.gz", out, "--seg", str(tmp_path / "seg.nii.gz"))
        assert code == 2 and "No space left" in err and str(out) in err
    else:
        with pytest.raises(KeyboardInterrupt):
            import_volume(tmp_path / "vol.nii.gz", out, case="1", split="train", seg=tmp_path / "seg.nii.gz")
    assert _left_behind(out) == []
    monkeypatch.undo()
    code, _ = _import(capsys, tmp_path / "vol.nii.gz", out, "--seg", str(tmp_path / "seg.nii.gz"))
    assert code == 0
    assert len(list((out / "keras_slices_train").iterdir())) == len(list((out / "keras_slices_seg_train").iterdir())) == Z


def test_import_out_pointing_at_a_file_is_one_line(tmp_path, capsys):
    sitk.WriteImage(_volume(), str(tmp_path / "vol.nii.gz"))
    (tmp_path / "a-file").write_text("not a folder")
    code, err = _import(capsys, tmp_path / "vol.nii.gz", tmp_path / "a-file")
    assert code == 2 and "a-file" in err
