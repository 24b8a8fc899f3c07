"""Quality bars of prostate-vq, printed as JSON lines (one per measurement).

(a) phantom: the demo phantom (``default_data_root()``), the ``default`` preset trained ``--minutes`` on CPU,
    evaluated on the test split: image task (SSIM, codebook usage) and mask task (Dice).
    Goals: SSIM >= 0.90 with >= 95% of the codebook in use; mask Dice >= 0.995.
(b) real: the two ProstateX patients in ``../shared/data/prostatex-dev`` (T2 DICOM), imported and split by
    patient exactly as ``tools/prostatex.py`` says (the same data as ``tools/bench_variants.py``: train 38
    slices of patient 0000, validate 15 slices of it in another plane, test 72 slices of patient 0001).
    128x128 slices, ``--real-minutes`` of CPU each for our preset and MONAI's stock
    ``monai.networks.nets.VQVAE`` (the preset ``monai-stock-default-recipe``: its network and EMA quantizer under
    default's recipe, trained by the same command and selection). Goal: ours SSIM >= 0.85 with >= 90% usage.

``--preset`` picks ours (``default``, 0.5625 bits per pixel; ``hifi`` is the /2 model at 2.25).
Usage:  python tools/bench_quality.py [--minutes 5] [--real-minutes 4] [--preset default] [--only phantom|real]
        [--quick]
``--quick`` runs every path for a few seconds at tiny sizes: a smoke test of the benchmark, not a result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prostatex import SHARED, available, import_prostatex

GOALS = {
    "phantom-image": {"ssim_mean": 0.90, "codebook_usage_pct": 95.0},
    "phantom-mask": {"dice_mean": 0.995},
    "real-default": {"ssim_mean": 0.85, "codebook_usage_pct": 90.0},
}


QUICK = False


def emit(record: dict) -> None:
    goals = GOALS.get(record.get("bench"), {})
    if QUICK:
        record["quick"] = True  # a smoke test: the goals do not apply
    elif goals and all(record.get(k) is not None for k in goals):
        record["goals"] = goals
        record["met"] = all(record[k] >= v for k, v in goals.items())
    print(json.dumps(record), flush=True)


def _ours(
    root: Path, out: Path, task: str, minutes: float, spatial, device: str, max_slices, seed: int, preset: str = "default"
) -> dict:
    from prostate_vq.evaluation import evaluate_checkpoint
    from prostate_vq.training import RunRequest, TrainOptions, train

    start = time.monotonic()
    # Time-bound like the stock model below: the budget, not the preset's epoch cap or patience, ends training.
    run = train(
        TrainOptions(out=out / "run", data=root, max_minutes=minutes, device=device, max_slices=max_slices, progress=False),
        RunRequest(preset=preset, task=task, epochs=100_000, patience=100_000, spatial_size=spatial, seed=seed),
    )
    trained = time.monotonic() - start
    result = evaluate_checkpoint(run / "best.pt", data=root, split="test", out=out / "eval", device=device, max_slices=max_slices)
    m = result.to_dict()
    import pandas as pd

    epochs = len(pd.read_csv(run / "history.csv"))
    from prostate_vq.runtime.checkpoints import load_model

    parameters = sum(p.numel() for p in load_model(run / "best.pt", "cpu")[0].parameters())
    keys = (
        "ssim_mean",
        "ssim_pass_rate",
        "psnr_mean",
        "dice_mean",
        "codes_used",
        "codebook_size",
        "codebook_usage_pct",
        "perplexity",
        "n_slices",
    )
    return {
        "model": f"prostate-vq {preset}",
        "preset": preset,
        "bits_per_pixel": m.get("bits_per_pixel"),
        "task": task,
        "spatial_size": list(spatial),
        "epochs": epochs,
        "train_seconds": round(trained, 1),
        **{k: m.get(k) for k in keys},
        "parameters": parameters,
        "eval": str(out / "eval"),
    }


def bench_phantom(args, out: Path) -> None:
    from prostate_vq.data import default_data_root

    root = default_data_root()
    spatial = (64, 32) if args.quick else (256, 128)
    for task, bench in (("image", "phantom-image"), ("mask", "phantom-mask")):
        record = _ours(
            root, out / f"phantom-{task}", task, args.minutes, spatial, args.device, args.max_slices, args.seed, args.preset
        )
        emit({"bench": bench, "data": str(root), "minutes": args.minutes, **record})


STOCK = "monai-stock-default-recipe"  # MONAI's stock VQVAE (network and EMA quantizer) under default's recipe


def _stock_monai(root: Path, out: Path, minutes: float, spatial, device: str, max_slices, seed: int) -> dict:
    """MONAI's VQVAE as shipped, trained by the same command, recipe, budget and selection as ours (a fair anchor:
    the old hand-written loop trained it on MSE alone, without augmentation or clipping)."""
    record = _ours(root, out, "image", minutes, spatial, device, max_slices, seed, STOCK)
    return {**record, "model": f"monai.networks.nets.VQVAE (stock) as preset {STOCK}"}


def bench_real(args, out: Path) -> None:
    shared = Path(args.prostatex)
    if not available(shared):
        emit({"bench": "real", "skipped": f"ProstateX scans not found at {shared}"})
        return
    root = import_prostatex(out / "prostatex", shared)
    spatial = (64, 64) if args.quick else (128, 128)
    ours = _ours(
        root,
        out / f"real-{args.preset}",
        "image",
        args.real_minutes,
        spatial,
        args.device,
        args.max_slices,
        args.seed,
        args.preset,
    )
    emit({"bench": "real-default", "data": str(root), "minutes": args.real_minutes, **ours})
    stock = _stock_monai(root, out / "real-monai-stock", args.real_minutes, spatial, args.device, args.max_slices, args.seed)
    emit({"bench": "real-monai-stock", "data": str(root), "minutes": args.real_minutes, **stock})
    emit(
        {
            "bench": "real-comparison",
            "ssim": {"default": ours["ssim_mean"], "monai_stock": stock["ssim_mean"]},
            "codebook_usage_pct": {"default": ours["codebook_usage_pct"], "monai_stock": stock["codebook_usage_pct"]},
        }
    )


def quality_per_time(minutes: float, device: str = "cpu", out: Path | None = None, seed: int = 0) -> dict | None:
    """The real-scan comparison as one dict for tools/benchmark.py; None when the scans are absent."""
    import tempfile

    if not available():
        return None
    quick = minutes < 0.5
    spatial = (64, 64) if quick else (128, 128)
    max_slices = 8 if quick else None
    with tempfile.TemporaryDirectory(prefix="pvq-quality-") as tmp:
        work = Path(out) if out else Path(tmp)
        root = import_prostatex(work / "prostatex")
        ours = _ours(root, work / "real-default", "image", minutes, spatial, device, max_slices, seed)
        stock = _stock_monai(root, work / "real-monai-stock", minutes, spatial, device, max_slices, seed)
    return {
        "ours_ssim": ours["ssim_mean"],
        "peer_ssim": stock["ssim_mean"],
        "ours_usage_pct": ours["codebook_usage_pct"],
        "peer_usage_pct": stock["codebook_usage_pct"],
        "peer_name": f"monai.networks.nets.VQVAE (stock, preset {STOCK}: same command, recipe and time)",
        "settings": {
            "minutes": minutes,
            "spatial_size": list(spatial),
            "device": device,
            "data": "ProstateX-0000 train / ProstateX-0001 test (tools/prostatex.py)",
        },
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="phantom training budget per task")
    parser.add_argument("--real-minutes", type=float, default=4.0, help="real-scan training budget per model")
    parser.add_argument("--preset", default="default", help="our preset (hifi: the /2 model at 2.25 bpp)")
    parser.add_argument("--only", choices=("phantom", "real"), default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/quality"))
    parser.add_argument("--prostatex", type=Path, default=SHARED)
    parser.add_argument("--device", default="cpu", help="the bars are CPU bars; cuda works too")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-slices", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="seconds per training at tiny sizes (smoke test)")
    args = parser.parse_args(argv)
    global QUICK
    QUICK = args.quick
    if args.quick:
        args.minutes = args.real_minutes = 0.05
        args.max_slices = args.max_slices or 8
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "phantom"):
        bench_phantom(args, args.out)
    if args.only in (None, "real"):
        bench_real(args, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
