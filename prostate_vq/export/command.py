"""`prostate-vq export`: a checkpoint as a folder others can use without prostate-vq's training code.

Every graph is checked against the checkpoint's model before it is written (indices exactly, images within
graphs.IMAGE_ATOL, at the checkpoint's slice size and at twice it); a graph that cannot be made or does not
reproduce the model is left out with one line saying why. The folder is written beside `out` and renamed
into place, so `out` never holds half an export.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from prostate_vq import __version__
from prostate_vq.errors import UserInputError
from prostate_vq.files import TEMP_TAG, ensure_dir, plain, strict_json, write_error

from . import onnx_graphs
from .card import model_card
from .graphs import DecodeFromIndices, EncodeToIndices, example_input, mismatch, quantizer_kind, trace
from .pretrained import CONFIG, FORMAT, FORMAT_VERSION, WEIGHTS, weights_bytes

FORMATS = ("pretrained", "monai-bundle")


def _read_metrics(path: Path | None, checkpoint: Path) -> tuple[dict | None, Path | None]:
    """The evaluation to put in the card: `path`, else a sweep job's eval/metrics.json beside the run."""
    if path is None:
        guess = checkpoint.parent.parent / "eval" / "metrics.json"
        if not guess.is_file():
            return None, None
        path = guess
    if not path.is_file():
        raise UserInputError("metrics file not found (--metrics takes the metrics.json of prostate-vq evaluate)", path)
    try:
        return json.loads(path.read_text(encoding="utf-8")), path
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserInputError(f"not a readable metrics.json ({error})", path) from None


def _run_budget(checkpoint: Path, metrics: dict | None) -> dict:
    """Steps and epochs of the whole run for the card: the evaluation's, else the run's last.pt beside it."""
    from prostate_vq.runtime.checkpoints import load_checkpoint

    keys = ("steps", "epochs", "run_steps", "run_epochs", "stop_reason")
    budget = {k: (metrics or {}).get(k) for k in keys}
    last = checkpoint.parent / "last.pt"
    if budget["run_steps"] is None and last.is_file():
        try:
            run = load_checkpoint(last, kind="resume")
        except UserInputError:  # the budget is extra information: the export stands without it
            return budget
        history = run.get("history") or []
        budget.update(
            run_steps=history[-1].get("step") if history else None,
            run_epochs=run.get("epoch"),
            stop_reason=run.get("stop_reason"),
        )
    return budget


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserInputError("already exists and is not an empty folder; choose a new --out (nothing was written)", out)


def _graphs(model, task: str, spatial_size, kind: str) -> tuple[dict[str, bytes], list[str]]:
    """encode.ts / decode.ts (and .onnx where possible) with the lines saying what was left out and why."""
    h, w = spatial_size
    inputs = [example_input(task, (h, w), batch=2), example_input(task, (2 * h, 2 * w), batch=1, seed=1)]
    encode, decode = EncodeToIndices(model).eval(), DecodeFromIndices(model).eval()
    with torch.no_grad():
        codes = [encode(x) for x in inputs]
    out: dict[str, bytes] = {}
    notes: list[str] = []
    outputs = {"image": ["recon"], "mask": ["seg_logits"], "joint": ["recon", "seg_logits"]}[task]
    for name, module, examples, in_name, out_names, dynamic in (
        ("encode", encode, inputs, "image", ["indices"], {0: "batch", 2: "height", 3: "width"}),
        ("decode", decode, codes, "indices", outputs, {0: "batch", codes[0].ndim - 2: "h", codes[0].ndim - 1: "w"}),
    ):
        try:
            data = io.BytesIO()
            torch.jit.save(trace(module, examples[0]), data)
            loaded = torch.jit.load(io.BytesIO(data.getvalue()))
            with torch.no_grad():
                problem = next((p for p in (mismatch(module(v), loaded(v)) for v in examples) if p), None)
        except Exception as error:  # the tracer's failures are RuntimeErrors of many kinds
            problem = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        if problem:
            notes.append(f"{kind}: {name}.ts not written: TorchScript does not reproduce the model ({problem})")
        else:
            out[f"{name}.ts"] = data.getvalue()
        reason = onnx_graphs.skip_reason(kind)
        if reason:
            if reason not in notes:
                notes.append(reason)
            continue
        try:
            graph = onnx_graphs.onnx_bytes(module, examples[0], in_name, out_names, dynamic)
            problem = onnx_graphs.check_onnx(graph, in_name, module, examples)
        except Exception as error:  # torch.onnx raises its own errors for unsupported operators
            problem = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        if problem:
            notes.append(f"{kind}: {name}.onnx not written: ONNX does not reproduce the model ({problem})")
        else:
            out[f"{name}.onnx"] = graph
    return out, notes


