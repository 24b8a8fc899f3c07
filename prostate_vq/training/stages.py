"""`prostate-vq train`: one preset through the engine; a preset with a `refit` section goes on with ReFiT in the
same command (stage 1 in RUN/base, the final model in RUN), the time and step budgets split between the stages."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from prostate_vq.runtime import distributed as ddp
from prostate_vq.runtime.checkpoints import load_checkpoint
from prostate_vq.runtime.device import resolve_device
from prostate_vq.schema import RunConfig
from prostate_vq.training.config import check_options, resolve
from prostate_vq.training.refit import refit, write_summary
from prostate_vq.training.vqvae import TrainOptions, fit


def train(options: TrainOptions) -> Path | None:
    """Train one preset; returns the run folder (None on torchrun ranks > 0)."""
    check_options(options)
    base_last = Path(options.out) / "base" / "last.pt"
    if options.resume and base_last.exists():
        base = load_checkpoint(base_last, kind="resume")
        return train_then_refit(options, RunConfig.from_sections(base["config"], preset=base["preset"],
                                                                 task=base["task"], seed=int(base.get("seed", 0))))
    config = None if options.resume else resolve(options)
    if config is not None and config.refit is not None:
        return train_then_refit(options, config)
    return fit(options, config)


def train_then_refit(options: TrainOptions, config: RunConfig) -> Path:
    """`train --preset v2-refit`: stage 1 trains the preset into RUN/base, stage 2 ReFiTs its best.pt into RUN."""
    started = time.monotonic()
    out = Path(options.out)
    budget = options.max_minutes
    device = options.device
    base_dir = out / "base"
    base_last = base_dir / "last.pt"
    # Under torchrun the group lives across both stages (each fit() joins it, none destroys it).
    config = split_step_budget(config)
    recipe = config.refit
    with ddp.process_group(resolve_device(device)):
        stage1 = replace(options, out=base_dir, resume=options.resume and base_last.exists(),
                         max_minutes=None if budget is None else 0.75 * budget, max_steps=None)
        if not (stage1.resume and load_checkpoint(base_last).get("finished")):
            fit(stage1, None if stage1.resume else config)
        remaining = None if budget is None else max(0.05, budget - (time.monotonic() - started) / 60.0)
        if options.resume and (out / "last.pt").exists():
            run = fit(replace(options, resume=True, max_minutes=remaining, epochs=None, max_steps=None))
            write_summary(out)
        else:
            run = refit(base_dir / "best.pt", out, int(recipe.codebook_size), data=options.data,
                        epochs=options.epochs or recipe.epochs, max_minutes=remaining, device=device,
                        seed=config.seed, progress=options.progress, max_slices=options.max_slices,
                        num_workers=options.num_workers, tensorboard=options.tensorboard)
        return run


def split_step_budget(config: RunConfig) -> RunConfig:
    """A step budget for train-then-ReFiT (training.max_steps = N) is the whole command's, split like a time
    budget: 3/4 for stage 1 (training.max_steps), the rest for the fine-tuning (refit.max_steps), so a sweep
    compares v2-refit at the same total steps as single-stage presets. A split config is returned unchanged."""
    steps, recipe = config.training.max_steps, config.refit
    if not steps or recipe is None or recipe.max_steps:
        return config
    stage1 = max(1, round(0.75 * int(steps)))
    return replace(config, training=replace(config.training, max_steps=stage1),
                   refit=replace(recipe, max_steps=max(1, int(steps) - stage1)))
