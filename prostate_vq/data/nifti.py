"""Reading one 2-D NIfTI slice with nibabel, and turning every way it can be broken into a DataError."""

from __future__ import annotations

import errno
import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.dataobj_images import DataobjImage
from nibabel.filebasedimages import FileBasedImage

from prostate_vq.data.layout import NUM_CLASSES
from prostate_vq.errors import DataError
from prostate_vq.files import atomic_open

MAX_SLICE_BYTES = 256 << 20  # a 2-D slice: 8192x8192 float32; the HipMRI ones are 256x128
MAX_VOLUME_BYTES = 4 << 30  # a 3-D volume for `import`


def check_declared_size(image, path: str | Path, limit: int) -> None:
    """Refuse, before reading a voxel, a header that claims more data than `limit` or than an uncompressed
    file holds: a 420-byte file claiming 32767x32767 voxels would otherwise allocate gigabytes first."""
    shape = tuple(int(s) for s in image.header.get_data_shape())
    dtype = image.header.get_data_dtype()
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    claimed = f"header claims {'x'.join(map(str, shape))} voxels of {dtype} ({nbytes / 2**20:.0f} MiB)"
    if nbytes > limit:
        raise DataError(f"{claimed}, more than the {limit >> 20} MiB allowed: a damaged header?", path)
    path = Path(path)
    offset = int(image.header.get("vox_offset", 0) or 0)
    if not path.name.lower().endswith(".gz") and path.stat().st_size < offset + nbytes:
        raise DataError(f"truncated NIfTI file: {claimed} but holds {path.stat().st_size} bytes", path)


def read_array(path: str | Path) -> np.ndarray:
    """The voxel array of a 2-D slice as stored (trailing singleton dimensions dropped), or a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path)
    if path.stat().st_size == 0:
        raise DataError("empty file (0 bytes), not a NIfTI slice", path)
    try:
        image = nib.load(str(path))
        check_declared_size(image, path, MAX_SLICE_BYTES)
        array = stored_voxels(image)
    except DataError:
        raise
    except Exception as error:  # nibabel/gzip/zlib raise many types for one problem: a broken file
        raise DataError(_describe(error, path), path) from None
    if np.iscomplexobj(array):  # keeping the real part would drop half the signal without a word
        raise DataError(f"complex-valued voxels ({array.dtype}): expected a magnitude image; store abs() of it", path)
    while array.ndim > 2 and array.shape[-1] == 1:  # HipMRI quirk: some slices are (256, 128, 1)
        array = array[..., 0]
    if array.ndim != 2:
        raise DataError(f"expected a 2-D slice, got shape {tuple(array.shape)}", path)
    if array.size == 0:
        raise DataError("slice has no voxels", path)
    return array


def stored_voxels(image: FileBasedImage) -> np.ndarray:
    """The voxels as stored: dataobj keeps the stored dtype (get_fdata would make float64 copies of every
    slice). An image nibabel loads without a voxel array (e.g. GIFTI) is the AttributeError it always was."""
    if not isinstance(image, DataobjImage):
        raise AttributeError(f"{type(image).__name__} has no voxel array (dataobj)")
    return np.asanyarray(image.dataobj)


def _describe(error: Exception, path: Path) -> str:
    """One line for a file nibabel could not read; a damaged gzip stream is reported as truncated, a file we
    may not read as such (not as truncated)."""
    if isinstance(error, OSError) and error.errno in (errno.EACCES, errno.EPERM):
        return "cannot read it (permission denied): give read permission, or leave it out of the data folder"
    if isinstance(error, (EOFError, OSError, ValueError, zlib.error)):
        return f"truncated or corrupt NIfTI file ({_first_line(error)})"
    if path.name.endswith(".gz"):
        try:
            with gzip.open(path) as stream:
                while stream.read(1 << 20):
                    pass
        except (EOFError, OSError, zlib.error) as gzip_error:
            return f"truncated or corrupt NIfTI file ({_first_line(gzip_error)})"
    return "unreadable: not a NIfTI file, or its header is damaged"


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_finite(array: np.ndarray, path: str | Path) -> None:
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise DataError(f"contains NaN or Inf voxels ({bad} of {array.size})", path)


def labels_in(array: np.ndarray) -> np.ndarray:
    """Sorted label values present in a mask array (any dtype)."""
    return np.unique(array)


def to_labels(array: np.ndarray, path: str | Path) -> np.ndarray:
    """A mask array (float-typed masks are valid HipMRI) as uint8 labels 0..5, or a DataError."""
    check_finite(array, path)
    if np.issubdtype(array.dtype, np.floating):
        rounded = np.rint(array)
        if np.abs(array - rounded).max() > 1e-3:
            raise DataError("mask has non-integer values (expected labels 0..5)", path)
        array = rounded
    values = labels_in(array)
    outside = values[(values < 0) | (values >= NUM_CLASSES)]
    if outside.size:
        shown = ", ".join(str(int(v)) for v in outside[:8])
        raise DataError(f"labels outside 0..{NUM_CLASSES - 1}: {shown}", path)
    return array.astype(np.uint8)


def load_slice(path: str | Path, kind: str = "image") -> np.ndarray:
    """A validated 2-D slice: float32 for ``kind="image"``, uint8 labels for ``kind="mask"``."""
    array = read_array(path)
    if kind == "mask":
        return to_labels(array, path)
    if kind != "image":
        raise ValueError(f"kind must be 'image' or 'mask', not {kind!r}")
    array = np.asarray(array, dtype=np.float32)
    check_finite(array, path)
    return array


def save_slice(array: np.ndarray, path: str | Path, affine: np.ndarray | None = None) -> Path:
    """Write one slice as NIfTI, atomically like every file prostate-vq writes (phantom, importer, sampled
    slices); gzip at nibabel's level 1 without a time stamp, so the same array gives the same bytes."""
    path = Path(path)
    image = nib.Nifti1Image(array, np.eye(4) if affine is None else affine)
    image.header.set_data_dtype(array.dtype)
    data = image.to_bytes()
    with atomic_open(path, "wb") as handle:
        handle.write(gzip.compress(data, compresslevel=1, mtime=0) if path.name.endswith(".gz") else data)
    return path
