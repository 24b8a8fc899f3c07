"""VQ-VAE model family: quantizer variants, encoders/decoders, tasks, presets and summaries."""

from __future__ import annotations

from .build import build_model
from .presets import apply_overrides, get_preset, list_presets
from .quantizers import QuantizerOutput, build_quantizer
from .vqvae import MODEL_DEFAULTS, NUM_CLASSES, TASKS, VQVAE, VQVAE2, ModelOutput

__all__ = [
    "MODEL_DEFAULTS",
    "NUM_CLASSES",
    "TASKS",
    "VQVAE",
    "VQVAE2",
    "ModelOutput",
    "QuantizerOutput",
    "apply_overrides",
    "build_model",
    "build_quantizer",
    "get_preset",
    "list_presets",
]
