"""Writing files so that a crash, a kill -9 or a full disk never leaves a half-written one, and locking a
run folder against a second process; and the plain-data conversions every JSON file and checkpoint goes
through. The lowest layer of the package: it imports nothing of it but errors.

Every temporary file or folder is named ``.NAME.prostate-vq-XXXXXXXX.tmp`` (a name only this module makes),
so a clean-up removes our own leftovers and never a user's ``.notes.tmp``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from prostate_vq.errors import UserInputError

TEMP_TAG = ".prostate-vq-"
_OWN_TEMP = re.compile(r"^\..+\.prostate-vq-[A-Za-z0-9_]+\.tmp$")
LOCK_NAME = ".lock"
# errno values that mean "this file cannot be written here", not a bug: shown as one line, exit 2.
_WRITE_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EFBIG,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.ENAMETOOLONG,
}
_TORCH_WRITE_FAILURES = ("unexpected pos", "PytorchStreamWriter", "file write failed")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # mkstemp makes 0600 files; outputs get the usual permissions


def is_own_temp(path: str | Path) -> bool:
    """A temporary file or folder of this module (see the module docstring)."""
    return bool(_OWN_TEMP.match(Path(path).name))


def remove_stale_temps(folder: str | Path) -> int:
    """Remove our temporaries left in `folder` by a killed process (call it only while holding the folder's
    lock, or where no other process writes); returns how many were removed."""
    removed = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for path in folder.iterdir():
        if is_own_temp(path):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed += 1
    return removed


def write_error(error: BaseException, path: str | Path) -> UserInputError | None:
    """The one-line error for a write that failed for a reason outside prostate-vq (disk full, quota,
    permissions, read-only), including torch.save's RuntimeError around such an OSError; else None."""
    if isinstance(error, UserInputError):
        return error
    chain: BaseException | None = error
    seen = 0
    while chain is not None and seen < 8:
        if isinstance(chain, OSError) and chain.errno in _WRITE_ERRNOS:
            reason = chain.strerror or os.strerror(chain.errno)
            return UserInputError(f"cannot write ({reason}); nothing was changed here", path)
        chain, seen = chain.__cause__ or chain.__context__, seen + 1
    if isinstance(error, RuntimeError) and any(text in str(error) for text in _TORCH_WRITE_FAILURES):
        return UserInputError("cannot write (the write failed midway, e.g. disk full); nothing was changed here", path)
    return None


def ensure_dir(folder: str | Path) -> Path:
    """`folder`, created if needed; a file in the way or a folder that cannot be created is one line."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserInputError("is a file, not a folder", folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise UserInputError(f"cannot create this folder ({reason})", folder) from None
    return folder


def _fsync_dir(folder: Path) -> None:
    """Persist a rename itself (POSIX); harmless where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class StagedFiles:
    """Files that appear together: each is written to a temporary beside its target, and `commit` renames
    them all into place in the order written. Until then the targets are untouched; `discard` removes
    every temporary. A rename replaces a symlink itself, never the file it points to."""

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []

    @contextmanager
    def open(self, path: str | Path, mode: str = "wb", **kwargs):
        path = Path(path)
        ensure_dir(path.parent)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_TAG}", suffix=".tmp", dir=path.parent)
        except OSError as error:
            raise (write_error(error, path) or error) from None
        self._pending.append((Path(tmp), path))
        try:
            os.fchmod(fd, _FILE_MODE)
            with os.fdopen(fd, mode, **kwargs) as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException as error:
            self.discard()
            mapped = write_error(error, path)
            if mapped is not None and mapped is not error:
                raise mapped from None
            raise

    def commit(self) -> None:
        try:
            for tmp, path in self._pending:
                os.replace(tmp, path)
        except BaseException as error:
            self.discard()
            raise (write_error(error, path) or error) from None
        for folder in {path.parent for _, path in self._pending}:
            _fsync_dir(folder)
        self._pending = []

    def discard(self) -> None:
        for tmp, _ in self._pending:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self._pending = []


@contextmanager
def staged_files():
    """``with staged_files() as stage: with stage.open(a) ...; with stage.open(b) ...``: a and b are
    renamed into place together at the end, or, on any error, neither is touched."""
    stage = StagedFiles()
    try:
        yield stage
    except BaseException:
        stage.discard()
        raise
    stage.commit()


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb", **kwargs):
    """Write through a temporary file beside `path`, fsync it, then rename it over `path`: a crash or a full
    disk mid-write leaves the previous file intact and no temporary behind (checkpoints, CSV, JSON, figures).
    A failure outside prostate-vq (disk full, permissions) becomes a one-line UserInputError naming `path`."""
    with staged_files() as stage, stage.open(path, mode, **kwargs) as handle:
        yield handle


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return Path(path)


