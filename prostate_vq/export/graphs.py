"""The two halves every exported format carries, as plain modules with tensor inputs and outputs: image to
code indices (`EncodeToIndices`) and code indices to image (`DecodeFromIndices`), plus `Reconstruct` (both,
for MONAI Bundle's one-network `model.ts`). TorchScript and ONNX see only these, never the training-time
outputs (losses, latents) of the model.

They are traced, not scripted: vector-quantize-pytorch's modules (einops, optional arguments) do not script,
while a trace records the tensor operations of one call, with batch and slice size kept symbolic.
"""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from prostate_vq.data.layout import NUM_CLASSES
from prostate_vq.models.quantizers import QUANTIZERS

if TYPE_CHECKING:
    from prostate_vq.models import VQVAE

# The checks every format passes against the eager model (the round-trip tests use the same tolerances).
IMAGE_ATOL = 1e-5


def onnx_unsupported(kind: str) -> str | None:
    """Why a model with quantizer `kind` cannot go to ONNX (the class's `onnx_unsupported`, one line shown by export
    and written to config.json), or None."""
    cls = QUANTIZERS.get(kind)
    return cls.onnx_unsupported if cls else None


def quantizer_kind(config: dict) -> str:
    return str((config.get("quantizer") or {}).get("kind", "vq"))


class EncodeToIndices(nn.Module):
    """[B, C, H, W] network input (the image in [0, 1]; the one-hot mask for the mask task) -> int64 code map."""

    def __init__(self, model: VQVAE):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model._quantize(x).indices


class DecodeFromIndices(nn.Module):
    """int64 code map -> the reconstruction [B, 1, H, W] (image task), segmentation logits [B, 6, H, W] (mask),
    or both (joint). Reconstructions are unbounded, as the model's: evaluation clamps them to [0, 1]."""

    def __init__(self, model: VQVAE):
        super().__init__()
        self.model = model

    def forward(self, indices: Tensor):
        out = self.model.decode_indices(indices)
        if self.model.task == "mask":
            return out.seg_logits
        if self.model.task == "joint":
            return out.recon, out.seg_logits
        return out.recon


class Reconstruct(nn.Module):
    """Input -> the decoder's first output (the reconstruction; segmentation logits for the mask task)."""

    def __init__(self, model: VQVAE):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        out = self.model.decode_indices(self.model._quantize(x).indices)
        first = out.seg_logits if self.model.task == "mask" else out.recon
        if first is None:  # each task's decoder gives this output (ModelOutput types both as optional)
            raise RuntimeError(f"the {self.model.task} model's decoder gave no output to export")
        return first


def in_channels(task: str) -> int:
    return NUM_CLASSES if task == "mask" else 1


def example_input(task: str, spatial_size, batch: int = 2, seed: int = 0) -> Tensor:
    """A deterministic network input of the checkpoint's slice size (a one-hot label map for the mask task)."""
    generator = torch.Generator().manual_seed(seed)
    h, w = (int(s) for s in spatial_size)
    if task == "mask":
        labels = torch.randint(0, NUM_CLASSES, (batch, h, w), generator=generator)
        return torch.nn.functional.one_hot(labels, NUM_CLASSES).permute(0, 3, 1, 2).float()
    return torch.rand(batch, 1, h, w, generator=generator)


def as_tuple(value) -> tuple[Tensor, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def mismatch(expected, got) -> str | None:
    """None when `got` reproduces `expected` (integers exactly, floats within IMAGE_ATOL), else what differs."""
    expected, got = as_tuple(expected), as_tuple(got)
    if len(expected) != len(got):
        return f"{len(got)} outputs instead of {len(expected)}"
    for a, b in zip(expected, got):
        b = torch.as_tensor(b)
        if tuple(a.shape) != tuple(b.shape):
            return f"shape {tuple(b.shape)} instead of {tuple(a.shape)}"
        if not a.is_floating_point():
            if not torch.equal(a.long(), b.long()):
                return f"{int((a.long() != b.long()).sum())} code indices differ"
        elif not torch.allclose(a.float(), b.float(), atol=IMAGE_ATOL, rtol=0):
            return f"outputs differ by up to {float((a.float() - b.float()).abs().max()):.3g}"
    return None


def trace(module: nn.Module, example: Tensor) -> torch.jit.ScriptModule:
    """torch.jit.trace without its warnings (shape-dependent Python it flags is rebuilt per call by the model's
    own arithmetic on tensor sizes, which the trace keeps symbolic; the round-trip check proves the result)."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.jit.trace(module.eval(), example, check_trace=False)


def torchscript_bytes(module: nn.Module, example: Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(trace(module, example), buffer)
    return buffer.getvalue()
