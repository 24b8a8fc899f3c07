"""The sweep's rate-distortion view: every cell at its rate beside every codec at the same budgets.

Codec points come from each cell's first seed (codecs do not depend on the model's weights, only on the
budget); a codec is drawn at a budget only where every slice fits it (a mean over the slices that fit would
flatter it)."""

from __future__ import annotations

from pathlib import Path

from prostate_vq.reporting.tables import fmt, md_table
from prostate_vq.workflows.results import SweepResults, over_seeds

FIGURE = "rate_distortion.png"


def rd_points(results: SweepResults) -> tuple[list[dict], dict[str, list[dict]]]:
    """(our cells, {codec: points}) with mean SSIM/PSNR and bits per pixel."""
    ours: list[dict] = []
    codecs: dict[str, list[dict]] = {}
    seen: set[tuple[str, float]] = set()
    for cell in results.cells:
        done = results.of(cell)
        if not done:
            continue
        ssim, ssim_sd = over_seeds(done, "ssim_mean")
        psnr, psnr_sd = over_seeds(done, "psnr_mean")
        ours.append(
            {
                "name": cell.name,
                "bpp": over_seeds(done, "bits_per_pixel")[0],
                "effective_bpp": over_seeds(done, "effective_bits_per_pixel")[0],
                "ssim": ssim,
                "ssim_sd": ssim_sd,
                "psnr": psnr,
                "psnr_sd": psnr_sd,
                "seeds": len(done),
            }
        )
        baselines = next(iter(done.values())).metrics.get("baselines") or {}
        budget = baselines.get("bits_per_pixel")
        for name, c in (baselines.get("codecs") or {}).items():
            if budget is None or (name, round(budget, 6)) in seen or c.get("fit_pct") != 100.0:
                continue
            seen.add((name, round(budget, 6)))
            codecs.setdefault(name, []).append(
                {"budget": budget, "bpp": c["bpp_mean"], "ssim": c["ssim_mean"], "psnr": c["psnr_mean"]}
            )
    return ours, codecs


def rd_section(results: SweepResults, out: Path) -> list[str]:
    """The report's lines (figure and table), or none when no cell finished with an image score."""
    ours, codecs = rd_points(results)
    if not any(cell["ssim"] is not None for cell in ours):
        return []
    from prostate_vq.evaluation.figures import rate_distortion

    rate_distortion(ours, codecs, out / FIGURE)
    rows = [
        [
            f"`{c['name']}` ({c['seeds']} seeds)",
            fmt(c["bpp"], ".4g"),
            fmt(c["effective_bpp"], ".4g"),
            fmt(c["ssim"], ".4f"),
            fmt(c["psnr"], ".2f"),
        ]
        for c in ours
    ]
    for name, points in sorted(codecs.items()):
        rows += [
            [
                name,
                fmt(p["bpp"], ".4g") + f" (budget {fmt(p['budget'], '.4g')})",
                "",
                fmt(p["ssim"], ".4f"),
                fmt(p["psnr"], ".2f"),
            ]
            for p in sorted(points, key=lambda p: p["budget"])
        ]
    table = md_table(
        ["Coder", "Bits per pixel (nominal; codecs: mean file)", "Effective", "SSIM", "PSNR (dB)"],
        rows,
        ["l", "r", "r", "r", "r"],
    )
    return [
        "## Rate and distortion",
        "",
        f"![rate-distortion]({FIGURE})",
        "",
        table,
        "",
        "Our cells: mean over seeds at the nominal rate (effective: the entropy of the codes used). Codecs: at "
        "each cell's budget, the highest quality whose whole file fits, per slice; shown only where every slice "
        "fits.",
        "",
    ]
