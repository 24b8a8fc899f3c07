"""One Markdown report from run, evaluation and sample folders, laid out like the HipMRI report outline
(aim, model, loss, hyperparameters, data and split, results, reproduction, references)."""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import shlex
from pathlib import Path
from urllib.parse import quote

import torch

from prostate_vq.data.layout import NUM_CLASSES
from prostate_vq.errors import UserInputError
from prostate_vq.evaluation import figures
from prostate_vq.evaluation.metrics import SSIM_THRESHOLD
from prostate_vq.evaluation.results import EvaluationResult
from prostate_vq.models import build_model
from prostate_vq.models.summary import network_summary
from prostate_vq.reporting.evaluation_tables import (
    baselines_table,
    dice_table,
    levels_table,
    per_patient_table,
    perceptual_table,
)
from prostate_vq.reporting.inputs import Entry, PriorFolder, RunFolder, SampleFolder, collect
from prostate_vq.reporting.prose import SPLIT_RATIONALE, loss_text
from prostate_vq.reporting.references import Citations
from prostate_vq.reporting.tables import DASH, fmt, hyperparameters, md_code, md_table
from prostate_vq.reporting.tables import md_escape as esc

EVAL_FIGURES = (
    ("reconstructions", "Input / reconstruction / absolute error"),
    ("best_slices", "Best slices"),
    ("worst_slices", "Worst slices"),
    ("ssim_histogram", "Per-slice SSIM"),
    ("segmentation_overlays", "Segmentation overlays"),
    ("codebook_usage", "Codebook usage"),
)


class _Report:
    def __init__(self, out: Path):
        self.out = out
        self.base = out.parent.resolve()
        self.assets = out.parent / f"{out.stem}_figures"
        self.lines: list[str] = []
        self.citations = Citations()
        self.cite = self.citations.cite

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def link(self, path: Path) -> str:
        """A link that resolves from the report's folder, wherever the figure lives; percent-encoded, so that
        no folder name (`x](javascript:...)`, `<img ...>`, a space) can end the link or open a tag."""
        rel = os.path.relpath(Path(path).resolve(), self.base).replace(os.sep, "/")
        return quote(rel.encode("utf-8", "surrogateescape"), safe="/._-~")

    def image(self, path: Path | None, alt: str) -> None:
        if path is not None and Path(path).is_file():
            self.add(f"![{alt}]({self.link(path)})", "")


# --- helpers -------------------------------------------------------------------------------


def _epochs_run(entry: Entry) -> int | None:
    run = entry.run
    if run is None:
        return None
    if run.history is not None and "epoch" in run.history:
        return int(run.history["epoch"].max())
    return run.payload.get("epoch")


def _rate(entry: Entry, result: EvaluationResult | None) -> str:
    """Bits per pixel: from metrics.json, else from the run's config and slice size."""
    if result is not None and result.bits_per_pixel is not None:
        return fmt(result.bits_per_pixel, ".4g")
    payload = entry.run.payload if entry.run else {}
    try:
        from prostate_vq.models import build_model

        return fmt(build_model(payload["config"]).bits_per_pixel(payload["spatial_size"]), ".4g")
    except Exception:  # a report never fails on an old or partial run folder
        return DASH


def _steps(entry: Entry, result: EvaluationResult | None) -> str:
    """Optimizer steps of the run the model comes from (metrics.json, else its history)."""
    if result is not None and result.run_steps is not None:
        return fmt(result.run_steps, ".0f")
    run = entry.run
    if run is not None and run.history is not None and "step" in run.history and len(run.history):
        return fmt(float(run.history["step"].iloc[-1]), ".0f")
    return DASH


