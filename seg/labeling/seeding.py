"""A model's foreground probability, to seed the box tool (``seg.labeling.tools.box_mask``).

An instance checkpoint says where any object of interest is: the DWT's foreground head
directly, Mask R-CNN through the union of its detected masks. The tools only ever see the
resulting (H, W) map, so a semantic model's softmax for one class serves just as well.

Only the boxes matter, so ``in_boxes`` runs the DWT on each box with some context around
it, at the scale the whole image would have at the model's working height (the scale it
was trained at): the same probabilities inside the box for a fraction of the whole pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from seg.instances.inference import InstancePredictor, dwt_heads, dwt_maps, to_tensor

#: Context added on each side of a box for the model, as a fraction of the box's size.
CONTEXT = 0.25
#: The DWT's body halves the resolution this many times: crops are padded to a multiple of 2**levels.
SIZE_MULTIPLE = 16


class SeedModelError(ValueError):
    """The checkpoint cannot give foreground probabilities; the message is user-facing."""


class ForegroundModel:
    """An instance checkpoint as a function image -> (H, W) foreground probability.

    ``flip``: average with the mirrored pass (the card's test-time setting when None); it
    doubles the cost for a small gain on the foreground, so the box tool leaves it off.
    """

    def __init__(self, predictor: InstancePredictor, name: str = "model", flip: bool | None = False,
                 work_height: int | None = None):
        self.predictor = predictor
        self.name = name
        self.flip = predictor.flip if flip is None else bool(flip)
        self.work_height = int(work_height or predictor.work_height)

    @classmethod
    def from_checkpoint(cls, path: str | Path, flip: bool | None = False,
                        work_height: int | None = None) -> ForegroundModel:
        try:
            predictor = InstancePredictor.from_checkpoint(path)
        except (OSError, ValueError) as err:  # CheckpointError is a ValueError
            raise SeedModelError(f"{Path(path).name} cannot seed the box tool: {err}") from None
        return cls(predictor, Path(path).name, flip, work_height)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """Foreground probability over the whole image."""
        pred = self.predictor
        if pred.detector:
            return (pred.predict(rgb, tta=False).instances > 0).astype(np.float32)
        fg, _ = dwt_maps(pred.model, rgb, work_height=self.work_height, flip=self.flip)
        return np.clip(fg, 0.0, 1.0).astype(np.float32)

    def in_boxes(self, rgb: np.ndarray, boxes: Sequence[Sequence[float]], context: float = CONTEXT) -> np.ndarray:
        """Foreground probability inside (and around) each box, 0 elsewhere; one model pass per box
        region, or one over the region covering all boxes when that is smaller."""
        pred = self.predictor
        if pred.detector:
            return self(rgb)
        height, width = rgb.shape[:2]
        scale = self.work_height / height
        regions = [_region(box, context, (height, width)) for box in boxes]
        if not regions:
            return np.zeros((height, width), np.float32)
        union = (min(r[0] for r in regions), min(r[1] for r in regions),
                 max(r[2] for r in regions), max(r[3] for r in regions))
        if sum(_area(r) for r in regions) > _area(union):
            regions = [union]
        out = np.zeros((height, width), np.float32)
        device = next(pred.model.parameters()).device
        with torch.inference_mode():
            for x0, y0, x1, y1 in regions:
                crop = to_tensor(rgb[y0:y1, x0:x1])[None].to(device)
                h, w = _padded(round((y1 - y0) * scale)), _padded(round((x1 - x0) * scale))
                x = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
                fg, _ = dwt_heads(pred.model, x, self.flip)
                fg = F.interpolate(fg, size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)
                out[y0:y1, x0:x1] = np.maximum(out[y0:y1, x0:x1], fg[0, 0].cpu().numpy())
        return np.clip(out, 0.0, 1.0)


def _region(box: Sequence[float], context: float, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    height, width = shape
    x0, y0, x1, y1 = (float(v) for v in box)
    pad_x, pad_y = context * (x1 - x0) + 8, context * (y1 - y0) + 8
    return (max(0, int(x0 - pad_x)), max(0, int(y0 - pad_y)),
            min(width, int(np.ceil(x1 + pad_x))), min(height, int(np.ceil(y1 + pad_y))))


def _area(region: tuple[int, int, int, int]) -> int:
    return (region[2] - region[0]) * (region[3] - region[1])


def _padded(size: int) -> int:
    """At least one model block, rounded to the nearest multiple the body divides evenly."""
    return max(SIZE_MULTIPLE, SIZE_MULTIPLE * round(size / SIZE_MULTIPLE))
