# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # prostate-vq quick start
#
# This notebook walks the whole path once: load HipMRI-layout slices, look at them with their organ
# masks, train a small VQ-VAE, evaluate it on the held-out test patients, and inspect reconstructions,
# error maps and codebook usage.
#
# It runs on the built-in **demo phantom** (a synthetic, HipMRI-like dataset) unless the environment
# variable `HIPMRI_ROOT` points at a real HipMRI folder. About 4 minutes on 2 CPU cores; with
# `PROSTATE_VQ_FAST=1` it uses smaller slices and a shorter training (under 2 minutes), which is
# how the test suite runs it. Everything here is also a command: see `docs/cli.md`.

# %%
# %matplotlib inline
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Image, display
import torch
from prostate_vq.data import default_data_root

# PROSTATE_VQ_FAST=1 (the test suite sets it): fewer slices, smaller slices, shorter training.
FAST = os.environ.get("PROSTATE_VQ_FAST") == "1"

# A real HipMRI folder (keras_slices_train, keras_slices_seg_train, ...) if you point HIPMRI_ROOT or
# PROSTATE_VQ_DATA at one; otherwise the built-in demo phantom (generated once, then cached).
DATA = Path(os.environ.get("HIPMRI_ROOT") or os.environ.get("PROSTATE_VQ_DATA") or default_data_root())

# Every run of this notebook writes into a fresh folder (set PROSTATE_VQ_RUNS to choose where they go).
runs_parent = os.environ.get("PROSTATE_VQ_RUNS")
if runs_parent:
    os.makedirs(runs_parent, exist_ok=True)
RUNS = Path(tempfile.mkdtemp(prefix="pvq-quickstart-", dir=runs_parent))
print(f"FAST={FAST}  data: {DATA}  outputs: {RUNS}")

# %%
# Budget: the same code path in both modes, only smaller.
# Half resolution (the phantom and HipMRI slices are 256x128) keeps a CPU run to minutes; use
# SPATIAL = (256, 128) for real work.
SPATIAL = (128, 64)  # rows x columns the model sees
MAX_SLICES = 96 if FAST else 240  # evenly spaced subset per split (every case kept)
MINUTES = 0.6 if FAST else 2.5  # wall-clock training budget
EPOCHS = 20 if FAST else 40

# %% [markdown]
# ## 1. The data
#
# A HipMRI folder holds one folder of 2D NIfTI slices per split (`keras_slices_train`,
# `keras_slices_validate`, `keras_slices_test`) and the matching masks (`keras_slices_seg_*`). The
# split is by patient, so no patient's slices appear in two splits. `discover` lists the slices;
# `make_dataset` loads, scales (per-slice robust min-max to [0, 1]) and resizes them, and caches the
# result in memory.

# %%
from prostate_vq.data import LABEL_NAMES, SPLITS, discover, make_dataset

records = discover(DATA)
for split in SPLITS:
    cases = sorted({r.case for r in records[split]})
    print(
        f"{split:>8}: {len(records[split]):5d} slices from {len(cases)} patients ({', '.join(cases[:6])}"
        f"{', ...' if len(cases) > 6 else ''})"
    )
print("labels:", dict(enumerate(LABEL_NAMES)))

# %%
train_ds = make_dataset(DATA, "train", task="joint", spatial_size=SPATIAL, max_slices=MAX_SLICES)
item = train_ds[0]
print({k: (tuple(v.shape), v.dtype) if torch.is_tensor(v) else v for k, v in item.items()})

# %% [markdown]
# Slices with their masks. The overlay colours the five foreground labels; background (label 0) is
# left transparent.

# %%
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

COLOURS = ["#000000", "#4c72b0", "#dddddd", "#f2c12e", "#8c564b", "#d62728"]
organ_cmap = ListedColormap(COLOURS)