def _row(entry: Entry) -> list[str]:
    """Model | Parameters | Bits per pixel (nominal / effective) | Steps | SSIM | SSIM in region | PSNR |
    Dice (%, per slice) | Prostate Dice (%, MONAI) | Codes used | Usage (%) | Perplexity: the codebook columns
    count joint code tuples (one code per level), comparable across one- and multi-level quantizers."""
    config = entry.run.payload.get("config", {}) if entry.run else {}
    refit_info = entry.run.payload.get("refit") if entry.run else None
    params = hyperparameters(config, _epochs_run(entry), refit_info if isinstance(refit_info, dict) else None) if config else DASH
    if entry.task not in ("image", "?"):
        params = f"task={entry.task}, {params}"
    ev = entry.evaluation
    if ev is not None:
        r = ev.result
        recon, seg = r.reconstruction, r.segmentation
        name = entry.name if r.split == "test" else f"{entry.name} ({r.split})"
        ssim = DASH if recon is None else f"{fmt(recon.ssim_mean, '.4f')} ± {fmt(recon.ssim_std, '.3f')}"
        codes_used, usage_pct, perplexity = r.joint_or_pooled()
        rate = f"{_rate(entry, r)} / {fmt(r.effective_bits_per_pixel, '.3f')}"
        return [
            name,
            params,
            rate,
            _steps(entry, r),
            ssim,
            fmt(r.ssim_region_mean, ".4f"),
            fmt(None if recon is None else recon.psnr_mean, ".2f"),
            fmt(None if seg is None else seg.dice_mean, ".2f", 100),
            fmt(r.dice_conventions.prostate_monai, ".2f", 100),
            fmt(codes_used, ".0f"),
            fmt(usage_pct, ".2f"),
            fmt(perplexity, ".1f"),
        ]
    assert entry.run is not None  # an entry has a run, an evaluation or both
    m = entry.run.payload.get("metrics", {}) or {}  # no evaluation given: the best epoch's validation numbers
    counts = entry.run.payload.get("code_counts")
    used = None if counts is None else int((torch.as_tensor(counts) > 0).sum())
    return [
        f"{entry.name} (validation)",
        params,
        f"{_rate(entry, None)} / {DASH}",
        _steps(entry, None),
        fmt(m.get("val_ssim"), ".4f"),
        DASH,
        DASH,
        fmt(m.get("val_dice"), ".2f", 100),
        DASH,
        fmt(used, ".0f"),
        fmt(m.get("codebook_usage_pct"), ".2f"),
        fmt(m.get("perplexity"), ".1f"),
    ]


def comparison_table(entries: list[Entry]) -> str:
    header = [
        "Model",
        "Parameters",
        "Bits per pixel (nominal / effective)",
        "Steps",
        "SSIM",
        "SSIM in region",
        "PSNR",
        "Dice (%, per slice)",
        "Prostate Dice (%, MONAI)",
        "Codes used (joint)",
        "Code usage (%, joint)",
        "Perplexity (joint)",
    ]
    return md_table(header, [_row(e) for e in entries], ["l", "l"] + ["c"] * 10)


def _verdict(entry: Entry) -> tuple[str, str]:
    if entry.evaluation is None:
        return DASH, "n/a (not evaluated)"
    recon = entry.evaluation.result.reconstruction
    if recon is None:
        return DASH, "n/a (no reconstructed image)"
    passed = recon.ssim_mean > SSIM_THRESHOLD
    rate = fmt(recon.ssim_pass_rate, ".1f", 100)
    return f"{recon.ssim_mean:.4f} ({rate}% of slices > {SSIM_THRESHOLD})", "**PASS**" if passed else "**FAIL**"


def _model_summary(entry: Entry) -> tuple[int | None, str | None]:
    """Trainable parameter count and the torchinfo table of the run's network."""
    run = entry.run
    if run is None:
        return None, None
    text = run.summary_text if run.summary_text and "Total params" in run.summary_text else None
    try:
        model = build_model(run.payload["config"], run.payload["task"])
        params = sum(p.numel() for p in model.parameters())
        if text is None:
            channels = NUM_CLASSES if run.payload["task"] == "mask" else 1
            text = network_summary(model, torch.zeros(1, channels, *run.payload["spatial_size"]))
        return params, text
    except Exception:  # a summary is a nicety: the report must not fail for it
        return None, text


