"""torchinfo summary of a preset: layers, output shapes, parameters and mult-adds."""

from __future__ import annotations

import torch
from torchinfo import summary

from prostate_vq.errors import UserInputError

from .presets import apply_overrides, get_preset
from .vqvae import NUM_CLASSES, TASKS, build_model


def model_summary(preset: str, spatial_size: tuple[int, int] = (256, 128), task: str = "image",
                  overrides: list[str] | None = None) -> str:
    """The summary text for `preset` on a one-slice input of `spatial_size`, plus its code grid."""
    if task not in TASKS:
        raise UserInputError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    cfg = apply_overrides(get_preset(preset), overrides)
    model = build_model(cfg, task).eval()
    h, w = (int(s) for s in spatial_size)
    codes = model.code_shape((h, w))
    channels = NUM_CLASSES if task == "mask" else 1
    stats = summary(model, input_size=(1, channels, h, w), depth=3, verbose=0,
                    col_names=("output_size", "num_params", "mult_adds"), device=torch.device("cpu"))
    header = (f"preset {preset} ({cfg.get('description', '')})\n"
              f"task {task}, input [1, {channels}, {h}, {w}], quantizer {cfg['quantizer']['kind']}, "
              f"code map {list(codes)}, {model.num_codes} codes")
    return f"{header}\n{stats}"
