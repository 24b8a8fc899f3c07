"""`prostate-vq sample`: draw code maps from a trained prior, decode them with the VQ-VAE stored in the
prior checkpoint, and write them out with a memorisation check.

Output folder:

* ``slices/case_sample_week_0_slice_<k>.nii.gz``: the decoded image of sample ``k`` (float32, the
  model's [0, 1] intensity scale, identity affine), in HipMRI naming; for the joint task also
  ``slices/seg_sample_week_0_slice_<k>.nii.gz`` (the predicted 6-class segmentation, uint8). The mask
  task writes only the ``seg_`` files.
* ``samples_grid.png``: all samples (at most 64) in one figure, segmentations overlaid.
* ``codes.npz``: the sampled codes in the model's native index layout (see ``prior/codes.py``).
* ``samples.json``: settings, per-sample checks (``prior/checks.py``), their summary, and the same
  checks for up to ``n`` validation slices as the reference a real unseen slice reaches;
  ``reference.samples_closer_than_any_validation_slice`` is the share of samples more similar to a
  training slice than every validation slice is (a memorisation flag: near 0 is healthy); ``quality``
  (image and joint tasks): diversity as mean pairwise MS-SSIM among the samples and among as many
  validation slices, MONAI's MMD against them, and FID with ``--fid-weights`` (evaluation.sample_quality).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prostate_vq.data.nifti import save_slice
from prostate_vq.errors import UserInputError
from prostate_vq.evaluation.figures import sample_grid
from prostate_vq.files import atomic_open, ensure_dir, staged_folder, write_json_atomic
from prostate_vq.prior.checks import sample_checks
from prostate_vq.prior.codes import CodeLayout, model_from_payload, resolve_data_root
from prostate_vq.prior.networks import build_prior

log = logging.getLogger("prostate_vq.prior")

SAMPLE_NAME = "case_sample_week_0_slice_{k}.nii.gz"
SEG_NAME = "seg_sample_week_0_slice_{k}.nii.gz"


def load_prior(path: str | Path, device: torch.device | str = "cpu"):
    """``(prior, vqvae, layout, payload)`` from a prior checkpoint, both networks in eval mode."""
    from prostate_vq.runtime.checkpoints import load_checkpoint, load_weights

    payload = load_checkpoint(path, kind="prior")  # a VQ-VAE checkpoint here is refused in one line
    prior = build_prior(payload["config"])
    load_weights(prior, payload["model_state"], path, what="prior checkpoint")
    vqvae = model_from_payload(payload["vqvae"], device, path)
    return prior.to(device).eval(), vqvae, CodeLayout.from_dict(payload["layout"]), payload


@torch.no_grad()
def decode_codes(vqvae, layout: CodeLayout, codes: torch.Tensor, batch_size: int = 32):
    """Prior codes -> ``(images [N, 1, H, W] in [0, 1] or None, labels [N, 1, H, W] uint8 or None)``."""
    images, labels = [], []
    for start in range(0, len(codes), batch_size):
        output = vqvae.decode_indices(layout.to_model(codes[start : start + batch_size]))
        if output.recon is not None:
            images.append(output.recon.float().clamp(0, 1).cpu())
        if output.seg_logits is not None:
            labels.append(output.seg_logits.argmax(1, keepdim=True).to(torch.uint8).cpu())
    return (torch.cat(images) if images else None), (torch.cat(labels) if labels else None)


def _stacked(dataset, key: str) -> torch.Tensor:
    """All slices of a dataset as one tensor; the dataset's compact cache (float16/uint8) when it has one."""
    cached = getattr(dataset, "images" if key == "image" else "labels", None)
    return cached if cached is not None else dataset.batch(range(len(dataset)))[key]


def _summary(values: torch.Tensor) -> dict:
    v = values.double()
    return {"mean": float(v.mean()), "std": float(v.std()) if len(v) > 1 else 0.0, "min": float(v.min()), "max": float(v.max())}


