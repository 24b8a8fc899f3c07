"""`prostate-vq train`: one preset through the engine; a preset with a `refit` section goes on with ReFiT in the
same command (stage 1 in RUN/base, the final model in RUN), the time and step budgets split between the stages."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from prostate_vq.runtime import distributed as ddp
from prostate_vq.runtime.checkpoints import load_checkpoint
from prostate_vq.runtime.device import resolve_device
from prostate_vq.schema import RefitConfig, RunConfig
from prostate_vq.training.config import RunRequest, check_options, resolve
from prostate_vq.training.refit import refit, write_summary
from prostate_vq.training.vqvae import TrainOptions, fit
from prostate_vq.training.vqvae.fit import resume_request


def train(options: TrainOptions, config: RunRequest | RunConfig | None = None) -> Path | None:
    """Train one preset; returns the run folder (None on torchrun ranks > 0).

    `options` say how the run runs (data, folder, device, time budget, --resume); `config` what it trains: a
    RunRequest as `prostate-vq train` gives one (resolved here, the same way), a RunConfig already resolved
    (training.config.resolve, then changed as the caller likes), or None for the default preset. A resumed run
    continues its checkpoint's config, so it takes a RunRequest (its epochs, max_steps, patience and lr apply).

    A RunConfig holds values, not which of them were given: with a refit section, its ReFiT stage fine-tunes for
    refit.epochs (else training.epochs), where a request's explicit epochs would be both stages'."""
    check_options(options)
    request = resume_request(options, config)
    base_last = Path(options.out) / "base" / "last.pt"
    if options.resume and base_last.exists():
        base = load_checkpoint(base_last, kind="resume")
        return train_then_refit(
            options,
            request,
            RunConfig.from_sections(base["config"], preset=base["preset"], task=base["task"], seed=int(base.get("seed", 0))),
        )
    if options.resume:
        return fit(options, request)
    resolved = config if isinstance(config, RunConfig) else resolve(request)
    if resolved.refit is not None:
        return train_then_refit(options, request, resolved)
    return fit(options, resolved)


def train_then_refit(options: TrainOptions, request: RunRequest, config: RunConfig) -> Path | None:
    """`train --preset v2-refit`: stage 1 trains the preset into RUN/base, stage 2 ReFiTs its best.pt into RUN.
    `request` is what was given (its epochs, patience and lr also apply when a stage resumes; its epochs are the
    fine-tuning's too), `config` the resolved config with a refit section."""
    started = time.monotonic()
    out = Path(options.out)
    budget = options.max_minutes
    device = options.device
    base_dir = out / "base"
    base_last = base_dir / "last.pt"
    # Under torchrun the group lives across both stages (each fit() joins it, none destroys it).
    config = split_step_budget(config)
    recipe = config.refit
    if recipe is None:
        raise ValueError("train_then_refit needs a config with a refit section")
    with ddp.process_group(resolve_device(device)):
        # The step budget is split in the config (stage 1 resumes with its stored share, not the whole).
        stage1 = replace(
            options,
            out=base_dir,
            resume=options.resume and base_last.exists(),
            max_minutes=None if budget is None else 0.75 * budget,
        )
        if not (stage1.resume and load_checkpoint(base_last).get("finished")):
            fit(stage1, replace(request, max_steps=None) if stage1.resume else config)
        remaining = None if budget is None else max(0.05, budget - (time.monotonic() - started) / 60.0)
        if options.resume and (out / "last.pt").exists():
            run = fit(replace(options, resume=True, max_minutes=remaining), replace(request, epochs=None, max_steps=None))
            write_summary(out)
        else:
            run = _refit_stage(options, request, config, recipe, remaining)
        return run


def _refit_stage(
    options: TrainOptions, request: RunRequest, config: RunConfig, recipe: RefitConfig, remaining: float | None
) -> Path | None:
    """Stage 2: ReFiT of RUN/base/best.pt into RUN for the time left."""
    out = Path(options.out)
    return refit(
        out / "base" / "best.pt",
        out,
        int(recipe.codebook_size),
        data=options.data,
        epochs=request.epochs or recipe.epochs,
        max_minutes=remaining,
        device=options.device,
        seed=config.seed,
        progress=options.progress,
        max_slices=options.max_slices,
        num_workers=options.num_workers,
        tensorboard=options.tensorboard,
    )


def split_step_budget(config: RunConfig) -> RunConfig:
    """A step budget for train-then-ReFiT (training.max_steps = N) is the whole command's, split like a time
    budget: 3/4 for stage 1 (training.max_steps), the rest for the fine-tuning (refit.max_steps), so a sweep
    compares v2-refit at the same total steps as single-stage presets. A split config is returned unchanged."""
    steps, recipe = config.training.max_steps, config.refit
    if not steps or recipe is None or recipe.max_steps:
        return config
    stage1 = max(1, round(0.75 * int(steps)))
    return replace(
        config, training=replace(config.training, max_steps=stage1), refit=replace(recipe, max_steps=max(1, int(steps) - stage1))
    )
