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
# # Comparing VQ-VAE variants: codebook collapse and its cures
#
# The classic VQ-VAE (`v1-vq`) learns its codebook by gradient: codes that lose the first few
# assignments never receive gradient again, and the codebook **collapses** onto a handful of codes.
# The variants here fix that in different ways:
#
# | preset | what changes | why it helps |
# |---|---|---|
# | `v1-vq` | van den Oord 2017: codebook loss + commitment loss | the baseline (prone to collapse) |
# | `v3-ema` | codebook updated by exponential moving averages of its assignments | codes move with the data, not by a gradient that dead codes never get |
# | ReFiT | k-means of the trained encoder's outputs becomes a new, smaller codebook, then fine-tune | every code starts at a populated spot; repairs an already collapsed model |
# | `v4-rq` | residual quantisation: 3 codebooks quantise successive residuals | finer detail from the same codebook size |
# | `fsq` | finite scalar quantisation: each of 4 channels rounded to a few levels (8x5x5x5 = 1000 codes) | no learned codebook, nothing to collapse |
# | `lfq` | lookup-free: 9 binary channels (512 codes) plus an entropy loss | no learned codebook; the entropy loss spreads usage |
#
# Every variant gets the same data, the same (small) network, the same learning rate and the same
# number of optimizer steps, so the differences come from the quantizer. Budgets are tiny (seconds per model) and
# there is one seed: the ranking can change with longer training and another seed; `prostate-vq sweep` runs the same
# comparison at full length over several seeds with paired intervals ([sweeps.md](sweeps.md)). About
# 4 minutes on 2 CPU cores, under 2 minutes with `PROSTATE_VQ_FAST=1`.

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
RUNS = Path(tempfile.mkdtemp(prefix="pvq-compare-", dir=runs_parent))
print(f"FAST={FAST}  data: {DATA}  outputs: {RUNS}")

# %%
# Quarter-resolution slices (64x32, a 16x8 code map) so that seven trainings fit in a few CPU minutes.
SPATIAL = (64, 32)
MAX_SLICES = 48 if FAST else 160
STEPS = 9 if FAST else 150  # the same number of optimizer steps for every variant
MINUTES = 0.15 if FAST else 1.0  # a wall-clock cap that only a very slow machine reaches
# One shared network and learning rate for every preset, so only the quantizer differs.
NETWORK = ["model.channels=[32, 64]", "training.lr=0.001"]
VARIANTS = ["v1-vq", "v3-ema", "v4-rq", "fsq", "lfq"]
REFIT_K = 64

# %% [markdown]
# ## 1. Train every variant on the same budget
#
# `train` takes the preset name and `overrides` (the `--set section.key=value` of the command line).
# From the shell the whole loop is one command:
# `prostate-vq sweep --presets v1-vq,v3-ema,v4-rq,fsq,lfq --out SWEEP --max-steps 150 --seeds 0,1,2 --reference v1-vq
# --spatial-size 128 64`.

# %%
import warnings

from prostate_vq.training import RunRequest, TrainOptions, train

runs = {}
for preset in VARIANTS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the collapse warning: collapse is what this notebook shows
        runs[preset] = train(
            TrainOptions(out=RUNS / preset, data=DATA, max_slices=MAX_SLICES, max_minutes=MINUTES, device="cpu", progress=False),
            RunRequest(preset=preset, spatial_size=SPATIAL, max_steps=STEPS, epochs=1000, seed=0, overrides=NETWORK),
        )
    last = pd.read_csv(runs[preset] / "history.csv").iloc[-1]
    print(
        f"{preset:>7}: {int(last.step)} steps ({int(last.epoch)} epochs), val SSIM {last.val_ssim:.3f}, "
        f"codebook usage {last.codebook_usage_pct:.1f}%"
    )

# %% [markdown]
# ## 2. ReFiT: re-build the v1 codebook, then fine-tune
#
# `refit` clusters the trained v1 encoder's latent vectors (k-means++) into `REFIT_K` centroids,
# installs them as the new codebook and fine-tunes the whole model. Command line:
# `prostate-vq refit --checkpoint RUNS/v1-vq/best.pt --codebook-size 64 --out RUNS/refit`.

# %%
from prostate_vq.training import refit

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    runs["ReFiT"] = refit(
        runs["v1-vq"] / "best.pt",
        out=RUNS / "refit",
        codebook_size=REFIT_K,
        data=DATA,
        max_steps=STEPS // 3,
        epochs=1000,
        max_minutes=MINUTES,
        device="cpu",
        seed=0,
        max_slices=MAX_SLICES,
        progress=False,
    )
print(json.dumps(json.loads((runs["ReFiT"] / "refit.json").read_text(encoding="utf-8")), indent=1)[:600])

# %% [markdown]
# ## 3. Evaluate all of them on the test patients

# %%
from prostate_vq.evaluation import evaluate_checkpoint

