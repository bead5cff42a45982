"""Synthetic scenes with known instances, for tests and the post-processing benchmark.

``ideal_maps`` gives what a perfect DWT would output for a scene, so the post-processing
can be checked (and timed) without a trained network.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from seg.instances.targets import ENERGY_EDGES, instance_distance, quantise


def disc_scene(shape: tuple[int, int], centers: list[tuple[float, float]], radius: float) -> np.ndarray:
    """Instance ids of discs (row, col centres); where discs overlap, the nearer centre wins."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    ids = np.zeros(shape, np.int32)
    best = np.full(shape, np.inf)
    for i, (cy, cx) in enumerate(centers, start=1):
        d = np.hypot(yy - cy, xx - cx)
        take = (d <= radius) & (d < best)
        ids[take], best[take] = i, d[take]
    return ids


def pedestrian_scene(shape: tuple[int, int] = (224, 288), count: int = 5, seed: int = 0) -> np.ndarray:
    """Upright ellipses about pedestrian-sized at the working height, some touching."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    ids = np.zeros(shape, np.int32)
    step = shape[1] / (count + 1)
    for i in range(count):
        cx = step * (i + 1) + rng.uniform(-0.2, 0.2) * step
        cy = shape[0] * rng.uniform(0.45, 0.6)
        ry, rx = shape[0] * rng.uniform(0.3, 0.4), step * rng.uniform(0.4, 0.6)
        ids[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = i + 1
    return ids


def _smooth_noise(shape: tuple[int, int], std: float, seed: int, sigma: float = 3.0) -> np.ndarray:
    field = ndi.gaussian_filter(np.random.default_rng(seed).normal(size=shape), sigma)
    return field * (std / max(field.std(), 1e-8))


def ideal_maps(
    instances: np.ndarray, edges: tuple[float, ...] = ENERGY_EDGES, noise: float = 0.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(foreground probability, expected energy level) a perfect network would give, plus optional noise."""
    fg = (instances > 0).astype(np.float32)
    energy = quantise(instance_distance(instances), edges).astype(np.float32)
    if noise:  # spatially smooth noise, like a network's errors (not salt and pepper)
        fg = np.clip(fg + _smooth_noise(fg.shape, noise, seed), 0, 1).astype(np.float32)
        energy = np.clip(energy + 4 * _smooth_noise(energy.shape, noise, seed + 1), 0, None).astype(np.float32)
    return fg * 0.98 + 0.01, energy
