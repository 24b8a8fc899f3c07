"""The per-slice manifest of a HipMRI dataset, its consistency check, and re-splitting by patient."""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from prostate_vq.data.layout import NUM_CLASSES, SPLITS, SliceRecord, check_root, discover, orphan_masks, present_splits
from prostate_vq.data.nifti import check_finite, read_array
from prostate_vq.errors import DataError, UserInputError
from prostate_vq.files import atomic_open

COLUMNS = ["image", "mask", "split", "case", "week", "slice", "shape", "mask_shape", "labels", "problem"]
MAX_PROBLEM_LINES = 50


def _shape(array: np.ndarray) -> str:
    return "x".join(str(n) for n in array.shape)


def _row(record: SliceRecord, root: Path) -> dict:
    row = {
        "image": record.image.relative_to(root).as_posix(),
        "mask": record.mask.relative_to(root).as_posix() if record.mask else "",
        "split": record.split,
        "case": record.case,
        "week": record.week,
        "slice": record.slice,
        "shape": "",
        "mask_shape": "",
        "labels": "",
        "problem": "",
    }
    try:
        image = read_array(record.image)
        check_finite(image, record.image)
        row["shape"] = _shape(image)
        if record.mask is not None:
            mask = read_array(record.mask)
            check_finite(mask, record.mask)
            row["mask_shape"] = _shape(mask)
            values = np.unique(mask)
            if np.issubdtype(mask.dtype, np.floating) and np.abs(values - np.rint(values)).max() > 1e-3:
                raise DataError("mask has non-integer values (expected labels 0..5)", record.mask)
            row["labels"] = " ".join(str(int(v)) for v in np.rint(values))
    except DataError as error:
        row["problem"] = str(error)
    return row


def build_manifest(root) -> pd.DataFrame:
    """One row per slice of every split present. Unreadable files are recorded in ``problem``, not raised,
    so one broken slice does not hide the others."""
    root = check_root(root)
    records = [r for split_records in discover(root, present_splits(root)).values() for r in split_records]
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        rows = list(pool.map(lambda record: _row(record, root), records))
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.astype({"case": str, "week": int, "slice": int})


def check_manifest(df: pd.DataFrame, root) -> list[str]:
    """Every problem, one line each naming the file (or the case): unreadable or non-finite files, images
    without masks, masks without images, image/mask shape mismatches, labels outside 0..5, and patient
    leakage (a case in more than one split)."""
    root = Path(root)
    problems = [p for p in df["problem"].fillna("") if p]
    has_masks = bool((df["mask"].fillna("") != "").any())
    for row in df.itertuples(index=False):
        if row.problem:
            continue
        if has_masks and not row.mask:
            problems.append(
                f"{root / row.image}: image has no mask "
                f"(expected {Path(row.image).name.replace('case_', 'seg_', 1)} in keras_slices_seg_{row.split})"
            )
        if row.mask and row.mask_shape and row.shape != row.mask_shape:
            problems.append(f"{root / row.image}: image is {row.shape} but its mask {row.mask} is {row.mask_shape}")
        if row.labels:
            outside = [v for v in row.labels.split() if not 0 <= int(v) < NUM_CLASSES]
            if outside:
                problems.append(f"{root / row.mask}: labels outside 0..{NUM_CLASSES - 1}: {', '.join(outside)}")
    for split in SPLITS:
        problems += [f"{path}: mask has no image" for path in orphan_masks(root, split)]
    for split in ("train", "validate"):
        if not (df["split"] == split).any():
            problems.append(
                f"{root}: no {split} slices (keras_slices_{split} missing or empty): "
                "prostate-vq train needs a train and a validate split"
            )
    splits_per_case = df.groupby("case")["split"].unique()
    for case, splits in splits_per_case.items():
        if len(splits) > 1:
            ordered = [s for s in SPLITS if s in set(splits)]
            problems.append(f"case {case} appears in several splits ({', '.join(ordered)}): patient leakage")
    return problems


def split_cases(cases, fractions, seed: int = 0) -> dict[str, str]:
    """case -> split for a seeded patient-level split with `fractions` (train, validate, test)."""
    fractions = [float(f) for f in fractions]
    if len(fractions) != 3 or not all(np.isfinite(fractions)) or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise UserInputError(f"--resplit needs three non-negative fractions that sum to 1, not {fractions}")
    cases = sorted(set(cases))
    order = np.random.default_rng(seed).permutation(len(cases))
    n = len(cases)
    counts = [round(f * n) for f in fractions]
    for k, f in enumerate(fractions):  # a split asked for gets at least one case when possible
        if f > 0 and counts[k] == 0 and n >= sum(1 for g in fractions if g > 0):
            counts[k] = 1
    counts[0] = n - counts[1] - counts[2]
    if counts[0] < 0 or (fractions[0] > 0 and counts[0] == 0):
        raise UserInputError(f"cannot split {n} cases into fractions {fractions}")
    assignment = {}
    for position, index in enumerate(order):
        split = "train" if position < counts[0] else "validate" if position < counts[0] + counts[1] else "test"
        assignment[cases[index]] = split
    return assignment


def resplit_by_case(df: pd.DataFrame, fractions, seed: int = 0) -> pd.DataFrame:
    """Re-assign ``split`` by patient (case), never by slice: every slice of a case lands in one split."""
    assignment = split_cases(df["case"].unique(), fractions, seed)
    out = df.copy()
    out["split"] = out["case"].map(assignment)
    return out


def summarize(df: pd.DataFrame) -> str:
    lines = [f"{'split':<9} {'cases':>5} {'volumes':>7} {'slices':>7} {'masks':>7}  shapes"]
    for split in SPLITS:
        part = df[df["split"] == split]
        if part.empty:
            continue
        shapes = ", ".join(f"{s} ({n})" for s, n in part["shape"].replace("", "unreadable").value_counts().items())
        lines.append(
            f"{split:<9} {part['case'].nunique():>5} {len(part.groupby(['case', 'week'])):>7} "
            f"{len(part):>7} {int((part['mask'] != '').sum()):>7}  {shapes}"
        )
    return "\n".join(lines)


def manifest_command(data, out=None, check: bool = False, resplit=None, seed: int = 0) -> int:
    """``prostate-vq manifest``: summary on stdout, CSV to ``out``; with ``check``, every problem on its
    own stderr line and exit code 2."""
    root = check_root(data)
    df = build_manifest(root)
    if resplit is not None:
        df = resplit_by_case(df, resplit, seed)
    print(summarize(df))
    if out is not None:
        out = Path(out)
        with atomic_open(out, "w", newline="", encoding="utf-8") as handle:
            df.to_csv(handle, index=False)
        print(f"manifest with {len(df)} rows written to {out}")
    if check:
        problems = check_manifest(df, root)
        if problems:
            for line in problems[:MAX_PROBLEM_LINES]:
                print(f"prostate-vq manifest: error: {line}", file=sys.stderr)
            if len(problems) > MAX_PROBLEM_LINES:
                print(f"prostate-vq manifest: error: ... and {len(problems) - MAX_PROBLEM_LINES} more problems", file=sys.stderr)
            return 2
        print(f"check passed: {len(df)} slices, {df['case'].nunique()} cases, no patient in two splits")
    else:
        unreadable = int((df["problem"] != "").sum())
        if unreadable:
            print(f"warning: {unreadable} slices could not be read; run with --check for details")
    return 0
