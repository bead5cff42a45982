"""Labeling tools as pure functions on numpy arrays: polygon, box -> mask, scribbles -> mask.

Every tool takes the current label (H, W class ids) or the image and returns a new
array; nothing here knows about a browser, a workspace or a model file. A model's help
arrives as a foreground-probability map (H, W floats in 0..1), so the same functions
serve the CLI, the dashboard and the tests.

Box and scribble tools use OpenCV's GrabCut (colour models of foreground and background,
refined by a graph cut). The recipe that makes it fast and accurate at image size:
GrabCut runs on the box plus a margin of context, downscaled to a small working size;
a model's probabilities, when given, replace the "whole box is probably foreground"
start; the cut is brought back to full size smoothly, restricted to the box, holes
filled, and only the largest piece kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np
from scipy import ndimage as ndi

#: (x0, y0, x1, y1) in pixels, x1/y1 exclusive, like the project's instance boxes.
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class GrabCutRecipe:
    """How box -> mask runs GrabCut; the defaults were tuned on Penn-Fudan's train split
    (``bench/bench_box_to_mask.py --tune``): GrabCut alone here, ``SEEDED_RECIPE`` with a model."""

    #: GrabCut iterations (each one refits the colour models and recuts); 0 keeps the start as it is.
    iterations: int = 3
    #: Context around the box, as a fraction of its size, given to GrabCut as certain background.
    margin: float = 0.15
    #: The box plus margin is downscaled so its longer side is at most this many pixels (0: never).
    max_side: int = 320
    #: Fraction of the box (centred, same aspect) marked certain foreground; 0 marks none.
    core: float = 0.2
    #: With a model: pixels above this foreground probability start as probable foreground, the rest
    #: of the box as probable background; a box where no pixel reaches it is cut without the model.
    seed_threshold: float = 0.5
    #: With a model: pixels above this probability are certain foreground, below ``seed_sure_bg`` certain
    #: background (the graph cut cannot flip them).
    seed_sure_fg: float = 0.6
    seed_sure_bg: float = 0.1
    #: A tight box's object fills a good part of it: a cut smaller than this fraction of the box is
    #: taken for a failure and the ellipse inscribed in the box is returned instead.
    min_fill: float = 0.2


DEFAULT_RECIPE = GrabCutRecipe()
#: With a model's probabilities most of the box is decided: one GrabCut pass refines the rest. On the
#: average of the DWT's and Mask R-CNN's maps, other settings (iterations, size, thresholds, fallback)
#: did no better (docs/experiments.md, the box tool).
SEEDED_RECIPE = replace(DEFAULT_RECIPE, iterations=1, max_side=256, core=0.0)


# -- polygon ---------------------------------------------------------------------------------
def polygon_mask(shape: tuple[int, int], vertices: Sequence[tuple[float, float]]) -> np.ndarray:
    """(H, W) bool: pixels whose centre lies inside the closed polygon (x, y vertices in pixels).

    Pixel (r, c) covers [c, c+1) x [r, r+1); its centre (c + 0.5, r + 0.5) decides, so a
    polygon along pixel edges fills exactly the pixels it encloses.
    """
    height, width = shape
    points = np.asarray(vertices, dtype=np.float64).reshape(-1, 2)
    if len(points) < 3:
        raise ValueError("a polygon needs at least 3 vertices")
    if not np.isfinite(points).all():
        raise ValueError("polygon vertices must be finite numbers")
    from skimage.draw import polygon as draw_polygon

    # skimage samples integer coordinates; shift by half a pixel so it samples pixel centres.
    rows, cols = draw_polygon(points[:, 1] - 0.5, points[:, 0] - 0.5, shape=(height, width))
    mask = np.zeros((height, width), dtype=bool)
    mask[rows, cols] = True
    return mask


def polygon_fill(label: np.ndarray, vertices: Sequence[tuple[float, float]], class_id: int) -> np.ndarray:
    """A new label with the polygon's inside set to ``class_id``."""
    out = label.copy()
    out[polygon_mask(label.shape, vertices)] = class_id
    return out


