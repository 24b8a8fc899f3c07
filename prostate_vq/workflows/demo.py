"""`prostate-vq demo`: the whole path on the demo phantom (data -> train -> evaluate -> report)."""

from __future__ import annotations

from pathlib import Path

from prostate_vq.errors import UserInputError
from prostate_vq.workflows.steps import evaluate_run, say, train_run


def demo(
    out="demo-out",
    minutes: float = 5.0,
    device: str = "auto",
    seed: int = 0,
    *,
    data=None,
    preset: str = "default",
    task: str = "image",
    spatial_size=None,
    max_slices: int | None = None,
    epochs: int | None = None,
    progress: bool = True,
    overrides=None,
    max_steps: int | None = None,
    compile: bool = False,
) -> Path:
    """The whole path on the demo phantom: data -> train ``preset`` for ``minutes`` -> evaluate -> report."""
    from prostate_vq.reporting.markdown import write_report

    if minutes is not None and minutes <= 0:
        raise UserInputError(f"--minutes must be positive, got {minutes}")
    out = Path(out)
    if data is None:
        from prostate_vq.data import default_data_root

        say("demo 1/4", "preparing the demo phantom (generated once, then cached)")
        data = default_data_root()
    say("demo 1/4", f"data: {data}")
    run = train_run(
        "demo 2/4",
        out / "run",
        data=data,
        preset=preset,
        task=task,
        epochs=epochs,
        max_minutes=minutes,
        spatial_size=spatial_size,
        seed=seed,
        device=device,
        max_slices=max_slices,
        progress=progress,
        overrides=overrides,
        max_steps=max_steps,
        compile=compile,
    )
    say("demo 3/4", "evaluating best.pt on the test split")
    result = evaluate_run("demo 3/4", run, out / "eval", data=data, device=device, max_slices=max_slices)
    print(result.summary_table(), flush=True)
    report = write_report([run, out / "eval"], out / "report.md", title="prostate-vq demo")
    say("demo 4/4", f"report written to {report}")
    return report
