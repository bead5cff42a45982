"""The per-pixel class prior (fit per-pixel class frequencies; predict them).

For each pixel position, the class frequencies over the training split. Prediction
ignores the image and returns those frequencies, resized to the input's size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seg.models import register


class PixelPrior(nn.Module):
    """Holds a (C, H, W) table of per-pixel class frequencies; output is their log."""

    trainable = False

    def __init__(self, num_classes: int = 9, height: int = 224, width: int = 288, smoothing: float = 1e-3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.smoothing = smoothing
        self.register_buffer("frequencies", torch.full((num_classes, height, width), 1.0 / num_classes))

    @torch.no_grad()
    def fit(self, masks: torch.Tensor) -> PixelPrior:
        """``masks`` (N, H, W) class ids at the table's size -> per-pixel class frequencies."""
        n, h, w = masks.shape
        if (h, w) != tuple(self.frequencies.shape[1:]):
            raise ValueError(f"masks are {h}x{w}, the prior table is {tuple(self.frequencies.shape[1:])}")
        onehot = F.one_hot(masks.long().clamp(0, self.num_classes - 1), self.num_classes)  # N,H,W,C
        counts = onehot.sum(0).permute(2, 0, 1).double() + self.smoothing
        self.frequencies.copy_((counts / counts.sum(0, keepdim=True)).float())
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        freq = self.frequencies.unsqueeze(0)
        if (h, w) != tuple(freq.shape[-2:]):
            freq = F.interpolate(freq, size=(h, w), mode="bilinear", align_corners=False)
        return freq.clamp_min(1e-8).log().expand(n, -1, -1, -1)


@register("prior")
def build_prior(num_classes: int = 9, height: int = 224, width: int = 288) -> PixelPrior:
    return PixelPrior(num_classes, height, width)
