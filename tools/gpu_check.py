"""The prepared GPU check (issue 20): every CUDA path of prostate-vq in one run of under 8 minutes on one GPU,
results in one JSON file. Run through ``tools/gpu_check.sh`` (``--dry-run``: the same steps on the CPU at tiny
sizes, which the test suite does so that the script cannot rot).

Steps (each records status ok / fail / skipped, seconds and its figures; a failing step never stops the rest):
  1. cuda_tests     pytest -m cuda (tests that skip without CUDA)
  2. demo           `demo` for 1 minute on CUDA, then the same with --compile
  3. bf16_vs_fp32   default, fsq, v3-ema: 200 steps under bf16 autocast and in fp32 from the same seed; codebook
                    usage within USAGE_TOL percentage points and final training loss within LOSS_TOL (relative)
  4. torchrun       torchrun --nproc_per_node=1 (NCCL on CUDA, gloo on the CPU) for 1 epoch; the prior trained
                    and sampled on the device
  5. benchmark      tools/benchmark.py --only train nearest (ours vs MONAI's VQVAE at 256x128, batch 32; nearest
                    code at K = 512 / 8,192), the largest batch of `default` that fits and its peak memory
  6. early_stop     `default` on a HipMRI-sized phantom (11,460 train slices at 256x128) in the time left
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
USAGE_TOL, LOSS_TOL = 10.0, 0.15  # bf16 vs fp32 after 200 steps: codebook usage (points), training loss (relative)
TINY = ["model.channels=[8,16]", "model.res_channels=8", "model.embedding_dim=16", "quantizer.codebook_size=32"]
BUDGET_SECONDS = 8 * 60


class Check:
    def __init__(self, out: Path, dry_run: bool, device: str):
        self.out, self.dry, self.device = out, dry_run, device
        self.work = out / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        self.results: dict = {"dry_run": dry_run, "device": device, "steps": []}

    def left(self) -> float:
        return BUDGET_SECONDS - (time.monotonic() - self.started)

    def step(self, name: str, fn) -> None:
        start = time.monotonic()
        record: dict = {"name": name}
        try:
            figures = fn() or {}
            record.update(status=figures.pop("status", "ok"), **figures)
        except Exception as error:  # a failing step is a result, and the next steps still run
            record.update(
                status="fail", error=f"{type(error).__name__}: {error}"[:2000], traceback=traceback.format_exc()[-3000:]
            )
        record["seconds"] = round(time.monotonic() - start, 1)
        self.results["steps"].append(record)
        print(json.dumps({k: v for k, v in record.items() if k != "traceback"}), flush=True)
        self.write()

    def write(self) -> None:
        from prostate_vq.files import write_json_atomic

        write_json_atomic(self.out / "gpu_check.json", self.results, indent=2)


def environment(device: str) -> dict:
    import monai
    import torch

    info = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "monai": monai.__version__,
        "cuda_available": torch.cuda.is_available(),
        "python": sys.version.split()[0],
    }
    if torch.cuda.is_available():
        info.update(
            gpu=torch.cuda.get_device_name(0),
            bf16=torch.cuda.is_bf16_supported(),
            gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
        )
    return info


def run(args: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=max(10.0, timeout),
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def tail(text: str, n: int = 1500) -> str:
    return (text or "")[-n:]


# --- the steps ---------------------------------------------------------------------------------------------


def cuda_tests(c: Check) -> dict:
    proc = run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests"], 180)
    summary = (proc.stdout.strip().splitlines() or [""])[-1]
    if proc.returncode == 0 and "skipped" in summary and "passed" not in summary:
        return {"status": "skipped", "summary": summary}
    return {"status": "ok" if proc.returncode == 0 else "fail", "summary": summary, "output": tail(proc.stdout)}


def phantom(c: Check, name: str = "phantom") -> Path:
    from prostate_vq.data.phantom import synthesize

    root = c.work / name
    if not root.is_dir():
        synthesize(root, cases=4, seed=0, slices_per_volume=6 if c.dry else 24, weeks=1 if c.dry else 2)
    return root


def demo_runs(c: Check) -> dict:
    from prostate_vq.workflows import demo

    figures = {}
    sizes = dict(spatial_size=(64, 32), max_slices=8, overrides=TINY, data=phantom(c)) if c.dry else {}
    for label, compile_ in (("plain", False), ("compile", True)):
        if compile_ and c.dry:
            figures[label] = "skipped in the dry run (torch.compile on the CPU takes minutes)"
            continue
        start = time.monotonic()
        report = demo(
            out=c.work / f"demo-{label}",
            minutes=0.05 if c.dry else 1.0,
            device=c.device,
            progress=False,
            compile=compile_,
            **sizes,
        )
        metrics = json.loads((report.parent / "eval" / "metrics.json").read_text(encoding="utf-8"))
        figures[label] = {
            "seconds": round(time.monotonic() - start, 1),
            "ssim": metrics.get("ssim_mean"),
            "usage_pct": metrics.get("codebook_usage_pct"),
            "steps": metrics.get("run_steps"),
        }
    return figures


@contextlib.contextmanager
def precision(value: str):
    old = os.environ.get("PROSTATE_VQ_PRECISION")
    os.environ["PROSTATE_VQ_PRECISION"] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PROSTATE_VQ_PRECISION", None)
        else:
            os.environ["PROSTATE_VQ_PRECISION"] = old


def bf16_vs_fp32(c: Check) -> dict:
    import csv

    from prostate_vq.training import RunRequest, TrainOptions, train

    root = phantom(c)
    steps = 4 if c.dry else 200
    figures, ok = {}, True
    for preset in ("default", "fsq", "v3-ema"):
        row = {}
        for mode in ("bf16", "fp32"):
            overrides = [o for o in TINY if preset != "fsq" or "codebook_size" not in o] if c.dry else []
            with precision(mode):
                run_dir = train(
                    TrainOptions(out=c.work / f"amp-{preset}-{mode}", data=root, device=c.device, progress=False),
                    RunRequest(
                        preset=preset,
                        max_steps=steps,
                        epochs=10_000,
                        seed=0,
                        spatial_size=(64, 32) if c.dry else (128, 128),
                        overrides=overrides,
                    ),
                )
            with open(run_dir / "history.csv", newline="", encoding="utf-8") as handle:
                last = list(csv.DictReader(handle))[-1]
            row[mode] = {
                "train_loss": float(last["train_loss"]),
                "usage_pct": float(last["codebook_usage_pct"]),
                "val_ssim": float(last["val_ssim"] or "nan"),
            }
        usage_gap = abs(row["bf16"]["usage_pct"] - row["fp32"]["usage_pct"])
        loss_gap = abs(row["bf16"]["train_loss"] - row["fp32"]["train_loss"]) / max(1e-12, row["fp32"]["train_loss"])
        row["within_tolerance"] = bool(usage_gap <= USAGE_TOL and loss_gap <= LOSS_TOL)
        ok = ok and (row["within_tolerance"] or c.dry)
        figures[preset] = row
    return {"status": "ok" if ok else "fail", "steps": steps, "tolerance": {"usage_pct": USAGE_TOL, "loss": LOSS_TOL}, **figures}


def torchrun_and_prior(c: Check) -> dict:
    root = phantom(c)
    run_dir = c.work / "torchrun"
    size = ["--spatial-size", "64", "32"] if c.dry else ["--spatial-size", "128", "128"]
    tiny = ["--set", *TINY] if c.dry else []
    proc = run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=1",
            "-m",
            "prostate_vq",
            "train",
            "--data",
            str(root),
            "--out",
            str(run_dir),
            "--epochs",
            "1",
            "--device",
            c.device,
            "--no-progress",
            *size,
            *tiny,
        ],
        min(240, c.left()),
        {"OMP_NUM_THREADS": "1"},
    )
    figures = {"torchrun_rc": proc.returncode, "backend": "nccl" if c.device.startswith("cuda") else "gloo"}
    if proc.returncode != 0:
        return {"status": "fail", **figures, "output": tail(proc.stderr)}
    sync = (
        json.loads((run_dir / "distributed.json").read_text(encoding="utf-8")) if (run_dir / "distributed.json").is_file() else {}
    )
    figures["state_in_sync"] = sync.get("state_in_sync")
    prior = run(
        [
            sys.executable,
            "-m",
            "prostate_vq",
            "train-prior",
            "--checkpoint",
            str(run_dir / "best.pt"),
            "--data",
            str(root),
            "--out",
            str(c.work / "prior"),
            "--epochs",
            "1",
            "--device",
            c.device,
            "--no-progress",
        ],
        min(180, c.left()),
    )
    figures["prior_rc"] = prior.returncode
    if prior.returncode != 0:
        return {"status": "fail", **figures, "output": tail(prior.stderr)}
    sample = run(
        [
            sys.executable,
            "-m",
            "prostate_vq",
            "sample",
            "--prior",
            str(c.work / "prior" / "best.pt"),
            "--n",
            "4",
            "--out",
            str(c.work / "samples"),
            "--device",
            c.device,
        ],
        min(120, c.left()),
    )
    figures["sample_rc"] = sample.returncode
    return {
        "status": "ok" if sample.returncode == 0 else "fail",
        **figures,
        **({} if sample.returncode == 0 else {"output": tail(sample.stderr)}),
    }


def largest_batch(c: Check) -> dict:
    """Doubling batches of `default` at 256x128 (one optimizer step each) until the allocator refuses."""
    import torch

    sys.path.insert(0, str(ROOT / "tools"))
    from benchmark import ours_model, step_fn

    device = torch.device(c.device)
    model = ours_model("default").to(device)
    step = step_fn(model, False, device)
    size, best, peak = 32, None, None
    cap = 64 if c.dry else 8192
    while size <= cap:
        try:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            x = torch.rand(size, 1, 32 if c.dry else 256, 16 if c.dry else 128, device=device)
            step(x)
            best = size
            peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
            size *= 2
        except torch.OutOfMemoryError:
            break
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return {"largest_batch": best, "peak_memory_mib": None if peak is None else round(peak)}


def benchmark(c: Check) -> dict:
    out = c.work / "benchmark.json"
    args = [sys.executable, "tools/benchmark.py", "--only", "train", "nearest", "--device", c.device, "--out", str(out)]
    proc = run(args + (["--quick"] if c.dry else []), min(300, c.left()))
    figures = {"rc": proc.returncode}
    if out.is_file():
        figures["records"] = json.loads(out.read_text(encoding="utf-8"))
    figures.update(largest_batch(c))
    return {
        "status": "ok" if proc.returncode == 0 else "fail",
        **figures,
        **({} if proc.returncode == 0 else {"output": tail(proc.stderr)}),
    }


def hipmri_sized(c: Check) -> Path:
    """Train split of HipMRI's size (11,460 slices in 60-slice volumes, 8 weeks per case), small validate/test."""
    from prostate_vq.data.layout import SPLITS, image_dir, mask_dir
    from prostate_vq.data.phantom import quirks, write_volumes

    root = c.work / "hipmri-sized"
    if (root / ".complete").is_file():
        return root
    n_train, per_volume = (24, 6) if c.dry else (11_460, 60)
    volumes = math.ceil(n_train / per_volume)
    plan = [("train", f"{1 + v // 8:03d}", v % 8) for v in range(volumes)]
    plan += [("validate", "901", 0), ("validate", "902", 0), ("test", "903", 0)]
    for split in SPLITS:
        image_dir(root, split).mkdir(parents=True, exist_ok=True)
        mask_dir(root, split).mkdir(parents=True, exist_ok=True)
    write_volumes(root, plan, 0, per_volume, quirks(0, 8))
    (root / ".complete").write_text("ok\n", encoding="utf-8")
    return root


