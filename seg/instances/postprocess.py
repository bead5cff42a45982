"""From the DWT's two heads to instance ids: cut the energy, seed, grow back by watershed.

Seeds are the connected components of foreground pixels whose expected energy level is
at least ``cut_level``: deep inside a pedestrian, away from the valley where two touch.
Watershed on the negated energy grows each seed back over the predicted foreground.
Foreground blobs that got no seed (thin or small people) become instances of their own
if they are large enough, with a lower score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from seg.instances.data import relabel_sequential


DEFAULT_CUT_LEVEL = 2  # the three defaults below were chosen on val for checkpoints/dwt (tune-instances)
DEFAULT_MIN_SIZE = 600  # pixels at the working height (224 px)
DEFAULT_FG_THRESHOLD = 0.5
DEFAULT_MIN_SEED = 300  # seeds smaller than this (px at the working height) are flooded by their neighbours


@dataclass(frozen=True)
class PostprocessParams:
    cut_level: float = DEFAULT_CUT_LEVEL
    min_size: int = DEFAULT_MIN_SIZE
    fg_threshold: float = DEFAULT_FG_THRESHOLD
    min_seed: int = DEFAULT_MIN_SEED

    def scaled(self, area_ratio: float) -> "PostprocessParams":
        """Same parameters for a map ``area_ratio`` times as many pixels as the working size."""
        return PostprocessParams(self.cut_level, max(1, round(self.min_size * area_ratio)), self.fg_threshold,
                                 round(self.min_seed * area_ratio))


def expected_energy(energy_probs: np.ndarray) -> np.ndarray:
    """(K, H, W) level probabilities -> (H, W) expected level; smoother than the argmax for watershed."""
    levels = np.arange(energy_probs.shape[0], dtype=np.float32)
    return np.tensordot(levels, energy_probs.astype(np.float32, copy=False), axes=1)


def instances_from_maps(fg_prob: np.ndarray, energy: np.ndarray,
                        params: PostprocessParams = PostprocessParams()) -> tuple[np.ndarray, np.ndarray]:
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
        peak = np.asarray(ndi.maximum(energy, labels, index=keep[unseeded]), dtype=np.float64)
        depth[unseeded] = np.clip((peak + 1.0) / (params.cut_level + 1.0), 0.0, 1.0)
    table = np.zeros(len(counts), np.int32)
    table[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
    out[box] = table[labels]
    return out, (mean_fg * depth).astype(np.float32)
