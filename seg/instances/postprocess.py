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

DEFAULT_CUT_LEVEL = 6
DEFAULT_MIN_SIZE = 150  # pixels at the working height (224 px)
DEFAULT_FG_THRESHOLD = 0.5


@dataclass(frozen=True)
class PostprocessParams:
    cut_level: float = DEFAULT_CUT_LEVEL
    min_size: int = DEFAULT_MIN_SIZE
    fg_threshold: float = DEFAULT_FG_THRESHOLD

    def scaled(self, area_ratio: float) -> "PostprocessParams":
        """Same parameters for a map ``area_ratio`` times as many pixels as the working size."""
        return PostprocessParams(self.cut_level, max(1, round(self.min_size * area_ratio)), self.fg_threshold)


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
    fg = fg_prob > params.fg_threshold
    if not fg.any():
        return np.zeros(fg.shape, np.int32), np.zeros(0, np.float32)
    seeds, num_seeds = ndi.label(fg & (energy >= params.cut_level))
    labels = watershed(-energy, seeds, mask=fg) if num_seeds else np.zeros(fg.shape, np.int32)
    orphans, num_orphans = ndi.label(fg & (labels == 0))
    if num_orphans:
        labels = np.where(orphans > 0, orphans + num_seeds, labels)
    labels = relabel_sequential(labels.astype(np.int32), params.min_size)
    n = int(labels.max(initial=0))
    if n == 0:
        return labels, np.zeros(0, np.float32)
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=n + 1)[1:]
    mean_fg = np.bincount(flat, weights=fg_prob.ravel(), minlength=n + 1)[1:] / counts
    peak = ndi.maximum(energy, labels, index=np.arange(1, n + 1))
    depth = np.clip((np.asarray(peak) + 1.0) / (params.cut_level + 1.0), 0.0, 1.0)
    return labels, (mean_fg * depth).astype(np.float32)


def instance_boxes(labels: np.ndarray) -> np.ndarray:
    """xyxy boxes (x2, y2 exclusive) of ids 1..N."""
    from seg.instances.data import boxes_from_ids

    return boxes_from_ids(labels)