def early_stop(c: Check) -> dict:
    import csv

    from prostate_vq.runtime.checkpoints import load_checkpoint
    from prostate_vq.training import RunRequest, TrainOptions, train

    start = time.monotonic()
    root = hipmri_sized(c)
    synth = time.monotonic() - start
    minutes = max(0.5, (c.left() - 45) / 60) if not c.dry else 0.1
    run_dir = train(
        TrainOptions(
            out=c.work / "early-stop",
            data=root,
            device=c.device,
            max_minutes=minutes,
            progress=False,
            num_workers=0 if c.dry else 4,
        ),
        RunRequest(preset="default", **({"spatial_size": (32, 16), "overrides": TINY, "max_steps": 6} if c.dry else {})),
    )
    last = load_checkpoint(run_dir / "last.pt", kind="resume")
    with open(run_dir / "history.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {
        "synth_seconds": round(synth, 1),
        "budget_minutes": round(minutes, 2),
        "stop_reason": last.get("stop_reason"),
        "epochs": len(rows),
        "steps": int(rows[-1]["step"]),
        "best_epoch": last.get("best_epoch"),
        "best_val_ssim": max(float(r["val_ssim"] or "nan") for r in rows),
        "train_seconds": round(sum(float(r["seconds"]) for r in rows), 1),
        "early_stopped": last.get("stop_reason") == "early_stopping",
    }


