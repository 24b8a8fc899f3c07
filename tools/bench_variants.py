"""The variant family on real scans, through the documented command: `prostate-vq sweep` at equal optimizer steps,
three seeds, paired intervals against `v1-vq` (the benchmark is the command: same budget, schedule and code path).

Data: the two ProstateX patients in ``../shared/data/prostatex-dev``, imported and split by patient as
``tools/prostatex.py`` describes (train 38 slices of patient 0000, validate 15 slices of it in another plane,
test 72 slices of patient 0001 in four series). Without ``../shared`` the benchmark prints one "skipped" line
and exits 0.

Parts (``--part``, several allowed):
  family   every variant preset under the family recipe, and MONAI's stock VQVAE under the same recipe
           (`monai-stock`), --reference v1-vq
  default  `default` in a table of its own (its own recipe: lr 2e-3, 0.3 x (1 - SSIM), augmentation), the same steps
           and seeds (`monai-stock-default-recipe` is MONAI's stock VQVAE under that recipe, for a longer run:
           it trains about 10x slower per step on the CPU)
  rd       rate-distortion of `default`: --grid model.downsample=8,4,2 (about 0.14, 0.56, 2.25 bits per pixel)
  mri      `default` with MONAI's MRI augmentation (training.mri_augment: bias field, Gibbs ringing, Rician noise,
           lower resolution); paired against the `default` part's jobs (same seeds and slices) when they exist
  decoder  `default` with nearest x2 + 3x3 upsampling instead of transposed convolutions and replicate padding at
           the slice edge (where its largest errors sat); paired against `default` like mri
  padding  `default` with reflect padding alone (model.padding_mode=reflect; the decoder part changed upsampling too):
           whether the border ring, a quarter of the squared error, is the padding's; paired against `default`
  loss     `default` with a lighter SSIM term (training.ssim_weight=0.3 beside MSE): whether MSE's larger share buys
           PSNR (where `default` trails the codecs most) without giving up its SSIM; paired against `default`
  loss-light  the same with training.ssim_weight=0.1 (the family recipe's weight)

Each part is one sweep command, printed before it runs, into WORK/<part>; re-running reuses finished jobs.
Targets (issue 19): every family variant SSIM > 0.6 and usage >= 10% in every seed.

Usage:  python tools/bench_variants.py [--part family] [--steps 300] [--seeds 0,1,2] [--work benchmarks/variants]
        [--direction reverse]   (leave-one-patient-out the other way: train 0001, test 0000; into WORK/reverse)
        [--quick]   (every path at 64x64 for a few steps: a smoke test of the benchmark, not a result)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prostatex import available, import_prostatex

from prostate_vq.evaluation.metrics import SSIM_THRESHOLD  # the brief's bar

ROOT = Path(__file__).resolve().parents[1]
FAMILY = ["v1-vq", "v2-refit", "v3-ema", "l2-codes", "entropy", "soft", "fsq", "lfq", "v4-rq", "vqvae2", "monai-stock"]
PARTS = {
    "family": {"presets": FAMILY, "reference": "v1-vq", "grid": []},
    "default": {"presets": ["default"], "reference": None, "grid": []},
    "rd": {"presets": ["default"], "reference": "default__downsample=4", "grid": ["model.downsample=8,4,2"]},
    "mri": {"presets": ["default"], "reference": None, "grid": ["training.mri_augment=true"]},
    "decoder": {"presets": ["default"], "reference": None, "grid": ["model.upsample=nearest", "model.padding_mode=replicate"]},
    "padding": {"presets": ["default"], "reference": None, "grid": ["model.padding_mode=reflect"]},
    "loss": {"presets": ["default"], "reference": None, "grid": ["training.ssim_weight=0.3"]},
    "loss-light": {"presets": ["default"], "reference": None, "grid": ["training.ssim_weight=0.1"]},
}
VERSUS_DEFAULT = (
    "mri",
    "decoder",
    "padding",
    "loss",
    "loss-light",
)  # one change to `default` each: paired against the default part's jobs
USAGE_BAR = 10.0
CODECS = "webp,avif,jpeg2000,jpeg"  # every job is also compared with these codecs at its own rate


def sweep_command(part: str, root: Path, work: Path, steps: int, seeds: str, spatial: tuple[int, int]) -> list[str]:
    spec = PARTS[part]
    args = [
        "sweep",
        "--data",
        str(root),
        "--out",
        str(work / part),
        "--presets",
        ",".join(spec["presets"]),
        "--seeds",
        seeds,
        "--max-steps",
        str(steps),
        "--spatial-size",
        *map(str, spatial),
        "--device",
        "cpu",
        "--codecs",
        CODECS,
    ]
    if spec["reference"]:
        args += ["--reference", spec["reference"]]
    for axis in spec["grid"]:
        args += ["--grid", axis]
    return args


def check_targets(results: dict) -> list[str]:
    """Every seed of every cell: SSIM above the bar and every level's usage at least 10%."""
    failures = []
    for cell in results["cells"]:
        for seed, ssim in cell["ssim_mean"]["per_seed"].items():
            usage = cell["joint_usage_pct"]["per_seed"].get(seed)
            if ssim is None or ssim <= SSIM_THRESHOLD or usage is None or usage < USAGE_BAR:
                failures.append(f"{cell['name']} seed {seed}: SSIM {ssim}, usage {usage}")
        for level, usage in (cell.get("levels_usage_pct") or {}).items():
            if usage is not None and usage < USAGE_BAR:
                failures.append(f"{cell['name']} level {level}: usage {usage:.1f}%")
    return failures


