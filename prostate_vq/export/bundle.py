"""`--format monai-bundle`: the MONAI Bundle layout (configs/metadata.json, configs/inference.json,
models/model.ts, models/model.pt, docs/README.md) that `monai.bundle` loads and verifies.

`models/model.ts` is the whole autoencoder (input -> reconstruction; segmentation logits for the mask task),
saved with MONAI's `save_net_with_metadata` as `ckpt_export` does, so metadata.json travels inside it. The
encode/decode graphs, the safetensors weights and config.json sit beside it in models/.

MONAI's `verify_metadata` downloads its published schema from the URL in metadata.json; offline we check
against `bundle_schema.json` (the specification's mandatory keys) and run `verify_net_in_out`, which needs
no network.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from prostate_vq.data.layout import LABEL_NAMES
from prostate_vq.errors import UserInputError

from .graphs import Reconstruct, example_input, mismatch, trace

SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
JSONSCHEMA_MISSING = "bundle metadata not checked against the schema: needs the bundle extra (pip install 'prostate-vq[bundle]')"


def _tensor(fmt: str, channels: int, shape: list, value_range: list, names: dict) -> dict:
    return {
        "type": "image",
        "format": fmt,
        "modality": "MR",
        "num_channels": channels,
        "spatial_shape": shape,
        "dtype": "float32",
        "value_range": value_range,
        "is_patch_data": False,
        "channel_def": names,
    }


def metadata(payload: dict, config: dict) -> dict:
    import monai

    task = config["task"]
    step = config["divisible_by"]
    shape = [f"{step}*n", f"{step}*n"]  # any multiple of the downsampling (verify_net_in_out tries n=1...)
    labels = {str(i): name for i, name in enumerate(LABEL_NAMES)}
    image = _tensor("magnitude", 1, shape, [0, 1], {"0": "T2 MR slice scaled to [0, 1]"})
    mask = _tensor("labels", len(LABEL_NAMES), shape, [0, 1], labels)
    return {
        "schema": SCHEMA_URL,
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by prostate-vq {config['prostate_vq_version']}"},
        "monai_version": str(monai.__version__),
        "pytorch_version": str(torch.__version__).split("+")[0],
        "numpy_version": str(np.__version__),
        # the specification's optional_packages_version, under the name MONAI >= 1.4 reads (it renames the old one)
        "required_packages_version": {"prostate-vq": config["prostate_vq_version"]},
        "task": f"VQ-VAE tokenizer of 2D prostate MR slices ({task} task, {config['config']['quantizer']['kind']} codes)",
        "description": (
            f"Encodes a slice to a discrete code map {config['code_shape']} at {config['bits_per_pixel']:.4g} "
            "bits per pixel and decodes it; models/model.ts is encode then decode, models/encode.ts and "
            "models/decode.ts are the halves (see docs/README.md)."
        ),
        "authors": "prostate-vq user (fill in)",
        "copyright": "fill in: the model's owner",
        "data_source": "HipMRI 2D prostate MR slices (or the prostate-vq demo phantom)",
        "data_type": "nifti",
        "intended_use": "Research only; not for diagnosis or any clinical decision.",
        "references": ["van den Oord et al., Neural Discrete Representation Learning, NeurIPS 2017."],
        "network_data_format": {
            "inputs": {"image": mask if task == "mask" else image},
            "outputs": {"pred": mask if task == "mask" else image},
        },
    }


INFERENCE = {
    "bundle_root": ".",
    "device": "$torch.device('cpu')",
    "network_def": {"_target_": "torch.jit.load", "f": "$@bundle_root + '/models/model.ts'"},
    "network": "$@network_def.to(@device)",
}


def bundle_files(model, payload: dict, config: dict, files: dict[str, bytes], notes: list[str]) -> dict[str, bytes]:
    """The bundle's files from the pretrained ones (weights and graphs move under models/)."""
    from monai.data import save_net_with_metadata

    h, w = config["spatial_size"]
    module = Reconstruct(model).eval()
    inputs = [example_input(config["task"], (h, w), 2), example_input(config["task"], (2 * h, 2 * w), 1, seed=1)]
    meta = metadata(payload, config)
    traced = trace(module, inputs[0])
    with torch.no_grad():
        problem = next((p for p in (mismatch(module(v), traced(v)) for v in inputs) if p), None)
    if problem:
        raise UserInputError(
            f"{config['config']['quantizer']['kind']}: models/model.ts does not reproduce the model "
            f"({problem}); export it with --format pretrained"
        )
    stream = io.BytesIO()
    save_net_with_metadata(traced, stream, meta_values=meta, more_extra_files={"inference.json": json.dumps(INFERENCE).encode()})
    state = io.BytesIO()
    torch.save({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, state)  # weights_only-loadable
    out = {f"models/{name}": data for name, data in files.items()}
    out.update(
        {
            "models/model.ts": stream.getvalue(),
            "models/model.pt": state.getvalue(),
            "configs/metadata.json": (json.dumps(meta, indent=1) + "\n").encode(),
            "configs/inference.json": (json.dumps(INFERENCE, indent=1) + "\n").encode(),
        }
    )
    return out


def verify_bundle(folder: str | Path) -> list[str]:
    """monai.bundle's checks that run offline; returns the lines on what was not checked. A failure is one line."""
    from monai.bundle import verify_metadata, verify_net_in_out

    folder = Path(folder)
    meta, config = folder / "configs" / "metadata.json", folder / "configs" / "inference.json"
    notes = []
    logging.disable(logging.INFO)  # monai.bundle logs every argument at INFO through its own handler
    try:
        verify_net_in_out(
            net_id="network_def", meta_file=str(meta), config_file=str(config), device="cpu", bundle_root=str(folder), n=1
        )
        try:
            import jsonschema  # noqa: F401
        except ImportError:
            notes.append(JSONSCHEMA_MISSING)
        else:
            with (
                resources.as_file(resources.files(__package__).joinpath("bundle_schema.json")) as schema,
                warnings.catch_warnings(),
            ):
                warnings.simplefilter("ignore")  # "no hash value provided": the schema is our own packaged file
                verify_metadata(meta_file=str(meta), filepath=str(schema))
    except (ValueError, KeyError, RuntimeError) as error:
        raise UserInputError(f"monai.bundle does not verify it ({str(error).splitlines()[0][:300]})", folder) from None
    finally:
        logging.disable(logging.NOTSET)
    return notes
