"""Every figure prostate-vq draws. Uses matplotlib's object API (no pyplot): no global backend switch,
no open-figure leaks, safe in notebooks and headless servers alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from prostate_vq.evaluation.metrics import SSIM_THRESHOLD
from prostate_vq.files import atomic_open

# background (masked out, never drawn); body, bones, bladder, rectum, prostate
_LABEL_COLOURS = ["#000000", "#4c72b0", "#dddddd", "#f2c12e", "#8c564b", "#d62728"]
_LABEL_CMAP = ListedColormap(_LABEL_COLOURS)
_DPI = 110


def _save(fig: Figure, path: str | Path) -> Path:
    """Atomically: a full disk leaves the previous figure, never a truncated one."""
    path = Path(path)
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format=path.suffix.lstrip(".") or "png", dpi=_DPI, bbox_inches="tight")
    return path


def _grid(rows: int, cols: int, cell: float = 2.0, aspect: float = 1.0) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(cell * cols, cell * rows * aspect + 0.4), layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def _aspect(image: np.ndarray) -> float:
    return image.shape[-2] / image.shape[-1]


def reconstruction_grid(images, recons, path, titles=None, suptitle: str | None = None) -> Path:
    """Rows: input, reconstruction, |error| (own colour scale, bar shown); one column per slice."""
    images = [np.asarray(i, dtype=np.float32).squeeze() for i in images]
    recons = [np.clip(np.asarray(r, dtype=np.float32).squeeze(), 0, 1) for r in recons]
    n = len(images)
    fig, axes = _grid(3, n, aspect=_aspect(images[0]))
    errors = [np.abs(r - i) for r, i in zip(recons, images)]
    vmax = max(float(e.max()) for e in errors) or 1.0
    for c in range(n):
        axes[0, c].imshow(images[c], cmap="gray", vmin=0, vmax=1)
        axes[1, c].imshow(recons[c], cmap="gray", vmin=0, vmax=1)
        shown = axes[2, c].imshow(errors[c], cmap="magma", vmin=0, vmax=vmax)
        if titles:
            axes[0, c].set_title(titles[c], fontsize=8)
    for r, label in enumerate(("input", "reconstruction", "|error|")):
        axes[r, 0].set_ylabel(label, fontsize=9)
    fig.colorbar(shown, ax=axes[2, :].tolist(), shrink=0.8, pad=0.01)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return _save(fig, path)


def segmentation_overlay(images, targets, preds, path, titles=None, suptitle: str | None = None, label_names=None) -> Path:
    """Rows: reference labels over the image, predicted labels over the image."""
    images = [np.asarray(i, dtype=np.float32).squeeze() for i in images]
    n = len(images)
    fig, axes = _grid(2, n, aspect=_aspect(images[0]))
    for c in range(n):
        for r, labels in enumerate((targets[c], preds[c])):
            axes[r, c].imshow(images[c], cmap="gray", vmin=0, vmax=1)
            axes[r, c].imshow(
                np.ma.masked_equal(np.asarray(labels).squeeze(), 0),
                cmap=_LABEL_CMAP,
                vmin=0,
                vmax=len(_LABEL_COLOURS) - 1,
                alpha=0.45,
                interpolation="nearest",
            )
        if titles:
            axes[0, c].set_title(titles[c], fontsize=8)
    axes[0, 0].set_ylabel("reference", fontsize=9)
    axes[1, 0].set_ylabel("prediction", fontsize=9)
    if label_names:
        from matplotlib.patches import Patch

        handles = [Patch(color=_LABEL_COLOURS[i], label=name) for i, name in enumerate(label_names) if i > 0]
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return _save(fig, path)


def sample_grid(images, labels, path, title: str, max_cells: int = 64) -> Path:
    """Sampled slices, up to 8 a row: images with their organ labels over them, or label maps alone."""
    base = images if images is not None else labels
    n = min(max_cells, len(base))
    cols = min(8, n)
    rows = -(-n // cols)
    fig, axes = _grid(rows, cols, cell=1.6, aspect=_aspect(np.asarray(base[0]).squeeze()))
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        if images is not None:
            ax.imshow(np.asarray(images[k], dtype=np.float32).squeeze(), cmap="gray", vmin=0, vmax=1)
        if labels is not None:
            label = np.asarray(labels[k]).squeeze()
            if images is not None:
                ax.imshow(
                    np.ma.masked_equal(label, 0),
                    cmap=_LABEL_CMAP,
                    vmin=0,
                    vmax=len(_LABEL_COLOURS) - 1,
                    alpha=0.45,
                    interpolation="nearest",
                )
            else:
                ax.imshow(label, cmap=_LABEL_CMAP, vmin=0, vmax=len(_LABEL_COLOURS) - 1, interpolation="nearest")
        ax.set_title(str(k), fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def ssim_histogram(ssim, path, threshold: float = SSIM_THRESHOLD) -> Path:
    ssim = np.asarray(ssim, dtype=np.float64)
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    lo = min(0.0, float(ssim.min())) if ssim.size else 0.0
    ax.hist(ssim, bins=np.linspace(lo, 1.0, 41).tolist(), color="#4c72b0", edgecolor="white")
    ax.axvline(threshold, color="#d62728", linestyle="--", label=f"SSIM = {threshold}")
    passed = float((ssim > threshold).mean() * 100) if ssim.size else 0.0
    ax.set_title(f"per-slice SSIM (n={ssim.size}, {passed:.1f}% > {threshold})", fontsize=10)
    ax.set_xlabel("SSIM")
    ax.set_ylabel("slices")
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def codebook_usage(counts, path) -> Path:
    """Per-code counts sorted from most to least used: a flat curve means a healthy codebook."""
    counts = np.sort(np.asarray(counts, dtype=np.int64))[::-1]
    used = int((counts > 0).sum())
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    ax.bar(np.arange(counts.size), np.maximum(counts, 0), width=1.0, color="#55a868")
    if counts.max(initial=0) > 0:
        ax.set_yscale("log")
    ax.set_title(f"codebook usage: {used}/{counts.size} codes ({100 * used / max(counts.size, 1):.1f}%)", fontsize=10)
    ax.set_xlabel("code rank (most used first)")
    ax.set_ylabel("assignments")
    return _save(fig, path)


def training_curves(history, path) -> Path:
    """One panel per metric family of ``history.csv`` (losses, then every other numeric column)."""
    import pandas as pd

    frame = history if isinstance(history, pd.DataFrame) else pd.read_csv(history)
    x_name = "epoch" if "epoch" in frame.columns else None
    x = frame[x_name] if x_name else np.arange(len(frame))
    skip = {"epoch", "time", "seconds", "elapsed", "elapsed_s", "lr_step", "step"}
    numeric = [c for c in frame.columns if c not in skip and pd.api.types.is_numeric_dtype(frame[c]) and frame[c].notna().any()]
    families: dict[str, list[str]] = {}
    for column in numeric:
        family = column.split("_", 1)[1] if column.startswith(("train_", "val_")) else column
        families.setdefault("loss" if "loss" in family else family, []).append(column)
    if not families:
        raise ValueError("history has no numeric columns to plot")
    n = len(families)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(4 * cols, 2.8 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, (family, columns) in zip(axes, families.items()):
        for column in columns:
            ax.plot(x, frame[column], marker="." if len(frame) < 30 else None, label=column)
        if family == "loss" and (frame[columns] > 0).all().all():
            ax.set_yscale("log")
        ax.set_title(family, fontsize=10)
        ax.set_xlabel(x_name or "row")
        ax.legend(fontsize=7)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    return _save(fig, path)


def rate_distortion(ours: list[dict], codecs: dict[str, list[dict]], path) -> Path:
    """SSIM and PSNR against bits per pixel: our cells (mean ± sd over seeds, at the nominal rate; a hollow
    marker at the effective rate where it differs) and each codec's curve through its points (mean file size)."""
    from matplotlib import colormaps

    fig = Figure(figsize=(11, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    tab20 = colormaps["tab20"]
    colours = [tab20(i) for i in range(tab20.N)]  # its 20 colours (RGBA)
    markers = "ov^Dx*"
    for ax, metric, label in ((axes[0], "ssim", "SSIM"), (axes[1], "psnr", "PSNR (dB)")):
        for k, (name, points) in enumerate(sorted(codecs.items())):
            points = sorted(points, key=lambda p: p["bpp"])
            ax.plot(
                [p["bpp"] for p in points],
                [p[metric] for p in points],
                ls="--",
                marker=markers[k % 6],
                ms=4,
                lw=1,
                color=str(0.15 + 0.15 * (k % 4)),
                label=name,
            )
        for k, cell in enumerate(ours):
            if cell.get(metric) is None:
                continue
            colour = colours[k % len(colours)]
            ax.errorbar(
                cell["bpp"],
                cell[metric],
                yerr=cell.get(f"{metric}_sd") or 0,
                fmt="s",
                ms=6,
                capsize=3,
                color=colour,
                label=cell["name"],
            )
            effective = cell.get("effective_bpp")
            if effective is not None and not np.isclose(effective, cell["bpp"]):
                ax.plot([effective], [cell[metric]], "s", mfc="none", color=colour, ms=6)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bits per pixel (log2 scale)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="outside right center")
    fig.suptitle(
        "Rate and distortion: filled = nominal rate, hollow = effective (entropy of the codes used); grey dashed = image codecs",
        fontsize=9,
    )
    return _save(fig, path)
