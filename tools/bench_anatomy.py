"""Real anatomy for the mask and joint tasks: `default` on the transverse T2 of the two ProstateX dev patients with
their PI-CAI whole-gland masks (HipMRI class 5), through the documented `prostate-vq sweep` command, one sweep per
task (image, mask, joint) at equal steps and seeds, and the prostate Dice of each job under the three conventions.

Data (imported from ``../shared/data/prostatex-dev`` with `prostate_vq.data.import_volume(..., seg=...)`, never
copied into the repo; CC BY 3.0 scans, CC BY-NC 4.0 masks, see their README):

  forward  train ProstateX-0000 t2-tra (19 slices, gland on 11); validate the same series again (case 0000v: the
           training patient has no other masked series, so selection sees training anatomy only, never the test
           patient); test ProstateX-0001 t2-tra-a and t2-tra-b (38 slices, two acquisitions of one grid and mask)
  reverse  train ProstateX-0001 t2-tra-a; validate its t2-tra-b (case 0001v); test ProstateX-0000 t2-tra

Prints, per task, the sweep table and a JSON line with the per-seed prostate Dice (per slice, MONAI
`DiceMetric(ignore_empty=True)`, case 3D) and SSIM; the joint task's SSIM is set beside the image-only model's.
Targets (issue 21): joint prostate Dice (case 3D) >= 0.85 on the unseen patient at <= 0.5625 bpp, its SSIM within
0.02 of the image-only model. Without ``../shared`` it prints one "skipped" line and exits 0.

Usage:  python tools/bench_anatomy.py [--direction forward|reverse] [--tasks image,mask,joint] [--steps 300]
        [--seeds 0,1,2] [--preset default] [--work benchmarks/anatomy]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prostatex import SHARED

ROOT = Path(__file__).resolve().parents[1]
# (series, mask, case, split, week) per direction; the masks share their series' grid.
PLANS = {
    "forward": [
        ("ProstateX-0000/t2-tra", "ProstateX-0000/masks/t2-tra_seg_hipmri.nii.gz", "0000", "train", 0),
        ("ProstateX-0000/t2-tra", "ProstateX-0000/masks/t2-tra_seg_hipmri.nii.gz", "0000v", "validate", 0),
        ("ProstateX-0001/t2-tra-a", "ProstateX-0001/masks/t2-tra-a_seg_hipmri.nii.gz", "0001", "test", 0),
        ("ProstateX-0001/t2-tra-b", "ProstateX-0001/masks/t2-tra-b_seg_hipmri.nii.gz", "0001", "test", 1),
    ],
    "reverse": [
        ("ProstateX-0001/t2-tra-a", "ProstateX-0001/masks/t2-tra-a_seg_hipmri.nii.gz", "0001", "train", 0),
        ("ProstateX-0001/t2-tra-b", "ProstateX-0001/masks/t2-tra-b_seg_hipmri.nii.gz", "0001v", "validate", 0),
        ("ProstateX-0000/t2-tra", "ProstateX-0000/masks/t2-tra_seg_hipmri.nii.gz", "0000", "test", 0),
    ],
}
CODECS = "webp,avif,jpeg2000,jpeg"
DICE_KEYS = ("dice_prostate_per_slice", "dice_prostate_monai", "dice_prostate_case3d")


def available(shared: Path = SHARED) -> bool:
    return all((shared / series).is_dir() and (shared / mask).is_file() for plan in PLANS.values() for series, mask, *_ in plan)


def import_masked(root: Path, direction: str, shared: Path = SHARED) -> Path:
    """Import the plan of ``direction`` into ``root`` once (a complete import is reused)."""
    from prostate_vq.data import import_volume

    marker = root / ".complete"
    if marker.is_file():
        return root
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for series, mask, case, split, week in PLANS[direction]:
            import_volume(shared / series, root, case=case, split=split, week=week, seg=shared / mask)
    marker.write_text(
        "\n".join(f"{s} + {m} -> {sp} case {c} week {w}" for s, m, c, sp, w in PLANS[direction]) + "\n", encoding="utf-8"
    )
    return root


def per_seed(sweep: Path, preset: str, keys: tuple[str, ...]) -> dict:
    """{key: {seed: value}} from every finished job's metrics.json."""
    out: dict = {key: {} for key in keys}
    for metrics in sorted((sweep / preset).glob("seed*/eval/metrics.json")):
        m = json.loads(metrics.read_text(encoding="utf-8"))
        for key in keys:
            out[key][metrics.parent.parent.name] = m.get(key)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--direction", choices=list(PLANS), default="forward")
    parser.add_argument("--tasks", default="image,mask,joint")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "anatomy")
    args = parser.parse_args()
    if not available():
        print(json.dumps({"bench": "anatomy", "skipped": "real scans and masks (../shared/data/prostatex-dev) not available"}))
        return 0
    import torch

    from prostate_vq.cli import main as cli

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
    work = args.work / args.direction
    root = import_masked(work / "data", args.direction)
    summary = {}
    for task in args.tasks.split(","):
        out = work / task
        command = [
            "sweep",
            "--data",
            str(root),
            "--out",
            str(out),
            "--presets",
            args.preset,
            "--task",
            task,
            "--seeds",
            args.seeds,
            "--max-steps",
            str(args.steps),
            "--spatial-size",
            "128",
            "128",
            "--device",
            "cpu",
        ] + (["--codecs", CODECS] if task != "mask" else [])
        print("$ prostate-vq " + shlex.join(command), flush=True)
        if cli(command):
            return 1
        keys = (DICE_KEYS if task != "image" else ()) + (("ssim_mean", "psnr_mean") if task != "mask" else ())
        summary[task] = per_seed(out, args.preset, keys)
        print((out / "report.md").read_text(encoding="utf-8").split("## Aim")[0])
    print(
        json.dumps(
            {
                "bench": "anatomy",
                "direction": args.direction,
                "preset": args.preset,
                "steps": args.steps,
                "seeds": args.seeds,
                "spatial_size": [128, 128],
                "per_seed": summary,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    raise SystemExit(main())
