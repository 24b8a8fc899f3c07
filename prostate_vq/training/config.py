"""A VQ-VAE run's configuration, resolved once into typed objects (prostate_vq.schema.RunConfig) from a
`RunRequest` (a preset or a `--config` file, `--set` overrides and explicit options), or taken from last.pt on
`--resume`; and its checks."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

from prostate_vq.errors import UserInputError
from prostate_vq.files import plain
from prostate_vq.schema import RunConfig, check_option, check_section

# Keys with a command-line option of their own: messages name the option.
FLAGS = {
    "epochs": "--epochs",
    "max_steps": "--max-steps",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "patience": "--patience",
    "mask_ratio": "--mask-ratio",
    "spatial_size": "--spatial-size",
    "monitor": "--monitor",
}
MONITOR_KEYS = {"loss": "val_loss", "ssim": "val_ssim", "dice": "val_dice"}


# `schedule` is what a run's config.yaml says about the learning-rate plan it followed: informational, ignored
# here (the run that reads the file plans its own from its budget).
CONFIG_FILE_KEYS = ("base", "task", "seed", "data_root", "description", "model", "quantizer", "training", "refit", "schedule")


@dataclass
class RunRequest:
    """What a run's configuration is made of, as given (None = not given): `prostate-vq train`'s preset,
    `--config`, `--task`, `--seed`, `--set` and the options that set a training key. `resolve` turns it into the
    RunConfig a fresh run follows; on `--resume` the checkpoint's config is continued instead, with `epochs`,
    `max_steps`, `patience` and `lr` applied (`resumed`) and the others, when given and different, named as
    ignored. Everything a run does not record in its config (data, output folder, device, workers, time budget)
    is a runtime setting: training.vqvae.TrainOptions.

    `epochs` and `max_steps` are here, not in TrainOptions: they are the recipe's budgets (training.epochs,
    training.max_steps, written to config.yaml and the checkpoints), so `--config RUN/config.yaml` reproduces
    them. `--max-minutes` is not recorded in the config and stays a runtime setting."""

    preset: str | None = None  # None: "default", or the --config file's base
    config_file: Path | None = None  # --config: `base: PRESET` + sections, under `overrides` and the options below
    task: str | None = None  # None: the --config file's, else "image" (on --resume the run's own)
    seed: int | None = None  # None: the --config file's, else 0 (on --resume the run's own)
    overrides: list[str] = field(default_factory=list)  # --set SECTION.KEY=VALUE, in order
    epochs: int | None = None
    max_steps: int | None = None  # optimizer-step budget (training.max_steps); the cosine is planned over it
    batch_size: int | None = None
    lr: float | None = None
    patience: int | None = None
    monitor: str | None = None
    mask_ratio: float | None = None
    spatial_size: tuple[int, ...] | None = None  # (H, W): resolve checks it is two sizes, like --set's


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
        raise UserInputError(
            f"--config: unknown key(s) {', '.join(map(str, unknown))}; valid: {', '.join(CONFIG_FILE_KEYS)}", path
        )
    return data


def resolve(request: RunRequest | None = None) -> RunConfig:
    """The one place a run's configuration is resolved, into typed objects: schema defaults < the preset (or a
    `--config` file: `base: PRESET` plus sections, task, seed and data_root, read here and nowhere else) <
    `--set` overrides < explicit options (None = not given, so `--monitor loss` and `--mask-ratio 0` override).
    No request: the default preset as it is.

    Every check of a resolved config belongs here, before any data loads (per-quantizer option checks too)."""
    from prostate_vq.models import apply_overrides

    request = request or RunRequest()
    path = request.config_file
    file = read_config_file(path) if path is not None else None
    if file is not None and request.preset is not None:
        raise UserInputError(
            f"--preset {request.preset} and --config: the file names its own preset (base: "
            f"{file.get('base', 'default')}); give one of them",
            path,
        )
    preset = str(file.get("base", "default")) if file is not None else (request.preset or "default")
    cfg = apply_overrides(_sections(preset, file, path), list(request.overrides or []))
    training = cfg["training"]
    explicit = {
        "epochs": request.epochs,
        "max_steps": request.max_steps,
        "batch_size": request.batch_size,
        "lr": request.lr,
        "patience": request.patience,
        "mask_ratio": request.mask_ratio,
        "monitor": request.monitor,
        "spatial_size": list(request.spatial_size) if request.spatial_size else None,
    }
    training.update({k: v for k, v in explicit.items() if v is not None})
    if training.get("max_steps") and request.epochs is None:
        # A step budget is the run's length: a preset's nominal epochs must not end it first on a small training
        # set (19 slices at batch 16 are 2 steps per epoch: 100 epochs would stop a 300-step budget at 200).
        # Every epoch takes at least one step, so max_steps epochs always reach the budget. An explicit --epochs
        # still caps it.
        training["epochs"] = max(int(training["epochs"]), int(training["max_steps"]))
    file = file or {}
    task = request.task or str(file.get("task") or "image")
    check_training_config(training, task)
    return RunConfig.from_sections(
        plain(cfg),
        preset=preset,
        task=task,
        seed=_seed(request, file),
        data_root=str(file["data_root"]) if file.get("data_root") else None,
    )


RESUME_APPLIES = ("epochs", "max_steps", "patience", "lr")  # a resumed run may be extended, more patient, slower


def resumed(request: RunRequest, payload: dict, path: Path) -> RunConfig:
    """The configuration a `--resume` continues with: last.pt's, with the options a resumed run follows (--epochs,
    --max-steps, --patience, --lr); a broken stored config is one line naming the checkpoint."""
    from prostate_vq.models.presets import check_model_config

    cfg = copy.deepcopy(payload["config"])
    for key in RESUME_APPLIES:
        if getattr(request, key) is not None:
            cfg["training"][key] = getattr(request, key)
    try:
        check_model_config(cfg)
        check_training_config(cfg["training"], payload["task"])
    except UserInputError as error:
        raise UserInputError(f"--resume: its stored config is broken ({error})", path) from None
    return RunConfig.from_sections(
        cfg, preset=payload["preset"], task=payload["task"], seed=int(payload.get("seed", request.seed or 0))
    )


def _sections(preset: str, file: dict | None, path) -> dict:
    """The preset's sections, or a `--config` file's laid over its `base` preset (validated by the schema)."""
    from prostate_vq.models import get_preset
    from prostate_vq.models.presets import resolve as resolve_preset

    cfg = get_preset(preset)
    if file is None:
        return cfg
    if "description" in file:
        cfg["description"] = str(file["description"])
    for section in ("model", "quantizer", "training", "refit"):
        if section == "refit" and not file.get("refit") and not cfg.get("refit"):
            continue
        given = file.get(section) or {}
        if not isinstance(given, dict):
            raise UserInputError(f"--config: {section} must be a mapping", path)
        kind_changes = section == "quantizer" and given.get("kind", cfg["quantizer"]["kind"]) != cfg["quantizer"]["kind"]
        cfg[section] = dict(given) if kind_changes else {**(cfg.get(section) or {}), **given}
    try:
        return resolve_preset(cfg)
    except UserInputError as error:
        raise UserInputError(f"--config: {error}", path) from None


def _seed(request: RunRequest, file: dict) -> int:
    """--seed, else the --config file's (by --seed's rule), else 0."""
    if request.seed is not None:
        return int(request.seed)
    if "seed" not in file:
        return 0
    try:
        return int(check_option("seed", file["seed"], label="seed"))
    except UserInputError as error:
        raise UserInputError(f"--config: {error}", request.config_file) from None


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
    """Runtime numbers the config does not hold (TrainOptions'): a wall-clock budget and loader workers."""
    minutes = options.max_minutes
    if minutes is not None and not (math.isfinite(float(minutes)) and float(minutes) > 0):
        raise UserInputError(f"--max-minutes must be a positive number of minutes, got {minutes}")
    if int(options.num_workers) < 0:
        raise UserInputError(f"--num-workers must be 0 or more, got {options.num_workers}")
