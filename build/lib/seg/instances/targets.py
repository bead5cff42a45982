"""Deep Watershed Transform targets: distance to the instance boundary, quantised.

The distance of a pedestrian pixel is measured inside its own instance, so two
touching pedestrians get a valley (distance 0) where they meet: that valley is what
lets a cut of the energy give one seed per pedestrian. Distances are computed once
per image at the working height and cached on disk; augmentation rescales them
instead of recomputing.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from seg.config import cache_dir
from seg.io import atomic_write_bytes

#: Bai & Urtasun (CVPR 2017), K=16 for Cityscapes-sized objects.
PAPER_EDGES = (0, 1, 2, 3, 4, 5, 7, 9, 12, 15, 19, 24, 30, 37, 45, 54)
#: Our K=12 edges (lower bounds, in pixels at the 224-px working height). At that height a
#: pedestrian's deepest pixel is 8-34 px from its boundary (median 18), so the paper's
#: levels above 24 px would be almost empty; we keep unit steps where seeds are cut
#: (3-8 px) and coarser steps up to 19 px.
ENERGY_EDGES: tuple[float, ...] = (0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 19)


def instance_distance(instances: np.ndarray) -> np.ndarray:
    """Per pixel, the Euclidean distance (px) to the nearest pixel outside its own instance, minus 1.

    Boundary pixels get 0, background 0. The image border is not a boundary (a pedestrian
    cut by the frame continues outside it).
    """
    out = np.zeros(instances.shape, np.float32)
    ids = int(instances.max(initial=0))
    if ids == 0:
        return out
    for obj_id, sl in enumerate(ndi.find_objects(instances), start=1):
        if sl is None:
            continue
        # pad the bounding box by one pixel of "outside", except where it touches the frame
        ys, xs = sl
        y0, y1 = max(ys.start - 1, 0), min(ys.stop + 1, instances.shape[0])
        x0, x1 = max(xs.start - 1, 0), min(xs.stop + 1, instances.shape[1])
        inside = instances[y0:y1, x0:x1] == obj_id
        dist = ndi.distance_transform_edt(inside)
        if not (~inside).any():  # fills the whole window: no boundary at all
            dist = np.full(inside.shape, float(max(inside.shape)))
        out[y0:y1, x0:x1][inside] = dist[inside] - 1.0
    return out


def quantise(distance: np.ndarray, edges: tuple[float, ...] = ENERGY_EDGES) -> np.ndarray:
    """Energy level per pixel: the index k with edges[k] <= d < edges[k+1] (int64)."""
    return np.searchsorted(np.asarray(edges[1:], dtype=np.float32), distance, side="right").astype(np.int64)


def _cache_path(image_id: str, instances: np.ndarray) -> Path:
    key = hashlib.sha1(instances.tobytes() + str(instances.shape).encode()).hexdigest()[:16]
    return cache_dir() / "dwt-distance" / f"{image_id}-{key}.npy"


def cached_distance(image_id: str, instances: np.ndarray) -> np.ndarray:
    """``instance_distance`` memoised on disk, keyed by the id map's content (safe to delete)."""
    path = _cache_path(image_id, instances)
    if path.is_file():
        try:
            dist = np.load(path, allow_pickle=False)
            if dist.shape == instances.shape:
                return dist.astype(np.float32)
        except (OSError, ValueError):
            pass  # corrupt cache entry: recompute and overwrite
    dist = instance_distance(instances).astype(np.float16)  # half precision is plenty for px distances
    buf = io.BytesIO()
    np.save(buf, dist, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())
    return dist.astype(np.float32)
