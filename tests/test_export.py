"""prostate-vq export: every format reproduces the checkpoint's model (indices exactly, images within 1e-5),
for every quantizer kind the presets use; what cannot be exported is one line saying why."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

import prostate_vq
from prostate_vq.cli import main
from prostate_vq.errors import UserInputError
from prostate_vq.export import export_checkpoint, from_pretrained
from prostate_vq.export.graphs import IMAGE_ATOL, DecodeFromIndices, example_input, mismatch, onnx_unsupported
from prostate_vq.export.onnx_graphs import MISSING
from prostate_vq.models import apply_overrides, build_model, get_preset
from prostate_vq.runtime.checkpoints import FORMAT_VERSION, load_model, save_checkpoint

SMALL = ["model.channels=[8,16]", "model.res_channels=8", "model.embedding_dim=16"]
# One preset per quantizer kind (and the two other architectures), shrunk to a few thousand weights.
KINDS = {
    "vq": ("v1-vq", ["quantizer.codebook_size=32"]),
    "ema": ("v3-ema", ["quantizer.codebook_size=32"]),
    "rq": ("v4-rq", []),
    "fsq": ("fsq", []),
    "lfq": ("lfq", ["quantizer.codebook_size=32"]),
    "soft": ("soft", ["quantizer.codebook_size=32"]),
    "monai-ema": ("monai-stock", ["quantizer.codebook_size=32"]),
    "vqvae2": ("vqvae2", ["quantizer.codebook_size=32", "model.top_codebook_size=16"]),
}


def _checkpoint(tmp_path, preset: str, overrides: list[str], task: str = "image", size=(64, 32)):
    """An untrained checkpoint with the payload keys a run's best.pt has (export reads nothing else)."""
    torch.manual_seed(0)
    cfg = apply_overrides(get_preset(preset), SMALL + overrides)
    model = build_model(cfg, task)
    payload = {
        "format_version": FORMAT_VERSION,
        "config": cfg,
        "preset": preset,
        "task": task,
        "spatial_size": list(size),
        "intensity": {"lower": 0.5, "upper": 99.5},
        "seed": 0,
        "data_root": "phantom",
        "epoch": 1,
        "metrics": {"step": 3},
        "model_state": model.state_dict(),
    }
    return save_checkpoint(tmp_path / f"{preset}.pt", payload)


def _ort(path, name, value):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(v) for v in session.run(None, {name: value.numpy()})]


def _assert_round_trip(folder, checkpoint, task="image", size=(64, 32)):
    """Every file in `folder` against the checkpoint's eager model, at the slice size and at twice it."""
    reference, _ = load_model(checkpoint)
    loaded = from_pretrained(folder)
    files = set(json.loads((folder / "config.json").read_text(encoding="utf-8"))["files"])
    for x in (example_input(task, size, 3, seed=5), example_input(task, (2 * size[0], 2 * size[1]), 1, seed=6)):
        with torch.no_grad():
            codes = reference.encode(x)
            images = DecodeFromIndices(reference)(codes)
            assert torch.equal(loaded.encode(x), codes)
            assert mismatch(images, DecodeFromIndices(loaded)(codes)) is None
            if "encode.ts" in files:
                assert torch.equal(torch.jit.load(str(folder / "encode.ts"))(x), codes)
            if "decode.ts" in files:
                assert mismatch(images, torch.jit.load(str(folder / "decode.ts"))(codes)) is None
        if "encode.onnx" in files:
            assert torch.equal(_ort(folder / "encode.onnx", "image", x)[0], codes)
        if "decode.onnx" in files:
            assert mismatch(images, tuple(_ort(folder / "decode.onnx", "indices", codes))) is None
    return files


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_round_trips_through_every_format(kind, tmp_path):
    """Every format present here: without the onnx extra the ONNX part is the one-line note instead."""
    from prostate_vq.export import onnx_graphs

    preset, overrides = KINDS[kind]
    checkpoint = _checkpoint(tmp_path, preset, overrides)
    folder, notes = export_checkpoint(checkpoint, tmp_path / "export")
    files = _assert_round_trip(folder, checkpoint)
    assert {"encode.ts", "decode.ts"} <= files
    if not onnx_graphs.available():
        assert notes == [MISSING] and not files & {"encode.onnx", "decode.onnx"}
    elif onnx_unsupported(kind):
        assert notes == [onnx_unsupported(kind)] and not files & {"encode.onnx", "decode.onnx"}
    else:
        assert notes == [] and {"encode.onnx", "decode.onnx"} <= files


