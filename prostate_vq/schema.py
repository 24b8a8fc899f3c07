"""The config schema: the single home of the defaults, types and ranges of a run's `model`, `training` and
`refit` sections and of the prior's options. Presets, config files, `--set` values and command-line options
are all checked here, so a bad value is one line naming the key, never a traceback later.

The `quantizer` section is each kind's constructor keywords (models/quantizers): its defaults and types come
from those signatures, its ranges from the kind's `option_limits`, checked by these same rules
(`models.quantizers.check_options`).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from prostate_vq.errors import UserInputError

# HipMRI's slices (rows, cols): the default size of every dataset, model summary, rate and run.
DEFAULT_SPATIAL_SIZE = (256, 128)


def option_rules(
    default,
    *,
    minimum=None,
    above=None,
    below=None,
    maximum=None,
    choices=None,
    kind=None,
    item_minimum=None,
    length=None,
    power_of_two=False,
) -> dict:
    """What a value must be (`kind` when the default is None): the rules `check` applies."""
    return {
        "minimum": minimum,
        "above": above,
        "below": below,
        "maximum": maximum,
        "choices": choices,
        "kind": kind or type(default),
        "item_minimum": item_minimum,
        "length": length,
        "nullable": default is None,
        "power_of_two": power_of_two,
    }


def option(default, **limits):
    """A schema field: its default and what a value must be (`option_rules`)."""
    rules = option_rules(default, **limits)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=rules)
    return field(default=default, metadata=rules)


@dataclass
class ModelConfig:
    """`model:` the encoder/decoder around the quantizer."""

    architecture: str = option("vqvae", choices=("vqvae", "vqvae2", "monai"))  # vqvae2: top/bottom; monai: MONAI's VQVAE
    channels: list = option([64, 128], item_minimum=1, maximum=4096)  # one per stride-2 stage; a short list repeats its last
    downsample: int = option(4, choices=(2, 4, 8, 16))  # vqvae2: the bottom level; the top is 2x coarser
    res_layers: int = option(2, minimum=0)
    res_channels: int = option(32, minimum=1, maximum=4096)
    embedding_dim: int = option(64, minimum=1, maximum=4096)  # D: encoder output channels fed to the quantizer
    dlcr_stages: int = option(0, minimum=0)  # >0: dense channel-reduction head instead of one 1x1 conv
    padding_mode: str = option("zeros", choices=("zeros", "replicate", "reflect"))  # beyond the slice edge
    upsample: str = option("transposed", choices=("transposed", "nearest"))  # decoder x2 stages; nearest: + 3x3 conv
    top_codebook_size: int | None = option(None, minimum=1, maximum=2**20, kind=int)  # vqvae2 top K (None: codebook_size)


@dataclass
class TrainingConfig:
    """`training:` the engine's recipe; explicit command-line options override it."""

    epochs: int = option(50, minimum=1)
    max_steps: int | None = option(None, minimum=1, kind=int)  # optimizer-step budget (--max-steps); None: epochs
    batch_size: int = option(16, minimum=1)
    lr: float = option(2e-4, above=0)
    weight_decay: float = option(0.0, minimum=0)
    optimizer: str = option("adam", choices=("adam", "adamw"))
    scheduler: str | None = option("cosine", choices=("cosine", "plateau", "none", None))
    min_lr_ratio: float = option(0.05, minimum=0, maximum=1)  # cosine floor as a share of lr
    warmup_steps: int = option(0, minimum=0)  # linear learning-rate warmup over the first optimizer steps
    patience: int = option(10, minimum=0)  # validations without improvement before stopping (0: never)
    patience_steps: int = option(0, minimum=0)  # ... and at least this many optimizer steps since the best
    min_steps: int = option(0, minimum=0)  # never stop early before this many optimizer steps
    min_delta: float = option(0.0, minimum=0)
    l1_weight: float = option(0.0, minimum=0)
    ssim_weight: float = option(0.0, minimum=0)  # image tasks: weight of a 1 - SSIM term beside the MSE
    dice_weight: float = option(1.0, minimum=0)
    seg_weight: float = option(1.0, minimum=0)
    grad_clip: float | None = option(None, above=0, kind=float)  # max gradient norm, None = off
    augment: bool = option(False)  # the data layer's batch augmentation (flips, small affine, intensity)
    mri_augment: bool = option(False)  # MONAI's MRI transforms: bias field, Gibbs ringing, Rician noise, low resolution
    find_unused_parameters: bool = option(False)  # DDP: only for models with parameters a task leaves unused
    spatial_size: list = option(list(DEFAULT_SPATIAL_SIZE), item_minimum=16, length=2)
    mask_ratio: float = option(0.0, minimum=0, below=1)
    monitor: str = option("loss", choices=("loss", "ssim", "dice"))  # what best.pt and early stopping follow


