"""Generative prior: causality of both networks, learning, seeded sampling, code layouts, encode/decode
round trips, and the train-prior / sample / encode commands on the tiny trained runs."""

from __future__ import annotations

import csv
import io
import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from prostate_vq.cli import main
from prostate_vq.errors import UserInputError
from prostate_vq.prior import CodeLayout, build_prior, read_codes, sample, train_prior

SMALL = {
    "pixelcnn": {"dim": 16, "layers": 4},
    "transformer": {"dim": 32, "layers": 2, "heads": 2, "dropout": 0.0},
}


def small_prior(arch: str, vocab_sizes, code_shape=(5, 6)):
    config = {"arch": arch, "vocab_sizes": list(vocab_sizes), **SMALL[arch]}
    if arch == "transformer":
        config["code_shape"] = list(code_shape)
    return build_prior(config)


# --- networks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["pixelcnn", "transformer"])
@pytest.mark.parametrize("vocab_sizes", [[7], [7, 5]])
def test_output_depends_only_on_earlier_positions(arch, vocab_sizes):
    """Gradient test: logits at raster position p get no gradient from codes at positions >= p, and (no
    blind spot) some gradient from every earlier position."""
    torch.manual_seed(0)
    h, w = 5, 6
    prior = small_prior(arch, vocab_sizes, (h, w)).eval()
    codes = torch.randint(0, 5, (2, h, w, len(vocab_sizes)))
    store = {}

    def keep(module, inputs, output):
        output.retain_grad()
        store["embedded"] = output

    hook = prior.embed.register_forward_hook(keep)
    try:
        for p in range(h * w):
            prior.zero_grad()
            logits = prior(codes)
            assert logits.shape == (2, sum(vocab_sizes), h, w)
            logits[:, :, p // w, p % w].sum().backward()
            grad = store["embedded"].grad.abs().sum(dim=(0, 3, 4)).flatten()  # per position
            assert torch.all(grad[p:] == 0), f"{arch}: position {p} sees {torch.nonzero(grad[p:]).flatten() + p}"
            assert torch.all(grad[:p] > 0), f"{arch}: position {p} is blind to {torch.nonzero(grad[:p] == 0).flatten()}"
    finally:
        hook.remove()


@pytest.mark.parametrize("arch,vocab_sizes", [("pixelcnn", [9]), ("pixelcnn", [9, 3]), ("transformer", [9, 3])])
def test_fast_sampler_matches_the_generic_raster_loop(arch, vocab_sizes):
    """The PixelCNN's row-cached sampler and the transformer's KV cache draw exactly what re-running the
    whole network at every position draws (same generator state)."""
    from prostate_vq.prior import CodePrior

    torch.manual_seed(0)
    prior = small_prior(arch, vocab_sizes, (14, 5)).eval()
    assert type(prior)._fill is not CodePrior._fill  # the subclass has its own stepper: compare the two
    for seed in range(2):
        fast = prior.sample(2, (14, 5), generator=torch.Generator().manual_seed(seed))
        generic = torch.zeros(2, 14, 5, len(vocab_sizes), dtype=torch.long)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            CodePrior._fill(prior, generic, lambda logits, g=generator: prior._draw(logits, 1.0, g))
        assert torch.equal(fast, generic[..., 0] if len(vocab_sizes) == 1 else generic)


def test_pixelcnn_receptive_rows_is_exact():
    torch.manual_seed(0)
    prior = build_prior({"arch": "pixelcnn", "vocab_sizes": [9], "dim": 8, "layers": 3, "first_kernel": 5}).eval()
    assert prior.receptive_rows == 1 + 2 + 1 + 1
    codes = torch.randint(0, 9, (2, 14, 5))
    with torch.no_grad():
        full = prior(codes)
        for i in range(14):  # cropping to the receptive rows changes nothing...
            top = max(0, i - prior.receptive_rows)
            torch.testing.assert_close(prior(codes[:, top : i + 1])[:, :, i - top], full[:, :, i])
        top, i = 2, 2 + prior.receptive_rows - 1  # ...one row fewer does
        assert not torch.allclose(prior(codes[:, top : i + 1])[:, :, i - top], full[:, :, i])


def _structured_codes(n: int, k: int = 8, shape=(6, 4), seed: int = 0) -> torch.Tensor:
    """Each map is a diagonal ramp from a random start code: one random code, the rest determined."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, k, (n, 1, 1), generator=g)
    rows = torch.arange(shape[0]).view(1, -1, 1)
    cols = torch.arange(shape[1]).view(1, 1, -1)
    return (start + rows + cols) % k


@pytest.mark.parametrize("arch", ["pixelcnn", "transformer"])
def test_nll_falls_and_samples_follow_the_learned_structure(arch):
    torch.manual_seed(0)
    codes = _structured_codes(64)
    prior = small_prior(arch, [8], (6, 4))
    prior.init_output_bias(codes)
    with torch.no_grad():
        start = float(prior.nll(codes))
    assert start == pytest.approx(3.0, abs=0.3)  # log2(8): the code histogram is uniform
    optimizer = torch.optim.Adam(prior.parameters(), lr=3e-3)
    for _ in range(80):
        loss = prior.nll(codes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    prior.eval()
    with torch.no_grad():
        end = float(prior.nll(codes))
    # Only the first code of a map is random: 3 bits over 24 codes = 0.125 bits/code is the floor.
    assert 0.1 < end < 0.3, (start, end)
    drawn = prior.sample(8, (6, 4), temperature=0.3, generator=torch.Generator().manual_seed(0))
    ramp = (drawn[:, :1, :1] + torch.arange(6).view(1, -1, 1) + torch.arange(4).view(1, 1, -1)) % 8
    assert (drawn == ramp).float().mean() > 0.9


@pytest.mark.parametrize("arch", ["pixelcnn", "transformer"])
def test_sampling_is_reproducible_and_in_range(arch):
    torch.manual_seed(0)
    prior = small_prior(arch, [7, 5], (5, 6))

    def draw(seed, t=1.0):
        return prior.sample(3, (5, 6), temperature=t, generator=torch.Generator().manual_seed(seed))

    a, b, c = draw(1), draw(1), draw(2)
    assert a.shape == (3, 5, 6, 2) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert int(a[..., 0].max()) < 7 and int(a[..., 1].max()) < 5 and int(a.min()) >= 0
    single = small_prior(arch, [7], (5, 6)).sample(2, (5, 6), generator=torch.Generator().manual_seed(0))
    assert single.shape == (2, 5, 6)
    with pytest.raises(UserInputError):
        draw(1, t=0.0)


# --- code layouts and encode/decode round trips -------------------------------------------------

TINY = ["model.channels=[8,16]", "model.res_channels=8", "model.embedding_dim=8", "model.res_layers=1"]


@pytest.mark.parametrize(
    "preset,kind,depth", [("v1-vq", "single", 1), ("fsq", "single", 1), ("v4-rq", "residual", 3), ("vqvae2", "hierarchy", 5)]
)
def test_layout_round_trip_and_decode(preset, kind, depth):
    from prostate_vq.models import apply_overrides, build_model, get_preset

    torch.manual_seed(0)
    model = build_model(apply_overrides(get_preset(preset), TINY), "joint").eval()
    x = torch.rand(3, 1, 32, 16)
    indices = model.encode(x)
    layout = CodeLayout.for_model(model, (32, 16))
    codes = layout.to_prior(indices)
    assert layout.kind == kind and codes.shape[-1] == depth == layout.depth
    assert list(codes.shape[1:3]) == layout.grid
    for level, k in enumerate(layout.vocab_sizes):
        assert int(codes[..., level].min()) >= 0 and int(codes[..., level].max()) < k
    assert torch.equal(layout.to_model(codes), indices)
    assert CodeLayout.from_dict(json.loads(json.dumps(layout.to_dict()))) == layout
    with torch.no_grad():
        direct = model(x)
        decoded = model.decode_indices(layout.to_model(codes))
    torch.testing.assert_close(decoded.recon, direct.recon, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(decoded.seg_logits, direct.seg_logits, atol=1e-5, rtol=1e-4)


def test_encode_writes_codes_that_decode_to_the_reconstruction(tiny_run, phantom_root, tmp_path):
    from prostate_vq.data import make_dataset
    from prostate_vq.runtime.checkpoints import load_model

    out = tmp_path / "codes.npz"
    assert (
        main(
            [
                "encode",
                "--checkpoint",
                str(tiny_run / "best.pt"),
                "--data",
                str(phantom_root),
                "--split",
                "validate",
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    codes, meta = read_codes(out)
    model, payload = load_model(tiny_run / "best.pt", "cpu")
    dataset = make_dataset(phantom_root, "validate", "image", spatial_size=payload["spatial_size"])
    assert codes.shape == (len(dataset), *model.code_shape(tuple(payload["spatial_size"])))
    with np.load(out) as data:
        assert list(data["files"]) == [r.image.name for r in dataset.records]
        assert set(data.files) >= {"codes", "files", "case", "week", "slice", "meta"}
    assert meta["split"] == "validate" and meta["layout"]["kind"] == "single"
    batch = dataset.batch(range(len(dataset)))
    with torch.no_grad():
        recon = model(model.prepare_input(batch)).recon
        decoded = model.decode_indices(torch.from_numpy(codes)).recon
    torch.testing.assert_close(decoded, recon, atol=1e-5, rtol=1e-4)


# --- train-prior and sample ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def joint_prior(tiny_joint_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("prior") / "prior"
    return train_prior(
        tiny_joint_run / "best.pt",
        out=out,
        arch="pixelcnn",
        epochs=4,
        batch_size=4,
        lr=3e-3,
        device="cpu",
        progress=False,
        arch_options=SMALL["pixelcnn"],
    )


def test_train_prior_writes_a_run_and_its_likelihood_falls(joint_prior, tiny_joint_run):
    from prostate_vq.runtime.checkpoints import load_checkpoint

    assert {p.name for p in joint_prior.iterdir()} >= {"best.pt", "last.pt", "history.csv", "metrics.json"}
    rows = list(csv.DictReader(io.StringIO((joint_prior / "history.csv").read_text(encoding="utf-8"))))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    train_bits = [float(r["train_nll_bits"]) for r in rows]
    assert train_bits[-1] < train_bits[0]
    metrics = json.loads((joint_prior / "metrics.json").read_text(encoding="utf-8"))
    for key in (
        "val_nll_bits_per_code",
        "test_nll_bits_per_code",
        "uniform_bits_per_code",
        "unigram_val_bits_per_code",
        "codes_per_slice",
        "best_epoch",
    ):
        assert key in metrics
    assert 0 < metrics["test_nll_bits_per_code"] < metrics["uniform_bits_per_code"]
    assert 0 < metrics["test_nll_bits_per_pixel"] < metrics["nominal_bits_per_pixel"]
    assert metrics["nominal_bits_per_pixel"] == pytest.approx(math.log2(32) / 16)  # K=32 at /4
    payload = load_checkpoint(joint_prior / "best.pt")
    assert payload["kind"] == "prior" and payload["vqvae"]["task"] == "joint"
    assert payload["vqvae_checkpoint"] == str((tiny_joint_run / "best.pt").resolve())


def test_sample_writes_slices_grid_and_checks_reproducibly(joint_prior, tmp_path):
    a = sample(joint_prior / "best.pt", n=3, out=tmp_path / "a", seed=7, device="cpu")
    info = json.loads((a / "samples.json").read_text(encoding="utf-8"))
    assert {
        "n",
        "arch",
        "temperature",
        "seed",
        "prior",
        "checkpoint",
        "summary",
        "samples",
        "reference",
        "similarity",
        "distribution_distance",
    } <= set(info)
    assert info["n"] == 3 and len(info["samples"]) == 3 and (a / "samples_grid.png").stat().st_size > 1000
    for record in info["samples"]:
        image = nib.load(a / record["file"]).get_fdata()
        seg = np.asarray(nib.load(a / record["seg_file"]).dataobj)
        assert image.shape == seg.shape == (64, 32)
        assert image.min() >= 0.0 and image.max() <= 1.0 and set(np.unique(seg)) <= set(range(6))
        assert -1.0 <= record["nearest_train_similarity"] <= 1.0 and 0.0 <= record["distribution_distance"] <= 1.0
        assert record["nearest_train_file"].startswith("case_")
    assert 0.0 <= info["reference"]["samples_closer_than_any_validation_slice"] <= 1.0
    b = sample(joint_prior / "best.pt", n=3, out=tmp_path / "b", seed=7, device="cpu")
    c = sample(joint_prior / "best.pt", n=3, out=tmp_path / "c", seed=8, device="cpu")
    codes = {name: np.load(folder / "codes.npz")["codes"] for name, folder in (("a", a), ("b", b), ("c", c))}
    assert np.array_equal(codes["a"], codes["b"]) and not np.array_equal(codes["a"], codes["c"])
    assert json.loads((b / "samples.json").read_text(encoding="utf-8"))["samples"] == info["samples"]


def test_resume_continues_the_prior_run(tiny_run, tmp_path):
    out = tmp_path / "prior"
    kwargs = dict(out=out, arch="transformer", batch_size=4, device="cpu", progress=False, arch_options=SMALL["transformer"])
    train_prior(tiny_run / "best.pt", epochs=2, **kwargs)
    with pytest.raises(UserInputError, match="--resume"):
        train_prior(tiny_run / "best.pt", epochs=2, **kwargs)
    train_prior(tiny_run / "best.pt", epochs=3, resume=True, **kwargs)
    rows = list(csv.DictReader(io.StringIO((out / "history.csv").read_text(encoding="utf-8"))))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8"))["arch"] == "transformer"


def test_time_budget_stops_after_the_first_step_with_a_best_checkpoint(tiny_run, tmp_path):
    out = train_prior(
        tiny_run / "best.pt",
        out=tmp_path / "prior",
        epochs=50,
        max_minutes=1e-6,
        batch_size=4,
        device="cpu",
        progress=False,
        arch_options=SMALL["pixelcnn"],
    )
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["stop_reason"] == "max_minutes" and metrics["epochs_run"] == 1
    assert (out / "best.pt").is_file()


def test_cli_train_prior_and_sample(tiny_run, tmp_path, capsys):
    prior = tmp_path / "prior"
    assert (
        main(
            [
                "train-prior",
                "--checkpoint",
                str(tiny_run / "best.pt"),
                "--out",
                str(prior),
                "--arch",
                "transformer",
                "--epochs",
                "1",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    samples = tmp_path / "samples"
    assert (
        main(
            [
                "sample",
                "--prior",
                str(prior / "best.pt"),
                "--n",
                "2",
                "--out",
                str(samples),
                "--temperature",
                "0.8",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    info = json.loads((samples / "samples.json").read_text(encoding="utf-8"))
    assert info["arch"] == "transformer" and info["temperature"] == 0.8 and info["task"] == "image"
    assert all("seg_file" not in record for record in info["samples"])  # image task: no segmentation
    assert len(list((samples / "slices").glob("case_sample_week_0_slice_*.nii.gz"))) == 2


def test_cli_bad_input_exits_2(tiny_run, joint_prior, tmp_path, capsys):
    # A VQ-VAE checkpoint is not a prior, and a prior is not a VQ-VAE.
    assert main(["sample", "--prior", str(tiny_run / "best.pt"), "--out", str(tmp_path / "s")]) == 2
    assert "not a prior checkpoint" in capsys.readouterr().err
    assert (
        main(["train-prior", "--checkpoint", str(joint_prior / "best.pt"), "--out", str(tmp_path / "p"), "--device", "cpu"]) == 2
    )
    assert "prior checkpoint" in capsys.readouterr().err
    assert main(["sample", "--prior", str(joint_prior / "best.pt"), "--out", str(tmp_path / "s"), "--temperature", "0"]) == 2
    assert main(["train-prior", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "p")]) == 2
    assert main(["encode", "--checkpoint", str(tiny_run / "best.pt"), "--out", str(tmp_path / "codes.txt")]) == 2


@pytest.mark.parametrize("preset,task", [("v4-rq", "image"), ("vqvae2", "mask")])
def test_multi_level_codes_train_sample_and_decode(preset, task, phantom_root, tiny_spatial, tmp_path):
    """RQ levels and VQ-VAE-2 top/bottom codes go through train-prior and sample (an untrained VQ-VAE
    checkpoint is enough: the prior only needs its codes); the mask task writes segmentations only."""
    from prostate_vq.models import apply_overrides, build_model, get_preset
    from prostate_vq.runtime.checkpoints import save_checkpoint

    torch.manual_seed(0)
    config = apply_overrides(get_preset(preset), TINY)
    model = build_model(config, task)
    checkpoint = save_checkpoint(
        tmp_path / "vq.pt",
        {
            "format_version": 1,
            "model_state": model.state_dict(),
            "config": config,
            "preset": preset,
            "task": task,
            "spatial_size": list(tiny_spatial),
            "data_root": str(phantom_root),
            "epoch": 0,
            "metrics": {},
        },
    )
    prior = train_prior(
        checkpoint, out=tmp_path / "prior", epochs=1, batch_size=8, device="cpu", progress=False, arch_options=SMALL["pixelcnn"]
    )
    metrics = json.loads((prior / "metrics.json").read_text(encoding="utf-8"))
    depth = 3 if preset == "v4-rq" else 5
    assert len(metrics["vocab_sizes"]) == depth and metrics["test_nll_bits_per_code"] > 0
    out = sample(prior / "best.pt", n=2, out=tmp_path / "samples", device="cpu")
    info = json.loads((out / "samples.json").read_text(encoding="utf-8"))
    codes = np.load(out / "codes.npz")["codes"]
    assert codes.shape == (2, *model.code_shape(tiny_spatial))
    if task == "mask":
        assert info["similarity"] == "label_agreement"
        assert all("file" not in r and r["seg_file"].startswith("slices/seg_sample") for r in info["samples"])
        assert all(0.0 <= r["nearest_train_similarity"] <= 1.0 for r in info["samples"])
    else:
        assert all("seg_file" not in r for r in info["samples"])
