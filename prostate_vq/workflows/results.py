"""A sweep's results, read back from its folder: every finished (cell, seed), what is missing, mean +- sd over
seeds per cell, and paired differences against the reference cell (evaluation.stats). Everything is re-read from
the files, so `sweep --collect` and any later sweep over the same folder give the same table as the run that
trained them, whichever machines did the training."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prostate_vq.evaluation.stats import PairedDifference, mean_sd, paired_difference, unit_of
from prostate_vq.workflows.grid import Cell, Job

PAIRED_METRICS = ("ssim", "psnr", "dice")  # per-slice values in per_slice.csv, paired slice by slice
FOREGROUND = ("dice_body", "dice_bones", "dice_bladder", "dice_rectum", "dice_prostate")


@dataclass
class JobResult:
    job: Job
    metrics: dict
    slices: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> slice key -> value
    rows: list[dict] = field(default_factory=list)  # per_slice.csv's file, case, week, slice per slice


def _number(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def load_job(out: Path, job: Job) -> JobResult | None:
    """The evaluation of a finished job, or None (not trained, not evaluated, or unreadable)."""
    folder = job.folder(out) / "eval"
    try:
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        with open(folder / "per_slice.csv", newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, ValueError):
        return None
    if not isinstance(metrics, dict):
        return None
    slices: dict[str, dict[str, float]] = {m: {} for m in PAIRED_METRICS}
    for row in rows:
        key = slice_key(row)
        for metric in ("ssim", "psnr"):
            if metric in row:
                slices[metric][key] = _number(row[metric])
        for column in row:  # codec baselines: <codec>_ssim, <codec>_psnr
            codec, _, metric = column.rpartition("_")
            if codec and metric in ("ssim", "psnr") and codec in ((metrics.get("baselines") or {}).get("codecs") or {}):
                slices.setdefault(f"{codec}:{metric}", {})[key] = _number(row[column])
        dice = [_number(row[c]) for c in FOREGROUND if c in row]
        finite = [d for d in dice if math.isfinite(d)]
        if dice:
            slices["dice"][key] = float(np.mean(finite)) if finite else math.nan
    return JobResult(job, metrics, {m: v for m, v in slices.items() if v}, rows)


def slice_key(row: dict) -> str:
    """One test slice across jobs: its file and index (per_slice.csv's first columns)."""
    return f"{row.get('file', '')}#{row.get('slice', '')}"


def _units(rows: list[dict]) -> tuple[str, dict[str, str]]:
    """The resampling unit of these test slices and each slice key's unit."""
    unit, owners = unit_of(rows)
    return unit, {slice_key(r): owner for r, owner in zip(rows, owners)}


@dataclass
class SweepResults:
    cells: list[Cell]
    seeds: list[int]
    done: dict[str, dict[int, JobResult]]  # cell name -> seed -> result
    missing: list[str]

    def of(self, cell: Cell) -> dict[int, JobResult]:
        return self.done.get(cell.name, {})


def collect(out: Path, cells: list[Cell], seeds: list[int]) -> SweepResults:
    done: dict[str, dict[int, JobResult]] = {}
    missing = []
    for cell in cells:
        for seed in seeds:
            job = Job(cell, seed)
            result = load_job(out, job)
            if result is None:
                trained = (job.folder(out) / "run" / "best.pt").is_file()
                missing.append(f"{cell.name} seed {seed} ({'not evaluated' if trained else 'not trained'})")
            else:
                done.setdefault(cell.name, {})[seed] = result
    return SweepResults(cells, seeds, done, missing)


def over_seeds(results: dict[int, JobResult], key: str) -> tuple[float | None, float | None]:
    return mean_sd([r.metrics.get(key) for r in results.values()])


def level_usage(results: dict[int, JobResult]) -> list[tuple[str, float | None]]:
    """Mean usage per code level over seeds (level names from the first result)."""
    first = next(iter(results.values()), None)
    if first is None:
        return []
    names = [lv.get("name") for lv in first.metrics.get("levels") or []]
    out = []
    for i, name in enumerate(names):
        values = [
            (r.metrics.get("levels") or [{}] * len(names))[i].get("codebook_usage_pct")
            for r in results.values()
            if len(r.metrics.get("levels") or []) == len(names)
        ]
        out.append((name, mean_sd(values)[0]))
    return out


def paired(results: SweepResults, cell: Cell, reference: Cell, metric: str) -> PairedDifference | None:
    """Cell minus reference on the same test slices, matched seeds; None without per-slice values."""
    mine, theirs = results.of(cell), results.of(reference)
    if not mine or not theirs or metric not in next(iter(mine.values())).slices:
        return None
    rows = next(iter(theirs.values())).rows
    unit, units = _units(rows)
    return paired_difference(
        {s: r.slices.get(metric, {}) for s, r in mine.items()},
        {s: r.slices.get(metric, {}) for s, r in theirs.items()},
        units,
        unit,
    )


def best_codec(results: dict[int, JobResult]) -> str | None:
    """The best codec at the cell's rate (the same for every seed: codecs do not depend on the model's weights,
    only on its rate), from the first seed's metrics.json."""
    first = next(iter(results.values()), None)
    return ((first.metrics.get("baselines") or {}).get("best")) if first else None


def versus_codec(results: dict[int, JobResult], metric: str = "ssim") -> PairedDifference | None:
    """Ours minus the best codec at the same rate on the same slices, every seed paired with the codec."""
    codec = best_codec(results)
    if codec is None or not results:
        return None
    first = next(iter(results.values()))
    unit, units = _units(first.rows)
    return paired_difference(
        {s: r.slices.get(metric, {}) for s, r in results.items()},
        {s: r.slices.get(f"{codec}:{metric}", {}) for s, r in results.items()},
        units,
        unit,
    )


def reference_for(cell: Cell, cells: list[Cell], reference: str | None) -> Cell | None:
    """The cell a cell is compared with: `reference` names a cell, or a preset (its cell with the same grid
    values); None for the reference itself or when nothing matches."""
    if not reference:
        return None
    by_name = {c.name: c for c in cells}
    target = by_name.get(reference)
    if target is None:
        target = next((c for c in cells if c.preset == reference and c.values == cell.values), None)
    return None if target is None or target.name == cell.name else target
