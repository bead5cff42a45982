"""A basic fully convolutional network: a plain encoder, a 1x1 classifier, bilinear upsampling.

No skip connections, so fine detail is lost at the 1/16 output stride: the point of
comparison for the U-Nets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seg.models import register
from seg.models.common import Normalize, check_widths, conv_bn_relu


class BasicCNN(nn.Module):
    def __init__(self, num_classes: int = 9, width: int = 32, stages: int = 4, norm: str = "batch") -> None:
        check_widths("cnn", ("width", "stages"), width, stages, 1, 6, doubled=-1)
        super().__init__()
        self.normalize = Normalize()
        layers: list[nn.Module] = []
        cin = 3
        for i in range(stages):
            cout = width * 2**i
            layers += [conv_bn_relu(cin, cout, stride=2, norm=norm), conv_bn_relu(cout, cout, norm=norm)]
            cin = cout
        self.encoder = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(cin, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        logits = self.classifier(self.encoder(self.normalize(x)))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


@register("cnn")
def build_cnn(num_classes: int = 9, width: int = 32, stages: int = 4, norm: str = "batch") -> BasicCNN:
    return BasicCNN(num_classes, width, stages, norm)
