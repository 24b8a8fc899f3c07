"""The learning-rate schedule planned in optimizer steps over the run's real horizon.

A cosine stepped per epoch with `T_max = epochs` is a constant learning rate when a run is bounded by a step
or time budget long before its nominal epochs (the old benchmarks: `epochs=100_000`), and it is planned over a
horizon the run never reaches when `--max-minutes` stops it. Here the cosine runs per optimizer step over:

- `max_steps` (`--max-steps`, `training.max_steps`) when it ends the run before the epochs do;
- otherwise epochs x steps per epoch;
- with a time budget (`--max-minutes`), once the step rate is measured, the steps that fit in the time left
  when that is fewer ("time": an estimate, said in the log and in config.yaml).

The planned shape is a segment (start step, start factor, horizon): a resumed run whose budget or learning rate
changed continues down from where it is over the new horizon instead of climbing back up.
"""

from __future__ import annotations

import logging
import math

import torch

from prostate_vq.schema import TrainingConfig
from prostate_vq.training.engine.optim import make_scheduler, retune_schedule

log = logging.getLogger("prostate_vq.training")

PLAN_AFTER_STEPS = 20  # a time budget's horizon is estimated once this many steps (and one epoch) are measured
SOURCES = {"max_steps": "--max-steps", "epochs": "epochs x steps per epoch", "time": "the time budget at the measured step rate"}


class CosineSegment:
    """lr factor at an optimizer step: cosine from `start_factor` at `start` down to `floor` at `horizon`.

    A callable object, not a function: LambdaLR stores its attributes in the scheduler's state_dict, so the
    plan survives --resume exactly."""

    def __init__(
        self,
        horizon: int,
        floor: float,
        start: int = 0,
        start_factor: float = 1.0,
        source: str = "epochs",
        steps_per_epoch: int = 1,
    ):
        self.horizon, self.floor = int(horizon), float(floor)
        self.start, self.start_factor = int(start), float(start_factor)
        self.source, self.steps_per_epoch = source, int(steps_per_epoch)

    def __call__(self, step: int) -> float:
        if step >= self.horizon:
            return self.floor
        span = max(1, self.horizon - self.start)
        t = min(1.0, max(0.0, (step - self.start) / span))
        return self.floor + (self.start_factor - self.floor) * (1 + math.cos(math.pi * t)) / 2

    def describe(self) -> dict:
        return {"kind": "cosine", "horizon_steps": self.horizon, "source": self.source, "steps_per_epoch": self.steps_per_epoch}


class StepCosine(torch.optim.lr_scheduler.LambdaLR):
    """The cosine stepped after every optimizer step (the engine leaves it alone at epoch ends)."""

    per_step = True

    @property
    def plan(self) -> CosineSegment:
        """The segment every parameter group follows (LambdaLR types its lambdas as plain callables)."""
        plan = self.lr_lambdas[0]
        if not isinstance(plan, CosineSegment):
            raise TypeError(f"StepCosine follows a CosineSegment, not {type(plan).__name__}")
        return plan

    def replan(self, horizon: int, source: str, step: int) -> None:
        """Continue from the current factor at `step` down to the floor at `horizon` (all groups alike)."""
        plan = self.plan
        now = plan(step)
        plan.start, plan.start_factor, plan.horizon, plan.source = int(step), now, max(int(step) + 1, int(horizon)), source


def plan_horizon(training: TrainingConfig, steps_per_epoch: int) -> tuple[int, str]:
    """Optimizer steps the cosine is planned over, and which budget set them (before any time estimate)."""
    by_epochs = int(training.epochs) * max(1, int(steps_per_epoch))
    max_steps = training.max_steps
    if max_steps and int(max_steps) < by_epochs:
        return int(max_steps), "max_steps"
    return by_epochs, "epochs"


def make_step_scheduler(optimizer, training: TrainingConfig, steps_per_epoch: int):
    """The VQ-VAE's scheduler: the per-step cosine, plateau on the monitored metric (per validation), or none."""
    if training.scheduler != "cosine":
        return make_scheduler(optimizer, training)
    horizon, source = plan_horizon(training, steps_per_epoch)
    plan = CosineSegment(horizon, float(training.min_lr_ratio), source=source, steps_per_epoch=steps_per_epoch)
    return StepCosine(optimizer, plan)


def replan_on_resume(optimizer, scheduler, training: TrainingConfig, step: int, steps_per_epoch: int) -> bool:
    """A resumed run with another --epochs, --max-steps or --lr: the cosine continues from where it is over the
    new horizon at the new base rate (the restored plan stays bit for bit when nothing changed). True if changed."""
    if not isinstance(scheduler, StepCosine):
        retune_schedule(optimizer, scheduler, training, 0)
        return False
    lr = float(training.lr)
    horizon, source = plan_horizon(training, steps_per_epoch)
    plan = scheduler.plan
    same_lr = all(math.isclose(base, lr) for base in scheduler.base_lrs)
    planned_by_time = plan.source == "time" and source == "epochs"
    if same_lr and (horizon == plan.horizon or planned_by_time):
        return False
    factor = plan(step)
    scheduler.base_lrs = [lr] * len(optimizer.param_groups)
    scheduler.replan(horizon, source, step)
    plan.steps_per_epoch = int(steps_per_epoch)
    for group in optimizer.param_groups:
        group["initial_lr"], group["lr"] = lr, lr * factor
    scheduler._last_lr = [lr * factor] * len(optimizer.param_groups)
    return True


def adopt_epoch_schedule(optimizer, scheduler, step: int) -> None:
    """A run from before per-step planning (its last.pt holds a per-epoch cosine): the per-step cosine takes
    over from the rate the run had reached, down to the floor over the run's horizon."""
    if not isinstance(scheduler, StepCosine):
        return
    base = scheduler.base_lrs[0]
    now = optimizer.param_groups[0]["lr"]
    scheduler.last_epoch = int(step)
    scheduler.plan.start, scheduler.plan.start_factor = int(step), now / base if base else 1.0
    for group in optimizer.param_groups:
        group["initial_lr"] = base


def estimate_time_horizon(steps_done: int, steps_measured: int, seconds: float, seconds_left: float) -> int:
    """Steps the run will have taken when the time budget ends: `steps_measured` took `seconds` (validation
    included), and that rate holds for the `seconds_left`."""
    rate = steps_measured / max(seconds, 1e-9)
    return int(steps_done + max(0.0, seconds_left) * rate)


def describe(scheduler) -> dict | None:
    """What config.yaml and the checkpoint say about the schedule."""
    if isinstance(scheduler, StepCosine):
        return scheduler.plan.describe()
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return {"kind": "plateau", "source": "validation"}
    return None if scheduler is None else {"kind": type(scheduler).__name__}


def log_plan(scheduler, lr: float) -> None:
    if isinstance(scheduler, StepCosine):
        plan = scheduler.plan
        log.info(
            "learning rate: cosine from %g over %d optimizer steps (%s; %d steps per epoch)",
            lr,
            plan.horizon,
            SOURCES.get(plan.source, plan.source),
            plan.steps_per_epoch,
        )
