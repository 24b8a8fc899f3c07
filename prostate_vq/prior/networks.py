"""Build a prior from its stored config (the ``config`` attribute of every prior)."""

from __future__ import annotations

from prostate_vq.errors import UserInputError
from prostate_vq.prior.base import CodePrior
from prostate_vq.prior.pixelcnn import GatedPixelCNN
from prostate_vq.prior.transformer import CodeTransformer

ARCHS = {"pixelcnn": GatedPixelCNN, "transformer": CodeTransformer}


def build_prior(config: dict) -> CodePrior:
    """``config``: ``{"arch": "pixelcnn" | "transformer", "vocab_sizes": [...], ...constructor keywords}``."""
    config = dict(config)
    arch = config.pop("arch", None)
    if arch not in ARCHS:
        raise UserInputError(f"unknown prior architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    return ARCHS[arch](**config)