def memorisation_check(
    generated: torch.Tensor,
    root: Path,
    task: str,
    spatial: tuple[int, int],
    max_slices: int | None,
    n_reference: int,
    candidates: int = 16,
):
    """Compare generated slices with the training slices the prior saw, and (as the reference a real unseen
    slice reaches) up to ``n_reference`` validation slices with the same training slices.
    Returns ``(per-sample dicts, summary, reference or None, number of training slices)``."""
    from prostate_vq.data import make_dataset

    train_ds = make_dataset(root, "train", task, spatial_size=spatial, max_slices=max_slices)
    compare = "label" if task == "mask" else "image"
    train_ref = _stacked(train_ds, compare)
    checks = sample_checks(generated, train_ref, task, candidates)
    names = [r.image.name for r in train_ds.records]
    per_sample = [
        {
            "nearest_train_file": names[int(checks["index"][k])],
            "nearest_train_similarity": float(checks["similarity"][k]),
            "distribution_distance": float(checks["distance"][k]),
        }
        for k in range(len(generated))
    ]
    summary = {"nearest_train_similarity": _summary(checks["similarity"]), "distribution_distance": _summary(checks["distance"])}
    try:
        val_ds = make_dataset(root, "validate", task, spatial_size=spatial, max_slices=n_reference)
    except UserInputError:
        return per_sample, summary, None, len(train_ds)
    if not len(val_ds):
        return per_sample, summary, None, len(train_ds)
    val_checks = sample_checks(_stacked(val_ds, compare), train_ref, task, candidates)
    # Memorisation flag: closer to some training slice than any real unseen slice gets.
    closer = checks["similarity"] > val_checks["similarity"].max()
    reference = {
        "split": "validate",
        "n": len(val_ds),
        "nearest_train_similarity": _summary(val_checks["similarity"]),
        "distribution_distance": _summary(val_checks["distance"]),
        "samples_closer_than_any_validation_slice": float(closer.double().mean()),
    }
    return per_sample, summary, reference, len(train_ds)


def _real_slices(root: Path, task: str, spatial: tuple[int, int], n: int) -> torch.Tensor | None:
    """Up to ``n`` validation images (the sample-quality reference), or None without a validation split."""
    from prostate_vq.data import make_dataset

    try:
        dataset = make_dataset(root, "validate", task, spatial_size=spatial, max_slices=n)
    except UserInputError:
        return None
    return _stacked(dataset, "image").float() if len(dataset) else None


_OUR_SLICE = re.compile(r"^(case|seg)_sample_week_0_slice_\d+\.nii\.gz$")


def _earlier_samples(out: Path) -> list[Path]:
    """Slice files an earlier `sample` wrote into `out` (our names only, never a user's file)."""
    folder = out / "slices"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _OUR_SLICE.match(p.name) and not p.is_dir())


def _remove_stale(out: Path, earlier: list[Path], records: list[dict]) -> None:
    """The earlier run's slices that the new samples did not replace (it drew more) go, and the line says so."""
    if not earlier:
        return
    now = {out / r[key] for r in records for key in ("file", "seg_file") if key in r}
    stale = [p for p in earlier if p not in now]
    for path in stale:
        path.unlink(missing_ok=True)
    log.info(
        "replaced the earlier samples in %s (%d slice files overwritten, %d left over removed)",
        out,
        len(earlier) - len(stale),
        len(stale),
    )


