"""Sample checks: nearest training slice (memorisation) and distance between intensity distributions.

* Image tasks: similarity is SSIM (the evaluation module's convention: [0, 1] images, data range 1,
  11x11 Gaussian window); the nearest training slice is searched exactly by SSIM among the
  ``candidates`` training slices closest in L2 on 4x average-pooled images (SSIM against every
  training slice costs minutes on CPU for the full HipMRI split; the L2 shortlist almost always holds
  the SSIM-nearest slice). The distribution distance is the Wasserstein-1 distance between the slice's
  intensity histogram and the pooled training histogram (64 bins on [0, 1]; in intensity units, 0 =
  identical, 1 = maximal).
* Mask task: similarity is label agreement (share of pixels with the same label), distance the total
  variation between label frequencies.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from functools import reduce

import torch
import torch.nn.functional as F

BINS = 64
CHUNK = 512  # training slices converted to float32 at a time (the cache is float16)


def histograms(images: torch.Tensor, bins: int = BINS) -> torch.Tensor:
    """Per-slice normalised intensity histograms ``[N, bins]`` of ``[N, 1, H, W]`` images in [0, 1]."""
    flat = images.flatten(1).clamp(0, 1)
    index = (flat * bins).long().clamp(max=bins - 1)
    return _normalised_counts(index, bins)


def _normalised_counts(index: torch.Tensor, bins: int) -> torch.Tensor:
    """Row-wise frequencies of the integer values in ``index`` ``[N, P]``."""
    ones = torch.ones(index.shape, dtype=torch.float64)
    counts = torch.zeros(len(index), bins, dtype=torch.float64).scatter_add_(1, index, ones)
    return counts / counts.sum(1, keepdim=True)


def wasserstein1(hist: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """W1 between each row of ``hist`` and ``reference`` (histograms on the same [0, 1] bins)."""
    return (hist.cumsum(1) - reference.cumsum(0)).abs().sum(1) / hist.shape[1]


def label_frequencies(labels: torch.Tensor, classes: int = 6) -> torch.Tensor:
    return _normalised_counts(labels.flatten(1).long(), classes)


def _shortlist(queries: torch.Tensor, train: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``[N, k]`` of the training slices nearest in L2 after 4x average pooling."""
    pool = 4 if min(queries.shape[-2:]) >= 16 else 1  # 16x fewer pixels for the shortlist only
    q = F.avg_pool2d(queries.float(), pool).flatten(1)
    t = torch.cat([F.avg_pool2d(chunk.float(), pool).flatten(1) for chunk in train.split(CHUNK)])
    return torch.cdist(q, t).topk(min(k, len(t)), dim=1, largest=False).indices


def nearest_image(queries: torch.Tensor, train: torch.Tensor, candidates: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """``(best_ssim [N], index [N])`` of each query's SSIM-nearest training slice."""
    from prostate_vq.evaluation.metrics import reconstruction_per_slice

    shortlist = _shortlist(queries, train, candidates)
    best, index = torch.empty(len(queries)), torch.empty(len(queries), dtype=torch.long)
    for i, rows in enumerate(shortlist):
        ssim = reconstruction_per_slice(queries[i : i + 1].expand(len(rows), -1, -1, -1), train[rows].float())["ssim"]
        j = int(ssim.argmax())
        best[i], index[i] = float(ssim[j]), int(rows[j])
    return best, index


def nearest_mask(queries: torch.Tensor, train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(best_agreement [N], index [N])``: share of pixels whose label equals the nearest training mask's."""
    best, index = torch.empty(len(queries)), torch.empty(len(queries), dtype=torch.long)
    for i, query in enumerate(queries):
        agreement = (train == query.unsqueeze(0)).flatten(1).float().mean(1)
        j = int(agreement.argmax())
        best[i], index[i] = float(agreement[j]), j
    return best, index


def _training_mean(per_slice: Callable[[torch.Tensor], torch.Tensor], train: torch.Tensor) -> torch.Tensor:
    """The mean over the training slices of ``per_slice`` (``[n, ...]`` rows), ``CHUNK`` slices at a time."""
    return reduce(operator.add, (per_slice(chunk).sum(0) for chunk in train.split(CHUNK))) / len(train)


def sample_checks(samples: torch.Tensor, train: torch.Tensor, task: str, candidates: int = 16) -> dict:
    """Per-slice similarity to the nearest training slice and distribution distance.

    ``samples``/``train``: ``[N, 1, H, W]`` images in [0, 1] (image/joint tasks) or label maps (mask task).
    """
    if task == "mask":
        similarity, index = nearest_mask(samples, train)
        reference = _training_mean(label_frequencies, train)
        distance = 0.5 * (label_frequencies(samples) - reference).abs().sum(1)
    else:
        similarity, index = nearest_image(samples, train, candidates)
        pooled = _training_mean(histograms, train)
        distance = wasserstein1(histograms(samples), pooled)
    return {"similarity": similarity, "index": index, "distance": distance}
