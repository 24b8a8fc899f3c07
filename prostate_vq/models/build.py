"""A model from a resolved config: the architecture names the class (`model.architecture`)."""

from __future__ import annotations

from prostate_vq.schema import check_section

from .monai_vqvae import MonaiVQVAE
from .vqvae import VQVAE, VQVAE2

ARCHITECTURES = {"vqvae": VQVAE, "vqvae2": VQVAE2, "monai": MonaiVQVAE}


def build_model(cfg: dict, task: str = "image") -> VQVAE:
    """Model for a resolved config (a dict with `model` and `quantizer` sections; `get_preset(name)` gives one)."""
    model_cfg = check_section("model", dict(cfg.get("model", {})))
    architecture = model_cfg.get("architecture", "vqvae")
    return ARCHITECTURES[architecture](model_cfg, dict(cfg.get("quantizer", {"kind": "vq"})), task)
