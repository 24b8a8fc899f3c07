"""`prostate-vq sweep`: presets x grid x seeds at one step budget, trained and evaluated as independent,
resumable jobs (`OUT/<cell>/seed<k>/{run,eval}`), then one report whose table compares the cells at equal steps
with mean +- sd over seeds and paired differences against a reference.

The folder is the sweep: `sweep.json` holds the settings every job shares (a later command that changes them is
refused) and the union of the cells and seeds asked for so far, so re-running with more seeds or cells adds to
it, `--shard i/n` lets machines of a job array share the jobs, and `--collect` writes the report from whatever
has finished, naming what is missing.
"""

from __future__ import annotations

import json
from pathlib import Path

from prostate_vq.errors import UserInputError
from prostate_vq.files import ensure_dir, write_json_atomic
from prostate_vq.workflows.grid import Cell, Job, expand, jobs_of, parse_grid, parse_seeds, parse_shard, shard
from prostate_vq.workflows.steps import evaluate_run, say, train_run

SWEEP_FILE = "sweep.json"
CELL_FILE = "cell.json"
SWEEP_FORMAT = 1
# What every job of one sweep folder must share: a comparison mixes nothing else.
SHARED = ("task", "spatial_size", "max_steps", "max_minutes", "epochs", "overrides", "max_slices")
FLAG = {
    "task": "--task",
    "spatial_size": "--spatial-size",
    "max_steps": "--max-steps",
    "max_minutes": "--max-minutes",
    "epochs": "--epochs",
    "overrides": "--set",
    "max_slices": "--max-slices",
}


def sweep(
    data,
    presets=None,
    out=None,
    max_minutes: float | None = None,
    task: str | None = None,
    epochs: int | None = None,
    device: str = "auto",
    seed: int = 0,
    spatial_size=None,
    max_slices: int | None = None,
    progress: bool = True,
    overrides=None,
    *,
    max_steps: int | None = None,
    seeds=None,
    grid=None,
    reference: str | None = None,
    study: str | None = None,
    shard_spec: str | None = None,
    collect_only: bool = False,
    codecs=None,
    tensorboard: bool = False,
    lpips_weights=None,
    fid_weights=None,
) -> Path:
    """Train and evaluate every (cell, seed) into ``out/<cell>/seed<k>/{run,eval}``; returns ``out/report.md``.

    ``presets`` x ``grid`` (``["section.key=v1,v2"]``) make the cells, or ``study`` names a reference-table study
    (workflows/studies.yaml); ``seeds`` (``"0,1,2"`` or a list) the seeds; ``overrides`` apply to every cell.
    Finished jobs are reused and killed ones resumed. ``tensorboard`` logs every job into its run/tb, so
    `tensorboard --logdir OUT` compares the cells (hparams with final metrics). ``lpips_weights`` and
    ``fid_weights`` (files on disk) add LPIPS and rFID to every evaluation."""
    if out is None:
        raise UserInputError("--out is required")
    out = Path(out)
    if collect_only:
        settings = _read_settings(out)
        if settings is None:
            raise UserInputError(f"--collect: no {SWEEP_FILE} here; not a sweep folder", out)
        return write_sweep_report(out, settings)
    from prostate_vq.models import apply_overrides, get_preset

    study_def = None
    if study:
        from prostate_vq.workflows.studies import get_study, study_cells

        study_def = get_study(study)
        if presets or grid:
            raise UserInputError("--study names its own presets and grid: drop --presets/--grid")
        cells = study_cells(study_def)
        task = task or study_def.get("task", "image")
        reference = reference or study_def.get("reference")
    else:
        presets = [p.strip() for p in presets or [] if p and p.strip()]
        if not presets:
            raise UserInputError("--presets needs at least one preset name (or use --study NAME)")
        if len(set(presets)) != len(presets):
            raise UserInputError(f"a preset is listed twice: {', '.join(presets)}")
        cells = expand(presets, parse_grid(grid))
    task = task or "image"
    _check_budget(max_steps, max_minutes, epochs)
    seed_list = parse_seeds(",".join(map(str, seeds)) if isinstance(seeds, (list, tuple)) else seeds, default=seed)
    part = parse_shard(shard_spec)
    from prostate_vq.evaluation.codecs import parse_codecs

    codecs = parse_codecs(codecs)
    from prostate_vq.evaluation.perceptual import load_feature_net, load_lpips

    if lpips_weights is not None:
        load_lpips(lpips_weights)  # a missing or foreign file is one line before hours of training
    if fid_weights is not None:
        load_feature_net(fid_weights)
    perceptual = {"lpips_weights": lpips_weights, "fid_weights": fid_weights}
    for cell in cells:  # fail before hours of training, not after
        try:
            apply_overrides(get_preset(cell.preset), [*(overrides or []), *cell.overrides])
        except UserInputError as error:
            raise UserInputError(f"cell {cell.name}: {error}") from None
    if reference and not any(c.name == reference or c.preset == reference for c in cells):
        raise UserInputError(f"--reference {reference!r} is neither a preset nor a cell of this sweep")
    if data is None:
        from prostate_vq.data import default_data_root

        data = default_data_root()
    if not max_steps:
        say("sweep", "no --max-steps: the cells are not compared at equal optimizer steps (the table lists each run's steps)")
    given = {
        "task": task,
        "spatial_size": list(spatial_size) if spatial_size else None,
        "max_steps": max_steps,
        "max_minutes": max_minutes,
        "epochs": epochs,
        "overrides": list(overrides or []),
        "max_slices": max_slices,
    }
    settings = _merge_settings(out, given, cells, seed_list, reference, study, data)
    jobs = jobs_of(cells, seed_list)
    if part is not None:
        jobs = shard(jobs, *part)
        say("sweep", f"shard {part[0]}/{part[1]}: {len(jobs)} of {len(cells) * len(seed_list)} jobs")
    for cell in cells:
        write_json_atomic(ensure_dir(out / cell.name) / CELL_FILE, cell.to_dict())
    for i, job in enumerate(jobs, 1):
        _run_job(
            f"sweep {i}/{len(jobs)}",
            out,
            job,
            data=data,
            device=device,
            progress=progress,
            codecs=codecs,
            tensorboard=tensorboard,
            perceptual=perceptual,
            **given,
        )
    return write_sweep_report(out, settings)