results = {
    name: evaluate_checkpoint(
        run / "best.pt", data=DATA, split="test", out=RUNS / "eval" / name, device="cpu", max_slices=MAX_SLICES, figures=False
    )
    for name, run in runs.items()
}
# Codes are counted as joint tuples (one code per level: v4-rq's 3 codebooks of 8 make 512 tuples), so usage and
# perplexity compare across one- and multi-level quantizers; the rate is nominal and effective (entropy) bits.
table = pd.DataFrame(
    [
        {
            "variant": name,
            "steps": r.budget.get("run_steps"),
            "bits/pixel": r.bits_per_pixel,
            "effective bits/pixel": r.effective_bits_per_pixel,
            "codes used": r.joint["joint_codes_used"],
            "possible codes": r.joint["joint_codes_possible"],
            "usage %": r.joint["joint_usage_pct"],
            "perplexity": r.joint["joint_perplexity"],
            "SSIM": r.reconstruction.ssim_mean,
            "PSNR (dB)": r.reconstruction.psnr_mean,
        }
        for name, r in results.items()
    ]
).set_index("variant")
table.round(3)

# %% [markdown]
# ## 4. What collapse looks like
#
# Per-code assignment counts on the test split, most used first (log scale). A collapsed codebook is
# a few tall bars and nothing else; a healthy one is a long tail. FSQ and LFQ have implicit codebooks
# (every combination of levels or bits is a code), so their histograms show how much of that grid the
# encoder visits.

# %%
fig, axes = plt.subplots(2, 3, figsize=(13, 6), sharey=True)
for ax, (name, r) in zip(axes.flat, results.items()):
    counts = np.sort(np.asarray(r.to_dict()["code_counts"]))[::-1]
    ax.bar(np.arange(counts.size), np.maximum(counts, 0.8), width=1.0, color="#55a868")
    ax.set_yscale("log")
    ax.set_title(f"{name}: {r.codebook.codes_used}/{counts.size} codes, perplexity {r.codebook.perplexity:.0f}", fontsize=9)
    ax.set_xlabel("code rank")
axes[0, 0].set_ylabel("assignments")
axes[1, 0].set_ylabel("assignments")
fig.tight_layout()
plt.show()

# %% [markdown]
# Codebook usage and validation SSIM per epoch, from each run's `history.csv`. The classic v1
# codebook typically collapses in the first epoch and stays collapsed (its unused codes get no
# gradient); the cures differ in how fast usage recovers, and the k-means re-build of ReFiT starts
# near full usage by construction. Very short runs (`PROSTATE_VQ_FAST=1`) show only the first epochs.

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 3.5))
for name, run in runs.items():
    h = pd.read_csv(run / "history.csv")
    axes[0].plot(h.epoch, h.codebook_usage_pct, marker=".", label=name)
    axes[1].plot(h.epoch, h.val_ssim, marker=".", label=name)
axes[0].set_ylabel("codebook usage (%)")
axes[0].set_yscale("symlog", linthresh=1)
axes[1].set_ylabel("validation SSIM")
for ax in axes:
    ax.set_xlabel("epoch")
axes[1].legend(fontsize=8)
fig.tight_layout()
plt.show()
collapsed = table.index[table["usage %"] < 10].tolist()
print("collapsed (under 10% of the codebook used on the test split):", ", ".join(collapsed) or "none")

# %% [markdown]
# Does using more codes buy reconstruction quality? Each point is one variant.

# %%
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.scatter(table["perplexity"], table["SSIM"])
for name, row in table.iterrows():
    ax.annotate(name, (row["perplexity"], row["SSIM"]), fontsize=8, xytext=(3, 3), textcoords="offset points")
ax.set_xscale("log")
ax.set_xlabel("perplexity (effective codes)")
ax.set_ylabel("test SSIM")
plt.show()

# %% [markdown]
# ## 5. Segmentation: Dice
#
# With `task="joint"` the model reconstructs the image and predicts the six-class segmentation from the
# same codes (`task="mask"` auto-encodes the masks themselves). Evaluation then adds Dice per organ.
# Here the variant with the most effective codes above is trained again on the joint task.

# %%
pick = table["perplexity"].drop("ReFiT").idxmax()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    joint_run = train(
        TrainOptions(
            out=RUNS / f"{pick}-joint", data=DATA, max_slices=MAX_SLICES, max_minutes=MINUTES, device="cpu", progress=False
        ),
        RunRequest(preset=pick, task="joint", spatial_size=SPATIAL, max_steps=STEPS, epochs=1000, seed=0, overrides=NETWORK),
    )
joint = evaluate_checkpoint(
    joint_run / "best.pt", data=DATA, split="test", out=RUNS / "eval" / f"{pick}-joint", device="cpu", max_slices=MAX_SLICES
)
print(joint.summary_table())
display(Image(filename=str(RUNS / "eval" / f"{pick}-joint" / joint.figures["segmentation_overlays"])))

# %% [markdown]
# ## Summary

# %%
summary = {
    name: {
        "ssim_mean": r.to_dict()["ssim_mean"],
        "codebook_usage_pct": r.codebook.codebook_usage_pct,
        "perplexity": r.codebook.perplexity,
    }
    for name, r in results.items()
}
summary[f"{pick}-joint"] = {k: joint.to_dict()[k] for k in ("ssim_mean", "dice_mean", "codebook_usage_pct")}
summary
