"""HipMRI data: layout discovery, slice loading, MONAI transforms, cached datasets, manifests,
the demo phantom and the volume importer.

Heavy modules (torch, MONAI, SimpleITK) load on first use, so ``from prostate_vq.data import SPLITS``
stays instant.
"""

from __future__ import annotations

import importlib

from prostate_vq.data.layout import LABEL_NAMES, NUM_CLASSES, SPLITS, SliceRecord, discover

_LAZY = {
    "load_slice": "prostate_vq.data.nifti",
    "INTENSITY_SCALING": "prostate_vq.data.transforms",
    "GEOMETRY": "prostate_vq.data.transforms",
    "BatchAugment": "prostate_vq.data.transforms",
    "slice_transforms": "prostate_vq.data.transforms",
    "SliceDataset": "prostate_vq.data.dataset",
    "TASKS": "prostate_vq.data.layout",
    "make_dataset": "prostate_vq.data.dataset",
    "make_loader": "prostate_vq.data.dataset",
    "collate_batch": "prostate_vq.data.dataset",
    "default_data_root": "prostate_vq.data.cache",
    "synthesize": "prostate_vq.data.phantom",
    "build_manifest": "prostate_vq.data.manifest",
    "check_manifest": "prostate_vq.data.manifest",
    "import_volume": "prostate_vq.data.importer",
}

__all__ = ["LABEL_NAMES", "NUM_CLASSES", "SPLITS", "SliceRecord", "discover", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'prostate_vq.data' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
