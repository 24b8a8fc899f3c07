"""Where a model's reconstructions lose to a codec at the same rate: error by distance to the slice border and
kept energy by spatial-frequency band, for the model and for a codec on the same test slices.

For each checkpoint (e.g. the `default` runs of ``tools/bench_variants.py --part default``) this reconstructs the
test split, codes the same slices with the codec at the model's bits per pixel (evaluation.codecs: per slice the
best quality that fits), and prints one JSON line per coder with

* ``mse_by_border_distance``: mean squared error in rings of pixels 0-3, 4-7, 8-15, 16-31 and >= 32 from the
  nearest slice edge (with the share of the squared error each ring holds);
* ``kept_energy_by_band``: per radial frequency band (fractions of Nyquist: 0-1/8, 1/8-1/4, 1/4-1/2, 1/2-1), the
  reconstruction's spectral energy over the input's, and the error's energy over the input's (1 - kept
  correlation: 0 is perfect), and the share of the whole error's energy in the band.

Usage:  python tools/analyse_gap.py RUN/best.pt [RUN2/best.pt ...] --data DIR [--split test] [--codec webp]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

RINGS = [(0, 4), (4, 8), (8, 16), (16, 32), (32, 10**6)]
BANDS = [(0.0, 0.125), (0.125, 0.25), (0.25, 0.5), (0.5, 1.01)]


def border_distance(h: int, w: int) -> np.ndarray:
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    return np.minimum(np.minimum(rows, h - 1 - rows), np.minimum(cols, w - 1 - cols))


def radial_frequency(h: int, w: int) -> np.ndarray:
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    return np.sqrt(fy**2 + fx**2) / 0.5  # 1 = Nyquist along an axis


def profile(inputs: list[np.ndarray], outputs: list[np.ndarray]) -> dict:
    h, w = inputs[0].shape
    distance, radius = border_distance(h, w), radial_frequency(h, w)
    squared = np.stack([(o - i) ** 2 for i, o in zip(inputs, outputs)])
    total = squared.sum()
    rings = {}
    for low, high in RINGS:
        mask = (distance >= low) & (distance < high)
        if mask.any():
            rings[f"{low}-{min(high, max(h, w)) - 1}"] = {
                "mse": float(squared[:, mask].mean()),
                "share": float(squared[:, mask].sum() / total),
            }
    spectra = [
        (np.abs(np.fft.fft2(i - i.mean())) ** 2, np.abs(np.fft.fft2(o - o.mean())) ** 2, np.abs(np.fft.fft2(o - i)) ** 2)
        for i, o in zip(inputs, outputs)
    ]
    bands, error_total = {}, sum(s[2].sum() for s in spectra)
    for low, high in BANDS:
        mask = (radius >= low) & (radius < high)
        source = sum(s[0][mask].sum() for s in spectra)
        error = sum(s[2][mask].sum() for s in spectra)
        bands[f"{low:g}-{min(high, 1):g}"] = {
            "kept": float(sum(s[1][mask].sum() for s in spectra) / source),
            "error": float(error / source),
            "error_share": float(error / error_total),
        }
    return {"mse": float(squared.mean()), "mse_by_border_distance": rings, "kept_energy_by_band": bands}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--codec", default="webp")
    args = parser.parse_args()
    import torch

    from prostate_vq.data import make_dataset, make_loader
    from prostate_vq.evaluation.codecs import code_at_budget, get_codec
    from prostate_vq.runtime.checkpoints import load_model

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
    codec = get_codec(args.codec)
    codec_done = False
    for checkpoint in args.checkpoints:
        model, payload = load_model(checkpoint, torch.device("cpu"))
        dataset = make_dataset(args.data, args.split, payload["task"], spatial_size=tuple(payload["spatial_size"]))
        inputs, recons = [], []
        with torch.no_grad():
            for batch in make_loader(dataset, batch_size=16):
                out = model(model.prepare_input(batch))
                inputs += [x[0].numpy() for x in batch["image"]]
                recons += [r[0].clamp(0, 1).numpy() for r in out.recon]
        bpp = model.bits_per_pixel(tuple(payload["spatial_size"]))
        print(json.dumps({"coder": str(checkpoint), "bits_per_pixel": bpp, **profile(inputs, recons)}), flush=True)
        if not codec_done:
            budget = bpp * inputs[0].size
            coded = [code_at_budget(codec, image, budget)[0] for image in inputs]
            fits = [c is not None for c in coded]
            kept = [(i, c) for i, c in zip(inputs, coded) if c is not None]
            print(
                json.dumps(
                    {
                        "coder": args.codec,
                        "bits_per_pixel": bpp,
                        "fit_pct": 100 * float(np.mean(fits)),
                        **profile([i for i, _ in kept], [c for _, c in kept]),
                    }
                ),
                flush=True,
            )
            codec_done = True
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
