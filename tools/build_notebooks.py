"""Write docs/01_quickstart.ipynb, docs/02_compare_variants.ipynb and docs/03_generate.ipynb.

The notebooks are generated from the cell lists below so that their code stays reviewable as plain
Python and the committed JSON never carries outputs. Edit here, then run::

    python tools/build_notebooks.py

tests/test_notebooks.py executes the written notebooks (with PROSTATE_VQ_FAST=1) and checks that
they carry no outputs.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _setup(prefix: str, extra_imports: str = "") -> str:
    """The first code cell of every notebook: FAST switch, data folder, a fresh output folder."""
    return f'''\
%matplotlib inline
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Image, display
{extra_imports}
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
RUNS = Path(tempfile.mkdtemp(prefix="{prefix}-", dir=runs_parent))
print(f"FAST={{FAST}}  data: {{DATA}}  outputs: {{RUNS}}")'''


# --------------------------------------------------------------------------------------------
QUICKSTART = [
    ("md", """\
# prostate-vq quick start

This notebook walks the whole path once: load HipMRI-layout slices, look at them with their organ
masks, train a small VQ-VAE, evaluate it on the held-out test patients, and inspect reconstructions,
error maps and codebook usage.

It runs on the built-in **demo phantom** (a synthetic, HipMRI-like dataset) unless the environment
variable `HIPMRI_ROOT` points at a real HipMRI folder. About 4 minutes on 2 CPU cores; with
`PROSTATE_VQ_FAST=1` it uses smaller slices and a shorter training (under 2 minutes), which is
how the test suite runs it. Everything here is also a command: see `docs/cli.md`."""),
    ("code", _setup("pvq-quickstart", "import torch")),
    ("code", """\
# Budget: the same code path in both modes, only smaller.
# Half resolution (the phantom and HipMRI slices are 256x128) keeps a CPU run to minutes; use
# SPATIAL = (256, 128) for real work.
SPATIAL = (128, 64)                            # rows x columns the model sees
MAX_SLICES = 96 if FAST else 240               # evenly spaced subset per split (every case kept)
MINUTES = 0.6 if FAST else 2.5                 # wall-clock training budget
EPOCHS = 20 if FAST else 40"""),
    ("md", """\
## 1. The data

A HipMRI folder holds one folder of 2D NIfTI slices per split (`keras_slices_train`,
`keras_slices_validate`, `keras_slices_test`) and the matching masks (`keras_slices_seg_*`). The
split is by patient, so no patient's slices appear in two splits. `discover` lists the slices;
`make_dataset` loads, scales (per-slice robust min-max to [0, 1]) and resizes them, and caches the
result in memory."""),
    ("code", """\
from prostate_vq.data import LABEL_NAMES, SPLITS, discover, make_dataset

records = discover(DATA)
for split in SPLITS:
    cases = sorted({r.case for r in records[split]})
    print(f"{split:>8}: {len(records[split]):5d} slices from {len(cases)} patients ({', '.join(cases[:6])}"
          f"{', ...' if len(cases) > 6 else ''})")
print("labels:", dict(enumerate(LABEL_NAMES)))"""),
    ("code", """\
train_ds = make_dataset(DATA, "train", task="joint", spatial_size=SPATIAL, max_slices=MAX_SLICES)
item = train_ds[0]
print({k: (tuple(v.shape), v.dtype) if torch.is_tensor(v) else v for k, v in item.items()})"""),
    ("md", """\
