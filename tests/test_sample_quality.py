"""Sample-quality metrics for `sample`: diversity by pairwise MS-SSIM (samples and real slices), MONAI's MMD,
FID with a user-supplied feature network; computed offline with random networks."""

from __future__ import annotations

import json

import pytest
import torch

from prostate_vq.cli import main
from prostate_vq.evaluation.sample_quality import mmd, pairwise_ms_ssim, sample_quality
from prostate_vq.prior import sample, train_prior


class _Features(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.avg_pool2d(x, 8).flatten(1)[:, :6]


def test_diversity_is_one_for_copies_and_lower_for_different_slices():
    torch.manual_seed(0)
    base = torch.rand(1, 1, 128, 128)
    assert pairwise_ms_ssim(base.repeat(4, 1, 1, 1)) == pytest.approx(1.0, abs=1e-5)
    assert pairwise_ms_ssim(torch.rand(5, 1, 256, 128)) < 0.5
    assert pairwise_ms_ssim(torch.rand(4, 1, 64, 32)) is None and pairwise_ms_ssim(base) is None


def test_mmd_is_near_zero_for_one_distribution_and_large_for_a_shift():
    """MONAI's unbiased estimate (linear kernel: |mean difference|^2 of the pixels, which may be below 0)."""
    torch.manual_seed(0)
    real, other = torch.rand(16, 1, 32, 32), torch.rand(16, 1, 32, 32)
    same = mmd(other, real)
    assert mmd(real + 0.5, real) == pytest.approx(0.25 * 32 * 32, rel=0.1) and abs(same) < 0.05 * 256
    assert mmd(real[:1], real) is None


def test_sample_quality_with_a_feature_network(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "features.ts"
    torch.jit.save(torch.jit.trace(_Features(), torch.rand(1, 3, 128, 128)), str(path))
    quality = sample_quality(torch.rand(5, 1, 128, 128), torch.rand(4, 1, 128, 128), torch.jit.load(str(path)), path)
    assert quality["diversity_ms_ssim"] is not None and quality["diversity_ms_ssim_real"] is not None
    assert quality["fid"] >= 0 and quality["fid_weights"]["file"] == "features.ts" and quality["notes"] == []


@pytest.fixture(scope="module")
def prior(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("quality_prior") / "prior"
    return train_prior(
        tiny_run / "best.pt",
        out=out,
        arch="pixelcnn",
        epochs=1,
        batch_size=4,
        device="cpu",
        progress=False,
        arch_options={"dim": 16, "layers": 4},
    )


def test_sample_writes_quality_and_fid(prior, tmp_path):
    path = tmp_path / "features.ts"
    torch.jit.save(torch.jit.trace(_Features(), torch.rand(1, 3, 64, 32)), str(path))
    out = sample(prior / "best.pt", n=3, out=tmp_path / "s", device="cpu", fid_weights=path)
    quality = json.loads((out / "samples.json").read_text(encoding="utf-8"))["quality"]
    assert quality["n_samples"] == 3 and quality["n_real"] >= 2 and quality["mmd"] is not None
    assert quality["fid"] is not None and quality["fid_weights"]["file"] == "features.ts"
    assert quality["diversity_ms_ssim"] is None and "112 px" in quality["notes"][0]  # 64x32 slices
    from prostate_vq.reporting.markdown import write_report

    text = write_report([out], tmp_path / "report.md").read_text(encoding="utf-8")
    assert "Sample quality: diversity" in text and "MMD (MONAI)" in text and "FID " in text


def test_sample_without_weights_has_no_fid_and_a_missing_file_is_one_line(prior, tmp_path, capsys):
    out = sample(prior / "best.pt", n=2, out=tmp_path / "s", device="cpu")
    assert "fid" not in json.loads((out / "samples.json").read_text(encoding="utf-8"))["quality"]
    code = main(
        [
            "sample",
            "--prior",
            str(prior / "best.pt"),
            "--out",
            str(tmp_path / "t"),
            "--device",
            "cpu",
            "--fid-weights",
            str(tmp_path / "nope.ts"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "nope.ts" in err[0] and "--fid-weights" in err[0]
    assert not (tmp_path / "t").exists()
