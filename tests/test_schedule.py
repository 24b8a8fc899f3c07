"""The learning-rate schedule is planned in optimizer steps over the run's real horizon: --max-steps, epochs x
steps per epoch, or what a time budget allows at the measured step rate; a resumed run continues downward."""

from __future__ import annotations

import csv
import itertools
import math
from dataclasses import replace

import pytest
import torch
import yaml

from prostate_vq.runtime.checkpoints import load_checkpoint
from prostate_vq.schema import TrainingConfig
from prostate_vq.training import RunRequest, TrainOptions, train
from prostate_vq.training.vqvae.schedule import CosineSegment, StepCosine, estimate_time_horizon, plan_horizon


def _history(run):
    with open(run / "history.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _options(root, out, spatial, overrides, *, resume=False, max_minutes=None, **kw):
    """A tiny run's (TrainOptions, RunRequest); `kw` are RunRequest's (epochs, max_steps, ...)."""
    return (
        TrainOptions(out=out, data=root, device="cpu", progress=False, resume=resume, max_minutes=max_minutes),
        RunRequest(spatial_size=spatial, batch_size=4, seed=0, overrides=list(overrides), **kw),
    )


def test_cosine_segment_and_horizon_choice():
    plan = CosineSegment(horizon=100, floor=0.05)
    assert plan(0) == 1.0 and plan(100) == 0.05 and plan(1000) == 0.05
    assert plan(50) == pytest.approx(0.05 + 0.95 / 2)
    training = TrainingConfig(epochs=100, max_steps=40)
    assert plan_horizon(training, 3) == (40, "max_steps")
    assert plan_horizon(replace(training, max_steps=None), 3) == (300, "epochs")
    assert plan_horizon(replace(training, max_steps=1000), 3) == (300, "epochs")  # the epochs end first
    assert estimate_time_horizon(steps_done=30, steps_measured=20, seconds=10.0, seconds_left=5.0) == 40


def test_replan_continues_from_the_current_rate():
    module = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(module.parameters(), lr=1.0)
    scheduler = StepCosine(optimizer, CosineSegment(1000, 0.05))
    for _ in range(20):
        optimizer.step()
        scheduler.step()
    before = optimizer.param_groups[0]["lr"]
    scheduler.replan(60, "time", 20)
    scheduler.step()
    after = optimizer.param_groups[0]["lr"]
    assert after <= before and before - after < 0.01  # no jump
    for _ in range(39):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)  # the floor where the time ends


def test_max_steps_ends_the_run_and_plans_the_cosine_over_it(phantom_root, tmp_path, tiny_spatial, tiny_model_overrides):
    """A step budget far inside the nominal epochs: the run stops at exactly that step with the cosine at its
    floor (a per-epoch cosine over 1,000 epochs stayed at the base rate: a constant learning rate)."""
    run = train(*_options(phantom_root, tmp_path / "run", tiny_spatial, tiny_model_overrides, epochs=1000, max_steps=7))
    history = _history(run)
    assert int(history[-1]["step"]) == 7
    last = load_checkpoint(run / "last.pt", kind="resume")
    assert last["stop_reason"] == "max_steps"
    lr = float(last["config"]["training"]["lr"])
    assert last["optimizer_state"]["param_groups"][0]["lr"] == pytest.approx(lr * 0.05)
    assert float(history[1]["lr"]) < lr  # the second epoch already trains lower
    schedule = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["schedule"]
    assert schedule == {"kind": "cosine", "horizon_steps": 7, "source": "max_steps", "steps_per_epoch": 3}

    # Resumed with a larger budget: the rate goes on down from where it is, never back up.
    train(*_options(phantom_root, run, tiny_spatial, [], resume=True, max_steps=13))
    history = _history(run)
    assert int(history[-1]["step"]) == 13
    rates = [float(row["lr"]) for row in history]
    assert all(b <= a * (1 + 1e-9) for a, b in itertools.pairwise(rates))


def test_a_step_budget_is_not_cut_short_by_the_presets_epochs(phantom_root, tmp_path, tiny_spatial, tiny_model_overrides):
    """--max-steps 9 with a preset of 2 epochs on 3 steps per epoch: the run takes its 9 steps (it stopped at 6,
    so a sweep at "equal steps" gave a small training set fewer steps); an explicit --epochs still caps it."""
    overrides = [*tiny_model_overrides, "training.epochs=2"]
    run = train(*_options(phantom_root, tmp_path / "run", tiny_spatial, overrides, max_steps=9))
    assert int(_history(run)[-1]["step"]) == 9
    schedule = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["schedule"]
    assert schedule["horizon_steps"] == 9 and schedule["source"] == "max_steps"
    capped = train(*_options(phantom_root, tmp_path / "capped", tiny_spatial, overrides, max_steps=9, epochs=2))
    assert int(_history(capped)[-1]["step"]) == 6


@pytest.mark.slow  # ~6 s by design: a 0.1-minute time budget
def test_time_budget_plans_the_horizon_from_the_measured_rate(phantom_root, tmp_path, tiny_spatial, tiny_model_overrides):
    run = train(*_options(phantom_root, tmp_path / "run", tiny_spatial, tiny_model_overrides, epochs=100_000, max_minutes=0.1))
    schedule = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["schedule"]
    assert schedule["source"] == "time" and schedule["horizon_steps"] < 100_000 * 3
    last = load_checkpoint(run / "last.pt", kind="resume")
    lr = float(last["config"]["training"]["lr"])
    assert last["optimizer_state"]["param_groups"][0]["lr"] < 0.5 * lr  # the cosine went most of its way
    assert not math.isnan(float(_history(run)[-1]["val_loss"]))


def test_a_run_from_before_per_step_planning_resumes_downward(phantom_root, tmp_path, tiny_spatial, tiny_model_overrides):
    """last.pt written when the cosine was planned per epoch (a CosineAnnealingLR state): the resumed run takes
    the per-step cosine over from the rate it had reached instead of failing on the foreign state."""
    from prostate_vq.runtime.checkpoints import save_checkpoint

    run = train(*_options(phantom_root, tmp_path / "run", tiny_spatial, tiny_model_overrides, epochs=4))
    last = load_checkpoint(run / "last.pt", kind="resume")
    module = torch.nn.Linear(1, 1)
    old_opt = torch.optim.Adam(module.parameters(), lr=2e-3)
    old = torch.optim.lr_scheduler.CosineAnnealingLR(old_opt, T_max=8, eta_min=1e-4)
    for _ in range(4):
        old_opt.step()
        old.step()
    reached = old_opt.param_groups[0]["lr"]
    last["scheduler_state"] = old.state_dict()
    last["optimizer_state"]["param_groups"][0]["lr"] = reached
    last["finished"], last["stop_reason"] = False, None
    save_checkpoint(run / "last.pt", last)
    train(*_options(phantom_root, run, tiny_spatial, [], resume=True, epochs=8))
    rates = [float(row["lr"]) for row in _history(run)[4:]]
    assert rates[0] == pytest.approx(reached, rel=1e-6)
    assert all(b < a for a, b in itertools.pairwise(rates)) and rates[-1] > 2e-3 * 0.05
