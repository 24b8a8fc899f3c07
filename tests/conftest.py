"""Shared test fixtures: a tiny demo phantom generated once per session, one torch thread."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

torch.set_num_threads(1)

# Small slices for fast model tests (rows, cols), same 2:1 aspect as HipMRI's 256x128.
TINY_SPATIAL = (64, 32)


@pytest.fixture(scope="session")
def tiny_spatial() -> tuple[int, int]:
    return TINY_SPATIAL


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory):
    """A tiny HipMRI-layout phantom: cases 001-002 train, 003 validate, 004 test; 1 week; 6 slices each.

    It carries the real-data quirks: case 001 week 0 is 256x144 with float-typed masks, case 002
    week 0 has a trailing singleton dimension. Treat it as read-only (copy it to break it).
    """
    from prostate_vq.data.phantom import synthesize

    return synthesize(tmp_path_factory.mktemp("phantom") / "hipmri", cases=4, seed=0, slices_per_volume=6, weeks=1)


# --- training fixtures (training helper): tiny trained runs for evaluation / prior / report tests ---

# A model small enough to train in about a second on one CPU thread (64x32 slices).
TINY_MODEL_OVERRIDES = [
    "model.channels=[8,16]",
    "model.res_channels=8",
    "model.embedding_dim=16",
    "quantizer.codebook_size=32",
    "quantizer.codebook_dim=4",
]


def split_train_options(**kwargs):
    """`prostate-vq train`'s options as one set of keywords, as the command line mixes them, split the way `train`
    takes them: how the run runs (TrainOptions) and what it trains (RunRequest)."""
    from dataclasses import fields

    from prostate_vq.training import RunRequest, TrainOptions

    runtime = {f.name for f in fields(TrainOptions)}
    return (
        TrainOptions(**{k: v for k, v in kwargs.items() if k in runtime}),
        RunRequest(**{k: v for k, v in kwargs.items() if k not in runtime}),
    )


@pytest.fixture(scope="session")
def train_args():
    """`split_train_options`: `train(*train_args(out=..., epochs=2, device="cpu"))`."""
    return split_train_options


def _tiny_training_run(root, out, task):
    from prostate_vq.training import RunRequest, TrainOptions, train

    return train(
        TrainOptions(out=out, data=root, device="cpu", progress=False),
        RunRequest(task=task, epochs=2, spatial_size=TINY_SPATIAL, batch_size=4, seed=0, overrides=list(TINY_MODEL_OVERRIDES)),
    )


@pytest.fixture(scope="session")
def tiny_run(phantom_root, tmp_path_factory):
    """Run folder (best.pt, last.pt, history.csv, config.yaml, summary.txt) of a tiny image-task model
    trained 2 epochs on `phantom_root` at 64x32. Read-only: copy it before changing anything."""
    return _tiny_training_run(phantom_root, tmp_path_factory.mktemp("tiny_run") / "run", "image")


@pytest.fixture(scope="session")
def tiny_joint_run(phantom_root, tmp_path_factory):
    """Like `tiny_run`, for the joint task (image reconstruction + 6-class segmentation)."""
    return _tiny_training_run(phantom_root, tmp_path_factory.mktemp("tiny_joint_run") / "run", "joint")


@pytest.fixture(scope="session")
def tiny_model_overrides() -> list[str]:
    """`--set` overrides that shrink any vq/ema preset to the tiny model of `tiny_run`."""
    return list(TINY_MODEL_OVERRIDES)
