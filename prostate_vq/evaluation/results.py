"""The structured result of one evaluation: what ``metrics.json`` holds and what the terminal shows."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prostate_vq.evaluation.metrics import SSIM_THRESHOLD, CodebookMetrics, ReconstructionMetrics, SegmentationMetrics, json_float
from prostate_vq.files import strict_json, write_json_atomic

METRICS_FORMAT = 1
_RECON_KEYS = (
    "ssim_mean",
    "ssim_std",
    "ssim_median",
    "ssim_min",
    "ssim_max",
    "ssim_pass_rate",
    "psnr_mean",
    "psnr_std",
    "psnr_infinite",
    "mse_mean",
    "mae_mean",
    "ms_ssim_mean",
    "ms_ssim_std",
)
_CODEBOOK_KEYS = ("codebook_size", "codes_used", "codebook_usage_pct", "perplexity")
# Keys of to_dict that are no field of their own: derived (verdict, rates), or the segmentation's.
_TOP_KEYS = (
    "format_version",
    "ssim_threshold",
    "verdict",
    "bits_per_pixel",
    "effective_bits_per_pixel",
    "dice_mean",
    "dice_per_class",
    "dice_slices_scored",
    "code_counts",
)
_BUDGET_KEYS = ("steps", "epochs", "run_steps", "run_epochs", "stop_reason", "schedule", "base_steps")  # evaluate._budget


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _nan_if_null(value: Any) -> float:
    """A float field read back from strict JSON: null (a non-finite value, see json_float) is NaN."""
    return math.nan if value is None else float(value)


def _numbers(values: Any) -> dict[str, float | None]:
    return {str(k): _number(v) for k, v in (values or {}).items()}


@dataclass(frozen=True)
class DiceConventions:
    """Dice under MONAI's and the per-case 3D convention (evaluation.conventions.DICE_CONVENTIONS), beside the
    per-slice one of SegmentationMetrics; empty dicts and None when the task segments nothing."""

    per_class_monai: dict[str, float | None]
    mean_monai: float | None
    per_class_case3d: dict[str, float | None]
    mean_case3d: float | None
    prostate_monai: float | None


@dataclass(frozen=True)
class PatientStat:
    """The mean over patients of one metric and its 95% bootstrap interval (None with one patient)."""

    mean: float | None
    ci95: list[float] | None


@dataclass(frozen=True)
class PerPatient:
    """Per-patient means (``cases``: patient -> metric -> mean) and their statistics over patients."""

    n_patients: int
    cases: dict[str, dict[str, float | None]]
    stats: dict[str, PatientStat]


@dataclass(frozen=True)
class JointUsage:
    """Joint code tuples over the levels (models.rate.JointCodes); None where metrics.json has no such key."""

    codes_used: float | None
    codes_possible: float | None
    usage_pct: float | None
    perplexity: float | None
    present: bool  # whether metrics.json has the joint keys at all


@dataclass(frozen=True)
class LevelHealth:
    """One code map's usage, perplexity and share of the rate (models.rate.level_health)."""

    name: str | None
    codebook_size: float | None
    bits_per_pixel: float | None
    effective_bits_per_pixel: float | None
    codes_used: float | None
    codebook_usage_pct: float | None
    perplexity: float | None


@dataclass(frozen=True)
class CodecScore:
    bpp_mean: float | None
    fit_pct: float | None
    ssim_mean: float | None
    psnr_mean: float | None


@dataclass(frozen=True)
class Difference:
    """Ours minus the best codec (evaluation.stats.paired_difference)."""

    mean: float | None
    ci95: list[float] | None
    n_units: Any
    unit: Any


@dataclass(frozen=True)
class Baselines:
    """metrics.json's ``baselines`` (evaluation.baselines): classical codecs at a rate on the same slices."""

    codecs: dict[str, CodecScore]
    best: str | None
    ours_minus_best: dict[str, Difference]
    bits_per_pixel: float | None
    rule: str


