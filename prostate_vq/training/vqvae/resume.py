"""What `--resume` keeps from the checkpoint, what it takes from the command line, and saying so: a resumed
run follows its checkpoint's config (preset, --config, --set, task, size, batch, monitor, masking), seed, data and
--max-slices; --epochs, --max-steps, --patience and --lr apply (a budget may grow or shrink, never below what is
done), and so do --max-minutes, --device, --num-workers, --compile and --tensorboard. The "resuming" line names
every option given in either group (docs/training.md): the run's RunRequest and its TrainOptions."""

from __future__ import annotations

import logging
from pathlib import Path

from prostate_vq.errors import UserInputError
from prostate_vq.schema import TrainingConfig
from prostate_vq.training.config import RESUME_APPLIES, RunRequest
from prostate_vq.training.vqvae.options import TrainOptions

log = logging.getLogger("prostate_vq.training")


def refuse_other_data(root: Path, resume: dict, out: Path) -> None:
    """A resumed run on other data would mix two datasets in one history; a moved dataset is fine."""
    stored = Path(str(resume.get("data_root") or ""))
    if stored.is_absolute() and stored.exists() and Path(root).resolve() != stored.resolve():
        raise UserInputError(
            f"--resume continues on the data the run was trained on ({stored}), not --data "
            f"{root}: drop --data, or train a new run into another --out",
            Path(out) / "last.pt",
        )


def refuse_less_than_done(request: RunRequest, resume: dict, out: Path) -> None:
    """A budget below what the run has done would rewrite its config.yaml to a plan it has already overrun."""
    done_epochs = int(resume["epoch"])
    history = resume.get("history") or []
    done_steps = int(history[-1].get("step") or 0) if history else 0
    for flag, given, done, unit in (
        ("--epochs", request.epochs, done_epochs, "epochs"),
        ("--max-steps", request.max_steps, done_steps, "optimizer steps"),
    ):
        if given is not None and int(given) < done:
            raise UserInputError(
                f"{flag} {given}: the run has already done {done} {unit}; give more to extend it, "
                f"or leave {flag} out to continue its plan",
                Path(out) / "last.pt",
            )


def kept_max_slices(options: TrainOptions, resume: dict) -> int | None:
    """The run's own --max-slices (older checkpoints do not record it: then the command line's)."""
    return resume.get("max_slices", options.max_slices)


def _ignored(options: TrainOptions, request: RunRequest, resume: dict, training: TrainingConfig) -> list[str]:
    """The options given that a resumed run does not follow (its checkpoint decides them)."""
    h, w = (int(s) for s in training.spatial_size)
    checks = [
        (
            "--preset",
            request.preset,
            request.config_file is None  # a --config names its own preset
            and request.preset not in (None, "default", resume.get("preset")),
        ),
        ("--config", request.config_file, request.config_file is not None),
        ("--task", request.task, request.task not in (None, "image", resume["task"])),
        (
            "--spatial-size",
            " ".join(str(s) for s in request.spatial_size or ()),
            bool(request.spatial_size) and [int(s) for s in request.spatial_size or ()] != [h, w],
        ),
        (
            "--batch-size",
            request.batch_size,
            request.batch_size is not None and int(request.batch_size) != int(training.batch_size),
        ),
        ("--monitor", request.monitor, request.monitor is not None and request.monitor != training.monitor),
        (
            "--mask-ratio",
            request.mask_ratio,
            request.mask_ratio is not None and float(request.mask_ratio) != float(training.mask_ratio),
        ),
        ("--seed", request.seed, request.seed is not None and int(request.seed) != int(resume.get("seed", 0))),
        (
            "--max-slices",
            options.max_slices,
            "max_slices" in resume and options.max_slices is not None and options.max_slices != resume["max_slices"],
        ),
        ("--set", " ".join(request.overrides or ()), bool(request.overrides)),
    ]
    return [f"{flag} {value}" for flag, value, ignored in checks if ignored]


def _applied(options: TrainOptions, request: RunRequest) -> list[str]:
    """The options given that a resumed run follows."""
    given = [(name, getattr(request, name)) for name in RESUME_APPLIES] + [("max_minutes", options.max_minutes)]
    applied = [f"--{name.replace('_', '-')} {value}" for name, value in given if value is not None]
    if options.data is not None:
        applied.append(f"--data {options.data}")
    if options.device not in (None, "auto"):
        applied.append(f"--device {options.device}")
    if options.num_workers:
        applied.append(f"--num-workers {options.num_workers}")
    return applied + [f"--{name}" for name, on in (("compile", options.compile), ("tensorboard", options.tensorboard)) if on]


def announce_resume(options: TrainOptions, request: RunRequest, resume: dict, training: TrainingConfig, root: Path) -> None:
    """One line: where the run continues, what comes from the checkpoint, and every option given: applied or
    ignored."""
    h, w = (int(s) for s in training.spatial_size)
    ignored, applied = _ignored(options, request, resume, training), _applied(options, request)
    if "max_slices" in resume:
        slices = "all slices" if resume["max_slices"] is None else f"at most {resume['max_slices']} slices per split"
        slices += ", "
    else:  # a checkpoint of a version that did not record it: the command line's applies
        slices = ""
        if options.max_slices is not None:
            applied.append(f"--max-slices {options.max_slices}")
    line = (
        f"resuming after epoch {resume['epoch']}: preset {resume.get('preset')}, task {resume['task']}, "
        f"size {h}x{w}, batch {training.batch_size}, monitor {training.monitor}, "
        f"mask ratio {training.mask_ratio:g}, seed {resume.get('seed', 0)}, {slices}and data {root} "
        f"from the checkpoint; epochs {training.epochs}, patience {training.patience}, "
        f"lr {training.lr:g}"
    )
    if applied:
        line += f"; applied: {', '.join(applied)}"
    if ignored:
        log.warning("%s; ignored on --resume: %s", line, ", ".join(ignored))
    else:
        log.info("%s", line)
