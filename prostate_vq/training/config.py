"""The resolved run configuration: preset < `--set` overrides < explicit options, with engine defaults
for whatever the preset's `training` section leaves out; optimizer and scheduler built from it."""

from __future__ import annotations

import copy
import math

import torch

from prostate_vq.errors import UserInputError
from prostate_vq.files import plain
from prostate_vq.training.early_stopping import MONITOR_MODES

# The engine's training keys (all settable with `--set training.KEY=VALUE`); a preset's `training`
# section overrides them, explicit CLI options override both.
TRAINING_DEFAULTS = {
    "epochs": 50,
    "batch_size": 16,
    "lr": 2e-4,
    "weight_decay": 0.0,
    "optimizer": "adam",        # adam | adamw
    "scheduler": "cosine",      # cosine | plateau | none
    "min_lr_ratio": 0.05,       # cosine floor as a share of lr
    "warmup_steps": 0,          # linear learning-rate warmup over the first optimizer steps
    "patience": 10,             # validations without improvement before early stopping (0: never stop)
    "patience_steps": 0,        # ... and at least this many optimizer steps since the best one
    "min_steps": 0,             # never stop early before this many optimizer steps
    "min_delta": 0.0,
    "l1_weight": 0.0,
    "ssim_weight": 0.0,           # image tasks: weight of a 1 - SSIM term beside the MSE
    "dice_weight": 1.0,
    "seg_weight": 1.0,
    "grad_clip": None,            # max gradient norm, None = off
    "augment": False,             # the data layer's batch augmentation (flips, small affine, intensity)
    "find_unused_parameters": False,  # DDP: only for models with parameters a task leaves unused
    "spatial_size": [256, 128],
    "mask_ratio": 0.0,
    "monitor": "loss",
}
MONITOR_KEYS = {"loss": "val_loss", "ssim": "val_ssim", "dice": "val_dice"}


def resolve_config(options) -> dict:
    """Engine defaults < the preset's `training` section < `--set` overrides < explicit CLI options."""
    from prostate_vq.models import apply_overrides, get_preset

    cfg = get_preset(options.preset)
    # Defaults go in before the overrides so that `--set training.<any engine key>=...` is accepted.
    cfg["training"] = {**copy.deepcopy(TRAINING_DEFAULTS), **(cfg.get("training") or {})}
    cfg = apply_overrides(cfg, list(options.overrides or []))
    training = cfg["training"]
    explicit = {"epochs": options.epochs, "batch_size": options.batch_size, "lr": options.lr,
                "patience": options.patience,
                "spatial_size": list(options.spatial_size) if options.spatial_size else None}
    training.update({k: v for k, v in explicit.items() if v is not None})
    # None = not given: an explicit --monitor loss or --mask-ratio 0 overrides a preset that says otherwise.
    if options.mask_ratio is not None:
        training["mask_ratio"] = options.mask_ratio
    if options.monitor is not None:
        training["monitor"] = options.monitor
    cfg["training"] = training
    check_training_config(training, options.task)
    return plain(cfg)


def check_training_config(training: dict, task: str) -> None:
    def bad(message):
        raise UserInputError(message)

    if task not in ("image", "mask", "joint"):
        bad(f"unknown task {task!r} (use image, mask or joint)")
    if int(training["epochs"]) < 1:
        bad(f"--epochs must be at least 1, got {training['epochs']}")
    if int(training["batch_size"]) < 1:
        bad(f"--batch-size must be at least 1, got {training['batch_size']}")
    if not float(training["lr"]) > 0:
        bad(f"--lr must be positive, got {training['lr']}")
    for key in ("patience", "patience_steps", "min_steps", "warmup_steps"):
        if int(training[key]) < 0:
            bad(f"training.{key} must be 0 or more, got {training[key]}")
    clip = training.get("grad_clip")
    if clip is not None and not (math.isfinite(float(clip)) and float(clip) > 0):
        bad(f"training.grad_clip must be a positive gradient norm (or null for none), got {clip}")
    if not float(training["ssim_weight"]) >= 0:
        bad(f"training.ssim_weight must be 0 or more, got {training['ssim_weight']}")
    if not 0.0 <= float(training["mask_ratio"]) < 1.0:
        bad(f"--mask-ratio must be in [0, 1), got {training['mask_ratio']}")
    size = training["spatial_size"]
    if len(size) != 2 or min(int(s) for s in size) < 16:
        bad(f"--spatial-size needs two sizes of at least 16 pixels, got {size}")
    monitor = training["monitor"]
    if monitor not in MONITOR_MODES:
        bad(f"--monitor must be one of {', '.join(MONITOR_MODES)}, got {monitor!r}")
    if monitor == "ssim" and task == "mask":
        bad("--monitor ssim needs an image task (image or joint); the mask task has no reconstruction")
    if monitor == "dice" and task == "image":
        bad("--monitor dice needs a mask or joint task")
    if training["scheduler"] not in ("cosine", "plateau", "none", None):
        bad(f"training.scheduler must be cosine, plateau or none, got {training['scheduler']!r}")
    if training["optimizer"] not in ("adam", "adamw"):
        bad(f"training.optimizer must be adam or adamw, got {training['optimizer']!r}")


def check_options(options) -> None:
    """Command-line numbers the config does not hold: a wall-clock budget and loader workers."""
    minutes = options.max_minutes
    if minutes is not None and not (math.isfinite(float(minutes)) and float(minutes) > 0):
        raise UserInputError(f"--max-minutes must be a positive number of minutes, got {minutes}")
    if int(options.num_workers) < 0:
        raise UserInputError(f"--num-workers must be 0 or more, got {options.num_workers}")


def make_optimizer(model: torch.nn.Module, training: dict) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if training["optimizer"] == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=float(training["lr"]), weight_decay=float(training["weight_decay"]))


def make_scheduler(optimizer, training: dict):
    """Cosine over the planned epochs (stepped per epoch), or plateau on the monitored metric."""
    if training["scheduler"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, int(training["epochs"])),
            eta_min=float(training["lr"]) * float(training["min_lr_ratio"]))
    if training["scheduler"] == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=MONITOR_MODES[training["monitor"]], factor=0.5,
            patience=max(1, int(training["patience"]) // 3))
    return None


def downsample_factor(cfg: dict, model=None) -> int:
    """Masking patch size: one (bottom-level) latent cell of the model; 8 px when nothing says."""
    return int(getattr(model, "downsample", None) or (cfg.get("model") or {}).get("downsample") or 8)
