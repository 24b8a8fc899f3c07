"""Evaluate a checkpoint on one split: ``metrics.json``, ``per_slice.csv`` and figures.

Everything the evaluation needs (task, spatial size, intensity scaling, architecture) comes from the
checkpoint, so a checkpoint and a data folder are enough to reproduce the numbers.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import numpy as np
import torch

from prostate_vq.errors import DataError, UserInputError
from prostate_vq.evaluation.conventions import (
    DICE_CONVENTIONS,
    FOREGROUND_THRESHOLD,
    PROSTATE,
    class_means,
    dice_case3d,
    dice_monai,
    finite_mean,
    foreground_mean,
    overlap_counts,
    per_patient,
    ssim_in_region,
)
from prostate_vq.evaluation.metrics import (
    LABEL_NAMES,
    SSIM_THRESHOLD,
    codebook_metrics,
    dice_per_slice,
    reconstruction_per_slice,
    summarize_dice,
    summarize_reconstruction,
)
from prostate_vq.evaluation.results import EvaluationResult
from prostate_vq.files import atomic_open, ensure_dir, folder_lock, remove_stale_temps, staged_folder
from prostate_vq.models.rate import JointCodes, level_health

GRID_SLICES = 6
BEST_WORST = 4


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _predict(model, batch: dict, device: torch.device):
    """Model output for a dataset batch: (image, recon in [0,1] or None, label or None, pred labels or None, indices)."""
    batch = _to_device(batch, device)
    output = model(model.prepare_input(batch))
    recon = None if output.recon is None else output.recon.float().clamp(0, 1)
    pred = None if output.seg_logits is None else output.seg_logits.argmax(dim=1, keepdim=True)
    return batch["image"], recon, batch.get("label"), pred, output.indices


def _make_dataset(root: Path, split: str, payload: dict, max_slices: int | None):
    from prostate_vq.data import make_dataset

    # The run's own intensity scaling, so evaluation sees the slices exactly as training did.
    return make_dataset(
        root,
        split,
        payload["task"],
        spatial_size=tuple(payload["spatial_size"]),
        augment=False,
        max_slices=max_slices,
        intensity=payload.get("intensity"),
    )


def _records(dataset, n: int) -> list[dict]:
    records = getattr(dataset, "records", None)
    if records is None or len(records) != n:
        return [{"file": "", "case": "", "week": "", "slice": i} for i in range(n)]
    return [{"file": r.image.name, "case": r.case, "week": r.week, "slice": r.slice} for r in records]


@torch.inference_mode()
def _run(
    model, dataset, device: torch.device, batch_size: int, joint: JointCodes, keep_images: bool = False, lpips=None, fid_net=None
) -> dict:
    from prostate_vq.data import make_loader
    from prostate_vq.evaluation.perceptual import features

    loader = make_loader(dataset, batch_size=batch_size, shuffle=False, pin_memory=device.type == "cuda")
    images: list = []
    values: dict[str, list] = {
        "ssim": [],
        "psnr": [],
        "mse": [],
        "mae": [],
        "ms_ssim": [],
        "dice": [],
        "ssim_region": [],
        "dice_monai": [],
        "overlap": [],
        "lpips": [],
        "fid_recon": [],
        "fid_image": [],
    }
    counts = torch.zeros(model.num_codes, dtype=torch.long, device=device)
    body = False
    for batch in loader:
        image, recon, label, pred, indices = _predict(model, batch, device)
        if keep_images:  # the codec baselines code the same slices
            images.extend(image[:, 0].float().cpu().numpy())
        counts += model.code_counts(indices).to(device=device, dtype=torch.long)
        joint.add(indices)
        if recon is not None:
            for key, value in reconstruction_per_slice(recon, image).items():
                values[key].append(value)
            values["ssim_region"].append(ssim_in_region(recon, image, label))
            body = label is not None
            if lpips is not None:
                values["lpips"].append(lpips.to(device)(recon, image).float().cpu())
            if fid_net is not None:
                values["fid_recon"].append(features(fid_net.to(device), recon))
                values["fid_image"].append(features(fid_net.to(device), image))
        if pred is not None and label is not None:
            values["dice"].append(dice_per_slice(pred, label))
            values["dice_monai"].append(dice_monai(pred, label))
            values["overlap"].append(overlap_counts(pred, label))
    return {
        "counts": counts.cpu(),
        "images": images,
        "region": "body (label > 0)"
        if body
        else f"foreground (reference > {FOREGROUND_THRESHOLD}, dilated by half the SSIM window)",
        **{k: torch.cat(v).numpy() if v else None for k, v in values.items()},
    }


def _write_per_slice(path: Path, rows: list[dict], values: dict) -> None:
    columns = ["file", "case", "week", "slice"]
    if values["ssim"] is not None:
        columns += ["ssim", "psnr", "mse", "mae", "ms_ssim"]
    if values["lpips"] is not None:
        columns.append("lpips")
    if values["dice"] is not None:
        columns += [f"dice_{name}" for name in LABEL_NAMES]
    baselines = values.get("codec_values") or {}
    for codec in baselines:
        columns += [f"{codec}_ssim", f"{codec}_psnr", f"{codec}_bpp"]
    with atomic_open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        for i, row in enumerate(rows):
            cells = [row["file"], row["case"], row["week"], row["slice"]]
            if values["ssim"] is not None:
                cells += [f"{values[k][i]:.6g}" for k in ("ssim", "psnr", "mse", "mae")]
                cells.append("" if values["ms_ssim"] is None else f"{values['ms_ssim'][i]:.6g}")
            if values["lpips"] is not None:
                cells.append(f"{values['lpips'][i]:.6g}")
            if values["dice"] is not None:
                cells += ["" if math.isnan(d) else f"{d:.6g}" for d in values["dice"][i]]
            for codec in baselines.values():
                cells += ["" if math.isnan(codec[k][i]) else f"{codec[k][i]:.6g}" for k in ("ssim", "psnr", "bpp")]
            writer.writerow(cells)


def _spread(candidates: np.ndarray, k: int) -> list[int]:
    """``k`` indices spread evenly over ``candidates`` (deterministic, no duplicates)."""
    if candidates.size <= k:
        return [int(i) for i in candidates]
    picks = np.linspace(0, candidates.size - 1, k).round().astype(int)
    return [int(candidates[i]) for i in picks]


def _foreground_dice(dice: np.ndarray) -> np.ndarray:
    """Per-slice mean Dice over the scored foreground classes (NaN when none is scored)."""
    scored = ~np.isnan(dice[:, 1:])
    total = np.where(scored, dice[:, 1:], 0.0).sum(axis=1)
    count = scored.sum(axis=1)
    return np.divide(total, count, out=np.full(len(dice), np.nan), where=count > 0)


@torch.inference_mode()
def _figures(model, dataset, device, values: dict, rows: list[dict], out: Path) -> dict[str, str]:
    from prostate_vq.evaluation import figures

    folder = out / "figures"
    written: dict[str, str] = {}

    def fetch(indices):
        image, recon, label, pred, _ = _predict(model, dataset.batch(indices), device)
        cpu = lambda t: None if t is None else t.float().cpu().numpy()  # noqa: E731
        return cpu(image), cpu(recon), cpu(label), cpu(pred)

    def title(i, score=None, name="SSIM"):
        r = rows[i]
        base = f"{r['case']} w{r['week']} s{r['slice']}" if r["case"] != "" else f"slice {i}"
        return base if score is None else f"{base}\n{name} {score:.3f}"

    n = len(dataset)
    ssim, dice = values["ssim"], values["dice"]
    grid = _spread(np.arange(n), GRID_SLICES)
    if ssim is not None:
        image, recon, _, _ = fetch(grid)
        figures.reconstruction_grid(image, recon, folder / "reconstructions.png", titles=[title(i, ssim[i]) for i in grid])
        written["reconstructions"] = "figures/reconstructions.png"
        order = np.argsort(ssim, kind="stable")
        for name, ranked in (("best", order[::-1][:BEST_WORST]), ("worst", order[:BEST_WORST])):
            picks = [int(i) for i in ranked]
            image, recon, _, _ = fetch(picks)
            figures.reconstruction_grid(
                image,
                recon,
                folder / f"{name}_slices.png",
                titles=[title(i, ssim[i]) for i in picks],
                suptitle=f"{name} {len(picks)} slices by SSIM",
            )
            written[f"{name}_slices"] = f"figures/{name}_slices.png"
        figures.ssim_histogram(ssim, folder / "ssim_histogram.png", threshold=SSIM_THRESHOLD)
        written["ssim_histogram"] = "figures/ssim_histogram.png"
    if dice is not None:
        foreground = _foreground_dice(dice)
        with_prostate = np.flatnonzero(~np.isnan(dice[:, -1]))
        overlays = _spread(with_prostate if with_prostate.size else np.arange(n), GRID_SLICES)
        image, _, label, pred = fetch(overlays)
        figures.segmentation_overlay(
            image,
            label,
            pred,
            folder / "segmentation_overlays.png",
            titles=[title(i, foreground[i], "Dice") for i in overlays],
            label_names=LABEL_NAMES,
        )
        written["segmentation_overlays"] = "figures/segmentation_overlays.png"
        if ssim is None:  # mask task: best/worst by foreground Dice instead of SSIM
            order = np.argsort(np.nan_to_num(foreground, nan=1.0), kind="stable")
            for name, ranked in (("best", order[::-1][:BEST_WORST]), ("worst", order[:BEST_WORST])):
                chosen = [int(i) for i in ranked]
                image, _, label, pred = fetch(chosen)
                figures.segmentation_overlay(
                    image,
                    label,
                    pred,
                    folder / f"{name}_slices.png",
                    titles=[title(i, foreground[i], "Dice") for i in chosen],
                    suptitle=f"{name} {len(chosen)} slices by foreground Dice",
                    label_names=LABEL_NAMES,
                )
                written[f"{name}_slices"] = f"figures/{name}_slices.png"
    figures.codebook_usage(values["counts"].numpy(), folder / "codebook_usage.png")
    written["codebook_usage"] = "figures/codebook_usage.png"
    return written


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path | None = None,
    split: str = "test",
    out: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 32,
    max_slices: int | None = None,
    figures: bool = True,
    codecs=None,
    codec_bits_per_pixel: float | None = None,
    lpips_weights=None,
    fid_weights=None,
) -> EvaluationResult:
    """Score a checkpoint on ``split`` of ``data`` (default: the demo phantom) and write the results to ``out``.
    ``codecs`` (e.g. ``["webp", "avif", "jpeg2000", "jpeg"]``) codes the same slices at the model's rate
    (evaluation.codecs) and scores them alike: metrics.json's ``baselines``. ``codec_bits_per_pixel`` gives
    the codecs another budget: the rate the codes really take entropy-coded (`encode --compress`).
    ``lpips_weights`` and ``fid_weights`` (files on disk, evaluation.perceptual) add LPIPS and rFID."""
    from prostate_vq.evaluation.codecs import parse_codecs
    from prostate_vq.evaluation.perceptual import load_feature_net, load_lpips
    from prostate_vq.runtime.checkpoints import load_model
    from prostate_vq.runtime.device import resolve_device

    if out is None:
        raise UserInputError("an output folder is required (--out)")
    if batch_size < 1:
        raise UserInputError(f"--batch-size must be at least 1, got {batch_size}")
    if max_slices is not None and max_slices < 1:
        raise UserInputError(f"--max-slices must be at least 1, got {max_slices}")
    checkpoint, out = Path(checkpoint), Path(out)
    codecs = parse_codecs(codecs)  # a missing codec library is one line before anything runs
    if codec_bits_per_pixel is not None and not (math.isfinite(codec_bits_per_pixel) and codec_bits_per_pixel > 0):
        raise UserInputError(f"--codec-bpp must be a positive number of bits per pixel, got {codec_bits_per_pixel}")
    if codec_bits_per_pixel is not None and not codecs:
        raise UserInputError("--codec-bpp sets the codecs' budget: name them with --codecs")
    lpips = None if lpips_weights is None else load_lpips(lpips_weights)  # so is a missing weights file
    fid_net = None if fid_weights is None else load_feature_net(fid_weights)
    torch_device = resolve_device(device)
    model, payload = load_model(checkpoint, torch_device)
    if data is None:
        from prostate_vq.data import default_data_root

        data = default_data_root()
    task = payload["task"]
    dataset = _make_dataset(Path(data), split, payload, max_slices)
    if len(dataset) == 0:
        raise DataError(f"the {split} split has no slices", data)
    if task in ("mask", "joint") and "label" not in dataset[0]:
        raise DataError(f"the {task} task needs masks (keras_slices_seg_{split})", data)

    start = time.perf_counter()
    spatial = [int(s) for s in payload["spatial_size"]]
    levels = model.code_levels(spatial)
    joint = JointCodes([level.codebook_size for level in levels])
    values = _run(model, dataset, torch_device, batch_size, joint, keep_images=bool(codecs), lpips=lpips, fid_net=fid_net)
    values["perceptual"] = _perceptual(values, lpips_weights, fid_weights)
    values["levels"] = level_health(values["counts"], levels, spatial)
    values["joint"] = joint.to_dict()
    rows = _records(dataset, len(dataset))
    if codecs and values["ssim"] is not None:
        from prostate_vq.evaluation.baselines import codec_baselines

        values["codec_values"], values["baselines"] = codec_baselines(
            codecs, values, rows, codec_bits_per_pixel or sum(level["bits_per_pixel"] for level in values["levels"])
        )
    # Everything is written into a folder beside the results and moved in only when complete, metrics.json
    # last: a failure midway (disk full) leaves the previous metrics.json with its previous per_slice.csv.
    # Under the folder's lock, the staging folder of an evaluation killed earlier (kill -9) is removed first.
    with folder_lock(ensure_dir(out)):
        remove_stale_temps(out)
        with staged_folder(out, last="metrics.json") as stage:
            _write_per_slice(stage / "per_slice.csv", rows, values)
            written = _figures(model, dataset, torch_device, values, rows, stage) if figures else {}
            result = _result(checkpoint, payload, split, data, rows, values, written, out, torch_device, start)
            result.write_json(stage / "metrics.json")
    return result


def _result(
    checkpoint: Path,
    payload: dict,
    split: str,
    data,
    rows: list[dict],
    values: dict,
    written: dict,
    out: Path,
    torch_device,
    start: float,
) -> EvaluationResult:
    return EvaluationResult(
        checkpoint=str(checkpoint.resolve()),
        preset=str(payload.get("preset", "?")),
        task=payload["task"],
        split=split,
        data_root=str(Path(data).resolve()),
        spatial_size=[int(s) for s in payload["spatial_size"]],
        n_slices=len(rows),
        codebook=codebook_metrics(values["counts"]),
        reconstruction=None if values["ssim"] is None else summarize_reconstruction(values),
        segmentation=None if values["dice"] is None else summarize_dice(values["dice"]),
        figures=written,
        out=str(out),
        device=str(torch_device),
        seconds=time.perf_counter() - start,
        epoch=payload.get("epoch"),
        seed=payload.get("seed"),
        versions=dict(payload.get("versions") or {}),
        levels=values["levels"],
        conventions=_conventions(values, rows),
        joint=values["joint"],
        budget=_budget(checkpoint, payload),
        baselines=values.get("baselines"),
        perceptual=values["perceptual"],
    )


def _perceptual(values: dict, lpips_weights, fid_weights) -> dict:
    """metrics.json's LPIPS and rFID keys (absent without their weights) with the weights that scored them."""
    from prostate_vq.evaluation.perceptual import frechet_distance, weights_id

    out: dict = {}
    if values["lpips"] is not None:
        out.update(
            lpips_mean=float(values["lpips"].mean()),
            lpips_std=float(values["lpips"].std()),
            lpips_weights=weights_id(Path(lpips_weights)),
        )
    if values["fid_recon"] is not None:
        out.update(
            fid=frechet_distance(torch.as_tensor(values["fid_recon"]), torch.as_tensor(values["fid_image"])),
            fid_n=len(values["fid_recon"]),
            fid_weights=weights_id(Path(fid_weights)),
            fid_reference="the same split's original slices (reconstruction FID)",
        )
    return out


