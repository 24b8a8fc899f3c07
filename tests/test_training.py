"""Training engine: run folder contents, early stopping, time budget, determinism, masked training,
divergence, bad input, checkpoints."""

from __future__ import annotations

import csv
import math
import random
import shutil
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml

from prostate_vq.cli import main
from prostate_vq.errors import UserInputError
from prostate_vq.runtime.checkpoints import FORMAT_VERSION, load_checkpoint, load_model, save_checkpoint
from prostate_vq.runtime.run_format import HISTORY_COLUMNS
from prostate_vq.runtime.seeding import capture_rng_state, restore_rng_state
from prostate_vq.schema import RunConfig
from prostate_vq.training import RunRequest, TrainOptions, resolve, train
from prostate_vq.training.engine.early_stopping import EarlyStopping
from prostate_vq.training.vqvae.epoch import mask_patches

PAYLOAD_KEYS = {
    "format_version",
    "model_state",
    "config",
    "preset",
    "task",
    "spatial_size",
    "intensity",
    "epoch",
    "metrics",
    "seed",
    "data_root",
    "versions",
}
LAST_KEYS = {"optimizer_state", "scheduler_state", "rng_state", "early_stopping", "history"}


def read_history(run):
    with open(run / "history.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def options(phantom_root, tmp_path, tiny_spatial, tiny_model_overrides, train_args):
    """Factory of a tiny run on the phantom (1 epoch unless told otherwise): (TrainOptions, RunRequest)."""

    def make(name="run", **kwargs):
        base = dict(
            out=tmp_path / name,
            data=phantom_root,
            epochs=1,
            spatial_size=tiny_spatial,
            batch_size=4,
            overrides=list(tiny_model_overrides),
            device="cpu",
            progress=False,
        )
        base["overrides"] += kwargs.pop("extra_overrides", [])
        return train_args(**{**base, **kwargs})

    return make


def cli_args(run: tuple[TrainOptions, RunRequest]) -> list[str]:
    options, request = run
    assert request.spatial_size is not None
    h, w = request.spatial_size
    return [
        "train",
        "--data",
        str(options.data),
        "--out",
        str(options.out),
        "--epochs",
        str(request.epochs),
        "--spatial-size",
        str(h),
        str(w),
        "--batch-size",
        str(request.batch_size),
        "--device",
        "cpu",
        "--no-progress",
        "--set",
        *request.overrides,
    ]


# --- the run folder -------------------------------------------------------------------------


def test_run_folder_holds_everything_evaluate_needs(tiny_run):
    for name in ("best.pt", "last.pt", "history.csv", "config.yaml", "summary.txt"):
        assert (tiny_run / name).is_file(), name
    rows = read_history(tiny_run)
    assert tuple(rows[0].keys()) == HISTORY_COLUMNS
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for row in rows:
        assert math.isfinite(float(row["train_loss"])) and math.isfinite(float(row["val_loss"]))
        assert 0.0 < float(row["codebook_usage_pct"]) <= 100.0
        assert 1.0 <= float(row["perplexity"]) <= 32.0
        assert -1.0 <= float(row["val_ssim"]) <= 1.0
        assert row["val_dice"] == ""  # image task: no segmentation
    raw = torch.load(tiny_run / "last.pt", weights_only=True)  # never unpickles arbitrary objects
    assert set(raw) >= PAYLOAD_KEYS | LAST_KEYS
    assert raw["epoch"] == 2 and len(raw["history"]) == 2
    best = load_checkpoint(tiny_run / "best.pt")
    assert set(best) >= PAYLOAD_KEYS and not LAST_KEYS & set(best)
    assert best["task"] == "image" and best["spatial_size"] == [64, 32]
    assert best["config"]["quantizer"]["codebook_size"] == 32
    config = yaml.safe_load((tiny_run / "config.yaml").read_text(encoding="utf-8"))
    assert config["training"]["epochs"] == 2 and config["task"] == "image"
    assert "params" in (tiny_run / "summary.txt").read_text(encoding="utf-8").lower()

    model, _ = load_model(tiny_run / "best.pt", "cpu")
    out = model(torch.rand(2, 1, 64, 32))
    assert out.recon.shape == (2, 1, 64, 32) and not model.training


def test_joint_run_scores_dice(tiny_joint_run):
    rows = read_history(tiny_joint_run)
    assert all(0.0 <= float(r["val_dice"]) <= 1.0 for r in rows)
    best = load_checkpoint(tiny_joint_run / "best.pt")
    assert len(best["metrics"]["val_dice_per_class"]) == 6


def test_same_seed_same_metrics(options):
    first = read_history(train(*options("a", epochs=2)))
    second = read_history(train(*options("b", epochs=2)))
    other = read_history(train(*options("c", epochs=1, seed=1)))
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in first]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in second]
    assert other[0]["train_loss"] != first[0]["train_loss"]


