"""Watershed post-processing on synthetic scenes with known answers."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from seg.instances.inference import components_from_foreground, merge_detections
from seg.instances.postprocess import PostprocessParams, instances_from_maps
from seg.instances.synthetic import disc_scene, ideal_maps, pedestrian_scene

SHAPE = (96, 128)
PARAMS = PostprocessParams(cut_level=5, min_size=30)


def _best_iou(truth: np.ndarray, pred: np.ndarray) -> list[float]:
    out = []
    for t in range(1, truth.max() + 1):
        a = truth == t
        out.append(
            max(((a & (pred == p)).sum() / (a | (pred == p)).sum() for p in range(1, pred.max() + 1)), default=0.0)
        )
    return out


def test_two_touching_discs_are_two_instances():
    truth = disc_scene(SHAPE, [(48, 45), (48, 83)], radius=20)  # centres 38 px apart: they overlap
    assert ((truth == 1) & np.roll(truth == 2, -1, axis=1)).any()  # touching
    labels, scores = instances_from_maps(*ideal_maps(truth), PARAMS)
    assert labels.max() == 2 and len(scores) == 2
    assert min(_best_iou(truth, labels)) > 0.9
    # the baseline the DWT must beat merges them
    cc, _ = components_from_foreground(ideal_maps(truth)[0], PARAMS)
    assert cc.max() == 1


def test_one_disc_is_one_instance_even_with_noise():
    truth = disc_scene(SHAPE, [(48, 64)], radius=25)
    labels, scores = instances_from_maps(*ideal_maps(truth, noise=0.15, seed=3), PARAMS)
    assert labels.max() == 1 and 0.5 < scores[0] <= 1.0
    assert _best_iou(truth, labels)[0] > 0.9


def test_empty_scene_has_no_instances():
    fg, energy = ideal_maps(np.zeros(SHAPE, np.int32))
    labels, scores = instances_from_maps(fg, energy, PARAMS)
    assert labels.max() == 0 and scores.shape == (0,)
    assert labels.shape == SHAPE and labels.dtype == np.int32


def test_tiny_blobs_are_dropped_and_unseeded_blobs_scored_lower():
    truth = disc_scene(SHAPE, [(48, 30), (20, 100), (70, 100)], radius=18)
    truth[truth == 2] = 0
    truth[8:11, 118:121] = 2  # a 9-pixel speck
    fg, energy = ideal_maps(truth)
    energy[truth == 3] = np.minimum(energy[truth == 3], 2.0)  # never reaches the cut
    labels, scores = instances_from_maps(fg, energy, PARAMS)
    assert labels.max() == 2  # the disc and the unseeded blob; the speck is gone
    assert labels[8:11, 118:121].max() == 0
    seeded, unseeded = scores[labels[48, 30] - 1], scores[labels[70, 100] - 1]
    assert unseeded < seeded


def test_pedestrian_scene_counts():
    for seed in range(3):
        truth = pedestrian_scene((224, 288), count=4, seed=seed)
        labels, _ = instances_from_maps(*ideal_maps(truth, noise=0.1, seed=seed), PostprocessParams())
        assert labels.max() == truth.max()


def test_small_seeds_are_flooded_by_their_neighbour():
    body = disc_scene(SHAPE, [(48, 50)], radius=20) > 0
    body[30:66, 68:76] = True  # a limb attached to the body
    fg = np.where(body, 0.99, 0.01).astype(np.float32)
    energy = np.where(body, 1.0, 0.0).astype(np.float32)
    energy[disc_scene(SHAPE, [(48, 50)], radius=10) > 0] = 8.0  # the body's deep core
    energy[45:50, 70:75] = 4.0  # a small local peak in the limb
    split, _ = instances_from_maps(fg, energy, PostprocessParams(cut_level=3, min_size=30, min_seed=0))
    merged, _ = instances_from_maps(fg, energy, PostprocessParams(cut_level=3, min_size=30, min_seed=50))
    assert split.max() == 2 and merged.max() == 1 and np.array_equal(merged > 0, body)


@pytest.mark.slow
def test_thorough_tuning_also_searches_the_foreground_threshold():
    from seg.instances.data import InstanceSample
    from seg.instances.task import DWTValidation

    samples, maps = [], []
    for seed in range(3):
        ids = pedestrian_scene(count=3, seed=seed)
        fg, energy = ideal_maps(ids)
        samples.append(InstanceSample(str(seed), np.zeros((*ids.shape, 3), np.uint8), ids))
        maps.append((np.where(ids > 0, 0.47, 0.01).astype(np.float32), energy))  # an under-confident network
    validation = DWTValidation(samples)
    quick, quick_metrics = validation.tune(maps)
    # nothing passes 0.5: only the alternatives (threshold 0.35) find the pedestrians, ranked low
    assert quick.fg_threshold == 0.5 and quick.alternatives and quick_metrics["mask_ap50"] == pytest.approx(1.0)
    assert validation.evaluate(maps, replace(quick, alternatives=False))["mask_ap50"] < 0.01
    params, metrics = validation.tune(maps, thorough=True)
    assert params.fg_threshold < 0.47 and metrics["mask_ap50"] == pytest.approx(1.0)
    assert not params.alternatives  # the partition alone is right: nothing for them to add
    labels, _ = instances_from_maps(*maps[0], params)
    assert labels.max() == samples[0].num_instances == 3


@pytest.mark.slow
def test_size_grids_scale_with_the_working_height():
    from seg.instances.data import InstanceSample
    from seg.instances.task import FINE_MIN_SEEDS, FINE_MIN_SIZES, MIN_SIZES, DWTValidation

    ids = pedestrian_scene(shape=(448, 576), count=3)
    validation = DWTValidation([InstanceSample("tall", np.zeros((448, 576, 3), np.uint8), ids)])
    assert validation.area_scale == 4.0  # sizes are px at 224 px height: 4x the pixels at 448
    maps = [ideal_maps(ids)]
    quick, _ = validation.tune(maps)
    params, metrics = validation.tune(maps, thorough=True)
    assert quick.min_size in {4 * m for m in MIN_SIZES}
    assert params.min_size in {4 * m for m in FINE_MIN_SIZES} and params.min_seed in {4 * m for m in FINE_MIN_SEEDS}
    assert metrics["mask_ap"] > 0.9


def _ap50(truth: np.ndarray, masks: np.ndarray, scores: np.ndarray) -> float:
    from seg.instances.coco_eval import InstanceEvaluator, ids_to_masks

    evaluator = InstanceEvaluator()
    evaluator.add(ids_to_masks(truth), masks, scores)
    return evaluator.compute()["mask_ap50"]


def test_alternatives_add_a_small_pedestrian_below_the_partition():
    from seg.instances.postprocess import ALTERNATIVE_SCORE_SCALE, ranked_candidates

    truth = disc_scene(SHAPE, [(48, 40), (40, 100)], radius=22)
    truth[truth == 2] = 0
    truth[disc_scene(SHAPE, [(40, 100)], radius=8) > 0] = 2  # a small, distant pedestrian (~200 px)
    fg, energy = ideal_maps(truth)
    params = PostprocessParams(cut_level=2, min_size=400, min_seed=0)
    labels, scores = instances_from_maps(fg, energy, params)
    assert labels.max() == 1  # the partition's size floor drops the small one
    _, _, plain_masks, plain_scores = ranked_candidates(fg, energy, params)
    assert np.array_equal(plain_masks, labels[None] == 1) and np.array_equal(plain_scores, scores)
    partition, _, masks, ranked = ranked_candidates(fg, energy, replace(params, alternatives=True))
    assert np.array_equal(partition, labels)
    assert np.array_equal(masks[0], labels == 1) and ranked[0] == scores[0]  # the partition comes first
    small = [i for i, m in enumerate(masks) if (m & (truth == 2)).sum() > 0.9 * (truth == 2).sum()]
    assert small and all(ranked[i] <= ALTERNATIVE_SCORE_SCALE < ranked[0] for i in small)
    assert _ap50(truth, plain_masks, plain_scores) == pytest.approx(0.5, abs=0.01)  # recall capped at 1/2
    assert _ap50(truth, masks, ranked) == pytest.approx(1.0)


def test_alternatives_split_a_merged_pair_without_duplicates():
    from seg.instances.coco_eval import mask_iou
    from seg.instances.postprocess import ALTERNATIVE_MAX_IOU, ranked_candidates

    truth = disc_scene(SHAPE, [(48, 45), (48, 83)], radius=20)
    # a network blind to the valley between them: energy of the union, saddle at level 6
    fg, energy = ideal_maps((truth > 0).astype(np.int32))
    merged_params = PostprocessParams(cut_level=5, min_size=30, min_seed=0, alternatives=True)
    labels, _ = instances_from_maps(fg, energy, merged_params)
    assert labels.max() == 1  # the cut at 5 merges the touching pair
    _, _, masks, scores = ranked_candidates(fg, energy, merged_params)
    assert len(masks) == len(scores) >= 3  # the merged blob, then each disc from the deeper cut
    best = mask_iou(truth[None] == np.arange(1, 3)[:, None, None], masks).max(axis=1)
    assert (best > 0.9).all()
    overlap = mask_iou(masks, masks)
    np.fill_diagonal(overlap, 0)
    assert overlap.max() < ALTERNATIVE_MAX_IOU  # no candidate listed twice
    assert _ap50(truth, masks, scores) > _ap50(truth, masks[:1], scores[:1])


def test_tuning_keeps_alternatives_only_when_they_help():
    from seg.instances.data import InstanceSample
    from seg.instances.task import DWTValidation

    clean = [pedestrian_scene(count=3, seed=s) for s in range(2)]
    validation = DWTValidation(
        [InstanceSample(str(i), np.zeros((*t.shape, 3), np.uint8), t) for i, t in enumerate(clean)]
    )
    params, metrics = validation.tune([ideal_maps(t) for t in clean])
    assert not params.alternatives and metrics["mask_ap"] > 0.9  # nothing to add: the partition is right
    # a tiny pedestrian in each scene that no size floor on the grid lets through
    with_small = [t.copy() for t in clean]
    for t in with_small:
        t[disc_scene(t.shape, [(5, 5)], radius=3) > 0] = t.max() + 1  # ~29 px, under every floor
    validation = DWTValidation(
        [InstanceSample(str(i), np.zeros((*t.shape, 3), np.uint8), t) for i, t in enumerate(with_small)]
    )
    params, metrics = validation.tune([ideal_maps(t) for t in with_small])
    assert params.alternatives and metrics["mask_ap50"] == pytest.approx(1.0)


def test_ranked_partition_is_exactly_the_plain_partition():
    from seg.instances.postprocess import ranked_candidates

    for seed in range(4):  # noisy maps: many small blobs, seeded and unseeded, around the size floor
        fg, energy = ideal_maps(pedestrian_scene(count=2 + seed, seed=seed), noise=0.3, seed=seed)
        params = PostprocessParams(min_size=300, alternatives=True)
        labels, scores = instances_from_maps(fg, energy, params)
        ranked_labels, ranked_scores, masks, candidate_scores = ranked_candidates(fg, energy, params)
        np.testing.assert_array_equal(ranked_labels, labels)
        np.testing.assert_array_equal(ranked_scores, scores)
        np.testing.assert_array_equal(
            masks[: len(scores)], labels[None] == np.arange(1, len(scores) + 1)[:, None, None]
        )
        assert len(candidate_scores) == len(masks) > len(scores)  # noise leaves alternatives to rank


def test_an_extra_pass_adds_what_the_main_maps_missed():
    from seg.instances.postprocess import ALTERNATIVE_SCORE_SCALE, ranked_candidates

    truth = disc_scene(SHAPE, [(48, 40), (40, 100)], radius=18)
    fg, energy = ideal_maps(truth)
    faint = truth == 2
    main_fg = np.where(faint, 0.2, fg).astype(np.float32)  # the main pass barely sees the second person
    params = PostprocessParams(cut_level=3, min_size=100, min_seed=0)
    labels, scores, masks, ranked = ranked_candidates(main_fg, energy, params)
    assert labels.max() == 1 and len(masks) == 1
    labels, scores, masks, ranked = ranked_candidates(main_fg, energy, params, [(fg, energy)])
    assert labels.max() == 1 and np.array_equal(masks[0], labels == 1)  # the partition is the main pass's
    assert len(masks) == 2  # the extra pass's copy of the first person is a duplicate, not listed again
    assert (masks[1] == faint).mean() > 0.99 and ranked[1] <= ALTERNATIVE_SCORE_SCALE < ranked[0]
    assert _ap50(truth, masks, ranked) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="size"):
        ranked_candidates(main_fg, energy, params, [(fg[:-1], energy[:-1])])


def test_an_enlarged_pass_fills_the_partitions_free_pixels_with_what_it_missed():
    from seg.instances.postprocess import FILL_SCORE_SCALE, fill_partition, partition

    truth = disc_scene(SHAPE, [(48, 40), (40, 100)], radius=18)
    truth[truth == 2] = 0
    truth[disc_scene(SHAPE, [(40, 100)], radius=8) > 0] = 2  # a small pedestrian (~200 px)
    truth[disc_scene(SHAPE, [(80, 100)], radius=9) > 0] = 3  # another one
    fg, energy = ideal_maps(truth)
    params = PostprocessParams(cut_level=2, min_size=400, min_seed=0)
    labels, scores = instances_from_maps(fg, energy, params)
    assert labels.max() == 1  # the size floor drops both small ones
    # the enlarged pass sees them deeper (its energy is in its own, larger pixels); it also sees the big
    # one, which is already there, and a blob over the big one's pixels, which has no free pixels to fill
    pass_truth = truth.copy()
    pass_truth[disc_scene(SHAPE, [(48, 40)], radius=10) > 0] = 4
    pass_fg, pass_energy = ideal_maps(pass_truth)
    filled, filled_scores = fill_partition(labels, scores, [(pass_fg, 2.0 * pass_energy)], params)
    assert filled.max() == 3 and len(filled_scores) == 3
    np.testing.assert_array_equal(filled[labels > 0], labels[labels > 0])  # the partition's pixels stay its own
    np.testing.assert_array_equal(filled_scores[:1], scores)
    for new, person in ((2, 2), (3, 3)):  # each small pedestrian, on its own pixels, after the partition's ids
        assert (filled == new).sum() == (truth == person).sum() and (filled[truth == person] == new).all()
    np.testing.assert_allclose(filled_scores[1:], FILL_SCORE_SCALE * 0.99, rtol=1e-5)  # their own score: mean fg
    assert _ap50(truth, filled[None] == np.arange(1, 4)[:, None, None], filled_scores) == pytest.approx(1.0)
    # the same through ``partition`` and ``ranked_candidates``; no fill maps: the plain partition
    np.testing.assert_array_equal(partition(fg, energy, params, [(pass_fg, 2.0 * pass_energy)])[0], filled)
    np.testing.assert_array_equal(partition(fg, energy, params)[0], labels)
    from seg.instances.postprocess import ranked_candidates

    for alternatives in (False, True):
        ranked_labels, ranked_scores, masks, _ = ranked_candidates(
            fg, energy, replace(params, alternatives=alternatives), (), [(pass_fg, 2.0 * pass_energy)]
        )
        np.testing.assert_array_equal(ranked_labels, filled)
        np.testing.assert_array_equal(masks[:3], filled[None] == np.arange(1, 4)[:, None, None])
    with pytest.raises(ValueError, match="size"):
        fill_partition(labels, scores, [(pass_fg[:-1], pass_energy[:-1])], params)


def test_a_fill_pass_leaves_a_partly_covered_instance_out():
    from seg.instances.postprocess import FILL_MIN_FREE, fill_partition

    truth = disc_scene(SHAPE, [(48, 60)], radius=20)
    fg, energy = ideal_maps(truth)
    params = PostprocessParams(cut_level=2, min_size=100, min_seed=0)
    labels, scores = instances_from_maps(fg, energy, params)
    # the pass finds a pedestrian shifted sideways: most of it is on the partition's pixels
    shifted = disc_scene(SHAPE, [(48, 72)], radius=20)
    assert ((shifted > 0) & (labels == 0)).sum() < FILL_MIN_FREE * (shifted > 0).sum()
    filled, filled_scores = fill_partition(labels, scores, [ideal_maps(shifted)], params)
    np.testing.assert_array_equal(filled, labels)
    np.testing.assert_array_equal(filled_scores, scores)
    # nothing found anywhere, or nothing in the partition: both are fine
    empty = np.zeros(SHAPE, np.float32)
    np.testing.assert_array_equal(fill_partition(labels, scores, [(empty, empty)], params)[0], labels)
    alone, alone_scores = fill_partition(np.zeros(SHAPE, np.int32), np.zeros(0, np.float32), [(fg, energy)], params)
    assert alone.max() == 1 and len(alone_scores) == 1 and (alone[truth > 0] == 1).all()


def _box_mask(shape: tuple[int, int], y0: int, x0: int, y1: int, x1: int, value: float = 0.9) -> np.ndarray:
    mask = np.zeros(shape, np.float32)
    mask[y0:y1, x0:x1] = value
    return mask


def test_merge_detections_groups_one_pedestrian_across_views_and_halves_the_unseen():
    shape = (60, 80)
    p, q = _box_mask(shape, 5, 5, 45, 25), _box_mask(shape, 10, 50, 50, 70)
    p_shifted, r = _box_mask(shape, 6, 6, 46, 26, 0.7), _box_mask(shape, 30, 30, 55, 45)
    plain = (np.array([0.9, 0.6], np.float32), np.stack([p, q]))
    mirrored = (np.array([0.4, 0.8], np.float32), np.stack([r, p_shifted]))
    scores, masks = merge_detections([plain, mirrored])
    np.testing.assert_allclose(scores, [0.85, 0.3, 0.2])  # p with p', q alone, r alone
    np.testing.assert_allclose(masks[0], (p + p_shifted) / 2)
    np.testing.assert_array_equal(masks[1], q)
    np.testing.assert_array_equal(masks[2], r)
    # two overlapping detections of one view stay two, whatever their overlap
    twice = (np.array([0.9, 0.8], np.float32), np.stack([p, p_shifted]))
    scores, _ = merge_detections([twice, (np.zeros(0, np.float32), np.zeros((0, *shape), np.float32))])
    np.testing.assert_allclose(scores, [0.45, 0.4])
    # a lower IoU bar joins what the default keeps apart
    near = _box_mask(shape, 5, 12, 45, 32)  # IoU with p: 13/27
    apart, _ = merge_detections([plain, (np.array([0.5], np.float32), near[None])])
    joined, _ = merge_detections([plain, (np.array([0.5], np.float32), near[None])], iou_threshold=0.4)
    assert len(apart) == 3 and len(joined) == 2 and joined[0] == pytest.approx(0.7)
    # one view is its own detections, best first; no detection at all is an empty set of the image's size
    scores, masks = merge_detections([(np.array([0.2, 0.7], np.float32), np.stack([q, p]))])
    np.testing.assert_allclose(scores, [0.7, 0.2])
    np.testing.assert_array_equal(masks[0], p)
    empty = (np.zeros(0, np.float32), np.zeros((0, *shape), np.float32))
    scores, masks = merge_detections([empty, empty])
    assert scores.shape == (0,) and masks.shape == (0, *shape)
