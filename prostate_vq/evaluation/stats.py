"""Statistics a methods reviewer asks of a variant comparison: mean and sd over seeds, and a paired difference
against a reference cell with a 95% bootstrap interval (same test slices, matched seeds).

The interval resamples the independent units (patients; with a single test patient its volumes, and with a
single volume its slices, the unit named beside every interval) together with the seeds, so it covers the
spread between patients and between training runs. Hand-written rather than scipy.stats.bootstrap: that one
resamples one axis, not units and seeds jointly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DRAWS = 4000


def mean_sd(values) -> tuple[float | None, float | None]:
    """Mean and sample sd (n - 1) of the finite values; sd None with fewer than two."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(float(x))], dtype=np.float64)
    if v.size == 0:
        return None, None
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None)


@dataclass
class PairedDifference:
    mean: float | None  # cell minus reference, averaged over seeds and units
    ci95: list[float] | None
    unit: str  # what the interval resamples: "patients", "volumes of 1 patient", "slices of 1 volume"
    n_units: int
    n_seeds: int

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.ci95 is not None and (self.ci95[0] > 0 or self.ci95[1] < 0)

    def to_dict(self) -> dict:
        return {
            "mean": self.mean,
            "ci95": self.ci95,
            "unit": self.unit,
            "n_units": self.n_units,
            "n_seeds": self.n_seeds,
            "significant": self.significant,
        }


def unit_of(rows: list[dict]) -> tuple[str, list[str]]:
    """The resampling unit for these test slices and each slice's unit key."""
    patients = sorted({str(r.get("case", "")) for r in rows})
    if len(patients) >= 2:
        return "patients", [str(r.get("case", "")) for r in rows]
    volumes = [f"{r.get('case', '')}/{r.get('week', '')}" for r in rows]
    if len(set(volumes)) >= 2:
        return f"volumes of {len(patients)} patient", volumes
    return "slices of 1 volume", [str(i) for i in range(len(rows))]


def paired_difference(
    cell: dict[int, dict[str, float]],
    reference: dict[int, dict[str, float]],
    units: dict[str, str],
    unit: str,
    draws: int = DRAWS,
    seed: int = 0,
) -> PairedDifference:
    """`cell[seed][slice_key]` and `reference[seed][slice_key]` are per-slice values of one metric; `units` maps a
    slice key to its unit. Only seeds both have, and slices both scored (finite), are paired."""
    seeds = sorted(set(cell) & set(reference))
    names = sorted(set(units.values()))
    if not seeds or not names:
        return PairedDifference(None, None, unit, len(names), len(seeds))
    table = np.full((len(seeds), len(names)), np.nan)  # mean difference per (seed, unit)
    index = {name: i for i, name in enumerate(names)}
    for s, seed in enumerate(seeds):
        sums, counts = np.zeros(len(names)), np.zeros(len(names))
        for key, value in cell[seed].items():
            ref = reference[seed].get(key)
            if key in units and ref is not None and math.isfinite(value) and math.isfinite(ref):
                sums[index[units[key]]] += value - ref
                counts[index[units[key]]] += 1
        table[s] = np.divide(sums, counts, out=np.full(len(names), np.nan), where=counts > 0)
    keep = ~np.isnan(table).any(0)
    table = table[:, keep]
    if table.size == 0:
        return PairedDifference(None, None, unit, 0, len(seeds))
    estimate = float(table.mean())
    n_seeds, n_units = table.shape
    if n_units < 2:
        return PairedDifference(estimate, None, unit, n_units, n_seeds)
    rng = np.random.default_rng(seed)
    s_pick = rng.integers(0, n_seeds, size=(draws, n_seeds))
    u_pick = rng.integers(0, n_units, size=(draws, n_units))
    means = table[s_pick[:, :, None], u_pick[:, None, :]].mean(axis=(1, 2))
    return PairedDifference(
        estimate, [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))], unit, n_units, n_seeds
    )
