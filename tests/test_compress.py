"""Entropy coding under the prior (`encode --compress`, `decode`): exact round trips for every prior network
and code layout, a rate close to the prior's NLL, fewer bits than the nominal rate for a trained prior, and
one-line refusals of a wrong prior or a coded file read as plain codes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("constriction")

from prostate_vq.cli import main
from prostate_vq.prior import build_prior, read_codes, train_prior
from prostate_vq.prior.compress import compress_codes, decompress_codes

SMALL = {"pixelcnn": {"dim": 16, "layers": 3}, "transformer": {"dim": 32, "layers": 2, "heads": 2, "dropout": 0.0}}


def small_prior(arch, vocab_sizes, grid):
    config = {"arch": arch, "vocab_sizes": list(vocab_sizes), **SMALL[arch]}
    if arch == "transformer":
        config["code_shape"] = list(grid)
    torch.manual_seed(0)
    return build_prior(config).eval()


@pytest.mark.parametrize(
    "arch,vocab_sizes", [("pixelcnn", [13]), ("pixelcnn", [8, 8, 8]), ("transformer", [13]), ("transformer", [6, 4])]
)
def test_round_trip_is_exact_and_costs_about_the_nll(arch, vocab_sizes):
    grid = (6, 5)
    prior = small_prior(arch, vocab_sizes, grid)
    codes = prior.sample(19, grid, generator=torch.Generator().manual_seed(1))  # 19: two chunks, one partial
    codes = codes.unsqueeze(-1) if codes.dim() == 3 else codes
    streams = compress_codes(prior, codes)
    assert len(streams) == 19 and all(s.dtype == np.uint32 for s in streams)
    assert torch.equal(decompress_codes(prior, streams, grid), codes)
    # A range coder spends the information content plus a few bits of termination per stream (32-bit words).
    with torch.no_grad():
        nll_bits = float(prior.nll(codes, reduction="none").sum()) * codes[0].numel()
        coded_bits = 32 * sum(len(s) for s in streams)
        assert nll_bits <= coded_bits <= nll_bits + 19 * 64 + 0.01 * nll_bits


def test_a_stream_under_another_prior_does_not_decode_to_the_codes():
    grid = (6, 5)
    prior = small_prior("pixelcnn", [13], grid)
    codes = prior.sample(3, grid, generator=torch.Generator().manual_seed(1)).unsqueeze(-1)
    other = small_prior("pixelcnn", [13], grid)
    with torch.no_grad():
        other.head[-1].bias.add_(torch.linspace(-2, 2, 13))
    assert not torch.equal(decompress_codes(other, compress_codes(prior, codes), grid), codes)


@pytest.fixture(scope="module")
def image_prior(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("compress") / "prior"
    return train_prior(
        tiny_run / "best.pt",
        out=out,
        arch="pixelcnn",
        epochs=3,
        batch_size=4,
        lr=3e-3,
        device="cpu",
        progress=False,
        arch_options=SMALL["pixelcnn"],
    )


def test_cli_compress_decode_restores_the_plain_codes_in_fewer_bits(tiny_run, image_prior, tmp_path, capsys):
    checkpoint = str(tiny_run / "best.pt")
    assert (
        main(["encode", "--checkpoint", checkpoint, "--split", "test", "--out", str(tmp_path / "plain.npz"), "--device", "cpu"])
        == 0
    )
    assert (
        main(
            [
                "encode",
                "--checkpoint",
                checkpoint,
                "--split",
                "test",
                "--out",
                str(tmp_path / "coded.npz"),
                "--compress",
                str(image_prior / "best.pt"),
            ]
        )
        == 0
    )
    rates = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # The phantom's codes are far from uniform: the prior's stream is well below log2 K per code.
    assert rates["coded_bits_per_pixel"] < 0.8 * rates["nominal_bits_per_pixel"]
    assert rates["nll_bits_per_pixel"] <= rates["coded_bits_per_pixel"] <= rates["file_bits_per_pixel"]
    assert math.isclose(rates["nominal_bits_per_pixel"], math.log2(32) / 16)  # K=32 at /4
    with pytest.raises(Exception, match="entropy-coded"):
        read_codes(tmp_path / "coded.npz")
    assert (
        main(
            [
                "decode",
                "--codes",
                str(tmp_path / "coded.npz"),
                "--prior",
                str(image_prior / "best.pt"),
                "--out",
                str(tmp_path / "decoded.npz"),
            ]
        )
        == 0
    )
    plain, plain_meta = read_codes(tmp_path / "plain.npz")
    decoded, decoded_meta = read_codes(tmp_path / "decoded.npz")
    assert np.array_equal(plain, decoded)
    assert decoded_meta["layout"] == plain_meta["layout"]
    with np.load(tmp_path / "plain.npz") as a, np.load(tmp_path / "decoded.npz") as b:
        assert list(a["files"]) == list(b["files"]) and list(a["slice"]) == list(b["slice"])


def test_cli_refuses_a_prior_of_other_weights_in_one_line(tiny_run, image_prior, tmp_path, capsys):
    from prostate_vq.runtime.checkpoints import load_checkpoint, save_checkpoint

    assert (
        main(
            [
                "encode",
                "--checkpoint",
                str(tiny_run / "best.pt"),
                "--split",
                "test",
                "--out",
                str(tmp_path / "coded.npz"),
                "--compress",
                str(image_prior / "best.pt"),
            ]
        )
        == 0
    )
    payload = load_checkpoint(image_prior / "best.pt", kind="prior")
    payload["model_state"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in payload["model_state"].items()}
    save_checkpoint(tmp_path / "other.pt", payload)
    capsys.readouterr()
    assert (
        main(
            [
                "decode",
                "--codes",
                str(tmp_path / "coded.npz"),
                "--prior",
                str(tmp_path / "other.pt"),
                "--out",
                str(tmp_path / "decoded.npz"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "another prior" in err and "other.pt" in err
    assert not (tmp_path / "decoded.npz").exists()
