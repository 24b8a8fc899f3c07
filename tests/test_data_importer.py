"""Volume importer: formats, slice order by physical position, orientation, masks, errors, real DICOM."""

from __future__ import annotations

import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from prostate_vq.cli import main
from prostate_vq.data import build_manifest, check_manifest, discover, import_volume, load_slice
from prostate_vq.errors import DataError, UserInputError

PROSTATEX = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "prostatex-dev"
X, Y, Z = 12, 8, 5


def _volume(direction=None) -> sitk.Image:
    """Voxel value 100*z + 10*y + x on an LPS-identity grid (index z runs inferior -> superior)."""
    z, y, x = np.meshgrid(np.arange(Z), np.arange(Y), np.arange(X), indexing="ij")
    image = sitk.GetImageFromArray((100 * z + 10 * y + x).astype(np.int16))
    image.SetSpacing((0.7, 0.8, 3.0))
    image.SetOrigin((10.0, -5.0, 2.0))
    return image


def _labels() -> sitk.Image:
    z, _, x = np.meshgrid(np.arange(Z), np.arange(Y), np.arange(X), indexing="ij")
    seg = sitk.GetImageFromArray(((x // 2 + z) % 6).astype(np.uint8))
    seg.CopyInformation(_volume())
    return seg


def _expected_ras(k: int) -> np.ndarray:
    i, j = np.meshgrid(np.arange(X), np.arange(Y), indexing="ij")  # nibabel rows follow x
    return 100 * k + 10 * (Y - 1 - j) + (X - 1 - i)  # RAS flips LPS x and y


def _write_dicom_series(image: sitk.Image, folder: Path) -> None:
    """One file per slice, file names and instance numbers in reverse spatial order."""
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = image.GetDirection()
    tags = {
        "0008|0060": "MR",
        "0020|000e": "1.2.826.0.1.3680043.2.1125.1.42",
        "0008|103e": "test t2",
        "0020|0037": "\\".join(str(v) for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
        "0018|0050": str(image.GetSpacing()[2]),
    }
    for k in range(image.GetDepth()):
        piece = image[:, :, k]
        for tag, value in tags.items():
            piece.SetMetaData(tag, value)
        piece.SetMetaData("0020|0032", "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))))
        piece.SetMetaData("0020|0013", str(image.GetDepth() - k))
        writer.SetFileName(str(folder / f"IM{image.GetDepth() - k:04d}.dcm"))
        writer.Execute(piece)


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha", ".nrrd"])
def test_file_formats_become_ras_slices_with_masks(tmp_path, suffix):
    sitk.WriteImage(_volume(), str(tmp_path / f"vol{suffix}"))
    sitk.WriteImage(_labels(), str(tmp_path / f"seg{suffix}"))
    out = tmp_path / "hipmri"
    written = import_volume(tmp_path / f"vol{suffix}", out, case="7", split="train", week=2, seg=tmp_path / f"seg{suffix}")
    assert [p.name for p in written] == [f"case_007_week_2_slice_{k}.nii.gz" for k in range(Z)]
    for k, path in enumerate(written):
        np.testing.assert_array_equal(load_slice(path), _expected_ras(k))
    records = discover(out, ("train",), require_masks=True)["train"]
    assert len(records) == Z
    mask = load_slice(records[1].mask, "mask")
    z, i = 1, np.arange(X)[:, None]
    np.testing.assert_array_equal(mask, np.broadcast_to(((X - 1 - i) // 2 + z) % 6, (X, Y)))
    # the slices are sound; only the split is incomplete for training
    assert [p.split(": ", 1)[1][:18] for p in check_manifest(build_manifest(out), out)] == ["no validate slices"]


def test_dicom_series_is_ordered_by_position_not_by_file_name(tmp_path):
    _write_dicom_series(_volume(), tmp_path / "dicom")
    written = import_volume(tmp_path / "dicom", tmp_path / "out", case="3", split="test")
    for k, path in enumerate(written):
        np.testing.assert_array_equal(load_slice(path), _expected_ras(k))
    z = [nib.load(p).affine[2, 3] for p in written]
    assert z == sorted(z) and z[1] - z[0] == pytest.approx(3.0)


def test_reversed_storage_gives_the_same_slices(tmp_path):
    flipped = sitk.Flip(_volume(), [False, False, True])  # same anatomy, stored superior -> inferior
    assert flipped.GetDirection()[8] == -1
    sitk.WriteImage(flipped, str(tmp_path / "flipped.nii.gz"))
    written = import_volume(tmp_path / "flipped.nii.gz", tmp_path / "out", case="5", split="validate")
    for k, path in enumerate(written):
        np.testing.assert_array_equal(load_slice(path), _expected_ras(k))


def test_mask_on_another_grid_is_resampled_nearest(tmp_path):
    sitk.WriteImage(_volume(), str(tmp_path / "vol.nii.gz"))
    coarse = sitk.Resample(
        _labels(),
        [X // 2, Y // 2, Z],
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        _volume().GetOrigin(),
        (1.4, 1.6, 3.0),
        _volume().GetDirection(),
        0,
        sitk.sitkUInt8,
    )
    sitk.WriteImage(coarse, str(tmp_path / "coarse.nii.gz"))
    import_volume(tmp_path / "vol.nii.gz", tmp_path / "out", case="9", split="train", seg=tmp_path / "coarse.nii.gz")
    mask = load_slice(tmp_path / "out" / "keras_slices_seg_train" / "seg_009_week_0_slice_0.nii.gz", "mask")
    assert mask.shape == (X, Y) and set(np.unique(mask)) <= set(range(6))


def test_import_errors(tmp_path, capsys):
    sitk.WriteImage(_volume(), str(tmp_path / "vol.nii.gz"))
    bad_seg = sitk.Cast(_labels(), sitk.sitkUInt8) + 7
    sitk.WriteImage(bad_seg, str(tmp_path / "bad_seg.nii.gz"))
    (tmp_path / "notes.nii.gz").write_text("not an image")
    out = str(tmp_path / "out")
    cases = [
        (["import", str(tmp_path / "missing.nii.gz")], "missing.nii.gz: file or folder not found"),
        (["import", str(tmp_path / "notes.nii.gz")], "notes.nii.gz: not a readable NIfTI file"),
        (["import", str(tmp_path / "vol.nii.gz"), "--seg", str(tmp_path / "bad_seg.nii.gz")], "labels outside 0..5"),
        (["import", str(tmp_path / "vol.nii.gz"), "--orientation", "RAR"], "orientation"),
        (["import", str(tmp_path / "vol.nii.gz"), "--case", "a_b"], "case id"),
    ]
    for argv, fragment in cases:
        if "--case" not in argv:
            argv = argv + ["--case", "1"]
        assert main(argv + ["--out", out, "--split", "train"]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0], err
    assert main(["import", str(tmp_path / "vol.nii.gz"), "--out", out, "--case", "1", "--split", "train"]) == 0
    capsys.readouterr()
    assert main(["import", str(tmp_path / "vol.nii.gz"), "--out", out, "--case", "001", "--split", "train"]) == 2
    assert "already imported" in capsys.readouterr().err
    with pytest.raises(UserInputError, match="already in split 'train'"):
        import_volume(tmp_path / "vol.nii.gz", out, case="1", split="test", week=1)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match="no DICOM series"):
        import_volume(tmp_path / "empty_dir", out, case="2", split="train")


@pytest.mark.skipif(not PROSTATEX.is_dir(), reason="real ProstateX DICOM not available (../shared)")
def test_real_prostatex_t2_series(tmp_path):
    written = import_volume(PROSTATEX / "ProstateX-0000" / "t2-tra", tmp_path / "out", case="900", split="test")
    assert len(written) == 19
    first = nib.load(written[0])
    assert first.shape == (384, 384) and first.header.get_zooms()[:2] == pytest.approx((0.5, 0.5), rel=1e-3)
    z = [nib.load(p).affine[2, 3] for p in written]
    assert all(b > a for a, b in itertools.pairwise(z))  # inferior -> superior, by physical position
    records = discover(tmp_path / "out", ("test",))["test"]
    assert len(records) == 19 and all(r.mask is None for r in records)
    image = load_slice(written[9])
    assert image.std() > 10  # real anatomy, not an empty slice


MASKS = PROSTATEX / "ProstateX-0000" / "masks" / "t2-tra_seg_hipmri.nii.gz"


@pytest.mark.skipif(not MASKS.is_file(), reason="real ProstateX prostate masks not available (../shared)")
def test_real_prostate_masks_import_onto_their_slices(tmp_path):
    """The PI-CAI whole-gland mask (HipMRI class 5) lands on the 11 contiguous slices of the gland, on the
    image grid, as the seg_ twin of each image slice; the dataset pairs them."""
    from prostate_vq.data import make_dataset

    written = import_volume(PROSTATEX / "ProstateX-0000" / "t2-tra", tmp_path / "out", case="0000", split="train", seg=MASKS)
    records = discover(tmp_path / "out", ("train",))["train"]
    assert len(records) == 19 and all(r.mask is not None for r in records)
    by_slice = sorted(records, key=lambda r: r.slice)
    gland = [int((np.asarray(nib.load(r.mask).dataobj) == 5).sum()) for r in by_slice]
    labels = set().union(*(np.unique(np.asarray(nib.load(r.mask).dataobj)).tolist() for r in by_slice))
    assert labels == {0, 5}  # whole gland only: no body, bones, bladder or rectum labels exist for these scans
    covered = [i for i, voxels in enumerate(gland) if voxels]
    assert len(covered) == 11 and covered == list(range(covered[0], covered[0] + 11))  # one contiguous gland
    assert all(nib.load(r.mask).shape == nib.load(r.image).shape == (384, 384) for r in by_slice)
    assert len(written) == 19
    dataset = make_dataset(tmp_path / "out", "train", "joint", spatial_size=(128, 128))
    items = [dataset[i] for i in range(len(dataset))]
    assert all(item["label"].shape[-2:] == (128, 128) for item in items)
    assert sum(int((item["label"] == 5).sum()) > 20 for item in items) == 11


def test_reslicing_across_the_acquired_planes_warns(tmp_path):
    sagittal = sitk.PermuteAxes(_volume(), [1, 2, 0])  # slice normal along left-right
    sitk.WriteImage(sagittal, str(tmp_path / "sag.nii.gz"))
    with pytest.warns(UserWarning, match="sagittal acquisition resliced into transverse slices; use --orientation ASR"):
        import_volume(tmp_path / "sag.nii.gz", tmp_path / "out", case="1", split="train")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        written = import_volume(tmp_path / "sag.nii.gz", tmp_path / "out", case="1", split="train", week=1, orientation="ASR")
    assert len(written) == sagittal.GetDepth()