def test_early_stopping_and_best_checkpoint(options):
    # min_delta 1.0: no epoch after the first can count as an improvement, patience 2 -> stop after 3.
    # (the preset's step-based patience and minimum length are switched off: this tests the epoch count)
    run = train(
        *options(
            epochs=20, patience=2, extra_overrides=["training.min_delta=1.0", "training.min_steps=0", "training.patience_steps=0"]
        )
    )
    assert len(read_history(run)) == 3
    last = load_checkpoint(run / "last.pt")
    assert last["stop_reason"] == "early_stopping" and last["early_stopping"]["stopped"]
    assert load_checkpoint(run / "best.pt")["epoch"] == 1


def test_early_stopping_modes():
    ssim = EarlyStopping(monitor="ssim", patience=2)
    assert ssim.update(0.5, 1) and ssim.update(0.6, 2) and not ssim.update(0.55, 3)
    assert not ssim.stopped and not ssim.update(float("nan"), 4) and ssim.stopped
    assert ssim.best == 0.6 and ssim.best_epoch == 2
    loss = EarlyStopping(monitor="loss", patience=5)
    assert loss.update(1.0, 1) and not loss.update(1.5, 2) and loss.update(0.9, 3)
    restored = EarlyStopping(monitor="loss", patience=7)
    restored.load_state_dict(loss.state_dict())
    assert (restored.best, restored.bad_epochs, restored.patience) == (0.9, 0, 7)


def test_max_minutes_stops_cleanly_and_keeps_best(options):
    run = train(*options(epochs=500, max_minutes=0.002, batch_size=1))
    rows = read_history(run)
    assert 1 <= len(rows) < 500
    last = load_checkpoint(run / "last.pt")
    assert last["stop_reason"] == "max_minutes" and last["finished"]
    assert (run / "best.pt").is_file()


def test_time_budget_is_checked_between_batches(options, phantom_root):
    from prostate_vq.data import make_dataset, make_loader
    from prostate_vq.models import build_model
    from prostate_vq.training.config import resolve
    from prostate_vq.training.vqvae.epoch import StepSettings, train_one_epoch
    from prostate_vq.training.vqvae.losses import TaskLoss

    _, request = options()
    model = build_model(resolve(request).sections(), "image")
    data = make_dataset(phantom_root, "train", "image", spatial_size=(64, 32))
    loader = make_loader(data, 2, shuffle=True, seed=0, epoch=1)
    settings = StepSettings(device=torch.device("cpu"), deadline=0.0)  # already past
    result = train_one_epoch(model, loader, TaskLoss("image"), torch.optim.Adam(model.parameters()), settings, 1)
    assert result.out_of_time and result.steps == 1 < len(loader)


def test_a_config_file_given_from_python_sets_the_task_and_seed(options, tmp_path):
    """`train(options, RunRequest(config_file=FILE))` follows the file's task and seed as `prostate-vq train
    --config FILE` does: the file is read in one place, where the config is resolved (the CLI used to read them
    itself, so a Python caller got the image task and seed 0)."""
    config_file = tmp_path / "my.yaml"
    config_file.write_text("base: default\ntask: joint\nseed: 7\n", encoding="utf-8")
    run = train(*options(config_file=config_file))
    payload = load_checkpoint(run / "best.pt")
    assert (payload["task"], payload["seed"], payload["preset"]) == ("joint", 7, "default")
    assert read_history(run)[0]["val_dice"] != ""  # the joint task was trained (Dice is scored)


