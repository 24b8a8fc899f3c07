"""Import a 3-D volume (NIfTI, MHA/MHD, NRRD or a DICOM series folder) as HipMRI 2-D slices.

SimpleITK reads every format; DICOM slices are ordered by their physical position (GDCM sorts the
series along the slice normal, file names do not matter); the volume is then reoriented with
DICOMOrient so that slice k always runs the same anatomical way, and cut into 2-D NIfTI slices whose
rows follow the first axis letter (e.g. R-L for "RAS"), like HipMRI's 256-row slices.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from prostate_vq.data.layout import CASE_ID, NUM_CLASSES, SPLITS, image_dir, mask_dir, parse_name, slice_name
from prostate_vq.data.nifti import MAX_VOLUME_BYTES, check_declared_size, check_finite, save_slice, stored_voxels
from prostate_vq.errors import DataError, UserInputError
from prostate_vq.files import staged_folder

_ORIENTATION = re.compile(r"^(?=.*[LR])(?=.*[AP])(?=.*[SI])[LRAPSI]{3}$")
_GEOMETRY_TOL = 1e-3


def read_volume(path: str | Path) -> sitk.Image:
    """A 3-D SimpleITK image from a file or from the single DICOM series in a folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError("file or folder not found", path)
    warnings_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK warnings would add lines around our one-line error
    if _is_nifti(path):
        _check_nifti_header(path)
    try:
        image = _read_series(path) if path.is_dir() else sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise DataError(f"cannot read as a 3-D image ({_sitk_reason(error)})", path) from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_shown)
    if _is_nifti(path):
        _check_nifti_data(path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise DataError("expected a scalar (grey-level) volume, got a multi-component image", path)
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    if image.GetDimension() != 3:
        raise DataError(f"expected a 3-D volume, got {image.GetDimension()}-D", path)
    return image


def _read_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        subfolders = sorted(p.name for p in folder.iterdir() if p.is_dir())
        hint = f"; give the folder that holds the files, e.g. {folder / subfolders[0]}" if subfolders else ""
        raise DataError(f"no DICOM series in this folder{hint}", folder)
    if len(series) > 1:
        raise DataError(f"{len(series)} DICOM series in this folder; import each from its own folder", folder)
    # GDCM orders the files by their position along the slice normal, not by name.
    files = reader.GetGDCMSeriesFileNames(str(folder), series[0])
    _check_every_file_read(folder, files)
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    image = reader.Execute()
    _check_even_spacing(reader, image, files, folder)
    return image


def _is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith((".nii", ".nii.gz"))


def _check_nifti_header(path: Path) -> None:
    try:
        header_only = nib.load(str(path))  # lazy: reads the header, not the voxels
    except Exception as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise DataError(f"not a readable NIfTI file ({reason})", path) from None
    check_declared_size(header_only, path, MAX_VOLUME_BYTES)


def _check_nifti_data(path: Path) -> None:
    """SimpleITK reads a NIfTI cut short as zeros and NaN voxels as 0: nibabel reads it once more and
    notices both."""
    try:
        voxels = stored_voxels(nib.load(str(path)))
    except Exception as error:  # EOFError, zlib.error, "Expected N bytes, got M": a damaged file
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise DataError(f"truncated or corrupt NIfTI file ({reason})", path) from None
    check_finite(voxels, path)


def _check_every_file_read(folder: Path, files) -> None:
    """GDCM leaves out a truncated or damaged file without a word: every file of the folder must be in the series."""
    in_series = {Path(name).name for name in files}
    others = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name not in in_series)
    if others:
        raise DataError(
            f"not part of the DICOM series read from this folder (truncated or damaged?); "
            f"{len(others)} of {len(others) + len(in_series)} files left out. Import from a folder "
            "that holds only the series' complete files",
            others[0],
        )


