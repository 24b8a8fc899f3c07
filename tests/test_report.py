"""The Markdown report: reference-style table, resolving links, torchinfo block, verdict, errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from prostate_vq.cli import main
from prostate_vq.errors import UserInputError
from prostate_vq.evaluation import evaluate_checkpoint
from prostate_vq.reporting.markdown import write_report

TABLE_HEADER = (
    "| Model | Parameters | Bits per pixel (nominal / effective) | Steps | SSIM | SSIM in region | PSNR | "
    "Dice (%, per slice) | Prostate Dice (%, MONAI) | Codes used (joint) | Code usage (%, joint) | "
    "Perplexity (joint) |"
)


@pytest.fixture(scope="module")
def evaluated(tiny_run, tiny_joint_run, phantom_root, tmp_path_factory):
    base = tmp_path_factory.mktemp("report_inputs")
    image_eval = base / "image_eval"
    joint_eval = base / "joint_eval"
    evaluate_checkpoint(tiny_run / "best.pt", data=phantom_root, out=image_eval, device="cpu")
    evaluate_checkpoint(tiny_joint_run / "best.pt", data=phantom_root, out=joint_eval, device="cpu")
    return {"image_run": tiny_run, "image_eval": image_eval, "joint_run": tiny_joint_run, "joint_eval": joint_eval}


def _table_rows(text: str) -> list[str]:
    return text.split(TABLE_HEADER, 1)[1].split("\n\n", 1)[0].strip().splitlines()[1:]


def _links(text: str) -> list[str]:
    return [m.strip("<>") for m in re.findall(r"\]\(([^)]+)\)", text) if not m.startswith("http")]


def _assert_links_resolve(report: Path) -> list[str]:
    links = _links(report.read_text(encoding="utf-8"))
    assert links, "the report links no figure"
    for link in links:
        assert (report.parent / link).is_file(), f"broken link {link}"
    return links


def test_report_has_table_details_verdict_and_resolving_links(evaluated, tmp_path):
    report = write_report(
        [evaluated[k] for k in ("image_run", "image_eval", "joint_run", "joint_eval")],
        tmp_path / "nested" / "report.md",
        title="Tiny report",
    )
    text = report.read_text(encoding="utf-8")
    assert text.startswith("# Tiny report")
    assert TABLE_HEADER in text
    table = _table_rows(text)
    assert len(table) == 2  # one row per model, run and evaluation paired through the checkpoint
    joint_row = next(row for row in table if "joint" in row)
    joint_metrics = json.loads((evaluated["joint_eval"] / "metrics.json").read_text(encoding="utf-8"))
    assert f"{100 * joint_metrics['dice_mean']:.2f}" in joint_row and "K=32" in joint_row and "epochs=2" in joint_row
    rate = f"| {joint_metrics['bits_per_pixel']:.4g} / {joint_metrics['effective_bits_per_pixel']:.3f} | 6 |"
    assert rate in joint_row  # the rate, nominal and effective, and the steps beside every score
    assert f"{100 * joint_metrics['dice_prostate_monai']:.2f}" in joint_row  # the headline convention
    for title in ("Dice (%, MONAI)", "Dice (%, case 3D)", "ignore_empty=True", "mean over patients [95% CI]", "SSIM in region"):
        assert title in text, title  # every Dice names its convention; per-patient statistics
    assert "<details><summary>Architecture (torchinfo)</summary>" in text and "Total params" in text
    assert "SSIM > 0.6" in text and ("**PASS**" in text or "**FAIL**" in text)
    for section in (
        "## Aim",
        "## Results",
        "## Dataset and split",
        "## Models",
        "## Training",
        "## Testing",
        "## Reproduce",
        "## References",
    ):
        assert section in text, section
    assert "prostate-vq train" in text and "--config" in text and "config.yaml" in text and "torch" in text
    links = _assert_links_resolve(report)
    assert any(link.endswith("training_curves.png") for link in links)
    assert any(link.endswith("segmentation_overlays.png") for link in links)
    assert any(link.endswith("per_slice.csv") for link in links)


def test_evaluation_folder_alone_finds_its_run(evaluated, tmp_path):
    report = write_report([evaluated["image_eval"]], tmp_path / "report.md")
    text = report.read_text(encoding="utf-8")
    assert "Total params" in text and "training_curves.png" in text  # the run was found via the checkpoint
    _assert_links_resolve(report)


def test_run_folder_alone_reports_validation_numbers(evaluated, tmp_path):
    text = write_report([evaluated["image_run"]], tmp_path / "r.md").read_text(encoding="utf-8")
    assert "(validation)" in text and TABLE_HEADER in text and "## Testing" not in text


def test_sweep_style_parent_folder_is_expanded_and_samples_included(evaluated, phantom_root, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(evaluated["image_run"], sweep / "a" / "run")
    evaluate_checkpoint(sweep / "a" / "run" / "best.pt", data=phantom_root, out=sweep / "a" / "eval", device="cpu", max_slices=2)
    samples = tmp_path / "samples"
    samples.mkdir()
    (samples / "samples.json").write_text(json.dumps({"n": 4, "temperature": 1.0, "seed": 0}))
    shutil.copy(evaluated["image_eval"] / "figures" / "ssim_histogram.png", samples / "samples_grid.png")
    prior = tmp_path / "prior"
    prior.mkdir()
    (prior / "best.pt").write_bytes(b"prior weights are never unpickled by the report")
    (prior / "metrics.json").write_text(
        json.dumps(
            {
                "kind": "prior",
                "arch": "pixelcnn",
                "parameters": 1000,
                "val_nll_bits_per_code": 3.5,
                "test_nll_bits_per_code": 3.25,
                "unigram_val_bits_per_code": 4.0,
                "uniform_bits_per_code": 5.0,
            }
        )
    )
    report = write_report([sweep, samples, prior], tmp_path / "out" / "report.md")
    text = report.read_text(encoding="utf-8")
    assert "## Generative prior" in text and "samples_grid.png" in text
    assert "| prior | pixelcnn | 1,000 | 3.500 | 3.250 | 4.000 | 5.000 |" in text
    rows = _table_rows(text)  # one model: sweep/a/run and sweep/a/eval paired into one row
    assert len(rows) == 1 and rows[0].startswith("| default |")
    _assert_links_resolve(report)


def test_bad_inputs_name_the_folder(evaluated, tmp_path):
    with pytest.raises(UserInputError, match="nowhere.*folder not found"):
        write_report([tmp_path / "nowhere"], tmp_path / "r.md")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserInputError, match="empty.*not a run, evaluation, prior or samples folder"):
        write_report([empty], tmp_path / "r.md")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.json").write_text("{not json")
    with pytest.raises(UserInputError, match="broken/metrics.json"):
        write_report([broken], tmp_path / "r.md")
    (broken / "metrics.json").write_text(json.dumps({"split": "test"}))
    with pytest.raises(UserInputError, match="missing n_slices"):
        write_report([broken], tmp_path / "r.md")


def test_cli_report(evaluated, tmp_path, capsys):
    out = tmp_path / "cli" / "report.md"
    assert (
        main(["report", str(evaluated["image_run"]), str(evaluated["image_eval"]), "--out", str(out), "--title", "CLI report"])
        == 0
    )
    assert "report written to" in capsys.readouterr().out
    assert out.read_text(encoding="utf-8").startswith("# CLI report")
    assert main(["report", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "folder not found" in capsys.readouterr().err


def test_reproduce_command_rebuilds_the_run_config(evaluated, tmp_path):
    """The train command printed in the report, parsed by the real CLI, gives back the run's exact config."""
    import shlex

    from prostate_vq.cli import _run_request, build_parser
    from prostate_vq.runtime.checkpoints import load_checkpoint
    from prostate_vq.training.config import resolve

    text = write_report([evaluated["joint_run"]], tmp_path / "r.md").read_text(encoding="utf-8")
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    command = block.split("prostate-vq train", 1)[1].split("\nprostate-vq ", 1)[0].replace("\\\n", " ")
    argv = ["train", *shlex.split(command)]
    assert "--config" in argv  # the run's own config.yaml carries its preset, overrides, task and seed
    request = _run_request(build_parser().parse_args(argv))
    payload = load_checkpoint(evaluated["joint_run"] / "best.pt")
    config = resolve(request)
    assert config.sections() == payload["config"]
    assert (config.task, config.seed, config.preset) == (payload["task"], payload["seed"], payload["preset"])


