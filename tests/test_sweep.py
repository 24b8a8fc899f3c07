"""The sweep as a grid of independent jobs: cells x seeds at one step budget, shards that cover every job once,
the report from whatever finished, and the paired bootstrap behind every difference it reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from prostate_vq.errors import UserInputError
from prostate_vq.evaluation.stats import paired_difference, unit_of
from prostate_vq.workflows import sweep
from prostate_vq.workflows.grid import expand, jobs_of, parse_grid, parse_seeds, parse_shard, shard

TINY = [
    "model.channels=[8,16]",
    "model.res_channels=8",
    "model.embedding_dim=16",
    "quantizer.codebook_size=32",
    "training.batch_size=4",
]


@pytest.mark.parametrize("count", [1, 2, 3, 5, 7])
def test_shards_cover_every_job_exactly_once(count):
    cells = expand(["v1-vq", "v3-ema", "fsq"], parse_grid(["quantizer.codebook_dim=4,8"]))
    jobs = jobs_of(cells, [0, 1, 2])
    assert len(jobs) == 18 and len(set(jobs)) == 18
    shares = [shard(jobs, i, count) for i in range(count)]
    assert sorted((j.cell.name, j.seed) for share in shares for j in share) == sorted((j.cell.name, j.seed) for j in jobs)
    assert shard(jobs, 0, count) == shard(list(jobs), 0, count)  # deterministic
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_grid_and_seed_parsing():
    axes = parse_grid(["quantizer.levels=[8,8,8],[8,5,5,5]", "training.lr=1e-3,2e-3"])
    assert axes == [("quantizer.levels", ["[8,8,8]", "[8,5,5,5]"]), ("training.lr", ["1e-3", "2e-3"])]
    names = [c.name for c in expand(["fsq"], axes)]
    assert names[0] == "fsq__levels=8_8_8__lr=1e-3" and len(names) == 4
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds("3-5") == [3, 4, 5] and parse_seeds(None, 7) == [7]
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "x", "-1/2"):
        with pytest.raises(UserInputError, match="--shard"):
            parse_shard(bad)
    with pytest.raises(UserInputError, match="--seeds"):
        parse_seeds("0,0")
    with pytest.raises(UserInputError, match="--grid"):
        parse_grid(["codebook_dim=4"])


def _units(cases):
    rows = [{"file": f"s{i}", "slice": i, "case": c, "week": 0} for i, c in enumerate(cases)]
    unit, owners = unit_of(rows)
    return unit, {f"s{i}#{i}": o for i, o in enumerate(owners)}


def test_paired_bootstrap_on_a_hand_built_case():
    """Four patients x three seeds: a consistent +0.1 is significant with the right mean; +0.3 for two patients and
    -0.3 for the other two averages 0 and its interval covers 0; one patient falls back to its volumes."""
    cases = [p for p in "ABCD" for _ in range(5)]
    unit, units = _units(cases)
    assert unit == "patients"
    rng = np.random.default_rng(0)
    ref = {s: {k: float(rng.uniform(0.5, 0.8)) for k in units} for s in range(3)}
    better = {s: {k: v + 0.1 + float(rng.normal(0, 0.01)) for k, v in ref[s].items()} for s in range(3)}
    diff = paired_difference(better, ref, units, unit)
    assert diff.mean == pytest.approx(0.1, abs=0.01) and diff.significant
    assert diff.ci95[0] < 0.1 < diff.ci95[1] and diff.n_units == 4 and diff.n_seeds == 3
    mixed = {s: {k: v + (0.3 if units[k] in "AB" else -0.3) for k, v in ref[s].items()} for s in range(3)}
    diff = paired_difference(mixed, ref, units, unit)
    assert diff.mean == pytest.approx(0.0, abs=1e-12) and not diff.significant and diff.ci95[0] < 0 < diff.ci95[1]
    # unmatched seeds and non-finite slices are left out
    diff = paired_difference({**better, 9: better[0]}, {**ref, 8: ref[0]}, units, unit)
    assert diff.n_seeds == 3
    one = [{"file": f"s{i}", "slice": i, "case": "A", "week": i % 2} for i in range(6)]
    assert unit_of(one)[0] == "volumes of 1 patient"


@pytest.mark.slow  # ~30-60 s: a grid x seeds sweep, trained and evaluated, then extended
@pytest.mark.filterwarnings("ignore:codebook collapse")
def test_sweep_grid_seeds_reference_and_additions(phantom_root, tmp_path, capsys):
    out = tmp_path / "sweep"
    kw = dict(spatial_size=(64, 32), device="cpu", progress=False, overrides=TINY, max_steps=4)
    report = sweep(
        phantom_root, ["v1-vq", "v3-ema"], out, seeds="0,1", grid=["quantizer.codebook_dim=4,8"], reference="v1-vq", **kw
    )
    for cell in ("v1-vq__codebook_dim=4", "v3-ema__codebook_dim=8"):
        for seed in (0, 1):
            metrics = json.loads((out / cell / f"seed{seed}" / "eval" / "metrics.json").read_text(encoding="utf-8"))
            assert metrics["run_steps"] == 4 and metrics["seed"] == seed
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    cells = {c["name"]: c for c in results["cells"]}
    assert (
        set(cells) == {"v1-vq__codebook_dim=4", "v1-vq__codebook_dim=8", "v3-ema__codebook_dim=4", "v3-ema__codebook_dim=8"}
        and results["missing"] == []
    )
    ema = cells["v3-ema__codebook_dim=8"]
    assert ema["reference"] == "v1-vq__codebook_dim=8" and ema["seeds"] == [0, 1]
    assert ema["paired"]["ssim"]["n_seeds"] == 2 and ema["ssim_mean"]["sd"] is not None
    text = report.read_text(encoding="utf-8")
    assert "| v3-ema__codebook_dim=8 | 0.3125 / " in text and "Δ SSIM vs v1-vq [95% CI]" in text

    # more seeds add to the folder and reuse what is there; another budget is refused
    sweep(phantom_root, ["v1-vq"], out, seeds="0,2", grid=["quantizer.codebook_dim=4"], **kw)
    assert "v1-vq__codebook_dim=4 seed 0: reusing the finished run" in capsys.readouterr().out
    settings = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
    assert settings["seeds"] == [0, 1, 2] and len(settings["cells"]) == 4
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert any("v1-vq__codebook_dim=8 seed 2" in m for m in results["missing"])
    with pytest.raises(UserInputError, match="--max-steps 4, not 5"):
        sweep(phantom_root, ["v1-vq"], out, **{**kw, "max_steps": 5})
    for bad in ({"max_steps": 0}, {"max_minutes": float("nan")}):  # refused before sweep.json records them
        with pytest.raises(UserInputError, match="--max-"):
            sweep(phantom_root, ["v1-vq"], tmp_path / "bad", **{**kw, **bad})
        assert not (tmp_path / "bad" / "sweep.json").exists()


@pytest.mark.slow  # ~30-60 s: two sweep processes side by side
def test_two_concurrent_shards_fill_one_folder_and_collect_reports_it(phantom_root, tmp_path):
    out = tmp_path / "sweep"
    base = [
        sys.executable,
        "-m",
        "prostate_vq",
        "sweep",
        "--data",
        str(phantom_root),
        "--out",
        str(out),
        "--presets",
        "v1-vq,v3-ema",
        "--seeds",
        "0,1",
        "--max-steps",
        "3",
        "--spatial-size",
        "64",
        "32",
        "--device",
        "cpu",
        "--reference",
        "v1-vq",
        "--set",
        *TINY,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    procs = [
        subprocess.Popen(
            [*base, "--shard", f"{i}/2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8"
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "shard 0/2: 2 of 4 jobs" in outputs[0][0] and "shard 1/2: 2 of 4 jobs" in outputs[1][0]
    collected = subprocess.run(
        [sys.executable, "-m", "prostate_vq", "sweep", "--out", str(out), "--collect"],
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
    )
    assert collected.returncode == 0, collected.stderr
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["missing"] == [] and all(c["seeds"] == [0, 1] for c in results["cells"])

    # a job that vanished is named as missing by --collect
    import shutil

    shutil.rmtree(out / "v3-ema" / "seed1")
    subprocess.run(
        [sys.executable, "-m", "prostate_vq", "sweep", "--out", str(out), "--collect"],
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
        check=True,
    )
    assert json.loads((out / "results.json").read_text(encoding="utf-8"))["missing"] == ["v3-ema seed 1 (not trained)"]
    assert "v3-ema seed 1 (not trained)" in (out / "report.md").read_text(encoding="utf-8")


def test_every_study_builds_valid_cells_and_is_listed(capsys):
    from prostate_vq.cli import main
    from prostate_vq.models import apply_overrides, get_preset
    from prostate_vq.workflows.studies import get_study, study_cells, study_names

    expected = {
        "celeba-codebook-dim",
        "celeba-codebook-size",
        "celeba-l2",
        "celeba-ema",
        "celeba-entropy",
        "celeba-fsq",
        "celeba-lfq",
        "hipmri-grid",
    }
    assert set(study_names()) == expected
    for name in study_names():
        study = get_study(name)
        cells = study_cells(study)
        assert study["reference"] in {c.name for c in cells} | {c.preset for c in cells}, name
        for cell in cells:
            apply_overrides(get_preset(cell.preset), list(cell.overrides))
    dims = [c.overrides for c in study_cells(get_study("celeba-codebook-dim"))]
    assert dims == [(f"quantizer.codebook_dim={d}",) for d in (4, 8, 16, 32, 64)]
    assert main(["studies"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in expected) and "claim:" in listing
    with pytest.raises(UserInputError, match="unknown study"):
        get_study("nope")


@pytest.mark.slow  # ~5 s: a study's sweep, trained and evaluated
@pytest.mark.filterwarnings("ignore:codebook collapse")
def test_a_study_writes_a_table_shaped_like_its_reference(phantom_root, tmp_path):
    out = tmp_path / "study"
    report = sweep(
        phantom_root,
        None,
        out,
        study="celeba-lfq",
        seeds=[0],
        max_steps=3,
        spatial_size=(64, 32),
        device="cpu",
        progress=False,
        overrides=TINY,
    )
    text = report.read_text(encoding="utf-8")
    assert "## Study `celeba-lfq`: LFQ-VAE" in text and "Its finding: LFQ uses every code" in text
    header = next(line for line in text.splitlines() if line.startswith("| Cell | Quantizer | Codebook size |"))
    assert "Codebook usage (%) | PSNR (dB) | SSIM |" in header
    row = next(line for line in text.splitlines() if line.startswith("| lfq | lfq | 32 |"))
    assert row.count("|") == header.count("|")
    assert "| v1-vq (reference) | vq (VQ loss) | 32 |" in text
    with pytest.raises(UserInputError, match="--study names its own presets"):
        sweep(phantom_root, ["v1-vq"], out, study="celeba-lfq")


@pytest.mark.slow  # ~4-7 s: a sweep with the codec baselines
def test_sweep_with_codecs_compares_every_cell_with_the_best_codec(phantom_root, tmp_path):
    """At 1.25 bits per pixel (64x64 slices, a /2 map of 32 codes) the codecs fit; the table gains the best codec
    and ours minus it, paired over seeds and slices."""
    out = tmp_path / "sweep"
    sweep(
        phantom_root,
        ["v1-vq"],
        out,
        seeds="0,1",
        max_steps=3,
        spatial_size=(64, 64),
        device="cpu",
        progress=False,
        overrides=[*TINY, "model.downsample=2"],
        codecs="webp,jpeg",
    )
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    cell = results["cells"][0]
    assert cell["best_codec"] in ("webp", "jpeg") and cell["ours_minus_best_codec_ssim"]["n_seeds"] == 2
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "Best codec at this rate: SSIM | Ours − best codec: SSIM [95% CI] |" in text
    # The rate-distortion view: the cell at its rate and each codec at the same budget, figure and table.
    assert "## Rate and distortion" in text and "![rate-distortion](rate_distortion.png)" in text
    assert (out / "rate_distortion.png").stat().st_size > 10_000
    from prostate_vq.workflows.rate_distortion import rd_points
    from prostate_vq.workflows.results import collect
    from prostate_vq.workflows.sweep import _read_settings

    settings = _read_settings(out)
    from prostate_vq.workflows.grid import Cell

    ours, codecs = rd_points(collect(out, [Cell.from_dict(c) for c in settings["cells"]], settings["seeds"]))
    assert [c["name"] for c in ours] == ["v1-vq"] and ours[0]["bpp"] == pytest.approx(1.25) and ours[0]["seeds"] == 2
    assert set(codecs) == {"webp", "jpeg"} and all(
        p["bpp"] <= p["budget"] == pytest.approx(1.25) for points in codecs.values() for p in points
    )
