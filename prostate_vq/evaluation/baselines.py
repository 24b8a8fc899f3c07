"""metrics.json's `baselines`: every codec's scores at the model's rate on the same slices, per slice and per
patient, the best codec, and ours minus the best codec with a paired 95% interval (evaluation.stats)."""

from __future__ import annotations

import numpy as np

from prostate_vq.evaluation.codecs import run_codecs
from prostate_vq.evaluation.conventions import bootstrap_ci, finite_mean
from prostate_vq.evaluation.stats import paired_difference, unit_of

RULE = (
    "per slice, the highest quality whose whole file (headers included) fits the model's bits per pixel x "
    "H x W; 8-bit greyscale of the same [0, 1] slice; scored with the same SSIM and PSNR. Slices no quality "
    "fits are not scored (fit_pct says how many fit). best: the codec with the highest mean SSIM among those "
    "that fit every slice"
)


def _per_patient(values: np.ndarray, cases: list[str]) -> dict:
    patients = sorted(set(cases))
    means = np.asarray([finite_mean(values[np.asarray(cases) == p]) or np.nan for p in patients])
    return {"mean": finite_mean(means), "ci95": bootstrap_ci(means)}


def codec_baselines(names: list[str], values: dict, rows: list[dict], bits_per_pixel: float) -> tuple[dict, dict]:
    """(per-slice codec values for per_slice.csv, the `baselines` section)."""
    coded = run_codecs(names, values["images"], bits_per_pixel)
    cases = [str(r["case"]) for r in rows]
    section: dict = {"bits_per_pixel": bits_per_pixel, "rule": RULE, "codecs": {}}
    for name, v in coded.items():
        section["codecs"][name] = {
            "ssim_mean": finite_mean(v["ssim"]),
            "psnr_mean": finite_mean(v["psnr"]),
            "bpp_mean": finite_mean(v["bpp"]),
            "fit_pct": 100.0 * float(v["fits"].mean()) if v["fits"].size else 0.0,
            "per_patient_ssim": _per_patient(v["ssim"], cases),
        }
    fitting = [n for n in names if section["codecs"][n]["fit_pct"] == 100.0]
    if fitting:
        best = max(fitting, key=lambda n: section["codecs"][n]["ssim_mean"] or -np.inf)
        section["best"] = best
        unit, owners = unit_of(rows)
        keys = [f"{r['file']}#{r['slice']}" for r in rows]
        units = dict(zip(keys, owners))
        section["ours_minus_best"] = {}
        for metric in ("ssim", "psnr"):
            ours = {0: dict(zip(keys, map(float, values[metric])))}
            theirs = {0: dict(zip(keys, map(float, coded[best][metric])))}
            section["ours_minus_best"][metric] = paired_difference(ours, theirs, units, unit).to_dict()
    return coded, section