def _check_budget(max_steps, max_minutes, epochs) -> None:
    """Before sweep.json records them: a bad budget must not become the folder's setting."""
    import math

    if max_steps is not None and (isinstance(max_steps, bool) or int(max_steps) != max_steps or max_steps < 1):
        raise UserInputError(f"--max-steps must be a whole number of at least 1, got {max_steps}")
    if max_minutes is not None and not (math.isfinite(float(max_minutes)) and float(max_minutes) > 0):
        raise UserInputError(f"--max-minutes must be a positive number of minutes, got {max_minutes}")
    if epochs is not None and int(epochs) < 1:
        raise UserInputError(f"--epochs must be at least 1, got {epochs}")


def _run_job(
    tag: str,
    out: Path,
    job: Job,
    *,
    data,
    device,
    progress,
    codecs,
    task,
    spatial_size,
    max_steps,
    max_minutes,
    epochs,
    overrides,
    max_slices,
    tensorboard=False,
    perceptual=None,
) -> None:
    folder = job.folder(out)
    label = f"{job.cell.name} seed {job.seed}"
    run = train_run(
        tag,
        folder / "run",
        data=data,
        preset=job.cell.preset,
        task=task,
        epochs=epochs,
        max_minutes=max_minutes,
        max_steps=max_steps,
        spatial_size=spatial_size,
        seed=job.seed,
        device=device,
        max_slices=max_slices,
        progress=progress,
        overrides=[*overrides, *job.cell.overrides],
        label=label,
        tensorboard=tensorboard,
    )
    metrics = folder / "eval" / "metrics.json"
    perceptual = perceptual or {}
    if (
        metrics.is_file()
        and metrics.stat().st_mtime >= (run / "best.pt").stat().st_mtime
        and _has_codecs(metrics, codecs)
        and _has_perceptual(metrics, perceptual)
    ):
        say(tag, f"{label}: reusing its evaluation in {metrics.parent}")
        return
    evaluate_run(
        tag, run, folder / "eval", data=data, device=device, max_slices=max_slices, label=label, codecs=codecs, **perceptual
    )


