"""Exports of a trained model for others: safetensors + config.json (`from_pretrained`), a model card,
TorchScript and ONNX graphs of encode-to-indices and decode-from-indices, and the MONAI Bundle layout.
Sits above evaluation (the card reads its metrics.json) and below workflows."""

from __future__ import annotations

from .command import FORMATS, export_checkpoint
from .pretrained import from_pretrained, load_pretrained

__all__ = ["FORMATS", "export_checkpoint", "from_pretrained", "load_pretrained"]
