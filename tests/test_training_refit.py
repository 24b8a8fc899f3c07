"""ReFiT: seeded k-means++, codebook re-build + fine-tuning, and `train --preset v2-refit` in one command."""

from __future__ import annotations

import json

import pytest
import torch

from prostate_vq.cli import main
from prostate_vq.errors import UserInputError
from prostate_vq.runtime.checkpoints import load_checkpoint, load_model
from prostate_vq.training import refit
from prostate_vq.training.kmeans import kmeans


def blobs(seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    points = centres.repeat_interleave(250, 0) + 0.3 * torch.randn(1000, 2, generator=g)
    return centres, points


def test_kmeans_finds_separated_clusters_deterministically():
    centres, points = blobs()
    found = kmeans(points, 4, seed=1)
    assert torch.cdist(centres, found).min(1).values.max() < 0.2  # every true centre recovered
    assert torch.equal(found, kmeans(points, 4, seed=1))
    unit = kmeans(points + 1.0, 4, seed=0, cosine=True)
    assert torch.allclose(unit.norm(dim=1), torch.ones(4), atol=1e-5)


def test_kmeans_with_more_clusters_than_distinct_points():
    points = torch.tensor([[1.0, 1.0]] * 5 + [[2.0, 2.0]] * 5)
    found = kmeans(points, 4, seed=0)
    assert found.shape == (4, 2) and torch.isfinite(found).all()


def test_refit_rebuilds_a_fully_used_codebook_and_keeps_shapes(tiny_run, tmp_path):
    run = refit(tiny_run / "best.pt", tmp_path / "refit", codebook_size=8, epochs=1, device="cpu", progress=False)
    for name in ("best.pt", "last.pt", "history.csv", "refit.json"):
        assert (run / name).is_file(), name
    info = json.loads((run / "refit.json").read_text(encoding="utf-8"))
    assert info["codebook_size_before"] == 32 and info["codebook_size_after"] == 8
    assert info["usage_after_kmeans_pct"] >= 87.5  # 7+ of 8 codes in use
    assert 0 < info["usage_before_pct"] <= 100  # (He-initialised bases already use most of their 32 codes)
    assert info["usage_after_finetune_pct"] is not None
    payload = load_checkpoint(run / "best.pt")
    assert payload["refit"]["base_checkpoint"].endswith("best.pt")
    assert payload["config"]["quantizer"]["codebook_size"] == 8
    # fine-tuning re-seeds codes that fall out of use, so the re-built codebook stays in use
    assert payload["config"]["quantizer"]["dead_code_threshold"] >= 1.0

    base, _ = load_model(tiny_run / "best.pt")
    model, _ = load_model(run / "best.pt")
    assert tuple(model.quantizer.codebook.shape) == (8, base.quantizer.codebook.shape[1])
    x = torch.rand(2, 1, 64, 32)
    with torch.no_grad():
        out, ref = model(x), base(x)
    assert out.recon.shape == ref.recon.shape and out.indices.shape == ref.indices.shape
    assert int(out.indices.max()) < 8


def test_refit_rejects_bad_requests(tiny_run, tmp_path, capsys):
    assert (
        main(
            [
                "refit",
                "--checkpoint",
                str(tiny_run / "best.pt"),
                "--codebook-size",
                "1",
                "--out",
                str(tmp_path / "cli"),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "at least 2" in capsys.readouterr().err
    with pytest.raises(UserInputError, match="at least 2"):
        refit(tiny_run / "best.pt", tmp_path / "a", codebook_size=1, device="cpu", progress=False)
    with pytest.raises(UserInputError, match="missing.pt"):
        refit(tmp_path / "missing.pt", tmp_path / "b", codebook_size=8, device="cpu", progress=False)


def test_v2_refit_preset_runs_both_stages(phantom_root, tmp_path, tiny_model_overrides):
    out = tmp_path / "v2"
    code = main(
        [
            "train",
            "--preset",
            "v2-refit",
            "--data",
            str(phantom_root),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--spatial-size",
            "64",
            "32",
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--no-progress",
            "--set",
            *tiny_model_overrides,
            "refit.codebook_size=8",
        ]
    )
    assert code == 0
    base = load_checkpoint(out / "base" / "best.pt")
    final = load_checkpoint(out / "best.pt")
    assert base["config"]["quantizer"]["codebook_size"] == 32
    assert final["config"]["quantizer"]["codebook_size"] == 8
    assert final["refit"]["usage_after_kmeans_pct"] >= 87.5
    assert json.loads((out / "refit.json").read_text(encoding="utf-8"))["codebook_size_after"] == 8


def test_v2_refit_splits_a_step_budget_and_reports_the_whole_run(phantom_root, tmp_path, tiny_model_overrides):
    """--max-steps 8 is the command's: 6 steps of stage 1, 2 of ReFiT; metrics.json counts both stages."""
    from prostate_vq.evaluation import evaluate_checkpoint

    out = tmp_path / "v2"
    assert (
        main(
            [
                "train",
                "--preset",
                "v2-refit",
                "--data",
                str(phantom_root),
                "--out",
                str(out),
                "--max-steps",
                "8",
                "--spatial-size",
                "64",
                "32",
                "--batch-size",
                "4",
                "--device",
                "cpu",
                "--no-progress",
                "--set",
                *tiny_model_overrides,
                "refit.codebook_size=8",
            ]
        )
        == 0
    )
    assert load_checkpoint(out / "base" / "last.pt")["history"][-1]["step"] == 6
    assert load_checkpoint(out / "last.pt")["history"][-1]["step"] == 2
    m = evaluate_checkpoint(out / "best.pt", data=phantom_root, out=tmp_path / "eval", device="cpu", figures=False).to_dict()
    assert m["run_steps"] == 8 and m["base_steps"] == 6 and m["run_epochs"] == 3  # 2 + 1 epochs of 3 steps
