"""Speed (and quality per time) of prostate-vq next to its peers, measured side by side in one process.

    python tools/benchmark.py            # full run (tens of minutes on 2 CPU cores)
    python tools/benchmark.py --quick    # the same measurements, small: under a minute on 2 CPU cores

Prints one JSON line per measurement with the keys name, ours, peer, peer_name, ratio, unit, settings,
and writes them all to benchmarks/results.json. `ratio` is always "times better than the peer":
ours/peer for higher-is-better units (images/s, slices/s, SSIM) and peer/ours for lower-is-better
units (ns/vector, MiB), so > 1 means prostate-vq wins. Timings alternate ours/peer and keep the median,
so a noisy neighbour hurts both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

LOWER_IS_BETTER = {"ns/vector", "MiB"}


def line(name, ours, peer, peer_name, unit, **settings) -> dict:
    if peer and ours:
        ratio = peer / ours if unit in LOWER_IS_BETTER else ours / peer
    else:
        ratio = None
    record = {
        "name": name,
        "ours": _round(ours),
        "peer": _round(peer),
        "peer_name": peer_name,
        "ratio": _round(ratio),
        "unit": unit,
        "settings": settings,
    }
    print(json.dumps(record), flush=True)
    return record


def _round(value):
    return None if value is None else float(f"{value:.4g}")


def device_of(name: str) -> torch.device:
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))


# --- models under test ------------------------------------------------------------------------


def monai_vqvae(in_channels: int = 1) -> torch.nn.Module:
    """MONAI's stock VQVAE as the issue fixes it: channels (64, 128), 2 residual layers, /4, K=512, D=64."""
    from monai.networks.nets import VQVAE

    return VQVAE(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=in_channels,
        channels=(64, 128),
        num_res_layers=2,
        num_res_channels=(64, 128),
        downsample_parameters=((2, 4, 1, 1), (2, 4, 1, 1)),
        upsample_parameters=((2, 4, 1, 1, 0), (2, 4, 1, 1, 0)),
        num_embeddings=512,
        embedding_dim=64,
    )


def ours_model(preset: str) -> torch.nn.Module:
    from prostate_vq.models import build_model, get_preset

    return build_model(get_preset(preset), "image")


