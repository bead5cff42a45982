"""U-Net (Ronneberger et al. 2015) with batch norm, sized for a laptop CPU.

Encoder: DoubleConv blocks with max-pool between them; decoder: bilinear upsampling,
concatenation with the skip at the same scale, DoubleConv. ``forward_features`` returns
the last decoder map, so other heads (e.g. the instance model) can reuse the body.

With ``aux_heads`` (deep supervision, Lee et al. 2015) each coarser decoder stage also gets a 1x1
classifier; in training mode their logits are left in ``aux_logits`` for the loss, so the deep
layers get a gradient of their own. They never run in eval mode (or in an exported graph).

With ``context`` the bottleneck also gets the image's global context (``GlobalContext``) before the
decoder reads it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seg.models import register
from seg.models.common import DoubleConv, GlobalContext, Normalize, check_widths, upsample_to


def stage_size(size: int | torch.Tensor, level: int) -> int | torch.Tensor:
    """A side of the map after ``level`` ceil-mode 2x2 max pools: ceil(size / 2**level).

    The decoder takes its resize targets from the input's shape rather than from each skip's: an exported
    graph then reads only the input's shape, and OpenVINO fuses the bias and ReLU of the convolutions
    that feed a skip into them at any input size (with a skip's shape read, they ran apart: the served
    DWT 10 % slower at dynamic sizes)."""
    step = 2**level
    return (size + step - 1) // step


@register("unet")
class UNet(nn.Module):
    def __init__(
        self,
        num_classes: int = 9,
        base_channels: int = 32,
        depth: int = 4,
        dropout: float = 0.1,
        norm: str = "batch",
        aux_heads: bool = False,
        context: bool = False,
    ) -> None:
        check_widths("unet", ("base_channels", "depth"), base_channels, depth, 1, 6)
        super().__init__()
        self.normalize = Normalize()
        chans = [base_channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(
            [DoubleConv(3, chans[0], norm)] + [DoubleConv(chans[i - 1], chans[i], norm) for i in range(1, depth + 1)]
        )
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        # an Identity has no weights, so checkpoints without the block keep their state-dict keys
        self.context = GlobalContext(chans[-1]) if context else nn.Identity()
        self.up = nn.ModuleList([DoubleConv(chans[i + 1] + chans[i], chans[i], norm) for i in reversed(range(depth))])
        self.out_channels = chans[0]
        #: sides that are whole multiples of this halve evenly at every pooling, so the levels line up
        self.input_multiple = 2**depth
        self.head = nn.Conv2d(chans[0], num_classes, 1)
        #: one classifier per decoder stage but the last, coarsest first (the order of ``aux_logits``)
        self.aux_heads = (
            nn.ModuleList([nn.Conv2d(chans[i], num_classes, 1) for i in reversed(range(1, depth))])
            if aux_heads
            else None
        )
        self.aux_logits: list[torch.Tensor] = []

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        x = self.normalize(x)
        skips = []
        for i, block in enumerate(self.down):
            if i > 0:
                x = F.max_pool2d(x, 2, ceil_mode=True)
            x = block(x)
            skips.append(x)
        x = self.dropout(self.context(skips.pop()))
        stages = []
        for level, block in zip(reversed(range(len(skips))), self.up):
            skip = skips.pop()
            size = stage_size(height, level), stage_size(width, level)
            x = block.on_concat([upsample_to(x, size, self.training), skip])
            stages.append(x)
        if self.aux_heads is not None and self.training:
            self.aux_logits = [head(stage) for head, stage in zip(self.aux_heads, stages)]
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))
