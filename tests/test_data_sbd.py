"""Stanford Background loading: parsing, the split rule, the course layout, the real data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from seg.classes import SBD_PALETTE
from seg.data.sbd import (
    IMAGE_SIZE,
    class_frequencies,
    list_samples,
    load_semantic_split,
    parse_regions,
    read_label,
    regions_to_classes,
)
from seg.data.split import hash_fraction, split_of
from seg.io import save_label_png


def test_parse_regions_and_unknown_becomes_misc():
    regions = parse_regions(b"0 1 -1\n7 5 2\n")
    np.testing.assert_array_equal(regions, [[0, 1, -1], [7, 5, 2]])
    np.testing.assert_array_equal(regions_to_classes(regions), [[0, 1, 8], [7, 5, 2]])
    with pytest.raises(ValueError):
        parse_regions(b"0 1\n2\n")


def test_split_rule_is_stable_and_proportional():
    ids = [f"{i:07d}" for i in range(5000)]
    splits = [split_of(i) for i in ids]
    assert splits == [split_of(i) for i in ids]  # deterministic
    share = {s: splits.count(s) / len(ids) for s in ("train", "val", "test")}
    assert abs(share["train"] - 0.8) < 0.03 and abs(share["val"] - 0.1) < 0.02
    assert all(0 <= hash_fraction(i) < 1 for i in ids[:50])
    # adding or removing images does not move others: the rule looks at one id only
    assert split_of("0000051") == split_of("0000051")


def _write_course_layout(root, n=3, size=(40, 30)):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
                root / split / f"im{i}.jpg"
            )
            save_label_png(root / split / f"im{i}.png", np.full((size[1], size[0]), i, np.uint8), SBD_PALETTE)
    (root / "classes.txt").write_text(
        "\n".join(["sky", "tree", "road", "grass", "water", "building", "mountain", "foreground", "misc"])
    )


def test_course_layout(tmp_path):
    _write_course_layout(tmp_path)
    (tmp_path / "train" / "broken.jpg").write_bytes(b"not a jpeg")
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "train" / "badid.jpg")
    save_label_png(tmp_path / "train" / "badid.png", np.full((30, 40), 12, np.uint8), SBD_PALETTE)  # id >= 9
    samples = list_samples(tmp_path)
    assert {s.split for s in samples} == {"train", "val"}
    with pytest.warns(UserWarning, match="skipped 2"):
        train = load_semantic_split(tmp_path, "train")
    assert train.images.shape == (3, 3, IMAGE_SIZE[1], IMAGE_SIZE[0])
    assert [int(m.unique()[0]) for m in train.masks] == [0, 1, 2]
    assert any("broken" in s for s in train.skipped) and any("class id 12" in s for s in train.skipped)


def test_real_official_layout(sbd_root):
    samples = list_samples(sbd_root)
    assert len(samples) >= 600 and all(s.layout == "official" for s in samples)
    counts = {s: sum(x.split == s for x in samples) for s in ("train", "val", "test")}
    assert counts["train"] > 6 * counts["val"] > 0 and counts["test"] > 0
    val = load_semantic_split(sbd_root, "val")
    assert val.images.dtype == torch.uint8 and val.images.shape[1:] == (3, 224, 288)
    assert val.masks.shape[1:] == (224, 288) and int(val.masks.max()) <= 8
    freqs = class_frequencies(val.masks, 9)
    assert freqs.sum().item() == pytest.approx(1.0) and (freqs[:6] > 0.01).all()
    # portrait images are resized to 288x224 too; the label keeps its original size in read_label
    label = read_label(samples[0])
    assert label.dtype == np.uint8 and label.ndim == 2


def test_label_cache_is_keyed_by_content(sbd_root, tmp_path, monkeypatch):
    monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path / "cache"))
    sample = list_samples(sbd_root)[0]
    first = read_label(sample)
    cached = list((tmp_path / "cache" / "sbd-labels").glob("*.npy"))
    assert len(cached) == 1
    np.testing.assert_array_equal(read_label(sample), first)
