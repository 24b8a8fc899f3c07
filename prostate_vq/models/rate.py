"""The rate of a code map: how many bits per input pixel a model may use to remember a slice, and how many
its codes really carry.

Variants are only comparable at equal rate (a /2 code map with K=512 stores 4x the bits of a /4 one), so
every table states it: sum over levels of (codes per level x log2 of that level's codebook size), divided
by the input's pixels. A level is one code map with its own codebook: RQ has `depth` levels on one grid,
VQ-VAE-2 a top level at half the bottom's resolution.

That nominal rate is an upper bound. The effective rate counts what the codes carry: per level, its positions x
the entropy (bits) of that level's code histogram, per input pixel. Multi-level quantizers are judged by their
joint codes (the tuple of a position's codes over the levels): pooling the levels' histograms counts 24 codes for
three 8-code RQ books whose 512 tuples are what a slice is coded with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from prostate_vq.models.code_stats import entropy_bits, perplexity, usage


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
        entropy = entropy_bits(c)
        rows.append(
            {
                "name": level.name,
                "grid": list(level.grid),
                "codebook_size": level.codebook_size,
                "codes_used": int((c > 0).sum()),
                "codebook_usage_pct": 100.0 * usage(c),
                "perplexity": perplexity(c),
                "bits_per_pixel": level.bits / (h * w),
                "entropy_bits": entropy,
                "effective_bits_per_pixel": level.grid[0] * level.grid[1] * entropy / (h * w),
            }
        )
    return rows


def effective_bits_per_pixel(levels: list[dict]) -> float | None:
    """Sum over levels of positions x entropy of the level's histogram, per input pixel (from `level_health`)."""
    return sum(lv["effective_bits_per_pixel"] for lv in levels) if levels else None


class JointCodes:
    """Distinct code tuples (one code per level at each position of the finest grid) and their histogram.

    `add(indices)` takes a model's index map: [B, h, w] for one level, [B, L, h, w] for L levels on one grid
    (RQ depths; VQ-VAE-2 repeats its top codes onto the bottom grid). Usage is distinct tuples seen over the most
    that could have been seen: min(product of the level sizes, positions seen)."""

    def __init__(self, sizes: list[int]):
        self.sizes = [int(k) for k in sizes]
        self.possible = math.prod(self.sizes)
        self.positions = 0
        self._keys: list[torch.Tensor] = []
        self._counts: list[torch.Tensor] = []

    def add(self, indices: torch.Tensor) -> None:
        idx = indices.long()
        if idx.ndim == 3:
            idx = idx[:, None]
        if idx.shape[1] != len(self.sizes):
            raise ValueError(f"{idx.shape[1]} index levels for code levels of sizes {self.sizes}")
        rows = idx.permute(0, 2, 3, 1).reshape(-1, idx.shape[1]).cpu()
        self.positions += rows.shape[0]
        if self.possible < 2**62:  # one mixed-radix integer per tuple
            key = torch.zeros(rows.shape[0], dtype=torch.long)
            for level, size in enumerate(self.sizes):
                key = key * size + rows[:, level]
            keys, counts = torch.unique(key, return_counts=True)
        else:
            keys, counts = torch.unique(rows, dim=0, return_counts=True)
        self._keys.append(keys)
        self._counts.append(counts)

    def _histogram(self) -> torch.Tensor:
        if not self._keys:
            return torch.zeros(0, dtype=torch.long)
        keys = torch.cat(self._keys)
        counts = torch.cat(self._counts)
        unique, inverse = torch.unique(keys, dim=0 if keys.ndim == 2 else None, return_inverse=True)
        self._keys = [unique]
        self._counts = [torch.zeros(unique.shape[0], dtype=torch.long).index_add_(0, inverse, counts)]
        return self._counts[0]

    def to_dict(self) -> dict:
        hist = self._histogram()
        used = int(hist.numel())
        reachable = min(self.possible, self.positions)
        entropy = entropy_bits(hist)
        return {
            "joint_codes_used": used,
            "joint_codes_possible": self.possible,
            "joint_usage_pct": 100.0 * used / reachable if reachable else None,
            "joint_perplexity": 2.0**entropy if used else None,
            "joint_entropy_bits": entropy if used else None,
        }