def show_with_masks(dataset, picks, title=""):
    fig, axes = plt.subplots(2, len(picks), figsize=(2.2 * len(picks), 5.6), squeeze=False)
    for col, i in enumerate(picks):
        item = dataset[i]
        image, label = item["image"][0].numpy(), item["label"][0].numpy()
        axes[0, col].imshow(image, cmap="gray", vmin=0, vmax=1)
        axes[0, col].set_title(f"case {item['case']} w{item['week']} s{item['slice']}", fontsize=8)
        axes[1, col].imshow(image, cmap="gray", vmin=0, vmax=1)
        axes[1, col].imshow(np.ma.masked_equal(label, 0), cmap=organ_cmap, vmin=0, vmax=5, alpha=0.5, interpolation="nearest")
        for ax in axes[:, col]:
            ax.axis("off")
    fig.legend(
        handles=[Patch(color=COLOURS[k], label=f"{k} {LABEL_NAMES[k]}") for k in range(1, 6)],
        loc="lower center",
        ncol=5,
        fontsize=8,
        frameon=False,
    )
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    plt.show()


show_with_masks(train_ds, np.linspace(0, len(train_ds) - 1, 5).round().astype(int), "training slices and masks")

# %% [markdown]
# ## 2. Train a small model
#
# Models are named presets (`prostate-vq presets` lists them; `docs/models.md` explains them).
# `default` is a lean VQ-VAE whose codebook (K=512 low-dimensional cosine codes with dead-code
# restarts) stays almost fully used from the first epochs; its one-line description is printed below.
# `train` writes a run folder with `best.pt` (best validation loss), `last.pt` (for `--resume`),
# `history.csv` and `config.yaml`. The same run from the shell:
# `prostate-vq train --out RUN --preset default --spatial-size 128 64 --max-minutes 2.5`.

# %%
from prostate_vq.models import list_presets
from prostate_vq.training import RunRequest, TrainOptions, train

print(dict(list_presets())["default"])
# TrainOptions: how the run runs (data, folder, device, budget in minutes); RunRequest: what it trains.
run = train(
    TrainOptions(out=RUNS / "default", data=DATA, max_slices=MAX_SLICES, max_minutes=MINUTES, device="cpu", progress=False),
    RunRequest(preset="default", task="image", spatial_size=SPATIAL, epochs=EPOCHS, seed=0),
)
sorted(p.name for p in run.iterdir())

# %% [markdown]
# `history.csv` has one row per epoch: losses, validation SSIM, codebook usage and perplexity, and
# how many dead codes were restarted.

# %%
history = pd.read_csv(run / "history.csv")
display(history.round(4))
fig, axes = plt.subplots(1, 3, figsize=(12, 3))
history.plot(x="epoch", y=["train_loss", "val_loss"], ax=axes[0], marker=".", logy=True, title="loss")
history.plot(x="epoch", y="val_ssim", ax=axes[1], marker=".", title="validation SSIM", legend=False)
history.plot(x="epoch", y="codebook_usage_pct", ax=axes[2], marker=".", title="codebook usage (%)", legend=False)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Evaluate on the test patients
#
# `evaluate_checkpoint` rebuilds the model from `best.pt` (task, slice size and intensity scaling all
# come from the checkpoint), scores every test slice and writes `metrics.json`, `per_slice.csv` and
# figures. Same as `prostate-vq evaluate --checkpoint RUN/best.pt --out EVAL`. The project's
# acceptance bar is a mean SSIM above 0.6; a training this short may not reach it.

# %%
from prostate_vq.evaluation import evaluate_checkpoint

result = evaluate_checkpoint(run / "best.pt", data=DATA, split="test", out=RUNS / "eval", device="cpu", max_slices=MAX_SLICES)
print(result.summary_table())

# %%
per_slice = pd.read_csv(RUNS / "eval" / "per_slice.csv")
display(per_slice.describe().loc[["mean", "std", "min", "max"], ["ssim", "psnr", "mse", "mae"]].round(4))
display(Image(filename=str(RUNS / "eval" / result.figures["reconstructions"])))

