"""The bad-input matrix: every broken dataset gives exit code 2 and one stderr line naming the file,
from ``manifest --check`` and from the dataset every training/evaluation command builds."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest

from prostate_vq.cli import main
from prostate_vq.data import make_dataset
from prostate_vq.data.layout import image_dir, mask_dir
from prostate_vq.data.nifti import save_slice
from prostate_vq.errors import DataError

IMAGE = "case_004_week_0_slice_2.nii.gz"
MASK = "seg_004_week_0_slice_2.nii.gz"


def _truncate(root):
    path = image_dir(root, "test") / IMAGE
    path.write_bytes(path.read_bytes()[:400])
    return IMAGE


def _empty(root):
    (image_dir(root, "test") / IMAGE).write_bytes(b"")
    return IMAGE


def _garbage(root):
    (image_dir(root, "test") / IMAGE).write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
    return IMAGE


def _no_mask(root):
    (mask_dir(root, "test") / MASK).unlink()
    return IMAGE


def _shape_mismatch(root):
    save_slice(np.zeros((256, 144), dtype=np.uint8), mask_dir(root, "test") / MASK)
    return IMAGE


def _labels_outside(root):
    labels = np.zeros((256, 128), dtype=np.uint8)
    labels[10:20, 10:20] = 7
    save_slice(labels, mask_dir(root, "test") / MASK)
    return MASK


def _nan(root):
    image = np.ones((256, 128), dtype=np.float32)
    image[5, 5] = np.nan
    save_slice(image, image_dir(root, "test") / IMAGE)
    return IMAGE


def _inf(root):
    image = np.ones((256, 128), dtype=np.float32)
    image[5, 5] = np.inf
    save_slice(image, image_dir(root, "test") / IMAGE)
    return IMAGE


def _complex(root):
    import nibabel as nib

    image = nib.Nifti1Image(np.ones((256, 128), dtype=np.complex64), np.eye(4))
    nib.save(image, str(image_dir(root, "test") / IMAGE))
    return IMAGE


BREAKERS = {
    "truncated": (_truncate, "truncated or corrupt"),
    "empty": (_empty, "empty file"),
    "complex": (_complex, "complex-valued voxels (complex64)"),
    "unreadable": (_garbage, "NIfTI"),
    "image without mask": (_no_mask, "no mask"),
    "shape mismatch": (_shape_mismatch, "256x128 but its mask"),
    "labels outside 0..5": (_labels_outside, "labels outside 0..5: 7"),
    "nan": (_nan, "NaN or Inf"),
    "inf": (_inf, "NaN or Inf"),
}


@pytest.fixture
def broken_copy(phantom_root, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(phantom_root, root)
    return root


def _one_error_line(capsys, name, fragment):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert name in err[0] and fragment in err[0] and "Traceback" not in err[0]
    return err[0]


@pytest.mark.parametrize("problem", sorted(BREAKERS))
def test_manifest_check_exits_2_naming_the_file(problem, broken_copy, capsys):
    breaker, fragment = BREAKERS[problem]
    name = breaker(broken_copy)
    assert main(["manifest", "--data", str(broken_copy), "--check"]) == 2
    _one_error_line(capsys, name, fragment)


@pytest.mark.parametrize("problem", sorted(BREAKERS))
def test_dataset_raises_one_line_data_error(problem, broken_copy):
    breaker, fragment = BREAKERS[problem]
    name = breaker(broken_copy)
    with pytest.raises(DataError) as error:
        make_dataset(broken_copy, "test", "joint")
    message = str(error.value)
    assert name in message and fragment in message and "\n" not in message


def test_missing_folder_and_missing_layout(tmp_path, capsys):
    assert main(["manifest", "--data", str(tmp_path / "nope"), "--check"]) == 2
    _one_error_line(capsys, "nope", "not found")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "case_001_week_0_slice_0.nii.gz").write_bytes(b"")
    assert main(["manifest", "--data", str(tmp_path / "flat")]) == 2
    _one_error_line(capsys, "flat", "keras_slices_train, keras_slices_validate, keras_slices_test")


def test_patient_leakage_names_the_case(broken_copy, capsys):
    for path in image_dir(broken_copy, "test").glob("case_004_week_0_slice_[01]*"):
        path.rename(image_dir(broken_copy, "train") / path.name)
    for path in mask_dir(broken_copy, "test").glob("seg_004_week_0_slice_[01]*"):
        path.rename(mask_dir(broken_copy, "train") / path.name)
    assert main(["manifest", "--data", str(broken_copy), "--check"]) == 2
    _one_error_line(capsys, "case 004", "patient leakage")


def test_mask_without_image_is_reported(broken_copy, capsys):
    (image_dir(broken_copy, "test") / IMAGE).unlink()
    assert main(["manifest", "--data", str(broken_copy), "--check"]) == 2
    _one_error_line(capsys, MASK, "mask has no image")


def test_quirks_of_the_real_dataset_pass_the_check(phantom_root, capsys):
    assert main(["manifest", "--data", str(phantom_root), "--check"]) == 0
    out = capsys.readouterr().out
    assert "256x144" in out and "check passed" in out


def test_an_unreadable_slice_is_not_called_truncated(broken_copy, capsys, monkeypatch):
    """As root a chmod 000 file stays readable, so nibabel's refusal is simulated."""
    import errno

    import nibabel as nib

    original = nib.load

    def load(path, *args, **kwargs):
        if str(path).endswith(IMAGE):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(nib, "load", load)
    assert main(["manifest", "--data", str(broken_copy), "--check"]) == 2
    line = _one_error_line(capsys, IMAGE, "permission denied")
    assert "truncated" not in line


def test_entries_that_are_not_slices_are_skipped_with_a_word(broken_copy):
    folder = image_dir(broken_copy, "train")
    (folder / "case_001_week_0_slice_99.nii.gz").mkdir()  # a folder named like a slice
    (folder / "loop.nii.gz").symlink_to(folder / "loop.nii.gz")  # a link to itself
    (folder / "notes.txt").write_text("mine", encoding="utf-8")
    (folder / ".DS_Store").write_bytes(b"")  # hidden: silently not a slice
    from prostate_vq.data.layout import SkippedFilesWarning

    with pytest.warns(SkippedFilesWarning) as caught:
        assert main(["manifest", "--data", str(broken_copy), "--check"]) == 0
    warning = str(caught[0].message)
    assert "keras_slices_train: skipped 3 entries that are not slice files" in warning
    assert "1 folders" in warning and "1 broken or looping links" in warning and "1 files that are not NIfTI" in warning
