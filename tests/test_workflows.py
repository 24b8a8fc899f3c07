"""sweep and demo end to end at tiny size (64x32 phantom slices, tiny models, 1 epoch)."""

from __future__ import annotations

import json
import re

import pytest

from prostate_vq.cli import main
from prostate_vq.errors import UserInputError
from prostate_vq.workflows import demo, sweep

TINY = dict(spatial_size=(64, 32), epochs=1, device="cpu", progress=False)


def _assert_links_resolve(report):
    links = [m.strip("<>") for m in re.findall(r"\]\(([^)]+)\)", report.read_text(encoding="utf-8")) if not m.startswith("http")]
    assert links and all((report.parent / link).is_file() for link in links), links


@pytest.mark.slow  # ~8 s: a two-preset sweep end to end
@pytest.mark.filterwarnings("ignore:codebook collapse")  # one tiny epoch of v1-vq collapses, as expected
def test_sweep_two_presets_trains_evaluates_and_compares(phantom_root, tiny_model_overrides, tmp_path, capsys):
    report = sweep(phantom_root, ["default", "v1-vq"], tmp_path / "sweep", overrides=tiny_model_overrides, **TINY)
    assert report == tmp_path / "sweep" / "report.md"
    for preset in ("default", "v1-vq"):
        job = tmp_path / "sweep" / preset / "seed0"  # OUT/<cell>/seed<k>/{run,eval}
        metrics = json.loads((job / "eval" / "metrics.json").read_text(encoding="utf-8"))
        assert metrics["preset"] == preset and metrics["split"] == "test" and metrics["codebook_size"] == 32
        assert (job / "run" / "best.pt").is_file()
    text = report.read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith(("| default |", "| v1-vq |"))]
    assert len(rows) == 6  # sweep table + verdict table + comparison table, one row each
    from prostate_vq.models import get_preset

    for preset in ("default", "v1-vq"):  # the Parameters cell names each preset's quantizer and tiny D, K
        row = next(r for r in rows if r.startswith(f"| {preset} |") and "epochs=1" in r)
        assert f"{get_preset(preset)['quantizer']['kind']}, D=16" in row and "K=32" in row
    _assert_links_resolve(report)
    out = capsys.readouterr().out
    assert "[sweep 1/2] default seed 0: training" in out and "[sweep 2/2] v1-vq seed 0" in out

    # the same command again reuses the finished runs instead of failing on an existing run folder
    sweep(phantom_root, ["default"], tmp_path / "sweep", overrides=tiny_model_overrides, **TINY)
    assert "reusing the finished run" in capsys.readouterr().out


def test_sweep_rejects_bad_preset_lists_before_training(phantom_root, tmp_path):
    with pytest.raises(UserInputError, match="unknown preset 'nope'"):
        sweep(phantom_root, ["default", "nope"], tmp_path)
    with pytest.raises(UserInputError, match="twice"):
        sweep(phantom_root, ["default", "default"], tmp_path)
    with pytest.raises(UserInputError, match="at least one"):
        sweep(phantom_root, [], tmp_path)
    assert not any(tmp_path.iterdir())


def test_demo_runs_the_whole_path_and_says_where_the_report_is(phantom_root, tiny_model_overrides, tmp_path, capsys):
    report = demo(out=tmp_path / "demo", minutes=1.0, seed=0, data=phantom_root, overrides=tiny_model_overrides, **TINY)
    out = capsys.readouterr().out
    assert report == tmp_path / "demo" / "report.md" and str(report) in out
    for step in ("[demo 1/4]", "[demo 2/4]", "[demo 3/4]", "[demo 4/4]"):
        assert step in out
    assert "SSIM" in out  # the evaluation summary table
    metrics = json.loads((tmp_path / "demo" / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["split"] == "test" and metrics["preset"] == "default"
    text = report.read_text(encoding="utf-8")
    assert text.startswith("# prostate-vq demo") and "SSIM > 0.6" in text
    _assert_links_resolve(report)


def test_demo_rejects_a_non_positive_budget(tmp_path):
    with pytest.raises(UserInputError, match="--minutes"):
        demo(out=tmp_path, minutes=0)


def test_cli_demo_and_sweep_pass_their_options(monkeypatch, tmp_path, capsys):
    import prostate_vq.workflows as workflows

    calls = {}
    monkeypatch.setattr(workflows, "demo", lambda **kw: calls.setdefault("demo", kw) and tmp_path / "r.md")
    monkeypatch.setattr(workflows, "sweep", lambda **kw: calls.setdefault("sweep", kw) and tmp_path / "s.md")
    assert main(["demo", "--out", str(tmp_path), "--minutes", "2", "--device", "cpu", "--seed", "3"]) == 0
    assert calls["demo"] == {"out": tmp_path, "minutes": 2.0, "device": "cpu", "seed": 3}
    assert main(["sweep", "--presets", "default,v1-vq", "--out", str(tmp_path), "--max-minutes", "1.5"]) == 0
    assert calls["sweep"]["presets"] == ["default", "v1-vq"] and calls["sweep"]["max_minutes"] == 1.5
    assert "demo report:" in capsys.readouterr().out


def test_cli_sweep_unknown_preset_exits_2(phantom_root, tmp_path, capsys):
    assert main(["sweep", "--data", str(phantom_root), "--presets", "default,nope", "--out", str(tmp_path)]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
