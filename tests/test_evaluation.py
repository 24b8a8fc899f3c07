"""Evaluation: metric conventions against hand-computed values, then evaluate_checkpoint end to end."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from prostate_vq.evaluation.metrics import (
    LABEL_NAMES,
    codebook_metrics,
    dice_per_slice,
    reconstruction_per_slice,
    summarize_dice,
    summarize_reconstruction,
)


def _summary(recon, image):
    return summarize_reconstruction({k: v.numpy() for k, v in reconstruction_per_slice(recon, image).items()})


# --- metrics --------------------------------------------------------------------------------


def test_identical_images_give_ssim_one_and_infinite_psnr_as_null():
    image = torch.rand(3, 1, 24, 20, generator=torch.Generator().manual_seed(0))
    values = reconstruction_per_slice(image, image)
    assert torch.allclose(values["ssim"], torch.ones(3), atol=1e-5)
    assert torch.isinf(values["psnr"]).all()
    summary = _summary(image, image)
    assert summary.psnr_infinite == 3 and summary.ssim_pass_rate == 1.0 and summary.verdict == "pass"
    as_json = json.loads(json.dumps(summary.to_dict(), allow_nan=False))
    assert as_json["psnr_mean"] is None and as_json["mse_mean"] == 0.0


def test_psnr_mse_mae_match_hand_computed_values():
    image = torch.full((2, 1, 16, 16), 0.5)
    recon = image.clone()
    recon[0] += 0.1  # uniform error 0.1 -> MSE 0.01, PSNR 20 dB
    summary = _summary(recon, image)
    values = reconstruction_per_slice(recon, image)
    assert values["mse"][0].item() == pytest.approx(0.01, rel=1e-5)
    assert values["mae"][0].item() == pytest.approx(0.1, rel=1e-5)
    assert values["psnr"][0].item() == pytest.approx(20.0, rel=1e-4)
    # one perfect slice: the mean is over the finite slice only, the perfect one is counted
    assert summary.psnr_mean == pytest.approx(20.0, rel=1e-4) and summary.psnr_infinite == 1
    assert summary.mse_mean == pytest.approx(0.005, rel=1e-5)


def test_reconstruction_is_clamped_to_unit_range_before_scoring():
    image = torch.ones(1, 1, 16, 16)
    values = reconstruction_per_slice(image * 3.0, image)  # unbounded decoder output above 1
    assert values["mse"].item() == 0.0 and values["ssim"].item() == pytest.approx(1.0, abs=1e-5)


def test_reported_ssim_is_monai_ssim_metric_with_the_one_set_of_constants():
    """Evaluation, validation and the region SSIM read SSIM from runtime.slice_scores; it is MONAI's SSIMMetric."""
    from monai.metrics import SSIMMetric

    from prostate_vq.runtime import slice_scores as ss

    g = torch.Generator().manual_seed(1)
    image = torch.rand(4, 1, 40, 24, generator=g)
    recon = 0.8 * image + 0.3 * torch.rand(4, 1, 40, 24, generator=g)  # partly above 1: clamped before scoring
    monai = SSIMMetric(spatial_dims=2, data_range=1.0, kernel_type="gaussian", win_size=11, kernel_sigma=1.5, reduction="none")(
        recon.clamp(0, 1), image
    ).reshape(-1)
    assert (ss.SSIM_WINDOW, ss.SSIM_SIGMA, ss.SSIM_DATA_RANGE) == (11, 1.5, 1.0)
    assert torch.equal(ss.ssim_per_slice(recon, image), monai)
    assert torch.equal(reconstruction_per_slice(recon, image)["ssim"], monai)
    assert ss.ssim_map(recon, image).shape == (4, 1, 30, 14)


def test_ssim_pass_rate_and_verdict_follow_the_point_six_bar():
    summary = summarize_reconstruction(
        {"ssim": np.array([0.9, 0.7, 0.6, 0.1]), "psnr": np.array([30.0] * 4), "mse": np.zeros(4), "mae": np.zeros(4)}
    )
    assert summary.ssim_pass_rate == 0.5  # 0.6 itself does not pass (strictly greater)
    assert summary.ssim_mean == pytest.approx(0.575) and summary.verdict == "fail"


