"""Joint augmentation: image and mask move together; crop area and flip rate are as asked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seg.transforms import IGNORE, JointAugment, augment_samples, class_mix


def _blocky_pair(h: int = 96, w: int = 128):
    """An image whose red channel encodes the mask (20 * class), in large blocks."""
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((yy // 16) * 3 + (xx // 32)) % 9
    image = np.stack([mask * 20, np.full_like(mask, 7), xx * 255 // w], axis=-1).astype(np.uint8)
    return image, mask.astype(np.uint8)


def test_flip_only_is_exact_and_joint():
    image, mask = _blocky_pair()
    out = augment_samples(image, mask, crop_fraction=None, flip_p=1.0, n=2, seed=0)
    for img, msk in out:
        np.testing.assert_array_equal(img, image[:, ::-1])
        np.testing.assert_array_equal(msk, mask[:, ::-1])
    same = augment_samples(image, mask, crop_fraction=None, flip_p=0.0, n=2, seed=0)
    np.testing.assert_array_equal(same[0][0], image)


@pytest.mark.parametrize("fraction", [0.25, 1 / 16])
def test_crop_keeps_image_and_mask_aligned(fraction):
    image, mask = _blocky_pair()
    for img, msk in augment_samples(image, mask, crop_fraction=fraction, flip_p=0.5, n=8, seed=1):
        assert img.shape == image.shape and msk.shape == mask.shape  # resized back to the training size
        assert msk.dtype == np.uint8 and set(np.unique(msk)) <= set(range(9))  # nearest: no new labels
        decoded = np.round(img[..., 0] / 20.0).astype(int)
        assert (decoded == msk).mean() > 0.9  # only block borders may disagree (bilinear image)


def test_crop_area_fraction_and_horizontal_coordinate():
    """The blue channel holds x; a 1/4-area crop spans half of the width (aspect kept)."""
    image, mask = _blocky_pair()
    for img, _ in augment_samples(image, mask, crop_fraction=0.25, flip_p=0.0, n=5, seed=2):
        span = int(img[:, -1, 2].mean()) - int(img[:, 0, 2].mean())
        assert 0.4 * 255 < span < 0.6 * 255


def test_flip_rate_matches_probability_and_seed_reproducible():
    image, mask = _blocky_pair(16, 16)
    out = augment_samples(image, mask, crop_fraction=None, flip_p=0.25, n=64, seed=3)
    flipped = np.mean([not np.array_equal(img, image) for img, _ in out])
    assert 0.1 < flipped < 0.45
    again = augment_samples(image, mask, crop_fraction=None, flip_p=0.25, n=64, seed=3)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(out, again))


def test_joint_augment_on_tensors_and_errors():
    aug = JointAugment(crop_fraction=(0.25, 1.0), flip_p=0.5, size=(48, 64), color_jitter=0.2)
    img, msk = aug(torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8), torch.zeros(96, 128, dtype=torch.uint8))
    assert img.shape == (3, 48, 64) and img.dtype == torch.uint8 and msk.shape == (48, 64)
    with pytest.raises(ValueError):
        JointAugment(crop_fraction=1.5)
    with pytest.raises(ValueError):
        JointAugment(flip_p=2)
    with pytest.raises(ValueError):
        augment_samples(np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4), np.uint8), 0.25, 0.5, 1, 0)


def test_zoom_out_and_rotation_keep_image_and_mask_aligned_and_mark_new_pixels_ignored():
    from seg.transforms import IGNORE

    image, mask = _blocky_pair()
    augment = JointAugment(None, flip_p=0.5, size=(96, 128), zoom_out=2.0, rotate=10)
    img_t, mask_t = torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(mask)
    torch.manual_seed(3)
    ignored = []
    for _ in range(12):
        img, msk = augment(img_t, mask_t)
        assert img.shape == (3, 96, 128) and msk.shape == (96, 128) and msk.dtype == torch.uint8
        labelled = msk != IGNORE
        assert set(torch.unique(msk[labelled]).tolist()) <= set(range(9))  # nearest: no new labels
        decoded = torch.round(img[0].float() / 20.0).long()
        assert (decoded[labelled] == msk[labelled].long()).float().mean() > 0.75  # misaligned would be ~1/9
        ignored.append(float((~labelled).float().mean()))
    assert max(ignored) > 0.2  # zoomed out: a border nobody labelled
    assert min(ignored) < 0.05  # half the time it does not zoom out (rotated corners only)


def test_zoom_out_and_rotation_ranges_are_checked():
    with pytest.raises(ValueError, match="zoom-out"):
        JointAugment(zoom_out=0.5)
    with pytest.raises(ValueError, match="rotation"):
        JointAugment(rotate=90)


def test_class_mix_pastes_whole_classes_of_the_next_crop_with_their_labels():
    """Each crop's red channel encodes its labels (20 * class + crop), so a pasted pixel shows where it came from."""
    n, h, w = 4, 24, 32
    masks = torch.zeros(n, h, w, dtype=torch.uint8)
    for i in range(n):
        masks[i, :, : w // 2], masks[i, :, w // 2 :] = i, i + 4  # two classes a crop, none shared with the next
        masks[i, :2] = IGNORE
    red = (masks.int() * 20 + torch.arange(n)[:, None, None]) % 256  # the class and the crop it is from
    images = torch.stack([red, torch.zeros_like(red), torch.zeros_like(red)], 1).to(torch.uint8)
    before_images, before_masks = images.clone(), masks.clone()
    mixed_images, mixed_masks = class_mix(images, masks, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(images, before_images) and torch.equal(masks, before_masks)  # inputs untouched
    for i in range(n):
        j = (i + 1) % n
        changed = mixed_masks[i] != masks[i]
        assert changed.any()  # at least one class of the next crop came in
        # every changed pixel carries the next crop's label and colour, and whole classes came, never IGNORE
        assert torch.equal(mixed_masks[i][changed], masks[j][changed])
        assert torch.equal(mixed_images[i][:, changed], images[j][:, changed])
        for c in masks[j][changed].unique():
            assert torch.equal(changed & (masks[j] == c), masks[j] == c)
        assert torch.equal(mixed_masks[i][:2], masks[i][:2])
    same = class_mix(images, masks, 0.0, torch.Generator().manual_seed(0))
    assert same[0] is images and same[1] is masks
    # about half the crops at a share of 0.5, over many batches
    g, hits = torch.Generator().manual_seed(1), 0
    for _ in range(200):
        hits += int((class_mix(images, masks, 0.5, g)[1] != masks).flatten(1).any(1).sum())
    assert 0.4 < hits / (200 * n) < 0.6
