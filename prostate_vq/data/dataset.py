"""Datasets of HipMRI slices, cached as two stacked tensors, and the DataLoader helper.

Not MONAI's CacheDataset: it keeps one dict of MetaTensors per slice (about 2.5x the memory and a
Python object walk per item); here the deterministic transform output is stored as one float16 image
tensor and one uint8 label tensor (96 KiB per 256x128 slice), and random augmentation runs per batch
after the cache.
"""

from __future__ import annotations

import os
from collections.abc import Sized
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from prostate_vq.data.layout import TASKS, SliceRecord, discover
from prostate_vq.data.transforms import GEOMETRY, INTENSITY_SCALING, BatchAugment, slice_transforms
from prostate_vq.errors import UserInputError
from prostate_vq.schema import DEFAULT_SPATIAL_SIZE


class SliceDataset(Dataset):
    """Items are dicts: ``image`` float32 [1, H, W] in [0, 1], ``label`` int64 [1, H, W] (when masks are
    used), ``case``, ``week``, ``slice``, ``path`` (image file name). ``records`` lists the slices in item
    order. Implements ``__getitems__`` so a DataLoader fetches (and augments) a whole batch at once."""

    def __init__(
        self,
        records: list[SliceRecord],
        spatial_size=DEFAULT_SPATIAL_SIZE,
        with_label: bool = True,
        augment: bool | BatchAugment = False,
        cache: bool = True,
        cache_threads: int | None = None,
        intensity: dict | None = None,
        progress: bool = False,
    ):
        self.records = list(records)
        self.spatial_size = tuple(int(n) for n in spatial_size)
        self.with_label = with_label
        self.intensity = dict(intensity or INTENSITY_SCALING)
        if self.intensity.get("method") != INTENSITY_SCALING["method"]:
            raise UserInputError(f"unsupported intensity scaling {self.intensity.get('method')!r}")
        self.geometry = dict(GEOMETRY)
        self.augment = BatchAugment() if augment is True else (augment or None)
        self.transform = slice_transforms(self.spatial_size, with_label, self.intensity)
        self.images: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        if cache:
            self._fill_cache(cache_threads, progress)

    def __len__(self) -> int:
        return len(self.records)

    def _prepare(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        record = self.records[index]
        data: dict[str, Path | None] = {"image": record.image}
        if self.with_label:
            data["label"] = record.mask
        out = self.transform(data)
        return out["image"], out.get("label")

    def _fill_cache(self, threads: int | None, progress: bool = False) -> None:
        n, (h, w) = len(self.records), self.spatial_size
        self.images = torch.empty((n, 1, h, w), dtype=torch.float16)
        self.labels = torch.empty((n, 1, h, w), dtype=torch.uint8) if self.with_label else None

        def fill(index):
            image, label = self._prepare(index)
            self.images[index] = image
            if label is not None:
                self.labels[index] = label

        # Threads overlap gzip decompression and numpy work (both release the GIL); map() re-raises
        # the first DataError in item order.
        threads = threads or min(4, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=threads) as pool:
            done = pool.map(fill, range(n))
            if progress:
                from tqdm import tqdm

                done = tqdm(done, total=n, desc=f"caching {n} slices", unit="slice", leave=False)
            for _ in done:
                pass

    @property
    def cached(self) -> bool:
        return self.images is not None

    def cache_nbytes(self) -> int:
        tensors = [t for t in (self.images, self.labels) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def batch(self, indices) -> dict:
        """One collated batch: ``image`` [B, 1, H, W], ``label`` [B, 1, H, W] and per-slice metadata lists."""
        indices = [int(i) for i in indices]
        if self.images is not None:  # cached
            index = torch.as_tensor(indices, dtype=torch.long)
            image = self.images.index_select(0, index).float()
            label = self.labels.index_select(0, index) if self.labels is not None else None
        else:
            prepared = [self._prepare(i) for i in indices]
            image = torch.stack([p[0] for p in prepared]).float()
            # with_label: the transform gives every slice a label (slice_transforms' "label" key)
            labels = [p_label for _, p_label in prepared if p_label is not None]
            label = torch.stack(labels) if self.with_label else None
        if self.augment is not None:
            image, label = self.augment(image, label)
        records = [self.records[i] for i in indices]
        batch = {
            "image": image,
            "case": [r.case for r in records],
            "week": torch.tensor([r.week for r in records]),
            "slice": torch.tensor([r.slice for r in records]),
            "path": [r.image.name for r in records],
        }
        if label is not None:
            batch["label"] = label.long()
        return batch

    def __getitems__(self, indices) -> list[dict]:
        batch = self.batch(indices)
        items = _Items(_item(batch, k, self.records[int(i)]) for k, i in enumerate(indices))
        items.batch = batch
        return items

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        return self.__getitems__([index % len(self)])[0]


class _Items(list):
    """Per-item dicts that also carry the already-collated batch, so ``make_loader`` skips re-stacking."""

    batch: dict


def _item(batch: dict, k: int, record: SliceRecord) -> dict:
    item = {
        "image": batch["image"][k],
        "case": record.case,
        "week": record.week,
        "slice": record.slice,
        "path": record.image.name,
    }
    if "label" in batch:
        item["label"] = batch["label"][k]
    return item


def collate_batch(items):
    """The batch `__getitems__` already built (skips re-stacking); any other list of dicts: default_collate."""
    if isinstance(items, _Items):
        return items.batch
    return torch.utils.data.default_collate(items)


def _subset(records: list[SliceRecord], max_slices: int | None) -> list[SliceRecord]:
    """At most ``max_slices`` records, evenly spaced so that every case and position stays represented."""
    if max_slices is None or max_slices >= len(records):
        return records
    if max_slices < 1:
        raise UserInputError(f"--max-slices must be at least 1, not {max_slices}")
    picks = np.unique(np.linspace(0, len(records) - 1, max_slices).round().astype(int))
    return [records[i] for i in picks]


def make_dataset(
    root,
    split: str,
    task: str = "image",
    spatial_size=DEFAULT_SPATIAL_SIZE,
    augment: bool | BatchAugment = False,
    cache: bool = True,
    max_slices: int | None = None,
    intensity: dict | None = None,
    progress: bool = False,
) -> SliceDataset:
    """The slices of one split. Labels are included for the mask/joint tasks (masks then required) and
    for the image task whenever every slice has a mask (evaluation reports per-organ figures).
    ``intensity``: the scaling saved in a checkpoint (default INTENSITY_SCALING); ``progress``: a tqdm
    bar while caching."""
    if task not in TASKS:
        raise UserInputError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    spatial_size = tuple(spatial_size)
    if len(spatial_size) != 2 or min(spatial_size) < 1:
        raise UserInputError(f"spatial size must be two positive integers (rows cols), not {spatial_size}")
    records = discover(root, (split,), require_masks=task in ("mask", "joint"))[split]
    records = _subset(records, max_slices)
    with_label = all(r.mask is not None for r in records)
    return SliceDataset(
        records, spatial_size, with_label=with_label, augment=augment, cache=cache, intensity=intensity, progress=progress
    )


def loader_seed(seed: int, epoch: int = 0) -> int:
    """The seed of one epoch's shuffle (and worker augmentation): a function of (seed, epoch) only, so a resumed
    run sees exactly the batches the uninterrupted run would have seen."""
    return int(seed) * 100_003 + int(epoch)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = False,
    num_workers: int = 0,
    drop_last: bool = False,
    seed: int | None = None,
    pin_memory: bool = False,
    *,
    epoch: int = 0,
    shard: tuple[int, int] | None = None,
    persistent_workers: bool | None = None,
) -> DataLoader:
    """The one DataLoader of the package (training, evaluation, the prior, tools): whole batches through
    ``__getitems__`` (``collate_batch`` passes them on without re-stacking).

    ``seed``/``epoch``: the generator of the shuffle order and of the workers' seeds is ``loader_seed(seed,
    epoch)``, so training's fresh loader per epoch is reproducible on resume. ``shard=(rank, world_size)`` under
    torchrun: with ``shuffle`` torch's DistributedSampler (seeded, ``set_epoch``), without it MONAI's sampler
    without padding, so every validation slice counts exactly once. ``persistent_workers`` defaults to keeping
    workers between passes when there are any (pass False for a loader built per epoch)."""
    generator = None
    if seed is not None:
        generator = torch.Generator()
        generator.manual_seed(loader_seed(seed, epoch))
    sampler: Sampler | None = None
    if shard is not None and shard[1] > 1:
        rank, world_size = shard
        if shuffle:
            distributed: DistributedSampler = DistributedSampler(
                dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=int(seed or 0)
            )
            distributed.set_epoch(epoch)
            sampler = distributed
        else:
            from monai.data import DistributedSampler as UnpaddedSampler

            sampler = UnpaddedSampler(dataset, even_divisible=False, num_replicas=world_size, rank=rank, shuffle=False)
    elif shuffle:
        if not isinstance(dataset, Sized):
            raise TypeError(f"a shuffled loader needs a dataset with a length, got {type(dataset).__name__}")
        sampler = RandomSampler(dataset, generator=generator)
    if persistent_workers is None:
        persistent_workers = num_workers > 0
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=generator,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
        collate_fn=collate_batch,
    )