Slices with their masks. The overlay colours the five foreground labels; background (label 0) is
left transparent."""),
    ("code", """\
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
        axes[1, col].imshow(np.ma.masked_equal(label, 0), cmap=organ_cmap, vmin=0, vmax=5, alpha=0.5,
                            interpolation="nearest")
        for ax in axes[:, col]:
            ax.axis("off")
    fig.legend(handles=[Patch(color=COLOURS[k], label=f"{k} {LABEL_NAMES[k]}") for k in range(1, 6)],
               loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    plt.show()


show_with_masks(train_ds, np.linspace(0, len(train_ds) - 1, 5).round().astype(int), "training slices and masks")"""),
    ("md", """\
## 2. Train a small model

Models are named presets (`prostate-vq presets` lists them; `docs/models.md` explains them).
`default` is a lean VQ-VAE whose codebook (K=512 low-dimensional cosine codes with dead-code
restarts) stays almost fully used from the first epochs; its one-line description is printed below.
`train` writes a run folder with `best.pt` (best validation loss), `last.pt` (for `--resume`),
`history.csv` and `config.yaml`. The same run from the shell:
`prostate-vq train --out RUN --preset default --spatial-size 128 64 --max-minutes 2.5`."""),
    ("code", """\
from prostate_vq.models import list_presets
from prostate_vq.training import TrainOptions, train

print(dict(list_presets())["default"])
run = train(TrainOptions(out=RUNS / "default", data=DATA, preset="default", task="image", spatial_size=SPATIAL,
                         max_slices=MAX_SLICES, epochs=EPOCHS, max_minutes=MINUTES, seed=0, device="cpu",
                         progress=False))
sorted(p.name for p in run.iterdir())"""),
    ("md", """\
`history.csv` has one row per epoch: losses, validation SSIM, codebook usage and perplexity, and
how many dead codes were restarted."""),
    ("code", """\
history = pd.read_csv(run / "history.csv")
display(history.round(4))
fig, axes = plt.subplots(1, 3, figsize=(12, 3))
history.plot(x="epoch", y=["train_loss", "val_loss"], ax=axes[0], marker=".", logy=True, title="loss")
history.plot(x="epoch", y="val_ssim", ax=axes[1], marker=".", title="validation SSIM", legend=False)
history.plot(x="epoch", y="codebook_usage_pct", ax=axes[2], marker=".", title="codebook usage (%)", legend=False)
fig.tight_layout()
plt.show()"""),
    ("md", """\
## 3. Evaluate on the test patients

`evaluate_checkpoint` rebuilds the model from `best.pt` (task, slice size and intensity scaling all
come from the checkpoint), scores every test slice and writes `metrics.json`, `per_slice.csv` and
figures. Same as `prostate-vq evaluate --checkpoint RUN/best.pt --out EVAL`. The project's
acceptance bar is a mean SSIM above 0.6; a training this short may not reach it."""),
    ("code", """\
from prostate_vq.evaluation import evaluate_checkpoint

result = evaluate_checkpoint(run / "best.pt", data=DATA, split="test", out=RUNS / "eval", device="cpu",
                             max_slices=MAX_SLICES)
print(result.summary_table())"""),
    ("code", """\
per_slice = pd.read_csv(RUNS / "eval" / "per_slice.csv")
display(per_slice.describe().loc[["mean", "std", "min", "max"], ["ssim", "psnr", "mse", "mae"]].round(4))
display(Image(filename=str(RUNS / "eval" / result.figures["reconstructions"])))"""),
    ("md", """\
## 4. Reconstructions and error maps, by hand

The same model through the Python API: `load_model` returns the network and the checkpoint payload;
`model.prepare_input(batch)` builds the network input from a dataset batch; the output carries the
reconstruction, the code map (`indices`) and the quantizer losses. The worst slices by SSIM show
where the model struggles."""),
    ("code", """\
from prostate_vq.training import load_model

model, payload = load_model(run / "best.pt", device="cpu")
test_ds = make_dataset(DATA, "test", task="image", spatial_size=tuple(payload["spatial_size"]),
                       max_slices=MAX_SLICES, intensity=payload["intensity"])
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
print("code map per slice:", tuple(out.indices.shape[1:]), "for a", tuple(images.shape[1:]), "slice")"""),
    ("md", """\
## 5. Codebook usage

A VQ-VAE is only as expressive as the codes it actually uses. *Codebook collapse* (most codes never
chosen) is the classic failure; `codebook_usage_pct` and the perplexity (the effective number of
codes, `exp` of the entropy of code frequencies) measure it. A healthy codebook shows a long, flat
curve here; a collapsed one a few tall bars. Notebook 02 compares the variants that fight collapse."""),
    ("code", """\
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
plt.show()"""),
    ("md", """\
## 6. The numbers

`result.to_dict()` is exactly what `metrics.json` holds. Next: `02_compare_variants.ipynb` (which
quantizer to use) and `03_generate.ipynb` (sampling new slices from a prior over the codes)."""),
    ("code", """\
metrics = result.to_dict()
{k: metrics[k] for k in ("preset", "task", "n_slices", "ssim_mean", "psnr_mean", "verdict", "codes_used",
                         "codebook_size", "codebook_usage_pct", "perplexity")}"""),
]


# --------------------------------------------------------------------------------------------
COMPARE = [
    ("md", """\
# Comparing VQ-VAE variants: codebook collapse and its cures

The classic VQ-VAE (`v1-vq`) learns its codebook by gradient: codes that lose the first few
assignments never receive gradient again, and the codebook **collapses** onto a handful of codes.
The variants here fix that in different ways:

| preset | what changes | why it helps |
|---|---|---|
| `v1-vq` | van den Oord 2017: codebook loss + commitment loss | the baseline (prone to collapse) |
| `v3-ema` | codebook updated by exponential moving averages of its assignments | codes move with the data, not by a gradient that dead codes never get |
| ReFiT | k-means of the trained encoder's outputs becomes a new, smaller codebook, then fine-tune | every code starts at a populated spot; repairs an already collapsed model |
| `v4-rq` | residual quantisation: 3 codebooks quantise successive residuals | finer detail from the same codebook size |
| `fsq` | finite scalar quantisation: each of 4 channels rounded to a few levels (8x5x5x5 = 1000 codes) | no learned codebook, nothing to collapse |
| `lfq` | lookup-free: 9 binary channels (512 codes) plus an entropy loss | no learned codebook; the entropy loss spreads usage |

Every variant gets the same data, the same (small) network, the same learning rate and the same
number of epochs, so the differences come from the quantizer. Budgets are tiny (seconds per model): the ranking can
change with longer training; `prostate-vq sweep` runs the same comparison at full length. About
4 minutes on 2 CPU cores, under 2 minutes with `PROSTATE_VQ_FAST=1`."""),
    ("code", _setup("pvq-compare", "import json")),
    ("code", """\
# Quarter-resolution slices (64x32, a 16x8 code map) so that seven trainings fit in a few CPU minutes.
SPATIAL = (64, 32)
MAX_SLICES = 48 if FAST else 160
EPOCHS = 3 if FAST else 15                 # the same number of steps for every variant ...
MINUTES = 0.15 if FAST else 0.5            # ... unless a model hits this wall-clock cap first
# One shared network and learning rate for every preset, so only the quantizer differs.
NETWORK = ["model.channels=[32, 64]", "training.lr=0.001"]
VARIANTS = ["v1-vq", "v3-ema", "v4-rq", "fsq", "lfq"]
REFIT_K = 64"""),
    ("md", """\
## 1. Train every variant on the same budget

`train` takes the preset name and `overrides` (the `--set section.key=value` of the command line).
From the shell the whole loop is one command:
`prostate-vq sweep --presets v1-vq,v3-ema,v4-rq,fsq,lfq --out SWEEP --max-minutes 0.5 --spatial-size 128 64`."""),
    ("code", """\
import warnings

from prostate_vq.training import TrainOptions, train

runs = {}
for preset in VARIANTS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the collapse warning: collapse is what this notebook shows
        runs[preset] = train(TrainOptions(out=RUNS / preset, data=DATA, preset=preset, spatial_size=SPATIAL,
                                          max_slices=MAX_SLICES, epochs=EPOCHS, max_minutes=MINUTES, seed=0,
                                          device="cpu", overrides=NETWORK, progress=False))
    last = pd.read_csv(runs[preset] / "history.csv").iloc[-1]
    print(f"{preset:>7}: {int(last.epoch)} epochs, val SSIM {last.val_ssim:.3f}, "
          f"codebook usage {last.codebook_usage_pct:.1f}%")"""),
    ("md", """\
## 2. ReFiT: re-build the v1 codebook, then fine-tune

`refit` clusters the trained v1 encoder's latent vectors (k-means++) into `REFIT_K` centroids,
installs them as the new codebook and fine-tunes the whole model. Command line:
`prostate-vq refit --checkpoint RUNS/v1-vq/best.pt --codebook-size 64 --out RUNS/refit`."""),
    ("code", """\
from prostate_vq.training import refit

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    runs["ReFiT"] = refit(runs["v1-vq"] / "best.pt", out=RUNS / "refit", codebook_size=REFIT_K, data=DATA,
                          epochs=EPOCHS, max_minutes=MINUTES, device="cpu", seed=0, max_slices=MAX_SLICES,
                          progress=False)
print(json.dumps(json.loads((runs["ReFiT"] / "refit.json").read_text(encoding="utf-8")), indent=1)[:600])"""),
    ("md", """\
## 3. Evaluate all of them on the test patients"""),
    ("code", """\
from prostate_vq.evaluation import evaluate_checkpoint

results = {name: evaluate_checkpoint(run / "best.pt", data=DATA, split="test", out=RUNS / "eval" / name,
                                     device="cpu", max_slices=MAX_SLICES, figures=False)
           for name, run in runs.items()}
table = pd.DataFrame([{
    "variant": name, "codes used": r.codebook.codes_used, "codebook size": r.codebook.codebook_size,
    "usage %": r.codebook.codebook_usage_pct, "perplexity": r.codebook.perplexity,
    "SSIM": r.reconstruction.ssim_mean, "PSNR (dB)": r.reconstruction.psnr_mean,
} for name, r in results.items()]).set_index("variant")
table.round(3)"""),
    ("md", """\
## 4. What collapse looks like

Per-code assignment counts on the test split, most used first (log scale). A collapsed codebook is
a few tall bars and nothing else; a healthy one is a long tail. FSQ and LFQ have implicit codebooks
(every combination of levels or bits is a code), so their histograms show how much of that grid the
encoder visits."""),
    ("code", """\
fig, axes = plt.subplots(2, 3, figsize=(13, 6), sharey=True)
for ax, (name, r) in zip(axes.flat, results.items()):
    counts = np.sort(np.asarray(r.to_dict()["code_counts"]))[::-1]
    ax.bar(np.arange(counts.size), np.maximum(counts, 0.8), width=1.0, color="#55a868")
    ax.set_yscale("log")
    ax.set_title(f"{name}: {r.codebook.codes_used}/{counts.size} codes, perplexity {r.codebook.perplexity:.0f}",
                 fontsize=9)
    ax.set_xlabel("code rank")
axes[0, 0].set_ylabel("assignments")
axes[1, 0].set_ylabel("assignments")
fig.tight_layout()
plt.show()"""),
    ("md", """\
Codebook usage and validation SSIM per epoch, from each run's `history.csv`. The classic v1
codebook typically collapses in the first epoch and stays collapsed (its unused codes get no
gradient); the cures differ in how fast usage recovers, and the k-means re-build of ReFiT starts
near full usage by construction. Very short runs (`PROSTATE_VQ_FAST=1`) show only the first epochs."""),
    ("code", """\
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
print("collapsed (under 10% of the codebook used on the test split):", ", ".join(collapsed) or "none")"""),
    ("md", """\
Does using more codes buy reconstruction quality? Each point is one variant."""),
    ("code", """\
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.scatter(table["perplexity"], table["SSIM"])
for name, row in table.iterrows():
    ax.annotate(name, (row["perplexity"], row["SSIM"]), fontsize=8, xytext=(3, 3), textcoords="offset points")
ax.set_xscale("log")
ax.set_xlabel("perplexity (effective codes)")
ax.set_ylabel("test SSIM")
plt.show()"""),
    ("md", """\
## 5. Segmentation: Dice

With `task="joint"` the model reconstructs the image and predicts the six-class segmentation from the
same codes (`task="mask"` auto-encodes the masks themselves). Evaluation then adds Dice per organ.
Here the variant with the most effective codes above is trained again on the joint task."""),
    ("code", """\
pick = table["perplexity"].drop("ReFiT").idxmax()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    joint_run = train(TrainOptions(out=RUNS / f"{pick}-joint", data=DATA, preset=pick, task="joint",
                                   spatial_size=SPATIAL, max_slices=MAX_SLICES, epochs=EPOCHS, max_minutes=MINUTES,
                                   seed=0, device="cpu", overrides=NETWORK, progress=False))
joint = evaluate_checkpoint(joint_run / "best.pt", data=DATA, split="test", out=RUNS / "eval" / f"{pick}-joint",
                            device="cpu", max_slices=MAX_SLICES)
print(joint.summary_table())
display(Image(filename=str(RUNS / "eval" / f"{pick}-joint" / joint.figures["segmentation_overlays"])))"""),
    ("md", """\
## Summary"""),
    ("code", """\
summary = {name: {"ssim_mean": r.to_dict()["ssim_mean"], "codebook_usage_pct": r.codebook.codebook_usage_pct,
                  "perplexity": r.codebook.perplexity} for name, r in results.items()}
summary[f"{pick}-joint"] = {k: joint.to_dict()[k] for k in ("ssim_mean", "dice_mean", "codebook_usage_pct")}
summary"""),
]


