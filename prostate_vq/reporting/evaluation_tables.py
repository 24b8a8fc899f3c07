"""The tables of one evaluation in the report: Dice under each named convention, per-patient statistics with
their bootstrap interval, per-level codebook health of multi-level quantizers, the codec baselines and the
perceptual metrics. Each reads an EvaluationResult (metrics.json typed by EvaluationResult.from_json), never the
file's keys."""

from __future__ import annotations

import math

from prostate_vq.evaluation.results import EvaluationResult
from prostate_vq.reporting.tables import DASH, fmt, md_table

DICE_NOTE = (
    "Dice conventions: *per slice* scores a false positive on a slice without the class as 0; *MONAI* "
    "is `DiceMetric(ignore_empty=True)` (slices whose reference lacks the class are not scored); "
    "*case 3D* stacks the slices of a case and week into a volume. Means over scored slices or volumes."
)


def dice_table(r: EvaluationResult) -> str | None:
    """Class | per slice | MONAI | case 3D | slices scored (per-slice convention)."""
    seg = r.segmentation
    if seg is None or not seg.dice_per_class:
        return None
    other = r.dice_conventions
    monai, case3d, scored = other.per_class_monai, other.per_class_case3d, seg.slices_scored
    rows: list[list] = [
        [name, fmt(v, ".2f", 100), fmt(monai.get(name), ".2f", 100), fmt(case3d.get(name), ".2f", 100), scored.get(name, "")]
        for name, v in seg.dice_per_class.items()
    ]
    rows.append(
        [
            "**mean (foreground)**",
            fmt(seg.dice_mean, ".2f", 100),
            fmt(other.mean_monai, ".2f", 100),
            fmt(other.mean_case3d, ".2f", 100),
            "",
        ]
    )
    return (
        md_table(
            ["Class", "Dice (%, per slice)", "Dice (%, MONAI)", "Dice (%, case 3D)", "Slices scored (per slice)"],
            rows,
            ["l", "r", "r", "r", "r"],
        )
        + "\n\n"
        + DICE_NOTE
    )


_PATIENT_COLUMNS = (
    ("ssim", "SSIM", 1.0, ".4f"),
    ("ssim_region", "SSIM in region", 1.0, ".4f"),
    ("ms_ssim", "MS-SSIM", 1.0, ".4f"),
    ("dice_prostate_monai", "Prostate Dice (%, MONAI)", 100.0, ".2f"),
    ("dice_prostate_case3d", "Prostate Dice (%, case 3D)", 100.0, ".2f"),
)


def per_patient_table(r: EvaluationResult) -> str | None:
    """One row per patient, then the mean over patients with its 95% bootstrap interval."""
    patients = r.per_patient
    cases, stats = patients.cases, patients.stats
    columns = [c for c in _PATIENT_COLUMNS if c[0] in stats]
    if not cases or not columns:
        return None
    rows = [
        [patient] + [fmt(values.get(key), spec, scale) for key, _, scale, spec in columns] for patient, values in cases.items()
    ]
    summary = ["**mean over patients [95% CI]**"]
    for key, _, scale, spec in columns:
        mean, ci = stats[key].mean, stats[key].ci95
        interval = f" [{fmt(ci[0], spec, scale)}, {fmt(ci[1], spec, scale)}]" if ci else " (one patient: no interval)"
        summary.append(fmt(mean, spec, scale) + (interval if mean is not None else ""))
    rows.append(summary)
    note = (
        "Each patient counts once (slices of one patient are not independent); interval: 95% percentile "
        "bootstrap over patients, 2000 draws. SSIM in region: " + (r.ssim_region or DASH) + "."
    )
    return md_table(["Patient"] + [title for _, title, _, _ in columns], rows, ["l"] + ["r"] * len(columns)) + "\n\n" + note


