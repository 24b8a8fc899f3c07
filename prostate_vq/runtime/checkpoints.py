"""Checkpoints that survive a kill -9 and load without unpickling arbitrary objects.

A payload holds only tensors, dicts, lists, strings, numbers, bools and None, so that
`torch.load(weights_only=True)` can read it back. Keys are listed in docs/architecture.md.
"""

from __future__ import annotations

from pathlib import Path

import torch

from prostate_vq.errors import UserInputError
from prostate_vq.files import atomic_open

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, payload: dict) -> Path:
    """Write `payload` atomically: a crash or a full disk mid-write leaves the previous file intact (and a
    full disk is one line naming the file)."""
    with atomic_open(path, "wb") as handle:
        torch.save(payload, handle)
    return Path(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", kind: str = "any") -> dict:
    """Read a payload with the weights-only unpickler and check it is what the caller needs (`kind`: any,
    model, resume, prior, prior_resume); bad files become one-line UserInputErrors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError("checkpoint not found", path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated zip, foreign pickle, random bytes...
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        # torch's first line advises weights_only=False (running the file): keep the line that says why instead
        reason = next(
            (line for line in lines if any(k in line.lower() for k in ("unpickler error", "unsupported", "global"))), lines[0]
        )
        reason = " ".join(reason.split())
        raise UserInputError(
            f"not a readable prostate-vq checkpoint, refused without running it ({reason[:400]})", path
        ) from None
    if not isinstance(payload, dict) or "model_state" not in payload or "config" not in payload:
        raise UserInputError("not a prostate-vq checkpoint (no model_state/config)", path)
    check_payload(payload, kind, path)
    return payload


# What each use of a checkpoint needs beyond model_state and config (see docs/architecture.md).
_NEEDS = {
    "any": (),
    "model": (("task", str), ("spatial_size", list)),
    "resume": (
        ("task", str),
        ("spatial_size", list),
        ("epoch", int),
        ("optimizer_state", dict),
        ("rng_state", dict),
        ("early_stopping", dict),
        ("history", list),
    ),
    "prior": (("layout", dict), ("vqvae", dict)),
    "prior_resume": (
        ("layout", dict),
        ("vqvae", dict),
        ("training", dict),
        ("epoch", int),
        ("optimizer_state", dict),
        ("rng_state", dict),
        ("early_stopping", dict),
    ),
}
_WHAT = {
    "any": "checkpoint",
    "model": "VQ-VAE checkpoint",
    "resume": "run's last.pt for --resume",
    "prior": "prior checkpoint",
    "prior_resume": "prior run's last.pt for --resume",
}


def check_payload(payload: dict, kind: str, path: str | Path) -> None:
    """Refuse, in one line, a payload of another format version or lacking what `kind` needs, before any
    use of it can fail with a KeyError deep inside."""

    def bad(problem: str):
        raise UserInputError(f"not a usable {_WHAT[kind]}: {problem}", path)

    version = payload.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        bad(f"format_version {version!r}, this prostate-vq reads {FORMAT_VERSION}")
    if not isinstance(payload["model_state"], dict) or not isinstance(payload["config"], dict):
        bad("model_state and config must be mappings")
    is_prior = payload.get("kind") == "prior"
    if kind.startswith("prior") != is_prior and kind != "any":
        raise UserInputError(
            "this is a prior checkpoint; pass the VQ-VAE's best.pt (from prostate-vq train)"
            if is_prior
            else "not a prior checkpoint (train one with prostate-vq train-prior)",
            path,
        )
    for key, expected in _NEEDS[kind]:
        if key not in payload:
            hint = "; best.pt holds the weights only, --resume reads last.pt" if kind == "resume" else ""
            bad(f"no {key!r}{hint}")
        if not isinstance(payload[key], expected) or (expected is int and isinstance(payload[key], bool)):
            bad(f"{key!r} is {type(payload[key]).__name__}, expected {expected.__name__}")
    if kind in ("model", "resume"):
        _check_model_fields(payload, bad)
    if kind == "resume" and not isinstance(payload["config"].get("training"), dict):
        bad("its config has no training section")
    if kind.startswith("prior"):
        check_payload(payload["vqvae"], "model", path)


def _check_model_fields(payload: dict, bad) -> None:
    if payload["task"] not in ("image", "mask", "joint"):
        bad(f"task {payload['task']!r} (image, mask or joint)")
    size = payload["spatial_size"]
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        bad(f"spatial_size {size!r} (two positive integers)")
    for section in ("model", "quantizer"):
        if not isinstance(payload["config"].get(section), dict):
            bad(f"its config has no {section} section")


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the model a checkpoint describes; returns (model in eval mode, payload).
    `device` may be "auto" (CUDA when available)."""
    from prostate_vq.runtime.device import resolve_device

    device = resolve_device(device) if isinstance(device, str) else device

    payload = load_checkpoint(path, map_location="cpu", kind="model")
    model = model_of(payload, path)
    model.to(device).eval()
    return model, payload


def model_of(payload: dict, path: str | Path | None):
    """The model a VQ-VAE payload describes, its weights loaded: a config that builds no model, weights of
    another model (fsq weights under a vq config) or non-finite weights are one line naming the file."""
    from prostate_vq.models import build_model
    from prostate_vq.models.presets import check_model_config

    try:
        check_model_config(payload["config"])
        model = build_model(payload["config"], payload["task"])
    except (KeyError, TypeError, ValueError, UserInputError) as error:
        raise UserInputError(f"not a usable VQ-VAE checkpoint: its config does not build a model ({error})", path) from None
    load_weights(model, payload["model_state"], path)
    return model


def load_weights(module: torch.nn.Module, state: dict, path: str | Path | None, what: str = "checkpoint") -> None:
    """`module.load_state_dict(state)`, refusing in one line weights that do not fit the checkpoint's own config
    or that hold NaN/Inf (a diverged run's: evaluating or encoding them gives numbers that mean nothing)."""
    bad = [
        name
        for name, value in state.items()
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]
    if bad:
        raise UserInputError(
            f"the {what} is inconsistent: non-finite (NaN or Inf) weights in {', '.join(bad[:3])}"
            + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            + "; use an earlier checkpoint of the run",
            path,
        )
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:300]
        raise UserInputError(f"the {what} is inconsistent: its weights do not match its own config ({detail})", path) from None