def _interval(value: Any) -> list[float] | None:
    return [float(v) for v in value] if value else None


@dataclass
class EvaluationResult:
    checkpoint: str
    preset: str
    task: str
    split: str
    data_root: str
    spatial_size: list[int]
    n_slices: int
    codebook: CodebookMetrics
    reconstruction: ReconstructionMetrics | None = None
    segmentation: SegmentationMetrics | None = None
    figures: dict[str, str] = field(default_factory=dict)
    out: str | None = None
    device: str = "cpu"
    seconds: float = 0.0
    epoch: int | None = None
    seed: int | None = None
    versions: dict = field(default_factory=dict)
    levels: list[dict] = field(default_factory=list)  # per code map: usage, perplexity, its bits per pixel
    conventions: dict = field(default_factory=dict)  # MONAI / per-case Dice, SSIM in region, per-patient stats
    joint: dict = field(default_factory=dict)  # joint-code usage and perplexity over the levels (models.rate.JointCodes)
    budget: dict = field(default_factory=dict)  # steps/epochs of the checkpoint and of its run (evaluate._budget)
    baselines: dict | None = None  # classical codecs at the model's rate (evaluation.baselines), when asked for
    perceptual: dict = field(default_factory=dict)  # LPIPS / rFID from user-supplied weights (evaluation.perceptual)

    @property
    def bits_per_pixel(self) -> float | None:
        """The rate: bits of one slice's codes (all levels) per input pixel."""
        return sum(level["bits_per_pixel"] for level in self.levels) if self.levels else None

    @property
    def effective_bits_per_pixel(self) -> float | None:
        """What the codes carry: per level, positions x entropy of its code histogram, per input pixel."""
        return sum(level["effective_bits_per_pixel"] for level in self.levels) if self.levels else None

    @property
    def verdict(self) -> str:
        """``pass``/``fail`` against the brief's mean SSIM > 0.6; ``n/a`` when nothing is reconstructed."""
        return self.reconstruction.verdict if self.reconstruction else "n/a"

    # --- typed views of the dict fields, for readers (the report): the fields keep what the file holds ---

    @property
    def ssim_region_mean(self) -> float | None:
        """SSIM averaged inside the region ``ssim_region`` names (evaluation.conventions.ssim_in_region)."""
        return _number(self.conventions.get("ssim_region_mean"))

    @property
    def ssim_region(self) -> str | None:
        """Which region ``ssim_region_mean`` averages over (body or foreground), None without a reconstruction."""
        value = self.conventions.get("ssim_region")
        return None if value is None else str(value)

    @property
    def dice_conventions(self) -> DiceConventions:
        c = self.conventions
        return DiceConventions(
            per_class_monai=_numbers(c.get("dice_per_class_monai")),
            mean_monai=_number(c.get("dice_mean_monai")),
            per_class_case3d=_numbers(c.get("dice_per_class_case3d")),
            mean_case3d=_number(c.get("dice_mean_case3d")),
            prostate_monai=_number(c.get("dice_prostate_monai")),
        )

    @property
    def per_patient(self) -> PerPatient:
        stats = self.conventions.get("per_patient") or {}
        cases = {str(p): _numbers(values) for p, values in (stats.get("cases") or {}).items()}
        named = {
            k: PatientStat(_number(v.get("mean")), _interval(v.get("ci95")))
            for k, v in stats.items()
            if isinstance(v, dict) and k != "cases"
        }
        return PerPatient(int(stats.get("n_patients") or 0), cases, named)

    @property
    def joint_usage(self) -> JointUsage:
        j = self.joint
        return JointUsage(
            codes_used=_number(j.get("joint_codes_used")),
            codes_possible=_number(j.get("joint_codes_possible")),
            usage_pct=_number(j.get("joint_usage_pct")),
            perplexity=_number(j.get("joint_perplexity")),
            present=any(k in j for k in ("joint_codes_used", "joint_usage_pct", "joint_perplexity")),
        )

    def joint_or_pooled(self) -> tuple[float | None, float | None, float | None]:
        """(codes used, usage %, perplexity) of the joint code tuples, each falling back to the pooled codebook's
        number where metrics.json has no joint key (an older file): comparable across one- and multi-level
        quantizers."""
        j, c = self.joint, self.codebook
        return (
            _number(j["joint_codes_used"]) if "joint_codes_used" in j else _number(c.codes_used),
            _number(j["joint_usage_pct"]) if "joint_usage_pct" in j else _number(c.codebook_usage_pct),
            _number(j["joint_perplexity"]) if "joint_perplexity" in j else _number(c.perplexity),
        )

    @property
    def level_health(self) -> list[LevelHealth]:
        return [
            LevelHealth(
                name=None if lv.get("name") is None else str(lv["name"]),
                codebook_size=_number(lv.get("codebook_size")),
                bits_per_pixel=_number(lv.get("bits_per_pixel")),
                effective_bits_per_pixel=_number(lv.get("effective_bits_per_pixel")),
                codes_used=_number(lv.get("codes_used")),
                codebook_usage_pct=_number(lv.get("codebook_usage_pct")),
                perplexity=_number(lv.get("perplexity")),
            )
            for lv in self.levels
        ]

    @property
    def codec_baselines(self) -> Baselines | None:
        section = self.baselines or {}
        if not section.get("codecs"):
            return None
        codecs = {
            str(name): CodecScore(
                _number(c.get("bpp_mean")), _number(c.get("fit_pct")), _number(c.get("ssim_mean")), _number(c.get("psnr_mean"))
            )
            for name, c in section["codecs"].items()
        }
        diff = {
            str(k): Difference(_number(d.get("mean")), _interval(d.get("ci95")), d.get("n_units"), d.get("unit"))
            for k, d in (section.get("ours_minus_best") or {}).items()
            if isinstance(d, dict)
        }
        best = section.get("best")
        return Baselines(
            codecs,
            None if best is None else str(best),
            diff,
            _number(section.get("bits_per_pixel")),
            str(section.get("rule", "")),
        )

    @property
    def lpips_mean(self) -> float | None:
        return _number(self.perceptual.get("lpips_mean"))

    @property
    def fid(self) -> float | None:
        return _number(self.perceptual.get("fid"))

    @property
    def run_steps(self) -> float | None:
        """Optimizer steps of the whole run the checkpoint comes from (evaluate._budget)."""
        return _number(self.budget.get("run_steps"))

    def to_dict(self) -> dict:
        """Flat, strict-JSON dict (non-finite floats are null); the ``metrics.json`` schema."""
        out = {
            "format_version": METRICS_FORMAT,
            "checkpoint": self.checkpoint,
            "preset": self.preset,
            "task": self.task,
            "split": self.split,
            "data_root": self.data_root,
            "spatial_size": list(self.spatial_size),
            "n_slices": self.n_slices,
            "ssim_threshold": SSIM_THRESHOLD,
            "verdict": self.verdict,
        }
        if self.reconstruction is not None:
            recon = self.reconstruction.to_dict()
            out.update({k: recon[k] for k in _RECON_KEYS})
        else:
            out.update({k: None for k in _RECON_KEYS})
        if self.segmentation is not None:
            out.update(self.segmentation.to_dict())
        out.update(strict_json(self.conventions))
        codebook = self.codebook.to_dict()
        counts = codebook.pop("code_counts")
        out.update(codebook)
        out.update(
            {
                "device": self.device,
                "seconds": json_float(self.seconds),
                "epoch": self.epoch,
                "seed": self.seed,
                "versions": dict(self.versions),
                "figures": dict(self.figures),
                "bits_per_pixel": json_float(self.bits_per_pixel),
                "effective_bits_per_pixel": json_float(self.effective_bits_per_pixel),
                **strict_json(self.joint),
                **strict_json(self.budget),
                **strict_json(self.perceptual),
                **({"baselines": strict_json(self.baselines)} if self.baselines else {}),
                "levels": strict_json(self.levels),
                "code_counts": counts,
            }
        )
        return out

    @classmethod
    def from_json(cls, data: dict) -> EvaluationResult:
        """The typed result of a ``metrics.json`` (``to_dict``'s output), so readers (the report) ask for
        ``result.codebook.perplexity`` rather than string keys; ``from_json(d).to_dict() == d`` for every key
        the file holds. The flat conventions, joint, budget and perceptual keys are sorted back by name."""
        known = {f for f in cls.__dataclass_fields__} | set(_RECON_KEYS) | set(_CODEBOOK_KEYS) | set(_TOP_KEYS)
        recon = None
        if data.get("ssim_mean") is not None:
            recon = ReconstructionMetrics(
                ssim_mean=_nan_if_null(data["ssim_mean"]),
                ssim_std=_nan_if_null(data.get("ssim_std")),
                ssim_median=_nan_if_null(data.get("ssim_median")),
                ssim_min=_nan_if_null(data.get("ssim_min")),
                ssim_max=_nan_if_null(data.get("ssim_max")),
                ssim_pass_rate=_nan_if_null(data.get("ssim_pass_rate")),
                psnr_mean=_nan_if_null(data.get("psnr_mean")),
                psnr_std=_nan_if_null(data.get("psnr_std")),
                psnr_infinite=int(data.get("psnr_infinite") or 0),
                mse_mean=_nan_if_null(data.get("mse_mean")),
                mae_mean=_nan_if_null(data.get("mae_mean")),
                n_slices=int(data["n_slices"]),
                ssim_threshold=float(data.get("ssim_threshold", SSIM_THRESHOLD)),
                ms_ssim_mean=_number(data.get("ms_ssim_mean")),
                ms_ssim_std=_number(data.get("ms_ssim_std")),
            )
        seg = None
        if "dice_per_class" in data:
            seg = SegmentationMetrics(
                _numbers(data["dice_per_class"]),
                {str(k): int(v) for k, v in (data.get("dice_slices_scored") or {}).items()},
                _number(data.get("dice_mean")),
                int(data["n_slices"]),
            )
        rest = {k: v for k, v in data.items() if k not in known}
        groups: dict[str, dict] = {"joint": {}, "budget": {}, "perceptual": {}, "conventions": {}}
        for key, value in rest.items():
            group = (
                "joint"
                if key.startswith("joint_")
                else "budget"
                if key in _BUDGET_KEYS
                else "perceptual"
                if key.startswith(("lpips", "fid"))
                else "conventions"
            )
            groups[group][key] = value
        codebook = CodebookMetrics(
            codebook_size=int(data.get("codebook_size") or 0),
            codes_used=int(data.get("codes_used") or 0),
            codebook_usage_pct=_nan_if_null(data.get("codebook_usage_pct")),
            perplexity=_nan_if_null(data.get("perplexity")),
            code_counts=list(data.get("code_counts") or []),
        )
        return cls(
            checkpoint=str(data.get("checkpoint") or ""),
            preset=str(data.get("preset", "?")),
            task=str(data.get("task", "?")),
            split=str(data.get("split", "?")),
            data_root=str(data.get("data_root") or ""),
            spatial_size=list(data.get("spatial_size") or []),
            n_slices=int(data["n_slices"]),
            codebook=codebook,
            reconstruction=recon,
            segmentation=seg,
            figures=dict(data.get("figures") or {}),
            device=str(data.get("device", "cpu")),
            seconds=float(data.get("seconds") or 0.0),
            epoch=data.get("epoch"),
            seed=data.get("seed"),
            versions=dict(data.get("versions") or {}),
            levels=list(data.get("levels") or []),
            baselines=data.get("baselines"),
            joint=groups["joint"],
            budget=groups["budget"],
            perceptual=groups["perceptual"],
            conventions=groups["conventions"],
        )

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        return write_json_atomic(path, self.to_dict(), indent=2)

    def summary_table(self) -> str:
        """A short plain-text table for the terminal."""
        rows = [("slices", f"{self.n_slices} ({self.split} split)")]
        r = self.reconstruction
        if r is not None:
            rows += [
                ("SSIM", f"{r.ssim_mean:.4f} +/- {r.ssim_std:.4f} (min {r.ssim_min:.3f})"),
                (f"SSIM > {SSIM_THRESHOLD}", f"{100 * r.ssim_pass_rate:.1f}% of slices -> {self.verdict.upper()}"),
                (
                    "PSNR (dB)",
                    "inf (all slices perfect)" if r.psnr_infinite == r.n_slices else f"{r.psnr_mean:.2f} +/- {r.psnr_std:.2f}",
                ),
                ("MSE / MAE", f"{r.mse_mean:.2e} / {r.mae_mean:.2e}"),
            ]
            if r.ms_ssim_mean is not None:
                rows.append(("MS-SSIM", f"{r.ms_ssim_mean:.4f} +/- {r.ms_ssim_std:.4f}"))
        s = self.segmentation
        if s is not None:
            rows.append(("Dice (foreground)", "n/a" if s.dice_mean is None else f"{100 * s.dice_mean:.2f}%"))
            rows += [(f"  {name}", "n/a" if v is None else f"{100 * v:.2f}%") for name, v in s.dice_per_class.items()]
        p = self.perceptual
        if p.get("lpips_mean") is not None:
            rows.append(("LPIPS", f"{p['lpips_mean']:.4f} +/- {p['lpips_std']:.4f} ({p['lpips_weights']['file']})"))
        if "fid" in p:
            rows.append(("rFID", f"{_f(p['fid'], 2)} over {p['fid_n']} slices ({p['fid_weights']['file']})"))
        c = self.codebook
        rows += [
            ("codes used", f"{c.codes_used} / {c.codebook_size} ({c.codebook_usage_pct:.1f}%)"),
            ("perplexity", f"{c.perplexity:.1f}"),
        ]
        if len(self.levels) > 1:
            rows += [
                (
                    f"  level {lv['name']}",
                    f"{lv['codes_used']} / {lv['codebook_size']} "
                    f"({lv['codebook_usage_pct']:.1f}%), perplexity {lv['perplexity']:.1f}",
                )
                for lv in self.levels
            ]
        if self.joint.get("joint_usage_pct") is not None and len(self.levels) > 1:
            rows.append(
                (
                    "joint codes",
                    f"{self.joint['joint_codes_used']} tuples ({self.joint['joint_usage_pct']:.1f}%), "
                    f"perplexity {self.joint['joint_perplexity']:.1f}",
                )
            )
        if self.bits_per_pixel is not None:
            effective = self.effective_bits_per_pixel
            rows.append(
                (
                    "rate",
                    f"{self.bits_per_pixel:.4g} bits per pixel nominal"
                    + (f", {effective:.4g} effective" if effective is not None else ""),
                )
            )
        for name, codec in ((self.baselines or {}).get("codecs") or {}).items():
            text = (
                (
                    f"SSIM {_f(codec['ssim_mean'])}, PSNR {_f(codec['psnr_mean'], 2)} dB, {_f(codec['bpp_mean'], 3)} bpp, "
                    f"fits {codec['fit_pct']:.0f}% of slices"
                )
                if codec["fit_pct"]
                else "does not fit: no quality is that small"
            )
            rows.append((f"{name} at this rate", text))
        if self.budget.get("run_steps") is not None:
            rows.append(
                (
                    "trained",
                    f"{self.budget['run_steps']} optimizer steps, {self.budget['run_epochs']} epochs "
                    f"(checkpoint: step {self.budget.get('steps')}, epoch {self.budget.get('epochs')})",
                )
            )
        width = max(len(k) for k, _ in rows)
        title = f"{self.preset} ({self.task} task) - {Path(self.checkpoint).name}"
        return "\n".join([title] + [f"  {k:<{width}}  {v}" for k, v in rows])


def _f(value, digits: int = 3) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"