@dataclass
class RefitConfig:
    """`refit:` a preset that continues with ReFiT in the same `train` command."""

    codebook_size: int = option(256, minimum=2)
    epochs: int | None = option(None, minimum=1, kind=int)  # None: the training section's
    lr: float | None = option(None, above=0, kind=float)  # None: the training section's
    max_steps: int | None = option(None, minimum=1, kind=int)  # fine-tuning's step budget (train splits max_steps 3:1)
    dead_code_threshold: float = option(1.0, minimum=0)  # usage EMA below which fine-tuning restarts a code


@dataclass
class QuantizerConfig:
    """`quantizer:` the kind and its constructor keywords (models/quantizers: their defaults and checks are the
    kind's own, not this schema's)."""

    kind: str = "vq"
    options: dict = field(default_factory=dict)

    @classmethod
    def from_section(cls, section: dict) -> QuantizerConfig:
        values = dict(section)
        return cls(str(values.pop("kind", "vq")), values)

    def section(self) -> dict:
        return {"kind": self.kind, **self.options}


@dataclass
class RunConfig:
    """A VQ-VAE run's configuration, resolved once (training.config.resolve) and read as attributes from then on;
    dicts only at the YAML and checkpoint boundary (`from_sections` / `sections`, formats unchanged).

    `preset`, `task` and `seed` are the run's identity beside its sections; `data_root` is a `--config` file's
    (a run's config.yaml names the data it was trained on), which `--data` overrides."""

    model: ModelConfig
    quantizer: QuantizerConfig
    training: TrainingConfig
    refit: RefitConfig | None = None
    description: str | None = None
    preset: str = "default"
    task: str = "image"
    seed: int = 0
    data_root: str | None = None

    @classmethod
    def from_sections(
        cls, cfg: dict, *, preset: str = "default", task: str = "image", seed: int = 0, data_root: str | None = None
    ) -> RunConfig:
        """From a resolved (or stored) config dict whose sections hold every key of their schema."""
        refit = cfg.get("refit")
        return cls(
            model=ModelConfig(**cfg["model"]),
            quantizer=QuantizerConfig.from_section(cfg["quantizer"]),
            training=TrainingConfig(**cfg["training"]),
            refit=RefitConfig(**refit) if refit else None,
            description=cfg.get("description"),
            preset=str(preset),
            task=str(task),
            seed=int(seed),
            data_root=data_root,
        )

    def sections(self) -> dict:
        """The checkpoint's `config` and the body of config.yaml: description, model, quantizer, training, refit."""
        out: dict = {} if self.description is None else {"description": self.description}
        out.update(model=asdict(self.model), quantizer=self.quantizer.section(), training=asdict(self.training))
        if self.refit is not None:
            out["refit"] = asdict(self.refit)
        return out


SCHEMAS = {"model": ModelConfig, "training": TrainingConfig, "refit": RefitConfig}

# The largest seed every generator takes (numpy's legacy seeding stops at 2**32 - 1).
SEED_MAX = 2**32 - 1
# Command-line options that are no config key, checked like one (`check_option`; the CLI checks every verb's
# before it runs, so `--seed -1` or `--max-minutes nan` is one line naming the flag, never a traceback later).
COMMAND_LINE = {
    "seed": option_rules(0, minimum=0, maximum=SEED_MAX),
    "max_minutes": option_rules(None, above=0, kind=float),
    "minutes": option_rules(5.0, above=0),
    "temperature": option_rules(1.0, above=0),
    "max_slices": option_rules(None, minimum=1, kind=int),
    "num_workers": option_rules(0, minimum=0),
    "n": option_rules(16, minimum=1),
    "cases": option_rules(12, minimum=1),
    "slices": option_rules(24, minimum=1),
    "weeks": option_rules(2, minimum=1),
    "week": option_rules(0, minimum=0),
}
# Command-line options that set a config key of the same name: checked by that key's rules.
FLAG_SECTIONS = {
    "epochs": "training",
    "max_steps": "training",
    "batch_size": "training",
    "lr": "training",
    "patience": "training",
    "spatial_size": "training",
    "mask_ratio": "training",
    "codebook_size": "refit",
}
# The prior's networks and recipe per architecture (its own config, stored in its checkpoint).
PRIOR_ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "pixelcnn": {"dim": 64, "layers": 8, "kernel": 3, "first_kernel": 7},
    "transformer": {"dim": 128, "layers": 4, "heads": 4, "dropout": 0.1},
}
PRIOR_TRAINING_DEFAULTS = {
    "pixelcnn": {"epochs": 60, "batch_size": 32, "lr": 1e-3, "patience": 8},
    "transformer": {"epochs": 60, "batch_size": 32, "lr": 5e-4, "patience": 8},
}
PRIOR_COMMON_TRAINING = {
    "optimizer": "adamw",
    "weight_decay": 0.0,
    "scheduler": "cosine",
    "min_lr_ratio": 0.05,
    "monitor": "loss",
    "grad_clip": 1.0,
    "min_delta": 0.0,
}


