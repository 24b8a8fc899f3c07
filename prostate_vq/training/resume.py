"""What `--resume` keeps from the checkpoint, what it takes from the command line, and saying so: a resumed
run follows its checkpoint's preset, task, size, batch and data; --epochs, --patience and --lr apply."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from prostate_vq.errors import UserInputError

log = logging.getLogger("prostate_vq.training")


def refuse_other_data(root: Path, resume: dict, out: Path) -> None:
    """A resumed run on other data would mix two datasets in one history; a moved dataset is fine."""
    stored = Path(str(resume.get("data_root") or ""))
    if stored.is_absolute() and stored.exists() and Path(root).resolve() != stored.resolve():
        raise UserInputError(f"--resume continues on the data the run was trained on ({stored}), not --data "
                             f"{root}: drop --data, or train a new run into another --out", Path(out) / "last.pt")


def retune_schedule(optimizer, scheduler, training: dict, done_epochs: int) -> None:
    """Make a changed --epochs or --lr true on resume: the cosine is re-planned over the new length (the
    restored one would climb back up after its old end) and continues from where the run is now."""
    lr, epochs = float(training["lr"]), max(1, int(training["epochs"]))
    if isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
        if scheduler.T_max == epochs and all(math.isclose(b, lr) for b in scheduler.base_lrs):
            return  # unchanged: keep the restored state bit for bit (exact resume)
        eta_min = lr * float(training["min_lr_ratio"])
        scheduler.T_max, scheduler.eta_min = epochs, eta_min
        scheduler.base_lrs = [lr] * len(optimizer.param_groups)
        now = eta_min + (lr - eta_min) * (1 + math.cos(math.pi * min(done_epochs, epochs) / epochs)) / 2
        for group in optimizer.param_groups:
            group["initial_lr"], group["lr"] = lr, now
        scheduler._last_lr = [now] * len(optimizer.param_groups)
    elif any(not math.isclose(group.get("initial_lr", group["lr"]), lr) for group in optimizer.param_groups):
        for group in optimizer.param_groups:  # plateau or constant: start again from the new rate
            group["initial_lr"], group["lr"] = lr, lr


def announce_resume(options, resume: dict, training: dict, root: Path) -> None:
    """One line: where the run continues, what comes from the checkpoint and which options are ignored."""
    h, w = (int(s) for s in training["spatial_size"])
    ignored = []
    if options.preset not in ("default", resume.get("preset")):
        ignored.append(f"--preset {options.preset}")
    if options.task not in ("image", resume["task"]):
        ignored.append(f"--task {options.task}")
    if options.spatial_size and [int(s) for s in options.spatial_size] != [h, w]:
        ignored.append("--spatial-size " + " ".join(str(s) for s in options.spatial_size))
    if options.batch_size is not None and int(options.batch_size) != int(training["batch_size"]):
        ignored.append(f"--batch-size {options.batch_size}")
    if options.overrides:
        ignored.append("--set " + " ".join(options.overrides))
    line = (f"resuming after epoch {resume['epoch']}: preset {resume.get('preset')}, task {resume['task']}, "
            f"size {h}x{w}, batch {training['batch_size']} and data {root} from the checkpoint; "
            f"epochs {training['epochs']}, patience {training['patience']}, lr {training['lr']:g}")
    if ignored:
        log.warning("%s; ignored on --resume: %s", line, ", ".join(ignored))
    else:
        log.info("%s", line)