def versus_default(work: Path, part: str) -> dict:
    """The part's one change minus `default`, paired over the same seeds and test slices (two sweep folders)."""
    from prostate_vq.workflows.grid import Cell
    from prostate_vq.workflows.results import SweepResults, collect, paired
    from prostate_vq.workflows.sweep import _read_settings

    found = {}
    for name in ("default", part):
        settings = _read_settings(work / name)
        cell = Cell.from_dict(settings["cells"][0])
        found[name] = (cell, collect(work / name, [cell], settings["seeds"]).of(cell))
    both = SweepResults([found[part][0], found["default"][0]], [], {c.name: r for c, r in found.values()}, [])
    differences = {m: paired(both, found[part][0], found["default"][0], m) for m in ("ssim", "psnr")}
    return {m: d.to_dict() if d is not None else None for m, d in differences.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", action="append", choices=list(PARTS), default=None)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "variants")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--direction",
        choices=["forward", "reverse"],
        default="forward",
        help="leave-one-patient-out: forward tests on 0001, reverse trains on 0001 and tests on 0000",
    )
    args = parser.parse_args()
    if not available():
        print(json.dumps({"bench": "variants", "skipped": "real scans (../shared/data/prostatex-dev) not available"}))
        return 0
    import torch

    from prostate_vq.cli import main as cli

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
    suffix = "" if args.direction == "forward" else "-reverse"
    root = import_prostatex(args.work / f"prostatex{suffix}", direction=args.direction)
    spatial = (64, 64) if args.quick else (128, 128)
    steps = 4 if args.quick else args.steps
    work = args.work / "quick" if args.quick else args.work
    work = work / "reverse" if args.direction == "reverse" else work
    status = 0
    for part in args.part or ["family"]:
        command = sweep_command(part, root, work, steps, "0" if args.quick else args.seeds, spatial)
        print("$ prostate-vq " + shlex.join(command), flush=True)
        start = time.monotonic()
        code = cli(command)
        minutes = (time.monotonic() - start) / 60
        if code:
            return code
        results = json.loads((work / part / "results.json").read_text(encoding="utf-8"))
        failures = check_targets(results) if part == "family" else []
        print(
            json.dumps(
                {
                    "bench": f"variants-{part}",
                    "wall_minutes": round(minutes, 1),
                    "steps": steps,
                    "seeds": args.seeds,
                    "spatial_size": list(spatial),
                    "missing": results["missing"],
                    "target_failures": failures,
                }
            ),
            flush=True,
        )
        print((work / part / "report.md").read_text(encoding="utf-8").split("## Aim")[0])
        if part in VERSUS_DEFAULT and (work / "default" / "sweep.json").is_file():
            print(json.dumps({"bench": f"variants-{part}-vs-default", **versus_default(work, part)}), flush=True)
        status = status or (1 if failures and not args.quick else 0)
    return status


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    raise SystemExit(main())
