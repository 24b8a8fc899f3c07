"""Rate (bits per pixel) and per-level codebook health: variants are compared at equal rate, and pooled
usage must not hide a collapsed level."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from prostate_vq.cli import main
from prostate_vq.models import apply_overrides, build_model, get_preset
from prostate_vq.models.presets import preset_bits_per_pixel
from prostate_vq.models.rate import CodeLevel, bits_per_pixel, level_health
from prostate_vq.training.vqvae.validation import CodebookCollapseWarning, warn_if_collapsed

TINY = ["model.channels=[8, 16]", "model.res_channels=8", "model.embedding_dim=8"]
FAMILY = ["default", "v1-vq", "v3-ema", "l2-codes", "entropy", "soft", "fsq", "lfq", "v4-rq", "vqvae2"]


@pytest.mark.parametrize("name", FAMILY)
def test_every_variant_is_at_the_standard_rate(name):
    for size in ((256, 128), (128, 128)):
        assert build_model(get_preset(name)).bits_per_pixel(size) == pytest.approx(0.5625), (name, size)


def test_rates_of_other_presets():
    assert preset_bits_per_pixel("hifi") == pytest.approx(2.25)  # /2, K=512
    assert preset_bits_per_pixel("model105") == pytest.approx(9 / 64)  # /8, K=512
    assert preset_bits_per_pixel("v2-refit") == pytest.approx(0.5)  # after ReFiT to K=256
    assert preset_bits_per_pixel("model201") == pytest.approx(7 / 16)  # K=128


def test_bits_per_pixel_sums_levels():
    levels = [CodeLevel("top", (8, 4), 256), CodeLevel("bottom", (16, 8), 128)]
    assert bits_per_pixel(levels, (64, 32)) == pytest.approx((32 * 8 + 128 * 7) / (64 * 32))


def test_level_health_per_rq_depth_never_exceeds_k():
    model = build_model(apply_overrides(get_preset("v4-rq"), TINY + ["quantizer.codebook_size=8", "quantizer.depth=4"]), "image")
    levels = model.code_levels((32, 32))
    assert [lv.name for lv in levels] == ["rq1", "rq2", "rq3", "rq4"]
    indices = torch.arange(4 * 16).reshape(1, 4, 4, 4) % 8  # every level uses all 8 codes evenly
    health = level_health(model.code_counts(indices), levels, (32, 32))
    assert all(h["perplexity"] == pytest.approx(8.0) and h["codebook_usage_pct"] == 100.0 for h in health)
    assert sum(h["bits_per_pixel"] for h in health) == pytest.approx(model.bits_per_pixel((32, 32)))


def test_collapsed_vqvae2_top_level_warns_although_pooled_usage_looks_fine():
    model = build_model(
        apply_overrides(get_preset("vqvae2"), TINY + ["quantizer.codebook_size=4", "model.top_codebook_size=4"]), "image"
    )
    levels = model.code_levels((32, 32))
    counts = torch.tensor([10, 0, 0, 0, 5, 5, 5, 5])  # top: 1 of 4 codes; bottom: all 4
    health = level_health(counts, levels, (32, 32))
    assert [h["codebook_usage_pct"] for h in health] == [25.0, 100.0]
    metrics = {"codebook_usage_pct": 62.5, "perplexity": 4.0}  # pooled: no collapse visible
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not warn_if_collapsed(metrics, 1, 8)  # the old, pooled check
    assert not caught
    low = [dict(h, codebook_usage_pct=h["codebook_usage_pct"] / 4 if h["name"] == "top" else 100.0) for h in health]
    with pytest.warns(CodebookCollapseWarning, match="level top"):
        assert warn_if_collapsed(metrics, 1, 8, low)


def test_metrics_json_has_rate_and_levels(tiny_run, phantom_root, tmp_path):
    assert (
        main(
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
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text(encoding="utf-8"))
    (level,) = metrics["levels"]
    assert metrics["bits_per_pixel"] == pytest.approx(level["bits_per_pixel"]) and metrics["bits_per_pixel"] > 0
    assert level["codes_used"] == metrics["codes_used"] and level["codebook_size"] == metrics["codebook_size"]


def test_joint_usage_and_effective_rate_on_a_hand_built_three_level_code():
    """Three 8-code RQ levels on a 2x2 grid: every level uses all 8 codes (pooled: 24 codes, '100%'), but the
    positions carry only 8 of the 512 tuples, and the effective rate follows each level's histogram entropy."""
    from prostate_vq.models.rate import JointCodes, effective_bits_per_pixel

    # 8 slices x 2x2 positions = 32 positions; level 1 cycles through 8 codes, levels 2 and 3 copy it, so each
    # level's histogram is uniform (3 bits) and the tuples are (k, k, k): 8 distinct of min(512, 32) possible.
    base = torch.arange(32).remainder(8).reshape(8, 2, 2)
    indices = torch.stack([base, base, base], 1)
    joint = JointCodes([8, 8, 8])
    joint.add(indices[:5])
    joint.add(indices[5:])  # accumulated over batches
    result = joint.to_dict()
    assert result["joint_codes_used"] == 8 and result["joint_codes_possible"] == 512
    assert result["joint_usage_pct"] == pytest.approx(100 * 8 / 32)
    assert result["joint_perplexity"] == pytest.approx(8.0)

    levels = [CodeLevel(f"rq{i}", (2, 2), 8) for i in (1, 2, 3)]
    counts = torch.cat([torch.bincount(base.reshape(-1), minlength=8)] * 3)
    health = level_health(counts, levels, (8, 8))
    assert [lv["codebook_usage_pct"] for lv in health] == [100.0] * 3
    assert health[0]["entropy_bits"] == pytest.approx(3.0)
    assert effective_bits_per_pixel(health) == pytest.approx(3 * 4 * 3.0 / 64)  # = the nominal rate here
    assert bits_per_pixel(levels, (8, 8)) == pytest.approx(3 * 4 * 3.0 / 64)

    # A level stuck on one code carries nothing: the effective rate drops by that level's share.
    stuck = torch.cat([torch.bincount(base.reshape(-1), minlength=8)] * 2 + [torch.tensor([32, 0, 0, 0, 0, 0, 0, 0])])
    assert effective_bits_per_pixel(level_health(stuck, levels, (8, 8))) == pytest.approx(2 * 4 * 3.0 / 64)
    one_level = JointCodes([4])
    one_level.add(torch.tensor([[[0, 1], [1, 1]]]))
    assert one_level.to_dict()["joint_usage_pct"] == pytest.approx(50.0)  # 2 of min(4, 4)


def test_metrics_json_carries_joint_codes_effective_rate_and_steps(tiny_run, phantom_root, tmp_path):
    from prostate_vq.evaluation import evaluate_checkpoint

    m = evaluate_checkpoint(tiny_run / "best.pt", data=phantom_root, out=tmp_path / "eval", device="cpu", figures=False).to_dict()
    assert m["joint_codes_used"] == m["codes_used"]  # one level: the tuples are the codes
    assert 0 < m["effective_bits_per_pixel"] <= m["bits_per_pixel"]
    assert m["run_steps"] == m["steps"] == 6 and m["run_epochs"] == 2 and m["stop_reason"] == "epochs"
