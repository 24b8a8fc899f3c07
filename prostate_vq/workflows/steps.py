"""The steps workflows are made of: train one run (reusing a finished one, resuming a killed one) and evaluate
its best.pt, each through the public function a user could call, with one progress line each."""

from __future__ import annotations

import time
from pathlib import Path


def say(tag: str, message: str) -> None:
    print(f"[{tag}] {message}", flush=True)


def finished(run: Path) -> bool:
    """A run folder whose training already ended (so a re-run of the workflow reuses it)."""
    from prostate_vq.runtime.checkpoints import load_checkpoint

    last = run / "last.pt"
    return last.is_file() and (run / "best.pt").is_file() and bool(load_checkpoint(last).get("finished"))


def train_run(
    tag: str,
    run: Path,
    *,
    data,
    preset: str,
    task: str,
    epochs,
    max_minutes,
    spatial_size,
    seed: int,
    device: str,
    max_slices,
    progress: bool,
    overrides=None,
    max_steps=None,
    label: str | None = None,
    compile: bool = False,
    tensorboard: bool = False,
) -> Path:
    from prostate_vq.training import RunRequest, TrainOptions, train

    label = label or preset
    if finished(run):
        say(tag, f"{label}: reusing the finished run in {run}")
        return run
    resume = (run / "last.pt").is_file()
    budget = (f", {max_steps} steps" if max_steps else "") + (f", at most {max_minutes:g} min" if max_minutes else "")
    say(tag, f"{label}: {'resuming' if resume else 'training'} ({task} task{budget}) -> {run}")
    start = time.monotonic()
    train(
        TrainOptions(
            out=run,
            data=None if data is None else Path(data),
            max_minutes=max_minutes,
            device=device,
            resume=resume,
            max_slices=max_slices,
            progress=progress,
            compile=compile,
            tensorboard=tensorboard,
        ),
        RunRequest(
            preset=preset,
            task=task,
            seed=seed,
            overrides=list(overrides or []),
            epochs=epochs,
            max_steps=max_steps,
            spatial_size=tuple(spatial_size) if spatial_size else None,
        ),
    )
    say(tag, f"{label}: trained in {(time.monotonic() - start) / 60:.1f} min")
    return run


def evaluate_run(
    tag: str,
    run: Path,
    out: Path,
    *,
    data,
    device: str,
    max_slices,
    label: str | None = None,
    codecs=None,
    lpips_weights=None,
    fid_weights=None,
):
    from prostate_vq.evaluation import evaluate_checkpoint

    result = evaluate_checkpoint(
        run / "best.pt",
        data=data,
        split="test",
        out=out,
        device=device,
        max_slices=max_slices,
        codecs=codecs,
        lpips_weights=lpips_weights,
        fid_weights=fid_weights,
    )
    m = result.to_dict()
    parts = [f"{result.n_slices} test slices"]
    if m.get("ssim_mean") is not None:
        parts.append(f"SSIM {m['ssim_mean']:.4f} ({result.verdict})")
    if m.get("dice_mean") is not None:
        parts.append(f"Dice {100 * m['dice_mean']:.2f}%")
    parts.append(f"codebook usage {m['codebook_usage_pct']:.1f}%")
    if m.get("bits_per_pixel") is not None:
        parts.append(f"{m['bits_per_pixel']:.4g} bits per pixel")
    if m.get("run_steps") is not None:
        parts.append(f"{m['run_steps']} steps")
    say(tag, f"{label or result.preset}: " + ", ".join(parts))
    return result
