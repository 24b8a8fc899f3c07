"""Transforms, cached datasets and loaders."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from prostate_vq.data import INTENSITY_SCALING, BatchAugment, make_dataset, make_loader, slice_transforms
from prostate_vq.data.layout import image_dir
from prostate_vq.data.nifti import save_slice
from prostate_vq.errors import UserInputError


def test_items_follow_the_contract(phantom_root):
    ds = make_dataset(phantom_root, "train", "joint")
    assert len(ds) == 12 and len(ds.records) == 12
    item = ds[7]
    assert item["image"].shape == (1, 256, 128) and item["image"].dtype == torch.float32
    assert item["label"].shape == (1, 256, 128) and item["label"].dtype == torch.int64
    assert float(item["image"].min()) >= 0.0 and float(item["image"].max()) <= 1.0
    record = ds.records[7]
    assert (item["case"], item["week"], item["slice"]) == (record.case, record.week, record.slice)
    assert item["path"] == record.image.name
    assert ds.intensity == INTENSITY_SCALING


def test_wide_volume_and_trailing_dim_become_the_requested_size(phantom_root):
    transform = slice_transforms((256, 128), with_label=True)
    wide = {
        "image": image_dir(phantom_root, "train") / "case_001_week_0_slice_3.nii.gz",
        "label": phantom_root / "keras_slices_seg_train" / "seg_001_week_0_slice_3.nii.gz",
    }
    out = transform(wide)
    assert out["image"].shape == (1, 256, 128) and out["label"].shape == (1, 256, 128)
    # Centre crop keeps the pixel spacing: the 8 columns cut on each side are background only.
    from prostate_vq.data import load_slice

    raw_mask = load_slice(wide["label"], "mask")
    np.testing.assert_array_equal(out["label"][0].numpy(), raw_mask[:, 8:136])
    trailing = {
        "image": image_dir(phantom_root, "train") / "case_002_week_0_slice_0.nii.gz",
        "label": phantom_root / "keras_slices_seg_train" / "seg_002_week_0_slice_0.nii.gz",
    }
    assert transform(trailing)["image"].shape == (1, 256, 128)


def test_intensity_scaling_is_robust_per_slice(phantom_root):
    ds = make_dataset(phantom_root, "test", "image", cache=False)
    image = ds[2]["image"]
    lower, upper = INTENSITY_SCALING["lower"], INTENSITY_SCALING["upper"]
    share_at_one = float((image >= 0.999).float().mean())
    assert share_at_one <= (100 - upper) / 100 + 0.01  # clipped only above the upper percentile
    assert float((image <= 0.001).float().mean()) >= lower / 100


def test_smaller_spatial_size_zooms_rows_and_keeps_labels_integer(phantom_root, tiny_spatial):
    ds = make_dataset(phantom_root, "train", "mask", spatial_size=tiny_spatial)
    batch = next(iter(make_loader(ds, batch_size=12)))
    assert batch["image"].shape == (12, 1, *tiny_spatial)
    labels = batch["label"].unique().tolist()
    assert set(labels) <= set(range(6)) and {0, 1, 2} <= set(labels)


def test_cache_is_compact_and_equals_the_uncached_pipeline(phantom_root):
    cached = make_dataset(phantom_root, "validate", "joint")
    plain = make_dataset(phantom_root, "validate", "joint", cache=False)
    assert cached.images.dtype == torch.float16 and cached.labels.dtype == torch.uint8
    assert cached.cache_nbytes() == 6 * 256 * 128 * 3
    for k in range(len(cached)):
        a, b = cached[k], plain[k]
        assert torch.allclose(a["image"], b["image"], atol=1e-3)  # float16 storage
        assert torch.equal(a["label"], b["label"])


def test_loader_batches_and_plain_dataloader_agree(phantom_root):
    ds = make_dataset(phantom_root, "train", "image", max_slices=8)
    assert len(ds) == 8 and {r.case for r in ds.records} == {"001", "002"}  # evenly spaced subset
    ours = next(iter(make_loader(ds, batch_size=4)))
    plain = next(iter(DataLoader(ds, batch_size=4)))
    assert torch.equal(ours["image"], plain["image"]) and ours["case"] == plain["case"]
    assert torch.equal(ours["week"], plain["week"]) and ours["path"] == plain["path"]
    order_a = [b["path"] for b in make_loader(ds, 4, shuffle=True, seed=3)]
    order_b = [b["path"] for b in make_loader(ds, 4, shuffle=True, seed=3)]
    assert order_a == order_b


def test_image_task_carries_labels_only_when_masks_exist(phantom_root, tmp_path):
    assert "label" in make_dataset(phantom_root, "test", "image")[0]
    root = tmp_path / "images-only"
    shutil.copytree(image_dir(phantom_root, "test"), image_dir(root, "test"))
    item = make_dataset(root, "test", "image")[0]
    assert "label" not in item and item["image"].shape == (1, 256, 128)


def test_augmentation_is_random_bounded_and_keeps_labels_aligned(phantom_root):
    torch.manual_seed(0)
    ds = make_dataset(phantom_root, "train", "joint", augment=True)
    clean = make_dataset(phantom_root, "train", "joint")
    a, b = ds.batch(range(12)), ds.batch(range(12))
    assert not torch.equal(a["image"], b["image"])
    assert float(a["image"].min()) >= 0 and float(a["image"].max()) <= 1
    assert set(a["label"].unique().tolist()) <= set(range(6))
    # Labels move with the image: air stays dark, urine stays bright under the same random geometry.
    image, label = a["image"], a["label"]
    assert image[label == 3].mean() > 2 * image[label == 0].mean()
    assert not torch.equal(a["label"], clean.batch(range(12))["label"])


def test_flip_only_augmentation_is_an_exact_left_right_flip():
    augment = BatchAugment(flip_prob=1.0, affine_prob=0.0, intensity_prob=0.0)
    image, label = torch.rand(3, 1, 16, 8), torch.randint(0, 6, (3, 1, 16, 8))
    flipped, flipped_label = augment(image, label)
    assert torch.equal(flipped, image.flip(2)) and torch.equal(flipped_label, label.flip(2))


def test_mri_augmentation_changes_intensities_reproducibly_and_leaves_labels():
    """training.mri_augment: MONAI's bias field, Gibbs ringing, Rician noise and low resolution per slice, seeded
    from the batch generator; labels and the [0, 1] range are kept; alone it moves no geometry."""
    from prostate_vq.data.transforms import training_augment

    torch.manual_seed(0)
    image = torch.rand(16, 1, 32, 16).mul(0.5).add(0.25)
    label = torch.randint(0, 6, (16, 1, 32, 16))
    augment = training_augment(False, True)
    a, a_label = augment(image, label, generator=torch.Generator().manual_seed(3))
    b, _ = augment(image, label, generator=torch.Generator().manual_seed(3))
    c, _ = augment(image, label, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a_label, label)  # intensity only
    changed = (a - image).abs().flatten(1).amax(1) > 1e-4
    assert 0 < int(changed.sum()) < 16  # each transform fires with its own probability
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert training_augment(False, False) is None and training_augment(True, False).mri is None


def test_constant_slice_warns_and_becomes_zeros(phantom_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(phantom_root, root)
    target = image_dir(root, "test") / "case_004_week_0_slice_1.nii.gz"
    save_slice(np.full((256, 128), 7, dtype=np.int16), target)
    with pytest.warns(UserWarning, match="case_004_week_0_slice_1.nii.gz: constant slice"):
        ds = make_dataset(root, "test", "image")
    image = ds[1]["image"]
    assert torch.isfinite(image).all() and float(image.abs().max()) == 0.0


def test_bad_arguments_are_user_errors(phantom_root):
    with pytest.raises(UserInputError, match="unknown task"):
        make_dataset(phantom_root, "train", "segment")
    with pytest.raises(UserInputError, match="spatial size"):
        make_dataset(phantom_root, "train", "image", spatial_size=(0, 128))
    with pytest.raises(UserInputError, match="unknown split"):
        make_dataset(phantom_root, "training", "image")


def test_intensity_from_a_checkpoint_is_applied(phantom_root):
    narrow = dict(INTENSITY_SCALING, lower=20.0, upper=80.0)
    ds = make_dataset(phantom_root, "test", "image", intensity=narrow, cache=False)
    default = make_dataset(phantom_root, "test", "image", cache=False)
    assert ds.intensity["upper"] == 80.0
    assert float((ds[2]["image"] >= 0.999).float().mean()) > 0.15 > float((default[2]["image"] >= 0.999).float().mean())


def test_affine_grid_matches_torch():
    import torch.nn.functional as F

    from prostate_vq.data.transforms import _affine_grid

    theta = torch.randn(3, 2, 3)
    expected = F.affine_grid(theta, [3, 1, 20, 10], align_corners=False)
    assert torch.allclose(_affine_grid(theta, 20, 10), expected, atol=1e-5)