# %% [markdown]
# ## 4. Reconstructions and error maps, by hand
#
# The same model through the Python API: `load_model` returns the network and the checkpoint payload;
# `model.prepare_input(batch)` builds the network input from a dataset batch; the output carries the
# reconstruction, the code map (`indices`) and the quantizer losses. The worst slices by SSIM show
# where the model struggles.

# %%
from prostate_vq.runtime import load_model

model, payload = load_model(run / "best.pt", device="cpu")
test_ds = make_dataset(
    DATA, "test", task="image", spatial_size=tuple(payload["spatial_size"]), max_slices=MAX_SLICES, intensity=payload["intensity"]
)
worst = per_slice.sort_values("ssim").index[:2].tolist()
best = per_slice.sort_values("ssim").index[-2:].tolist()
picks = worst + best
with torch.no_grad():
    batch = test_ds.batch(picks)
    out = model(model.prepare_input(batch))
images, recons = batch["image"][:, 0].numpy(), out.recon.clamp(0, 1)[:, 0].numpy()
errors = np.abs(recons - images)

fig, axes = plt.subplots(4, len(picks), figsize=(2.2 * len(picks), 9.5), squeeze=False)
for col, i in enumerate(picks):
    axes[0, col].imshow(images[col], cmap="gray", vmin=0, vmax=1)
    axes[0, col].set_title(f"{'worst' if i in worst else 'best'}: SSIM {per_slice.ssim[i]:.3f}", fontsize=8)
    axes[1, col].imshow(recons[col], cmap="gray", vmin=0, vmax=1)
    shown = axes[2, col].imshow(errors[col], cmap="magma", vmin=0, vmax=errors.max())
    axes[3, col].imshow(out.indices[col].numpy(), cmap="nipy_spectral", interpolation="nearest")
for row, name in enumerate(["input", "reconstruction", "|error|", "code map"]):
    axes[row, 0].set_ylabel(name)
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
fig.colorbar(shown, ax=axes[2, :].tolist(), shrink=0.8)
plt.show()
print("code map per slice:", tuple(out.indices.shape[1:]), "for a", tuple(images.shape[1:]), "slice")

# %% [markdown]
# ## 5. Codebook usage
#
# A VQ-VAE is only as expressive as the codes it actually uses. *Codebook collapse* (most codes never
# chosen) is the classic failure; `codebook_usage_pct` and the perplexity (the effective number of
# codes, `exp` of the entropy of code frequencies) measure it. A healthy codebook shows a long, flat
# curve here; a collapsed one a few tall bars. Notebook 02 compares the variants that fight collapse.

# %%
counts = np.asarray(result.to_dict()["code_counts"])
ranked = np.sort(counts)[::-1]
fig, axes = plt.subplots(1, 2, figsize=(11, 3))
axes[0].bar(np.arange(ranked.size), ranked, width=1.0, color="#55a868")
axes[0].set_yscale("log")
axes[0].set_xlabel("code rank (most used first)")
axes[0].set_ylabel("assignments on the test split")
p = ranked[ranked > 0] / ranked.sum()
axes[1].plot(np.cumsum(p), color="#4c72b0")
axes[1].set_xlabel("number of codes")
axes[1].set_ylabel("share of assignments covered")
fig.suptitle(f"{(counts > 0).sum()} of {counts.size} codes used, perplexity {result.codebook.perplexity:.1f}")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 6. The numbers
#
# `result.to_dict()` is exactly what `metrics.json` holds. Next: `02_compare_variants.ipynb` (which
# quantizer to use) and `03_generate.ipynb` (sampling new slices from a prior over the codes).

# %%
metrics = result.to_dict()
{
    k: metrics[k]
    for k in (
        "preset",
        "task",
        "n_slices",
        "ssim_mean",
        "psnr_mean",
        "verdict",
        "codes_used",
        "codebook_size",
        "codebook_usage_pct",
        "perplexity",
    )
}