def sample(
    prior,
    n: int = 16,
    out=None,
    temperature: float = 1.0,
    seed: int = 0,
    device: str = "auto",
    data=None,
    candidates: int = 16,
    fid_weights=None,
) -> Path:
    """Sample ``n`` slices from the prior checkpoint ``prior`` into the folder ``out`` (see module docstring).
    Same seed, temperature and device -> the same samples. ``fid_weights`` (a TorchScript feature network
    on disk, evaluation.perceptual) adds FID against the validation slices."""
    from prostate_vq.evaluation.perceptual import load_feature_net
    from prostate_vq.evaluation.sample_quality import sample_quality
    from prostate_vq.runtime.device import resolve_device

    if out is None:
        raise UserInputError("sample needs --out")
    if n < 1:
        raise UserInputError(f"--n must be at least 1, got {n}")
    if not temperature > 0:
        raise UserInputError(f"--temperature must be positive, got {temperature}")
    fid_net = None if fid_weights is None else load_feature_net(fid_weights)  # a missing file: one line, first
    torch_device = resolve_device(device)
    out = Path(out)
    network, vqvae, layout, payload = load_prior(prior, torch_device)
    task = payload["task"]
    root = resolve_data_root(data, payload)  # fail before sampling when the training data is gone

    generator = torch.Generator(device=torch_device).manual_seed(int(seed))
    codes = network.sample(n, layout.grid, temperature=temperature, generator=generator, device=torch_device)
    codes = codes if codes.dim() == 4 else codes.unsqueeze(-1)
    with torch.no_grad():
        sample_bits = network.nll(codes, reduction="none").cpu()
    images, labels = decode_codes(vqvae, layout, codes.to(torch_device))

    records = []
    for k in range(n):
        record: dict[str, Any] = {"index": k, "nll_bits_per_code": float(sample_bits[k])}
        if images is not None:
            record["file"] = f"slices/{SAMPLE_NAME.format(k=k)}"
        if labels is not None:
            record["seg_file"] = f"slices/{SEG_NAME.format(k=k)}"
        records.append(record)

    height, width = (int(v) for v in payload["spatial_size"])
    spatial = (height, width)
    generated = labels if task == "mask" else images
    per_sample, summary, reference, n_train = memorisation_check(
        generated, root, task, spatial, payload.get("max_slices"), n_reference=n, candidates=candidates
    )
    for record, extra in zip(records, per_sample):
        record.update(extra)
    summary["nll_bits_per_code"] = _summary(sample_bits)
    quality = (
        None
        if images is None
        else sample_quality(
            images, _real_slices(root, task, spatial, n), fid_net, None if fid_weights is None else Path(fid_weights)
        )
    )

    info = {
        "n": n,
        "arch": payload.get("arch"),
        "temperature": temperature,
        "seed": seed,
        "device": str(torch_device),
        "prior": str(Path(prior).resolve()),
        "checkpoint": payload.get("vqvae_checkpoint"),
        "task": task,
        "layout": layout.describe(),
        "data_root": str(root),
        "n_train_reference": n_train,
        "similarity": "label_agreement" if task == "mask" else "ssim",
        "distribution_distance": ("total_variation_label_frequencies" if task == "mask" else "wasserstein1_intensity_histogram"),
        "nearest_search": (
            "exhaustive" if task == "mask" else f"exact SSIM among the {candidates} training slices nearest in L2 (4x pooled)"
        ),
        "summary": summary,
        "reference": reference,
        "quality": quality,
        "samples": records,
    }
    earlier = _earlier_samples(out)
    # Everything is written into a staging folder first and moved into --out together, samples.json last:
    # a full disk leaves --out as it was (the message says so truthfully).
    with staged_folder(out, last="samples.json") as stage:
        ensure_dir(stage / "slices")
        for k, record in enumerate(records):
            if images is not None:
                save_slice(images[k, 0].numpy().astype(np.float32), stage / record["file"])
            if labels is not None:
                save_slice(labels[k, 0].numpy().astype(np.uint8), stage / record["seg_file"])
        with atomic_open(stage / "codes.npz", "wb") as handle:
            np.savez_compressed(handle, codes=layout.to_model(codes.cpu()).numpy().astype(np.int32))
        write_json_atomic(stage / "samples.json", info)
        sample_grid(
            images, labels, stage / "samples_grid.png", f"{n} samples, {payload.get('arch')} prior, T={temperature}, seed {seed}"
        )
    _remove_stale(out, earlier, records)
    return out
