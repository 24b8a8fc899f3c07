"""ONNX files of the encode and decode graphs, each checked with onnxruntime against the eager model.
Optional: needs the `onnx` extra (pip install 'prostate-vq[onnx]')."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from .graphs import as_tuple, mismatch, onnx_unsupported

MISSING = "ONNX skipped: needs the onnx extra (pip install 'prostate-vq[onnx]')"
OPSET = 17


def available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def skip_reason(kind: str) -> str | None:
    """Why ONNX files will not be written for a model with quantizer `kind`, or None."""
    if not available():
        return MISSING
    return onnx_unsupported(kind)


def onnx_bytes(module: nn.Module, example: Tensor, input_name: str, output_names: list[str], dynamic: dict[int, str]) -> bytes:
    """The TorchScript-based exporter (dynamo=False): it follows the same trace TorchScript gets, and needs no
    onnxscript; batch and spatial axes stay dynamic."""
    axes = {input_name: dynamic, **{name: {0: "batch"} for name in output_names}}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "graph.onnx"
        torch.onnx.export(
            module.eval(),
            (example,),
            str(path),
            input_names=[input_name],
            output_names=output_names,
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
        return path.read_bytes()


def run_onnx(data: bytes, input_name: str, value: Tensor) -> tuple[Tensor, ...]:
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    return tuple(torch.from_numpy(out) for out in session.run(None, {input_name: value.numpy()}))


def check_onnx(data: bytes, input_name: str, module: nn.Module, inputs: list[Tensor]) -> str | None:
    """None when onnxruntime reproduces the eager module on every input, else what differs."""
    for value in inputs:
        with torch.no_grad():
            expected = as_tuple(module(value))
        problem = mismatch(expected, run_onnx(data, input_name, value))
        if problem:
            return problem
    return None
