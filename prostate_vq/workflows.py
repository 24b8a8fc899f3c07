"""Multi-step workflows: ``sweep`` (train + evaluate several presets, one comparison report) and
``demo`` (phantom -> train -> evaluate -> report). Each step is the public function a user could call."""

from __future__ import annotations

import time
from pathlib import Path

from prostate_vq.errors import UserInputError


def _say(tag: str, message: str) -> None:
    print(f"[{tag}] {message}", flush=True)


def _finished(run: Path) -> bool:
    """A run folder whose training already ended (so a re-run of the workflow reuses it)."""
    from prostate_vq.training.checkpoints import load_checkpoint

    last = run / "last.pt"
    return last.is_file() and (run / "best.pt").is_file() and bool(load_checkpoint(last).get("finished"))


def _train(tag: str, run: Path, *, data, preset: str, task: str, epochs, max_minutes, spatial_size, seed: int,
           device: str, max_slices, progress: bool, overrides=None) -> Path:
    from prostate_vq.training import TrainOptions, train

    if _finished(run):
        _say(tag, f"{preset}: reusing the finished run in {run}")
        return run
    resume = (run / "last.pt").is_file()
    budget = f", at most {max_minutes:g} min" if max_minutes else ""
    _say(tag, f"{preset}: {'resuming' if resume else 'training'} ({task} task{budget}) -> {run}")
    start = time.monotonic()
    train(TrainOptions(out=run, data=None if data is None else Path(data), preset=preset, task=task, epochs=epochs,
                       max_minutes=max_minutes, spatial_size=tuple(spatial_size) if spatial_size else None,
                       seed=seed, device=device, resume=resume, max_slices=max_slices, progress=progress,
                       overrides=list(overrides or [])))
    _say(tag, f"{preset}: trained in {(time.monotonic() - start) / 60:.1f} min")
    return run


def _evaluate(tag: str, run: Path, out: Path, *, data, device: str, max_slices):
    from prostate_vq.evaluation import evaluate_checkpoint

    result = evaluate_checkpoint(run / "best.pt", data=data, split="test", out=out, device=device,
                                 max_slices=max_slices)
    m = result.to_dict()
    parts = [f"{result.n_slices} test slices"]
    if m.get("ssim_mean") is not None:
        parts.append(f"SSIM {m['ssim_mean']:.4f} ({result.verdict})")
    if m.get("dice_mean") is not None:
        parts.append(f"Dice {100 * m['dice_mean']:.2f}%")
    parts.append(f"codebook usage {m['codebook_usage_pct']:.1f}%")
    if m.get("bits_per_pixel") is not None:
        parts.append(f"{m['bits_per_pixel']:.4g} bits per pixel")
    _say(tag, f"{result.preset}: " + ", ".join(parts))
    return result


def sweep(data, presets, out, max_minutes: float | None = None, task: str = "image", epochs: int | None = None,
          device: str = "auto", seed: int = 0, spatial_size=None, max_slices: int | None = None,
          progress: bool = True, overrides=None) -> Path:
    """Train and evaluate every preset into ``out/<preset>/{run,eval}``; returns ``out/report.md``.

    ``overrides`` (``section.key=value``) apply to every preset. Re-running the same command resumes
    unfinished runs and reuses finished ones.
    """
    from prostate_vq.models import apply_overrides, get_preset
    from prostate_vq.reporting.markdown import write_report

    presets = [p.strip() for p in presets if p and p.strip()]
    if not presets:
        raise UserInputError("--presets needs at least one preset name")
    if len(set(presets)) != len(presets):
        raise UserInputError(f"a preset is listed twice: {', '.join(presets)}")
    for name in presets:  # fail before hours of training, not after
        apply_overrides(get_preset(name), list(overrides or []))
    if data is None:
        from prostate_vq.data import default_data_root

        data = default_data_root()
    out = Path(out)
    for i, preset in enumerate(presets, 1):
        tag = f"sweep {i}/{len(presets)}"
        run = _train(tag, out / preset / "run", data=data, preset=preset, task=task, epochs=epochs,
                     max_minutes=max_minutes, spatial_size=spatial_size, seed=seed, device=device,
                     max_slices=max_slices, progress=progress, overrides=overrides)
        _evaluate(tag, run, out / preset / "eval", data=data, device=device, max_slices=max_slices)
    report = write_report([out / p for p in presets], out / "report.md",
                          title=f"prostate-vq sweep: {', '.join(presets)}")
    _say("sweep", f"report: {report}")
    return report


def demo(out="demo-out", minutes: float = 5.0, device: str = "auto", seed: int = 0, *, data=None,
         preset: str = "default", task: str = "image", spatial_size=None, max_slices: int | None = None,
         epochs: int | None = None, progress: bool = True, overrides=None) -> Path:
    """The whole path on the demo phantom: data -> train ``preset`` for ``minutes`` -> evaluate -> report."""
    from prostate_vq.reporting.markdown import write_report

    if minutes is not None and minutes <= 0:
        raise UserInputError(f"--minutes must be positive, got {minutes}")
    out = Path(out)
    if data is None:
        from prostate_vq.data import default_data_root

        _say("demo 1/4", "preparing the demo phantom (generated once, then cached)")
        data = default_data_root()
    _say("demo 1/4", f"data: {data}")
    run = _train("demo 2/4", out / "run", data=data, preset=preset, task=task, epochs=epochs, max_minutes=minutes,
                 spatial_size=spatial_size, seed=seed, device=device, max_slices=max_slices, progress=progress,
                 overrides=overrides)
    _say("demo 3/4", "evaluating best.pt on the test split")
    result = _evaluate("demo 3/4", run, out / "eval", data=data, device=device, max_slices=max_slices)
    print(result.summary_table(), flush=True)
    report = write_report([run, out / "eval"], out / "report.md", title="prostate-vq demo")
    _say("demo 4/4", f"report written to {report}")
    return report