def step_fn(model, peer: bool, device: torch.device):
    """One optimiser step exactly as each library trains: our TaskLoss + aux losses; MONAI's recon + quant loss."""
    from prostate_vq.runtime.device import autocast
    from prostate_vq.training.vqvae.losses import TaskLoss

    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    criterion = TaskLoss("image")

    def step(x):
        with autocast(device):
            if peer:
                recon, quant_loss = model(x)
                loss = F.mse_loss(recon.float(), x) + quant_loss.float()
            else:
                loss, _ = criterion(model(x), x, None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def images_per_second(step, x, steps: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * x.shape[0] / (time.perf_counter() - start)


def bench_train_throughput(quick: bool, device: torch.device) -> list[dict]:
    """Per slice size: MONAI, default and v1-vq steps alternate round by round; medians of the rounds."""
    records = []
    batch = 8 if quick else 32
    steps, rounds = (2, 1) if quick else (3, 3)
    presets = ("default", "v1-vq")
    for size in ((128, 128), (256, 128)):
        x = torch.rand(batch, 1, *size, device=device)
        contenders = {"peer": step_fn(monai_vqvae().to(device), True, device)}
        contenders.update({p: step_fn(ours_model(p).to(device), False, device) for p in presets})
        for step in contenders.values():
            step(x)  # warm-up: allocations, k-means init
        speed = {name: [] for name in contenders}
        for _ in range(rounds):
            for name, step in contenders.items():
                speed[name].append(images_per_second(step, x, steps, device))
        peer = statistics.median(speed["peer"])
        for preset in presets:
            records.append(
                line(
                    f"train_throughput_{size[0]}x{size[1]}_{preset}",
                    statistics.median(speed[preset]),
                    peer,
                    "monai.networks.nets.VQVAE (64,128), 2 res, /4, K=512, D=64",
                    "images/s",
                    batch=batch,
                    steps=steps * rounds,
                    device=str(device),
                    threads=torch.get_num_threads(),
                )
            )
    return records


def bench_nearest_code(quick: bool, device: torch.device) -> list[dict]:
    from vector_quantize_pytorch import VectorQuantize

    from prostate_vq.models.quantizers.base import nearest_code

    n = 4096 if quick else 65536
    dim = 64
    records = []
    for k in (512, 1024, 8192):
        z = torch.randn(n, dim, device=device)
        codebook = torch.randn(k, dim, device=device)
        library = VectorQuantize(dim=dim, codebook_size=k, decay=0.99).to(device).eval()
        library._codebook.embed.data.copy_(codebook[None])
        library._codebook.initted.fill_(True)

        def ours(z=z, codebook=codebook):
            return nearest_code(z, codebook)

        def cdist(z=z, codebook=codebook):
            return torch.cdist(z, codebook).argmin(dim=1)

        def lib(z=z, library=library):
            return library(z[None])[1][0]

        assert torch.equal(ours(), cdist()), "chunked search disagrees with cdist + argmin"
        timings = {"ours": [], "cdist": [], "lib": []}
        for _ in range(2 if quick else 5):
            for name, fn in (("ours", ours), ("cdist", cdist), ("lib", lib)):
                with torch.inference_mode():
                    start = time.perf_counter()
                    fn()
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    timings[name].append((time.perf_counter() - start) * 1e9 / n)
        ours_ns = statistics.median(timings["ours"])
        for name, label in (("cdist", "torch.cdist + argmin"), ("lib", "vector_quantize_pytorch.VectorQuantize (eval)")):
            records.append(
                line(
                    f"nearest_code_k{k}_{name}",
                    ours_ns,
                    statistics.median(timings[name]),
                    label,
                    "ns/vector",
                    n=n,
                    dim=dim,
                    k=k,
                    device=str(device),
                )
            )
    return records


def bench_data(quick: bool) -> list[dict]:
    from bench_data import measure_data_pipeline

    n = 240 if quick else 11460
    result = measure_data_pipeline(n_slices=n, batch_size=32, workers=(0,), augment=not quick)
    records = [
        line(
            "data_first_pass",
            result["first_pass_slices_per_s"],
            None,
            None,
            "slices/s",
            n_slices=n,
            note="nibabel read + validation + scaling + resize, filling the compact cache",
        ),
        line(
            "data_cached_pass",
            result["cached_pass_workers0_slices_per_s"],
            None,
            None,
            "slices/s",
            n_slices=n,
            batch=32,
            workers=0,
        ),
        line(
            "data_resident_memory",
            result["rss_delta_mb"],
            None,
            None,
            "MiB",
            n_slices=n,
            cache_mib=result["cache_mb"],
            note="RSS growth while caching (torch itself excluded)",
        ),
    ]
    if "cached_pass_augmented_workers0_slices_per_s" in result:
        records.append(
            line(
                "data_cached_pass_augmented",
                result["cached_pass_augmented_workers0_slices_per_s"],
                None,
                None,
                "slices/s",
                n_slices=n,
                batch=32,
                workers=0,
                augment="flip + affine + intensity",
            )
        )
    return records


def bench_evaluation(quick: bool, device: torch.device) -> list[dict]:
    from prostate_vq.data import synthesize
    from prostate_vq.evaluation.evaluate import evaluate_checkpoint
    from prostate_vq.training import RunRequest, TrainOptions, train

    records = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = synthesize(
            tmp / "data", cases=4 if quick else 12, seed=0, slices_per_volume=6 if quick else 24, weeks=1 if quick else 2
        )
        run = train(
            TrainOptions(data=root, out=tmp / "run", max_slices=8, progress=False, device=str(device)), RunRequest(epochs=1)
        )
        for figures in (False, True):
            start = time.perf_counter()
            result = evaluate_checkpoint(
                run / "best.pt", data=root, split="test", out=tmp / f"eval{figures}", device=str(device), figures=figures
            )
            seconds = time.perf_counter() - start
            n = result.to_dict()["n_slices"]
            records.append(
                line(
                    f"evaluate_throughput{'_with_figures' if figures else ''}",
                    n / seconds,
                    None,
                    None,
                    "slices/s",
                    n_slices=n,
                    spatial_size=[256, 128],
                    preset="default",
                    note="data loading, model, SSIM/PSNR/MSE/MAE, codebook stats, per_slice.csv"
                    + (", all figures" if figures else ""),
                )
            )
    return records


PEAK_MEMORY_CHILD = """
import sys, torch
sys.path.insert(0, {tools!r})
from benchmark import monai_vqvae, ours_model, step_fn
which = sys.argv[1]
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
model = (monai_vqvae() if which == "peer" else ours_model("default")).to(device)
step = step_fn(model, which == "peer", device)
x = torch.rand({batch}, 1, 256, 128, device=device)
for _ in range({steps}):
    step(x)
if device.type == "cuda":
    print(torch.cuda.max_memory_allocated() / 2**20)
else:  # VmHWM: this process's own peak (ru_maxrss would carry the parent's peak across fork + exec)
    hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
    print(int(hwm.split()[1]) / 1024)
"""


def bench_peak_memory(quick: bool) -> list[dict]:
    """Each model in its own process: peak RSS (CPU) or peak allocated (CUDA) while training at batch 32."""
    batch = 8 if quick else 32
    code = PEAK_MEMORY_CHILD.format(tools=str(ROOT / "tools"), steps=1 if quick else 3, batch=batch)
    values = {}
    for which in ("ours", "peer"):
        out = subprocess.run([sys.executable, "-c", code, which], capture_output=True, text=True, check=True)
        values[which] = float(out.stdout.strip().splitlines()[-1])
    return [
        line(
            f"train_peak_memory_b{batch}_256x128",
            values["ours"],
            values["peer"],
            "monai.networks.nets.VQVAE (64,128), 2 res, /4, K=512, D=64",
            "MiB",
            batch=batch,
            preset="default",
            measure="peak RSS of the whole process (CPU) / max allocated (CUDA)",
        )
    ]


def bench_quality_per_time(quick: bool) -> list[dict]:
    from bench_quality import quality_per_time

    result = quality_per_time(minutes=0.03 if quick else 4.0)
    if result is None:
        print(json.dumps({"name": "quality_per_time", "skipped": "real scans (../shared/data) not available"}))
        return []
    return [
        line(
            "quality_per_time_ssim",
            result["ours_ssim"],
            result["peer_ssim"],
            result["peer_name"],
            "SSIM",
            **result.get("settings", {}),
        ),
        line(
            "quality_per_time_usage",
            result["ours_usage_pct"],
            result["peer_usage_pct"],
            result["peer_name"],
            "codebook usage %",
            **result.get("settings", {}),
        ),
    ]


BENCHES = {
    "train": lambda q, d: bench_train_throughput(q, d),
    "quality": lambda q, d: bench_quality_per_time(q),
    "nearest": lambda q, d: bench_nearest_code(q, d),
    "data": lambda q, d: bench_data(q),
    "evaluate": lambda q, d: bench_evaluation(q, d),
    "memory": lambda q, d: bench_peak_memory(q),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: under a minute on 2 CPU cores")
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHES), default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = device_of(args.device)
    records = []
    for name, bench in BENCHES.items():
        if args.only is None or name in args.only:
            start = time.perf_counter()
            records += bench(args.quick, device)
            print(f"[{name}: {time.perf_counter() - start:.0f} s]", file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "quick": args.quick,
                "device": str(device),
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "results": records,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    raise SystemExit(main())
