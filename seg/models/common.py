"""Building blocks shared by the semantic models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seg.config import require_whole

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


class _DenseGrad(torch.autograd.Function):
    """The identity, whose backward hands on a dense copy of a strided gradient."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        if grad.is_contiguous() or grad.is_contiguous(memory_format=torch.channels_last):
            return grad
        layout = torch.channels_last if grad.dim() == 4 and grad.stride(1) == 1 else torch.contiguous_format
        return grad.contiguous(memory_format=layout)


def upsample_to(x: torch.Tensor, size: torch.Size | tuple[int, int], training: bool) -> torch.Tensor:
    """``x`` resized bilinearly (half-pixel centres) to ``size``, as a decoder joins it to its skip.

    ``training``: the gradient that comes back is a channel slice of the concatenation's, and PyTorch's CPU
    backward of the resize takes a generic path on such a strided gradient (bf16, channels-last: 3.6x
    slower over a U-Net's four at batch 16), so it is made dense first. Off for inference and export.
    """
    y = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return _DenseGrad.apply(y) if training and torch.is_grad_enabled() else y


#: normalisation layers ``conv_bn_relu`` can use; "none" (a biased conv) is for overfitting tests
NORMS = ("batch", "none")

#: the widest stage a model may have: a U-Net of base 32 and depth 6 (126 M parameters, 500 MB in fp32);
#: a wider one does not train on a CPU and can exhaust its memory just being built
MAX_STAGE_CHANNELS = 2048


def check_widths(
    name: str, keys: tuple[str, str], first: object, stages: object, low: int, high: int, doubled: int = 0
) -> None:
    """Refuse, saying why, a channel or stage count that builds nothing, or a widest stage (``first``
    channels doubled ``stages + doubled`` times) over ``MAX_STAGE_CHANNELS``: before any tensor is
    allocated, since an oversized ``--arch`` would otherwise be killed for memory. ``keys``: the two
    arguments' names, as ``--arch`` spells them."""
    require_whole(f"{name}: {keys[0]}", first, 1)
    require_whole(f"{name}: {keys[1]}", stages, low, high)
    widest = first * 2 ** (stages + doubled)
    if widest > MAX_STAGE_CHANNELS:
        raise ValueError(
            f"{name}: its widest stage would have {widest} channels; at most {MAX_STAGE_CHANNELS}: "
            f"lower {keys[0]} or {keys[1]}"
        )


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

    def on_concat(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """``self(torch.cat(parts, dim=1))``, a decoder joining its upsampled path to a skip.

        In an exported graph the first convolution runs on each part with its slice of the weights and the
        results are summed: the same function without the concatenated map, which OpenVINO int8 copies through
        a reference kernel under one scale for both parts (the served int8 U-Net's graph: 4.35 -> 3.8 ms on an
        AMX Xeon; docs/experiments.md, "Decoder joins without a concatenation"). Eager PyTorch and training
        keep the concatenation: the trained model's function, bit for bit.
        """
        if not torch.onnx.is_in_onnx_export():
            return self(torch.cat(parts, dim=1))
        first = self[0]
        conv = first[0]
        y = None
        start = 0
        for part in parts:
            stop = start + int(part.shape[1])  # a constant in the graph: its weight slice folds into one
            bias = conv.bias if start == 0 else None
            out = F.conv2d(part, conv.weight[:, start:stop], bias, conv.stride, conv.padding, conv.dilation)
            y = out if y is None else y + out
            start = stop
        for layer in list(first)[1:]:
            y = layer(y)
        return self[1](y)


class GlobalContext(nn.Module):
    """Image-level context added to every position of a feature map (ParseNet, Liu et al. 2015;
    the additive form of GCNet, Cao et al. 2019).

    A convolutional bottleneck sees a window of the image, not all of it; the spatial mean of the map,
    sent through a small two-layer transform, tells each position what the whole scene holds (a
    mountain range behind the building, water below the sky). The last layer starts at zero, so the
    block is an identity when added to a trained model, and a warm restart starts from that model's
    answers. A mean over the map exports to every serving runtime at any input size.
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, 8)
        self.squeeze = nn.Conv2d(channels, hidden, 1)
        self.expand = nn.Conv2d(hidden, channels, 1)
        nn.init.zeros_(self.expand.weight)
        nn.init.zeros_(self.expand.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3), keepdim=True)
        return x + self.expand(torch.relu(self.squeeze(pooled)))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
