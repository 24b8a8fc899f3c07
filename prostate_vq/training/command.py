"""`prostate-vq train`: one preset through the engine; a preset with a `refit` section goes on with ReFiT
in the same command (stage 1 in RUN/base, the final model in RUN)."""

from __future__ import annotations

from pathlib import Path

from prostate_vq.training.checkpoints import load_checkpoint
from prostate_vq.training.config import check_options, resolve_config
from prostate_vq.training.refit import train_then_refit
from prostate_vq.training.trainer import TrainOptions, fit


def train(options: TrainOptions) -> Path | None:
    """Train one preset; returns the run folder (None on torchrun ranks > 0)."""
    check_options(options)
    base_last = Path(options.out) / "base" / "last.pt"
    if options.resume and base_last.exists():
        return train_then_refit(options, load_checkpoint(base_last, kind="resume")["config"])
    cfg = None if options.resume else resolve_config(options)
    if cfg is not None and cfg.get("refit"):
        return train_then_refit(options, cfg)
    return fit(options, cfg)