def _dataset_section(report: _Report, entries: list[Entry]) -> None:
    report.add("## Dataset and split", "")
    roots = []
    for e in entries:
        for root in ([e.run.payload.get("data_root")] if e.run else []) + [ev.result.data_root for ev in e.evaluations]:
            if root and root not in roots:
                roots.append(root)
    for root in roots:
        report.add(f"Data: {md_code(root)}", "")
        counts = _split_counts(root)
        if counts:
            rows, leaks = counts
            report.add(md_table(["Split", "Patients", "Slices"], rows, ["l", "r", "r"]), "")
            report.add(
                f"**Warning: patients in more than one split: {', '.join(sorted(leaks))}.** Their test numbers are optimistic."
                if leaks
                else "Checked: no patient is in two splits.",
                "",
            )
    sizes = sorted(
        {tuple(e.run.payload.get("spatial_size", ())) for e in entries if e.run}
        | {tuple(ev.result.spatial_size) for e in entries for ev in e.evaluations}
    )
    sizes = [s for s in sizes if s]
    if sizes:
        report.add(
            "**Pre-processing.** Slice size " + ", ".join(f"{h}x{w}" for h, w in sizes) + " (rows x columns): "
            "each slice is zoomed so that its rows fit (aspect ratio kept), then its columns are centre "
            "padded or cropped; masks use nearest-neighbour interpolation so labels stay labels.",
            "",
        )
    intensity = next((e.run.payload.get("intensity") for e in entries if e.run and e.run.payload.get("intensity")), None)
    if intensity:
        report.add(_intensity_text(intensity), "")
    report.add(SPLIT_RATIONALE, "")


def _intensity_text(intensity: dict) -> str:
    if intensity.get("method") == "percentile":
        return esc(
            f"**Intensity scaling** (stored in the checkpoint, repeated by evaluation): per "
            f"{intensity.get('per', 'slice')}, the {intensity.get('lower')}th-{intensity.get('upper')}th "
            f"percentile range maps to [{intensity.get('b_min')}, {intensity.get('b_max')}]"
            + (", clipped." if intensity.get("clip") else ".")
        )
    return (
        "**Intensity scaling** (stored in the checkpoint, repeated by evaluation): "
        + ", ".join(f"{esc(k)} = {md_code(v)}" for k, v in intensity.items())
        + "."
    )


def _split_counts(root: str) -> tuple[list[list], set[str]] | None:
    """Patients and slices per split, and the patients found in more than one split."""
    try:
        from prostate_vq.data import discover

        found = discover(root)
    except Exception:  # the data may live elsewhere now; the report still stands without the counts
        return None
    cases = {split: {r.case for r in records} for split, records in found.items()}
    rows = [[split, len(cases[split]), len(records)] for split, records in found.items()]
    splits = list(cases)
    leaks = {c for i, a in enumerate(splits) for b in splits[i + 1 :] for c in cases[a] & cases[b]}
    return rows, leaks


def _model_section(report: _Report, entry: Entry) -> None:
    run = entry.run
    report.add(f"### {esc(entry.name)}", "")
    if run is None:
        report.add(f"Preset {md_code(entry.preset)}, task {md_code(entry.task)} (training run folder not given).", "")
        return
    config = run.payload.get("config", {})
    params, summary = _model_summary(entry)
    report.add(f"Preset {md_code(entry.preset)}, task {md_code(entry.task)}: {esc(config.get('description', ''))}", "")
    if params is not None:
        report.add(f"Trainable parameters: **{params:,}**.", "")
    report.add("**Loss.** " + esc(loss_text(entry.task, config, report.cite)), "")
    rows = [
        [section, key, value]
        for section in ("model", "quantizer", "training", "refit")
        for key, value in (config.get(section) or {}).items()
    ]
    if rows:
        report.add(
            "<details><summary>Hyperparameters</summary>", "", md_table(["Section", "Key", "Value"], rows), "", "</details>", ""
        )
    if summary:
        report.add(
            "<details><summary>Architecture (torchinfo)</summary>", "", "```text", summary.rstrip(), "```", "", "</details>", ""
        )


