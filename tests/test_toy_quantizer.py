"""A quantizer is one class: the toy kind below (a frozen random codebook, nearest code, straight-through) is
registered by the decorator alone and goes through `presets --show`, `train`, `evaluate` and `report` with no
other edit. Registration refuses a kind that forgot its loss text or reference."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from prostate_vq.cli import main
from prostate_vq.models.quantizers import QUANTIZERS, Quantizer, QuantizerOutput, register_quantizer, unregister_quantizer
from prostate_vq.models.quantizers.base import nearest_code, to_map, to_vectors

# the shared codebook_size is carried into the new kind, so it is set (within the toy's range) first
TINY = [
    "model.channels=[8,16]",
    "model.res_channels=8",
    "model.embedding_dim=8",
    "quantizer.codebook_size=16",
    "quantizer.kind=toy",
]


def _define_toy():
    @register_quantizer("toy")
    class ToyQuantizer(Quantizer):
        """Nearest of `codebook_size` fixed random codes; only the commitment loss trains (the encoder)."""

        summary = "a frozen random codebook (test only)"
        loss_text = "beta times the commitment loss to a fixed random codebook"
        references = ("toy",)
        citations = {"toy": "A. Tester. *A toy quantizer.* The test suite, 2025."}  # noqa: RUF012
        option_limits = {"codebook_size": {"maximum": 256}}  # noqa: RUF012
        loss_weights = ("beta",)
        small_options = {"codebook_size": 8}  # noqa: RUF012

        def __init__(self, dim: int, codebook_size: int = 16, beta: float = 0.25):
            super().__init__()
            self.codebook_size, self.beta = codebook_size, beta
            self.register_buffer("codes", torch.randn(codebook_size, dim, generator=torch.Generator().manual_seed(0)))

        def forward(self, z):
            x = to_vectors(z)
            indices = nearest_code(x, self.codes)
            q = F.embedding(indices, self.codes)
            losses = {"commitment": self.beta * F.mse_loss(x, q)} if self.training else {}
            q = x + (q - x).detach()
            return QuantizerOutput(to_map(q, z), indices.reshape(z.shape[0], *z.shape[2:]), losses, z.detach())

        def lookup(self, indices):
            return F.embedding(indices, self.codes).permute(0, 3, 1, 2)

    return ToyQuantizer


@pytest.fixture
def toy():
    """Registered for one test, then removed, so no other test sees the kind."""
    cls = _define_toy()
    try:
        yield cls
    finally:
        unregister_quantizer("toy")
    assert "toy" not in QUANTIZERS


def test_a_toy_quantizer_runs_through_presets_train_evaluate_and_report(toy, phantom_root, tmp_path, capsys):
    assert main(["presets", "--show", "v1-vq", "--set", *TINY]) == 0
    shown = capsys.readouterr().out
    assert "kind: toy" in shown and "codebook_size: 16" in shown and "beta: 0.25" in shown
    assert main(["presets", "--show", "v1-vq", "--set", *TINY, "quantizer.codebook_size=1000"]) == 2
    assert "codebook_size must be at most 256" in capsys.readouterr().err

    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(phantom_root),
                "--out",
                str(run),
                "--preset",
                "v1-vq",
                "--set",
                *TINY,
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
            ]
        )
        == 0
    )
    assert (run / "best.pt").is_file()
    evaluation = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(run / "best.pt"),
                "--data",
                str(phantom_root),
                "--out",
                str(evaluation),
                "--device",
                "cpu",
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert 0 < metrics["codebook_usage_pct"] <= 100
    report = tmp_path / "report.md"
    assert main(["report", str(run), str(evaluation), "--out", str(report)]) == 0
    text = report.read_text(encoding="utf-8")
    assert "beta times the commitment loss to a fixed random codebook [" in text
    assert "A. Tester. *A toy quantizer.*" in text


def test_registration_requires_a_loss_text_and_a_reference():
    class Nameless(Quantizer):
        summary = "no loss text"

    with pytest.raises(TypeError, match="loss_text, references"):
        register_quantizer("nameless")(Nameless)

    class Uncited(Quantizer):
        summary, loss_text = "no reference", "some loss"

    with pytest.raises(TypeError, match="references"):
        register_quantizer("uncited")(Uncited)
    assert "nameless" not in QUANTIZERS and "uncited" not in QUANTIZERS


def test_a_kind_is_registered_once(toy):
    class Other(toy):
        pass

    with pytest.raises(TypeError, match="already registered"):
        register_quantizer("toy")(Other)
