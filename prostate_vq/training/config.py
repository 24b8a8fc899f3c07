"""The resolved run configuration: preset < `--set` overrides < explicit options, with engine defaults
for whatever the preset's `training` section leaves out; optimizer and scheduler built from it."""

from __future__ import annotations

import copy
import math
from pathlib import Path

from prostate_vq.errors import UserInputError
from prostate_vq.files import plain
from prostate_vq.schema import check_section, defaults

# The engine's training keys and defaults (prostate_vq.schema.TrainingConfig); a preset's `training` section
# overrides them, `--set training.KEY=VALUE` overrides both, explicit CLI options override all.
TRAINING_DEFAULTS = defaults("training")
# Keys with a command-line option of their own: messages name the option.
FLAGS = {"epochs": "--epochs", "max_steps": "--max-steps", "batch_size": "--batch-size", "lr": "--lr", "patience": "--patience",
         "mask_ratio": "--mask-ratio", "spatial_size": "--spatial-size", "monitor": "--monitor"}
MONITOR_KEYS = {"loss": "val_loss", "ssim": "val_ssim", "dice": "val_dice"}


# `schedule` is what a run's config.yaml says about the learning-rate plan it followed: informational, ignored
# here (the run that reads the file plans its own from its budget).
CONFIG_FILE_KEYS = ("base", "task", "seed", "data_root", "description", "model", "quantizer", "training", "refit",
                    "schedule")


def read_config_file(path) -> dict:
    """A `--config` file: `base: PRESET` plus any of the preset's sections (a run's config.yaml is one)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise UserInputError(f"--config: cannot read it ({str(error).splitlines()[0]})", path) from None
    if not isinstance(data, dict):
        raise UserInputError("--config: not a mapping of base/model/quantizer/training/refit", path)
    unknown = sorted(set(data) - set(CONFIG_FILE_KEYS))
    if unknown:
        raise UserInputError(f"--config: unknown key(s) {', '.join(map(str, unknown))}; "
                             f"valid: {', '.join(CONFIG_FILE_KEYS)}", path)
    return data


def base_config(options) -> dict:
    """The preset, or a `--config` file laid over its `base` preset (validated by the schema)."""
    from prostate_vq.models import get_preset
    from prostate_vq.models.presets import resolve

    if getattr(options, "config", None) is None:
        return get_preset(options.preset)
    data = read_config_file(options.config)
    cfg = get_preset(str(data.get("base", "default")))
    if "description" in data:
        cfg["description"] = str(data["description"])
    for section in ("model", "quantizer", "training", "refit"):
        if section == "refit" and not data.get("refit") and not cfg.get("refit"):
            continue
        given = data.get(section) or {}
        if not isinstance(given, dict):
            raise UserInputError(f"--config: {section} must be a mapping", options.config)
        kind_changes = section == "quantizer" and given.get("kind", cfg["quantizer"]["kind"]) != cfg["quantizer"]["kind"]
        cfg[section] = dict(given) if kind_changes else {**(cfg.get(section) or {}), **given}
    try:
        return resolve(cfg)
    except UserInputError as error:
        raise UserInputError(f"--config: {error}", options.config) from None


def resolve_config(options) -> dict:
    """Engine defaults < the preset (or `--config` file) < `--set` overrides < explicit CLI options."""
    from prostate_vq.models import apply_overrides

    cfg = base_config(options)
    # Defaults go in before the overrides so that `--set training.<any engine key>=...` is accepted.
    cfg["training"] = {**copy.deepcopy(TRAINING_DEFAULTS), **(cfg.get("training") or {})}
    cfg = apply_overrides(cfg, list(options.overrides or []))
    training = cfg["training"]
    explicit = {"epochs": options.epochs, "max_steps": getattr(options, "max_steps", None),
                "batch_size": options.batch_size, "lr": options.lr,
                "patience": options.patience,
                "spatial_size": list(options.spatial_size) if options.spatial_size else None}
    training.update({k: v for k, v in explicit.items() if v is not None})
    if training.get("max_steps") and options.epochs is None:
        # A step budget is the run's length: a preset's nominal epochs must not end it first on a small training
        # set (19 slices at batch 16 are 2 steps per epoch: 100 epochs would stop a 300-step budget at 200).
        # Every epoch takes at least one step, so max_steps epochs always reach the budget. An explicit --epochs
        # still caps it.
        training["epochs"] = max(int(training["epochs"]), int(training["max_steps"]))
    # None = not given: an explicit --monitor loss or --mask-ratio 0 overrides a preset that says otherwise.
    if options.mask_ratio is not None:
        training["mask_ratio"] = options.mask_ratio
    if options.monitor is not None:
        training["monitor"] = options.monitor
    cfg["training"] = training
    check_training_config(training, options.task)
    return plain(cfg)


def check_training_values(training: dict) -> dict:
    """The schema's types and ranges for training keys, messages naming the command-line option where there is one
    (the VQ-VAE's run and the prior's options alike)."""
    return check_section("training", training, label=lambda key: FLAGS.get(key, f"training.{key}"))


def check_training_config(training: dict, task: str) -> None:
    """The schema's types and ranges (messages name the command-line option where there is one), then what
    depends on the task."""
    if task not in ("image", "mask", "joint"):
        raise UserInputError(f"unknown task {task!r} (use image, mask or joint)")
    training.update(check_training_values(training))
    monitor = training["monitor"]
    if monitor == "ssim" and task == "mask":
        raise UserInputError("--monitor ssim needs an image task (image or joint); the mask task has no reconstruction")
    if monitor == "dice" and task == "image":
        raise UserInputError("--monitor dice needs a mask or joint task")


def check_options(options) -> None:
    """Command-line numbers the config does not hold: a wall-clock budget and loader workers."""
    minutes = options.max_minutes
    if minutes is not None and not (math.isfinite(float(minutes)) and float(minutes) > 0):
        raise UserInputError(f"--max-minutes must be a positive number of minutes, got {minutes}")
    if int(options.num_workers) < 0:
        raise UserInputError(f"--num-workers must be 0 or more, got {options.num_workers}")


def downsample_factor(cfg: dict, model=None) -> int:
    """Masking patch size: one (bottom-level) latent cell of the model; 8 px when nothing says."""
    return int(getattr(model, "downsample", None) or (cfg.get("model") or {}).get("downsample") or 8)
