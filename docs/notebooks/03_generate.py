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
# # Generating new slices: a prior over the codes
#
# A VQ-VAE turns every slice into a small map of discrete codes. An autoregressive **prior** (a gated
# PixelCNN here; a causal transformer is the other choice) learns the distribution of those code maps;
# sampling it and decoding the codes gives new slices. Because a generator can simply copy its
# training data, `sample` also runs a **memorisation check**: how close each sample is to its nearest
# training slice, compared with how close real unseen (validation) slices get.
#
# About 4 minutes on 2 CPU cores, under 2 minutes with `PROSTATE_VQ_FAST=1`. The shell equivalents:
# `prostate-vq train-prior`, `prostate-vq sample`, `prostate-vq encode` (see `docs/prior.md`).

# %%
# %matplotlib inline
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Image, display
import json
import warnings
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
RUNS = Path(tempfile.mkdtemp(prefix="pvq-generate-", dir=runs_parent))
print(f"FAST={FAST}  data: {DATA}  outputs: {RUNS}")

# %%
SPATIAL = (128, 64)
MAX_SLICES = 96 if FAST else 320
VQ_MINUTES = 0.4 if FAST else 1.5
PRIOR_MINUTES = 0.3 if FAST else 1.5
PRIOR_SIZE = {"dim": 32, "layers": 4} if FAST else {}  # {} = the pixelcnn defaults (64 channels, 8 layers)
N_SAMPLES = 8 if FAST else 16

# %% [markdown]
# ## 1. A VQ-VAE to provide the codes
#
# A short training of the `default` preset (see `01_quickstart.ipynb`), set to downsample by 4
# instead of 2: a coarser code map (32x16 codes for a 128x64 slice) is quicker to model and to sample.

# %%
from prostate_vq.training import RunRequest, TrainOptions, train

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    vq_run = train(
        TrainOptions(out=RUNS / "vqvae", data=DATA, max_slices=MAX_SLICES, max_minutes=VQ_MINUTES, device="cpu", progress=False),
        RunRequest(
            preset="default", spatial_size=SPATIAL, epochs=40, seed=0, overrides=["model.channels=[32, 64]", "model.downsample=4"]
        ),
    )
print(pd.read_csv(vq_run / "history.csv").iloc[-1][["epoch", "val_ssim", "codebook_usage_pct"]].to_dict())

# %% [markdown]
# What the prior sees: `encode_dataset` exports every slice's code map (`prostate-vq encode`): here
# a 32x16 map of indices into the 512-code codebook.

# %%
from prostate_vq.prior import encode_dataset, read_codes

codes_path = encode_dataset(vq_run / "best.pt", data=DATA, split="validate", out=RUNS / "codes.npz", device="cpu", max_slices=8)
codes, meta = read_codes(codes_path)
print(codes.shape, meta["layout"])
fig, axes = plt.subplots(1, 4, figsize=(6, 3.5))
for ax, code_map in zip(axes, codes):
    ax.imshow(code_map, cmap="nipy_spectral", interpolation="nearest")
    ax.axis("off")
fig.suptitle("code maps of four validation slices")
plt.show()

# %% [markdown]
# ## 2. Train the prior
#
# `train_prior` encodes the train/validate/test splits with the frozen VQ-VAE and fits the PixelCNN
# by maximum likelihood, with early stopping on the validation negative log-likelihood. The score is
# **bits per code**: the uniform baseline is log2(K) bits, and the unigram baseline (code frequencies,
# no spatial context) is what a prior must beat to have learned any structure.

# %%
from prostate_vq.prior import train_prior

prior_run = train_prior(
    vq_run / "best.pt",
    data=DATA,
    out=RUNS / "prior",
    arch="pixelcnn",
    epochs=30,
    max_minutes=PRIOR_MINUTES,
    device="cpu",
    seed=0,
    max_slices=MAX_SLICES,
    progress=False,
    arch_options=PRIOR_SIZE,
)
prior_metrics = json.loads((prior_run / "metrics.json").read_text(encoding="utf-8"))
display(pd.read_csv(prior_run / "history.csv").round(4))
{
    k: prior_metrics[k]
    for k in (
        "layout",
        "val_nll_bits_per_code",
        "unigram_val_bits_per_code",
        "uniform_bits_per_code",
        "epochs_run",
        "stop_reason",
        "parameters",
    )
}