def _config_json(model, payload: dict, checkpoint: Path, digest: str) -> dict:
    size = [int(s) for s in payload["spatial_size"]]
    task = payload["task"]
    step = model.downsample * getattr(model, "extra_downsample", 1)
    return plain(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "prostate_vq_version": __version__,
            "torch_version": str(torch.__version__),
            "weights": WEIGHTS,
            "task": task,
            "spatial_size": size,
            "divisible_by": step,
            "preset": payload.get("preset"),
            "config": {k: payload["config"][k] for k in ("model", "quantizer", "training", "refit") if payload["config"].get(k)},
            "intensity": payload.get("intensity"),
            "input": (
                "one-hot label map [B, 6, H, W] (labels 0..5)"
                if task == "mask"
                else "image [B, 1, H, W] scaled to [0, 1] by the intensity scaling below"
            ),
            "outputs": {
                "image": "recon [B, 1, H, W] (unbounded: clamp to [0, 1])",
                "mask": "seg_logits [B, 6, H, W]",
                "joint": "recon [B, 1, H, W] and seg_logits [B, 6, H, W]",
            }[task],
            "code_shape": list(model.code_shape(size)),
            "num_codes": int(model.num_codes),
            "code_levels": [
                {"name": lv.name, "grid": list(lv.grid), "codebook_size": int(lv.codebook_size)} for lv in model.code_levels(size)
            ],
            "bits_per_pixel": float(model.bits_per_pixel(size)),
            "source_checkpoint": {
                "name": checkpoint.name,
                "sha256": digest,
                "epoch": payload.get("epoch"),
                "step": (payload.get("metrics") or {}).get("step"),
            },
            "seed": payload.get("seed"),
            "versions": payload.get("versions"),
        }
    )


def export_checkpoint(
    checkpoint: str | Path, out: str | Path, fmt: str = "pretrained", metrics: str | Path | None = None
) -> tuple[Path, list[str]]:
    """Write the export of `checkpoint` into the new folder `out`; returns (out, lines on what was left out)."""
    from prostate_vq.runtime.checkpoints import load_model

    from .bundle import bundle_files

    if fmt not in FORMATS:
        raise UserInputError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    checkpoint, out = Path(checkpoint), Path(out)
    _check_out(out)
    model, payload = load_model(checkpoint, "cpu")
    metrics_json, metrics_path = _read_metrics(Path(metrics) if metrics else None, checkpoint)
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    config = _config_json(model, payload, checkpoint, digest)
    kind = quantizer_kind(payload["config"])
    graphs, notes = _graphs(model, payload["task"], config["spatial_size"], kind)
    config["files"] = sorted(graphs)
    config["not_exported"] = notes
    files: dict[str, bytes] = {WEIGHTS: weights_bytes(model), **graphs}
    if fmt == "monai-bundle":
        files = bundle_files(model, payload, config, files, notes)
    names = sorted(files) + [CONFIG if fmt == "pretrained" else "models/config.json", "README.md"]
    card = model_card(payload, config, metrics_json, metrics_path, names, notes, _run_budget(checkpoint, metrics_json))
    config_text = json.dumps(strict_json(config), indent=1, allow_nan=False) + "\n"
    if fmt == "pretrained":
        files.update({CONFIG: config_text.encode(), "README.md": card.encode()})
    else:
        files.update({"models/config.json": config_text.encode(), "docs/README.md": card.encode()})
    if fmt == "monai-bundle":
        from .bundle import verify_bundle

        _write_folder(out, files, check=lambda stage: notes.extend(verify_bundle(stage)))
    else:
        _write_folder(out, files)
    return out, notes


def _write_folder(out: Path, files: dict[str, bytes], check=None) -> None:
    """All files into a temporary folder beside `out`, `check(folder)` on it, then one rename: `out` appears
    complete and checked, or not at all."""
    parent = ensure_dir(out.parent if str(out.parent) else Path("."))
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}{TEMP_TAG}", suffix=".tmp", dir=parent))
    except OSError as error:
        raise (write_error(error, out) or error) from None
    try:
        for name, data in files.items():
            path = stage / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        if check is not None:
            check(stage)
        os.chmod(stage, 0o777 & ~_umask())
        if out.is_dir():
            out.rmdir()  # empty (checked first): a rename cannot replace a folder on every platform
        os.replace(stage, out)
    except BaseException as error:
        shutil.rmtree(stage, ignore_errors=True)
        mapped = write_error(error, out)
        if mapped is not None and mapped is not error:
            raise mapped from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


__all__ = ["FORMATS", "export_checkpoint"]
