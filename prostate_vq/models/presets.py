"""Named model presets (data in presets.yaml) and `--set key=value` overrides."""

from __future__ import annotations

import copy
from functools import lru_cache
from importlib import resources

import yaml

from prostate_vq import schema
from prostate_vq.errors import UserInputError

from .build import build_model
from .quantizers import check_options, quantizer_class, quantizer_options

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
    """Check against the schema and fill defaults: prostate_vq.schema for `model`, `training` and `refit`, the
    kind's constructor defaults and `option_limits` for `quantizer` (so LFQ's power-of-two codebook is one line
    here, before any data loads)."""
    cfg["model"] = {**schema.defaults("model"), **schema.check_section("model", cfg.get("model") or {})}
    quantizer = dict(cfg.get("quantizer", {}))
    kind = quantizer.pop("kind", "vq")
    quantizer_class(kind)
    cfg["quantizer"] = {"kind": kind, **quantizer_options(kind), **check_options(kind, quantizer)}
    cfg["training"] = {**schema.defaults("training"), **schema.check_section("training", cfg.get("training") or {})}
    if cfg.get("refit"):
        cfg["refit"] = {**schema.defaults("refit"), **schema.check_section("refit", cfg["refit"])}
    return cfg


def check_model_config(cfg: dict) -> None:
    """The model and quantizer sections of a stored config (a checkpoint's) by the schema's rules, so that a broken
    value is one line before it reaches torch (`codebook_size: abc`); keys are left to the build."""
    schema.check_section("model", cfg.get("model") or {})
    quantizer = dict(cfg.get("quantizer") or {})
    kind = quantizer.pop("kind", "vq")
    options = quantizer_options(kind)
    check_options(kind, {key: value for key, value in quantizer.items() if key in options})


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
        value = schema.yaml_number(value)
        section, dot, name = key.partition(".")
        if section not in SECTIONS or (not dot and section != "description") or "." in name:
            raise UserInputError(
                f"unknown override key {key!r}; keys look like model.channels, "
                f"quantizer.codebook_size, training.lr or refit.codebook_size"
            )
        if section == "description":
            cfg["description"] = str(value)
            continue
        if section == "quantizer" and name == "kind":
            shared = quantizer_options(value)
            cfg["quantizer"] = {"kind": value, **{k: v for k, v in cfg["quantizer"].items() if k in shared}}
            cfg = resolve(cfg)
            continue
        target = cfg.setdefault(section, {})
        valid = [k for k in target if k != "kind"] if section == "quantizer" else schema.keys(section)
        if name not in valid:
            raise UserInputError(f"unknown override key {key!r}; valid {section} keys: {', '.join(valid)}")
        if section == "quantizer":
            target[name] = check_options(cfg["quantizer"]["kind"], {name: value}, as_key=False)[name]
        else:
            target[name] = schema.check_set(key, value, schema.rules(section, name))
    return cfg


def preset_bits_per_pixel(name: str, spatial_size=schema.DEFAULT_SPATIAL_SIZE) -> float:
    """The rate of a preset's final model (after ReFiT for presets that have a `refit` section)."""
    return config_bits_per_pixel(get_preset(name), spatial_size)


def config_bits_per_pixel(cfg: dict, spatial_size=schema.DEFAULT_SPATIAL_SIZE) -> float:
    """The rate of a resolved config's final model (after ReFiT where it has a `refit` section)."""
    refit_size = (cfg.get("refit") or {}).get("codebook_size")
    if refit_size:
        cfg = {**cfg, "quantizer": {**cfg["quantizer"], "codebook_size": int(refit_size)}}
    return build_model(cfg).bits_per_pixel(spatial_size)
