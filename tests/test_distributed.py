"""`torchrun --nproc_per_node=2 -m prostate_vq train` with 2 CPU processes (gloo) on the tiny phantom."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from prostate_vq.runtime.checkpoints import load_checkpoint

pytestmark = [
    pytest.mark.slow,  # ~10-30 s: two interpreter start-ups; still part of the default (CI) run
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend"),
]


def torchrun() -> list[str]:
    exe = shutil.which("torchrun")
    return [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]


def test_two_process_run_keeps_ranks_identical(phantom_root, tmp_path, tiny_model_overrides):
    out = tmp_path / "ddp"
    cmd = [
        *torchrun(),
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "prostate_vq",
        "train",
        "--data",
        str(phantom_root),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--spatial-size",
        "64",
        "32",
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--no-progress",
        "--set",
        *tiny_model_overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("run written to") == 1  # only rank 0 reports (and writes)

    with open(out / "history.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in rows] == ["1"]

    info = json.loads((out / "distributed.json").read_text(encoding="utf-8"))
    assert info["world_size"] == 2 and info["backend"] == "gloo" and info["state_in_sync"]
    last = load_checkpoint(out / "last.pt")
    quantizer_keys = [k for k in info["fingerprints"] if k.startswith("quantizer.")]
    assert quantizer_keys, "the quantizer's codebook/EMA buffers must be compared"
    for name, (rank0, rank1) in info["fingerprints"].items():
        assert rank0 == rank1, name  # weights, codebook and EMA statistics identical on both ranks
        saved = last["model_state"][name].double()  # ... and what rank 0 saved is what rank 1 holds
        assert rank1 == pytest.approx([float(saved.sum()), float(saved.pow(2).sum())], rel=1e-9, abs=1e-12)
    assert any(torch.is_floating_point(last["model_state"][k]) for k in quantizer_keys)
