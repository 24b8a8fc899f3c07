"""The CUDA paths (bf16 autocast, channels_last, codebooks on the device): marked `cuda`, skipped without a GPU.
`tools/gpu_check.sh` runs them with `pytest -m cuda` whenever a CUDA machine is at hand."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("preset", ["default", "fsq", "v3-ema", "v4-rq", "vqvae2", "monai-stock"])
def test_training_step_under_bf16_autocast_on_cuda(preset):
    from prostate_vq.models import build_model, get_preset
    from prostate_vq.runtime.device import autocast
    from prostate_vq.training.vqvae.losses import TaskLoss

    device = torch.device("cuda")
    torch.manual_seed(0)
    model = build_model(get_preset(preset)).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(4, 1, 128, 128, device=device).contiguous(memory_format=torch.channels_last)
    for _ in range(3):
        with autocast(device):
            loss, _ = TaskLoss("image", ssim_weight=0.1)(model(x), x, None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay fp32 under autocast


def test_nearest_code_on_cuda_matches_the_cpu():
    from prostate_vq.models.quantizers import nearest_code

    torch.manual_seed(0)
    z, codebook = torch.randn(50_000, 64), torch.randn(512, 64)
    assert torch.equal(nearest_code(z.cuda(), codebook.cuda()).cpu(), nearest_code(z, codebook))


def test_train_and_evaluate_on_cuda(phantom_root, tmp_path, tiny_spatial, tiny_model_overrides):
    from prostate_vq.evaluation import evaluate_checkpoint
    from prostate_vq.training import RunRequest, TrainOptions, train

    run = train(
        TrainOptions(out=tmp_path / "run", data=phantom_root, device="cuda", progress=False),
        RunRequest(max_steps=6, spatial_size=tiny_spatial, batch_size=4, overrides=tiny_model_overrides),
    )
    m = evaluate_checkpoint(run / "best.pt", data=phantom_root, out=tmp_path / "eval", device="cuda").to_dict()
    assert m["run_steps"] == 6 and m["ssim_mean"] is not None and m["device"].startswith("cuda")
