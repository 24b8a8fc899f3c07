"""Quality bars of prostate-vq, printed as JSON lines (one per measurement).

(a) phantom: the demo phantom (``default_data_root()``), the ``default`` preset trained ``--minutes`` on CPU,
    evaluated on the test split: image task (SSIM, codebook usage) and mask task (Dice).
    Goals: SSIM >= 0.90 with >= 95% of the codebook in use; mask Dice >= 0.995.
(b) real: the two ProstateX patients in ``../shared/data/prostatex-dev`` (T2 DICOM), imported and split by
    patient exactly as ``tools/prostatex.py`` says (the same data as ``tools/bench_variants.py``: train 38
    slices of patient 0000, validate 15 slices of it in another plane, test 72 slices of patient 0001).
    128x128 slices, ``--real-minutes`` of CPU each for our preset and MONAI's stock
    ``monai.networks.nets.VQVAE`` (same data, size, Adam with the preset's lr and batch size, same time,
    best epoch by validation MSE). Goal: ours SSIM >= 0.85 with >= 90% usage, far above the stock model.

``--preset`` picks ours (``default``, 0.5625 bits per pixel; ``hifi`` is the /2 model at 2.25).
Usage:  python tools/bench_quality.py [--minutes 5] [--real-minutes 4] [--preset default] [--only phantom|real]
        [--quick]
``--quick`` runs every path for a few seconds at tiny sizes: a smoke test of the benchmark, not a result.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prostatex import SHARED, available, import_prostatex

GOALS = {"phantom-image": {"ssim_mean": 0.90, "codebook_usage_pct": 95.0},
         "phantom-mask": {"dice_mean": 0.995},
         "real-default": {"ssim_mean": 0.85, "codebook_usage_pct": 90.0}}


QUICK = False


def emit(record: dict) -> None:
    goals = GOALS.get(record.get("bench"), {})
    if QUICK:
        record["quick"] = True  # a smoke test: the goals do not apply
    elif goals and all(record.get(k) is not None for k in goals):
        record["goals"] = goals
        record["met"] = all(record[k] >= v for k, v in goals.items())
    print(json.dumps(record), flush=True)


def _ours(root: Path, out: Path, task: str, minutes: float, spatial, device: str, max_slices, seed: int,
          preset: str = "default") -> dict:
    from prostate_vq.evaluation import evaluate_checkpoint
    from prostate_vq.training import TrainOptions, train

    start = time.monotonic()
    # Time-bound like the stock model below: the budget, not the preset's epoch cap or patience, ends training.
    run = train(TrainOptions(out=out / "run", data=root, preset=preset, task=task, max_minutes=minutes,
                             epochs=100_000, patience=100_000, spatial_size=spatial, device=device, seed=seed,
                             max_slices=max_slices, progress=False))
    trained = time.monotonic() - start
    result = evaluate_checkpoint(run / "best.pt", data=root, split="test", out=out / "eval", device=device,
                                 max_slices=max_slices)
    m = result.to_dict()
    import pandas as pd

    epochs = len(pd.read_csv(run / "history.csv"))
    from prostate_vq.training.checkpoints import load_model

    parameters = sum(p.numel() for p in load_model(run / "best.pt", "cpu")[0].parameters())
    keys = ("ssim_mean", "ssim_pass_rate", "psnr_mean", "dice_mean", "codes_used", "codebook_size",
            "codebook_usage_pct", "perplexity", "n_slices")
    return {"model": f"prostate-vq {preset}", "preset": preset, "bits_per_pixel": m.get("bits_per_pixel"),
            "task": task, "spatial_size": list(spatial), "epochs": epochs,
            "train_seconds": round(trained, 1), **{k: m.get(k) for k in keys}, "parameters": parameters,
            "eval": str(out / "eval")}


def bench_phantom(args, out: Path) -> None:
    from prostate_vq.data import default_data_root

    root = default_data_root()
    spatial = (64, 32) if args.quick else (256, 128)
    for task, bench in (("image", "phantom-image"), ("mask", "phantom-mask")):
        record = _ours(root, out / f"phantom-{task}", task, args.minutes, spatial, args.device,
                       args.max_slices, args.seed, args.preset)
        emit({"bench": bench, "data": str(root), "minutes": args.minutes, **record})


def _stock_monai(root: Path, minutes: float, spatial, device: str, max_slices, seed: int,
                 preset: str = "default") -> dict:
    """MONAI's VQVAE as shipped (only the sizes the issue names), trained like our preset."""
    import torch
    import torch.nn.functional as F
    from monai.networks.nets import VQVAE

    from prostate_vq.data import make_dataset
    from prostate_vq.evaluation.metrics import codebook_metrics, reconstruction_per_slice, summarize_reconstruction
    from prostate_vq.models import get_preset
    from prostate_vq.training.runtime import resolve_device

    torch.manual_seed(seed)
    dev = resolve_device(device)
    training = get_preset(preset)["training"]
    model = VQVAE(spatial_dims=2, in_channels=1, out_channels=1, channels=(64, 128), num_res_layers=2,
                  num_res_channels=(64, 128),  # MONAI's default (96, 96, 192) has three entries for two stages
                  downsample_parameters=((2, 4, 1, 1), (2, 4, 1, 1)),
                  upsample_parameters=((2, 4, 1, 1, 0), (2, 4, 1, 1, 0)),
                  num_embeddings=512, embedding_dim=64).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(training["lr"]))
    data = {s: make_dataset(root, s, "image", spatial_size=spatial, max_slices=max_slices)
            for s in ("train", "validate", "test")}
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(data["train"], batch_size=int(training["batch_size"]), shuffle=True,
                                         generator=generator)

    def images(split):
        return torch.stack([data[split][i]["image"] for i in range(len(data[split]))]).to(dev)

    val_images, test_images = images("validate"), images("test")
    deadline = time.monotonic() + 60 * minutes
    best, best_state, epochs = math.inf, None, 0
    start = time.monotonic()
    while time.monotonic() < deadline:
        model.train()
        for batch in loader:
            x = batch["image"].to(dev)
            recon, quantization_loss = model(x)
            loss = F.mse_loss(recon, x) + quantization_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if time.monotonic() >= deadline:
                break
        epochs += 1
        model.eval()
        with torch.inference_mode():
            val = F.mse_loss(model(val_images)[0], val_images).item()
        if val < best:
            best, best_state = val, {k: v.detach().clone() for k, v in model.state_dict().items()}
    trained = time.monotonic() - start
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    with torch.inference_mode():
        recon = torch.cat([model(test_images[i:i + 16])[0] for i in range(0, len(test_images), 16)])
        indices = torch.cat([model.index_quantize(test_images[i:i + 16]) for i in range(0, len(test_images), 16)])
    summary = summarize_reconstruction({k: v.numpy() for k, v in reconstruction_per_slice(recon, test_images).items()})
    codes = codebook_metrics(torch.bincount(indices.flatten().cpu(), minlength=512))
    return {"model": "monai VQVAE (stock)", "task": "image", "spatial_size": list(spatial), "epochs": epochs,
            "train_seconds": round(trained, 1), "ssim_mean": summary.ssim_mean,
            "ssim_pass_rate": summary.ssim_pass_rate, "psnr_mean": summary.psnr_mean, "codes_used": codes.codes_used,
            "codebook_size": codes.codebook_size, "codebook_usage_pct": codes.codebook_usage_pct,
            "perplexity": codes.perplexity, "n_slices": summary.n_slices,
            "parameters": sum(p.numel() for p in model.parameters())}


