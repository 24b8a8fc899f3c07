"""The one training loop (MONAI's engine + handlers idea, without Ignite): epochs, the wall-clock budget,
early stopping, best/last atomic checkpoints, exact resume, history and progress. What differs between
the VQ-VAE (and its ReFiT fine-tuning) and the prior is a plug-in: one epoch of training and validation,
the history columns, the progress line and what a checkpoint carries besides the weights."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch.optim.lr_scheduler import LRScheduler

from prostate_vq.errors import TrainingDiverged
from prostate_vq.files import plain
from prostate_vq.runtime import distributed as ddp
from prostate_vq.runtime.checkpoints import FORMAT_VERSION
from prostate_vq.runtime.seeding import capture_rng_state
from prostate_vq.training.engine.early_stopping import EarlyStopping
from prostate_vq.training.engine.progress import epoch_bar, warnings_above_bars
from prostate_vq.training.engine.run_folder import RunWriter

log = logging.getLogger("prostate_vq.training")


@dataclass
class EpochResult:
    """What a plug-in's epoch gives the engine."""

    row: dict  # the history row (the engine adds epoch, lr, seconds and step)
    monitor: float  # the validation value early stopping and best.pt follow (the task's quality)
    steps: int  # optimizer steps taken
    out_of_time: bool = False  # the budget ran out inside the epoch
    out_of_steps: bool = False  # the run's optimizer-step budget (max_steps) was reached
    val_seconds: float = 0.0  # validation time, kept free inside the budget of the next epoch
    checkpoint: dict = field(default_factory=dict)  # extra entries for best.pt/last.pt of this epoch
    metrics: dict = field(default_factory=dict)  # extra entries for the checkpoint's `metrics`
    details: dict = field(default_factory=dict)  # the plug-in's own validation results, for its after_epoch


class Plugin(Protocol):
    """What differs between the models the engine trains."""

    history_columns: tuple[str, ...]

    def run_epoch(self, epoch: int, epochs: int, deadline: float | None, steps_before: int) -> EpochResult:
        """Train one epoch (stopping at `deadline`), validate, raise TrainingDiverged on a non-finite loss."""

    def after_epoch(self, epoch: int, result: EpochResult) -> None:
        """Rank 0, after validation and before the checkpoints (warnings)."""

    def postfix(self, row: dict) -> dict:
        """Short values for the progress line."""


@dataclass
class LoopState:
    """Where a run stands; restored from last.pt on --resume."""

    history: list[dict] = field(default_factory=list)
    start_epoch: int = 1
    step: int = 0  # optimizer steps over the whole run (patience and min_steps count these)

    @classmethod
    def from_checkpoint(cls, payload: dict) -> LoopState:
        history = [dict(row) for row in payload.get("history", [])]
        return cls(history, int(payload["epoch"]) + 1, int(history[-1].get("step") or 0) if history else 0)


def restore_training_state(payload: dict, module, optimizer, scheduler, stopper: EarlyStopping) -> LoopState:
    """Weights, optimizer, scheduler and early stopping from last.pt (the RNG state is the caller's, last)."""
    module.load_state_dict(payload["model_state"])
    optimizer.load_state_dict(payload["optimizer_state"])
    if scheduler is not None and payload.get("scheduler_state"):
        scheduler.load_state_dict(payload["scheduler_state"])
    stopper.load_state_dict(payload["early_stopping"])
    return LoopState.from_checkpoint(payload)