def test_ssim_rejects_slices_smaller_than_the_window():
    with pytest.raises(ValueError, match="11x11"):
        reconstruction_per_slice(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))


def test_dice_known_values_and_empty_class_handling():
    target = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    target[0, 0, :2] = 1  # 8 pixels body, 8 background
    pred = target.clone()
    pred[0, 0, 0, 0] = 5  # one body pixel predicted as prostate (absent from the reference)
    dice = dice_per_slice(pred, target)[0]
    assert dice[0].item() == pytest.approx(1.0)
    assert dice[1].item() == pytest.approx(2 * 7 / (7 + 8))
    assert torch.isnan(dice[2:5]).all()  # absent from both: not scored
    assert dice[5].item() == 0.0  # predicted but absent from the reference: a real miss
    summary = summarize_dice(np.stack([dice.numpy(), dice_per_slice(target, target)[0].numpy()]))
    assert summary.dice_per_class["body"] == pytest.approx((14 / 15 + 1) / 2)
    assert summary.dice_per_class["bones"] is None and summary.slices_scored["prostate"] == 1
    assert summary.dice_mean == pytest.approx(np.mean([(14 / 15 + 1) / 2, 0.0]))
    assert set(summary.to_dict()["dice_per_class"]) == set(LABEL_NAMES)


def test_codebook_usage_and_perplexity():
    stats = codebook_metrics(torch.tensor([5, 5, 5, 5, 0, 0, 0, 0]))
    assert (stats.codes_used, stats.codebook_size, stats.codebook_usage_pct) == (4, 8, 50.0)
    assert stats.perplexity == pytest.approx(4.0)  # uniform over 4 codes
    skewed = codebook_metrics(np.array([97, 1, 1, 1]))
    assert 1.0 < skewed.perplexity < 1.3
    assert math.isnan(codebook_metrics(torch.zeros(3)).perplexity)  # no codes seen: undefined (models.code_stats)


# --- evaluate_checkpoint on tiny trained runs -----------------------------------------------

from prostate_vq.cli import main  # noqa: E402
from prostate_vq.errors import DataError, UserInputError  # noqa: E402
from prostate_vq.evaluation import evaluate_checkpoint  # noqa: E402

REQUIRED_KEYS = {
    "ssim_mean",
    "ssim_std",
    "ssim_pass_rate",
    "psnr_mean",
    "mse_mean",
    "mae_mean",
    "codes_used",
    "codebook_size",
    "codebook_usage_pct",
    "perplexity",
    "n_slices",
    "split",
    "checkpoint",
    "preset",
    "task",
    "verdict",
}