def _has_perceptual(metrics: Path, perceptual: dict) -> bool:
    """An evaluation already holds the LPIPS / rFID asked for (else it is evaluated again)."""
    wanted = [key for key, name in (("lpips_mean", "lpips_weights"), ("fid", "fid_weights")) if perceptual.get(name)]
    if not wanted:
        return True
    try:
        done = json.loads(metrics.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return all(key in done for key in wanted)


def _has_codecs(metrics: Path, codecs: list[str]) -> bool:
    """An evaluation already holds the codec baselines asked for (else it is evaluated again)."""
    if not codecs:
        return True
    try:
        done = (json.loads(metrics.read_text(encoding="utf-8")).get("baselines") or {}).get("codecs") or {}
    except (OSError, ValueError):
        return False
    return set(codecs) <= set(done)


def _read_settings(out: Path) -> dict | None:
    path = out / SWEEP_FILE
    if not path.is_file():
        return None
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserInputError(f"cannot read it ({error})", path) from None
    if not isinstance(settings, dict) or not isinstance(settings.get("cells"), list):
        raise UserInputError("not a prostate-vq sweep file", path)
    return settings


def _merge_settings(out: Path, given: dict, cells: list[Cell], seeds: list[int], reference, study, data) -> dict:
    """sweep.json: the shared settings (a change is refused, naming the option) and the union of cells and seeds."""
    old = _read_settings(out)
    if old is not None:
        for key in SHARED:
            if old.get(key) != given[key]:
                raise UserInputError(
                    f"this folder's sweep ran with {FLAG[key]} {_show(old.get(key))}, not "
                    f"{_show(given[key])}: a comparison needs one setting for every job; use the same "
                    "one, or another --out",
                    out / SWEEP_FILE,
                )
        known = {c["name"]: c for c in old["cells"]}
        for cell in cells:
            if cell.name in known and Cell.from_dict(known[cell.name]) != cell:
                raise UserInputError(f"cell {cell.name} already holds another configuration", out / SWEEP_FILE)
        merged = list(old["cells"]) + [c.to_dict() for c in cells if c.name not in known]
        seeds = sorted(set(old.get("seeds") or []) | set(seeds))
        reference = reference or old.get("reference")
        study = study or old.get("study")
    else:
        merged = [c.to_dict() for c in cells]
        seeds = sorted(seeds)
    settings = {
        "format_version": SWEEP_FORMAT,
        **given,
        "cells": merged,
        "seeds": seeds,
        "reference": reference,
        "study": study,
        "data": str(Path(data).resolve()),
    }
    write_json_atomic(ensure_dir(out) / SWEEP_FILE, settings, indent=2)
    return settings


def _show(value) -> str:
    if value is None:
        return "(not given)"
    if isinstance(value, list):
        return " ".join(map(str, value)) or "(none)"
    return str(value)


def write_sweep_report(out: Path, settings: dict) -> Path:
    """report.md and results.json from what has finished (re-read from the folder)."""
    from prostate_vq.reporting.markdown import write_report
    from prostate_vq.workflows.results import collect
    from prostate_vq.workflows.tables import results_data, study_table, sweep_table, table_notes

    cells = [Cell.from_dict(c) for c in settings["cells"]]
    results = collect(out, cells, list(settings["seeds"]))
    reference = settings.get("reference")
    lines = [
        _settings_line(settings, results),
        "",
        "## Comparison at equal steps",
        "",
        sweep_table(results, reference),
        "",
        table_notes(results, reference),
        "",
    ]
    from prostate_vq.workflows.rate_distortion import rd_section

    lines += rd_section(results, out)
    if settings.get("study"):
        from prostate_vq.workflows.studies import get_study

        study = get_study(settings["study"])
        lines += [
            f"## Study `{study['name']}`: {study['title']}",
            "",
            f"Reference table: {study['source']}.",
            f"Its finding: {study['claim']}.",
            "",
            study_table(study, results, settings.get("overrides") or ()),
            "",
        ]
    if results.missing:
        lines += [
            "## Missing",
            "",
            f"{len(results.missing)} of {len(cells) * len(settings['seeds'])} jobs have not "
            "finished (run the sweep again, or its shards, then `prostate-vq sweep --collect --out DIR`):",
            "",
        ]
        lines += [f"- {item}" for item in results.missing] + [""]
    write_json_atomic(out / "results.json", results_data(results, reference), indent=2)
    title = (
        f"prostate-vq sweep: {settings['study']}"
        if settings.get("study")
        else f"prostate-vq sweep: {', '.join(c.name for c in cells)}"
    )
    firsts = [out / c.name / f"seed{min(results.of(c))}" for c in cells if results.of(c)]
    if not firsts:
        from prostate_vq.files import write_text_atomic

        report = write_text_atomic(out / "report.md", f"# {title}\n\n" + "\n".join(lines) + "\n")
    else:
        report = write_report(firsts, out / "report.md", title=title, preamble=lines)
    say("sweep", f"report: {report}" + (f" ({len(results.missing)} jobs missing)" if results.missing else ""))
    return report


def _settings_line(settings: dict, results) -> str:
    from prostate_vq.reporting.tables import md_code

    budget = [f"{settings['max_steps']} optimizer steps" if settings.get("max_steps") else "no step budget"]
    if settings.get("max_minutes"):
        budget.append(f"at most {settings['max_minutes']:g} min")
    if settings.get("epochs"):
        budget.append(f"{settings['epochs']} epochs")
    size = "x".join(map(str, settings["spatial_size"])) if settings.get("spatial_size") else "each preset's size"
    extra = f"; every cell with {md_code('--set ' + ' '.join(settings['overrides']))}" if settings.get("overrides") else ""
    return (
        f"Sweep of {len(settings['cells'])} cells x seeds {','.join(map(str, settings['seeds']))} "
        f"({settings['task']} task, {size}, {', '.join(budget)}) on {md_code(settings.get('data', '?'))}{extra}; "
        f"{sum(len(v) for v in results.done.values())} jobs finished. Settings: `sweep.json`; numbers: `results.json`."
    )
