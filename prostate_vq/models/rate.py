"""The rate of a code map: how many bits per input pixel a model may use to remember a slice.

Variants are only comparable at equal rate (a /2 code map with K=512 stores 4x the bits of a /4 one), so
every table states it: sum over levels of (codes per level x log2 of that level's codebook size), divided
by the input's pixels. A level is one code map with its own codebook: RQ has `depth` levels on one grid,
VQ-VAE-2 a top level at half the bottom's resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CodeLevel:
    name: str
    grid: tuple[int, int]  # code map (h, w) of one slice
    codebook_size: int

    @property
    def bits(self) -> float:
        return self.grid[0] * self.grid[1] * math.log2(self.codebook_size)


def bits_per_pixel(levels: list[CodeLevel], spatial_size) -> float:
    """Bits of one slice's codes (all levels) per input pixel."""
    h, w = (int(s) for s in spatial_size)
    return sum(level.bits for level in levels) / (h * w)


def split_counts(counts: torch.Tensor, levels: list[CodeLevel]) -> list[torch.Tensor]:
    """Per-level histograms from a model's pooled `code_counts` (levels concatenated in order)."""
    sizes = [level.codebook_size for level in levels]
    if int(counts.numel()) != sum(sizes):
        raise ValueError(f"{counts.numel()} pooled counts do not match levels of sizes {sizes}")
    return list(torch.as_tensor(counts).split(sizes))


def level_health(counts: torch.Tensor, levels: list[CodeLevel], spatial_size) -> list[dict]:
    """Usage and perplexity per level, with each level's share of the rate (plain data, JSON-ready)."""
    h, w = (int(s) for s in spatial_size)
    rows = []
    for level, c in zip(levels, split_counts(counts, levels)):
        c = c.double()
        total = c.sum()
        p = c[c > 0] / total if total > 0 else c[:0]
        rows.append({"name": level.name, "grid": list(level.grid), "codebook_size": level.codebook_size,
                     "codes_used": int((c > 0).sum()), "codebook_usage_pct": 100.0 * float((c > 0).double().mean()),
                     "perplexity": float(torch.exp(-(p * p.log()).sum())) if total > 0 else 0.0,
                     "bits_per_pixel": level.bits / (h * w)})
    return rows
