"""Quantizer variants behind one interface (`base.Quantizer`), one per module, each registered by
`@register_quantizer(kind)` (registry.py); `build_quantizer` picks one by `kind`. Importing this package imports
every built-in kind's module, which registers it."""

from __future__ import annotations

from collections.abc import Callable

from . import ema, fsq, lfq, monai_ema, rq, soft, vq  # noqa: F401 - importing a kind's module registers it
from .base import Quantizer, QuantizerOutput, code_counts, nearest_code, perplexity, usage
from .ema import EMAQuantizer
from .fsq import FSQQuantizer
from .lfq import LFQQuantizer
from .monai_ema import MonaiEMAQuantizer
from .registry import (
    QUANTIZERS,
    check_options,
    option_rules,
    quantizer_class,
    quantizer_options,
    register_quantizer,
    unregister_quantizer,
)
from .rq import ResidualQuantizer
from .soft import SoftQuantizer
from .vq import VectorQuantizer


def build_quantizer(cfg: dict, dim: int) -> Quantizer:
    """`cfg` is a preset's `quantizer` section: `kind` plus that kind's options (checked as a config is)."""
    options = dict(cfg)
    kind = options.pop("kind", None)
    # Every registered kind is built as cls(dim=..., **its options); the base class's own __init__ takes neither.
    make: Callable[..., Quantizer] = quantizer_class(kind)
    return make(dim=dim, **check_options(kind, options))


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
    "check_options",
    "code_counts",
    "nearest_code",
    "option_rules",
    "perplexity",
    "quantizer_class",
    "quantizer_options",
    "register_quantizer",
    "unregister_quantizer",
    "usage",
]
