"""A model's help for the box tool: a foreground probability per box (``seg.labeling.tools``).

An instance checkpoint says where objects of its kind are, in one of two ways:

- Mask R-CNN answers the box tool's own question. Its mask branch predicts the object's mask
  for a given box, so the user's boxes go straight to it (backbone and FPN once per image,
  then RoIAlign, mask head and predictor per box): each box gets its own object, and a
  neighbour reaching into the box is left out because the head was trained to leave it out.
- The DWT gives a foreground map; a plain map cannot tell two overlapping people apart, so
  ``box_maps`` also uses the DWT's instances: the instance that fits a box best is that box's
  object, and the other instances are taken out of its map.

``ForegroundAverage`` averages several models' per-box maps: the two models err in different
places (Mask R-CNN's 28x28 mask is coarse, the DWT's instance split can miss an occluded
person), and their average seeds GrabCut better than either (bench/bench_box_to_mask.py).
The tools only ever see (H, W) maps, so a semantic model's softmax for one class serves as well.

The DWT runs only on the region the boxes cover (with some context), at the scale the whole
image has at the model's working height (the scale it was trained at); Mask R-CNN sees the
whole image once, however many boxes it has.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import paste_masks_in_image

from seg.instances.data import boxes_from_ids
from seg.instances.inference import (
    InstancePredictor,
    heads_from_logits,
    input_stride,
    to_tensor,
    with_mirror,
)
from seg.instances.postprocess import instances_from_maps

#: Context added on each side of the boxes for the model, as a fraction of a box's size.
CONTEXT = 0.25
#: Members of an ensemble that seed the box tool (None: all): the first of the shipped DWT's four
#: alone costs a third as much for 0.005 less mean IoU (bench/bench_box_to_mask.py).
SEED_MEMBERS: int | None = 1
#: A predicted instance is a box's object when their boxes overlap at least this much (IoU).
MATCH_IOU = 0.5


class SeedModelError(ValueError):
    """The checkpoint cannot give foreground probabilities; the message is user-facing."""


class ForegroundModel:
    """An instance checkpoint as a function image (+ boxes) -> foreground probabilities.

    ``flip``: also average the mirrored pass (None: as the card says); it doubles the cost.
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
        #: crops are resized to whole multiples of this (the nets' stride), so that every net's levels line up
        self.size_multiple = math.lcm(*(input_stride(net) for net in self.nets))

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

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """Foreground probability over the whole image (a detector: where it detects objects)."""
        height, width = rgb.shape[:2]
        if self.predictor.detector:
            return np.asarray(self.predictor.predict(rgb, tta=False).instances > 0, np.float32)
        return self._maps(rgb, (0, 0, width, height))[0]

    def box_maps(self, rgb: np.ndarray, boxes: Sequence[Sequence[float]]) -> list[np.ndarray]:
        """One (H, W) foreground probability per box: a detector's mask for that box; the DWT's
        foreground around the boxes, less the instances that belong to other objects than the box's own."""
        height, width = rgb.shape[:2]
        if not len(boxes):
            return []
        if self.predictor.detector:
            return self._mask_head_maps(rgb, boxes)
        regions = [_region(box, CONTEXT, (height, width)) for box in boxes]
        union = (
            min(r[0] for r in regions),
            min(r[1] for r in regions),
            max(r[2] for r in regions),
            max(r[3] for r in regions),
        )
        fg, energy = self._maps(rgb, union)
        params = self.predictor.params.scaled((height / self.work_height) ** 2)
        instances, _ = instances_from_maps(fg, energy, params)
        return _per_box(instances, fg, boxes)

    def _mask_head_maps(self, rgb: np.ndarray, boxes: Sequence[Sequence[float]]) -> list[np.ndarray]:
        """Mask R-CNN's mask branch on the given boxes: (H, W) probability per box, 0 outside it.

        The whole image goes through the detector's own transform and backbone: its group norm
        takes statistics over the whole picture, so a crop would change every feature.
        """
        model = self.predictor.model
        height, width = rgb.shape[:2]
        device = next(model.parameters()).device
        full_boxes = torch.tensor([[float(v) for v in box] for box in boxes], dtype=torch.float32)
        with torch.inference_mode():
            images, _ = model.transform([to_tensor(rgb).to(device)])
            features = model.backbone(images.tensors)
            fed_h, fed_w = images.image_sizes[0]
            factors = torch.tensor([fed_w / width, fed_h / height] * 2)
            pooled = model.roi_heads.mask_roi_pool(features, [(full_boxes * factors).to(device)], images.image_sizes)
            logits = model.roi_heads.mask_predictor(model.roi_heads.mask_head(pooled))
            probs = logits[:, 1:2].float().sigmoid().cpu()  # class 1: the object (0 is the background)
            pasted = paste_masks_in_image(probs, full_boxes, (height, width))[:, 0].numpy()
        out = []
        for prob, box in zip(pasted, boxes):
            bx0, by0, bx1, by1 = _pixel_box(box, (height, width))
            inside = np.zeros((height, width), np.float32)
            inside[by0:by1, bx0:bx1] = prob[by0:by1, bx0:bx1]
            out.append(inside)
        return out

    def _maps(self, rgb: np.ndarray, region: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Foreground probability and expected energy in ``region`` (0 outside), at the image's size."""
        height, width = rgb.shape[:2]
        x0, y0, x1, y1 = region
        scale = self.work_height / height
        device = next(self.predictor.model.parameters()).device
        with torch.inference_mode():
            crop = to_tensor(rgb[y0:y1, x0:x1])[None].to(device)
            size = tuple(_rounded(round(side * scale), self.size_multiple) for side in (y1 - y0, x1 - x0))
            x = F.interpolate(crop, size=size, mode="bilinear", align_corners=False, antialias=True)
            heads = [heads_from_logits(net(with_mirror(x, self.flip)), self.flip) for net in self.nets]
            fg_small = torch.stack([h[0] for h in heads]).mean(0)
            energy_small = torch.stack([h[1] for h in heads]).mean(0)  # linear in the level probabilities
            maps = torch.cat([fg_small, energy_small], 1)
            maps = F.interpolate(maps, size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)[0].cpu().numpy()
        fg, energy = np.zeros((height, width), np.float32), np.zeros((height, width), np.float32)
        fg[y0:y1, x0:x1] = np.clip(maps[0], 0.0, 1.0)
        energy[y0:y1, x0:x1] = maps[1]
        return fg, energy


class ForegroundAverage:
    """Several models as one: each box's map is the mean of theirs (``ForegroundModel.box_maps``)."""

    def __init__(self, models: Sequence[ForegroundModel]):
        if not models:
            raise SeedModelError("name at least one model to seed the box tool")
        self.models = list(models)
        self.name = "+".join(m.name for m in self.models)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return np.mean([m(rgb) for m in self.models], axis=0).astype(np.float32)

    def box_maps(self, rgb: np.ndarray, boxes: Sequence[Sequence[float]]) -> list[np.ndarray]:
        per_model = [m.box_maps(rgb, boxes) for m in self.models]
        return [np.mean(maps, axis=0).astype(np.float32) for maps in zip(*per_model)]


def load_seed_models(
    paths: Sequence[str | Path], members: int | None = SEED_MEMBERS
) -> ForegroundModel | ForegroundAverage:
    """One checkpoint as a ``ForegroundModel``, several as their ``ForegroundAverage``."""
    models = [ForegroundModel.from_checkpoint(path, members=members) for path in paths]
    return models[0] if len(models) == 1 else ForegroundAverage(models)  # none: ForegroundAverage refuses


def _pixel_box(box: Sequence[float], shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The pixels a box covers (x1, y1 exclusive), clipped to the image."""
    height, width = shape
    x0, y0, x1, y1 = (float(v) for v in box)
    return (
        max(0, int(np.floor(x0))),
        max(0, int(np.floor(y0))),
        min(width, int(np.ceil(x1))),
        min(height, int(np.ceil(y1))),
    )


def _per_box(instances: np.ndarray, fg: np.ndarray, boxes: Sequence[Sequence[float]]) -> list[np.ndarray]:
    """``fg`` once per box with the other predicted instances taken out: the instance whose box
    overlaps the box best (at least ``MATCH_IOU``) is its object. A box no instance fits gets
    ``fg`` as it is."""
    predicted = boxes_from_ids(instances)
    out = []
    for box in boxes:
        overlaps = [_box_iou(box, p) for p in predicted]
        best = int(np.argmax(overlaps)) if overlaps else -1
        if best < 0 or overlaps[best] < MATCH_IOU:
            out.append(fg)
            continue
        others = (instances > 0) & (instances != best + 1)
        out.append(np.where(others, 0.0, fg).astype(np.float32))
    return out


def _box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


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


def _rounded(size: int, multiple: int) -> int:
    """The size rounded to a multiple of ``multiple`` (the nets' stride), at least one multiple."""
    return max(multiple, multiple * round(size / multiple))