def _training_section(report: _Report, entry: Entry) -> None:
    run = entry.run
    if run is None:
        return
    report.add(f"### {esc(entry.name)}", "")
    epochs = _epochs_run(entry)
    best = run.payload.get("epoch")
    facts = [
        f"{epochs} epochs run" if epochs is not None else None,
        f"best epoch {best} (kept as `best.pt`)" if best is not None else None,
        f"seed {run.payload.get('seed')}" if run.payload.get("seed") is not None else None,
    ]
    if run.stop_reason:
        facts.append(
            {
                "max_minutes": "stopped by the time budget",
                "early_stopping": "stopped early",
                "epochs": "all planned epochs done",
            }.get(run.stop_reason, esc(run.stop_reason))
        )
    if run.history is not None and "seconds" in run.history:
        facts.append(f"{run.history['seconds'].fillna(0).sum() / 60:.1f} min of training")
    report.add(", ".join(f for f in facts if f) + ".", "")
    if run.history is not None:
        try:
            path = figures.training_curves(run.history, report.assets / f"{_slug(entry.name)}_training_curves.png")
            report.image(path, f"training curves of {esc(entry.name)}")
        except ValueError:
            pass


def _testing_section(report: _Report, entry: Entry) -> None:
    for ev in entry.evaluations:
        r = ev.result
        report.add(f"### {esc(entry.name)}: {esc(r.split)} split ({esc(r.n_slices)} slices)", "")
        for table in (dice_table(r), per_patient_table(r), levels_table(r), baselines_table(r)):
            if table:
                report.add(table, "")
        for key, caption in EVAL_FIGURES:
            path = ev.figure(key)
            if path is not None:
                report.add(f"*{caption}*", "")
                report.image(path, f"{caption} - {esc(entry.name)}")
        if (ev.path / "per_slice.csv").is_file():
            report.add(f"Per-slice values: [{esc(ev.path.name)}/per_slice.csv]({report.link(ev.path / 'per_slice.csv')}).", "")
        else:
            report.add("No per-slice values: the evaluation folder has no `per_slice.csv`.", "")


def _prior_section(report: _Report, priors: list[PriorFolder], samples: list[SampleFolder]) -> None:
    if not priors and not samples:
        return
    report.add(
        "## Generative prior",
        "",
        "An autoregressive prior over the code maps turns the VQ-VAE into a generator: sample codes, "
        "decode them. Lower negative log-likelihood (bits per code) than the uniform and unigram "
        "baselines means the prior learned the spatial structure of the codes.",
        "",
    )
    if priors:
        rows = [
            [
                p.path.name,
                p.metrics.get("arch", DASH),
                fmt(p.metrics.get("parameters"), ",.0f"),
                fmt(p.metrics.get("val_nll_bits_per_code"), ".3f"),
                fmt(p.metrics.get("test_nll_bits_per_code"), ".3f"),
                fmt(p.metrics.get("unigram_val_bits_per_code"), ".3f"),
                fmt(p.metrics.get("uniform_bits_per_code"), ".3f"),
                p.metrics.get("epochs_run", DASH),
            ]
            for p in priors
        ]
        report.add(
            md_table(
                ["Prior", "Architecture", "Parameters", "Val NLL", "Test NLL", "Unigram (val)", "Uniform", "Epochs"],
                rows,
                ["l", "l", "r", "r", "r", "r", "r", "r"],
            ),
            "",
            "NLL in bits per code; unigram: the training code frequencies scored on the validation codes.",
            "",
        )
    for folder in samples:
        info = folder.info
        facts = [f"{k} = {md_code(info[k])}" for k in ("n", "arch", "temperature", "seed") if k in info]
        report.add(f"**Samples** {md_code(folder.path.name)}" + (": " + ", ".join(facts) if facts else "") + ".", "")
        nearest = (info.get("summary") or {}).get("nearest_train_similarity")
        reference = (info.get("reference") or {}).get("nearest_train_similarity")
        if isinstance(nearest, dict) and "mean" in nearest:
            line = (
                f"Memorisation check: similarity ({info.get('similarity', 'similarity')}) of each sample to its "
                f"nearest training slice: mean {nearest['mean']:.3f}, max {nearest.get('max', math.nan):.3f}"
            )
            if isinstance(reference, dict) and "mean" in reference:
                line += f"; unseen validation slices reach {reference['mean']:.3f} on average"
            report.add(line + ".", "")
        quality = info.get("quality") or {}
        if quality:
            parts = [
                f"diversity (mean pairwise MS-SSIM, lower is more diverse) {fmt(quality.get('diversity_ms_ssim'), '.3f')} "
                f"against {fmt(quality.get('diversity_ms_ssim_real'), '.3f')} among {quality.get('n_real', 0)} "
                "validation slices",
                f"MMD (MONAI) {fmt(quality.get('mmd'), '.4g')}",
            ]
            if "fid" in quality:
                parts.append(f"FID {fmt(quality.get('fid'), '.2f')} ({esc((quality.get('fid_weights') or {}).get('file', '?'))})")
            report.add("Sample quality: " + "; ".join(parts) + ".", "")
        report.image(folder.grid, f"samples from {esc(folder.path.name)}")