@dataclass
class Engine:
    plugin: Plugin
    module: torch.nn.Module  # the unwrapped model whose weights the checkpoints hold
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler | None  # per epoch (cosine, plateau) or per step (`per_step = True`), or none
    stopper: EarlyStopping
    writer: RunWriter
    base_payload: dict  # stored in every checkpoint of the run
    epochs: int
    state: LoopState = field(default_factory=LoopState)
    deadline: float | None = None  # time.monotonic() value at which the budget ends
    progress: bool = True
    dist: ddp.DistContext = field(default_factory=ddp.DistContext)
    budget_text: str = ""  # how the log names the budget ("5.0 min")
    max_steps: int | None = None  # optimizer-step budget of the whole run (stop reason "max_steps")

    def run(self) -> str | None:
        """All epochs, or until early stopping or the budget; returns the stop reason."""
        with warnings_above_bars(self.progress and self.dist.is_main):
            return self._run()

    def _run(self) -> str | None:
        state, epochs = self.state, self.epochs
        bar = epoch_bar(self.progress and self.dist.is_main, state.start_epoch, epochs)
        stop_reason = (
            "early_stopping"
            if self.stopper.stopped
            else "epochs"
            if state.start_epoch > epochs
            else "max_steps"
            if self.max_steps is not None and state.step >= self.max_steps
            else None
        )
        val_seconds = 0.0
        try:
            for epoch in range(state.start_epoch, epochs + 1):
                if stop_reason:
                    break
                # Leave room for this epoch's validation inside the budget.
                deadline = None if self.deadline is None else self.deadline - val_seconds
                if deadline is not None and time.monotonic() >= deadline and state.history:
                    stop_reason = "max_minutes"
                    break
                t0, lr = time.monotonic(), self.optimizer.param_groups[0]["lr"]
                result = self.plugin.run_epoch(epoch, epochs, deadline, state.step)
                state.step += result.steps
                val_seconds = result.val_seconds
                row = self._record(epoch, result, t0, lr)
                improved = self.stopper.update(result.monitor, epoch, state.step)
                out_of_steps = result.out_of_steps or (self.max_steps is not None and state.step >= self.max_steps)
                stop_reason = (
                    "max_minutes"
                    if result.out_of_time
                    else "max_steps"
                    if out_of_steps
                    else "early_stopping"
                    if self.stopper.stopped
                    else "epochs"
                    if epoch == epochs
                    else None
                )
                if self.dist.is_main:
                    self.plugin.after_epoch(epoch, result)
                    self._save(epoch, row, result, improved, stop_reason)
                if bar is not None:
                    bar.set_postfix(refresh=False, **self.plugin.postfix(row))
                    bar.update(1)
                ddp.barrier(self.dist)
        except TrainingDiverged as error:
            good = state.history[-1]["epoch"] if state.history else None
            kept = (
                f"kept the last good checkpoint {self.writer.out / 'last.pt'} (epoch {good}) and best.pt"
                if good
                else "no checkpoint was written"
            )
            raise TrainingDiverged(f"{error}; {kept}") from None
        finally:
            if bar is not None:
                bar.close()
        self._log_end(stop_reason)
        return stop_reason

    def _record(self, epoch: int, result: EpochResult, t0: float, lr: float) -> dict:
        """The history row; the learning rate is the one this epoch started with, then a per-epoch schedule
        steps (a per-step one, training.vqvae.schedule.StepCosine, has stepped with every optimizer step)."""
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(result.monitor)
        elif self.scheduler is not None and not getattr(self.scheduler, "per_step", False):
            self.scheduler.step()
        row = {"epoch": epoch, **result.row, "lr": lr, "seconds": time.monotonic() - t0, "step": self.state.step}
        self.state.history.append(row)
        return row

    def _save(self, epoch: int, row: dict, result: EpochResult, improved: bool, stop_reason: str | None) -> None:
        """best.pt (when improved) before last.pt: a kill between the two only replays this epoch."""
        scalars = plain({k: v for k, v in row.items() if k != "epoch"})
        state = {k: v.detach().to("cpu", copy=True) for k, v in self.module.state_dict().items()}
        payload = {
            "format_version": FORMAT_VERSION,
            **self.base_payload,
            "model_state": state,
            "epoch": epoch,
            "metrics": {**scalars, **result.metrics},
            **result.checkpoint,
        }
        if improved:
            self.writer.checkpoint("best.pt", payload)
        self.writer.checkpoint(
            "last.pt",
            {
                **payload,
                "optimizer_state": self.optimizer.state_dict(),
                "scheduler_state": self.scheduler.state_dict() if self.scheduler is not None else None,
                "rng_state": capture_rng_state(),
                "early_stopping": self.stopper.state_dict(),
                "history": plain(self.state.history),
                "finished": stop_reason is not None,
                "stop_reason": stop_reason,
                "best_epoch": self.stopper.best_epoch,
            },
        )
        self.writer.history(self.state.history, row, self.plugin.history_columns)

    def _log_end(self, stop_reason: str | None) -> None:
        if not self.dist.is_main:
            return
        last = self.state.history[-1]["epoch"] if self.state.history else "-"
        reason = {
            "early_stopping": f"early stopping after epoch {last}",
            "max_minutes": f"time budget of {self.budget_text} reached after epoch {last}",
            "max_steps": f"step budget of {self.max_steps} optimizer steps reached in epoch {last}",
            "epochs": "all epochs done",
        }.get(stop_reason or "", "done")
        best = self.stopper.best if self.stopper.best is not None else math.nan
        log.info(
            "training ended: %s (%d optimizer steps); best %s %.5g at epoch %d",
            reason,
            self.state.step,
            self.stopper.monitor,
            best,
            self.stopper.best_epoch,
        )


def budget_deadline(started: float, max_minutes: float | None) -> float | None:
    return None if max_minutes is None else started + 60.0 * float(max_minutes)
