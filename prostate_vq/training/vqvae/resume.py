"""What `--resume` keeps from the checkpoint, what it takes from the command line, and saying so: a resumed
run follows its checkpoint's config (preset, --config, --set, task, size, batch, monitor, masking), seed, data and
--max-slices; --epochs, --max-steps, --patience and --lr apply (a budget may grow or shrink, never below what is
done), and so do --max-minutes, --device, --num-workers, --compile and --tensorboard. The "resuming" line names
every option given in either group (docs/training.md)."""

from __future__ import annotations

import logging
from pathlib import Path

from prostate_vq.errors import UserInputError
from prostate_vq.schema import TrainingConfig

log = logging.getLogger("prostate_vq.training")


def refuse_other_data(root: Path, resume: dict, out: Path) -> None:
    """A resumed run on other data would mix two datasets in one history; a moved dataset is fine."""
    stored = Path(str(resume.get("data_root") or ""))
    if stored.is_absolute() and stored.exists() and Path(root).resolve() != stored.resolve():
        raise UserInputError(f"--resume continues on the data the run was trained on ({stored}), not --data "
                             f"{root}: drop --data, or train a new run into another --out", Path(out) / "last.pt")


def refuse_less_than_done(options, resume: dict, out: Path) -> None:
    """A budget below what the run has done would rewrite its config.yaml to a plan it has already overrun."""
    done_epochs = int(resume["epoch"])
    history = resume.get("history") or []
    done_steps = int(history[-1].get("step") or 0) if history else 0
    for flag, given, done, unit in (("--epochs", options.epochs, done_epochs, "epochs"),
                                    ("--max-steps", getattr(options, "max_steps", None), done_steps, "optimizer steps")):
        if given is not None and int(given) < done:
            raise UserInputError(f"{flag} {given}: the run has already done {done} {unit}; give more to extend it, "
                                 f"or leave {flag} out to continue its plan", Path(out) / "last.pt")


def kept_max_slices(options, resume: dict):
    """The run's own --max-slices (older checkpoints do not record it: then the command line's)."""
    return resume.get("max_slices", options.max_slices)


def _ignored(options, resume: dict, training: TrainingConfig) -> list[str]:
    """The options given that a resumed run does not follow (its checkpoint decides them)."""
    h, w = (int(s) for s in training.spatial_size)
    checks = [
        ("--preset", options.preset, getattr(options, "config", None) is None  # a --config names its own preset
         and options.preset not in (None, "default", resume.get("preset"))),
        ("--config", getattr(options, "config", None), getattr(options, "config", None) is not None),
        ("--task", options.task, options.task not in (None, "image", resume["task"])),
        ("--spatial-size", " ".join(str(s) for s in options.spatial_size or ()),
         bool(options.spatial_size) and [int(s) for s in options.spatial_size] != [h, w]),
        ("--batch-size", options.batch_size,
         options.batch_size is not None and int(options.batch_size) != int(training.batch_size)),
        ("--monitor", options.monitor, options.monitor is not None and options.monitor != training.monitor),
        ("--mask-ratio", options.mask_ratio,
         options.mask_ratio is not None and float(options.mask_ratio) != float(training.mask_ratio)),
        ("--seed", options.seed, options.seed is not None and int(options.seed) != int(resume.get("seed", 0))),
        ("--max-slices", options.max_slices,
         "max_slices" in resume and options.max_slices is not None and options.max_slices != resume["max_slices"]),
        ("--set", " ".join(options.overrides or ()), bool(options.overrides)),
    ]
    return [f"{flag} {value}" for flag, value, ignored in checks if ignored]


def _applied(options) -> list[str]:
    """The options given that a resumed run follows."""
    names = ("epochs", "max_steps", "patience", "lr", "max_minutes")
    applied = [f"--{n.replace('_', '-')} {getattr(options, n)}" for n in names if getattr(options, n, None) is not None]
    if options.data is not None:
        applied.append(f"--data {options.data}")
    if options.device not in (None, "auto"):
        applied.append(f"--device {options.device}")
    if options.num_workers:
        applied.append(f"--num-workers {options.num_workers}")
    return applied + [f"--{n}" for n in ("compile", "tensorboard") if getattr(options, n, False)]


def announce_resume(options, resume: dict, training: TrainingConfig, root: Path) -> None:
    """One line: where the run continues, what comes from the checkpoint, and every option given: applied or
    ignored."""
    h, w = (int(s) for s in training.spatial_size)
    ignored, applied = _ignored(options, resume, training), _applied(options)
    if "max_slices" in resume:
        slices = "all slices" if resume["max_slices"] is None else f"at most {resume['max_slices']} slices per split"
        slices += ", "
    else:  # a checkpoint of a version that did not record it: the command line's applies
        slices = ""
        if options.max_slices is not None:
            applied.append(f"--max-slices {options.max_slices}")
    line = (f"resuming after epoch {resume['epoch']}: preset {resume.get('preset')}, task {resume['task']}, "
            f"size {h}x{w}, batch {training.batch_size}, monitor {training.monitor}, "
            f"mask ratio {training.mask_ratio:g}, seed {resume.get('seed', 0)}, {slices}and data {root} "
            f"from the checkpoint; epochs {training.epochs}, patience {training.patience}, "
            f"lr {training.lr:g}")
    if applied:
        line += f"; applied: {', '.join(applied)}"
    if ignored:
        log.warning("%s; ignored on --resume: %s", line, ", ".join(ignored))
    else:
        log.info("%s", line)
