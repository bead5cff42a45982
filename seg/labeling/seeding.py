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

from seg.instances.inference import InstancePredictor, heads_from_logits, to_tensor, with_mirror

#: Context added on each side of a box for the model, as a fraction of the box's size.
CONTEXT = 0.25
#: Members of an ensemble that seed the box tool: its first alone is 3-4x faster than all four of
#: the shipped DWT, for about 0.01 less mean IoU (bench/bench_box_to_mask.py, train split).
SEED_MEMBERS = 1
#: Crops are resized to a multiple of this, so that the body's four halvings divide them evenly.
SIZE_MULTIPLE = 16


class SeedModelError(ValueError):
    """The checkpoint cannot give foreground probabilities; the message is user-facing."""


class ForegroundModel:
    """An instance checkpoint as a function image -> (H, W) foreground probability.

    ``flip``: average with the mirrored pass (the card's test-time setting when None); it
    doubles the cost for a small gain on the foreground, so the box tool leaves it off.
    ``members``: how many members of an ensemble to average (None: all).
    ``work_height``: the scale the model sees the image at (default: its card's).
    """

    def __init__(
        self,
        predictor: InstancePredictor,
        name: str = "model",
        flip: bool | None = False,
        members: int | None = SEED_MEMBERS,
        work_height: int | None = None,
    ):
        self.predictor = predictor
        self.name = name
        self.flip = predictor.flip if flip is None else bool(flip)
        self.work_height = int(work_height or predictor.work_height)
        model = predictor.model
        nets = list(model.members) if hasattr(model, "members") else [model]
        self.nets = nets[: max(1, int(members))] if members else nets

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        flip: bool | None = False,
        members: int | None = SEED_MEMBERS,
        work_height: int | None = None,
    ) -> ForegroundModel:
        try:
            predictor = InstancePredictor.from_checkpoint(path)
        except (OSError, ValueError) as err:  # CheckpointError is a ValueError
            raise SeedModelError(f"{Path(path).name} cannot seed the box tool: {err}") from None
        return cls(predictor, Path(path).name, flip, members, work_height)

    def _foreground(self, x: torch.Tensor) -> torch.Tensor:
        """(1, 1, h, w) foreground probability of a float batch, averaged over the chosen members."""
        fgs = [heads_from_logits(net(with_mirror(x, self.flip)), self.flip)[0] for net in self.nets]
        return torch.stack(fgs).mean(0)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """Foreground probability over the whole image."""
        if self.predictor.detector:
            return (self.predictor.predict(rgb, tta=False).instances > 0).astype(np.float32)
        height, width = rgb.shape[:2]
        return self.in_boxes(rgb, [(0, 0, width, height)], context=0.0)

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
        union = (
            min(r[0] for r in regions),
            min(r[1] for r in regions),
            max(r[2] for r in regions),
            max(r[3] for r in regions),
        )
        if sum(_area(r) for r in regions) > _area(union):
            regions = [union]
        out = np.zeros((height, width), np.float32)
        device = next(pred.model.parameters()).device
        with torch.inference_mode():
            for x0, y0, x1, y1 in regions:
                crop = to_tensor(rgb[y0:y1, x0:x1])[None].to(device)
                h, w = _padded(round((y1 - y0) * scale)), _padded(round((x1 - x0) * scale))
                x = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
                fg = F.interpolate(self._foreground(x), size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)
                out[y0:y1, x0:x1] = np.maximum(out[y0:y1, x0:x1], fg[0, 0].cpu().numpy())
        return np.clip(out, 0.0, 1.0)


def _region(box: Sequence[float], context: float, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    height, width = shape
    x0, y0, x1, y1 = (float(v) for v in box)
    pad_x, pad_y = context * (x1 - x0) + 8, context * (y1 - y0) + 8
    return (
        max(0, int(x0 - pad_x)),
        max(0, int(y0 - pad_y)),
        min(width, int(np.ceil(x1 + pad_x))),
        min(height, int(np.ceil(y1 + pad_y))),
    )


def _area(region: tuple[int, int, int, int]) -> int:
    return (region[2] - region[0]) * (region[3] - region[1])


def _padded(size: int) -> int:
    """The size rounded to a multiple of ``SIZE_MULTIPLE`` (the body halves it four times), at least one."""
    return max(SIZE_MULTIPLE, SIZE_MULTIPLE * round(size / SIZE_MULTIPLE))
