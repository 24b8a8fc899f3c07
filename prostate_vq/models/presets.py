"""Named model presets (data in presets.yaml) and `--set key=value` overrides."""

from __future__ import annotations

import copy
import math
from functools import lru_cache
from importlib import resources

import yaml

from prostate_vq.errors import UserInputError

from .quantizers import QUANTIZERS, quantizer_options
from .vqvae import MODEL_DEFAULTS, build_model

SECTIONS = ("description", "model", "quantizer", "training", "refit")


@lru_cache(maxsize=1)
def _presets() -> dict:
    """name -> preset; keys starting with "_" are shared YAML fragments (anchors), not presets."""
    text = resources.files(__package__).joinpath("presets.yaml").read_text(encoding="utf-8")
    return {name: cfg for name, cfg in yaml.safe_load(text).items() if not name.startswith("_")}


def list_presets() -> list[tuple[str, str]]:
    """(name, one-line description) of every preset, in file order."""
    return [(name, cfg.get("description", "")) for name, cfg in _presets().items()]


def get_preset(name: str) -> dict:
    """A deep copy of preset `name` with every model and quantizer option filled in."""
    presets = _presets()
    if name not in presets:
        raise UserInputError(f"unknown preset {name!r}; valid presets: {', '.join(presets)}")
    return resolve(copy.deepcopy(presets[name]))


def resolve(cfg: dict) -> dict:
    """Fill defaults: MODEL_DEFAULTS for `model`, the kind's constructor defaults for `quantizer`."""
    cfg["model"] = {**MODEL_DEFAULTS, **cfg.get("model", {})}
    quantizer = dict(cfg.get("quantizer", {}))
    kind = quantizer.get("kind", "vq")
    if kind not in QUANTIZERS:
        raise UserInputError(f"unknown quantizer kind {kind!r}; choose one of {', '.join(QUANTIZERS)}")
    options = quantizer_options(kind)
    unknown = sorted(set(quantizer) - set(options) - {"kind"})
    if unknown:
        raise UserInputError(f"quantizer kind {kind!r} has no option(s) {', '.join(unknown)}; "
                             f"valid: {', '.join(options)}")
    cfg["quantizer"] = {"kind": kind, **options, **quantizer}
    cfg.setdefault("training", {})
    return cfg


def apply_overrides(cfg: dict, overrides: list[str] | None) -> dict:
    """Apply `section.key=value` overrides (values parsed as YAML) to a copy of `cfg`.

    Keys must exist in the resolved config; changing `quantizer.kind` swaps in that kind's options
    (keeping the ones it shares, e.g. codebook_size). `refit.*` and `training.*` may add new keys.
    """
    cfg = resolve(copy.deepcopy(cfg))
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserInputError(f"override {item!r} must look like section.key=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise UserInputError(f"override {item!r}: value is not valid YAML ({error})") from None
        value = _number(value)
        section, dot, name = key.partition(".")
        if section not in SECTIONS or (not dot and section != "description") or "." in name:
            raise UserInputError(f"unknown override key {key!r}; keys look like model.channels, "
                                 f"quantizer.codebook_size, training.lr or refit.codebook_size")
        if section == "description":
            cfg["description"] = str(value)
            continue
        if section == "quantizer" and name == "kind":
            if value not in QUANTIZERS:
                raise UserInputError(f"unknown quantizer kind {value!r}; choose one of {', '.join(QUANTIZERS)}")
            shared = quantizer_options(value)
            cfg["quantizer"] = {"kind": value, **{k: v for k, v in cfg["quantizer"].items() if k in shared}}
            cfg = resolve(cfg)
            continue
        target = cfg.setdefault(section, {})
        if section in ("model", "quantizer") and name not in target:
            valid = ", ".join(k for k in target if k != "kind")
            raise UserInputError(f"unknown override key {key!r}; valid {section} keys: {valid}")
        if section == "training" and name not in target and name not in TRAINING_KEYS:
            raise UserInputError(f"unknown override key {key!r}; valid training keys: {', '.join(TRAINING_KEYS)}")
        target[name] = check_value(key, target.get(name, TRAINING_TYPES.get(name)), value)
    return cfg


# Keys whose 0 is meaningful (everything else sized is at least 1), and rates that must stay above 0.
ZERO_ALLOWED = {"res_layers", "dlcr_stages", "kmeans_iters", "patience", "patience_steps", "min_steps",
                "warmup_steps", "weight_decay", "min_delta", "min_lr_ratio", "mask_ratio"}
POSITIVE = {"temperature", "entropy_temperature", "lr"}
# Types of training keys a preset may leave out (the engine's defaults; see training.config).
TRAINING_TYPES = {"patience_steps": 0, "min_steps": 0, "warmup_steps": 0, "ssim_weight": 0.0, "augment": False,
                  "weight_decay": 0.0}


def check_value(key: str, old, new):
    """`--set` values by the type of the value they replace, and by range: one line, not a traceback later."""
    name = key.rpartition(".")[2]

    def bad(expected: str):
        raise UserInputError(f"--set {key}={new!r}: {name} must be {expected}")

    if old is None or new is None or (isinstance(old, str) and not isinstance(new, (int, float, list))):
        return new if not isinstance(new, float) or math.isfinite(new) else bad("a finite number")
    if isinstance(old, bool):
        return new if isinstance(new, bool) else bad("true or false")
    if isinstance(old, list):
        if not isinstance(new, list) or not new:
            bad("a non-empty list like " + str(old))
        for item in new:
            if isinstance(item, bool) or not isinstance(item, int) or item < 1:
                bad("a list of positive integers like " + str(old))
        return new
    if isinstance(old, (int, float)):
        if isinstance(new, bool) or not isinstance(new, (int, float)) or not math.isfinite(new):
            bad("a finite number")
        if isinstance(old, int) and not float(new).is_integer():
            bad("a whole number")
        new = int(new) if isinstance(old, int) else new
        low_ok = new > 0 or (new == 0 and name not in POSITIVE and (isinstance(old, float) or name in ZERO_ALLOWED))
        if not low_ok:
            bad("0 or more" if name in ZERO_ALLOWED else "above 0" if isinstance(old, float) or name in POSITIVE
                else "at least 1")
        if name == "decay" and new > 1:
            bad("at most 1")
        return new
    return new


# Keys the training engine reads from a preset's `training` section.
TRAINING_KEYS = ("lr", "batch_size", "epochs", "patience", "patience_steps", "min_steps", "weight_decay",
                 "grad_clip", "augment", "ssim_weight", "warmup_steps")


def _number(value):
    """YAML 1.1 reads `1e-3` as a string; users mean the number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def preset_bits_per_pixel(name: str, spatial_size=(256, 128)) -> float:
    """The rate of a preset's final model (after ReFiT for presets that have a `refit` section)."""
    return config_bits_per_pixel(get_preset(name), spatial_size)


def config_bits_per_pixel(cfg: dict, spatial_size=(256, 128)) -> float:
    """The rate of a resolved config's final model (after ReFiT where it has a `refit` section)."""
    refit_size = (cfg.get("refit") or {}).get("codebook_size")
    if refit_size:
        cfg = {**cfg, "quantizer": {**cfg["quantizer"], "codebook_size": int(refit_size)}}
    return build_model(cfg).bits_per_pixel(spatial_size)