def test_python_callers_get_the_config_the_command_line_gives(options, tmp_path):
    """`train(options, RunRequest(...))` and `train(options, resolve(RunRequest(...)))` store the config, preset,
    task and seed `prostate-vq train` stores for the same options, in best.pt and config.yaml alike; a resolved
    RunConfig cannot say what a --resume should apply, so it is refused there."""
    opts, request = options("cli", seed=3, task="joint", monitor="dice", lr=1e-3)
    argv = [*cli_args((opts, request)), "--seed", "3", "--task", "joint", "--monitor", "dice", "--lr", "0.001"]
    assert main(argv) == 0
    config = resolve(request)
    assert isinstance(config, RunConfig) and (config.task, config.seed, config.training.lr) == ("joint", 3, 1e-3)
    runs = {
        "cli": opts.out,
        "request": train(replace(opts, out=tmp_path / "request"), request),
        "config": train(replace(opts, out=tmp_path / "config"), config),
    }
    stored = {name: load_checkpoint(run / "best.pt") for name, run in runs.items()}
    for name in ("request", "config"):
        for key in ("config", "preset", "task", "seed", "spatial_size", "data_root", "max_slices"):
            assert stored[name][key] == stored["cli"][key], (name, key)
        assert (runs[name] / "config.yaml").read_text(encoding="utf-8") == (runs["cli"] / "config.yaml").read_text(
            encoding="utf-8"
        ), name
    with pytest.raises(ValueError, match="RunRequest"):
        train(replace(opts, resume=True), config)


def test_masked_training(options):
    x = torch.ones(64, 1, 64, 32)
    torch.manual_seed(0)
    masked = mask_patches(x, 0.5, 8)
    cells = masked.unfold(2, 8, 8).unfold(3, 8, 8)  # [B, 1, 8, 4, 8, 8]
    per_cell = cells.flatten(-2)
    assert torch.all(per_cell.amin(-1) == per_cell.amax(-1))  # whole patches, aligned to the grid
    assert 0.4 < float((masked == 0).float().mean()) < 0.6
    assert torch.equal(mask_patches(x, 0.0, 8), x)

    run = train(*options(mask_ratio=0.5))
    assert load_checkpoint(run / "best.pt")["config"]["training"]["mask_ratio"] == 0.5
    assert math.isfinite(float(read_history(run)[0]["val_loss"]))


def test_nan_loss_stops_with_one_line_and_keeps_last_good(options, monkeypatch, capsys):
    from prostate_vq.training.vqvae import losses

    original = losses.TaskLoss.forward
    calls = {"train": 0}

    def poisoned(self, output, image, label):
        total, parts = original(self, output, image, label)
        if torch.is_grad_enabled():
            calls["train"] += 1
            if calls["train"] > 3:  # epoch 1 has 3 training steps (12 slices, batch 4)
                total = total * float("nan")
        return total, parts

    monkeypatch.setattr(losses.TaskLoss, "forward", poisoned)
    opts, request = options(epochs=3)
    code = main(cli_args((opts, request)))
    err = capsys.readouterr().err.strip()
    assert code == 1
    # one error line; the info lines before it ("prostate-vq: learning rate: ...") are the log's
    err = "\n".join(line for line in err.splitlines() if not line.startswith("prostate-vq: "))
    assert len(err.splitlines()) == 1 and "NaN" in err and "epoch 2" in err and "last.pt" in err
    assert load_checkpoint(opts.out / "last.pt")["epoch"] == 1
    assert load_checkpoint(opts.out / "best.pt")["epoch"] == 1
    assert [int(r["epoch"]) for r in read_history(opts.out)] == [1]


# --- bad input ------------------------------------------------------------------------------


def test_bad_data_is_exit_2(options, phantom_root, tmp_path, capsys):
    missing = tmp_path / "no-such-data"
    assert main(cli_args(options("a", data=missing))) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no-such-data" in err

    broken = tmp_path / "broken"
    shutil.copytree(phantom_root, broken)
    victim = sorted((broken / "keras_slices_train").glob("*.nii.gz"))[0]
    victim.write_bytes(victim.read_bytes()[:40])  # truncated NIfTI
    assert main(cli_args(options("b", data=broken))) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and victim.name in err