def _check_even_spacing(reader, image: sitk.Image, files, folder: Path) -> None:
    """ITK spreads the slices evenly between the first and the last position: a missing file would stretch
    the spacing (3 mm slices read as 3.75 mm). Every gap between neighbouring slice positions must be equal."""
    if len(files) < 3:
        return
    try:
        positions = np.array([[float(v) for v in reader.GetMetaData(k, "0020|0032").split("\\")] for k in range(len(files))])
    except (RuntimeError, ValueError):
        return  # no Image Position (Patient) to check against
    normal = np.array(image.GetDirection()).reshape(3, 3)[:, 2]
    gaps = np.diff(positions @ normal)
    typical = float(np.median(np.abs(gaps)))
    worst = int(np.argmax(np.abs(np.abs(gaps) - typical)))
    if abs(abs(gaps[worst]) - typical) > max(0.01, 0.02 * typical):
        raise DataError(
            f"slice positions are not evenly spaced: {abs(gaps[worst]):.3g} mm between "
            f"{Path(files[worst]).name} and {Path(files[worst + 1]).name}, {typical:.3g} mm elsewhere; "
            "a file of the series is missing",
            folder,
        )


def _sitk_reason(error: RuntimeError) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "ERROR:" in line:
            return line.split("ERROR:", 1)[1].strip()[:160]
    return (lines[-1] if lines else "unreadable")[:160]


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=_GEOMETRY_TOL)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=_GEOMETRY_TOL)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=_GEOMETRY_TOL)
    )


