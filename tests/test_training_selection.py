"""Model selection and early stopping follow the task's quality, never a quantizer's auxiliary loss;
patience and the minimum training length count optimizer steps."""

from __future__ import annotations

import csv

import torch
import torch.nn.functional as F

from prostate_vq.models import build_model, get_preset
from prostate_vq.training import RunRequest, TrainOptions, train
from prostate_vq.training.engine.early_stopping import EarlyStopping
from prostate_vq.training.vqvae.epoch import StepSettings, validate
from prostate_vq.training.vqvae.losses import TaskLoss, split_loss


def _vq_model():
    cfg = get_preset("v1-vq")
    cfg["model"].update(channels=[8], res_channels=8, embedding_dim=8)
    cfg["quantizer"].update(codebook_size=16)
    torch.manual_seed(0)
    return build_model(cfg, "image")


def test_validation_loss_is_the_task_loss_without_quantizer_terms():
    model = _vq_model()
    images = torch.rand(6, 1, 32, 16)
    loader = [{"image": images[:3]}, {"image": images[3:]}]
    metrics = validate(model, loader, TaskLoss("image"), StepSettings(device=torch.device("cpu")))
    model.eval()
    with torch.no_grad():
        out = model(images)
    mse = F.mse_loss(out.recon, images).item()
    aux = sum(v.item() for v in out.aux_losses.values())
    assert aux > 0  # the vq kind keeps its codebook/commitment terms in eval mode ...
    assert abs(metrics["val_loss"] - mse) < 1e-6  # ... but they are not part of what selection sees
    assert abs(metrics["val_quantizer_loss"] - aux) < 1e-6


def test_split_loss_separates_auxiliary_parts():
    parts = {"mse": torch.tensor(0.5), "aux_codebook": torch.tensor(2.0), "aux_commitment": torch.tensor(0.25)}
    task, aux = split_loss(parts)
    assert (task.item(), aux.item()) == (0.5, 2.25)


def test_patience_counts_optimizer_steps():
    stopper = EarlyStopping(monitor="loss", patience=2, patience_steps=100)
    assert stopper.update(1.0, epoch=1, step=4)
    stopper.update(2.0, epoch=2, step=8)
    stopper.update(2.0, epoch=3, step=12)
    assert not stopper.stopped  # two bad epochs, but only 8 steps since the best
    stopper.update(2.0, epoch=30, step=104)
    assert stopper.stopped


def test_no_early_stop_before_min_steps():
    stopper = EarlyStopping(monitor="ssim", patience=1, min_steps=50)
    stopper.update(0.5, epoch=1, step=10)
    stopper.update(0.4, epoch=2, step=20)
    assert not stopper.stopped
    stopper.update(0.4, epoch=5, step=50)
    assert stopper.stopped


def test_history_logs_quantizer_terms_and_steps(phantom_root, tmp_path, tiny_spatial, tiny_model_overrides):
    run = train(
        TrainOptions(out=tmp_path / "run", data=phantom_root, device="cpu", progress=False),
        RunRequest(preset="v1-vq", epochs=2, spatial_size=tiny_spatial, batch_size=4, overrides=list(tiny_model_overrides)),
    )
    with open(run / "history.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    steps = [int(r["step"]) for r in rows]
    assert steps[0] > 0 and steps[1] == 2 * steps[0]
    for row in rows:
        assert float(row["train_quantizer_loss"]) > 0
        assert float(row["val_quantizer_loss"]) > 0
        assert float(row["train_loss"]) > float(row["train_quantizer_loss"])


def test_ssim_loss_matches_monai_ssim():
    """The loss's hand-written SSIM (runtime.slice_scores.ssim_mean) is MONAI's SSIMMetric with the same constants."""
    from monai.metrics import SSIMMetric

    from prostate_vq.runtime.slice_scores import SSIM_DATA_RANGE, SSIM_K1, SSIM_K2, SSIM_SIGMA, SSIM_WINDOW, ssim_mean

    torch.manual_seed(0)
    x, y = torch.rand(3, 1, 40, 24), torch.rand(3, 1, 40, 24)
    y = (0.7 * x + 0.3 * y).clamp(0, 1)
    monai = SSIMMetric(
        spatial_dims=2,
        data_range=SSIM_DATA_RANGE,
        kernel_type="gaussian",
        win_size=SSIM_WINDOW,
        kernel_sigma=SSIM_SIGMA,
        k1=SSIM_K1,
        k2=SSIM_K2,
        reduction="none",
    )(x, y)
    assert abs(ssim_mean(x, y).item() - monai.mean().item()) < 1e-5
    x.requires_grad_(True)
    ssim_mean(x, y).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_ssim_weight_adds_a_task_term():
    image = torch.rand(2, 1, 32, 16)
    out = type("Out", (), {"recon": 0.8 * image + 0.1, "seg_logits": None, "aux_losses": {}})()
    _, parts = TaskLoss("image", ssim_weight=0.5)(out, image, None)
    assert set(parts) == {"mse", "ssim"} and 0 < parts["ssim"].item() < 0.25
    assert split_loss(parts)[1].item() == 0  # a task term: selection sees it


def test_warmup_scales_the_first_steps_and_restores_the_schedule():
    from prostate_vq.training.vqvae.epoch import _step_with_warmup

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    moves = []
    for step in (1, 2, 4, 5):
        param.grad = torch.ones(1)
        before = param.item()
        _step_with_warmup(optimizer, step, warmup_steps=4)
        moves.append(before - param.item())
    assert moves == [0.25, 0.5, 1.0, 1.0]
    assert optimizer.param_groups[0]["lr"] == 1.0