def test_bad_options_are_user_errors(options, tiny_run):
    with pytest.raises(UserInputError, match="--monitor dice"):
        train(*options(monitor="dice"))
    with pytest.raises(UserInputError, match="--resume"):
        train(*options("fresh", resume=True))
    with pytest.raises(UserInputError, match="already holds a run"):
        train(*options(out=tiny_run))
    with pytest.raises(UserInputError, match="unknown preset"):
        train(*options(preset="no-such-preset"))


# --- checkpoints and RNG --------------------------------------------------------------------


def test_failed_checkpoint_write_leaves_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"format_version": FORMAT_VERSION, "model_state": {"w": torch.ones(3)}, "config": {}, "epoch": 1})

    def crash(obj, handle, *args, **kwargs):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"model_state": {"w": torch.zeros(3)}, "config": {}, "epoch": 2})
    monkeypatch.undo()
    payload = load_checkpoint(path)
    assert payload["epoch"] == 1 and torch.equal(payload["model_state"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


class NotAllowed:
    pass


def test_load_checkpoint_rejects_bad_files(tmp_path):
    with pytest.raises(UserInputError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a zip" * 10)
    with pytest.raises(UserInputError, match="garbage.pt"):
        load_checkpoint(garbage)
    pickled = tmp_path / "pickled.pt"
    torch.save({"model_state": {}, "config": {}, "evil": NotAllowed()}, pickled)
    with pytest.raises(UserInputError, match="pickled.pt.*not a readable"):
        load_checkpoint(pickled)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(1)}, foreign)
    with pytest.raises(UserInputError, match="not a prostate-vq checkpoint"):
        load_checkpoint(foreign)


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    save_checkpoint(
        tmp_path / "rng.pt", {"format_version": FORMAT_VERSION, "model_state": {}, "config": {}, "rng_state": capture_rng_state()}
    )
    expected = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng_state"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def test_tensorboard_is_optional(options, capsys):
    run_args = options(tensorboard=True)
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        assert main([*cli_args(run_args), "--tensorboard"]) == 2
        assert "pip install 'prostate-vq[tensorboard]'" in capsys.readouterr().err
    else:
        run = train(*run_args)
        assert list((run / "tb").glob("events.out.tfevents.*"))


def test_no_data_trains_on_the_demo_phantom(options, phantom_root, monkeypatch):
    import prostate_vq.data

    # Generating the real demo phantom is the data layer's (tested) job; here only the wiring counts.
    monkeypatch.setattr(prostate_vq.data, "default_data_root", lambda: phantom_root, raising=False)
    run = train(*options(data=None))
    assert load_checkpoint(run / "best.pt")["data_root"] == str(phantom_root)


def test_codebook_collapse_warning():
    from prostate_vq.training.vqvae.validation import CodebookCollapseWarning, warn_if_collapsed

    with pytest.warns(CodebookCollapseWarning, match=r"codebook collapse: epoch 4 uses 3\.1% of 512 codes"):
        assert warn_if_collapsed({"codebook_usage_pct": 3.125, "perplexity": 1.4}, 4, 512)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not warn_if_collapsed({"codebook_usage_pct": 55.0, "perplexity": 90.0}, 5, 512)


def test_the_training_package_keeps_its_public_names():
    """Scripts written against prostate_vq.training (load_model, checkpoints, EarlyStopping, kmeans) keep working
    after checkpoint I/O moved to prostate_vq.runtime: the names are the same objects in both places."""
    import prostate_vq.runtime as runtime
    import prostate_vq.training as training

    for name in ("load_model", "load_checkpoint", "save_checkpoint"):
        assert getattr(training, name) is getattr(runtime, name)
    for name in ("HISTORY_COLUMNS", "EarlyStopping", "kmeans", "TrainOptions", "RunRequest", "resolve", "train", "fit", "refit"):
        assert name in training.__all__ and hasattr(training, name)
