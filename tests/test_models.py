"""Models: every preset x task trains a step on a tiny input, presets/overrides, summary, codes API."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prostate_vq.errors import UserInputError
from prostate_vq.models import NUM_CLASSES, apply_overrides, build_model, get_preset, list_presets
from prostate_vq.models.networks import DLCRHead
from prostate_vq.models.summary import model_summary

TINY = ["model.channels=[8, 16]", "model.res_channels=8", "model.embedding_dim=8"]
REQUIRED = {
    "default",
    "v1-vq",
    "v2-refit",
    "v3-ema",
    "v4-rq",
    "fsq",
    "lfq",
    "l2-codes",
    "entropy",
    "soft",
    "vqvae2",
    *(f"model{n}" for n in range(100, 106)),
}


def _batch(h=32, w=32, b=2):
    torch.manual_seed(0)
    return {"image": torch.rand(b, 1, h, w), "label": torch.randint(0, NUM_CLASSES, (b, 1, h, w))}


def _loss(out, x):
    loss = sum(out.aux_losses.values(), torch.zeros(()))
    if out.recon is not None:
        loss = loss + F.mse_loss(out.recon, x[:, :1])
    if out.seg_logits is not None:
        loss = loss + out.seg_logits.logsumexp(1).mean()
    return loss


def test_required_presets_exist_with_descriptions():
    rows = dict(list_presets())
    assert set(rows) >= REQUIRED
    assert all(description.strip() for description in rows.values())
    assert "usage" in rows["default"] and "SSIM" in rows["default"]  # it says why it is the default


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_every_preset_trains_a_step_for_every_task(name):
    cfg = apply_overrides(get_preset(name), TINY)
    for task in ("image", "mask", "joint"):
        model = build_model(cfg, task).train()
        x = model.prepare_input(_batch())
        assert x.shape[1] == (NUM_CLASSES if task == "mask" else 1)
        out = model(x.contiguous(memory_format=torch.channels_last))
        assert (out.recon is None) == (task == "mask")
        assert (out.seg_logits is None) == (task == "image")
        if out.recon is not None:
            assert out.recon.shape == (2, 1, 32, 32)
        if out.seg_logits is not None:
            assert out.seg_logits.shape == (2, NUM_CLASSES, 32, 32)
        assert out.indices.shape == (2, *model.code_shape((32, 32)))
        counts = model.code_counts(out.indices)
        assert counts.shape == (model.num_codes,) and int(counts.sum()) > 0
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        _loss(out, x).backward()
        assert model.encoder.body[0].weight.grad.abs().sum() > 0, (name, task)
        optimizer.step()


def test_reference_grid_matches_the_table():
    table = {  # model: (epochs, D, K, downsample, beta)
        "model100": (100, 64, 512, 4, 0.25),
        "model101": (200, 64, 512, 4, 0.25),
        "model102": (100, 32, 256, 4, 0.25),
        "model103": (100, 64, 512, 4, 1.0),
        "model104": (100, 64, 256, 4, 0.25),
        "model105": (100, 64, 512, 8, 0.25),
    }
    for name, (epochs, d, k, down, beta) in table.items():
        cfg = get_preset(name)
        got = (
            cfg["training"]["epochs"],
            cfg["model"]["embedding_dim"],
            cfg["quantizer"]["codebook_size"],
            cfg["model"]["downsample"],
            cfg["quantizer"]["beta"],
        )
        assert got == (epochs, d, k, down, beta), name
        assert cfg["quantizer"]["kind"] == "vq"
    v1, v2 = get_preset("v1-vq"), get_preset("v2-refit")
    assert v2["refit"]["codebook_size"] == 256 and v2["model"] == v1["model"] and v2["quantizer"] == v1["quantizer"]
    assert get_preset("fsq")["quantizer"]["levels"] == [8, 8, 8]  # 512 implicit codes: the family's rate
    for name, k in (("model200", 256), ("model201", 128)):  # ReFiT of model100
        cfg = get_preset(name)
        assert cfg["refit"]["codebook_size"] == k
        assert {s: cfg[s] for s in ("model", "quantizer")} == {s: get_preset("model100")[s] for s in ("model", "quantizer")}


def test_get_preset_is_a_deep_copy_and_unknown_names_fail():
    cfg = get_preset("v1-vq")
    cfg["model"]["channels"].append(1)
    assert get_preset("v1-vq")["model"]["channels"] == [32, 64]
    assert get_preset("l2-codes")["model"]["channels"] == [32, 64]  # presets sharing a YAML anchor stay apart
    with pytest.raises(UserInputError, match="valid presets: default"):
        get_preset("nope")


def test_overrides():
    cfg = apply_overrides(
        get_preset("v1-vq"),
        ["quantizer.codebook_size=256", "model.channels=[16, 32]", "quantizer.l2_normalize=true", "training.lr=1e-3"],
    )
    assert cfg["quantizer"]["codebook_size"] == 256 and cfg["model"]["channels"] == [16, 32]
    assert cfg["quantizer"]["l2_normalize"] is True and cfg["training"]["lr"] == pytest.approx(1e-3)
    switched = apply_overrides(get_preset("v1-vq"), ["quantizer.kind=rq", "quantizer.depth=2"])
    assert switched["quantizer"]["kind"] == "rq" and switched["quantizer"]["codebook_size"] == 512
    assert "levels" not in switched["quantizer"]
    for bad in (["quantizer.nope=1"], ["model.nope=1"], ["nope"], ["bogus.key=1"], ["quantizer.kind=xx"]):
        with pytest.raises(UserInputError):
            apply_overrides(get_preset("v1-vq"), bad)


def test_prepare_input_one_hot_for_masks():
    batch = _batch(8, 8)
    model = build_model(apply_overrides(get_preset("v1-vq"), TINY), "mask")
    x = model.prepare_input(batch)
    assert x.dtype == torch.float32 and x.shape == (2, NUM_CLASSES, 8, 8)
    assert torch.equal(x.argmax(1, keepdim=True), batch["label"]) and torch.all(x.sum(1) == 1)
    image_model = build_model(apply_overrides(get_preset("v1-vq"), TINY), "joint")
    assert torch.equal(image_model.prepare_input(batch), batch["image"])


@pytest.mark.parametrize("name", ["v1-vq", "default", "v4-rq", "fsq", "vqvae2"])
def test_encode_decode_round_trip(name):
    model = build_model(apply_overrides(get_preset(name), TINY), "joint")
    x = _batch()["image"]
    model(x)  # one training forward: k-means init and EMA statistics happen here
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        out = model(x)
        indices = model.encode(x)
        decoded = model.decode_indices(indices)
    assert torch.equal(indices, out.indices)
    assert torch.allclose(decoded.recon, out.recon, atol=1e-5)
    assert torch.allclose(decoded.seg_logits, out.seg_logits, atol=1e-5)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", ["v3-ema", "v4-rq"])
def test_encode_does_not_update_a_training_model(name):
    model = build_model(apply_overrides(get_preset(name), TINY), "image").train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.encode(_batch()["image"])
    assert model.training and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_refit_flow_resizes_and_reloads():
    for name in ("v2-refit", "default"):
        cfg = apply_overrides(get_preset(name), TINY)
        model = build_model(cfg, "image")
        assert model.supports_refit
        out = model(_batch()["image"])
        vectors = out.latents.permute(0, 2, 3, 1).reshape(-1, out.latents.shape[1])
        assert vectors.shape[1] == model.quantizer.codebook.shape[1]  # latents live in codebook space
        model.quantizer.set_codebook(vectors[:16].detach())
        assert model.num_codes == 16
        resized = build_model(apply_overrides(cfg, ["quantizer.codebook_size=16"]), "image")
        resized.load_state_dict(model.state_dict())
        assert torch.equal(resized.encode(_batch()["image"]), model.encode(_batch()["image"]))
    assert not build_model(apply_overrides(get_preset("vqvae2"), TINY)).supports_refit


def test_vqvae2_counts_both_levels():
    model = build_model(
        apply_overrides(get_preset("vqvae2"), TINY + ["quantizer.codebook_size=16", "model.top_codebook_size=16"]), "image"
    )
    indices = model.encode(_batch()["image"])
    assert indices.shape == (2, 2, 8, 8)
    assert torch.equal(indices[:, 0, ::2, ::2].repeat_interleave(2, 1).repeat_interleave(2, 2), indices[:, 0])
    counts = model.code_counts(indices)
    assert counts.shape == (32,) and int(counts[:16].sum()) == 2 * 4 * 4 and int(counts[16:].sum()) == 2 * 8 * 8


def test_downsample_8_and_size_errors():
    model = build_model(apply_overrides(get_preset("model105"), TINY), "image")
    assert model.code_shape((256, 128)) == (32, 16)
    with pytest.raises(UserInputError, match="divisible by 8"):
        model.code_shape((36, 32))
    with pytest.raises(UserInputError, match="unknown task"):
        build_model(get_preset("v1-vq"), "segment")
    with pytest.raises(UserInputError, match="downsample"):
        build_model(apply_overrides(get_preset("v1-vq"), ["model.downsample=3"]), "image")


def test_dlcr_head_halves_channels():
    head = DLCRHead(64, 8, stages=3)
    assert [stage.linear.out_channels + stage.nonlinear[0].out_channels for stage in head.stages] == [32, 16, 8]
    y = head(torch.randn(1, 64, 4, 4))
    assert y.shape == (1, 8, 4, 4)
    model = build_model(apply_overrides(get_preset("v1-vq"), TINY + ["model.dlcr_stages=1"]), "image")
    assert isinstance(model.encoder.head, DLCRHead)
    model(_batch()["image"]).recon.mean().backward()


@pytest.mark.parametrize("preset", ["default", "vqvae2"])
def test_padding_mode_and_nearest_upsampling_reach_every_spatial_conv(preset):
    """model.padding_mode reaches every 3x3/4x4 convolution of encoder and decoder; model.upsample=nearest
    replaces every transposed convolution of the decoders by nearest x2 + 3x3 (same output size, trains)."""
    cfg = apply_overrides(get_preset(preset), TINY + ["model.padding_mode=replicate", "model.upsample=nearest"])
    model = build_model(cfg, "joint")
    decoders = [m for name, m in model.named_children() if name.startswith(("decoder", "seg_decoder"))]
    assert decoders and not any(isinstance(m, torch.nn.ConvTranspose2d) for d in decoders for m in d.modules())
    spatial = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert spatial and all(m.padding_mode == "replicate" for m in spatial)
    x = _batch(32, 32)["image"]
    out = model(x)
    assert out.recon.shape == x.shape and out.seg_logits.shape == (2, NUM_CLASSES, 32, 32)
    _loss(out, x).backward()
    plain = build_model(apply_overrides(get_preset(preset), TINY), "joint")  # the defaults keep the old network
    assert any(isinstance(m, torch.nn.ConvTranspose2d) for m in plain.decoder.modules())
    with pytest.raises(UserInputError, match="padding_mode"):
        build_model(apply_overrides(get_preset(preset), TINY + ["model.padding_mode=circular"]), "image")


def test_summary_reports_parameters():
    text = model_summary("v1-vq", spatial_size=(32, 32), task="joint", overrides=TINY)
    model = build_model(apply_overrides(get_preset("v1-vq"), TINY), "joint")
    total = sum(p.numel() for p in model.parameters())
    assert f"Total params: {total:,}" in text
    assert "Mult-Adds" in text and "[1, 6, 32, 32]" in text and "code map [8, 8]" in text
    with pytest.raises(UserInputError):
        model_summary("v1-vq", spatial_size=(30, 32))


def test_vqvae2_top_level_has_its_own_codebook_size():
    model = build_model(
        apply_overrides(get_preset("vqvae2"), TINY + ["quantizer.codebook_size=8", "model.top_codebook_size=32"]), "image"
    )
    assert (model.quantizer_top.codebook_size, model.quantizer.codebook_size, model.num_codes) == (32, 8, 40)


def test_variant_family_varies_only_the_quantizer():
    """Issue 11: a variant comparison compares quantizers, not backbones or recipes."""
    family = ["default", "v1-vq", "v2-refit", "v3-ema", "l2-codes", "entropy", "soft", "fsq", "lfq", "v4-rq", "vqvae2"]
    base = get_preset("v1-vq")
    for name in family:
        cfg = get_preset(name)
        if name != "default":  # the recommended preset shares the backbone, not the comparison's recipe
            assert cfg["training"] == base["training"], name
        model = {k: v for k, v in cfg["model"].items() if k not in ("architecture", "top_codebook_size")}
        same = {k: v for k, v in base["model"].items() if k not in ("architecture", "top_codebook_size")}
        assert model == same, name


def test_presets_that_collapsed_on_real_scans_keep_their_codes_in_use():
    """Issue 11 benchmark: without restarts soft kept 9 of 512 codes and RQ's first level 15% on ProstateX;
    the entropy term at temperature 0.01 saw one-hot softmaxes there (6% of the codebook used, 42% at 1)."""
    assert get_preset("soft")["quantizer"]["dead_code_threshold"] > 0
    assert get_preset("entropy")["quantizer"]["entropy_temperature"] >= 1.0
    rq = get_preset("v4-rq")["quantizer"]
    assert rq["dead_code_threshold"] > 0 and rq["kmeans_init"] is True


def test_presets_show_prints_the_resolved_config_with_its_rate(capsys):
    import yaml

    from prostate_vq.cli import main

    assert main(["presets", "--show", "v2-refit", "--set", "training.lr=3e-4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# v2-refit: 0.5 bits per pixel at 256x128 after ReFiT")
    cfg = yaml.safe_load(out)
    assert cfg["training"]["lr"] == 3e-4 and cfg["training"]["optimizer"] == "adam"  # engine defaults filled in
    assert cfg["quantizer"]["codebook_size"] == 512 and cfg["refit"]["codebook_size"] == 256
    assert main(["presets", "--show", "nope"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err


def test_monai_stock_preset_is_monais_vqvae_as_shipped():
    """The anchor must be MONAI's network and quantizer, not ours: same parameters, and with MONAI's weights
    loaded it gives MONAI's reconstruction and codes."""
    from monai.networks.nets import VQVAE as MonaiNet

    torch.manual_seed(0)
    ours = build_model(get_preset("monai-stock")).eval()
    stock = MonaiNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=(64, 128),
        num_res_layers=2,
        num_res_channels=(64, 128),
        downsample_parameters=((2, 4, 1, 1),) * 2,
        upsample_parameters=((2, 4, 1, 1, 0),) * 2,
        num_embeddings=512,
        embedding_dim=64,
    ).eval()
    state = {k.replace("quantizer.quantizer.", "quantizer.ema."): v for k, v in stock.state_dict().items()}
    ours.load_state_dict(state)  # strict: every tensor has its counterpart
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        recon, _ = stock(x)
        out = ours(x)
    assert torch.allclose(out.recon, recon, atol=1e-6)
    assert torch.equal(out.indices, stock.index_quantize(x))
    assert ours.bits_per_pixel((128, 128)) == pytest.approx(0.5625)
