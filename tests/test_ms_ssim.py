"""MS-SSIM in evaluation: MONAI's MultiScaleSSIMMetric at 5 scales with a 7x7 window, so 128x128 and 256x128
slices work; metrics.json ms_ssim_mean/ms_ssim_std, the per-slice CSV column, per-patient intervals, the report."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from prostate_vq.evaluation import evaluate_checkpoint
from prostate_vq.evaluation.metrics import MS_SSIM_MIN_SIDE, ms_ssim_per_slice
from prostate_vq.models import apply_overrides, build_model, get_preset
from prostate_vq.reporting.markdown import write_report
from prostate_vq.runtime.checkpoints import FORMAT_VERSION, save_checkpoint


@pytest.mark.parametrize("size", [(128, 128), (256, 128), (112, 112)])
def test_ms_ssim_takes_the_hipmri_slice_sizes(size):
    torch.manual_seed(0)
    image = torch.rand(2, 1, *size)
    noisy = (image + 0.1 * torch.randn_like(image)).clamp(0, 1)
    assert torch.allclose(ms_ssim_per_slice(image, image), torch.ones(2), atol=1e-5)
    values = ms_ssim_per_slice(noisy, image)
    assert values.shape == (2,) and bool((values < 1).all()) and bool((values > 0).all())


def test_small_slices_have_no_ms_ssim():
    assert MS_SSIM_MIN_SIDE == 112
    assert ms_ssim_per_slice(torch.rand(1, 1, 64, 32), torch.rand(1, 1, 64, 32)) is None
    assert ms_ssim_per_slice(torch.rand(1, 1, 128, 96), torch.rand(1, 1, 128, 96)) is None


@pytest.fixture(scope="module")
def evaluated_128(phantom_root, tmp_path_factory):
    """An untrained small model at 128x128, evaluated on 4 test slices."""
    tmp = tmp_path_factory.mktemp("ms_ssim")
    torch.manual_seed(0)
    cfg = apply_overrides(
        get_preset("v1-vq"),
        ["model.channels=[8,16]", "model.res_channels=8", "model.embedding_dim=16", "quantizer.codebook_size=32"],
    )
    payload = {
        "format_version": FORMAT_VERSION,
        "config": cfg,
        "preset": "v1-vq",
        "task": "image",
        "spatial_size": [128, 128],
        "seed": 0,
        "epoch": 1,
        "model_state": build_model(cfg).state_dict(),
    }
    checkpoint = save_checkpoint(tmp / "best.pt", payload)
    evaluate_checkpoint(checkpoint, data=phantom_root, out=tmp / "eval", device="cpu", max_slices=4, figures=False)
    return tmp / "eval"


def test_evaluation_writes_ms_ssim(evaluated_128):
    metrics = json.loads((evaluated_128 / "metrics.json").read_text(encoding="utf-8"))
    assert 0 < metrics["ms_ssim_mean"] <= 1 and metrics["ms_ssim_std"] >= 0
    assert metrics["per_patient"]["ms_ssim"]["mean"] == pytest.approx(metrics["ms_ssim_mean"])
    with open(evaluated_128 / "per_slice.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    values = [float(r["ms_ssim"]) for r in rows]
    assert len(values) == metrics["n_slices"] and sum(values) / len(values) == pytest.approx(metrics["ms_ssim_mean"], rel=1e-4)


def test_small_slices_leave_ms_ssim_null(tiny_run, phantom_root, tmp_path):
    evaluate_checkpoint(tiny_run / "best.pt", data=phantom_root, out=tmp_path, device="cpu", max_slices=2, figures=False)
    metrics = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert "ms_ssim_mean" in metrics and metrics["ms_ssim_mean"] is None
    with open(tmp_path / "per_slice.csv", newline="", encoding="utf-8") as handle:
        assert {r["ms_ssim"] for r in csv.DictReader(handle)} == {""}


def test_report_shows_ms_ssim(evaluated_128, tmp_path):
    text = write_report([evaluated_128], tmp_path / "report.md").read_text(encoding="utf-8")
    assert "### Multi-scale and perceptual metrics" in text and "| Model | MS-SSIM | LPIPS | rFID |" in text
    assert "MS-SSIM" in text.split("## Testing", 1)[1]  # the per-patient table has its column
