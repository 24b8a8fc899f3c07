"""The pretrained-model folder: `model.safetensors` (weights, no pickle) and `config.json` (everything that
rebuilds the model and uses it as trained), read back by `from_pretrained` (diffusers' and TiTok's layout)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from prostate_vq.errors import UserInputError

FORMAT = "prostate-vq-pretrained"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def _safetensors():
    try:
        import safetensors.torch
    except ImportError:  # a required dependency; this names it for a broken environment
        raise UserInputError("the safetensors package is missing: pip install safetensors") from None
    return safetensors.torch


def weights_bytes(model: nn.Module) -> bytes:
    """The state dict as safetensors; clones so tensors that share storage are stored once each (safetensors
    refuses shared storage)."""
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    return _safetensors().save(state, metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})


def read_config(folder: str | Path) -> dict:
    """config.json of an exported folder, checked for format and version."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise UserInputError(f"no {CONFIG}: not a folder written by prostate-vq export", Path(folder))
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserInputError(f"unreadable ({type(error).__name__}: {str(error)[:200]})", path) from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise UserInputError(
            f"not a {FORMAT} config (format {config.get('format') if isinstance(config, dict) else None!r})", path
        )
    if config.get("format_version") != FORMAT_VERSION:
        raise UserInputError(f"format_version {config.get('format_version')!r}; this prostate-vq reads {FORMAT_VERSION}", path)
    for key in ("config", "task", "spatial_size"):
        if key not in config:
            raise UserInputError(f"no {key!r}", path)
    return config


def load_pretrained(folder: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, config.json as a dict) from an exported folder; weights read by safetensors, so
    nothing in the folder is executed."""
    from prostate_vq.models import build_model

    folder = Path(folder)
    config = read_config(folder)
    weights = folder / config.get("weights", WEIGHTS)
    if not weights.is_file():
        raise UserInputError("weights not found", weights)
    try:
        model = build_model(config["config"], config["task"])
    except (KeyError, TypeError, ValueError, UserInputError) as error:
        raise UserInputError(f"its config does not build a model ({error})", folder / CONFIG) from None
    try:
        state = _safetensors().load_file(str(weights))
    except Exception as error:  # safetensors raises its own SafetensorError for truncated or foreign files
        raise UserInputError(f"not a readable safetensors file ({str(error).splitlines()[0][:200]})", weights) from None
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise UserInputError(f"weights do not match config.json ({str(error).splitlines()[0]})", weights) from None
    return model.to(device).eval(), config


def from_pretrained(folder: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The VQ-VAE of a folder written by `prostate-vq export`, in eval mode: `model.encode(x)` gives code maps,
    `model.decode_indices(codes)` images; `model.pretrained_config` is its config.json."""
    model, config = load_pretrained(folder, device)
    model.pretrained_config = config
    return model
