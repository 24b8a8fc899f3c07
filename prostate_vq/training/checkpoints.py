"""Checkpoints that survive a kill -9 and load without unpickling arbitrary objects.

A payload holds only tensors, dicts, lists, strings, numbers, bools and None, so that
`torch.load(weights_only=True)` can read it back. Keys are listed in docs/architecture.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from prostate_vq.errors import UserInputError
from prostate_vq.files import atomic_open

FORMAT_VERSION = 1


def plain(value: Any) -> Any:
    """Turn Paths/tuples/numpy scalars into types the weights-only unpickler accepts."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (os.PathLike, str)):
        return str(value)  # also plain-str of str subclasses such as torch.__version__
    if hasattr(value, "item") and not isinstance(value, torch.Tensor) and getattr(value, "ndim", 1) == 0:
        return value.item()  # numpy scalar
    return value


def save_checkpoint(path: str | Path, payload: dict) -> Path:
    """Write `payload` atomically: a crash or a full disk mid-write leaves the previous file intact (and a
    full disk is one line naming the file)."""
    with atomic_open(path, "wb") as handle:
        torch.save(payload, handle)
    return Path(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a payload with the weights-only unpickler; bad files become one-line UserInputErrors."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError("checkpoint not found", path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated zip, foreign pickle, random bytes...
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        reason = next((line for line in lines if "Unpickler error" in line), lines[0])
        raise UserInputError(f"not a readable prostate-vq checkpoint ({reason[:200]})", path) from None
    if not isinstance(payload, dict) or "model_state" not in payload or "config" not in payload:
        raise UserInputError("not a prostate-vq checkpoint (no model_state/config)", path)
    return payload


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the model a checkpoint describes; returns (model in eval mode, payload).
    `device` may be "auto" (CUDA when available)."""
    from prostate_vq.models import build_model
    from prostate_vq.training.runtime import resolve_device

    device = resolve_device(device) if isinstance(device, str) else device

    payload = load_checkpoint(path, map_location="cpu")
    model = build_model(payload["config"], payload["task"])
    try:
        model.load_state_dict(payload["model_state"])
    except RuntimeError as error:
        raise UserInputError(f"checkpoint weights do not match its config ({str(error).splitlines()[0]})",
                             path) from None
    model.to(device).eval()
    return model, payload
