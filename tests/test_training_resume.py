"""--resume: exact continuation in-process, and after a real SIGKILL of `prostate-vq train`."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from prostate_vq.errors import UserInputError
from prostate_vq.runtime.checkpoints import load_checkpoint
from prostate_vq.training import RunRequest, TrainOptions, train


def history(run):
    with open(run / "history.csv", newline="", encoding="utf-8") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def test_resume_continues_exactly(phantom_root, tmp_path, tiny_spatial, tiny_model_overrides):
    # Plateau scheduler: its state (best, bad epochs) must round-trip too; cosine's T_max depends on --epochs.
    base = TrainOptions(out=tmp_path / "straight", data=phantom_root, device="cpu", progress=False)
    request = RunRequest(
        epochs=3, spatial_size=tiny_spatial, batch_size=4, overrides=[*tiny_model_overrides, "training.scheduler=plateau"]
    )
    straight = history(train(base, request))
    split = replace(base, out=tmp_path / "split")
    train(split, replace(request, epochs=2))
    train(replace(split, resume=True), replace(request, epochs=3))
    assert history(split.out) == straight
    assert load_checkpoint(split.out / "last.pt")["epoch"] == 3


def test_resume_of_a_finished_run_is_a_no_op(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    before = (run / "history.csv").read_text(encoding="utf-8")
    train(TrainOptions(out=run, resume=True, progress=False, device="cpu"))
    assert (run / "history.csv").read_text(encoding="utf-8") == before


def test_resume_needs_last_checkpoint(tmp_path):
    with pytest.raises(UserInputError, match="no last.pt"):
        train(TrainOptions(out=tmp_path / "empty", resume=True, progress=False))


def _wait_for_epoch(path, epoch, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training exited early: {proc.stderr.read().decode()[-2000:]}")
        if path.exists():
            try:
                if load_checkpoint(path)["epoch"] >= epoch:
                    return
            except UserInputError:
                pass  # only ever a complete file (atomic rename), but be tolerant while polling
        time.sleep(0.02)
    raise AssertionError(f"no epoch {epoch} checkpoint within {timeout} s")


@pytest.mark.slow  # ~10 s: a training subprocess killed and resumed
def test_resume_after_sigkill_loses_at_most_one_epoch(phantom_root, tmp_path, tiny_model_overrides):
    out = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "prostate_vq",
        "train",
        "--data",
        str(phantom_root),
        "--out",
        str(out),
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
        "training.scheduler=none",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*args, "--epochs", "500"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_epoch(out / "last.pt", 2, proc)
        proc.send_signal(signal.SIGKILL)  # mid-epoch 3+ (or mid-write: the rename is atomic)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    killed = load_checkpoint(out / "last.pt")
    saved = killed["epoch"]
    assert saved >= 2

    resumed = subprocess.run(
        [*args, "--epochs", str(saved + 2), "--resume"], env=env, capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    rows = history(out)
    assert [int(r["epoch"]) for r in rows] == list(range(1, saved + 3))  # no gap, no duplicate
    for row, kept in zip(rows[:saved], killed["history"]):  # the epochs before the kill are kept as they were
        assert float(row["train_loss"]) == pytest.approx(kept["train_loss"], rel=1e-5)
        assert float(row["val_loss"]) == pytest.approx(kept["val_loss"], rel=1e-5)
    assert load_checkpoint(out / "last.pt")["epoch"] == saved + 2
    assert not list(out.glob(".*.tmp"))  # a write cut short by the kill left no litter after the resume
