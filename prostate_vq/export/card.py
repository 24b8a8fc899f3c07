"""The model card (README.md of an export): what a colleague needs to use, trust and cite the model, from the
checkpoint and, when given, the metrics.json of its evaluation (Mitchell et al. 2019, "Model Cards for Model
Reporting": data, metrics with their uncertainty, intended use and limits)."""

from __future__ import annotations

from pathlib import Path

from prostate_vq.models.quantizers import QUANTIZERS
from prostate_vq.reporting.references import bibliography

DATA_CITATION = (
    "HipMRI (2D prostate MR slices with organ labels) or ProstateX: cite the release you obtained "
    "and follow its licence, which the weights inherit; neither ships with prostate-vq. The demo "
    "phantom is synthetic (prostate-vq, MIT)."
)


def method_references(kind: str) -> list[str]:
    """The quantizer's own papers (its class's `references`, the report's bibliography): a new kind brings them,
    no per-kind list here to forget."""
    cls = QUANTIZERS.get(kind)
    table = bibliography()
    return [table[key] for key in (cls.references if cls else ("vq",)) if key in table]


def _num(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _metric_rows(metrics: dict) -> list[str]:
    per_patient = metrics.get("per_patient") or {}

    def interval(name: str) -> str:
        ci = (per_patient.get(name) or {}).get("ci95")
        return f"[{_num(ci[0])}, {_num(ci[1])}]" if ci else "-"

    rows = ["| metric | value | 95% interval over patients |", "|---|---|---|"]
    for key, label, pp in (
        ("ssim_mean", "SSIM (mean over slices)", "ssim"),
        ("ms_ssim_mean", "MS-SSIM (mean over slices)", "ms_ssim"),
        ("psnr_mean", "PSNR (dB)", None),
        ("lpips_mean", "LPIPS", None),
        ("fid", "rFID", None),
        ("dice_mean", "Dice (foreground mean)", None),
        ("dice_prostate_monai", "Dice prostate (MONAI)", "dice_prostate_monai"),
        ("codebook_usage_pct", "codebook usage (%)", None),
        ("perplexity", "perplexity", None),
    ):
        if metrics.get(key) is not None:
            rows.append(
                f"| {label} | {_num(metrics[key], 2 if key in ('psnr_mean', 'codebook_usage_pct') else 4)} "
                f"| {interval(pp) if pp else '-'} |"
            )
    return rows


def model_card(
    payload: dict,
    config: dict,
    metrics: dict | None,
    metrics_path: Path | None,
    files: list[str],
    skipped: list[str],
    budget: dict,
) -> str:
    cfg = payload["config"]
    kind = (cfg.get("quantizer") or {}).get("kind", "vq")
    h, w = config["spatial_size"]
    training = cfg.get("training") or {}
    run_metrics = payload.get("metrics") or {}
    lines = [
        f"# prostate-vq {payload.get('preset', '?')} ({config['task']} task)",
        "",
        f"A VQ-VAE tokenizer for 2D prostate MR slices ({h}x{w}), trained with prostate-vq "
        f"{config.get('prostate_vq_version', '')}: `{kind}` quantizer, architecture "
        f"`{(cfg.get('model') or {}).get('architecture', 'vqvae')}`.",
        "",
        "## Use",
        "",
        "```python",
        "import prostate_vq",
        "model = prostate_vq.from_pretrained('THIS_FOLDER')  # safetensors, no pickle",
        f"codes = model.encode(x)            # x: [B, 1, H, W] in [0, 1], H and W divisible by {config.get('divisible_by')}",
        "recon = model.decode_indices(codes).recon.clamp(0, 1)",
        "```",
        "",
        "Without prostate-vq: `torch.jit.load('encode.ts')` / `decode.ts`, or the ONNX files with onnxruntime "
        "(docs/export.md in prostate-vq).",
        "",
        "## Input and rate",
        "",
        f"* input: {config['input']}",
        f"* intensity scaling: {config.get('intensity')}",
        f"* code map per slice: {config['code_shape']} ({config['num_codes']} codes over all levels)",
        f"* rate: {_num(config.get('bits_per_pixel'))} bits per pixel at {h}x{w}",
        "",
        "## Data and splits",
        "",
        f"* trained on `{Path(str(payload.get('data_root', '?'))).name}` (the run's data folder), split by patient "
        "into train / validate / test (HipMRI's keras_slices_* folders); best.pt selected on the validation split",
        f"* seed {payload.get('seed')}",
        "",
        "## Training budget",
        "",
        f"* checkpoint epoch {payload.get('epoch')}, step {run_metrics.get('step', budget['steps'])}; run total: "
        f"{budget['run_steps'] if budget['run_steps'] is not None else '-'} steps, "
        f"{budget['run_epochs'] if budget['run_epochs'] is not None else '-'} epochs"
        + (f" (stopped: {budget['stop_reason']})" if budget.get("stop_reason") else ""),
        f"* recipe: lr {training.get('lr')}, batch {training.get('batch_size')}, max epochs {training.get('epochs')}, "
        f"max steps {training.get('max_steps')}",
        "",
        "## Metrics",
        "",
    ]
    if metrics:
        lines += [
            f"From `{metrics_path.name if metrics_path else 'metrics.json'}`: the {metrics.get('split')} split, "
            f"{metrics.get('n_slices')} slices of {(metrics.get('per_patient') or {}).get('n_patients', '?')} "
            "patients (prostate-vq evaluate; conventions in prostate-vq's docs/training.md).",
            "",
        ]
        lines += _metric_rows(metrics)
    else:
        lines.append("No evaluation was given: run `prostate-vq evaluate` and export with `--metrics EVAL/metrics.json`.")
    lines += [
        "",
        "## Intended use and limits",
        "",
        "* research: compressing slices to discrete codes for priors, generative models and codec comparisons",
        "* not for diagnosis or any clinical decision; not validated beyond the data above (scanner, field "
        "strength, sequence and anatomy may all shift it)",
        "* 2D slices only; each slice is scaled by its own percentiles, so absolute intensities are not kept",
        "",
        "## Files",
        "",
        *[f"* `{name}`" for name in files],
        *([""] + [f"* {line}" for line in skipped] if skipped else []),
        "",
        "## Licences and citations",
        "",
        "* model weights: under the licence of the data they were trained on; prostate-vq is MIT",
        f"* data: {DATA_CITATION}",
        *[f"* method: {reference}" for reference in method_references(kind)],
        "* MONAI Consortium. MONAI: Medical Open Network for AI (metrics, networks).",
        "",
    ]
    return "\n".join(lines)
