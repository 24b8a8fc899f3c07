"""LPIPS and FID from user-supplied weights, tested offline with randomly initialised networks: the metrics
appear only with the weights, a missing file is one line, nothing is downloaded."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import save_file

from prostate_vq.cli import main
from prostate_vq.errors import UserInputError
from prostate_vq.evaluation import evaluate_checkpoint
from prostate_vq.evaluation.perceptual import LPIPS, features, frechet_distance, load_feature_net, load_lpips
from prostate_vq.reporting.markdown import write_report

LPIPS_KEYS = {
    "scaling_layer.shift",
    "scaling_layer.scale",
    *(f"net.slice{i}.{k}.{p}" for i, k in ((1, 0), (2, 3), (3, 6), (4, 8), (5, 10)) for p in ("weight", "bias")),
    *(f"lin{i}.model.1.weight" for i in range(5)),
}


class _Features(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)

    def forward(self, x):
        return torch.relu(self.conv(x))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Randomly initialised LPIPS weights (safetensors) and a TorchScript feature network."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    net = LPIPS()
    for lin in range(5):  # the published lin weights are non-negative; random ones may be too
        getattr(net, f"lin{lin}").model[1].weight.data.abs_()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "lpips_alex.safetensors"))
    torch.jit.save(torch.jit.trace(_Features().eval(), torch.rand(1, 3, 64, 32)), str(folder / "features.ts"))
    return folder / "lpips_alex.safetensors", folder / "features.ts"


def test_lpips_has_the_lpips_package_keys():
    assert set(LPIPS().state_dict()) == LPIPS_KEYS


def test_lpips_matches_the_lpips_package_where_installed():
    lpips = pytest.importorskip("lpips")
    reference = lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True, verbose=False).eval()
    ours = LPIPS().eval()
    ours.load_state_dict(reference.state_dict())
    a, b = torch.rand(2, 1, 64, 64), torch.rand(2, 1, 64, 64)
    expected = reference(a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1), normalize=True).reshape(-1)
    assert torch.allclose(ours(a, b), expected, atol=1e-5)


def test_lpips_is_zero_for_equal_images_and_loads_both_formats(weights, tmp_path):
    net = load_lpips(weights[0])
    a, b = torch.rand(3, 1, 64, 32), torch.rand(3, 1, 64, 32)
    assert torch.allclose(net(a, a), torch.zeros(3), atol=1e-6)
    assert bool((net(a, b) > 0).all())
    torch.save(net.state_dict(), tmp_path / "lpips.pt")
    assert torch.allclose(load_lpips(tmp_path / "lpips.pt")(a, b), net(a, b))


def test_frechet_distance_closed_form():
    torch.manual_seed(0)
    a = torch.randn(4000, 3) * torch.tensor([1.0, 2.0, 0.5]) + torch.tensor([1.0, 0.0, 0.0])
    b = torch.randn(4000, 3) * torch.tensor([2.0, 1.0, 0.5])
    var_a, var_b = a.var(0, unbiased=True), b.var(0, unbiased=True)  # near-diagonal covariances
    expected = float((a.mean(0) - b.mean(0)).pow(2).sum() + (var_a.sqrt() - var_b.sqrt()).pow(2).sum())
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.05, abs=0.02)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a[:1], b) is None


def test_features_average_spatial_maps(weights):
    f = features(load_feature_net(weights[1]), torch.rand(5, 1, 64, 32), batch_size=2)
    assert f.shape == (5, 8) and f.dtype == torch.float64


def test_missing_or_foreign_weights_are_one_line(tiny_run, phantom_root, tmp_path, capsys):
    with pytest.raises(UserInputError, match="never downloaded"):
        load_lpips(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(UserInputError, match="not a TorchScript feature network"):
        load_feature_net(tmp_path / "junk.pt")
    for option in ("--lpips-weights", "--fid-weights"):
        code = main(
            [
                "evaluate",
                "--checkpoint",
                str(tiny_run / "best.pt"),
                "--data",
                str(phantom_root),
                "--out",
                str(tmp_path / "eval"),
                "--device",
                "cpu",
                option,
                str(tmp_path / "missing.bin"),
            ]
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "missing.bin" in err[0] and option in err[0]
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_evaluation_and_report_with_weights(tiny_run, phantom_root, weights, tmp_path):
    out = tmp_path / "eval"
    result = evaluate_checkpoint(
        tiny_run / "best.pt",
        data=phantom_root,
        out=out,
        device="cpu",
        figures=False,
        lpips_weights=weights[0],
        fid_weights=weights[1],
    )
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["lpips_mean"] > 0 and metrics["fid"] >= 0 and metrics["fid_n"] == metrics["n_slices"]
    assert metrics["lpips_weights"]["file"] == "lpips_alex.safetensors" and len(metrics["fid_weights"]["sha256"]) == 64
    with open(out / "per_slice.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert sum(float(r["lpips"]) for r in rows) / len(rows) == pytest.approx(metrics["lpips_mean"], rel=1e-4)
    assert "LPIPS" in result.summary_table() and "rFID" in result.summary_table()
    text = write_report([out], tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| Model | MS-SSIM | LPIPS | rFID |" in text


def test_without_weights_the_metrics_are_absent(tiny_run, phantom_root, tmp_path):
    evaluate_checkpoint(tiny_run / "best.pt", data=phantom_root, out=tmp_path, device="cpu", figures=False, max_slices=2)
    metrics = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert not {"lpips_mean", "fid", "lpips_weights", "fid_weights"} & set(metrics)
    with open(tmp_path / "per_slice.csv", newline="", encoding="utf-8") as handle:
        assert "lpips" not in next(csv.reader(handle))


@pytest.mark.slow  # ~4 s: a sweep scored with feature weights
def test_sweep_scores_every_job_with_the_weights(phantom_root, weights, tmp_path, tiny_spatial, tiny_model_overrides, capsys):
    from prostate_vq.workflows import sweep

    out = tmp_path / "sweep"
    common = dict(
        presets=["v1-vq"],
        out=out,
        max_steps=2,
        spatial_size=tiny_spatial,
        device="cpu",
        overrides=list(tiny_model_overrides),
        progress=False,
        max_slices=4,
    )
    report = sweep(phantom_root, lpips_weights=weights[0], **common)
    metrics = json.loads((out / "v1-vq" / "seed0" / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["lpips_mean"] > 0 and "fid" not in metrics
    assert "| Model | MS-SSIM | LPIPS | rFID |" in report.read_text(encoding="utf-8")
    capsys.readouterr()
    sweep(phantom_root, lpips_weights=weights[0], fid_weights=weights[1], **common)  # asks for more: re-evaluated
    assert "reusing its evaluation" not in capsys.readouterr().out
    assert "fid" in json.loads((out / "v1-vq" / "seed0" / "eval" / "metrics.json").read_text(encoding="utf-8"))
    with pytest.raises(UserInputError, match="never downloaded"):
        sweep(phantom_root, lpips_weights=tmp_path / "gone.pt", **common)