def test_lfq_says_in_one_line_why_it_has_no_onnx(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    checkpoint = _checkpoint(tmp_path, "lfq", ["quantizer.codebook_size=32"])
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"prostate-vq export: note: {onnx_unsupported('lfq')}"]
    assert "bitwise AND" in err[0] and "TorchScript" in err[0]


def test_without_onnx_the_export_names_the_extra(tmp_path, monkeypatch):
    from prostate_vq.export import onnx_graphs

    monkeypatch.setattr(onnx_graphs, "available", lambda: False)
    checkpoint = _checkpoint(tmp_path, "v1-vq", ["quantizer.codebook_size=32"])
    folder, notes = export_checkpoint(checkpoint, tmp_path / "export")
    assert notes == [MISSING] and "prostate-vq[onnx]" in MISSING
    assert not list(folder.glob("*.onnx"))


@pytest.mark.parametrize("task", ["mask", "joint"])
def test_mask_and_joint_tasks_round_trip(task, tmp_path):
    checkpoint = _checkpoint(tmp_path, "v1-vq", ["quantizer.codebook_size=32"], task=task)
    folder, _ = export_checkpoint(checkpoint, tmp_path / "export")
    _assert_round_trip(folder, checkpoint, task=task)


def test_trained_run_export_card_and_config(tiny_run, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export", "--checkpoint", str(tiny_run / "best.pt"), "--out", str(out)]) == 0
    assert "written to" in capsys.readouterr().out
    _assert_round_trip(out, tiny_run / "best.pt")
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["format"] == "prostate-vq-pretrained" and config["task"] == "image"
    assert config["spatial_size"] == [64, 32] and config["bits_per_pixel"] > 0 and config["intensity"]
    assert config["config"]["quantizer"]["kind"] == "vq" and len(config["source_checkpoint"]["sha256"]) == 64
    card = (out / "README.md").read_text(encoding="utf-8")
    for heading in (
        "## Data and splits",
        "## Input and rate",
        "## Training budget",
        "## Metrics",
        "## Intended use and limits",
        "## Licences and citations",
    ):
        assert heading in card
    assert "van den Oord" in card and "not for diagnosis" in card
    assert "run total: - steps" not in card  # read from the run's last.pt
    assert prostate_vq.from_pretrained(out).pretrained_config["task"] == "image"


def test_card_shows_metrics_with_intervals(tiny_run, tmp_path):
    metrics = {
        "split": "test",
        "n_slices": 6,
        "ssim_mean": 0.5,
        "psnr_mean": 20.0,
        "codebook_usage_pct": 40.0,
        "per_patient": {"n_patients": 2, "ssim": {"mean": 0.5, "ci95": [0.4, 0.6]}},
    }
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics), encoding="utf-8")
    folder, _ = export_checkpoint(tiny_run / "best.pt", tmp_path / "export", metrics=path)
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert "| SSIM (mean over slices) | 0.5000 | [0.4000, 0.6000] |" in card


def test_monai_bundle_layout_loads_and_verifies(tiny_run, tmp_path):
    from monai.bundle import verify_net_in_out
    from monai.data import load_net_with_metadata

    out = tmp_path / "bundle"
    export_checkpoint(tiny_run / "best.pt", out, fmt="monai-bundle")
    for name in (
        "configs/metadata.json",
        "configs/inference.json",
        "models/model.ts",
        "models/model.pt",
        "docs/README.md",
        "models/model.safetensors",
        "models/config.json",
    ):
        assert (out / name).is_file(), name
    net, meta, extra = load_net_with_metadata(str(out / "models" / "model.ts"), more_extra_files=("inference.json",))
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 1 and "inference.json" in extra
    reference, _ = load_model(tiny_run / "best.pt")
    x = example_input("image", (64, 32), 2, seed=3)
    with torch.no_grad():
        expected = reference.decode_indices(reference.encode(x)).recon
    assert torch.allclose(net(x), expected, atol=IMAGE_ATOL, rtol=0)
    state = torch.load(out / "models" / "model.pt", weights_only=True)
    assert set(state) == set(reference.state_dict())
    assert torch.equal(from_pretrained(out / "models").encode(x), reference.encode(x))
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(out / "configs/metadata.json"),
        config_file=str(out / "configs/inference.json"),
        device="cpu",
        bundle_root=str(out),
        n=2,
    )
    if importlib.util.find_spec("jsonschema"):  # the bundle extra
        from importlib import resources

        from monai.bundle import verify_metadata

        schema = resources.files("prostate_vq.export").joinpath("bundle_schema.json")
        verify_metadata(meta_file=str(out / "configs/metadata.json"), filepath=str(schema))


