"""Building blocks shared by the semantic models."""

from __future__ import annotations

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """ImageNet normalisation inside the model, so a checkpoint takes plain [0,1] images."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


#: normalisation layers ``conv_bn_relu`` can use; "none" (a biased conv) is for overfitting tests
NORMS = ("batch", "none")


def conv_bn_relu(cin: int, cout: int, stride: int = 1, norm: str = "batch") -> nn.Sequential:
    """3x3 conv, batch norm, ReLU; ``norm="none"`` keeps the layer indices (an identity) and gives the conv a bias."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, not {norm!r}")
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=norm == "none"),
        nn.BatchNorm2d(cout) if norm == "batch" else nn.Identity(),
        nn.ReLU(inplace=True),
    )


class DoubleConv(nn.Sequential):
    """Two 3x3 conv-BN-ReLU, the U-Net's basic block."""

    def __init__(self, cin: int, cout: int, norm: str = "batch") -> None:
        super().__init__(conv_bn_relu(cin, cout, norm=norm), conv_bn_relu(cout, cout, norm=norm))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
