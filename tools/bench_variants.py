"""The variant family on real scans: every variant preset trained for the same CPU time on the same data,
scored on an unseen patient, with its rate (bits per pixel) beside every score; then a rate-distortion table
for `default`'s family (the same network at /8, /4 and /2: about 0.14, 0.56 and 2.25 bits per pixel).

Data: the two ProstateX patients in ``../shared/data/prostatex-dev``, imported and split by patient as
``tools/prostatex.py`` describes (train 38 slices of patient 0000, validate 15 slices of it in another plane,
test 72 slices of patient 0001). Without ``../shared`` the benchmark prints one "skipped" line and exits 0.

Targets (issue 11): every variant SSIM > 0.6 and codebook usage >= 10% after 3 CPU-minutes at 128x128, no
rising validation reconstruction loss; EMA and l2-normalised codes use more of the codebook than plain VQ;
`default` SSIM >= 0.85 at <= 0.5625 bpp after 4 CPU-minutes with usage >= 90%.

Usage:  python tools/bench_variants.py [--minutes 3] [--default-minutes 4] [--presets v1-vq,fsq] [--no-rd]
        [--work benchmarks/variants] [--quick]
Prints one JSON line per run and the two Markdown tables at the end (also written to WORK/variants.md).
``--quick`` runs every path for a few seconds at 64x64: a smoke test of the benchmark, not a result.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prostatex import available, import_prostatex

from prostate_vq.evaluation.metrics import SSIM_THRESHOLD  # the brief's bar

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["v1-vq", "v2-refit", "v3-ema", "l2-codes", "entropy", "soft", "fsq", "lfq", "v4-rq", "vqvae2", "default"]
RATE_FAMILY = [("default-r014", ["model.downsample=8"]), ("default", []), ("default-r225", ["model.downsample=2"])]
USAGE_BAR, DEFAULT_SSIM_BAR, DEFAULT_USAGE_BAR, DEFAULT_RATE = 10.0, 0.85, 90.0, 0.5625


def run_one(name: str, preset: str, overrides: list[str], root: Path, work: Path, minutes: float,
            spatial: tuple[int, int], seed: int) -> dict:
    """Train `preset` for `minutes` (time-bound: epochs are not the limit), evaluate best.pt on the test split."""
    from prostate_vq.evaluation import evaluate_checkpoint
    from prostate_vq.training import TrainOptions, train

    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    start = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # collapse warnings are reported in the table instead
        run = train(TrainOptions(out=out, data=root, preset=preset, epochs=100_000, max_minutes=minutes,
                                 spatial_size=spatial, overrides=overrides, seed=seed, device="cpu", progress=False))
    seconds = time.monotonic() - start
    evaluate_checkpoint(run / "best.pt", data=root, split="test", out=out / "eval", device="cpu", figures=False)
    metrics = json.loads((out / "eval" / "metrics.json").read_text(encoding="utf-8"))
    history = _history(run)
    record = {
        "name": name, "preset": preset, "overrides": overrides, "minutes": minutes, "train_seconds": round(seconds),
        "spatial_size": list(spatial), "bits_per_pixel": metrics.get("bits_per_pixel"),
        "ssim": metrics.get("ssim_mean"), "ssim_region": metrics.get("ssim_region_mean"),
        "psnr": metrics.get("psnr_mean"), "codes_used": metrics.get("codes_used"),
        "usage_pct": metrics.get("codebook_usage_pct"), "perplexity": metrics.get("perplexity"),
        "levels": [{k: lv.get(k) for k in ("name", "codebook_size", "codes_used", "codebook_usage_pct",
                                            "perplexity")} for lv in metrics.get("levels") or []],
        "steps": history[-1]["step"] if history else 0, "epochs": len(history),
        "best_epoch": _best_epoch(run), "val_loss_rise": _val_loss_rise(history),
    }
    if preset == "v2-refit" and (run / "base" / "history.csv").is_file():
        record["steps"] += _history(run / "base")[-1]["step"]
    return record


def _history(run: Path) -> list[dict]:
    with open(run / "history.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [{k: (float(v) if v not in ("", None) else math.nan) for k, v in row.items()} for row in rows]


def _best_epoch(run: Path) -> int | None:
    import torch

    return torch.load(run / "best.pt", map_location="cpu", weights_only=True).get("epoch")


def _val_loss_rise(history: list[dict]) -> float:
    """Last validation reconstruction loss over its minimum, minus one (0 = ended at its best)."""
    losses = [row["val_loss"] for row in history if math.isfinite(row.get("val_loss", math.nan))]
    return round(losses[-1] / min(losses) - 1.0, 4) if losses and min(losses) > 0 else math.nan


def _fmt(value, digits=3, pct=False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.1f}%" if pct else f"{value:.{digits}f}"


def variant_table(records: list[dict], minutes: float, default_minutes: float) -> str:
    lines = [f"| preset | bits per pixel | test SSIM | SSIM in region | PSNR (dB) | codes used / usage | "
             f"perplexity | per level usage | steps | val loss rise | SSIM > {SSIM_THRESHOLD} and usage >= {USAGE_BAR:.0f}% |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        levels = ", ".join(f"{lv['name']} {_fmt(lv['codebook_usage_pct'], pct=True)}" for lv in r["levels"]
                           ) if len(r["levels"]) > 1 else "-"
        used = (all((lv["codebook_usage_pct"] or 0) >= USAGE_BAR for lv in r["levels"]) if r["levels"]
                else (r["usage_pct"] or 0) >= USAGE_BAR)
        ok = used and (r["ssim"] or 0) > SSIM_THRESHOLD
        lines.append(f"| {r['name']} | {_fmt(r['bits_per_pixel'], 4)} | {_fmt(r['ssim'])} | {_fmt(r['ssim_region'])} "
                     f"| {_fmt(r['psnr'], 2)} | {r['codes_used']} / {_fmt(r['usage_pct'], pct=True)} "
                     f"| {_fmt(r['perplexity'], 1)} | {levels} | {int(r['steps'])} | {_fmt(r['val_loss_rise'], 3)} "
                     f"| {'yes' if ok else 'NO'} |")
    note = (f"\nEach row: {minutes:g} CPU-minutes of training (`default`: {default_minutes:g}) at "
            "128x128 on ProstateX patient 0000, best.pt by validation reconstruction loss, scored on the 72 slices "
            "of unseen patient 0001. SSIM: MONAI SSIM, 11x11 Gaussian window, data range 1, whole slice; "
            "'in region': inside the unpadded region. Usage: share of each codebook used on the test split; "
            "per level for multi-level quantizers. Val loss rise: last validation MSE over its minimum, minus 1.")
    return "\n".join(lines) + "\n" + note


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--default-minutes", type=float, default=4.0)
    parser.add_argument("--presets", default=",".join(VARIANTS))
    parser.add_argument("--no-rd", action="store_true", help="skip the rate-distortion table")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "variants")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if not available():
        print(json.dumps({"bench": "variants", "skipped": "real scans (../shared/data/prostatex-dev) not available"}))
        return 0
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    root = import_prostatex(args.work / "prostatex")
    spatial = (64, 64) if args.quick else (128, 128)
    minutes = 0.05 if args.quick else args.minutes
    default_minutes = 0.05 if args.quick else args.default_minutes
    records = []
    for preset in [p for p in args.presets.split(",") if p]:
        budget = default_minutes if preset == "default" else minutes
        records.append(run_one(preset, preset, [], root, args.work, budget, spatial, args.seed))
        print(json.dumps({"bench": "variants", **records[-1]}), flush=True)
    text = "## Variant family (equal rate, equal budget)\n\n" + variant_table(records, minutes, default_minutes)
    if not args.no_rd:
        rd = []
        for name, overrides in RATE_FAMILY:
            found = [r for r in records if r["name"] == name]
            rd.append(found[0] if found else run_one(name, "default", overrides, root, args.work, default_minutes,
                                                     spatial, args.seed))
            print(json.dumps({"bench": "rate_distortion", **rd[-1]}), flush=True)
        text += "\n\n## Rate-distortion of `default`'s family\n\n" + variant_table(rd, default_minutes, default_minutes)
    (args.work / "variants.md").write_text(text + "\n", encoding="utf-8")
    print("\n" + text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    raise SystemExit(main())
