"""Penn-Fudan loading, split, boxes, distance targets and paired augmentation (real data when present)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from seg.instances.data import (
    InstanceAugment,
    InstanceSample,
    boxes_from_ids,
    ids_for_split,
    list_ids,
    load_instance_split,
    load_sample,
    paste_instances,
    relabel_sequential,
    resize_sample,
)
from seg.instances.targets import ENERGY_EDGES, cached_distance, instance_distance, quantise


def _annotated_boxes(root, image_id: str) -> list[tuple[int, int, int, int]]:
    text = (root / "Annotation" / f"{image_id}.txt").read_text(encoding="latin-1")
    return [
        tuple(int(v) for v in m)
        for m in re.findall(r"\(Xmin, Ymin\) - \(Xmax, Ymax\) : \((\d+), (\d+)\) - \((\d+), (\d+)\)", text)
    ]


def test_split_is_a_stable_partition(pennfudan_root):
    ids = list_ids(pennfudan_root)
    assert len(ids) == 150
    parts = {s: ids_for_split(pennfudan_root, s) for s in ("train", "val", "test")}
    assert sorted(sum(parts.values(), [])) == ids
    assert {s: len(v) for s, v in parts.items()} == {"train": 100, "val": 25, "test": 25}
    assert ids_for_split(pennfudan_root, "all") == ids


def test_missing_mask_drops_only_that_image(pennfudan_root, tmp_path):
    for sub in ("PNGImages", "PedMasks"):
        (tmp_path / sub).mkdir()
    keep = list_ids(pennfudan_root)[:3]
    for i in keep:  # symlinks: the dataset is never copied
        (tmp_path / "PNGImages" / f"{i}.png").symlink_to(pennfudan_root / "PNGImages" / f"{i}.png")
        if i != keep[1]:
            (tmp_path / "PedMasks" / f"{i}_mask.png").symlink_to(pennfudan_root / "PedMasks" / f"{i}_mask.png")
    assert list_ids(tmp_path) == [keep[0], keep[2]]


def test_sample_matches_annotation(pennfudan_root):
    for image_id in ("FudanPed00001", "PennPed00010"):
        sample = load_sample(pennfudan_root, image_id)
        annotated = _annotated_boxes(pennfudan_root, image_id)
        assert sample.image.dtype == np.uint8 and sample.image.shape[:2] == sample.instances.shape
        assert sample.num_instances == len(annotated)
        masks = sample.masks()
        assert masks.shape[0] == len(annotated) and masks.any(axis=(1, 2)).all()
        assert np.array_equal(masks.any(0), sample.foreground)
        for box, (x1, y1, x2, y2) in zip(sample.boxes(), annotated):
            # annotation is 1-based inclusive; ours 0-based with an exclusive max corner
            assert np.allclose(box, (x1 - 1, y1 - 1, x2, y2), atol=3)


def test_working_size_and_cached_distance(pennfudan_root):
    samples = load_instance_split(pennfudan_root, "val")
    assert len(samples) == 25 and all(s.image.shape[0] == 224 for s in samples)
    s = samples[0]
    dist = cached_distance(s.id, s.instances)
    assert np.array_equal(cached_distance(s.id, s.instances), dist)  # second call reads the cache
    assert np.all(dist[s.instances == 0] == 0) and dist.max() > 5
    assert np.abs(dist - instance_distance(s.instances)).max() < 0.1  # fp16 cache


def test_distance_has_a_valley_between_touching_instances():
    ids = np.zeros((20, 40), np.int32)
    ids[2:18, 2:20], ids[2:18, 20:38] = 1, 2
    dist = instance_distance(ids)
    assert dist[10, 19] == 0 and dist[10, 20] == 0  # both sides of the contact are boundary
    assert dist[10, 11] == pytest.approx(7.0) and dist[10, 29] == pytest.approx(7.0)
    levels = quantise(dist)
    assert levels.max() == np.searchsorted(ENERGY_EDGES, 7.0, side="right") - 1
    assert quantise(np.array([0.0, 0.99, 1.0, 100.0])).tolist() == [0, 0, 1, len(ENERGY_EDGES) - 1]


def test_boxes_and_relabel():
    ids = np.zeros((10, 10), np.int32)
    ids[1:4, 2:5], ids[6:9, 6:10], ids[0, 0] = 3, 7, 9
    relabelled = relabel_sequential(ids, min_area=2)
    assert relabelled.max() == 2 and relabelled[0, 0] == 0
    assert boxes_from_ids(relabelled).tolist() == [[2, 1, 5, 4], [6, 6, 10, 9]]


def test_augmentation_keeps_instances_consistent(pennfudan_root):
    sample = load_instance_split(pennfudan_root, "val")[1]
    sample.distance = cached_distance(sample.id, sample.instances)
    augment = InstanceAugment(size=(160, 160), min_area=40)
    rng = np.random.default_rng(0)
    dropped_some = False
    for _ in range(12):
        out = augment(sample, rng)
        assert out.image.shape == (160, 160, 3) and out.instances.shape == (160, 160)
        n = out.num_instances
        areas = np.bincount(out.instances.ravel(), minlength=n + 1)[1:]
        assert np.all(areas >= 40)  # slivers cut by the crop are dropped
        assert np.all(out.distance[out.instances == 0] == 0)
        assert len(out.boxes()) == n
        dropped_some |= n < sample.num_instances
    assert dropped_some


def test_flip_mirrors_image_and_ids():
    ids = np.zeros((8, 8), np.int32)
    ids[2:6, 0:3] = 1
    from seg.instances.data import InstanceSample

    image = np.zeros((8, 8, 3), np.uint8)
    image[..., 0] = np.arange(8)[None]
    s = InstanceSample("x", image, ids, instance_distance(ids))
    augment = InstanceAugment(size=(8, 8), scale=(1.0, 1.0), flip_p=1.0, min_area=1, color_jitter=0)
    out = augment(s, np.random.default_rng(0))
    assert np.array_equal(out.instances, ids[:, ::-1]) and np.array_equal(out.image[..., 0], image[:, ::-1, 0])
    assert np.array_equal(out.distance, s.distance[:, ::-1])


def test_resize_rescales_distance():
    ids = np.zeros((40, 40), np.int32)
    ids[5:35, 5:35] = 1
    from seg.instances.data import InstanceSample

    s = InstanceSample("x", np.zeros((40, 40, 3), np.uint8), ids, instance_distance(ids))
    half = resize_sample(s, (20, 20))
    assert half.distance.max() == pytest.approx(s.distance.max() / 2, abs=1)


def _painted(ids: np.ndarray, colour: int) -> InstanceSample:
    return InstanceSample("x", np.full((*ids.shape, 3), colour, np.uint8), ids, instance_distance(ids))


def test_copy_paste_covers_the_target_and_keeps_the_energy_exact():
    target_ids = np.zeros((40, 60), np.int32)
    target_ids[5:35, 4:20], target_ids[5:35, 30:40], target_ids[20:24, 52:56] = 1, 2, 3
    source_ids = np.zeros((40, 60), np.int32)
    source_ids[2:38, 12:26] = 1  # over the right part of target 1 and the gap beside it
    source_ids[18:26, 50:58] = 2  # covers all of target 3
    target, source = _painted(target_ids, 10), _painted(source_ids, 200)
    pasted_both = None
    for seed in range(20):  # a random half of the source's pedestrians: find the draw that takes both
        out = paste_instances(target, source, np.random.default_rng(seed), min_area=8)
        if out.image[20, 15, 0] == out.image[20, 54, 0] == 200:
            pasted_both = out
            break
    assert pasted_both is not None
    out = pasted_both
    covered = source_ids > 0
    assert np.all(out.image[covered] == 200) and np.all(out.image[~covered] == 10)
    assert np.all(out.instances[covered] > 0) and out.num_instances == 4  # 3 + 2 - the covered one
    # target 1 keeps its uncovered columns, target 2 is untouched, target 3 (fully covered) is gone
    kept = out.instances[5:35, 4:12]
    assert np.unique(kept).size == 1 and kept[0, 0] != out.instances[10, 15]
    assert np.array_equal(out.instances[5:35, 30:40] > 0, target_ids[5:35, 30:40] > 0)
    assert np.unique(out.instances[target_ids == 2]).size == 1
    # the cut pedestrian's distance now ends where the pasted one begins, as if computed on the result
    np.testing.assert_allclose(out.distance, instance_distance(out.instances), atol=1e-5)
    assert out.distance[20, 11] == 0 and target.distance[20, 11] > 0
    # target untouched by the call
    assert np.array_equal(target.instances, target_ids) and np.all(target.image == 10)


def test_copy_paste_takes_at_least_one_pedestrian_and_skips_what_it_cannot_paste():
    ids = np.zeros((20, 20), np.int32)
    ids[2:10, 2:10] = 1
    target = _painted(np.zeros((20, 20), np.int32), 0)
    for seed in range(8):
        assert paste_instances(target, _painted(ids, 99), np.random.default_rng(seed)).num_instances == 1
    assert paste_instances(target, _painted(np.zeros((20, 20), np.int32), 9), np.random.default_rng(0)) is target
    assert paste_instances(target, _painted(np.zeros((20, 30), np.int32), 9), np.random.default_rng(0)) is target


def test_copy_paste_shrink_pastes_smaller_pedestrians_anywhere_with_exact_energy():
    source_ids = np.zeros((60, 80), np.int32)
    source_ids[4:56, 10:30], source_ids[4:56, 30:44] = 1, 2  # two touching pedestrians, 52 px tall
    source = _painted(source_ids, 200)
    target = _painted(np.zeros((60, 80), np.int32), 10)
    heights, places = [], set()
    for seed in range(30):
        out = paste_instances(target, source, np.random.default_rng(seed), min_area=4, shrink=0.3)
        pasted = out.image[..., 0] == 200
        assert np.array_equal(pasted, out.instances > 0) and 1 <= out.num_instances <= 2
        rows, cols = np.nonzero(pasted)
        heights.append(rows.max() - rows.min() + 1)
        places.add((rows.min(), cols.min()))
        # nothing was in the target, so the energy is exactly that of the pasted ids (touching ones included)
        np.testing.assert_allclose(out.distance, instance_distance(out.instances), atol=1e-5)
    assert min(heights) < 30 and max(heights) <= 52 and len(places) > 10  # smaller, and not always in place
    # shrink 1 is the default: the pasted pedestrians stay where the source had them
    for seed in range(5):
        plain = paste_instances(target, source, np.random.default_rng(seed), min_area=4)
        same = paste_instances(target, source, np.random.default_rng(seed), min_area=4, shrink=1.0)
        assert np.array_equal(plain.instances, same.instances) and np.array_equal(plain.image, same.image)
        assert np.all(source_ids[plain.instances > 0] > 0)  # in place: only where the source had them