STEPS = [
    ("cuda_tests", cuda_tests),
    ("demo", demo_runs),
    ("bf16_vs_fp32", bf16_vs_fp32),
    ("torchrun", torchrun_and_prior),
    ("benchmark", benchmark),
    ("early_stop", early_stop),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at tiny sizes")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "gpu_check")
    parser.add_argument("--only", nargs="*", choices=[name for name, _ in STEPS], default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    import torch

    device = "cpu" if args.dry_run else "cuda"
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (use --dry-run to exercise the steps on the CPU)", file=sys.stderr)
        return 2
    if args.dry_run:
        os.environ["PROSTATE_VQ_PRECISION"] = os.environ.get("PROSTATE_VQ_PRECISION", "auto")
    check = Check(args.out, args.dry_run, device)
    check.results["environment"] = environment(device)
    for name, fn in STEPS:
        if args.only is None or name in args.only:
            check.step(name, lambda fn=fn: fn(check))
    failed = [s["name"] for s in check.results["steps"] if s["status"] == "fail"]
    check.results["failed"] = failed
    check.results["seconds"] = round(time.monotonic() - check.started, 1)
    check.write()
    print(
        f"gpu_check: {len(check.results['steps'])} steps, {len(failed)} failed ({', '.join(failed) or 'none'}); "
        f"{check.results['seconds']} s; results in {args.out / 'gpu_check.json'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
