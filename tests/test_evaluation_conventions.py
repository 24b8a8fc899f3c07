"""Dice conventions on a hand-built case, SSIM in a region, per-patient bootstrap statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from prostate_vq.evaluation.conventions import (
    PROSTATE,
    bootstrap_ci,
    class_means,
    dice_case3d,
    dice_monai,
    overlap_counts,
    per_patient,
    ssim_in_region,
)
from prostate_vq.evaluation.metrics import dice_per_slice


def _sparse_prostate_case():
    """Three 4x4 slices of one case: a perfect slice, a false positive on a slice without prostate, a partial hit."""
    ref = torch.ones(3, 1, 4, 4, dtype=torch.long)  # body everywhere
    pred = ref.clone()
    ref[0, 0, :2, :2] = PROSTATE
    pred[0, 0, :2, :2] = PROSTATE  # Dice 1
    pred[1, 0, 0, :2] = PROSTATE  # reference has none: per-slice 0, MONAI not scored
    ref[2, 0, 3, :2] = PROSTATE
    pred[2, 0, 3, 0] = PROSTATE  # 2 x 1 / (1 + 2)
    return pred, ref


def test_dice_conventions_on_a_hand_built_case():
    pred, ref = _sparse_prostate_case()
    per_slice = dice_per_slice(pred, ref).numpy()[:, PROSTATE]
    assert np.allclose(per_slice, [1.0, 0.0, 2 / 3])
    assert class_means(dice_per_slice(pred, ref).numpy())["prostate"] == pytest.approx(5 / 9)
    monai = dice_monai(pred, ref).numpy()
    assert np.isnan(monai[1, PROSTATE]) and class_means(monai)["prostate"] == pytest.approx(5 / 6)
    dice, keys = dice_case3d(overlap_counts(pred, ref).numpy(), [("004", 0)] * 3)
    assert keys == [("004", 0)]
    assert dice[0, PROSTATE] == pytest.approx(2 * 5 / (7 + 6))  # intersection 4+0+1, predicted 7, reference 6
    assert np.isnan(dice[0, 3])  # no bladder anywhere in the reference: not scored


def test_case3d_dice_equals_monai_on_the_stacked_volume():
    from monai.metrics import compute_dice

    torch.manual_seed(0)
    pred, ref = torch.randint(0, 6, (5, 1, 8, 8)), torch.randint(0, 6, (5, 1, 8, 8))
    dice, _ = dice_case3d(overlap_counts(pred, ref).numpy(), [("a", 0)] * 5)
    volume = lambda t: t.permute(1, 2, 3, 0)[None]  # noqa: E731  [1, 1, H, W, slices]
    expected = compute_dice(volume(pred), volume(ref), include_background=True, num_classes=6, ignore_empty=True)
    assert np.allclose(dice[0], expected[0].numpy())


def test_ssim_in_region_ignores_padding():
    torch.manual_seed(0)
    image = torch.zeros(1, 1, 48, 48)
    image[..., :, 12:36] = torch.rand(1, 1, 48, 24)  # a slice padded with zeros left and right
    recon = image.clone()
    recon[..., :, 12:36] += 0.1 * torch.randn(1, 1, 48, 24)
    whole = ssim_in_region(recon, image, torch.ones_like(image, dtype=torch.long))
    region = ssim_in_region(recon, image, None)
    assert region.item() < whole.item()  # the perfect zero padding no longer props the score up


def test_per_patient_statistics_and_bootstrap():
    cases = ["a", "a", "a", "b", "c"]
    out = per_patient(cases, {"ssim": np.array([0.9, 0.9, 0.9, 0.6, 0.3])})
    assert out["n_patients"] == 3 and out["cases"]["a"]["ssim"] == pytest.approx(0.9)
    assert out["ssim"]["mean"] == pytest.approx(0.6)  # each patient once, not each slice
    lo, hi = out["ssim"]["ci95"]
    assert 0.3 <= lo < 0.6 < hi <= 0.9
    assert bootstrap_ci(np.array([0.5])) is None


def test_metrics_json_names_its_conventions(tiny_joint_run, phantom_root, tmp_path):
    from prostate_vq.evaluation import evaluate_checkpoint

    evaluate_checkpoint(tiny_joint_run / "best.pt", data=phantom_root, out=tmp_path / "e", device="cpu")
    m = json.loads((tmp_path / "e" / "metrics.json").read_text(encoding="utf-8"))
    assert set(m["dice_conventions"]) == {"per_slice", "monai", "case3d"}
    for key in (
        "dice_prostate_per_slice",
        "dice_prostate_monai",
        "dice_prostate_case3d",
        "dice_mean_monai",
        "dice_mean_case3d",
        "ssim_region_mean",
    ):
        assert key in m, key
    assert m["ssim_region"].startswith("body")
    assert m["per_patient"]["n_patients"] == 1 and m["per_patient"]["ssim"]["ci95"] is None


def test_report_tables_show_conventions_patients_and_levels():
    from prostate_vq.evaluation.results import EvaluationResult
    from prostate_vq.reporting.evaluation_tables import dice_table, levels_table, per_patient_table

    def typed(metrics: dict) -> EvaluationResult:  # the tables read metrics.json typed, as the report does
        return EvaluationResult.from_json({"n_slices": 2, "codebook_size": 384, "codes_used": 129, **metrics})

    m = {
        "dice_per_class": {"body": 0.9, "prostate": 5 / 9},
        "dice_per_class_monai": {"body": 0.9, "prostate": 5 / 6},
        "dice_per_class_case3d": {"body": 0.9, "prostate": 10 / 13},
        "dice_mean": 5 / 9,
        "per_patient": {
            "n_patients": 2,
            "cases": {"004": {"ssim": 0.8}, "005": {"ssim": 0.6}},
            "ssim": {"mean": 0.7, "ci95": [0.6, 0.8]},
        },
        "levels": [
            {"name": "top", "codebook_size": 256, "codes_used": 1, "codebook_usage_pct": 0.39},
            {"name": "bottom", "codebook_size": 128, "codes_used": 128, "codebook_usage_pct": 100.0},
        ],
    }
    dice = dice_table(typed(m))
    assert "| prostate | 55.56 | 83.33 | 76.92 |" in dice
    assert "| **mean over patients [95% CI]** | 0.7000 [0.6000, 0.8000] |" in per_patient_table(typed(m))
    assert "| top | 256 |" in levels_table(typed(m)) and "0.39" in levels_table(typed(m))
    assert levels_table(typed({"levels": m["levels"][:1]})) is None and per_patient_table(typed({})) is None