def _reproduce_section(report: _Report, entries: list[Entry]) -> None:
    import monai

    from prostate_vq import __version__

    report.add("## Reproduce", "", "```bash")
    for e in entries:
        if e.run is not None:
            if e.run.stop_reason == "max_minutes":
                report.add(f"# stopped at its time budget after {_epochs_run(e)} epochs: add the same --max-minutes")
            report.add(" \\\n    ".join(_train_command(e.run)))
        for ev in e.evaluations:
            r = ev.result
            report.add(
                f"prostate-vq evaluate --checkpoint {_q(r.checkpoint)} --data {_q(r.data_root)} "
                f"--split {_q(r.split)} --out {_q(ev.path.resolve())}"
            )
    inputs = " ".join(_q(p.resolve()) for p in _inputs_of(entries))
    report.add(f"prostate-vq report {inputs} --out {_q(report.out.resolve())}", "```", "")
    versions = {
        "prostate_vq": __version__,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
    }
    rows = [
        [
            name,
            now,
            ", ".join(sorted({str((e.run.payload.get("versions") or {}).get(name, DASH)) for e in entries if e.run})) or DASH,
        ]
        for name, now in versions.items()
    ]
    report.add(md_table(["Package", "Report", "Training"], rows), "")


def _train_command(run: RunFolder) -> list[str]:
    """The ``prostate-vq train`` line that reproduces this run: its own config.yaml (base preset, every section,
    task and seed) as ``--config``, and its data."""
    p = run.payload
    cmd = ["prostate-vq train", f"--config {_q((run.path / 'config.yaml').resolve())}"]
    if p.get("data_root"):
        cmd.append(f"--data {_q(p['data_root'])}")
    cmd.append(f"--out {_q(run.path.resolve())}-reproduced")
    return cmd


def _inputs_of(entries: list[Entry]) -> list[Path]:
    paths = []
    for e in entries:
        if e.run is not None:
            paths.append(e.run.path)
        paths += [ev.path for ev in e.evaluations]
    return paths


def _q(value) -> str:
    """Shell-quoted; a newline (which could end the code fence) is shown as a space."""
    return shlex.quote(str(value).replace("\n", " "))


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


# --- entry point ----------------------------------------------------------------------------


