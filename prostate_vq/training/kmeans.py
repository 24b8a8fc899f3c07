"""Seeded k-means++ in torch for ReFiT: batched, chunked distances, on whatever device the latents are.

Hand-written because vector-quantize-pytorch's k-means starts from random samples (no k-means++),
takes no generator (not reproducible) and builds the full N x K distance matrix; sklearn is not a
dependency and would force the latents through numpy on the CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from prostate_vq.models.quantizers import nearest_code


def _sq_dist_to(x: Tensor, c: Tensor) -> Tensor:
    return (x - c).pow(2).sum(1)


def kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Arthur & Vassilvitskii (2007) seeding: each next centre drawn with probability ~ D(x)^2."""
    n = x.shape[0]
    first = int(torch.randint(0, n, (1,), generator=generator, device=generator.device).item())
    centres = [x[first]]
    d2 = _sq_dist_to(x, centres[0])
    for _ in range(1, k):
        total = d2.sum()
        if total <= 0:  # fewer distinct points than k: repeat points, Lloyd keeps them harmless
            pick = int(torch.randint(0, n, (1,), generator=generator, device=generator.device).item())
        else:
            pick = int(torch.multinomial(d2 / total, 1, generator=generator).item())
        centres.append(x[pick])
        d2 = torch.minimum(d2, _sq_dist_to(x, x[pick]))
    return torch.stack(centres)


def kmeans(x: Tensor, k: int, iters: int = 20, seed: int = 0, cosine: bool = False, tol: float = 1e-6) -> Tensor:
    """Centroids [k, D] of `x` [N, D] (Lloyd after k-means++). `cosine` keeps centroids on the unit
    sphere (spherical k-means) for l2-normalised codebooks. Empty clusters take the worst-fit points."""
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"k-means needs [N, D] samples, got {list(x.shape)}")
    x = x.float()
    if cosine:
        x = F.normalize(x, dim=1)
    generator = torch.Generator(device=x.device).manual_seed(int(seed))
    centroids = kmeans_plus_plus(x, k, generator)
    for _ in range(iters):
        assign = nearest_code(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        empty = counts == 0
        new = sums / counts.clamp(min=1).unsqueeze(1)
        if bool(empty.any()):
            # Refill empty clusters with the points farthest from their centroid (deterministic).
            err = _sq_dist_to(x, centroids[assign])
            worst = err.topk(int(empty.sum())).indices
            new[empty] = x[worst]
        if cosine:
            new = F.normalize(new, dim=1)
        shift = (new - centroids).pow(2).sum().item()
        scale = new.pow(2).sum().item()
        centroids = new
        if shift <= tol * max(scale, 1e-12):
            break
    return centroids
