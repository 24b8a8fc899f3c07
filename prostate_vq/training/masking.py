"""Masked training: hide random patches of the input; the loss still compares with the full target."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def mask_patches(x: Tensor, ratio: float, patch: int) -> Tensor:
    """Zero a `ratio` share of `patch` x `patch` squares of each sample (independently per sample).

    Patch = the model's downsample factor, so each hidden square is one latent cell. Uses the global
    torch RNG of x's device, which is seeded and stored in last.pt.
    """
    if ratio <= 0:
        return x
    b, _, h, w = x.shape
    gh, gw = -(-h // patch), -(-w // patch)
    keep = (torch.rand(b, 1, gh, gw, device=x.device) >= ratio).to(x.dtype)
    keep = F.interpolate(keep, scale_factor=patch, mode="nearest")[:, :, :h, :w]
    return x * keep
