"""torchinfo summary of a preset: layers, output shapes, parameters and mult-adds."""

from __future__ import annotations

import torch
from torchinfo import summary

from prostate_vq.errors import UserInputError
from prostate_vq.schema import DEFAULT_SPATIAL_SIZE

from .build import build_model
from .presets import apply_overrides, get_preset
from .vqvae import NUM_CLASSES, TASKS


def network_summary(model: torch.nn.Module, example: torch.Tensor) -> str:
    """torchinfo table (layers, shapes, parameters, mult-adds) of a model on `example`; a plain module listing
    with parameter counts if torchinfo cannot trace it (a summary must never stop a run or a report)."""
    try:
        # eval mode: a train-mode pass would k-means-initialise or update the codebook from one slice.
        stats = summary(
            model,
            input_data=[example],
            verbose=0,
            depth=4,
            device=example.device,
            mode="eval",
            col_names=("output_size", "num_params", "mult_adds"),
        )
        return str(stats) + "\n"
    except Exception as error:
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return (
            f"{model}\n\nTotal params: {total:,}\nTrainable params: {trainable:,}\n"
            f"Input shape: {list(example.shape)}\n(torchinfo could not trace this model: "
            f"{str(error).splitlines()[0][:200]})\n"
        )


def model_summary(
    preset: str, spatial_size: tuple[int, int] = DEFAULT_SPATIAL_SIZE, task: str = "image", overrides: list[str] | None = None
) -> str:
    """The summary text for `preset` on a one-slice input of `spatial_size`, plus its code grid."""
    if task not in TASKS:
        raise UserInputError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    cfg = apply_overrides(get_preset(preset), overrides)
    model = build_model(cfg, task).eval()
    h, w = (int(s) for s in spatial_size)
    codes = model.code_shape((h, w))
    channels = NUM_CLASSES if task == "mask" else 1
    stats = network_summary(model, torch.zeros(1, channels, h, w))
    header = (
        f"preset {preset} ({cfg.get('description', '')})\n"
        f"task {task}, input [1, {channels}, {h}, {w}], quantizer {cfg['quantizer']['kind']}, "
        f"code map {list(codes)}, {model.num_codes} codes"
    )
    return f"{header}\n{stats}".rstrip("\n")
