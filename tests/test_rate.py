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
from prostate_vq.training.trainer import CodebookCollapseWarning, warn_if_collapsed

TINY = ["model.channels=[8, 16]", "model.res_channels=8", "model.embedding_dim=8"]
FAMILY = ["default", "v1-vq", "v3-ema", "l2-codes", "entropy", "soft", "fsq", "lfq", "v4-rq", "vqvae2"]


@pytest.mark.parametrize("name", FAMILY)
def test_every_variant_is_at_the_standard_rate(name):
    for size in ((256, 128), (128, 128)):
        assert build_model(get_preset(name)).bits_per_pixel(size) == pytest.approx(0.5625), (name, size)


def test_rates_of_other_presets():
    assert preset_bits_per_pixel("hifi") == pytest.approx(2.25)        # /2, K=512
    assert preset_bits_per_pixel("model105") == pytest.approx(9 / 64)  # /8, K=512
    assert preset_bits_per_pixel("v2-refit") == pytest.approx(0.5)     # after ReFiT to K=256
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
    model = build_model(apply_overrides(get_preset("vqvae2"), TINY + ["quantizer.codebook_size=4",
                                                                      "model.top_codebook_size=4"]), "image")
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
    assert main(["evaluate", "--checkpoint", str(tiny_run / "best.pt"), "--data", str(phantom_root),
                 "--out", str(tmp_path / "eval"), "--device", "cpu"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text(encoding="utf-8"))
    (level,) = metrics["levels"]
    assert metrics["bits_per_pixel"] == pytest.approx(level["bits_per_pixel"]) and metrics["bits_per_pixel"] > 0
    assert level["codes_used"] == metrics["codes_used"] and level["codebook_size"] == metrics["codebook_size"]
