"""Data pipeline benchmark: phantom of HipMRI train-split size, first (caching) pass, cached passes.

Prints one JSON line per measurement. The issue's targets: the 11,460-slice train split cached in
<= 1.5 GB resident, and a cached pass at >= 2,000 slices/s on 2 CPU cores (DataLoader, batch 32).

    python tools/bench_data.py                  # full size (a few minutes: most of it writing the phantom)
    python tools/bench_data.py --slices 600     # quick check
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import tempfile
import time
from pathlib import Path

HIPMRI_TRAIN_SLICES = 11_460
SLICES_PER_VOLUME, WEEKS = 60, 8  # HipMRI: 60 slices per volume, weeks 0-7


def rss_bytes() -> int:
    """Current resident set size (Linux /proc; falls back to the peak on other systems)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write_train_phantom(root: Path, n_slices: int, seed: int = 0) -> float:
    """Only the train split, 60-slice volumes like HipMRI; returns seconds spent."""
    from prostate_vq.data.layout import image_dir, mask_dir
    from prostate_vq.data.phantom import quirks, write_volumes

    start = time.perf_counter()
    volumes = math.ceil(n_slices / SLICES_PER_VOLUME)
    plan = [("train", f"{1 + v // WEEKS:03d}", v % WEEKS) for v in range(volumes)]
    image_dir(root, "train").mkdir(parents=True)
    mask_dir(root, "train").mkdir(parents=True)
    write_volumes(root, plan, seed, SLICES_PER_VOLUME, quirks(len(plan), WEEKS))
    return time.perf_counter() - start


def _epoch(loader) -> tuple[int, float]:
    start, seen = time.perf_counter(), 0
    for batch in loader:
        seen += batch["image"].shape[0]
    return seen, time.perf_counter() - start


def measure_data_pipeline(
    n_slices: int = HIPMRI_TRAIN_SLICES,
    batch_size: int = 32,
    root: str | Path | None = None,
    task: str = "joint",
    threads: int = 2,
    workers: tuple[int, ...] = (0, 2),
    augment: bool = True,
    emit=None,
) -> dict:
    """Measure caching and loading on ``n_slices`` phantom slices (generated in a temporary folder unless
    ``root`` is given). Returns a dict of figures; ``emit`` is called with each JSON-ready record."""
    import torch

    from prostate_vq.data import BatchAugment, make_dataset, make_loader

    torch.set_num_threads(threads)
    emit = emit or (lambda record: None)
    results: dict = {
        "slices": n_slices,
        "batch_size": batch_size,
        "task": task,
        "torch_threads": threads,
        "cpu_count": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory(prefix="pvq-bench-") as tmp:
        if root is None:
            root = Path(tmp) / "phantom"
            seconds = write_train_phantom(root, n_slices)
            emit({"step": "phantom", "slices": n_slices, "seconds": round(seconds, 1)})
            results["phantom_seconds"] = seconds
        rss_before = rss_bytes()
        start = time.perf_counter()
        ds = make_dataset(root, "train", task, max_slices=n_slices)
        first = time.perf_counter() - start
        rss_delta = rss_bytes() - rss_before
        record = {
            "step": "first_pass_cache",
            "slices": len(ds),
            "seconds": round(first, 2),
            "slices_per_s": round(len(ds) / first),
            "cache_mb": round(ds.cache_nbytes() / 2**20),
            "rss_delta_mb": round(rss_delta / 2**20),
            "rss_total_mb": round(rss_bytes() / 2**20),
        }
        emit(record)
        results.update(
            first_pass_slices_per_s=record["slices_per_s"],
            cache_mb=record["cache_mb"],
            rss_delta_mb=record["rss_delta_mb"],
            rss_total_mb=record["rss_total_mb"],
        )
        for augmented in (False, True) if augment else (False,):
            ds.augment = BatchAugment() if augmented else None
            for num_workers in workers:
                loader = make_loader(ds, batch_size, shuffle=True, num_workers=num_workers, seed=0)
                _epoch(loader) if num_workers else None  # start the workers once, outside the timing
                seen, seconds = _epoch(loader)
                name = f"cached_pass{'_augmented' if augmented else ''}_workers{num_workers}"
                emit({"step": name, "slices": seen, "seconds": round(seconds, 2), "slices_per_s": round(seen / seconds)})
                results[f"{name}_slices_per_s"] = round(seen / seconds)
                del loader
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=HIPMRI_TRAIN_SLICES)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--data", type=Path, default=None, help="use this HipMRI root instead of a phantom")
    parser.add_argument("--task", default="joint", choices=("image", "mask", "joint"))
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the target is for 2 cores)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts to time")
    parser.add_argument("--no-augment", action="store_true")
    args = parser.parse_args(argv)
    summary = measure_data_pipeline(
        args.slices,
        args.batch_size,
        root=args.data,
        task=args.task,
        threads=args.threads,
        workers=tuple(args.workers),
        augment=not args.no_augment,
        emit=lambda record: print(json.dumps(record), flush=True),
    )
    print(json.dumps({"step": "summary", **summary}), flush=True)


if __name__ == "__main__":
    main()