def _budget(checkpoint: Path, payload: dict) -> dict:
    """Optimizer steps and epochs: of the evaluated checkpoint, and of the whole run it was selected from (last.pt
    beside it; a ReFiT run adds its base run's steps), so tables compare variants at equal steps."""
    from prostate_vq.runtime.checkpoints import load_checkpoint

    metrics = payload.get("metrics") or {}
    out = {
        "steps": metrics.get("step"),
        "epochs": payload.get("epoch"),
        "run_steps": None,
        "run_epochs": None,
        "stop_reason": None,
        "schedule": payload.get("schedule"),
    }
    last = checkpoint.parent / "last.pt"
    if last.is_file():
        try:
            run = load_checkpoint(last, kind="resume")
        except Exception:  # the run's totals are extra information: the evaluation stands without them
            return out
        history = run.get("history") or []
        out.update(
            run_steps=(history[-1].get("step") if history else None),
            run_epochs=run.get("epoch"),
            stop_reason=run.get("stop_reason"),
        )
        base = (payload.get("refit") or {}).get("base_checkpoint")
        base_last = Path(base).parent / "last.pt" if base else None
        if base_last is not None and base_last.is_file() and out["run_steps"] is not None:
            base_history = load_checkpoint(base_last, kind="resume").get("history") or []
            if base_history:
                out["base_steps"] = base_history[-1].get("step")
                out["run_steps"] += int(base_history[-1].get("step") or 0)
                out["run_epochs"] = int(out["run_epochs"] or 0) + len(base_history)
    return out


