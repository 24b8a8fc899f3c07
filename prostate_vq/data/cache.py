"""Where the built-in demo phantom lives, generated once per machine."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from prostate_vq.data.phantom import PHANTOM_VERSION, synthesize


def cache_dir() -> Path:
    """``$PROSTATE_VQ_CACHE`` or ``~/.cache/prostate-vq``."""
    env = os.environ.get("PROSTATE_VQ_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "prostate-vq"


def _is_complete(root: Path) -> bool:
    try:
        info = json.loads((root / "phantom.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return info.get("phantom_version") == PHANTOM_VERSION


def default_data_root() -> Path:
    """The demo phantom (default size and seed), generated on first use.

    Generated into a temporary sibling and renamed into place, so a killed run never leaves a half
    dataset and concurrent first runs (e.g. several torchrun ranks) agree on one copy.
    """
    root = cache_dir() / "demo-phantom"
    if _is_complete(root):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".demo-phantom.", dir=root.parent))
    try:
        built = synthesize(work / "phantom")
        if root.exists() and not _is_complete(root):  # an older phantom version: move it aside first
            stale = Path(tempfile.mkdtemp(prefix=".stale-phantom.", dir=root.parent))
            os.replace(root, stale / "old")
        try:
            os.replace(built, root)
        except OSError:
            if not _is_complete(root):  # another process won the race with a complete copy otherwise
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for stale in root.parent.glob(".stale-phantom.*"):
            shutil.rmtree(stale, ignore_errors=True)
    return root
