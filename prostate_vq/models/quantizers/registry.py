"""The quantizer registry: `@register_quantizer("kind")` on a `Quantizer` subclass is all it takes to add a kind.

The class carries what the rest of the package needs to know (its loss text and references for the report, its
options' ranges for the config check, its capabilities for ReFiT and docs), so no other module keeps a list of
kinds, and a kind that forgot its loss text or reference is refused here rather than shown as a bare name.
"""

from __future__ import annotations

import inspect

from prostate_vq import schema
from prostate_vq.errors import UserInputError

from .base import Quantizer

QUANTIZERS: dict[str, type[Quantizer]] = {}
_REQUIRED = ("summary", "loss_text")


def register_quantizer(kind: str):
    """Class decorator: register `cls` under `kind` after checking that it describes itself."""

    def register(cls: type[Quantizer]) -> type[Quantizer]:
        if not (isinstance(cls, type) and issubclass(cls, Quantizer)):
            raise TypeError(f"quantizer {kind!r}: {cls!r} is not a Quantizer subclass")
        if kind in QUANTIZERS and QUANTIZERS[kind] is not cls:
            raise TypeError(f"quantizer kind {kind!r} is already registered ({QUANTIZERS[kind].__name__})")
        missing = [name for name in _REQUIRED if not str(vars(cls).get(name, "")).strip()]
        if not cls.references or not all(isinstance(key, str) and key for key in cls.references):
            missing.append("references")
        if missing:
            raise TypeError(
                f"quantizer {kind!r} ({cls.__name__}) must set {', '.join(missing)}: the report, "
                "the docs and the config check read them"
            )
        cls.kind = kind
        _rules(cls)  # a keyword without a type is refused now, not when a config meets it
        QUANTIZERS[kind] = cls
        return cls

    return register


def unregister_quantizer(kind: str) -> None:
    """Remove `kind` (tests that register a toy quantizer clean up with this)."""
    QUANTIZERS.pop(kind, None)


def quantizer_class(kind) -> type[Quantizer]:
    if kind not in QUANTIZERS:
        raise UserInputError(f"unknown quantizer kind {kind!r}; choose one of {', '.join(QUANTIZERS)}")
    return QUANTIZERS[kind]


def quantizer_options(kind: str) -> dict:
    """The options a kind accepts with their defaults (read from the constructors, the one source)."""
    return {name: default for name, (default, _) in _rules(quantizer_class(kind)).items()}


def option_rules(kind: str) -> dict[str, dict]:
    """keyword -> prostate_vq.schema rules (type from the default, ranges from `option_limits`)."""
    return {name: rules for name, (_, rules) in _rules(quantizer_class(kind)).items()}


def check_options(kind: str, values: dict, as_key: bool = True) -> dict:
    """`values` (a quantizer section without `kind`) checked against the kind's options: one line naming the key
    for an unknown option or a bad value (`as_key`: a preset's or config file's key; otherwise a `--set`)."""
    rules = option_rules(kind)
    unknown = sorted(set(values) - set(rules))
    if unknown:
        raise UserInputError(f"quantizer kind {kind!r} has no option(s) {', '.join(unknown)}; valid: {', '.join(rules)}")
    out = {}
    for name, value in values.items():
        key = f"quantizer.{name}"
        out[name] = schema.check(key, value, rules[name]) if as_key else schema.check_set(key, value, rules[name])
    return out


def _rules(cls: type[Quantizer]) -> dict[str, tuple]:
    """keyword -> (default, rules) over the constructors of the class and its package ancestors."""
    limits: dict[str, dict] = {}
    for base in reversed(cls.__mro__):
        limits.update(vars(base).get("option_limits", {}))
    out: dict[str, tuple] = {}
    for base in reversed(cls.__mro__):
        if issubclass(base, Quantizer) and base is not Quantizer and "__init__" in vars(base):
            for name, p in inspect.signature(base.__init__).parameters.items():
                if name in ("self", "dim") or p.kind is not p.POSITIONAL_OR_KEYWORD:
                    continue
                default = None if p.default is p.empty else p.default
                default = list(default) if isinstance(default, tuple) else default
                out[name] = (default, _rule(cls, name, default, limits.get(name, {})))
    return out


def _rule(cls, name: str, default, limits: dict) -> dict:
    """By the default's type: whole numbers at least 1, numbers 0 or more, lists of positive whole numbers;
    `limits` overrides (a range, choices, a power of two)."""
    kind = limits.get("kind") or type(default)
    if default is None and "kind" not in limits:
        raise TypeError(
            f"quantizer {cls.__name__}: option {name!r} defaults to None; give its type in "
            f"option_limits ({{{name!r}: {{'kind': int}}}})"
        )
    base: dict = {}
    if kind is int and not isinstance(default, bool):
        base = {"minimum": 1}
    elif kind is float:
        base = {"minimum": 0}
    elif kind is list:
        base = {"item_minimum": 1}
    merged = {**base, **limits}
    if "above" in merged and "minimum" not in limits:
        merged.pop("minimum", None)
    return schema.option_rules(default, **merged)
