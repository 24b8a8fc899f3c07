"""Quantizer variants behind one interface (`base.Quantizer`); `build_quantizer` picks one by `kind`."""

from __future__ import annotations

import inspect

from prostate_vq.errors import UserInputError

from .base import Quantizer, QuantizerOutput, code_counts, nearest_code, perplexity, usage
from .ema import EMAQuantizer
from .fsq import FSQQuantizer
from .lfq import LFQQuantizer
from .monai_ema import MonaiEMAQuantizer
from .rq import ResidualQuantizer
from .soft import SoftQuantizer
from .vq import VectorQuantizer

QUANTIZERS = {
    "vq": VectorQuantizer,
    "ema": EMAQuantizer,
    "rq": ResidualQuantizer,
    "fsq": FSQQuantizer,
    "lfq": LFQQuantizer,
    "soft": SoftQuantizer,
    "monai-ema": MonaiEMAQuantizer,
}


def quantizer_options(kind: str) -> dict:
    """The options a kind accepts with their defaults (read from the constructors, the one source)."""
    options: dict = {}
    for cls in reversed(QUANTIZERS[kind].__mro__):
        if cls.__module__.startswith(__name__) and "__init__" in vars(cls):
            for name, p in inspect.signature(cls.__init__).parameters.items():
                if name not in ("self", "dim") and p.kind is p.POSITIONAL_OR_KEYWORD:
                    options[name] = None if p.default is p.empty else p.default
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}


def build_quantizer(cfg: dict, dim: int) -> Quantizer:
    """`cfg` is a preset's `quantizer` section: `kind` plus that kind's options."""
    options = dict(cfg)
    kind = options.pop("kind", None)
    if kind not in QUANTIZERS:
        raise UserInputError(f"unknown quantizer kind {kind!r}; choose one of {', '.join(QUANTIZERS)}")
    unknown = sorted(set(options) - set(quantizer_options(kind)))
    if unknown:
        raise UserInputError(f"quantizer kind {kind!r} has no option(s) {', '.join(unknown)}; "
                             f"valid: {', '.join(quantizer_options(kind))}")
    return QUANTIZERS[kind](dim=dim, **options)


__all__ = [
    "QUANTIZERS",
    "EMAQuantizer",
    "FSQQuantizer",
    "LFQQuantizer",
    "MonaiEMAQuantizer",
    "Quantizer",
    "QuantizerOutput",
    "ResidualQuantizer",
    "SoftQuantizer",
    "VectorQuantizer",
    "build_quantizer",
    "code_counts",
    "nearest_code",
    "perplexity",
    "quantizer_options",
    "usage",
]