def write_report(inputs, out: str | Path, title: str = "prostate-vq report", preamble: list[str] | None = None) -> Path:
    """Write one Markdown report comparing every run/evaluation in ``inputs``; returns its path. ``preamble``
    (Markdown lines, e.g. a sweep's comparison table) goes first, under the title."""
    from prostate_vq.files import ensure_dir, write_text_atomic

    entries, samples, priors = collect(list(inputs) if not isinstance(inputs, (str, Path)) else [inputs])
    if not entries and not samples and not priors:
        raise UserInputError("nothing to report: no run, evaluation or samples folder found")
    out = Path(out)
    if out.is_dir():
        out = out / "report.md"
    _refuse_overwriting_inputs(out, entries, samples, priors)
    if not _is_utf8(str(out.resolve())):
        raise UserInputError(
            "--out: the name is not valid UTF-8, and the report names itself and its figures; choose a UTF-8 name", out
        )
    ensure_dir(out.parent)
    report = _Report(out)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report.add(f"# {title}", "", f"_Generated {stamp} by `prostate-vq report`._", "")
    if preamble:
        report.add(*preamble)

    report.add(
        "## Aim",
        "",
        f"Train a VQ-VAE on 2-D prostate MRI slices whose reconstructions are reasonably clear: mean "
        f"structural similarity (SSIM {report.cite('ssim')}) above {SSIM_THRESHOLD} on the held-out test "
        "split.",
        "",
    )
    if entries:
        verdicts = [[e.name, *_verdict(e)] for e in entries]
        report.add(md_table(["Model", "Test SSIM", f"SSIM > {SSIM_THRESHOLD}"], verdicts), "")

        report.add(
            "## Results",
            "",
            comparison_table(entries),
            "",
            "SSIM: mean ± std over slices, images in [0, 1], 11x11 Gaussian window (sigma 1.5), MONAI "
            f"`SSIMMetric` {report.cite('monai')}; SSIM in region: the SSIM map averaged inside the body (label > 0) or, "
            "without masks, inside the unpadded foreground. PSNR (dB, peak 1): mean over slices with a "
            "finite value. Dice (per slice): mean over the foreground classes of the per-class mean over "
            "slices where the class is in the reference or the prediction. Prostate Dice (MONAI): "
            "`DiceMetric(ignore_empty=True)`, slices without prostate in the reference not scored. "
            "Bits per pixel: nominal = code map size x log2 K over input pixels, all levels; effective = "
            "per level, positions x entropy of its code histogram on the split. Steps: optimizer steps of "
            "the run. Codes used, usage and perplexity count joint code tuples (one code per level at a "
            "position; for one level, the codes): usage = tuples seen over min(possible tuples, positions); "
            "perplexity exp(H) of the tuple histogram (= number of tuples under uniform use). Per-level "
            "numbers are in each model's section.",
            "",
        )
        perceptual = perceptual_table([(e.name, ev.result) for e in entries if (ev := e.evaluation) is not None])
        if perceptual:
            report.add("### Multi-scale and perceptual metrics", "", perceptual, "")
        _dataset_section(report, entries)
        report.add(
            "## Models",
            "",
            f"A VQ-VAE {report.cite('vq')} encodes a slice into a grid of vectors, replaces each by its nearest codebook "
            "entry (a discrete code) and decodes the codes back; a small, fully used codebook is what "
            "makes the codes useful to a generative prior.",
            "",
        )
        for entry in entries:
            _model_section(report, entry)
        if any(e.run for e in entries):
            report.add(
                "## Training", "", f"Early stopping on the validation split {report.cite('stop')}; curves from `history.csv`.", ""
            )
            for entry in entries:
                _training_section(report, entry)
        if any(e.evaluations for e in entries):
            report.add("## Testing", "")
            for entry in entries:
                _testing_section(report, entry)
    _prior_section(report, priors, samples)
    if entries:
        _reproduce_section(report, entries)
    report.add("## References", "", *report.citations.section(), "")
    # A folder name that is not UTF-8 (surrogate-escaped bytes) is shown with U+FFFD, never a UnicodeEncodeError.
    text = "\n".join(report.lines).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    write_text_atomic(out, text)
    return out


def _refuse_overwriting_inputs(out: Path, entries, samples, priors) -> None:
    """The report never replaces a file of a folder it reads (`--out RUN/history.csv`); an earlier report (.md)
    there may be replaced."""
    folders = [f.path for f in (*samples, *priors)]
    for e in entries:
        folders += ([e.run.path] if e.run else []) + [ev.path for ev in e.evaluations]
    target = out.resolve()
    if target.suffix.lower() != ".md" and target.exists() and any(f.resolve() in target.parents for f in folders):
        raise UserInputError("--out is one of the report's inputs; write the report elsewhere (e.g. report.md)", out)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