def levels_table(r: EvaluationResult) -> str | None:
    """Per code map: its share of the rate, usage and perplexity (pooled numbers hide a collapsed level)."""
    levels = r.level_health
    if len(levels) < 2:
        return None
    rows = [
        [
            DASH if lv.name is None else lv.name,
            fmt(lv.codebook_size, ".0f"),
            fmt(lv.bits_per_pixel, ".4g"),
            fmt(lv.effective_bits_per_pixel, ".4g"),
            fmt(lv.codes_used, ".0f"),
            fmt(lv.codebook_usage_pct, ".2f"),
            fmt(lv.perplexity, ".1f"),
        ]
        for lv in levels
    ]
    joint = r.joint_usage
    if joint.codes_used is not None:
        rows.append(
            [
                "joint (tuples)",
                fmt(joint.codes_possible, ".0f"),
                fmt(r.bits_per_pixel, ".4g"),
                fmt(r.effective_bits_per_pixel, ".4g"),
                fmt(joint.codes_used, ".0f"),
                fmt(joint.usage_pct, ".2f"),
                fmt(joint.perplexity, ".1f"),
            ]
        )
    return md_table(
        ["Level", "Codebook size", "Bits per pixel", "Effective bits per pixel", "Codes used", "Usage (%)", "Perplexity"],
        rows,
        ["l", "r", "r", "r", "r", "r", "r"],
    )


def baselines_table(r: EvaluationResult) -> str | None:
    """Ours beside every classical codec at the same rate on the same slices (metrics.json `baselines`)."""
    section = r.codec_baselines
    if section is None:
        return None

    def delta(metric: str, digits: str) -> str:
        d = section.ours_minus_best.get(metric)
        if d is None or d.mean is None:
            return DASH
        ci = d.ci95
        text = f"{d.mean:+{digits}}"
        return text + (f" [{ci[0]:+{digits}}, {ci[1]:+{digits}}] over {d.n_units} {d.unit}" if ci else "")

    recon = r.reconstruction
    rows = [
        [
            "this model",
            fmt(r.bits_per_pixel, ".4g"),
            "100",
            fmt(None if recon is None else recon.ssim_mean, ".4f"),
            fmt(None if recon is None else recon.psnr_mean, ".2f"),
        ]
    ]
    for name, c in section.codecs.items():
        label = f"{name} (best)" if name == section.best else name
        rows.append([label, fmt(c.bpp_mean, ".4g"), fmt(c.fit_pct, ".0f"), fmt(c.ssim_mean, ".4f"), fmt(c.psnr_mean, ".2f")])
    table = md_table(
        ["Coder", "Bits per pixel (mean file)", "Slices that fit (%)", "SSIM", "PSNR (dB)"], rows, ["l", "r", "r", "r", "r"]
    )
    budget, ours = section.bits_per_pixel, r.bits_per_pixel
    nominal = budget is None or ours is None or math.isclose(budget, ours)
    whose = "the model's" if nominal else "the --codec-bpp budget (not the model's nominal rate),"
    note = (
        f"Codecs at {whose} {fmt(budget, '.4g')} bits per pixel: {section.rule}. "
        f"Ours minus the best codec: SSIM {delta('ssim', '.4f')}, PSNR {delta('psnr', '.2f')} dB."
    )
    return table + "\n\n" + note


PERCEPTUAL_NOTE = (
    "MS-SSIM: MONAI `MultiScaleSSIMMetric`, 5 scales with the standard weights, 7x7 Gaussian window "
    "(sigma 1.5), images in [0, 1] (slices under 112 px a side have none). LPIPS (lower is better) and "
    "rFID (Fréchet distance between reconstructions and originals, lower is better) only with the "
    "network weights given to evaluate (`--lpips-weights`, `--fid-weights`); the weights file named "
    "in each model's metrics.json."
)


def _ms_ssim(r: EvaluationResult) -> tuple[float | None, float | None]:
    recon = r.reconstruction
    return (None, None) if recon is None else (recon.ms_ssim_mean, recon.ms_ssim_std)


def perceptual_table(rows: list[tuple[str, EvaluationResult]]) -> str | None:
    """Model | MS-SSIM | LPIPS | rFID, when any evaluation has one of them (else None: no empty table)."""
    if not any(_ms_ssim(r)[0] is not None or r.lpips_mean is not None or r.fid is not None for _, r in rows):
        return None
    body = [
        [
            name,
            DASH if (ms := _ms_ssim(r))[0] is None else f"{fmt(ms[0], '.4f')} ± {fmt(ms[1], '.3f')}",
            fmt(r.lpips_mean, ".4f"),
            fmt(r.fid, ".2f"),
        ]
        for name, r in rows
    ]
    return md_table(["Model", "MS-SSIM", "LPIPS", "rFID"], body, ["l", "c", "c", "c"]) + "\n\n" + PERCEPTUAL_NOTE