def defaults(section: str) -> dict:
    """The section's defaults as a plain dict."""
    out = {}
    for f in fields(SCHEMAS[section]):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
        else:
            raise TypeError(f"schema {section}.{f.name} has no default")
    return out


def keys(section: str) -> list[str]:
    return [f.name for f in fields(SCHEMAS[section])]


def rules(section: str, key: str):
    return next(f.metadata for f in fields(SCHEMAS[section]) if f.name == key)


def check_section(section: str, values: dict, label=None) -> dict:
    """Every key of `values` known to the section's schema and valid; returns the values with whole numbers
    as ints. `label(key)` names a key in messages (`training.lr` unless the caller has a flag for it)."""
    rules = {f.name: f.metadata for f in fields(SCHEMAS[section])}
    unknown = sorted(set(values) - set(rules))
    if unknown:
        raise UserInputError(f"unknown {section} option(s) {', '.join(unknown)}; valid: {', '.join(rules)}")
    label = label or (lambda key: f"{section}.{key}")
    return {key: check(label(key), value, rules[key]) for key, value in values.items()}


def check(label: str, value: Any, rules, show_value: bool = True) -> Any:
    """One value against its field's rules; the message names `label` and says what the value must be."""

    def bad(expected: str):
        raise UserInputError(f"{label} must be {expected}" + (f", got {value!r}" if show_value else ""))

    kind = rules["kind"]
    choices = rules["choices"]
    if value is None:
        return value if _nullable(rules) else bad(_expected(rules))
    if kind is bool:
        return value if isinstance(value, bool) else bad("true or false")
    if kind is list:
        return _check_list(value, rules, bad)
    if kind in (int, float):
        value = _check_number(value, kind, bad)
    if choices is not None and value not in choices:
        bad("one of " + ", ".join(str(c) for c in choices if c is not None))
    if kind in (int, float):
        _check_range(value, rules, bad)
    return value


def _nullable(rules) -> bool:
    return rules.get("nullable", False) or (rules["choices"] is not None and None in rules["choices"])


def _expected(rules) -> str:
    return "one of " + ", ".join(str(c) for c in rules["choices"] if c is not None) if rules["choices"] else "set"


def _check_list(value, rules, bad) -> list:
    minimum, length = rules["item_minimum"], rules["length"]
    if not isinstance(value, list) or not value:
        bad("a non-empty list of integers")  # e.g. [64, 128]
    if length is not None and len(value) != length:
        bad(f"a list of {length} integers")
    if any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in value):
        bad("a list of positive integers" if minimum == 1 else f"a list of integers of at least {minimum}")
    if rules["maximum"] is not None and max(value) > rules["maximum"]:
        bad(f"a list of integers of at most {rules['maximum']}")
    return value


def yaml_number(value):
    """YAML 1.1 reads `1e-3` as a string; users mean the number (other strings stay strings)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _check_number(value, kind, bad):
    value = yaml_number(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        bad("a finite number")
    if kind is int:
        if not float(value).is_integer():
            bad("a whole number")
        return int(value)
    return value


def _check_range(value, rules, bad) -> None:
    if rules["minimum"] is not None and value < rules["minimum"]:
        bad("0 or more" if rules["minimum"] == 0 else f"at least {rules['minimum']}")
    if rules["above"] is not None and not value > rules["above"]:
        bad(f"above {rules['above']}")
    if rules["below"] is not None and not value < rules["below"]:
        bad(f"below {rules['below']}")
    if rules["maximum"] is not None and value > rules["maximum"]:
        bad(f"at most {rules['maximum']}")
    if rules.get("power_of_two") and (value < 1 or int(value) & (int(value) - 1)):
        bad("a power of two")


def check_set(key: str, new, rules):
    """A `--set key=value` against its rules; the message quotes the whole override."""
    return check(f"--set {key}={new!r}: {key.rpartition('.')[2]}", new, rules, show_value=False)


def check_option(name: str, value, label: str | None = None):
    """A command-line option of `COMMAND_LINE` or `FLAG_SECTIONS` (None: not given), named `label` (default:
    the flag) in the message."""
    if value is None:
        return None
    value = list(value) if isinstance(value, tuple) else value
    found = COMMAND_LINE.get(name) or rules(FLAG_SECTIONS[name], name)
    return check(label or "--" + name.replace("_", "-"), value, found)
