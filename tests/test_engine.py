"""The one training loop with a scripted plug-in: stop reasons, best-before-last checkpoints, history with the
plug-in's columns, exact resume and the budget, independent of any model."""

from __future__ import annotations

import csv
import io

import pytest
import torch

from prostate_vq.errors import TrainingDiverged
from prostate_vq.runtime.checkpoints import load_checkpoint
from prostate_vq.training.config import RunRequest, resolve
from prostate_vq.training.engine import Engine, EpochResult, LoopState, restore_training_state
from prostate_vq.training.engine.early_stopping import EarlyStopping
from prostate_vq.training.engine.run_folder import RunWriter


class Scripted:
    """Validation values come from a list; one optimizer step per epoch."""

    history_columns = ("epoch", "value", "lr", "step")

    def __init__(self, module, optimizer, values):
        self.module, self.optimizer, self.values, self.seen = module, optimizer, values, []

    def run_epoch(self, epoch, epochs, deadline, steps_before):
        self.optimizer.zero_grad()
        self.module(torch.ones(1, 2)).sum().backward()
        self.optimizer.step()
        value = self.values[epoch - 1]
        if value is None:
            raise TrainingDiverged(f"epoch {epoch} diverged")
        self.seen.append(epoch)
        return EpochResult({"value": value}, value, steps=1)

    def after_epoch(self, epoch, result):
        pass

    def postfix(self, row):
        return {"value": row["value"]}


def _engine(out, values, epochs=10, patience=2, payload=None):
    torch.manual_seed(0)
    module = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    stopper = EarlyStopping(monitor="loss", patience=patience)
    state = LoopState()
    if payload is not None:
        state = restore_training_state(payload, module, optimizer, None, stopper)
    plugin = Scripted(module, optimizer, values)
    engine = Engine(
        plugin,
        module,
        optimizer,
        None,
        stopper,
        RunWriter(out, True, False),
        {"config": {}, "kind_note": "test"},
        epochs=epochs,
        state=state,
        progress=False,
    )
    return engine, plugin


def test_early_stopping_best_last_and_history(tmp_path):
    engine, plugin = _engine(tmp_path, [3.0, 2.0, 2.5, 2.6, 1.0])
    assert engine.run() == "early_stopping"
    assert plugin.seen == [1, 2, 3, 4]
    best, last = load_checkpoint(tmp_path / "best.pt"), load_checkpoint(tmp_path / "last.pt")
    assert best["epoch"] == 2 and best["metrics"]["value"] == 2.0 and best["kind_note"] == "test"
    assert last["epoch"] == 4 and last["finished"] and last["stop_reason"] == "early_stopping"
    rows = list(csv.DictReader(io.StringIO((tmp_path / "history.csv").read_text(encoding="utf-8"))))
    assert list(rows[0]) == ["epoch", "value", "lr", "step"] and [r["step"] for r in rows] == ["1", "2", "3", "4"]


def test_resume_continues_where_last_pt_stands(tmp_path):
    values = [3.0, 2.0, 1.5, 1.2, 1.1, 1.0]
    straight, _ = _engine(tmp_path / "a", values, epochs=6)
    assert straight.run() == "epochs"
    first, _ = _engine(tmp_path / "b", values, epochs=3)
    assert first.run() == "epochs"
    resumed, plugin = _engine(tmp_path / "b", values, epochs=6, payload=load_checkpoint(tmp_path / "b" / "last.pt"))
    assert resumed.run() == "epochs" and plugin.seen == [4, 5, 6]
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["history"][-1]["step"] == b["history"][-1]["step"] == 6
    assert all(torch.equal(a["model_state"][k], b["model_state"][k]) for k in a["model_state"])


def test_divergence_names_the_last_good_checkpoint(tmp_path):
    engine, _ = _engine(tmp_path, [2.0, None])
    with pytest.raises(TrainingDiverged, match=r"epoch 2 diverged; kept the last good checkpoint .*last.pt \(epoch 1\)"):
        engine.run()
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1


def test_spent_budget_stops_after_one_epoch(tmp_path):
    engine, plugin = _engine(tmp_path, [3.0, 2.0, 1.0])
    engine.deadline = 0.0  # long past: the first epoch still runs, so a run always has a checkpoint
    assert engine.run() == "max_minutes" and plugin.seen == [1]


def test_explicit_monitor_loss_and_mask_ratio_zero_override_the_config():
    """`--monitor loss` and `--mask-ratio 0` are values, not 'not given' (they used to be ignored)."""
    request = RunRequest(overrides=["training.monitor=ssim", "training.mask_ratio=0.5"])
    assert resolve(request).training.monitor == "ssim"
    request = RunRequest(overrides=["training.monitor=ssim", "training.mask_ratio=0.5"], monitor="loss", mask_ratio=0.0)
    training = resolve(request).training
    assert training.monitor == "loss" and training.mask_ratio == 0.0
