"""The tables of one evaluation in the report: Dice under each named convention, per-patient statistics with
their bootstrap interval, and per-level codebook health of multi-level quantizers."""

from __future__ import annotations

import math

from prostate_vq.reporting.tables import DASH, fmt, md_table

DICE_NOTE = ("Dice conventions: *per slice* scores a false positive on a slice without the class as 0; *MONAI* "
             "is `DiceMetric(ignore_empty=True)` (slices whose reference lacks the class are not scored); "
             "*case 3D* stacks the slices of a case and week into a volume. Means over scored slices or volumes.")


def dice_table(m: dict) -> str | None:
    """Class | per slice | MONAI | case 3D | slices scored (per-slice convention)."""
    per_slice = m.get("dice_per_class") or {}
    if not per_slice:
        return None
    monai, case3d = m.get("dice_per_class_monai") or {}, m.get("dice_per_class_case3d") or {}
    scored = m.get("dice_slices_scored") or {}
    rows = [[name, fmt(v, ".2f", 100), fmt(monai.get(name), ".2f", 100), fmt(case3d.get(name), ".2f", 100),
             scored.get(name, "")] for name, v in per_slice.items()]
    rows.append(["**mean (foreground)**", fmt(m.get("dice_mean"), ".2f", 100), fmt(m.get("dice_mean_monai"), ".2f", 100),
                 fmt(m.get("dice_mean_case3d"), ".2f", 100), ""])
    return md_table(["Class", "Dice (%, per slice)", "Dice (%, MONAI)", "Dice (%, case 3D)", "Slices scored (per slice)"],
                    rows, ["l", "r", "r", "r", "r"]) + "\n\n" + DICE_NOTE


_PATIENT_COLUMNS = (("ssim", "SSIM", 1.0, ".4f"), ("ssim_region", "SSIM in region", 1.0, ".4f"),
                    ("ms_ssim", "MS-SSIM", 1.0, ".4f"),
                    ("dice_prostate_monai", "Prostate Dice (%, MONAI)", 100.0, ".2f"),
                    ("dice_prostate_case3d", "Prostate Dice (%, case 3D)", 100.0, ".2f"))


def per_patient_table(m: dict) -> str | None:
    """One row per patient, then the mean over patients with its 95% bootstrap interval."""
    stats = m.get("per_patient") or {}
    cases = stats.get("cases") or {}
    columns = [c for c in _PATIENT_COLUMNS if isinstance(stats.get(c[0]), dict)]
    if not cases or not columns:
        return None
    rows = [[patient] + [fmt(values.get(key), spec, scale) for key, _, scale, spec in columns]
            for patient, values in cases.items()]
    summary = ["**mean over patients [95% CI]**"]
    for key, _, scale, spec in columns:
        mean, ci = stats[key].get("mean"), stats[key].get("ci95")
        interval = f" [{fmt(ci[0], spec, scale)}, {fmt(ci[1], spec, scale)}]" if ci else " (one patient: no interval)"
        summary.append(fmt(mean, spec, scale) + (interval if mean is not None else ""))
    rows.append(summary)
    note = ("Each patient counts once (slices of one patient are not independent); interval: 95% percentile "
            "bootstrap over patients, 2000 draws. SSIM in region: " + str(m.get("ssim_region", DASH)) + ".")
    return md_table(["Patient"] + [title for _, title, _, _ in columns], rows,
                    ["l"] + ["r"] * len(columns)) + "\n\n" + note


