"""Codebook health, one home: the histogram of an index map, usage, entropy and perplexity. Training's
validation, evaluation's metrics.json, the per-level rates and the quantizers all call these, so the numbers in
history.csv, metrics.json and the report are one computation.

An empty histogram (no codes seen) has no distribution: its perplexity is NaN (null in metrics.json, a dash in
the report), never 0 or 1, which would read as a collapsed codebook. Its entropy is 0 bits (it carries no
information, and rates add up)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def code_counts(indices: Tensor, num_codes: int) -> Tensor:
    """How often each code occurs in `indices` (any shape) as LongTensor[num_codes]."""
    return torch.bincount(indices.reshape(-1).long(), minlength=num_codes)


def usage(counts) -> float:
    """Share of codes used at least once (NaN for a codebook of no codes)."""
    c = torch.as_tensor(counts).reshape(-1)
    return float((c > 0).double().mean()) if c.numel() else math.nan


def entropy_bits(counts) -> float:
    """Entropy in bits of a code histogram (0 for an empty one)."""
    c = torch.as_tensor(counts).double().reshape(-1)
    total = c.sum()
    if total <= 0:
        return 0.0
    p = c[c > 0] / total
    return float(-(p * torch.log2(p)).sum())


def perplexity(counts) -> float:
    """2^H (= exp of the entropy in nats): the effective number of codes in use, K for uniform use of K codes;
    NaN for an empty histogram (see the module's docstring)."""
    c = torch.as_tensor(counts)
    return 2.0 ** entropy_bits(c) if float(c.sum()) > 0 else math.nan