# --------------------------------------------------------------------------------------------
GENERATE = [
    ("md", """\
# Generating new slices: a prior over the codes

A VQ-VAE turns every slice into a small map of discrete codes. An autoregressive **prior** (a gated
PixelCNN here; a causal transformer is the other choice) learns the distribution of those code maps;
sampling it and decoding the codes gives new slices. Because a generator can simply copy its
training data, `sample` also runs a **memorisation check**: how close each sample is to its nearest
training slice, compared with how close real unseen (validation) slices get.

About 4 minutes on 2 CPU cores, under 2 minutes with `PROSTATE_VQ_FAST=1`. The shell equivalents:
`prostate-vq train-prior`, `prostate-vq sample`, `prostate-vq encode` (see `docs/prior.md`)."""),
    ("code", _setup("pvq-generate", "import json\nimport warnings")),
    ("code", """\
SPATIAL = (128, 64)
MAX_SLICES = 96 if FAST else 320
VQ_MINUTES = 0.4 if FAST else 1.5
PRIOR_MINUTES = 0.3 if FAST else 1.5
PRIOR_SIZE = {"dim": 32, "layers": 4} if FAST else {}    # {} = the pixelcnn defaults (64 channels, 8 layers)
N_SAMPLES = 8 if FAST else 16"""),
    ("md", """\
## 1. A VQ-VAE to provide the codes

A short training of the `default` preset (see `01_quickstart.ipynb`), set to downsample by 4
instead of 2: a coarser code map (32x16 codes for a 128x64 slice) is quicker to model and to sample."""),
    ("code", """\
from prostate_vq.training import TrainOptions, train

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    vq_run = train(TrainOptions(out=RUNS / "vqvae", data=DATA, preset="default", spatial_size=SPATIAL,
                                max_slices=MAX_SLICES, epochs=40, max_minutes=VQ_MINUTES, seed=0, device="cpu",
                                overrides=["model.channels=[32, 64]", "model.downsample=4"], progress=False))
print(pd.read_csv(vq_run / "history.csv").iloc[-1][["epoch", "val_ssim", "codebook_usage_pct"]].to_dict())"""),
    ("md", """\
What the prior sees: `encode_dataset` exports every slice's code map (`prostate-vq encode`): here
a 32x16 map of indices into the 512-code codebook."""),
    ("code", """\
from prostate_vq.prior import encode_dataset, read_codes

codes_path = encode_dataset(vq_run / "best.pt", data=DATA, split="validate", out=RUNS / "codes.npz",
                            device="cpu", max_slices=8)
codes, meta = read_codes(codes_path)
print(codes.shape, meta["layout"])
fig, axes = plt.subplots(1, 4, figsize=(6, 3.5))
for ax, code_map in zip(axes, codes):
    ax.imshow(code_map, cmap="nipy_spectral", interpolation="nearest")
    ax.axis("off")
fig.suptitle("code maps of four validation slices")
plt.show()"""),
    ("md", """\
## 2. Train the prior

`train_prior` encodes the train/validate/test splits with the frozen VQ-VAE and fits the PixelCNN
by maximum likelihood, with early stopping on the validation negative log-likelihood. The score is
**bits per code**: the uniform baseline is log2(K) bits, and the unigram baseline (code frequencies,
no spatial context) is what a prior must beat to have learned any structure."""),
    ("code", """\
from prostate_vq.prior import train_prior

prior_run = train_prior(vq_run / "best.pt", data=DATA, out=RUNS / "prior", arch="pixelcnn", epochs=30,
                        max_minutes=PRIOR_MINUTES, device="cpu", seed=0, max_slices=MAX_SLICES, progress=False,
                        arch_options=PRIOR_SIZE)
prior_metrics = json.loads((prior_run / "metrics.json").read_text(encoding="utf-8"))
display(pd.read_csv(prior_run / "history.csv").round(4))
{k: prior_metrics[k] for k in ("layout", "val_nll_bits_per_code", "unigram_val_bits_per_code",
                               "uniform_bits_per_code", "epochs_run", "stop_reason", "parameters")}"""),
    ("md", """\
## 3. Sample new slices

`sample` draws code maps position by position, decodes them with the VQ-VAE stored in the prior
checkpoint, writes NIfTI slices, a grid figure, `codes.npz` and `samples.json`. The same seed and
temperature give the same samples; a lower temperature gives safer, less varied samples."""),
    ("code", """\
from prostate_vq.prior import sample

samples_dir = sample(prior_run / "best.pt", n=N_SAMPLES, out=RUNS / "samples", temperature=1.0, seed=0,
                     device="cpu", data=DATA)
sorted(p.name for p in samples_dir.iterdir())"""),
    ("code", """\
display(Image(filename=str(samples_dir / "samples_grid.png")))"""),
    ("md", """\
What to expect: after a minute or two of CPU training the prior has learned local texture and
coarse intensity statistics, not anatomy; its validation likelihood beats the unigram baseline but
is far from converged. Anatomically plausible samples need a prior trained for much longer (for
example `prostate-vq train-prior --max-minutes 120` on a GPU) on a well-trained VQ-VAE."""),
    ("md", """\
## 4. The memorisation check

For every sample, `samples.json` names its nearest training slice (by SSIM, searched among the
training slices closest in L2) and the similarity, plus the Wasserstein distance between the
sample's intensity histogram and the training histogram. The `reference` block runs the same check
on real validation slices, which the models never saw: samples much closer to a training slice than
any validation slice gets are copies. `samples_closer_than_any_validation_slice` near 0 is healthy."""),
    ("code", """\
report = json.loads((samples_dir / "samples.json").read_text(encoding="utf-8"))
per_sample = pd.DataFrame(report["samples"]).set_index("index")
display(per_sample[["nearest_train_file", "nearest_train_similarity", "distribution_distance",
                    "nll_bits_per_code"]].round(4))
reference = report["reference"]
if reference is not None:
    print(f"samples: nearest-training SSIM {report['summary']['nearest_train_similarity']['mean']:.3f} on average; "
          f"validation slices: {reference['nearest_train_similarity']['mean']:.3f} "
          f"(max {reference['nearest_train_similarity']['max']:.3f})")
    print("share of samples closer to a training slice than any validation slice:",
          reference["samples_closer_than_any_validation_slice"])"""),
    ("md", """\
Each sample next to its nearest training slice (intensity-scaled the way the model saw it)."""),
    ("code", """\
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
plt.show()"""),
    ("code", """\
fig, ax = plt.subplots(figsize=(5, 3))
ax.hist(per_sample["nearest_train_similarity"], bins=10, alpha=0.7, label="samples")
if reference is not None:
    ax.axvline(reference["nearest_train_similarity"]["max"], color="k", ls="--",
               label="closest validation slice")
    ax.axvline(reference["nearest_train_similarity"]["mean"], color="grey", ls=":", label="validation mean")
ax.set_xlabel("SSIM to the nearest training slice")
ax.legend(fontsize=8)
plt.show()"""),
    ("code", """\
{"n": report["n"], "layout": report["layout"], "similarity": report["similarity"],
 "nearest_train_similarity_mean": report["summary"]["nearest_train_similarity"]["mean"],
 "samples_closer_than_any_validation_slice": None if reference is None
 else reference["samples_closer_than_any_validation_slice"]}"""),
]


NOTEBOOKS = {"01_quickstart.ipynb": QUICKSTART, "02_compare_variants.ipynb": COMPARE, "03_generate.ipynb": GENERATE}


def build(cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=[new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in cells])
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(nb.cells):  # stable ids: regenerating gives byte-identical files
        cell["id"] = f"cell-{i:02d}"
    nbformat.validate(nb)
    return nb


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        path = DOCS / name
        nbformat.write(build(cells), str(path))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
