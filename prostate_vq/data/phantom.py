"""The demo phantom: a deterministic, HipMRI-like set of T2-weighted pelvic slices with 6-class masks.

Every volume is drawn from its own random stream ``(seed, case, week)``, so a case looks the same
whatever the number of cases asked for. Anatomy is painted as a label volume first, the image is
derived from the labels (plus sub-structures such as fat, marrow and the prostate's peripheral zone),
so masks and image always agree. See docs/phantom.md for the design.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np

from prostate_vq.data.layout import SPLITS, image_dir, mask_dir, slice_name
from prostate_vq.data.nifti import save_slice
from prostate_vq.errors import UserInputError

PHANTOM_VERSION = 1
ROWS, COLS, WIDE_COLS = 256, 128, 144  # as nibabel reads HipMRI slices; one real volume is 256x144
SPACING = (1.0, 1.0, 2.5)  # nominal voxel size (mm) written into the affine
BACKGROUND, BODY, BONES, BLADDER, RECTUM, PROSTATE = range(6)
# T2-weighted signal on a 0..1 scale (fluid bright, fat bright, muscle and cortical bone dark).
SIGNAL = {
    "fat": 0.78,
    "muscle": 0.30,
    "pelvic_fat": 0.66,
    "cortex": 0.07,
    "marrow": 0.55,
    "urine": 1.0,
    "bladder_wall": 0.28,
    "rectal_wall": 0.33,
    "gas": 0.03,
    "stool": 0.48,
    "central_gland": 0.42,
    "peripheral_zone": 0.72,
    "capsule": 0.2,
}
FULL_SCALE = 1200.0  # stored as int16, like scanner output


def split_sizes(cases: int) -> tuple[int, int, int]:
    """Train/validate/test case counts: about 70/15/15, at least one case each (12 -> 8/2/2, 4 -> 2/1/1)."""
    held_out = max(1, round(0.15 * cases))
    return cases - 2 * held_out, held_out, held_out


def case_splits(cases: int) -> dict[str, str]:
    """Case id -> split; the highest case numbers are held out, as in HipMRI."""
    n_train, n_val, _ = split_sizes(cases)
    ids = [f"{k:03d}" for k in range(1, cases + 1)]
    return {case: ("train" if k < n_train else "validate" if k < n_train + n_val else "test") for k, case in enumerate(ids)}


def quirks(cases: int, weeks: int) -> dict[str, tuple[str, int]]:
    """Which volume carries each real-data quirk (all in the train split)."""
    return {"wide_256x144": ("001", 1 if weeks > 1 else 0), "float_masks": ("001", 0), "trailing_singleton": ("002", 0)}


def _ellipse(X, Y, cx, cy, a, b, theta=0.0):
    """Normalised squared radius of a rotated ellipse (< 1 inside); arrays broadcast over slices."""
    dx, dy = X - cx, Y - cy
    if theta:
        c, s = float(np.cos(theta)), float(np.sin(theta))
        dx, dy = c * dx + s * dy, c * dy - s * dx
    dx /= a
    dy /= b
    dx *= dx
    dy *= dy
    dx += dy
    return dx


def _profile(z, centre, half_width):
    """Organ size along the slice axis: a half-ellipse, 0 outside ``centre +- half_width``."""
    return np.sqrt(np.clip(1.0 - ((z - centre) / half_width) ** 2, 0.0, None))


# scipy.ndimage's boundary modes as numpy.pad names them.
_PAD_MODES: dict[str, Literal["symmetric", "wrap"]] = {"reflect": "symmetric", "wrap": "wrap"}


def gaussian_filter(x: np.ndarray, sigma: float, mode: str = "reflect") -> np.ndarray:
    """Gaussian blur of the last two axes, as scipy.ndimage.gaussian_filter(x, (0, sigma, sigma), mode=mode)
    computes it (kernel radius int(4 sigma + 0.5), 'reflect' = numpy's 'symmetric' padding). Written here so
    that the package needs no scipy for one blur; a test compares it with scipy where scipy is installed."""
    radius = int(4.0 * sigma + 0.5)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    kernel /= kernel.sum()
    pad_mode = _PAD_MODES[mode]
    out = x.astype(np.float64)
    for axis in (-2, -1):
        widths = [(0, 0)] * out.ndim
        widths[axis] = (radius, radius)
        windows = np.lib.stride_tricks.sliding_window_view(np.pad(out, widths, mode=pad_mode), 2 * radius + 1, axis)
        out = windows @ kernel
    return out.astype(x.dtype)


def _smooth_noise(rng, shape, sigma):
    noise = rng.standard_normal(shape).astype(np.float32)
    noise = gaussian_filter(noise, sigma, mode="wrap")
    return noise / (noise.std() + 1e-8)


def _case_anatomy(rng) -> dict[str, float]:
    u = rng.uniform
    return {
        "body_a": u(100, 117),
        "body_b": u(47, 57),
        "body_power": u(2.2, 3.0),
        "fat": u(0.08, 0.16),
        "head_r": u(18, 23),
        "head_dx": u(60, 70),
        "head_dy": u(-3, 5),
        "prostate_a": u(16, 23),
        "prostate_b": u(12, 16),
        "rectum_r": u(10, 14),
        "rectum_dy": u(20, 26),
        "bladder_a": u(34, 46),
        "bladder_b": u(20, 27),
        "warp": u(2.0, 4.5),
        "texture": u(0.06, 0.12),
        "noise": u(0.02, 0.035),
        "bias": u(0.15, 0.3),
    }


def _volume(seed: int, case: int, week: int, slices: int, cols: int):
    """One (slices, ROWS, cols) image and label volume."""
    anatomy = _case_anatomy(np.random.default_rng([seed, case, 7919]))
    rng = np.random.default_rng([seed, case, week])
    filling = rng.uniform(0.55, 1.25)  # bladder filling changes from week to week
    gas = rng.uniform() < 0.5  # rectal content: gas (dark) or stool
    shift_r, shift_c = (float(v) for v in rng.normal(0, 3, 2))  # patient position on the couch
    tilt = float(rng.normal(0, 0.04))  # small in-plane rotation (rad)

    S = slices
    z = ((np.arange(S) + 0.5) / S).astype(np.float32)[:, None, None]  # 0 superior .. 1 inferior
    R, C = np.meshgrid(np.arange(ROWS, dtype=np.float32), np.arange(cols, dtype=np.float32), indexing="ij")
    R, C = R[None], C[None]
    # Smooth random warp: no organ is an exact ellipse, and the warp drifts slowly along the volume.
    k1, k2, p1, p2 = rng.uniform(0.5, 1.5, 2).tolist() + rng.uniform(0, 2 * np.pi, 2).tolist()
    warp = anatomy["warp"]
    Rw = R + warp * np.sin(2 * np.pi * k1 * C / COLS + p1 + 2.0 * z)
    Cw = C + warp * np.sin(2 * np.pi * k2 * R / ROWS + p2 - 1.5 * z)
    cr, cc = ROWS / 2 + shift_r, cols / 2 + shift_c

    # Body: a superellipse that narrows towards the inferior slices.
    taper = 1.0 - 0.12 * z
    a, b = anatomy["body_a"] * taper, anatomy["body_b"] * (1.0 - 0.05 * z)
    c, s = np.cos(tilt), np.sin(tilt)
    u, v = (c * (Rw - cr) + s * (Cw - cc)) / a, (-s * (Rw - cr) + c * (Cw - cc)) / b
    p = anatomy["body_power"]
    body_r = (np.abs(u) ** p + np.abs(v) ** p) ** (1.0 / p)
    body = body_r < 1.0

    labels = np.where(body, BODY, BACKGROUND).astype(np.uint8)
    signal = np.where(body, SIGNAL["muscle"], 0.0).astype(np.float32)
    signal = np.where(body & (body_r > 1.0 - anatomy["fat"]), SIGNAL["fat"], signal)
    pelvic_fat = _ellipse(Rw, Cw, cr, cc + 4, 0.55 * a, 0.62 * b, tilt) < 1.0
    signal = np.where(pelvic_fat, SIGNAL["pelvic_fat"], signal)
    streaks = body & (_smooth_noise(rng, body.shape, 2.5) > 1.3)  # intermuscular fat
    signal = np.where(streaks, SIGNAL["pelvic_fat"], signal)

    # Bones: femoral heads with necks (mid slices), sacrum (superior), pubic rami and ischia (inferior).
    head = _profile(z, 0.48, 0.3)
    bone_r = np.full(Rw.shape, np.inf, dtype=np.float32)
    for side in (-1, 1):
        hr = cr + side * anatomy["head_dx"] * taper
        hc = cc + anatomy["head_dy"]
        np.minimum(bone_r, _ellipse(Rw, Cw, hr, hc, anatomy["head_r"] * head + 1e-3, anatomy["head_r"] * head + 1e-3), out=bone_r)
        np.minimum(bone_r, _ellipse(Rw, Cw, hr + side * 16, hc + 4, 16 * head + 1e-3, 7 * head + 1e-3, side * 0.5), out=bone_r)
        rami = np.clip((z - 0.6) / 0.4, 0, 1) ** 0.5
        ramus = _ellipse(Rw, Cw, cr + side * 34, cc - 0.7 * b, 24 * rami + 1e-3, 6 * rami + 1e-3, -side * 0.35)
        np.minimum(bone_r, ramus, out=bone_r)
        np.minimum(bone_r, _ellipse(Rw, Cw, cr + side * 48, cc + 0.45 * b, 9 * rami + 1e-3, 12 * rami + 1e-3), out=bone_r)
    sacrum = _profile(z, 0.0, 0.45)
    np.minimum(bone_r, _ellipse(Rw, Cw, cr, cc + 0.78 * b, 30 * sacrum + 1e-3, 8 * sacrum + 1e-3), out=bone_r)
    bone = (bone_r < 1.0) & body
    labels[bone] = BONES
    signal = np.where(bone, np.where(bone_r > 0.55, SIGNAL["cortex"], SIGNAL["marrow"]), signal)

    # Bladder (superior, size follows this week's filling), rectum (all slices), prostate (inferior).
    bladder_size = _profile(z, 0.22, 0.45) * filling
    bladder_r = _ellipse(
        Rw,
        Cw,
        cr,
        cc - 12 - 4 * filling,
        anatomy["bladder_a"] * bladder_size + 1e-3,
        anatomy["bladder_b"] * bladder_size + 1e-3,
        tilt,
    )
    bladder = (bladder_r < 1.0) & body
    labels[bladder] = BLADDER
    signal = np.where(bladder, np.where(bladder_r > 0.8, SIGNAL["bladder_wall"], SIGNAL["urine"]), signal)

    rectum_size = 0.8 + 0.3 * np.sin(np.pi * z)
    rectum_r = _ellipse(
        Rw,
        Cw,
        cr + 2 * np.sin(3 * z),
        cc + anatomy["rectum_dy"],
        anatomy["rectum_r"] * rectum_size * 1.25,
        anatomy["rectum_r"] * rectum_size,
    )
    rectum = (rectum_r < 1.0) & body
    labels[rectum] = RECTUM
    lumen = SIGNAL["gas"] if gas else SIGNAL["stool"]
    signal = np.where(rectum, np.where(rectum_r > 0.45, SIGNAL["rectal_wall"], lumen), signal)

    prostate_size = _profile(z, 0.74, 0.24)
    pc = cc + anatomy["rectum_dy"] - anatomy["rectum_r"] - anatomy["prostate_b"] - 2
    prostate_r = _ellipse(
        Rw, Cw, cr, pc, anatomy["prostate_a"] * prostate_size + 1e-3, anatomy["prostate_b"] * prostate_size + 1e-3, tilt
    )
    prostate = (prostate_r < 1.0) & body
    labels[prostate] = PROSTATE
    # Peripheral zone: the posterior crescent, brighter than the central gland; a dark capsule around.
    zone = np.where(Cw - pc > 0.35 * anatomy["prostate_b"] * prostate_size, SIGNAL["peripheral_zone"], SIGNAL["central_gland"])
    signal = np.where(prostate, np.where(prostate_r > 0.85, SIGNAL["capsule"], zone), signal)

    # Appearance: tissue texture, partial-volume blur, smooth coil bias field, Rician noise.
    signal *= 1.0 + anatomy["texture"] * _smooth_noise(rng, signal.shape, 1.2)
    signal = gaussian_filter(signal, 0.8)
    bias = np.exp(
        anatomy["bias"]
        * (
            rng.uniform(-1, 1) * (R - cr) / ROWS
            + rng.uniform(-1, 1) * (C - cc) / cols
            + 0.6 * _smooth_noise(rng, (1, ROWS, cols), 24)
        )
    )
    signal *= bias
    sigma = anatomy["noise"]
    real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    image = np.sqrt(real * real + imag * imag) * FULL_SCALE
    # Painted with anterior at low columns; stored like the importer's default RAS slices: rows run
    # towards the patient's right, columns towards anterior.
    image, labels = image[..., ::-1], labels[..., ::-1]
    return np.ascontiguousarray(np.clip(np.rint(image), 0, 32767).astype(np.int16)), np.ascontiguousarray(labels)


def _write_volume(root: Path, split: str, case: str, week: int, image, labels, trailing: bool, float_masks: bool):
    affine = np.diag([*SPACING, 1.0])
    for k in range(image.shape[0]):
        img, lab = image[k], labels[k]
        if float_masks:
            lab = lab.astype(np.float64)
        if trailing:
            img, lab = img[..., None], lab[..., None]
        save_slice(img, image_dir(root, split) / slice_name(case, week, k), affine)
        save_slice(lab, mask_dir(root, split) / slice_name(case, week, k, kind="mask"), affine)


def write_volumes(
    root: Path, plan, seed: int, slices_per_volume: int, special: dict | None = None, threads: int | None = None
) -> None:
    """Generate and write ``(split, case, week)`` volumes; threads overlap numpy and gzip (both release
    the GIL). The split folders must exist."""
    special = special or {}

    def one(item):
        split, case, week = item
        wide = special.get("wide_256x144") == (case, week)
        image, labels = _volume(seed, int(case), week, slices_per_volume, WIDE_COLS if wide else COLS)
        _write_volume(
            root,
            split,
            case,
            week,
            image,
            labels,
            trailing=special.get("trailing_singleton") == (case, week),
            float_masks=special.get("float_masks") == (case, week),
        )

    with ThreadPoolExecutor(max_workers=threads or min(4, os.cpu_count() or 1)) as pool:
        for _ in pool.map(one, plan):
            pass


def _check_options(out: Path, cases: int, slices_per_volume: int, weeks: int) -> None:
    if cases < 3:
        raise UserInputError(f"--cases must be at least 3 (one per split), not {cases}")
    if cases > 999:
        raise UserInputError(f"--cases must be at most 999 (3-digit case ids), not {cases}")
    if slices_per_volume < 1 or weeks < 1:
        raise UserInputError("--slices and --weeks must be at least 1")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserInputError("output folder exists and is not empty; choose a new folder", out)


def synthesize(out, cases: int = 12, seed: int = 0, slices_per_volume: int = 24, weeks: int = 2) -> Path:
    """Write the phantom in HipMRI layout under ``out`` and return it.

    Written into a temporary sibling folder and renamed at the end, so an interrupted run never leaves
    a half dataset behind.
    """
    out = Path(out).expanduser()
    _check_options(out, cases, slices_per_volume, weeks)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the dataset is meant to be shared
    try:
        for split in SPLITS:
            image_dir(tmp, split).mkdir()
            mask_dir(tmp, split).mkdir()
        special = quirks(cases, weeks)
        plan = [(split, case, week) for case, split in case_splits(cases).items() for week in range(weeks)]
        write_volumes(tmp, plan, seed, slices_per_volume, special)
        info = {
            "phantom_version": PHANTOM_VERSION,
            "cases": cases,
            "seed": seed,
            "slices_per_volume": slices_per_volume,
            "weeks": weeks,
            "splits": case_splits(cases),
            "quirks": {name: list(where) for name, where in special.items()},
        }
        (tmp / "phantom.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
        if out.exists():
            out.rmdir()  # checked empty above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
