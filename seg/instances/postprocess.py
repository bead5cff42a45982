"""From the DWT's two heads to instance ids: cut the energy, seed, grow back by watershed.

Seeds are the connected components of foreground pixels whose expected energy level is
at least ``cut_level``: deep inside a pedestrian, away from the valley where two touch.
Watershed on the negated energy grows each seed back over the predicted foreground.
Foreground blobs that got no seed (thin or small people) become instances of their own
if they are large enough, with a lower score.

COCO AP ranks every candidate an image yields, so a partition is not the best a
detection-free method can hand it: ``ranked_candidates`` adds, below the partition,
the instances that other settings (a shallower or deeper cut, a lower foreground
threshold, no size floor, an enlarged pass) would have produced. Scored 0.3x their own
score, they rank below the partition's instances (0.6-1 on Penn-Fudan's val and test), so
they extend the end of the precision-recall curve; the instance-id map stays the partition.

A separate pass on the image enlarged (``fill_partition``) sees pedestrians too small for the
working height; those it finds on pixels the partition left empty join the partition itself, so
the id map shows them, scored at half their own score (under the 0.5 at which counting starts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from seg.instances.data import relabel_sequential

DEFAULT_CUT_LEVEL = 2  # the three defaults below were chosen on val for checkpoints/dwt (tune-instances)
DEFAULT_MIN_SIZE = 600  # pixels at the working height (224 px)
DEFAULT_FG_THRESHOLD = 0.5
DEFAULT_MIN_SEED = 300  # seeds smaller than this (px at the working height) are flooded by their neighbours
#: alternatives' scores are their own score times this: below every partition instance's
#: usual score (0.6-1) and below the 0.5 at which counting and best-IoU stop looking
ALTERNATIVE_SCORE_SCALE = 0.3
#: an alternative this close (mask IoU) to a candidate already listed is a duplicate
ALTERNATIVE_MAX_IOU = 0.85
#: ``fill_partition``: an instance of an enlarged pass joins the partition when at least this share of
#: its pixels is free and its mask IoU with every instance already there is below ``FILL_MAX_IOU``
FILL_MIN_FREE = 0.6
FILL_MAX_IOU = 0.2
#: its score is its own times this; its minimum size the partition's times ``FILL_SIZE_FACTOR``
#: (the pass is for the small pedestrians the floor drops); both chosen on the shipped DWT's val maps
FILL_SCORE_SCALE = 0.5
FILL_SIZE_FACTOR = 0.2


@dataclass(frozen=True)
class PostprocessParams:
    cut_level: float = DEFAULT_CUT_LEVEL
    min_size: int = DEFAULT_MIN_SIZE
    fg_threshold: float = DEFAULT_FG_THRESHOLD
    min_seed: int = DEFAULT_MIN_SEED
    #: also rank the alternatives below the partition (``ranked_candidates``); chosen on val
    alternatives: bool = False

    def scaled(self, area_ratio: float) -> PostprocessParams:
        """Same parameters for a map ``area_ratio`` times as many pixels as the working size."""
        return replace(
            self, min_size=max(1, round(self.min_size * area_ratio)), min_seed=round(self.min_seed * area_ratio)
        )

    def alternative_settings(self) -> list[PostprocessParams]:
        """The partitions mined for alternatives: the same one without its size floor, a cut two
        levels shallower (merges over-split people) and two deeper (splits merged ones), and a
        foreground threshold 0.15 lower (grows faint, partly hidden people)."""
        small = dict(min_size=max(1, self.min_size // 8), alternatives=False)
        return [
            replace(self, **small),
            replace(self, cut_level=max(self.cut_level - 2, 0.5), **small),
            replace(self, cut_level=self.cut_level + 2, **small),
            replace(self, fg_threshold=max(self.fg_threshold - 0.15, 0.05), **small),
        ]


def expected_energy(energy_probs: np.ndarray) -> np.ndarray:
    """(K, H, W) level probabilities -> (H, W) expected level; smoother than the argmax for watershed."""
    levels = np.arange(energy_probs.shape[0], dtype=np.float32)
    return np.tensordot(levels, energy_probs.astype(np.float32, copy=False), axes=1)


def instances_from_maps(
    fg_prob: np.ndarray, energy: np.ndarray, params: PostprocessParams = PostprocessParams()
) -> tuple[np.ndarray, np.ndarray]:
    """Instance ids (H, W) int32 and one score per id 1..N.

    ``fg_prob``: (H, W) foreground probability. ``energy``: (H, W) expected energy level.
    The score is the instance's mean foreground probability, scaled down when its
    deepest energy never reached the cut (an unseeded blob).
    """
    out = np.zeros(fg_prob.shape, np.int32)
    fg = fg_prob > params.fg_threshold
    if not fg.any():
        return out, np.zeros(0, np.float32)
    # work inside the foreground's bounding box: watershed's cost grows with the pixels it visits
    rows, cols = np.nonzero(fg.any(axis=1))[0], np.nonzero(fg.any(axis=0))[0]
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    fg, energy, prob = fg[box], energy[box], fg_prob[box]
    seeds, num_seeds = ndi.label(fg & (energy >= params.cut_level))
    if num_seeds and params.min_seed > 1:
        # a small seed is a limb or a noisy peak, not a person: let the big seeds flood it
        seeds = relabel_sequential(seeds, params.min_seed)
        num_seeds = int(seeds.max(initial=0))
    if num_seeds:
        # watershed on uint8 (0.1-level steps) is ~2x faster than on floats, same basins
        relief = np.clip(255.0 - 10.0 * energy, 0, 255).astype(np.uint8)
        labels = watershed(relief, seeds, mask=fg)
    else:
        labels = np.zeros(fg.shape, np.int32)
    orphans, num_orphans = ndi.label(fg & (labels == 0))
    if num_orphans:
        labels = np.where(orphans > 0, orphans + num_seeds, labels)
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=num_seeds + num_orphans + 1)
    keep = np.nonzero(counts >= max(params.min_size, 1))[0]
    keep = keep[keep > 0]
    if len(keep) == 0:
        return out, np.zeros(0, np.float32)
    mean_fg = np.bincount(flat, weights=prob.ravel(), minlength=len(counts))[keep] / counts[keep]
    depth = np.ones(len(keep))
    unseeded = keep > num_seeds
    if unseeded.any():  # blobs that never reached the cut: scored by how deep they got
        # per-blob maximum over the orphans' pixels only (ndi.maximum argsorts the whole map)
        in_orphan = labels > num_seeds
        peaks = np.zeros(len(counts))
        np.maximum.at(peaks, flat[in_orphan.ravel()], energy[in_orphan])
        depth[unseeded] = np.clip((peaks[keep[unseeded]] + 1.0) / (params.cut_level + 1.0), 0.0, 1.0)
    table = np.zeros(len(counts), np.int32)
    table[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
    out[box] = table[labels]
    return out, (mean_fg * depth).astype(np.float32)


def _overlap_iou(a: np.ndarray, num_a: int, b: np.ndarray, num_b: int) -> np.ndarray:
    """IoU of every id 1..num_a in ``a`` with every id 1..num_b in ``b`` (same-shape id maps), (A, B)."""
    joint = np.bincount((a.astype(np.int64) * (num_b + 1) + b).ravel(), minlength=(num_a + 1) * (num_b + 1))
    inter = joint.reshape(num_a + 1, num_b + 1)[1:, 1:].astype(np.float64)
    area_a = np.bincount(a.ravel(), minlength=num_a + 1)[1:].astype(np.float64)
    area_b = np.bincount(b.ravel(), minlength=num_b + 1)[1:].astype(np.float64)
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1.0)


def fill_partition(
    labels: np.ndarray,
    scores: np.ndarray,
    fill_maps: Sequence[tuple[np.ndarray, np.ndarray]],
    params: PostprocessParams,
) -> tuple[np.ndarray, np.ndarray]:
    """The partition with what separate passes found on its free pixels: their ids come after its own.

    ``fill_maps``: (fg, energy) of passes on the image enlarged, brought back to ``labels``' size with
    the energy in the enlarged pass's pixels, so the seeds of small pedestrians reach the cut level.
    Each pass is partitioned with ``params`` and a smaller size floor; an instance joins (on its free
    pixels only, scored ``FILL_SCORE_SCALE`` times its own) where the partition has no instance like it.
    """
    small = replace(params, min_size=max(1, round(params.min_size * FILL_SIZE_FACTOR)), alternatives=False)
    for fg, energy in fill_maps:
        if fg.shape != labels.shape:
            raise ValueError("fill maps must have the partition's size")
        found, found_scores = instances_from_maps(fg, energy, small)
        num = len(found_scores)
        if not num:
            continue
        area = np.bincount(found.ravel(), minlength=num + 1)[1:]
        free = np.bincount(found[labels == 0], minlength=num + 1)[1:]
        joins = free >= FILL_MIN_FREE * area
        if len(scores):
            joins &= _overlap_iou(found, num, labels, len(scores)).max(axis=1) < FILL_MAX_IOU
        if not joins.any():
            continue
        table = np.zeros(num + 1, np.int32)
        table[1:][joins] = np.arange(len(scores) + 1, len(scores) + int(joins.sum()) + 1, dtype=np.int32)
        labels = np.where(labels == 0, table[found], labels)
        scores = np.concatenate([scores, found_scores[joins] * FILL_SCORE_SCALE]).astype(np.float32)
    return labels, scores


def partition(
    fg_prob: np.ndarray,
    energy: np.ndarray,
    params: PostprocessParams,
    fill_maps: Sequence[tuple[np.ndarray, np.ndarray]] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """The id map users see: ``instances_from_maps``, filled from ``fill_maps`` (``fill_partition``)."""
    labels, scores = instances_from_maps(fg_prob, energy, params)
    return fill_partition(labels, scores, fill_maps, params) if len(fill_maps) else (labels, scores)


def _drop_small(labels: np.ndarray, scores: np.ndarray, min_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The partition a larger ``min_size`` would have given: same ids in the same order, minus the small."""
    keep = np.bincount(labels.ravel(), minlength=len(scores) + 1)[1:] >= max(min_size, 1)
    table = np.zeros(len(scores) + 1, np.int32)
    table[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return table[labels], scores[keep]


_Source = tuple[np.ndarray, int, np.ndarray]  # (id map, number of ids, their scores): candidates from one setting


def _add_fresh(sources: list[_Source], labels: np.ndarray, scores: np.ndarray) -> None:
    """Append the ids of ``labels`` whose mask IoU with every candidate in ``sources`` is below
    ``ALTERNATIVE_MAX_IOU``, renumbered, with their scores times ``ALTERNATIVE_SCORE_SCALE``."""
    num = len(scores)
    if not num:
        return
    fresh = np.ones(num, bool)
    for seen, num_seen, _ in sources:
        if num_seen:
            fresh &= _overlap_iou(labels, num, seen, num_seen).max(axis=1) < ALTERNATIVE_MAX_IOU
    if fresh.any():
        table = np.zeros(num + 1, np.int32)
        table[1:][fresh] = np.arange(1, int(fresh.sum()) + 1, dtype=np.int32)
        sources.append((table[labels], int(fresh.sum()), scores[fresh] * ALTERNATIVE_SCORE_SCALE))


def _candidate_maps(
    fg_prob: np.ndarray,
    energy: np.ndarray,
    params: PostprocessParams,
    fill_maps: Sequence[tuple[np.ndarray, np.ndarray]] = (),
) -> list[_Source]:
    """(id map, count, scores) per source of candidates, best first, no two candidates alike:
    the partition (filled from ``fill_maps``), then what each alternative setting adds (scores
    already scaled down)."""
    if not params.alternatives:
        labels, scores = partition(fg_prob, energy, params, fill_maps)
        return [(labels, len(scores), scores)]
    unfloored, *others = params.alternative_settings()
    # the partition is the first alternative (no size floor) with the floor put back: one watershed for both
    all_labels, all_scores = instances_from_maps(fg_prob, energy, unfloored)
    labels, scores = _drop_small(all_labels, all_scores, params.min_size)
    if len(fill_maps):
        labels, scores = fill_partition(labels, scores, fill_maps, params)
    sources = [(labels, len(scores), scores)]
    _add_fresh(sources, all_labels, all_scores)
    for setting in others:
        _add_fresh(sources, *instances_from_maps(fg_prob, energy, setting))
    return sources


def ranked_candidates(
    fg_prob: np.ndarray,
    energy: np.ndarray,
    params: PostprocessParams,
    extra_maps: Sequence[tuple[np.ndarray, np.ndarray]] = (),
    fill_maps: Sequence[tuple[np.ndarray, np.ndarray]] = (),
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The partition (ids, scores) and every candidate for COCO AP: (P, H, W) bool masks, (P,) scores.

    The candidates are the partition's instances (filled from ``fill_maps``: ``fill_partition``),
    then (with ``params.alternatives``) the new ones the alternative settings find, scored
    ``ALTERNATIVE_SCORE_SCALE`` times their own. ``extra_maps``: (fg, energy) of other passes of
    the network (e.g. on an enlarged image, which sees small pedestrians), same size; their
    candidates not yet listed come last, scaled down once more.
    """
    if not params.alternatives and not extra_maps:
        labels, scores = partition(fg_prob, energy, params, fill_maps)
        return labels, scores, labels[None] == np.arange(1, len(scores) + 1)[:, None, None], scores
    sources = _candidate_maps(fg_prob, energy, params, fill_maps)
    if any(extra_fg.shape != fg_prob.shape for extra_fg, _ in extra_maps):
        raise ValueError("extra maps must have the main maps' size")
    for extra_fg, extra_energy in extra_maps:
        for other, _, other_scores in _candidate_maps(extra_fg, extra_energy, params):
            _add_fresh(sources, other, other_scores)
    labels, _, scores = sources[0]
    masks = np.concatenate([ids[None] == np.arange(1, n + 1)[:, None, None] for ids, n, _ in sources])
    return labels, scores, masks, np.concatenate([sc for _, _, sc in sources]).astype(np.float32)
