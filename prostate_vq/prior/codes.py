"""Code maps of a trained VQ-VAE: the layout a prior models, batch encoding, and `prostate-vq encode`.

What the prior models, per model family (``CodeLayout``):

* one codebook (vq, ema, soft, l2, entropy, FSQ, LFQ): the ``h x w`` map of indices; FSQ/LFQ indices
  address their implicit codebook (``num_codes`` entries).
* ``rq`` (residual depth ``D``): all ``D`` levels of each position, predicted together from the earlier
  positions (conditionally independent given them), so every sample carries all levels and decodes at
  full fidelity; bits per code average over the ``h * w * D`` codes.
* ``vqvae2``: the prior runs on the top grid (``h/2 x w/2``); each position carries its top code and the
  2x2 block of bottom codes under it (5 codes, the same factorisation as RQ). Every top and bottom code is
  modelled exactly once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from prostate_vq.errors import UserInputError
from prostate_vq.files import atomic_open


@dataclass
class CodeLayout:
    """How a model's ``indices`` map onto the prior's ``[B, h, w, depth]`` codes, and back."""

    kind: str  # "single" | "residual" | "hierarchy"
    vocab_sizes: list[int]
    grid: list[int]  # (h, w) of the prior's code map

    @classmethod
    def for_model(cls, model, spatial_size: Sequence[int]) -> CodeLayout:
        shape = tuple(int(s) for s in model.code_shape(tuple(spatial_size)))
        if hasattr(model, "quantizer_top"):  # VQVAE2: indices [B, 2, h, w] (top repeated over 2x2 blocks)
            _, h, w = shape
            return cls("hierarchy", [int(model.quantizer_top.num_codes)] + [int(model.quantizer.num_codes)] * 4, [h // 2, w // 2])
        if len(shape) == 3:  # RQ: indices [B, depth, h, w], each level in [0, num_codes / depth)
            depth, h, w = shape
            return cls("residual", [int(model.num_codes) // depth] * depth, [h, w])
        if len(shape) != 2:
            raise UserInputError(f"unsupported code map shape {shape} for a prior")
        return cls("single", [int(model.num_codes)], list(shape))

    @classmethod
    def from_dict(cls, data: dict) -> CodeLayout:
        return cls(str(data["kind"]), [int(v) for v in data["vocab_sizes"]], [int(v) for v in data["grid"]])

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def depth(self) -> int:
        return len(self.vocab_sizes)

    @property
    def codes_per_map(self) -> int:
        return self.grid[0] * self.grid[1] * self.depth

    @property
    def uniform_bits_per_code(self) -> float:
        """log2 K averaged over the levels: the nominal rate, what a prior that learned nothing costs."""
        return sum(math.log2(k) for k in self.vocab_sizes) / self.depth

    def describe(self) -> str:
        h, w = self.grid
        if self.kind == "single":
            return f"one {h}x{w} map of {self.vocab_sizes[0]} codes"
        if self.kind == "residual":
            return (
                f"{self.depth} residual levels of {self.vocab_sizes[0]} codes on a {h}x{w} map, all levels of a "
                "position predicted together from the earlier positions"
            )
        return (
            f"VQ-VAE-2 top codes ({self.vocab_sizes[0]}) on a {h}x{w} map, each with its 2x2 block of bottom "
            f"codes ({self.vocab_sizes[1]}), predicted together from the earlier positions"
        )

    def to_prior(self, indices: torch.Tensor) -> torch.Tensor:
        """Model indices -> ``[B, h, w, depth]`` long codes."""
        indices = indices.long()
        if self.kind == "single":
            return indices.unsqueeze(-1)
        if self.kind == "residual":
            return indices.permute(0, 2, 3, 1).contiguous()
        b, _, h, w = indices.shape
        top = indices[:, 0, ::2, ::2]
        bottom = indices[:, 1].reshape(b, h // 2, 2, w // 2, 2).permute(0, 1, 3, 2, 4).reshape(b, h // 2, w // 2, 4)
        return torch.cat([top.unsqueeze(-1), bottom], dim=-1)

    def to_model(self, codes: torch.Tensor) -> torch.Tensor:
        """``[B, h, w(, depth)]`` prior codes -> the indices ``model.decode_indices`` takes."""
        codes = codes.long()
        if codes.dim() == 3:
            codes = codes.unsqueeze(-1)
        if self.kind == "single":
            return codes[..., 0]
        if self.kind == "residual":
            return codes.permute(0, 3, 1, 2).contiguous()
        b, h2, w2, _ = codes.shape
        top = codes[..., 0].repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
        bottom = codes[..., 1:].reshape(b, h2, w2, 2, 2).permute(0, 1, 3, 2, 4).reshape(b, 2 * h2, 2 * w2)
        return torch.stack([top, bottom], dim=1)


# --- encoding ---------------------------------------------------------------------------------


@torch.no_grad()
def encode_dataset_tensors(model, dataset, batch_size: int = 64, device: torch.device | str = "cpu") -> torch.Tensor:
    """The model's indices of every item of ``dataset`` (item order), on the CPU. Used by ``train_prior``."""
    from prostate_vq.data import make_loader

    chunks = []
    for batch in make_loader(dataset, batch_size=batch_size):
        chunks.append(model.encode(model.prepare_input(batch).to(device)).cpu())
    if not chunks:
        raise UserInputError("no slices to encode")
    return torch.cat(chunks)


