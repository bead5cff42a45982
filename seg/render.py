"""Pictures for people: label maps blended over images, instance drawings, side-by-side strips.

Display only: nothing here feeds back into training or metrics. Used by the dashboard and
available to scripts and benches without gradio.

Blending and instance drawing use OpenCV: ``bench/bench_overlay.py`` times it, in the same run,
against a float numpy blend and torchvision's ``draw_segmentation_masks`` / ``draw_bounding_boxes``
(ratios over four runs on a busy 2-core CPU). A 1024x768 Stanford Background label map at opacity
0.5: numpy takes 4.2-5.5x and torchvision 18-31x the time of OpenCV (torchvision blends one boolean
mask per class in float); the three pictures agree within one grey level. A Penn-Fudan instance
picture: numpy + PIL drawing takes 2.0-6.4x and torchvision 1.5-5.9x the time, and torchvision draws
no instance contours and writes its labels in the box colour straight on the photo, where they are
hard to read; OpenCV's antialiased labels on a filled tab read best.
"""

from __future__ import annotations

import colorsys

import cv2
import numpy as np
from PIL import Image

from seg.classes import SBD_CLASSES, SBD_PALETTE, colorize

Palette = list[tuple[int, int, int]]

#: Brightness kept by the classes that are not highlighted.
DIMMED = 0.35
#: Opacity of the highlighted class when the overlay's own opacity is lower.
HIGHLIGHT_MIN_ALPHA = 0.6


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image, dtype=np.uint8)


def overlay(
    image: np.ndarray,
    label: np.ndarray,
    palette: Palette = SBD_PALETTE,
    alpha: float = 0.5,
    highlight: int | None = None,
) -> np.ndarray:
    """The colourised label blended over the image; with ``highlight`` the other classes are dimmed."""
    image = _rgb(image)
    colours = colorize(label, palette)
    a = float(np.clip(alpha, 0.0, 1.0))
    if highlight is None:
        return cv2.addWeighted(image, 1.0 - a, colours, a, 0.0)
    a = max(a, HIGHLIGHT_MIN_ALPHA)
    chosen = (np.asarray(label) == highlight)[..., None]
    blended = cv2.addWeighted(image, 1.0 - a, colours, a, 0.0)
    dimmed = cv2.convertScaleAbs(image, alpha=DIMMED)
    return np.where(chosen, blended, dimmed)


def class_shares(label: np.ndarray, num_classes: int) -> np.ndarray:
    """Fraction of the image's pixels in each class (sums to 1 when every id is below ``num_classes``)."""
    counts = np.bincount(np.asarray(label, dtype=np.int64).ravel(), minlength=num_classes)[:num_classes]
    return counts / max(1, int(np.asarray(label).size))


def card_classes(card: dict | None) -> tuple[list[str], Palette]:
    """Class names and palette from a checkpoint card, falling back to Stanford Background's."""
    card = card or {}
    classes = list(card.get("classes") or SBD_CLASSES)
    palette = [(int(c[0]), int(c[1]), int(c[2])) for c in (card.get("palette") or SBD_PALETTE)]
    return classes, palette


def instance_colours(n: int) -> np.ndarray:
    """``n`` distinct colours (golden-ratio hues), row 0 for instance 1; (max(n, 1), 3) uint8."""
    return np.array(
        [
            [int(255 * c) for c in colorsys.hsv_to_rgb((0.13 + i * 0.618034) % 1.0, 0.85, 0.95)]
            for i in range(max(n, 1))
        ],
        dtype=np.uint8,
    )


def draw_instances(
    image: np.ndarray,
    ids: np.ndarray,
    boxes: np.ndarray | None = None,
    scores: np.ndarray | None = None,
    alpha: float = 0.45,
) -> np.ndarray:
    """Each instance filled in its own colour with its contour and box, the box tabbed "k score"."""
    ids = np.asarray(ids)
    n = int(ids.max(initial=0))
    colours = instance_colours(n)
    out = _rgb(image).copy()
    if n:
        fill = np.take(colours, np.clip(ids, 1, None).astype(np.intp) - 1, axis=0)
        foreground = ids > 0
        out[foreground] = cv2.addWeighted(out, 1.0 - alpha, fill, alpha, 0.0)[foreground]
    for k in range(1, n + 1):
        contours, _ = cv2.findContours((ids == k).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, _colour(colours[k - 1]), 2)
    for k, box in enumerate(boxes if boxes is not None else []):
        if k >= n or not np.any(box):
            continue
        colour = _colour(colours[k])
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), colour, 2)
        text = f"{k + 1}" + (f" {float(scores[k]):.2f}" if scores is not None and k < len(scores) else "")
        _tab(out, text, x1, y1, colour)
    return out


def _colour(rgb: np.ndarray) -> tuple[int, int, int]:
    return int(rgb[0]), int(rgb[1]), int(rgb[2])


def _tab(out: np.ndarray, text: str, x: int, y: int, colour: tuple[int, int, int]) -> None:
    """Black text on a filled tab in the box's colour, just above (x, y) and kept inside the picture."""
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.4
    (width, height), baseline = cv2.getTextSize(text, font, scale, 1)
    top = max(0, y - height - baseline - 2)
    cv2.rectangle(out, (x, top), (x + width + 3, top + height + baseline + 2), colour, -1)
    cv2.putText(out, text, (x + 2, top + height + 1), font, scale, (0, 0, 0), 1, cv2.LINE_AA)


def hstack(images: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """RGB (or grey) images side by side, top-aligned, with white gaps; shorter ones padded white."""
    h = max(img.shape[0] for img in images)
    parts: list[np.ndarray] = []
    for k, img in enumerate(images):
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        if img.shape[0] != h:
            pad = np.full((h - img.shape[0], img.shape[1], 3), 255, np.uint8)
            img = np.concatenate([img, pad], axis=0)
        if k:
            parts.append(np.full((h, gap, 3), 255, np.uint8))
        parts.append(img.astype(np.uint8))
    return np.concatenate(parts, axis=1)


def vstack(rows: list[np.ndarray], gap: int = 4) -> np.ndarray | None:
    """RGB images top to bottom, narrower ones padded white on the right; ``None`` for no rows.

    Wide strips (image | truth | prediction) go in one picture rather than a gallery, whose
    cells are square and would shrink or crop them.
    """
    if not rows:
        return None
    width = max(r.shape[1] for r in rows)
    parts: list[np.ndarray] = []
    for k, r in enumerate(rows):
        if k:
            parts.append(np.full((gap, width, 3), 255, np.uint8))
        parts.append(np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255))
    return np.concatenate(parts, axis=0)


def thumbnail(image: np.ndarray, max_side: int = 512) -> np.ndarray:
    """Downscaled copy for display when the longest side exceeds ``max_side`` (else the image itself)."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