# -- box -> mask -----------------------------------------------------------------------------
def clip_box(box: Box, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Integer box inside the image (x1, y1 exclusive); ``ValueError`` if nothing of it remains."""
    height, width = shape
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(np.isfinite([x0, y0, x1, y1])):
        raise ValueError("box coordinates must be finite numbers")
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    ix0, iy0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
    ix1, iy1 = min(width, int(np.ceil(x1))), min(height, int(np.ceil(y1)))
    if ix1 - ix0 < 1 or iy1 - iy0 < 1:
        raise ValueError(f"box {x0:g},{y0:g},{x1:g},{y1:g} does not overlap the {width}x{height} image")
    return ix0, iy0, ix1, iy1


def recipe_for(foreground: np.ndarray | None, recipe: GrabCutRecipe | None = None) -> GrabCutRecipe:
    """``recipe``, else the tuned one for GrabCut alone or seeded by a model."""
    return recipe or (DEFAULT_RECIPE if foreground is None else SEEDED_RECIPE)


def box_mask(
    image: np.ndarray, box: Box, foreground: np.ndarray | None = None, recipe: GrabCutRecipe | None = None
) -> np.ndarray:
    """(H, W) bool: the object inside ``box``, cut out with GrabCut.

    ``foreground``: an optional (H, W) foreground probability from a model; inside the box it
    decides where GrabCut starts (and what it may not flip), instead of "all of the box". When
    the model sees nothing in the box (an object it was not trained on), colour alone decides.
    """
    image = _check_image(image)
    height, width = image.shape[:2]
    x0, y0, x1, y1 = clip_box(box, (height, width))
    if foreground is not None:
        foreground = _check_probability(foreground, (height, width))
        if foreground[y0:y1, x0:x1].max() < (recipe or SEEDED_RECIPE).seed_threshold:
            foreground, recipe = None, None
    recipe = recipe_for(foreground, recipe)
    bw, bh = x1 - x0, y1 - y0
    pad_x, pad_y = max(2, round(recipe.margin * bw)), max(2, round(recipe.margin * bh))
    rx0, ry0, rx1, ry1 = max(0, x0 - pad_x), max(0, y0 - pad_y), min(width, x1 + pad_x), min(height, y1 + pad_y)
    roi = image[ry0:ry1, rx0:rx1]
    inside = np.zeros(roi.shape[:2], dtype=bool)
    inside[y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0] = True

    init = np.where(inside, cv2.GC_PR_FGD, cv2.GC_BGD).astype(np.uint8)
    if foreground is not None:
        prob = foreground[ry0:ry1, rx0:rx1]
        init[inside & (prob < recipe.seed_threshold)] = cv2.GC_PR_BGD
        init[inside & (prob < recipe.seed_sure_bg)] = cv2.GC_BGD
        init[inside & (prob >= recipe.seed_sure_fg)] = cv2.GC_FGD
    if recipe.core > 0:
        cx, cy = (x0 + x1) / 2 - rx0, (y0 + y1) / 2 - ry0
        hw, hh = recipe.core * bw / 2, recipe.core * bh / 2
        init[max(0, round(cy - hh)) : round(cy + hh), max(0, round(cx - hw)) : round(cx + hw)] = cv2.GC_FGD

    roi_h, roi_w = roi.shape[:2]
    scale = min(1.0, recipe.max_side / max(roi_h, roi_w)) if recipe.max_side else 1.0
    if scale < 1.0:
        size = (max(1, round(roi_w * scale)), max(1, round(roi_h * scale)))
        small = cv2.resize(roi, size, interpolation=cv2.INTER_AREA)
        small_init = cv2.resize(init, size, interpolation=cv2.INTER_NEAREST)
    else:
        small, small_init = roi, init
    cut = _grabcut(small, small_init, recipe.iterations)
    if scale < 1.0:
        cut = cv2.resize(cut.astype(np.float32), (roi_w, roi_h), interpolation=cv2.INTER_LINEAR) >= 0.5
    cut &= inside
    cut = _largest_piece(ndi.binary_fill_holes(cut))
    if cut.sum() < recipe.min_fill * bw * bh:  # GrabCut lost the object: the box's own shape is the best guess
        yy, xx = np.ogrid[: roi.shape[0], : roi.shape[1]]
        cx, cy = (x0 + x1) / 2 - rx0, (y0 + y1) / 2 - ry0
        cut = ((xx + 0.5 - cx) / (bw / 2)) ** 2 + ((yy + 0.5 - cy) / (bh / 2)) ** 2 <= 1.0
    if not cut.any():  # GrabCut gave everything to the background: the start is the best guess left
        cut = (init == cv2.GC_FGD) | (init == cv2.GC_PR_FGD)
    mask = np.zeros((height, width), dtype=bool)
    mask[ry0:ry1, rx0:rx1] = cut
    return mask


def boxes_to_ids(
    image: np.ndarray,
    boxes: Sequence[Box],
    foreground: np.ndarray | Sequence[np.ndarray | None] | None = None,
    recipe: GrabCutRecipe | None = None,
) -> np.ndarray:
    """(H, W) uint8: 0 background, k for the object of the k-th box (1-based; at most 255 boxes).

    ``foreground``: one (H, W) probability map for every box, or one map per box (what
    ``ForegroundModel.box_maps`` gives: each box's map leaves out the other objects).
    Where two objects overlap, the pixel goes to the box whose map is surest of it; on a tie
    (no model) to the larger box: in a photo the nearer (larger) object hides the one behind it.
    """
    if len(boxes) > 255:
        raise ValueError("at most 255 boxes fit in one 8-bit mask")
    image = _check_image(image)
    if foreground is None or (isinstance(foreground, np.ndarray) and foreground.ndim == 2):
        maps = [foreground] * len(boxes)
    else:
        maps = list(foreground)
        if len(maps) != len(boxes):
            raise ValueError(f"{len(maps)} foreground maps for {len(boxes)} boxes")
    masks = [box_mask(image, box, prob, recipe) for box, prob in zip(boxes, maps)]
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in (clip_box(box, image.shape[:2]) for box in boxes)]
    ids = np.zeros(image.shape[:2], dtype=np.uint8)
    surest = np.full(image.shape[:2], -1.0, dtype=np.float32)
    for k in sorted(range(len(boxes)), key=lambda i: areas[i]):  # smallest first, so larger boxes win ties
        score = np.asarray(maps[k], dtype=np.float32) if maps[k] is not None else np.zeros_like(surest)
        take = masks[k] & (score >= surest)
        ids[take] = k + 1
        surest[take] = score[take]
    return ids


def box_fill(
    label: np.ndarray,
    image: np.ndarray,
    box: Box,
    class_id: int,
    foreground: np.ndarray | None = None,
    recipe: GrabCutRecipe | None = None,
) -> np.ndarray:
    """A new label with the object inside ``box`` set to ``class_id``."""
    _check_same_size(label, image)
    out = label.copy()
    out[box_mask(image, box, foreground, recipe)] = class_id
    return out


# -- scribbles -> mask -----------------------------------------------------------------------
def scribble_mask(
    image: np.ndarray,
    foreground_strokes: np.ndarray,
    background_strokes: np.ndarray,
    iterations: int = 5,
    margin: float = 0.5,
    max_side: int = 256,
) -> np.ndarray:
    """(H, W) bool: the object marked by foreground strokes and separated from background strokes.

    Strokes are (H, W) bool maps. Stroked pixels are certain; GrabCut decides the rest within
    the strokes' bounding box grown by ``margin`` of its size (the object is near what was
    marked, and a small window keeps it fast). Without background strokes the window is the
    whole image and its border the background example. The piece(s) connected to a
    foreground stroke are kept.
    """
    image = _check_image(image)
    height, width = image.shape[:2]
    fg = np.asarray(foreground_strokes, dtype=bool)
    bg = np.asarray(background_strokes, dtype=bool)
    for name, strokes in (("foreground", fg), ("background", bg)):
        if strokes.shape != (height, width):
            raise ValueError(f"{name} strokes {strokes.shape} do not match the {width}x{height} image")
    if not fg.any():
        raise ValueError("draw at least one foreground stroke")
    fg = fg & ~bg  # a pixel marked both ways keeps the later meaning: background
    if bg.any():
        ys, xs = np.nonzero(fg | bg)
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        pad_x, pad_y = max(8, round(margin * (x1 - x0))), max(8, round(margin * (y1 - y0)))
        rx0, ry0 = max(0, x0 - pad_x), max(0, y0 - pad_y)
        rx1, ry1 = min(width, x1 + pad_x), min(height, y1 + pad_y)
    else:
        rx0, ry0, rx1, ry1 = 0, 0, width, height
    roi = image[ry0:ry1, rx0:rx1]
    init = np.full(roi.shape[:2], cv2.GC_PR_BGD, dtype=np.uint8)
    init[fg[ry0:ry1, rx0:rx1]] = cv2.GC_FGD
    init[bg[ry0:ry1, rx0:rx1]] = cv2.GC_BGD
    # Without a background stroke, the window's own border is the background example.
    if not bg.any():
        border = np.ones(init.shape, dtype=bool)
        border[1:-1, 1:-1] = False
        init[border & (init != cv2.GC_FGD)] = cv2.GC_BGD
    roi_h, roi_w = roi.shape[:2]
    scale = min(1.0, max_side / max(roi_h, roi_w)) if max_side else 1.0
    if scale < 1.0:
        size = (max(1, round(roi_w * scale)), max(1, round(roi_h * scale)))
        # Strokes are thin: shrink them with max-pooling so none vanishes in the downscale.
        small_init = _downscale_labels(init, size)
        cut = _grabcut(cv2.resize(roi, size, interpolation=cv2.INTER_AREA), small_init, iterations)
        cut = cv2.resize(cut.astype(np.float32), (roi_w, roi_h), interpolation=cv2.INTER_LINEAR) >= 0.5
    else:
        cut = _grabcut(roi, init, iterations)
    cut = (cut | (init == cv2.GC_FGD)) & (init != cv2.GC_BGD)
    pieces, _ = ndi.label(cut)
    keep = np.unique(pieces[fg[ry0:ry1, rx0:rx1] & cut])
    cut = np.isin(pieces, keep[keep > 0])
    mask = np.zeros((height, width), dtype=bool)
    mask[ry0:ry1, rx0:rx1] = ndi.binary_fill_holes(cut) & ~bg[ry0:ry1, rx0:rx1]
    return mask


def scribble_fill(
    label: np.ndarray,
    image: np.ndarray,
    foreground_strokes: np.ndarray,
    background_strokes: np.ndarray,
    class_id: int,
    **kwargs,
) -> np.ndarray:
    """A new label with the scribbled object set to ``class_id``."""
    _check_same_size(label, image)
    out = label.copy()
    out[scribble_mask(image, foreground_strokes, background_strokes, **kwargs)] = class_id
    return out


# -- helpers ---------------------------------------------------------------------------------
def _grabcut(image: np.ndarray, init: np.ndarray, iterations: int) -> np.ndarray:
    """GrabCut from a GC_* mask; the start's foreground when the colour models cannot be fitted."""
    has_fg = np.isin(init, (cv2.GC_FGD, cv2.GC_PR_FGD)).any()
    has_bg = np.isin(init, (cv2.GC_BGD, cv2.GC_PR_BGD)).any()
    start = np.isin(init, (cv2.GC_FGD, cv2.GC_PR_FGD))
    if iterations < 1 or not (has_fg and has_bg) or min(image.shape[:2]) < 2:
        return start
    mask = init.copy()
    bgd_model, fgd_model = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut starts its colour models from k-means: the same box gives the same cut
    try:
        cv2.grabCut(
            np.ascontiguousarray(image), mask, None, bgd_model, fgd_model, int(iterations), cv2.GC_INIT_WITH_MASK
        )
    except cv2.error:  # too few distinct colours for a mixture model (a flat synthetic patch)
        return start
    return np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD))


def _downscale_labels(init: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest downscale of a GC_* mask in which certain marks (strokes) survive: max-pooled first."""
    small = cv2.resize(init, size, interpolation=cv2.INTER_NEAREST)
    for value in (cv2.GC_FGD, cv2.GC_BGD):  # background last: where both shrink onto a pixel, it wins
        marks = cv2.resize((init == value).astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0
        small[marks] = value
    return small


def _largest_piece(mask: np.ndarray) -> np.ndarray:
    pieces, count = ndi.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(pieces.ravel())[1:]
    return pieces == (int(np.argmax(sizes)) + 1)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an (H, W, 3) uint8 RGB array, got {image.shape} {image.dtype}")
    return image


def _check_probability(foreground: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    prob = np.asarray(foreground, dtype=np.float32)
    if prob.shape != shape:
        raise ValueError(f"foreground probabilities {prob.shape} do not match the image {shape}")
    return prob


def _check_same_size(label: np.ndarray, image: np.ndarray) -> None:
    if np.shape(label) != np.shape(image)[:2]:
        raise ValueError(f"label {np.shape(label)} does not match image {np.shape(image)[:2]}")