def plain(value: Any) -> Any:
    """Paths, tuples and numpy scalars as the builtin types that YAML, JSON and torch's weights-only unpickler take."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (os.PathLike, str)):
        return str(value)  # also plain-str of str subclasses such as torch.__version__
    if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0):
        return value.item()
    return value


def json_float(value: Any) -> float | None:
    """One number for strict JSON: NaN/Inf (and None) become null."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def strict_json(value: Any) -> Any:
    """Strict JSON has no NaN/Inf: they become null at any depth (e.g. Dice of the image task)."""
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return json_float(value) if isinstance(value, float) else value


def write_json_atomic(path: str | Path, value: Any, indent: int = 1) -> Path:
    """Strict JSON (NaN/Inf as null), written atomically."""
    return write_text_atomic(path, json.dumps(strict_json(plain(value)), indent=indent, allow_nan=False) + "\n")


@contextmanager
def staged_folder(out: str | Path, last: str | None = None, new_files_only: bool = False):
    """Yield a temporary folder inside `out`; write files there as they should appear under `out`. On success
    they are moved into `out` (the file named `last` after all others, so that its presence vouches for
    them) and the folder removed; on any error it is removed and `out` is as before. With `new_files_only`
    (nothing may be overwritten), a failure during the moves also takes back the files already moved."""
    out = ensure_dir(out)
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name or 'out'}{TEMP_TAG}", suffix=".tmp", dir=out))
    except OSError as error:
        raise (write_error(error, out) or error) from None
    try:
        try:
            yield stage
        except (UserInputError, OSError) as error:
            relocated = _relocate(error, stage, out)
            if relocated is None:
                raise
            raise relocated from None
        _publish(stage, out, last, new_files_only)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _relocate(error: BaseException, stage: Path, out: Path) -> UserInputError | None:
    """The error of a write into the staging folder, naming the file where it was going to appear; a full
    disk met by a writer that is not ours (nibabel) becomes one line too."""

    def outside(name) -> str | None:
        if name is None:
            return None
        try:
            return str(out / Path(name).relative_to(stage))
        except ValueError:
            return str(name)

    if isinstance(error, UserInputError):
        if error.path is None or outside(error.path) == error.path:
            return None
        return type(error)(error.message, outside(error.path))
    if isinstance(error, OSError) and error.errno in _SPACE_ERRNOS:
        return write_error(error, outside(error.filename) or out)
    return None


def _publish(stage: Path, out: Path, last: str | None, new_files_only: bool) -> None:
    files = sorted(
        (p for p in stage.rglob("*") if p.is_file() and not is_own_temp(p)),
        key=lambda p: (p.relative_to(stage).as_posix() == last, str(p)),
    )
    moved: list[Path] = []
    target = out
    try:
        for source in files:
            target = out / source.relative_to(stage)
            if target.parent != out:
                ensure_dir(target.parent)
            if new_files_only and (target.exists() or target.is_symlink()):
                raise UserInputError("already exists; nothing was written", target)
            os.replace(source, target)
            moved.append(target)
    except BaseException as error:
        if new_files_only:
            for done in moved:
                done.unlink(missing_ok=True)
        mapped = write_error(error, target)
        if mapped is not None and mapped is not error:
            raise mapped from None
        raise
    for folder in {p.parent for p in moved}:
        _fsync_dir(folder)


@contextmanager
def folder_lock(folder: str | Path, active: bool = True, create: bool = True):
    """Hold an exclusive lock on `folder` (``folder/.lock``, flock) for as long as the block runs; a second
    process gets a one-line UserInputError at once. The kernel releases the lock when the holder dies, so a
    killed run can resume. Inactive (a no-op) on torchrun ranks > 0, without fcntl (Windows), and when the
    folder does not exist and `create` is False."""
    folder = Path(folder)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        active = False
    if not active or (not create and not folder.is_dir()):
        yield
        return
    ensure_dir(folder)
    lock = folder / LOCK_NAME
    if lock.is_symlink():  # writing the pid through it would change a file outside the folder
        raise UserInputError("is a symbolic link; prostate-vq writes its lock only as a file of its own: remove the link", lock)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as error:
        if error.errno == errno.ELOOP:  # a link planted between the check and the open
            raise UserInputError("is a symbolic link; remove it", lock) from None
        raise (write_error(error, lock) or error) from None
    try:
        if not _try_flock(fcntl, fd):
            raise UserInputError(
                "another prostate-vq process is working in this folder; wait for it to finish or choose another --out", folder
            )
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # the pid is a courtesy to the user; the flock is the lock
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _try_flock(fcntl, fd: int) -> bool:
    """False when another process holds the lock; True when we got it, or where the file system has no
    locks (some network mounts: work on unlocked, as before)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        return error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
    return True