# %% [markdown]
# ## 3. Sample new slices
#
# `sample` draws code maps position by position, decodes them with the VQ-VAE stored in the prior
# checkpoint, writes NIfTI slices, a grid figure, `codes.npz` and `samples.json`. The same seed and
# temperature give the same samples; a lower temperature gives safer, less varied samples.

# %%
from prostate_vq.prior import sample

samples_dir = sample(prior_run / "best.pt", n=N_SAMPLES, out=RUNS / "samples", temperature=1.0, seed=0, device="cpu", data=DATA)
sorted(p.name for p in samples_dir.iterdir())

# %%
display(Image(filename=str(samples_dir / "samples_grid.png")))

# %% [markdown]
# What to expect: after a minute or two of CPU training the prior has learned local texture and
# coarse intensity statistics, not anatomy; its validation likelihood beats the unigram baseline but
# is far from converged. Anatomically plausible samples need a prior trained for much longer (for
# example `prostate-vq train-prior --max-minutes 120` on a GPU) on a well-trained VQ-VAE.

# %% [markdown]
# ## 4. The memorisation check
#
# For every sample, `samples.json` names its nearest training slice (by SSIM, searched among the
# training slices closest in L2) and the similarity, plus the Wasserstein distance between the
# sample's intensity histogram and the training histogram. The `reference` block runs the same check
# on real validation slices, which the models never saw: samples much closer to a training slice than
# any validation slice gets are copies. `samples_closer_than_any_validation_slice` near 0 is healthy.

# %%
report = json.loads((samples_dir / "samples.json").read_text(encoding="utf-8"))
per_sample = pd.DataFrame(report["samples"]).set_index("index")
display(per_sample[["nearest_train_file", "nearest_train_similarity", "distribution_distance", "nll_bits_per_code"]].round(4))
reference = report["reference"]
if reference is not None:
    print(
        f"samples: nearest-training SSIM {report['summary']['nearest_train_similarity']['mean']:.3f} on average; "
        f"validation slices: {reference['nearest_train_similarity']['mean']:.3f} "
        f"(max {reference['nearest_train_similarity']['max']:.3f})"
    )
    print(
        "share of samples closer to a training slice than any validation slice:",
        reference["samples_closer_than_any_validation_slice"],
    )

# %% [markdown]
# Each sample next to its nearest training slice (intensity-scaled the way the model saw it).

# %%
from prostate_vq.data import load_slice, make_dataset

train_ds = make_dataset(DATA, "train", task="image", spatial_size=SPATIAL, max_slices=MAX_SLICES)
by_name = {r.image.name: i for i, r in enumerate(train_ds.records)}
show = per_sample.index[:4]
fig, axes = plt.subplots(2, len(show), figsize=(2.2 * len(show), 6), squeeze=False)
for col, k in enumerate(show):
    row = per_sample.loc[k]
    axes[0, col].imshow(load_slice(samples_dir / row["file"]), cmap="gray", vmin=0, vmax=1)
    axes[0, col].set_title(f"sample {k}", fontsize=8)
    axes[1, col].imshow(train_ds[by_name[row["nearest_train_file"]]]["image"][0], cmap="gray", vmin=0, vmax=1)
    axes[1, col].set_title(f"nearest train, SSIM {row['nearest_train_similarity']:.2f}", fontsize=8)
for ax in axes.flat:
    ax.axis("off")
fig.tight_layout()
plt.show()

# %%
fig, ax = plt.subplots(figsize=(5, 3))
ax.hist(per_sample["nearest_train_similarity"], bins=10, alpha=0.7, label="samples")
if reference is not None:
    ax.axvline(reference["nearest_train_similarity"]["max"], color="k", ls="--", label="closest validation slice")
    ax.axvline(reference["nearest_train_similarity"]["mean"], color="grey", ls=":", label="validation mean")
ax.set_xlabel("SSIM to the nearest training slice")
ax.legend(fontsize=8)
plt.show()

# %%
{
    "n": report["n"],
    "layout": report["layout"],
    "similarity": report["similarity"],
    "nearest_train_similarity_mean": report["summary"]["nearest_train_similarity"]["mean"],
    "samples_closer_than_any_validation_slice": None
    if reference is None
    else reference["samples_closer_than_any_validation_slice"],
}
