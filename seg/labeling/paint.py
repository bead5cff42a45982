"""Mask editing as pure numpy functions (testable without a browser).

The editor is a fixed-size canvas: the image is letterboxed into it by ``CanvasView``,
the person paints with palette colours on a transparent layer, and ``decode_strokes``
turns that layer back into class ids. The browser antialiases and blends stroke
edges, so only mostly opaque pixels count, exact palette colours give the class, and
blended pixels take the class of the nearest exactly coloured stroke pixel (never a
colour guess); display opacity never reaches the mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from seg.classes import colorize
from seg.labeling.history import History

#: Stroke pixels with less alpha than this are antialiasing fringe and are ignored.
ALPHA_THRESHOLD = 128
#: Per-channel difference within which a painted pixel counts as exactly a palette colour.
EXACT_TOLERANCE = 3
#: Marks "no stroke here" in decoded stroke maps.
NO_STROKE = -1


@dataclass(frozen=True)
class CanvasView:
    """Where an (height x width) image sits, scaled and centred, on a fixed canvas."""

    height: int
    width: int
    canvas_width: int
    canvas_height: int

    @property
    def scale(self) -> float:
        return min(self.canvas_width / self.width, self.canvas_height / self.height)

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(left, top, drawn_width, drawn_height) of the image on the canvas."""
        w = max(1, round(self.width * self.scale))
        h = max(1, round(self.height * self.scale))
        return (self.canvas_width - w) // 2, (self.canvas_height - h) // 2, w, h

    def to_canvas(self, rgb: np.ndarray, fill: tuple[int, int, int] = (40, 40, 40)) -> np.ndarray:
        """The image letterboxed onto the canvas (what the editor shows as background)."""
        left, top, w, h = self.box
        canvas = np.empty((self.canvas_height, self.canvas_width, 3), dtype=np.uint8)
        canvas[:] = fill
        canvas[top : top + h, left : left + w] = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
        return canvas

    def from_canvas(self, layer: np.ndarray) -> np.ndarray:
        """Sample a canvas-sized layer back at each image pixel's centre (nearest, no blending)."""
        left, top, w, h = self.box
        layer = np.asarray(layer)
        if layer.shape[:2] != (self.canvas_height, self.canvas_width):
            layer = _resize_nearest(layer, self.canvas_width, self.canvas_height)
        ys = top + np.minimum(((np.arange(self.height) + 0.5) * h / self.height).astype(int), h - 1)
        xs = left + np.minimum(((np.arange(self.width) + 0.5) * w / self.width).astype(int), w - 1)
        return layer[ys[:, None], xs[None, :]]