def _conventions(values: dict, rows: list[dict]) -> dict:
    """metrics.json keys of the standard conventions (see evaluation.conventions), beside the per-slice ones."""
    out: dict = {}
    if values["ssim_region"] is not None:
        out["ssim_region_mean"] = finite_mean(values["ssim_region"])
        out["ssim_region"] = values["region"]
    volume_dice = None
    if values["dice"] is not None:
        monai = class_means(values["dice_monai"])
        volume_dice = dice_case3d(values["overlap"], [(r["case"], r["week"]) for r in rows])
        case3d = class_means(volume_dice[0])
        per_slice = class_means(values["dice"])
        out.update(
            {
                "dice_conventions": dict(DICE_CONVENTIONS),
                "dice_per_class_monai": monai,
                "dice_mean_monai": foreground_mean(monai),
                "dice_per_class_case3d": case3d,
                "dice_mean_case3d": foreground_mean(case3d),
                "dice_prostate_per_slice": per_slice["prostate"],
                "dice_prostate_monai": monai["prostate"],
                "dice_prostate_case3d": case3d["prostate"],
            }
        )
    per_slice_metrics = {
        "ssim": values["ssim"],
        "ssim_region": values["ssim_region"],
        "ms_ssim": values["ms_ssim"],
        "dice_prostate_monai": None if values["dice"] is None else values["dice_monai"][:, PROSTATE],
    }
    out["per_patient"] = per_patient([str(r["case"]) for r in rows], per_slice_metrics, volume_dice)
    return out
