"""A model's foreground probability, to seed the box tool (``seg.labeling.tools.box_mask``).

An instance checkpoint says where any object of interest is: the DWT's foreground head
directly (with the test-time augmentation its card was tuned with), Mask R-CNN through
the union of its detected masks. The tools only ever see the resulting (H, W) map, so a
semantic model's softmax for one class serves just as well.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seg.instances.inference import InstancePredictor, dwt_maps


class SeedModelError(ValueError):
    """The checkpoint cannot give foreground probabilities; the message is user-facing."""


class ForegroundModel:
    """An instance checkpoint as a function image -> (H, W) foreground probability."""

    def __init__(self, predictor: InstancePredictor, name: str = "model"):
        self.predictor = predictor
        self.name = name

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> ForegroundModel:
        try:
            predictor = InstancePredictor.from_checkpoint(path)
        except (OSError, ValueError) as err:  # CheckpointError is a ValueError
            raise SeedModelError(f"{Path(path).name} cannot seed the box tool: {err}") from None
        return cls(predictor, Path(path).name)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        pred = self.predictor
        if pred.detector:
            return (pred.predict(rgb).instances > 0).astype(np.float32)
        fg, _ = dwt_maps(pred.model, rgb, work_height=pred.work_height, flip=pred.flip, scales=pred.scales)
        return np.clip(fg, 0.0, 1.0).astype(np.float32)