def bench_real(args, out: Path) -> None:
    shared = Path(args.prostatex)
    if not available(shared):
        emit({"bench": "real", "skipped": f"ProstateX scans not found at {shared}"})
        return
    root = import_prostatex(out / "prostatex", shared)
    spatial = (64, 64) if args.quick else (128, 128)
    ours = _ours(root, out / f"real-{args.preset}", "image", args.real_minutes, spatial, args.device,
                 args.max_slices, args.seed, args.preset)
    emit({"bench": "real-default", "data": str(root), "minutes": args.real_minutes, **ours})
    stock = _stock_monai(root, args.real_minutes, spatial, args.device, args.max_slices, args.seed, args.preset)
    emit({"bench": "real-monai-stock", "data": str(root), "minutes": args.real_minutes, **stock})
    emit({"bench": "real-comparison", "ssim": {"default": ours["ssim_mean"], "monai_stock": stock["ssim_mean"]},
          "codebook_usage_pct": {"default": ours["codebook_usage_pct"], "monai_stock": stock["codebook_usage_pct"]}})


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
        stock = _stock_monai(root, minutes, spatial, device, max_slices, seed)
    return {"ours_ssim": ours["ssim_mean"], "peer_ssim": stock["ssim_mean"],
            "ours_usage_pct": ours["codebook_usage_pct"], "peer_usage_pct": stock["codebook_usage_pct"],
            "peer_name": "monai.networks.nets.VQVAE (stock, same data, size, optimiser and time)",
            "settings": {"minutes": minutes, "spatial_size": list(spatial), "device": device,
                         "data": "ProstateX-0000 train / ProstateX-0001 test (tools/prostatex.py)"}}


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
