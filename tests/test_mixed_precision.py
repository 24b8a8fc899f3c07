"""Quantizers compute in fp32 under autocast (models.quantizers.base.full_precision): under CPU bf16 autocast
every kind gives the codes, usage and EMA statistics of fp32."""

from __future__ import annotations

import copy

import pytest
import torch

from prostate_vq.models import apply_overrides, build_model, get_preset
from prostate_vq.models.quantizers import QUANTIZERS, build_quantizer

KINDS = {
    "vq": {"codebook_size": 64},
    "ema": {"codebook_size": 64},
    "rq": {"codebook_size": 16, "depth": 3},
    "fsq": {"levels": [8, 5, 5]},
    "lfq": {"codebook_size": 64},
    "soft": {"codebook_size": 64},
    "monai-ema": {"codebook_size": 64},
}


def _bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def test_every_kind_is_covered():
    assert set(KINDS) == set(QUANTIZERS)


@pytest.mark.parametrize("kind", list(KINDS))
def test_codes_and_usage_match_fp32_under_bf16_autocast(kind):
    torch.manual_seed(0)
    quantizer = build_quantizer({"kind": kind, **KINDS[kind]}, 32).eval()
    z = 3 * torch.randn(4, 32, 16, 8)
    with torch.no_grad():
        reference = quantizer(z)
        with _bf16():
            mixed = quantizer(z)
            looked_up = quantizer.lookup(reference.indices)
    assert torch.equal(mixed.indices, reference.indices)
    assert quantizer.usage(mixed.indices) == quantizer.usage(reference.indices)
    assert mixed.quantized.dtype == torch.float32 and looked_up.dtype == torch.float32
    assert torch.allclose(mixed.quantized, reference.quantized, atol=1e-6)
    assert torch.allclose(looked_up, quantizer.lookup(reference.indices), atol=1e-6)


@pytest.mark.parametrize("kind", ["vq", "ema", "rq", "monai-ema"])
def test_a_training_step_updates_the_codebook_as_in_fp32(kind):
    torch.manual_seed(0)
    quantizer = build_quantizer({"kind": kind, **KINDS[kind]}, 32).train()
    twin = copy.deepcopy(quantizer)
    z = 3 * torch.randn(4, 32, 16, 8)
    reference = quantizer(z)
    with _bf16():
        mixed = twin(z)
    assert torch.equal(mixed.indices, reference.indices)
    for (name, a), b in zip(quantizer.state_dict().items(), twin.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    for key, loss in mixed.losses.items():
        assert loss.dtype == torch.float32 and torch.allclose(loss, reference.losses[key], atol=1e-6), key


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", list(KINDS))
def test_codes_match_fp32_under_cuda_bf16_autocast(kind):
    torch.manual_seed(0)
    quantizer = build_quantizer({"kind": kind, **KINDS[kind]}, 32).eval().cuda()
    z = 3 * torch.randn(4, 32, 16, 8, device="cuda")
    with torch.no_grad():
        reference = quantizer(z)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            mixed = quantizer(z)
    assert torch.equal(mixed.indices, reference.indices)


def test_bf16_model_keeps_its_dtype_through_the_quantizer():
    """A model cast to bf16 (no autocast): the quantizer computes in fp32 and hands the decoder bf16."""
    cfg = apply_overrides(
        get_preset("v1-vq"),
        ["model.channels=[8,16]", "model.res_channels=8", "model.embedding_dim=16", "quantizer.codebook_size=32"],
    )
    model = build_model(cfg).eval().to(torch.bfloat16)
    with torch.no_grad():
        out = model(torch.rand(2, 1, 32, 16, dtype=torch.bfloat16))
    assert out.recon.dtype == torch.bfloat16 and out.indices.dtype == torch.int64
