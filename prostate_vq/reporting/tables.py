"""Markdown tables, number formatting and the reference-table "Parameters" cell."""

from __future__ import annotations

import math

from prostate_vq.models.quantizers import QUANTIZERS

DASH = "–"


def fmt(value, spec: str = ".3f", scale: float = 1.0) -> str:
    """A formatted number, or a dash for missing / non-finite values."""
    if value is None or value == "":
        return DASH
    try:
        number = float(value) * scale
    except (TypeError, ValueError):
        return str(value)
    if math.isinf(number):
        return "inf"
    return DASH if math.isnan(number) else format(number, spec)


def md_escape(text) -> str:
    """Text from run files in a cell or a line: its HTML and link syntax are shown, never rendered
    ('>' alone opens no tag, so 'SSIM > 0.6' stays readable in the source)."""
    text = str(text).replace("&", "&amp;").replace("<", "&lt;")
    return text.replace("|", "\\|").replace("](", "]\\(").replace("\n", " ")


def md_code(text) -> str:
    """An inline code span (nothing inside is rendered) that backticks and newlines cannot end early."""
    return "`" + str(text).replace("`", "'").replace("\n", " ") + "`"


def md_table(header: list[str], rows: list[list], align: list[str] | None = None) -> str:
    """GitHub-flavoured table; ``align`` per column: 'l', 'c' or 'r'."""
    align = align or ["l"] * len(header)
    rule = {"l": ":---", "c": ":---:", "r": "---:"}
    lines = ["| " + " | ".join(md_escape(h) for h in header) + " |", "|" + "|".join(rule[a] for a in align) + "|"]
    lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in (d or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def hyperparameters(config: dict, epochs: int | None = None, refit_info: dict | None = None) -> str:
    """The reference table's "Parameters" cell: epochs, quantizer, D, K, downsample, beta (+ ReFiT)."""
    model, quantizer = config.get("model", {}) or {}, config.get("quantizer", {}) or {}
    parts = []
    if epochs is not None:
        parts.append(f"epochs={epochs}")
    kind = quantizer.get("kind")
    if kind:
        parts.append(kind if model.get("architecture", "vqvae") == "vqvae" else f"{model['architecture']}/{kind}")
    if model.get("embedding_dim") is not None:
        parts.append(f"D={model['embedding_dim']}")
    if quantizer.get("codebook_dim"):
        parts.append(f"code dim={quantizer['codebook_dim']}")
    if quantizer.get("levels"):
        parts.append("levels=" + ",".join(str(v) for v in quantizer["levels"]))
    elif quantizer.get("codebook_size") is not None:
        parts.append(f"K={quantizer['codebook_size']}")
    if quantizer.get("depth"):
        parts.append(f"depth={quantizer['depth']}")
    if model.get("downsample") is not None:
        parts.append(f"downsample={model['downsample']}")
    weighted = QUANTIZERS[kind].loss_weights if kind in QUANTIZERS else ("beta",)  # a kind says what it weights
    if quantizer.get("beta") is not None and "beta" in weighted:
        parts.append(f"beta={quantizer['beta']}")
    if refit_info and refit_info.get("codebook_size_before"):
        parts.append(f"ReFiT from K={refit_info['codebook_size_before']}")
    elif (config.get("refit") or {}).get("codebook_size"):
        parts.append(f"ReFiT to K={config['refit']['codebook_size']}")
    return ", ".join(parts)
