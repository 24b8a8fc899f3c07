"""--tensorboard: scalars, reconstruction grids, code-usage histograms and hparams with the final metrics, for
train, refit, train-prior and every sweep cell (so `tensorboard --logdir SWEEP` compares a sweep)."""

from __future__ import annotations

import pytest

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from prostate_vq.prior import train_prior
from prostate_vq.training import RunRequest, TrainOptions, train
from prostate_vq.training.refit import refit
from prostate_vq.workflows import sweep


def _events(folder):
    events = EventAccumulator(str(folder), size_guidance={"images": 0, "histograms": 0, "tensors": 0})
    events.Reload()
    return events.Tags(), events


def _has_hparams(events) -> bool:
    return "_hparams_/session_start_info" in events.PluginTagToContent("hparams")


def _assert_visuals(folder, epochs: int):
    tags, events = _events(folder)
    assert "reconstructions/input_then_output" in tags["images"]
    assert "codebook/code_usage" in tags["histograms"]
    assert {"val_loss", "codebook_usage_pct"} <= set(tags["scalars"])
    assert len(events.Images("reconstructions/input_then_output")) == epochs
    assert _has_hparams(events) and "hparam/best_val_loss" in tags["scalars"]


@pytest.fixture(scope="module")
def tb_run(phantom_root, tmp_path_factory, tiny_spatial, tiny_model_overrides):
    out = tmp_path_factory.mktemp("tb") / "run"
    return train(
        TrainOptions(out=out, data=phantom_root, device="cpu", progress=False, tensorboard=True),
        RunRequest(epochs=2, spatial_size=tiny_spatial, batch_size=4, overrides=list(tiny_model_overrides)),
    )


def test_train_logs_grids_histograms_and_hparams(tb_run):
    _assert_visuals(tb_run / "tb", epochs=2)


def test_refit_logs_the_same(tb_run, phantom_root, tmp_path):
    out = refit(
        tb_run / "best.pt",
        tmp_path / "refit",
        codebook_size=8,
        data=phantom_root,
        epochs=1,
        device="cpu",
        progress=False,
        tensorboard=True,
    )
    _assert_visuals(out / "tb", epochs=1)


def test_train_prior_logs_history_and_hparams(tb_run, tmp_path):
    out = train_prior(
        tb_run / "best.pt",
        out=tmp_path / "prior",
        epochs=1,
        batch_size=4,
        device="cpu",
        progress=False,
        arch_options={"dim": 16, "layers": 4},
        tensorboard=True,
    )
    tags, events = _events(out / "tb")
    assert "val_nll_bits" in tags["scalars"] and "hparam/test_nll_bits_per_code" in tags["scalars"]
    assert _has_hparams(events)


def test_every_sweep_cell_logs_into_its_run(phantom_root, tmp_path, tiny_spatial, tiny_model_overrides):
    out = tmp_path / "sweep"
    sweep(
        phantom_root,
        presets=["v1-vq"],
        out=out,
        max_steps=2,
        spatial_size=tiny_spatial,
        device="cpu",
        overrides=list(tiny_model_overrides),
        progress=False,
        grid=["quantizer.beta=0.25,1.0"],
        tensorboard=True,
    )
    logs = sorted(p.parent.relative_to(out).as_posix() for p in out.rglob("events.out.tfevents.*"))
    assert len({log.split("/")[0] for log in logs}) == 2 and all(log.endswith("run/tb") for log in logs)
