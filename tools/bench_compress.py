"""The real compressed rate: `default`'s codes entropy-coded under a trained prior, through the documented commands.

For each seed's `default` run of the variants benchmark (``tools/bench_variants.py --part default``: ProstateX dev
scans, train patient 0000, test unseen patient 0001, 128x128, 300 steps), this runs

  prostate-vq train-prior --checkpoint RUN/best.pt --arch pixelcnn --epochs 100 --batch-size 8 --patience 20
      --out WORK/seedK/prior     (38 training maps: 5 steps per epoch, 500 steps at most)
  prostate-vq encode --checkpoint RUN/best.pt --split test --compress PRIOR/best.pt --out WORK/seedK/coded.npz
  prostate-vq decode --codes WORK/seedK/coded.npz --prior PRIOR/best.pt --out WORK/seedK/decoded.npz
  prostate-vq evaluate --checkpoint RUN/best.pt --split test --codecs webp,avif,jpeg2000,jpeg --codec-bpp CODED

checks that the decoded codes equal `encode`'s plain codes exactly, and prints, per seed and as mean ± sd, the
nominal rate, the prior's NLL and the measured stream and file rates (bits per pixel), and our SSIM/PSNR against
the best codec given the rate our codes really take. Without the default runs it says which command makes them.

Usage:  python tools/bench_compress.py [--variants benchmarks/variants] [--epochs 100] [--work benchmarks/compress]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODECS = "webp,avif,jpeg2000,jpeg"


def run(cli, args: list[str]) -> str:
    print("$ prostate-vq " + " ".join(args), flush=True)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = cli(args)
    if code:
        raise SystemExit(f"prostate-vq {args[0]} failed with exit code {code}")
    return buffer.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=Path, default=ROOT / "benchmarks" / "variants")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "compress")
    args = parser.parse_args()
    runs = sorted((args.variants / "default" / "default").glob("seed*/run/best.pt"))
    if not runs:
        print(
            json.dumps(
                {"bench": "compress", "skipped": "no default runs: python tools/bench_variants.py --part default makes them"}
            )
        )
        return 0
    import numpy as np
    import torch

    from prostate_vq.cli import main as cli
    from prostate_vq.prior import read_codes

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
    data = str(args.variants / "prostatex")
    per_seed = {}
    for checkpoint in runs:
        seed = checkpoint.parent.parent.name
        work = args.work / seed
        prior = work / "prior"
        if not (prior / "metrics.json").is_file():
            run(
                cli,
                [
                    "train-prior",
                    "--checkpoint",
                    str(checkpoint),
                    "--data",
                    data,
                    "--arch",
                    "pixelcnn",
                    "--epochs",
                    str(args.epochs),
                    "--batch-size",
                    "8",
                    "--patience",
                    "20",
                    "--out",
                    str(prior),
                    "--device",
                    "cpu",
                    "--no-progress",
                ],
            )
        common = ["--checkpoint", str(checkpoint), "--data", data, "--split", "test"]
        rates = json.loads(
            run(cli, ["encode", *common, "--compress", str(prior / "best.pt"), "--out", str(work / "coded.npz")])
            .strip()
            .splitlines()[-1]
        )
        run(
            cli,
            ["decode", "--codes", str(work / "coded.npz"), "--prior", str(prior / "best.pt"), "--out", str(work / "decoded.npz")],
        )
        run(cli, ["encode", *common, "--out", str(work / "plain.npz"), "--device", "cpu"])
        exact = bool(np.array_equal(read_codes(work / "decoded.npz")[0], read_codes(work / "plain.npz")[0]))
        run(
            cli,
            [
                "evaluate",
                *common,
                "--out",
                str(work / "eval"),
                "--device",
                "cpu",
                "--codecs",
                CODECS,
                "--codec-bpp",
                f"{rates['coded_bits_per_pixel']:.6f}",
            ],
        )
        m = json.loads((work / "eval" / "metrics.json").read_text(encoding="utf-8"))
        base = m["baselines"]
        best = base.get("best")
        per_seed[seed] = {
            **rates,
            "exact_round_trip": exact,
            "ssim": m["ssim_mean"],
            "psnr": m["psnr_mean"],
            "best_codec": best,
            "codecs": {
                n: {k: c[k] for k in ("ssim_mean", "psnr_mean", "bpp_mean", "fit_pct")} for n, c in base["codecs"].items()
            },
            "ours_minus_best": base.get("ours_minus_best"),
        }
        print(json.dumps({"seed": seed, **per_seed[seed]}), flush=True)

    def mean_sd(key):
        values = [v[key] for v in per_seed.values() if v.get(key) is not None]
        return [statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0] if values else None

    print(
        json.dumps(
            {
                "bench": "compress",
                "seeds": sorted(per_seed),
                "prior": f"pixelcnn, {args.epochs} epochs at batch 8",
                "exact_round_trip": all(v["exact_round_trip"] for v in per_seed.values()),
                **{
                    key: mean_sd(key)
                    for key in (
                        "nominal_bits_per_pixel",
                        "nll_bits_per_pixel",
                        "coded_bits_per_pixel",
                        "file_bits_per_pixel",
                        "ssim",
                        "psnr",
                    )
                },
            }
        )
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.exit(main())
