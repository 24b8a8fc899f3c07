"""Training's datasets (train and validate, checked for leaks) and their loader settings: the loader itself is
prostate_vq.data.make_loader, the one for the whole package; `loader_shard` says which part a torchrun rank reads."""

from __future__ import annotations

import logging
from pathlib import Path

from prostate_vq.errors import UserInputError
from prostate_vq.runtime.distributed import DistContext
from prostate_vq.schema import TrainingConfig

log = logging.getLogger("prostate_vq.training")


def load_datasets(root: Path, task: str, training: TrainingConfig, max_slices: int | None):
    """Cached train (augmented if the config says so) and validation datasets; bad data -> UserInputError."""
    from prostate_vq.data import make_dataset
    from prostate_vq.data.transforms import training_augment

    size = tuple(int(s) for s in training.spatial_size)
    augment = training_augment(bool(training.augment), bool(training.mri_augment))
    try:
        train_ds = make_dataset(root, "train", task, spatial_size=size, augment=augment or False, max_slices=max_slices)
        val_ds = make_dataset(root, "validate", task, spatial_size=size, augment=False, max_slices=max_slices)
    except RuntimeError as error:
        # MONAI's Compose wraps a transform's DataError in RuntimeError: surface the user's error (exit 2).
        cause = _user_error_in_chain(error)
        if cause is None:
            raise
        raise cause from None
    for split, ds in (("train", train_ds), ("validate", val_ds)):
        if len(ds) == 0:
            raise UserInputError(f"no {split} slices found (keras_slices_{split} is empty)", root)
    warn_if_leaking(train_ds, val_ds, root)
    return train_ds, val_ds


def warn_if_leaking(train_ds, val_ds, root) -> list[str]:
    """The check `manifest --check` makes, said once at the start of training: a patient in both the train and
    the validate split makes model selection optimistic (a warning, not a refusal: it can be deliberate)."""
    shared = sorted({r.case for r in train_ds.records} & {r.case for r in val_ds.records})
    if shared:
        log.warning(
            "%s: patients in both train and validate: %s; validation scores (and the model kept) are "
            "optimistic - split by patient (prostate-vq manifest --resplit)",
            root,
            ", ".join(shared[:10]) + (f" and {len(shared) - 10} more" if len(shared) > 10 else ""),
        )
    return shared


def _user_error_in_chain(error: BaseException) -> UserInputError | None:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, UserInputError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def loader_shard(dist_ctx: DistContext) -> tuple[int, int] | None:
    """make_loader's ``shard`` for this process: (rank, world size) under torchrun, None in one process."""
    return (dist_ctx.rank, dist_ctx.world_size) if dist_ctx.enabled else None


def first_batch(dataset, device) -> dict:
    """A one-slice batch (image and label) for model summaries."""
    item = dataset[0]
    return {k: item[k].unsqueeze(0).to(device) for k in ("image", "label") if k in item}
