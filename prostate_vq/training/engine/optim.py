"""The optimizer and the per-epoch learning-rate schedules both plug-ins build from a training section, and how a
resumed run makes a changed --epochs or --lr true. The engine steps a per-epoch scheduler at each epoch's end
(plateau on the monitored value) and leaves a per-step one (`per_step = True`) to its plug-in."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LRScheduler

from prostate_vq.schema import TrainingConfig
from prostate_vq.training.engine.early_stopping import MONITOR_MODES


def make_optimizer(model: torch.nn.Module, training: TrainingConfig) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if training.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=float(training.lr), weight_decay=float(training.weight_decay))


def make_scheduler(optimizer: torch.optim.Optimizer, training: TrainingConfig) -> LRScheduler | None:
    """Cosine over the planned epochs (stepped per epoch: the prior's), or plateau on the monitored metric.
    The VQ-VAE plans its cosine per optimizer step (training.vqvae.schedule.make_step_scheduler)."""
    if training.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, int(training.epochs)), eta_min=float(training.lr) * float(training.min_lr_ratio)
        )
    if training.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=MONITOR_MODES[training.monitor], factor=0.5, patience=max(1, int(training.patience) // 3)
        )
    return None


def retune_schedule(optimizer, scheduler, training: TrainingConfig, done_epochs: int) -> None:
    """Make a changed --epochs or --lr true on resume: the cosine is re-planned over the new length (the
    restored one would climb back up after its old end) and continues from where the run is now."""
    lr, epochs = float(training.lr), max(1, int(training.epochs))
    if isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
        if scheduler.T_max == epochs and all(math.isclose(b, lr) for b in scheduler.base_lrs):
            return  # unchanged: keep the restored state bit for bit (exact resume)
        eta_min = lr * float(training.min_lr_ratio)
        scheduler.T_max, scheduler.eta_min = epochs, eta_min
        scheduler.base_lrs = [lr] * len(optimizer.param_groups)
        now = eta_min + (lr - eta_min) * (1 + math.cos(math.pi * min(done_epochs, epochs) / epochs)) / 2
        for group in optimizer.param_groups:
            group["initial_lr"], group["lr"] = lr, now
        scheduler._last_lr = [now] * len(optimizer.param_groups)
    elif any(not math.isclose(group.get("initial_lr", group["lr"]), lr) for group in optimizer.param_groups):
        for group in optimizer.param_groups:  # plateau or constant: start again from the new rate
            group["initial_lr"], group["lr"] = lr, lr