def levels_table(m: dict) -> str | None:
    """Per code map: its share of the rate, usage and perplexity (pooled numbers hide a collapsed level)."""
    levels = m.get("levels") or []
    if len(levels) < 2:
        return None
    rows = [[lv.get("name", DASH), fmt(lv.get("codebook_size"), ".0f"), fmt(lv.get("bits_per_pixel"), ".4g"),
             fmt(lv.get("effective_bits_per_pixel"), ".4g"), fmt(lv.get("codes_used"), ".0f"),
             fmt(lv.get("codebook_usage_pct"), ".2f"), fmt(lv.get("perplexity"), ".1f")] for lv in levels]
    if m.get("joint_codes_used") is not None:
        rows.append(["joint (tuples)", fmt(m.get("joint_codes_possible"), ".0f"), fmt(m.get("bits_per_pixel"), ".4g"),
                     fmt(m.get("effective_bits_per_pixel"), ".4g"), fmt(m.get("joint_codes_used"), ".0f"),
                     fmt(m.get("joint_usage_pct"), ".2f"), fmt(m.get("joint_perplexity"), ".1f")])
    return md_table(["Level", "Codebook size", "Bits per pixel", "Effective bits per pixel", "Codes used", "Usage (%)",
                     "Perplexity"], rows, ["l", "r", "r", "r", "r", "r", "r"])


def baselines_table(m: dict) -> str | None:
    """Ours beside every classical codec at the same rate on the same slices (metrics.json `baselines`)."""
    section = m.get("baselines") or {}
    codecs = section.get("codecs") or {}
    if not codecs:
        return None
    diff = section.get("ours_minus_best") or {}

    def delta(metric: str, digits: str) -> str:
        d = diff.get(metric) or {}
        if d.get("mean") is None:
            return DASH
        ci = d.get("ci95")
        text = f"{d['mean']:+{digits}}"
        return text + (f" [{ci[0]:+{digits}}, {ci[1]:+{digits}}] over {d['n_units']} {d['unit']}" if ci else "")

    rows = [["this model", fmt(m.get("bits_per_pixel"), ".4g"), "100", fmt(m.get("ssim_mean"), ".4f"),
             fmt(m.get("psnr_mean"), ".2f")]]
    for name, c in codecs.items():
        label = f"{name} (best)" if name == section.get("best") else name
        rows.append([label, fmt(c.get("bpp_mean"), ".4g"), fmt(c.get("fit_pct"), ".0f"), fmt(c.get("ssim_mean"), ".4f"),
                     fmt(c.get("psnr_mean"), ".2f")])
    table = md_table(["Coder", "Bits per pixel (mean file)", "Slices that fit (%)", "SSIM", "PSNR (dB)"], rows,
                     ["l", "r", "r", "r", "r"])
    budget = section.get("bits_per_pixel")
    nominal = budget is None or m.get("bits_per_pixel") is None or math.isclose(budget, m["bits_per_pixel"])
    whose = "the model's" if nominal else "the --codec-bpp budget (not the model's nominal rate),"
    note = (f"Codecs at {whose} {fmt(budget, '.4g')} bits per pixel: {section.get('rule', '')}. "
            f"Ours minus the best codec: SSIM {delta('ssim', '.4f')}, PSNR {delta('psnr', '.2f')} dB.")
    return table + "\n\n" + note


PERCEPTUAL_NOTE = ("MS-SSIM: MONAI `MultiScaleSSIMMetric`, 5 scales with the standard weights, 7x7 Gaussian window "
                   "(sigma 1.5), images in [0, 1] (slices under 112 px a side have none). LPIPS (lower is better) and "
                   "rFID (Fréchet distance between reconstructions and originals, lower is better) only with the "
                   "network weights given to evaluate (`--lpips-weights`, `--fid-weights`); the weights file named "
                   "in each model's metrics.json.")


def perceptual_table(rows: list[tuple[str, dict]]) -> str | None:
    """Model | MS-SSIM | LPIPS | rFID, when any evaluation has one of them (else None: no empty table)."""
    keys = ("ms_ssim_mean", "lpips_mean", "fid")
    if not any(m.get(k) is not None for _, m in rows for k in keys):
        return None
    body = [[name, DASH if m.get("ms_ssim_mean") is None else
             f"{fmt(m['ms_ssim_mean'], '.4f')} ± {fmt(m.get('ms_ssim_std'), '.3f')}",
             fmt(m.get("lpips_mean"), ".4f"), fmt(m.get("fid"), ".2f")] for name, m in rows]
    return md_table(["Model", "MS-SSIM", "LPIPS", "rFID"], body, ["l", "c", "c", "c"]) + "\n\n" + PERCEPTUAL_NOTE
