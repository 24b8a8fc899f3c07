"""The sweep's tables: one row per cell with mean +- sd over seeds, the rate (nominal and effective) and the
budget beside every score, and the paired difference against the reference with its 95% interval; a study's
table is shaped like its reference table. Also the same numbers as plain data (results.json)."""

from __future__ import annotations

import math

from prostate_vq.evaluation.metrics import SSIM_THRESHOLD
from prostate_vq.reporting.tables import md_escape, md_table
from prostate_vq.workflows.grid import Cell
from prostate_vq.workflows.results import (
    SweepResults,
    best_codec,
    level_usage,
    over_seeds,
    paired,
    reference_for,
    versus_codec,
)

SCORES = {"ssim": ("ssim_mean", "SSIM", 3), "psnr": ("psnr_mean", "PSNR (dB)", 2), "dice": ("dice_mean", "Dice", 4)}


def _fmt(value, digits=3, pct=False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{100 * value:.2f}" if pct else f"{value:.{digits}f}"


def mean_sd_text(mean, sd, digits=3, scale=1.0) -> str:
    if mean is None:
        return "-"
    text = f"{scale * mean:.{digits}f}"
    return text + (f" ± {scale * sd:.{digits}f}" if sd is not None else "")


def delta_text(diff, digits=3, scale=1.0) -> str:
    if diff is None or diff.mean is None:
        return "-"
    text = f"{scale * diff.mean:+.{digits}f}"
    if diff.ci95 is None:
        return text + " (no interval)"
    lo, hi = (scale * v for v in diff.ci95)
    return text + f" [{lo:+.{digits}f}, {hi:+.{digits}f}]" + (" *" if diff.significant else "")


def _has(results: SweepResults, key: str) -> bool:
    return any(r.metrics.get(key) is not None for per_seed in results.done.values() for r in per_seed.values())


def _usage_cells(per_seed) -> tuple[str, str]:
    joint = mean_sd_text(*over_seeds(per_seed, "joint_usage_pct"), digits=1)
    levels = level_usage(per_seed)
    per_level = ", ".join(f"{name} {_fmt(u, 1)}%" for name, u in levels) if len(levels) > 1 else "-"
    return joint + "%" if joint != "-" else joint, per_level


def _rate_cell(per_seed) -> str:
    nominal = over_seeds(per_seed, "bits_per_pixel")[0]
    effective = over_seeds(per_seed, "effective_bits_per_pixel")[0]
    return f"{_fmt(nominal, 4)} / {_fmt(effective, 3)}"


def _steps_cell(per_seed) -> str:
    """Optimizer steps of the runs (one number when equal) and their epochs."""

    def distinct(key):
        values = sorted({r.metrics.get(key) for r in per_seed.values()}, key=lambda s: (s is None, s))
        return "/".join("-" if v is None else str(int(v)) for v in values)

    return f"{distinct('run_steps')} ({distinct('run_epochs')} ep.)"


def _units(results: SweepResults, reference: str | None) -> tuple[int, str]:
    for cell in results.cells:
        ref = reference_for(cell, results.cells, reference)
        if ref is not None:
            diff = paired(results, cell, ref, "ssim") or paired(results, cell, ref, "dice")
            if diff is not None:
                return diff.n_units, diff.unit
    return 0, "patients"


def sweep_table(results: SweepResults, reference: str | None) -> str:
    """The comparison table: one row per cell of the sweep that has at least one finished seed."""
    scores = [m for m in ("ssim", "psnr", "dice") if _has(results, SCORES[m][0])]
    headers = ["Cell", "Bits per pixel (nominal / effective)", "Steps (epochs)", "Seeds"]
    headers += [f"Test {SCORES[m][1]}" + (" (per slice)" if m == "dice" else "") for m in scores]
    headers += ["Code usage (joint tuples)", "Usage per level"]
    if reference:
        headers += [f"Δ {SCORES[m][1]} vs {md_escape(reference)} [95% CI]" for m in scores]
    codecs = any(best_codec(per_seed) for per_seed in results.done.values())
    if codecs:
        headers += ["Best codec at this rate: SSIM", "Ours − best codec: SSIM [95% CI]"]
    rows = []
    for cell in results.cells:
        per_seed = results.of(cell)
        if not per_seed:
            continue
        row = [md_escape(cell.name), _rate_cell(per_seed), _steps_cell(per_seed), ",".join(map(str, sorted(per_seed)))]
        for m in scores:
            key, _, digits = SCORES[m]
            row.append(
                mean_sd_text(*over_seeds(per_seed, key), digits=digits if m != "dice" else 2, scale=100.0 if m == "dice" else 1.0)
            )
        row += list(_usage_cells(per_seed))
        if reference:
            ref = reference_for(cell, results.cells, reference)
            for m in scores:
                digits = SCORES[m][2] if m != "dice" else 2
                row.append(
                    "(reference)"
                    if ref is None and _is_reference(cell, reference)
                    else delta_text(paired(results, cell, ref, m) if ref else None, digits, 100.0 if m == "dice" else 1.0)
                )
        if codecs:
            row += _codec_cells(per_seed)
        rows.append(row)
    return md_table(headers, rows)


def _codec_cells(per_seed) -> list[str]:
    codec = best_codec(per_seed)
    if codec is None:
        return ["-", "-"]
    first = next(iter(per_seed.values())).metrics["baselines"]["codecs"][codec]
    return [f"{md_escape(codec)} {_fmt(first.get('ssim_mean'))}", delta_text(versus_codec(per_seed, "ssim"), 3)]


def _is_reference(cell: Cell, reference: str) -> bool:
    return cell.name == reference or cell.preset == reference


def table_notes(results: SweepResults, reference: str | None) -> str:
    n_units, unit = _units(results, reference)
    notes = [
        "Each score: mean ± sd over the seeds listed (sample sd), each seed a separate training run, all at the "
        "steps listed (optimizer steps of the whole run; best.pt selected on the validation split by the run's "
        "monitor). SSIM: MONAI `SSIMMetric` (11x11 Gaussian window, sigma 1.5, data range 1) on slices scaled to "
        "[0, 1], mean over test slices; PSNR: peak 1, mean over slices with a finite value; Dice (per slice): mean "
        "over the foreground classes of the per-class mean over slices where the class is in the reference or "
        f"the prediction. SSIM > {SSIM_THRESHOLD} is the project's bar.",
        "Bits per pixel: nominal = code positions x log2 K over input pixels, all levels; effective = per level, "
        "positions x entropy of that level's code histogram on the test split. Code usage: distinct code tuples "
        "(one code per level at a position) over min(product of the level sizes, positions seen); for one level "
        "that is the share of the codebook used. Usage per level: each code map's own codebook.",
    ]
    if reference:
        notes.append(
            f"Δ: the cell minus the reference `{md_escape(reference)}` (the same preset's cell with the "
            "same grid values when the reference is a preset) on the same test slices with matched seeds; "
            f"95% percentile bootstrap interval resampling the {n_units} {unit} and the seeds together; "
            "* marks an interval that excludes 0."
            + (
                ""
                if unit == "patients"
                else " With a single test patient the interval is not over patients: "
                "it says how stable the difference is on this patient, not whether it holds for others."
            )
        )
    return "\n\n".join(notes)


def _config_value(cell: Cell, key: str, per_seed, sweep_overrides) -> str:
    from prostate_vq.models import apply_overrides, get_preset

    if key == "codebook_size":
        first = next(iter(per_seed.values()), None)
        return str(first.metrics.get("codebook_size")) if first else "-"
    cfg = apply_overrides(get_preset(cell.preset), [*sweep_overrides, *cell.overrides])
    if key == "parameters":
        q, m = cfg["quantizer"], cfg["model"]
        parts = [
            f"D={m['embedding_dim']}",
            f"K={q.get('codebook_size')}",
            f"downsample={m['downsample']}",
            f"beta={q.get('beta')}",
        ]
        if cfg.get("refit"):
            parts.append(f"ReFiT to K={cfg['refit']['codebook_size']}")
        return ", ".join(parts)
    section, _, name = key.partition(".")
    value = (cfg.get(section) or {}).get(name)
    if key == "quantizer.codebook_dim" and value is None:
        value = cfg["model"]["embedding_dim"]
    if key == "quantizer.kind" and isinstance(value, str):
        value = {"vq": "vq (VQ loss)", "ema": "ema (EMA)"}.get(value, value)
    if isinstance(value, bool):
        return "Yes" if value else "No"
    return md_escape(str(value))


def study_table(study: dict, results: SweepResults, sweep_overrides=()) -> str:
    """Columns of the reference table (its parameters, then its metrics), then the rate, steps, seeds and the
    paired differences to the study's reference cell."""
    metric_heads = {
        "usage": "Codebook usage (%)",
        "psnr": "PSNR (dB)",
        "ssim": "SSIM",
        "dice": "Dice Score (%)",
        "codes_used": "N° codes used",
    }
    columns = dict(study.get("columns") or {})
    metrics = list(study.get("metrics") or ["usage", "psnr", "ssim"])
    reference = study.get("reference")
    headers = [
        "Cell",
        *columns,
        *(metric_heads[m] for m in metrics),
        "Bits per pixel (nominal / effective)",
        "Steps (epochs)",
        "Seeds",
    ]
    paired_metrics = [m for m in metrics if m in ("ssim", "psnr", "dice")]
    headers += [f"Δ {metric_heads[m]} vs reference [95% CI]" for m in paired_metrics] + ["Δ usage (pp), mean ± sd"]
    rows = []
    for cell in results.cells:
        per_seed = results.of(cell)
        if not per_seed:
            continue
        row = [md_escape(cell.name) + (" (reference)" if cell.name == reference else "")]
        row += [_config_value(cell, key, per_seed, sweep_overrides) for key in columns.values()]
        for m in metrics:
            if m == "usage":
                row.append(mean_sd_text(*over_seeds(per_seed, "joint_usage_pct"), digits=1))
            elif m == "codes_used":
                row.append(mean_sd_text(*over_seeds(per_seed, "joint_codes_used"), digits=0))
            elif m == "dice":
                row.append(mean_sd_text(*over_seeds(per_seed, "dice_mean"), digits=2, scale=100.0))
            else:
                key, _, digits = SCORES[m]
                row.append(mean_sd_text(*over_seeds(per_seed, key), digits=digits))
        row += [_rate_cell(per_seed), _steps_cell(per_seed), ",".join(map(str, sorted(per_seed)))]
        ref = reference_for(cell, results.cells, reference)
        for m in paired_metrics:
            row.append(
                "-"
                if ref is None
                else delta_text(paired(results, cell, ref, m), SCORES[m][2] if m != "dice" else 2, 100.0 if m == "dice" else 1.0)
            )
        row.append("-" if ref is None else _usage_delta(per_seed, results.of(ref)))
        rows.append(row)
    return md_table(headers, rows)


def _usage_delta(mine, theirs) -> str:
    from prostate_vq.evaluation.stats import mean_sd

    seeds = sorted(set(mine) & set(theirs))
    diffs = [
        mine[s].metrics.get("joint_usage_pct") - theirs[s].metrics.get("joint_usage_pct")
        for s in seeds
        if mine[s].metrics.get("joint_usage_pct") is not None and theirs[s].metrics.get("joint_usage_pct") is not None
    ]
    mean, sd = mean_sd(diffs)
    if mean is None:
        return "-"
    return f"{mean:+.1f}" + (f" ± {sd:.1f}" if sd is not None else "")


def results_data(results: SweepResults, reference: str | None) -> dict:
    """The table's numbers as plain data (results.json), for scripts and benchmarks."""
    cells = []
    for cell in results.cells:
        per_seed = results.of(cell)
        entry = {**cell.to_dict(), "seeds": sorted(per_seed)}
        for key in (
            "ssim_mean",
            "psnr_mean",
            "dice_mean",
            "joint_usage_pct",
            "codebook_usage_pct",
            "joint_perplexity",
            "bits_per_pixel",
            "effective_bits_per_pixel",
            "run_steps",
            "run_epochs",
        ):
            mean, sd = over_seeds(per_seed, key)
            entry[key] = {"mean": mean, "sd": sd, "per_seed": {str(s): r.metrics.get(key) for s, r in per_seed.items()}}
        entry["levels_usage_pct"] = dict(level_usage(per_seed))
        ref = reference_for(cell, results.cells, reference)
        entry["reference"] = ref.name if ref else None
        vs_codec = versus_codec(per_seed, "ssim")
        entry["best_codec"] = best_codec(per_seed)
        entry["ours_minus_best_codec_ssim"] = vs_codec.to_dict() if vs_codec else None
        entry["paired"] = {}
        for metric in ("ssim", "psnr", "dice"):
            diff = paired(results, cell, ref, metric) if ref else None
            if diff is not None:
                entry["paired"][metric] = diff.to_dict()
        cells.append(entry)
    return {"cells": cells, "missing": list(results.missing), "reference": reference}