def _resize_nearest(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    ys = np.minimum((np.arange(height) * arr.shape[0] / height).astype(int), arr.shape[0] - 1)
    xs = np.minimum((np.arange(width) * arr.shape[1] / width).astype(int), arr.shape[1] - 1)
    return arr[ys[:, None], xs[None, :]]


def decode_strokes(
    layer: np.ndarray, palette: list[tuple[int, int, int]], alpha_threshold: int = ALPHA_THRESHOLD
) -> np.ndarray:
    """RGBA stroke layer -> int16 class ids, ``NO_STROKE`` where nothing opaque was painted.

    Pixels within ``EXACT_TOLERANCE`` of a palette colour take that class. Blended pixels
    (antialiased edges, overlapping strokes) take the class of the nearest exactly
    coloured painted pixel: a blend of two classes' colours can be closer to a third
    class's colour, so nearest-colour is used only when no exact pixel exists at all.
    """
    layer = np.asarray(layer)
    if layer.ndim != 3 or layer.shape[2] not in (3, 4):
        raise ValueError(f"stroke layer must be HxWx4 (or HxWx3), got {layer.shape}")
    if layer.shape[2] == 3:  # no alpha: treat pure black as "nothing painted"
        painted = layer.any(axis=2)
    else:
        painted = layer[..., 3] >= alpha_threshold
    out = np.full(layer.shape[:2], NO_STROKE, dtype=np.int16)
    if not painted.any():
        return out
    colours = layer[painted][:, :3].astype(np.int32)
    pal = np.asarray(palette, dtype=np.int32)
    dist = ((colours[:, None, :] - pal[None, :, :]) ** 2).sum(axis=2)
    nearest = dist.argmin(axis=1).astype(np.int16)
    exact_flat = dist.min(axis=1) <= EXACT_TOLERANCE**2 * 3
    out[painted] = nearest
    if exact_flat.all() or not exact_flat.any():
        return out
    from scipy.ndimage import distance_transform_edt

    exact = np.zeros(layer.shape[:2], dtype=bool)
    exact[painted] = exact_flat
    _, (rows, cols) = distance_transform_edt(~exact, return_indices=True)
    blended = painted & ~exact
    out[blended] = out[rows[blended], cols[blended]]
    return out


def apply_strokes(label: np.ndarray, strokes: np.ndarray) -> np.ndarray:
    """A new label with stroke pixels set to their class (``NO_STROKE`` leaves pixels alone)."""
    if strokes.shape != label.shape:
        raise ValueError(f"strokes {strokes.shape} do not match label {label.shape}")
    out = label.copy()
    painted = strokes != NO_STROKE
    out[painted] = strokes[painted].astype(label.dtype)
    return out


def erase_strokes(label: np.ndarray, strokes: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Erasing = giving stroke pixels back their ``reference`` class (the model's prefill)."""
    out = label.copy()
    painted = strokes != NO_STROKE
    out[painted] = reference[painted]
    return out


def flood_fill(label: np.ndarray, row: int, col: int, class_id: int) -> np.ndarray:
    """Fill the 4-connected region of the clicked pixel's class with ``class_id``."""
    from skimage.segmentation import flood

    _check_point(label, row, col)
    region = flood(label, (row, col), connectivity=1)
    out = label.copy()
    out[region] = class_id
    return out


def superpixels(image: np.ndarray, n_segments: int = 400) -> np.ndarray:
    """SLIC superpixels (int32 ids) for one image; computed once per image and reused per click."""
    from skimage.segmentation import slic

    return slic(image, n_segments=n_segments, compactness=10.0, start_label=0, channel_axis=-1).astype(np.int32)


def superpixel_fill(label: np.ndarray, segments: np.ndarray, row: int, col: int, class_id: int) -> np.ndarray:
    """Fill the superpixel under the click with ``class_id``."""
    _check_point(label, row, col)
    out = label.copy()
    out[segments == segments[row, col]] = class_id
    return out


def _check_point(label: np.ndarray, row: int, col: int) -> None:
    if not (0 <= row < label.shape[0] and 0 <= col < label.shape[1]):
        raise ValueError(f"point ({col}, {row}) is outside the {label.shape[1]}x{label.shape[0]} image")


def changed_mask(label: np.ndarray, reference: np.ndarray | None) -> np.ndarray:
    """Pixels whose class differs from the reference (the model's prediction)."""
    if reference is None or reference.shape != label.shape:
        return np.zeros(label.shape, dtype=bool)
    return label != reference


def render(
    image: np.ndarray,
    label: np.ndarray,
    palette: list[tuple[int, int, int]],
    opacity: float = 0.5,
    changed: np.ndarray | None = None,
) -> np.ndarray:
    """Display picture: the label blended over the image; changed regions outlined in magenta.

    Changed pixels are drawn at full class colour inside a magenta outline, so the new
    class stays readable. Display only: nothing here feeds back into the saved mask.
    """
    a = float(np.clip(opacity, 0.0, 1.0))
    colours = colorize(label, palette).astype(np.float32)
    out = image.astype(np.float32) * (1 - a) + colours * a
    if changed is not None and changed.any():
        from skimage.segmentation import find_boundaries

        out[changed] = colours[changed]
        out[find_boundaries(changed, mode="outer") & ~changed] = (255, 0, 255)
    return out.astype(np.uint8)


#: The editor's history: one undo/redo over every tool (``seg.labeling.history.History``);
#: ``push``/``pop`` keep the older one-way use working.
UndoStack = History