def _strict_json(path):
    def reject(constant):
        raise AssertionError(f"non-standard JSON constant {constant} in {path}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=reject)


def _rows(path):
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def image_eval(tiny_run, phantom_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_image")
    return evaluate_checkpoint(tiny_run / "best.pt", data=phantom_root, split="test", out=out, device="cpu"), out


def test_evaluate_image_run_writes_metrics_csv_and_figures(image_eval):
    result, out = image_eval
    metrics = _strict_json(out / "metrics.json")
    assert set(metrics) >= REQUIRED_KEYS
    assert metrics["split"] == "test" and metrics["task"] == "image" and metrics["n_slices"] == 6
    assert 0.0 <= metrics["ssim_mean"] <= 1.0 and 0.0 <= metrics["ssim_pass_rate"] <= 1.0
    assert metrics["verdict"] == ("pass" if metrics["ssim_mean"] > 0.6 else "fail")
    assert metrics["codebook_size"] == 32 and 1 <= metrics["codes_used"] <= 32
    assert metrics["codebook_usage_pct"] == pytest.approx(100 * metrics["codes_used"] / 32)
    assert 1.0 <= metrics["perplexity"] <= metrics["codes_used"] + 1e-6
    assert len(metrics["code_counts"]) == 32 and sum(c > 0 for c in metrics["code_counts"]) == metrics["codes_used"]
    assert "dice_mean" not in metrics  # nothing segmented in the image task
    rows = _rows(out / "per_slice.csv")
    assert len(rows) == 6 and {"file", "case", "week", "slice", "ssim", "psnr"} <= set(rows[0])
    assert rows[0]["file"].startswith("case_004_week_0_slice_") and rows[0]["case"] == "004"
    assert np.mean([float(r["ssim"]) for r in rows]) == pytest.approx(metrics["ssim_mean"], abs=1e-5)
    for name in ("reconstructions", "best_slices", "worst_slices", "ssim_histogram", "codebook_usage"):
        png = out / metrics["figures"][name]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    table = result.summary_table()
    assert "SSIM" in table and "codes used" in table and result.verdict.upper() in table


def test_evaluation_matches_the_training_validation_metrics(tiny_run, phantom_root, tmp_path):
    """Same model, same validation slices: evaluation must reproduce the numbers training logged."""
    from prostate_vq.runtime.checkpoints import load_checkpoint

    logged = load_checkpoint(tiny_run / "best.pt")["metrics"]
    result = evaluate_checkpoint(
        tiny_run / "best.pt", data=phantom_root, split="validate", out=tmp_path, device="cpu", batch_size=1, figures=False
    )
    assert result.reconstruction.ssim_mean == pytest.approx(logged["val_ssim"], abs=1e-4)
    assert result.codebook.codebook_usage_pct == pytest.approx(logged["codebook_usage_pct"], abs=1e-6)
    assert not (tmp_path / "figures").exists()


def test_image_task_needs_no_masks(tiny_run, phantom_root, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(phantom_root, data)
    shutil.rmtree(data / "keras_slices_seg_test")
    result = evaluate_checkpoint(
        tiny_run / "best.pt", data=data, out=tmp_path / "eval", device="cpu", max_slices=3, figures=False
    )
    assert result.n_slices == 3 and result.segmentation is None
    assert _strict_json(tmp_path / "eval" / "metrics.json")["n_slices"] == 3


def test_joint_run_reports_dice_per_class_and_overlays(tiny_joint_run, phantom_root, tmp_path):
    from prostate_vq.data import LABEL_NAMES

    evaluate_checkpoint(tiny_joint_run / "best.pt", data=phantom_root, out=tmp_path, device="cpu")
    metrics = _strict_json(tmp_path / "metrics.json")
    assert metrics["task"] == "joint" and metrics["ssim_mean"] is not None
    assert list(metrics["dice_per_class"]) == list(LABEL_NAMES)
    scored = [v for k, v in metrics["dice_per_class"].items() if k != "background" and v is not None]
    assert metrics["dice_mean"] == pytest.approx(np.mean(scored))
    assert all(0.0 <= v <= 1.0 for v in scored)
    rows = _rows(tmp_path / "per_slice.csv")
    assert {f"dice_{name}" for name in LABEL_NAMES} <= set(rows[0])
    assert (tmp_path / metrics["figures"]["segmentation_overlays"]).is_file()


def test_mask_task_has_dice_and_no_ssim(phantom_root, tiny_model_overrides, tmp_path):
    from prostate_vq.training import RunRequest, TrainOptions, train

    run = train(
        TrainOptions(out=tmp_path / "run", data=phantom_root, device="cpu", progress=False),
        RunRequest(task="mask", epochs=1, spatial_size=(64, 32), batch_size=4, overrides=tiny_model_overrides),
    )
    result = evaluate_checkpoint(run / "best.pt", data=phantom_root, out=tmp_path / "eval", device="cpu")
    metrics = _strict_json(tmp_path / "eval" / "metrics.json")
    assert metrics["ssim_mean"] is None and metrics["verdict"] == "n/a" and metrics["dice_mean"] is not None
    assert "ssim" not in _rows(tmp_path / "eval" / "per_slice.csv")[0]
    assert {"best_slices", "worst_slices", "segmentation_overlays"} <= set(result.figures)


def test_batch_size_does_not_change_the_numbers(tiny_run, phantom_root, tmp_path):
    one = evaluate_checkpoint(
        tiny_run / "best.pt", data=phantom_root, out=tmp_path / "a", device="cpu", batch_size=1, figures=False
    ).to_dict()
    many = evaluate_checkpoint(
        tiny_run / "best.pt", data=phantom_root, out=tmp_path / "b", device="cpu", batch_size=5, figures=False
    ).to_dict()
    for key in ("ssim_mean", "psnr_mean", "mse_mean", "codes_used", "perplexity"):
        assert one[key] == pytest.approx(many[key], rel=1e-5), key


def test_bad_inputs_are_user_errors(tiny_run, phantom_root, tmp_path):
    with pytest.raises(UserInputError, match="checkpoint not found"):
        evaluate_checkpoint(tmp_path / "missing.pt", data=phantom_root, out=tmp_path)
    with pytest.raises(DataError):
        evaluate_checkpoint(tiny_run / "best.pt", data=tmp_path / "nowhere", out=tmp_path)
    with pytest.raises(UserInputError, match="batch-size"):
        evaluate_checkpoint(tiny_run / "best.pt", data=phantom_root, out=tmp_path, batch_size=0)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UserInputError, match="garbage.pt"):
        evaluate_checkpoint(garbage, data=phantom_root, out=tmp_path)


def test_cli_evaluate(tiny_run, phantom_root, tmp_path, capsys):
    code = main(
        [
            "evaluate",
            "--checkpoint",
            str(tiny_run / "best.pt"),
            "--data",
            str(phantom_root),
            "--out",
            str(tmp_path),
            "--device",
            "cpu",
            "--max-slices",
            "4",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0 and "SSIM" in captured.out and "metrics.json" in captured.out
    assert _strict_json(tmp_path / "metrics.json")["n_slices"] == 4
    assert main(["evaluate", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


# --- codec baselines at the model's rate ---------------------------------------------------------


def _textured(seed: int = 0, size=(64, 64)):
    import numpy as np

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[0], 0 : size[1]] / size[0]
    return (0.5 + 0.3 * np.sin(9 * x) * np.cos(7 * y) + 0.05 * rng.normal(size=size)).clip(0, 1).astype("float32")


@pytest.mark.parametrize("name", ["webp", "avif", "jpeg2000", "jpeg"])
def test_codec_search_takes_the_best_quality_that_fits(name):
    """The file (headers included) fits the budget, and the next setting up would not."""
    from prostate_vq.evaluation.codecs import code_at_budget, get_codec, to_pixels

    codec = get_codec(name)
    image = _textured()
    budget = 1.0 * image.size  # 1 bit per pixel
    decoded, bits = code_at_budget(codec, image, budget)
    assert decoded is not None and decoded.shape == image.shape and bits <= budget
    sizes = [8 * len(codec.encode(to_pixels(image), q)) for q in codec.qualities]
    chosen = max(i for i, s in enumerate(sizes) if s == bits)
    assert all(s > budget for s in sizes[chosen + 1 : chosen + 4])  # a better setting does not fit
    assert code_at_budget(codec, image, 64) == (None, None)  # 8 bytes: not even a header


def test_codec_baselines_section_pairs_ours_with_the_best_codec():
    import numpy as np

    from prostate_vq.evaluation.baselines import codec_baselines

    images = [_textured(s) for s in range(6)]
    rows = [{"file": f"f{i}", "slice": i, "case": "A" if i < 3 else "B", "week": 0} for i in range(6)]
    values = {"images": images, "ssim": np.full(6, 0.5), "psnr": np.full(6, 20.0)}
    coded, section = codec_baselines(["webp", "jpeg"], values, rows, 1.0)
    assert set(section["codecs"]) == {"webp", "jpeg"} and section["bits_per_pixel"] == 1.0
    for name, codec in section["codecs"].items():
        assert codec["fit_pct"] == 100.0 and codec["bpp_mean"] <= 1.0 and coded[name]["ssim"].shape == (6,)
    best = section["best"]
    assert section["codecs"][best]["ssim_mean"] == max(c["ssim_mean"] for c in section["codecs"].values())
    diff = section["ours_minus_best"]["ssim"]
    assert diff["mean"] == pytest.approx(0.5 - section["codecs"][best]["ssim_mean"], abs=1e-9)
    assert diff["unit"] == "patients" and diff["n_units"] == 2


def test_evaluate_with_codecs_writes_baselines_and_a_missing_codec_is_one_line(tiny_run, phantom_root, tmp_path, monkeypatch):
    import json

    from prostate_vq.errors import UserInputError
    from prostate_vq.evaluation import codecs

    result = evaluate_checkpoint(
        tiny_run / "best.pt", data=phantom_root, out=tmp_path / "eval", device="cpu", figures=False, codecs="webp,jpeg"
    )
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert set(m["baselines"]["codecs"]) == {"webp", "jpeg"}
    assert m["baselines"]["bits_per_pixel"] == pytest.approx(m["bits_per_pixel"])
    header = (tmp_path / "eval" / "per_slice.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header.endswith("webp_ssim,webp_psnr,webp_bpp,jpeg_ssim,jpeg_psnr,jpeg_bpp")
    assert "webp at this rate" in result.summary_table()
    from prostate_vq.reporting.markdown import write_report

    report = write_report([tiny_run, tmp_path / "eval"], tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| Coder | Bits per pixel (mean file) | Slices that fit (%) | SSIM | PSNR (dB) |" in report
    assert "| this model |" in report and "| webp |" in report and "Codecs at the model's" in report
    monkeypatch.setattr(codecs, "_available_pillow", lambda feature: False)
    with pytest.raises(UserInputError, match="--codecs avif: this Pillow has no AVIF support"):
        evaluate_checkpoint(tiny_run / "best.pt", data=phantom_root, out=tmp_path / "e2", codecs=["avif"])
    with pytest.raises(UserInputError, match="unknown codec 'gif'"):
        codecs.parse_codecs("gif")


def test_codec_bpp_gives_the_codecs_another_budget_and_the_report_says_so(tiny_run, phantom_root, tmp_path, capsys):
    import json

    from prostate_vq.cli import main
    from prostate_vq.reporting.markdown import write_report

    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(tiny_run / "best.pt"),
                "--data",
                str(phantom_root),
                "--out",
                str(out),
                "--device",
                "cpu",
                "--codecs",
                "jpeg2000",
                "--codec-bpp",
                "4",
            ]
        )
        == 0
    )
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert m["baselines"]["bits_per_pixel"] == 4.0 != m["bits_per_pixel"]
    assert m["baselines"]["codecs"]["jpeg2000"]["bpp_mean"] <= 4.0
    report = write_report([tiny_run, out], tmp_path / "report.md").read_text(encoding="utf-8")
    assert "Codecs at the --codec-bpp budget (not the model's nominal rate), 4 bits per pixel" in report
    for bad, why in (
        (["--codecs", "jpeg", "--codec-bpp", "0"], "--codec-bpp must be a positive"),
        (["--codecs", "jpeg", "--codec-bpp", "nan"], "--codec-bpp must be a positive"),
        (["--codec-bpp", "0.5"], "name them with --codecs"),
    ):
        capsys.readouterr()
        assert (
            main(
                [
                    "evaluate",
                    "--checkpoint",
                    str(tiny_run / "best.pt"),
                    "--data",
                    str(phantom_root),
                    "--out",
                    str(tmp_path / "e2"),
                    *bad,
                ]
            )
            == 2
        )
        assert why in capsys.readouterr().err


def test_metrics_json_reads_back_typed(image_eval):
    """EvaluationResult.from_json is to_dict's inverse: the report reads typed results, not 43 string keys."""
    from prostate_vq.evaluation.results import EvaluationResult

    data = json.loads((image_eval[1] / "metrics.json").read_text())
    result = EvaluationResult.from_json(data)
    assert result.codebook.perplexity == data["perplexity"] and result.split == data["split"]
    assert result.reconstruction.ssim_mean == data["ssim_mean"] and result.verdict == data["verdict"]
    assert json.loads(json.dumps(result.to_dict())) == data
    # the typed views the report reads: conventions, per patient, joint codes, levels
    assert result.ssim_region_mean == data["ssim_region_mean"] and result.ssim_region == data["ssim_region"]
    assert result.per_patient.n_patients == data["per_patient"]["n_patients"]
    assert result.per_patient.stats["ssim"].mean == data["per_patient"]["ssim"]["mean"]
    assert result.joint_or_pooled() == (data["joint_codes_used"], data["joint_usage_pct"], data["joint_perplexity"])
    assert [lv.perplexity for lv in result.level_health] == [lv["perplexity"] for lv in data["levels"]]
    assert result.run_steps == data["run_steps"] and result.codec_baselines is None
    # a null PSNR (all slices perfect) reads back as NaN, written back as null
    perfect = EvaluationResult.from_json({**data, "psnr_mean": None})
    assert math.isnan(perfect.reconstruction.psnr_mean) and perfect.to_dict()["psnr_mean"] is None