def _slice_affine(image: sitk.Image, k: int) -> np.ndarray:
    """NIfTI (RAS) affine of slice k: ITK's physical space is LPS, so x and y change sign."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = np.array(image.GetSpacing())
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = lps_to_ras @ direction @ np.diag(spacing)
    affine[:3, 3] = lps_to_ras @ (np.array(image.GetOrigin()) + direction[:, 2] * spacing[2] * k)
    return affine


_AXIS_OF = {"L": 0, "R": 0, "A": 1, "P": 1, "S": 2, "I": 2}
_PLANE = {0: "sagittal", 1: "coronal", 2: "transverse"}


def _warn_if_resliced(image: sitk.Image, orientation: str, path) -> None:
    """Warn when the orientation slices across the acquired planes (e.g. a sagittal series cut into
    transverse slices at the through-plane resolution); name the orientation that keeps them."""
    normal = np.abs(np.array(image.GetDirection()).reshape(3, 3)[:, 2])
    acquired = int(np.argmax(normal))
    wanted = _AXIS_OF[orientation[2]]
    if acquired == wanted:
        return
    letter = next(c for c in orientation if _AXIS_OF[c] == acquired)
    keep = "".join(c for c in orientation if c != letter) + letter
    warnings.warn(
        f"{path}: {_PLANE[acquired]} acquisition resliced into {_PLANE[wanted]} slices; "
        f"use --orientation {keep} to keep the acquired planes",
        stacklevel=3,
    )


def _check_arguments(case: str, split: str, week: int, orientation: str) -> str:
    case = str(case)
    if not CASE_ID.match(case):
        raise UserInputError(f"case id {case!r} must be letters, digits or '-' (it becomes part of file names)")
    if split not in SPLITS:
        raise UserInputError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if int(week) < 0:
        raise UserInputError(f"week must be 0 or more, not {week}")
    if not _ORIENTATION.match(orientation.upper()):
        raise UserInputError(f"orientation must be three letters, one each of L/R, A/P, S/I (e.g. RAS), not {orientation!r}")
    return case.zfill(3) if case.isdigit() else case  # HipMRI pads case numbers to three digits


def _check_destination(out: Path, case: str, split: str, week: int) -> None:
    for other in SPLITS:
        folder = image_dir(out, other)
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            parsed = parse_name(path.name)
            if parsed is None or parsed[1] != case:
                continue
            if other != split:
                raise UserInputError(f"case {case} is already in split {other!r}; a patient must stay in one split", path)
            if parsed[2] == week:
                raise UserInputError(f"case {case} week {week} is already imported here", path)


def _corners(image: sitk.Image) -> np.ndarray:
    """Physical positions of the 8 outer corners of the voxel grid (half a voxel beyond the centres)."""
    size = np.array(image.GetSize()) - 0.5
    return np.array(
        [
            image.TransformContinuousIndexToPhysicalPoint([float(v) for v in corner])
            for corner in np.array(np.meshgrid(*[(-0.5, s) for s in size], indexing="ij")).reshape(3, -1).T
        ]
    )


def _resample_onto(seg: sitk.Image, image: sitk.Image, path: Path) -> sitk.Image:
    """Nearest-neighbour resampling onto the image grid; a segmentation that does not overlap the image
    (or keeps no label on its grid) is refused instead of becoming all-background masks."""
    a, b = _corners(seg), _corners(image)
    if np.any(a.max(0) < b.min(0) - _GEOMETRY_TOL) or np.any(b.max(0) < a.min(0) - _GEOMETRY_TOL):
        raise DataError(
            "the segmentation does not overlap the image (their physical extents are disjoint: "
            "another patient, or another coordinate system?)",
            path,
        )
    resampled = sitk.Resample(seg, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, seg.GetPixelID())
    if not sitk.GetArrayViewFromImage(resampled).any() and sitk.GetArrayViewFromImage(seg).any():
        raise DataError(
            "no label of the segmentation falls on the image grid: they barely overlap (another "
            "patient, or another coordinate system?)",
            path,
        )
    return resampled


def _labels(seg: sitk.Image, path: Path) -> np.ndarray:
    array = sitk.GetArrayFromImage(seg)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or np.abs(array - np.rint(array)).max() > 1e-3:
            raise DataError("mask has non-integer or non-finite values (expected labels 0..5)", path)
        array = np.rint(array)
    values = np.unique(array)
    outside = values[(values < 0) | (values >= NUM_CLASSES)]
    if outside.size:
        raise DataError(f"labels outside 0..{NUM_CLASSES - 1}: {', '.join(str(int(v)) for v in outside[:8])}", path)
    return array.astype(np.uint8)


def import_volume(path, out, case, split, week: int = 0, seg=None, orientation: str = "RAS") -> list[Path]:
    """Write one volume (and its label volume) as ``case_<case>_week_<week>_slice_<k>.nii.gz`` slices.

    The label volume is resampled nearest-neighbour onto the image grid when the grids differ. Returns
    the image slices written, in slice order.
    """
    case = _check_arguments(case, split, week, orientation)
    week = int(week)
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise UserInputError("is a file; --out takes the HipMRI root folder to import into", out)
    image = read_volume(path)
    labels = None
    if seg is not None:
        seg_image = read_volume(seg)
        if not _same_grid(seg_image, image):
            seg_image = _resample_onto(seg_image, image, Path(seg))
        labels = sitk.DICOMOrient(seg_image, orientation.upper())
    _warn_if_resliced(image, orientation.upper(), path)
    image = sitk.DICOMOrient(image, orientation.upper())
    voxels = sitk.GetArrayFromImage(image)  # [slice, col axis, row axis]
    if np.issubdtype(voxels.dtype, np.floating) and not np.isfinite(voxels).all():
        raise DataError("volume contains NaN or Inf voxels", path)
    label_voxels = _labels(labels, Path(seg)) if labels is not None else None

    _check_destination(out, case, split, week)
    # Into a folder inside `out` first, moved in only when every slice is written: an interrupted or
    # disk-full import leaves nothing behind, and a retry is not refused as "already imported".
    with staged_folder(out, new_files_only=True) as stage:
        image_dir(stage, split).mkdir()
        if label_voxels is not None:
            mask_dir(stage, split).mkdir()
        for k in range(voxels.shape[0]):
            affine = _slice_affine(image, k)
            # numpy holds [y, x]; HipMRI slices are read by nibabel as [x, y] (rows along the first axis).
            save_slice(np.ascontiguousarray(voxels[k].T), image_dir(stage, split) / slice_name(case, week, k), affine)
            if label_voxels is not None:
                save_slice(
                    np.ascontiguousarray(label_voxels[k].T),
                    mask_dir(stage, split) / slice_name(case, week, k, kind="mask"),
                    affine,
                )
    return [image_dir(out, split) / slice_name(case, week, k) for k in range(voxels.shape[0])]