@pytest.mark.parametrize(
    "preset, task, present, absent",
    [
        ("default", "image", ["mean squared error", "+ 0.3 x (1 - SSIM)", "beta 0.25", "augmented"], ["cross-entropy"]),
        ("v1-vq", "image", ["+ 0.1 x (1 - SSIM)", "beta 0.25"], ["augmented"]),
        ("hifi", "image", ["mean squared error"], ["SSIM", "augmented"]),
        ("default", "joint", ["+ 0.3 x (1 - SSIM)", "1 x cross-entropy on the segmentation head", "soft Dice"], []),
        ("fsq", "mask", ["cross-entropy on the label map", "implicit, fixed codebook"], ["squared error", "beta"]),
    ],
)
def test_loss_text_comes_from_the_resolved_config(preset, task, present, absent):
    from prostate_vq.models.presets import get_preset
    from prostate_vq.reporting.prose import loss_text

    text = loss_text(task, get_preset(preset))
    assert all(p in text for p in present) and not any(a in text for a in absent), text


def test_report_states_the_loss_the_run_trained_with(tiny_run, tmp_path):
    """tiny_run is the default preset: MSE + 0.3 x (1 - SSIM) (training.ssim_weight 0.3), augmented batches."""
    text = write_report([tiny_run], tmp_path / "r.md").read_text(encoding="utf-8")
    loss = next(line for line in text.splitlines() if line.startswith("**Loss.**"))
    assert "0.3 x (1 - SSIM)" in loss and "augmented" in loss
