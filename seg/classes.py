"""Class names and palettes shared by the CLI, the checkpoints' cards and the UI."""

from __future__ import annotations

import numpy as np

SBD_CLASSES: list[str] = [
    "sky",
    "tree",
    "road",
    "grass",
    "water",
    "building",
    "mountain",
    "foreground",
    "misc",
]

#: Distinct, colour-blind-friendlier colours; index = class id.
SBD_PALETTE: list[tuple[int, int, int]] = [
    (70, 130, 230),  # sky
    (34, 139, 34),  # tree
    (128, 64, 128),  # road
    (152, 230, 80),  # grass
    (0, 200, 210),  # water
    (220, 90, 50),  # building
    (140, 110, 80),  # mountain
    (250, 200, 30),  # foreground
    (110, 110, 110),  # misc
]

#: Sentinel for "no label" pixels when a dataset has them (SBD maps unknown to misc instead).
IGNORE_INDEX = 255


def colorize(label: np.ndarray, palette: list[tuple[int, int, int]] = SBD_PALETTE) -> np.ndarray:
    """Class-id map (H,W) to an RGB image (H,W,3); ids beyond the palette come out black."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return np.take(table, np.asarray(label, dtype=np.uint8), axis=0)  # ~5x faster than table[label]


def flat_palette(palette: list[tuple[int, int, int]] = SBD_PALETTE) -> list[int]:
    """Palette in PIL's flat 768-entry form."""
    flat = [c for rgb in palette for c in rgb]
    return flat + [0] * (768 - len(flat))


def palette_for(num_classes: int) -> list[tuple[int, int, int]]:
    """SBD colours first, then the Pascal VOC bit-interleaved colour map for extra classes."""
    palette = list(SBD_PALETTE[:num_classes])
    i = 1
    while len(palette) < num_classes:
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        if (r, g, b) not in palette:
            palette.append((r, g, b))
        i += 1
    return palette