def test_mask_task_bundle_declares_six_label_channels(tmp_path):
    checkpoint = _checkpoint(tmp_path, "v1-vq", ["quantizer.codebook_size=32"], task="mask")
    out = tmp_path / "bundle"
    export_checkpoint(checkpoint, out, fmt="monai-bundle")  # verify_net_in_out ran on it before the rename
    meta = json.loads((out / "configs" / "metadata.json").read_text(encoding="utf-8"))
    formats = meta["network_data_format"]
    assert formats["inputs"]["image"]["num_channels"] == 6 and formats["outputs"]["pred"]["format"] == "labels"


def test_existing_folder_is_refused_in_one_line(tiny_run, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    assert main(["export", "--checkpoint", str(tiny_run / "best.pt"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "not an empty folder" in err[0]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left beside it


def test_missing_inputs_are_one_line(tiny_run, tmp_path, capsys):
    assert main(["export", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "a")]) == 2
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(tiny_run / "best.pt"),
                "--out",
                str(tmp_path / "b"),
                "--metrics",
                str(tmp_path / "nope.json"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "none.pt" in err[0] and "nope.json" in err[1]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_from_pretrained_refuses_a_foreign_or_broken_folder(tiny_run, tmp_path):
    with pytest.raises(UserInputError, match="not a folder written by prostate-vq export"):
        from_pretrained(tmp_path)
    folder, _ = export_checkpoint(tiny_run / "best.pt", tmp_path / "export")
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserInputError, match="not a readable safetensors file"):
        from_pretrained(folder)


@pytest.mark.parametrize("cosine", [False, True])
def test_rq_lookup_matches_the_library(cosine):
    from prostate_vq.models.quantizers import ResidualQuantizer

    torch.manual_seed(0)
    rq = ResidualQuantizer(dim=8, codebook_size=16, depth=3, l2_normalize=cosine).eval()
    indices = torch.randint(0, 16, (2, 3, 4, 5))
    b, d, h, w = indices.shape
    library = rq.rvq.get_output_from_indices(indices.permute(0, 2, 3, 1).reshape(b, h * w, d))
    assert torch.allclose(rq.lookup(indices), library.reshape(b, h, w, -1).permute(0, 3, 1, 2), atol=1e-6)


def test_the_kinds_cover_every_preset():
    """Each (quantizer kind, architecture) the presets use has a round-trip case above."""
    from prostate_vq.models.presets import list_presets

    used = {
        (get_preset(name)["quantizer"]["kind"], get_preset(name)["model"].get("architecture", "vqvae"))
        for name, _ in list_presets()
    }
    tested = {
        (get_preset(p)["quantizer"]["kind"], get_preset(p)["model"].get("architecture", "vqvae")) for p, _ in KINDS.values()
    }
    assert used <= tested


def test_the_model_card_cites_the_quantizers_own_papers():
    """The card's method references come from the quantizer class (its `references`), not a per-kind list in
    export: FSQ cites the FSQ paper, the MONAI EMA kind both EMA and MONAI, an unknown kind the VQ-VAE paper."""
    from prostate_vq.export.card import method_references

    assert any("Finite Scalar Quantization" in r for r in method_references("fsq"))
    monai = method_references("monai-ema")
    assert len(monai) == 2 and any("MONAI" in r for r in monai)
    assert method_references("no-such-kind") == method_references("vq") and len(method_references("vq")) == 1