def model_from_payload(payload: dict, device: torch.device | str = "cpu", path: str | Path | None = None):
    """Rebuild a VQ-VAE from a checkpoint payload held in memory (a prior stores a copy of it)."""
    from prostate_vq.runtime.checkpoints import model_of

    return model_of(payload, path).to(device).eval()


def load_vqvae(checkpoint: str | Path, device: torch.device | str = "cpu"):
    """``(model, payload)`` of a VQ-VAE checkpoint; a prior checkpoint here gets a clear error."""
    from prostate_vq.runtime.checkpoints import load_checkpoint

    payload = load_checkpoint(checkpoint, kind="model")  # a prior checkpoint here gets its own one line
    return model_from_payload(payload, device, checkpoint), payload


def resolve_data_root(data: str | Path | None, payload: dict) -> Path:
    """``data`` if given, else the folder the checkpoint was trained on."""
    if data is not None:
        return Path(data)
    recorded = payload.get("data_root")
    if recorded and Path(recorded).is_dir():
        return Path(recorded)
    if recorded:
        raise UserInputError(f"the checkpoint's data folder {recorded} is gone; pass --data")
    from prostate_vq.data import default_data_root

    return default_data_root()


def encode_split(
    checkpoint: str | Path,
    data: str | Path | None = None,
    split: str = "train",
    device: str = "auto",
    batch_size: int = 64,
    max_slices: int | None = None,
) -> tuple:
    """``(model, dataset, indices [N, ...] numpy, meta)`` of one split: what ``encode_dataset`` and the entropy
    coder (``prior/compress.py``) write."""
    from prostate_vq.data import make_dataset
    from prostate_vq.runtime.device import resolve_device

    torch_device = resolve_device(device)
    model, payload = load_vqvae(checkpoint, torch_device)
    root = resolve_data_root(data, payload)
    spatial = tuple(int(s) for s in payload["spatial_size"])
    dataset = make_dataset(root, split, payload["task"], spatial_size=spatial, max_slices=max_slices)
    if len(dataset) == 0:
        raise UserInputError(f"no {split} slices to encode", root)
    indices = encode_dataset_tensors(model, dataset, batch_size, torch_device).numpy()
    meta = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "preset": payload.get("preset"),
        "task": payload["task"],
        "spatial_size": list(spatial),
        "split": split,
        "data_root": str(root),
        "num_codes": int(model.num_codes),
        "layout": CodeLayout.for_model(model, spatial).to_dict(),
        "codes_layout": "native indices of model.decode_indices",
    }
    return model, dataset, indices, meta


def slice_columns(records) -> dict:
    """The per-slice identity columns of a codes file (``files``, ``case``, ``week``, ``slice``)."""
    return {
        "files": np.array([r.image.name for r in records]),
        "case": np.array([r.case for r in records]),
        "week": np.array([r.week for r in records]),
        "slice": np.array([r.slice for r in records]),
    }


def write_codes(out: Path, indices: np.ndarray, columns: dict, meta: dict) -> Path:
    """Write a plain ``codes.npz`` atomically (the smallest integer type that holds the codes)."""
    dtype = np.int16 if int(meta["num_codes"]) <= np.iinfo(np.int16).max else np.int32
    with atomic_open(out, "wb") as handle:
        np.savez_compressed(handle, codes=indices.astype(dtype), **columns, meta=np.array(json.dumps(meta)))
    return out


def encode_dataset(
    checkpoint: str | Path,
    data: str | Path | None = None,
    split: str = "train",
    out: str | Path = "codes.npz",
    device: str = "auto",
    batch_size: int = 64,
    max_slices: int | None = None,
) -> Path:
    """Write ``codes.npz``: ``codes`` (the model's native index layout, the array ``decode_indices`` takes:
    ``[N, h, w]``; RQ ``[N, depth, h, w]``; VQ-VAE-2 ``[N, 2, h, w]``), ``files``, ``case``, ``week``,
    ``slice`` and ``meta`` (a JSON string: checkpoint, preset, task, spatial size, split, layout)."""
    out = Path(out)
    if out.suffix != ".npz":
        raise UserInputError("the output must be an .npz file", out)
    _, dataset, indices, meta = encode_split(checkpoint, data, split, device, batch_size, max_slices)
    return write_codes(out, indices, slice_columns(dataset.records), meta)


def read_codes(path: str | Path) -> tuple[np.ndarray, dict]:
    """``(codes, meta)`` of a ``codes.npz`` written by ``encode_dataset``."""
    with np.load(Path(path), allow_pickle=False) as data:
        if "codes" not in data.files and "streams" in data.files:
            raise UserInputError("these codes are entropy-coded: restore them with `prostate-vq decode`", path)
        return data["codes"].astype(np.int64), json.loads(str(data["meta"]))
