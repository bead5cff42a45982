"""ResUNet: torchvision's ResNet-18 as the encoder, a U-Net decoder with skip connections.

The encoder's five scales (1/2 stem, 1/4 layer1, 1/8 layer2, 1/16 layer3, 1/32 layer4)
feed a decoder that upsamples and concatenates at each scale, then a light full-
resolution block. Encoder parameter names start with ``encoder.``, so the training
schedule can freeze them (stage 1) and unfreeze them with a lower learning rate (stage 2).
With ``context`` the 1/32 map also gets the image's global context (``GlobalContext``).
"""

from __future__ import annotations

import torch
from torch import nn

from seg.models import register
from seg.models.common import DoubleConv, GlobalContext, Normalize, conv_bn_relu, upsample_to
from seg.models.encoders import load_encoder_weights


class DecoderBlock(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.block = DoubleConv(cin + cskip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block.on_concat([upsample_to(x, skip.shape[-2:], self.training), skip])


class ResUNet(nn.Module):
    def __init__(
        self,
        num_classes: int = 9,
        encoder_init: str = "none",
        decoder_channels: tuple[int, ...] = (128, 64, 48, 32, 16),
        dropout: float = 0.1,
        context: bool = False,
    ) -> None:
        super().__init__()
        # torchvision imported here, not with the module: it pulls in torch._dynamo (seconds)
        from torchvision.models import ResNet18_Weights, resnet18

        self.normalize = Normalize()
        self.encoder = resnet18(weights=None)
        self.encoder.fc = nn.Identity()
        self.encoder_init = load_encoder_weights(self.encoder, encoder_init, ResNet18_Weights.IMAGENET1K_V1)
        d1, d2, d3, d4, d5 = decoder_channels
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        # an Identity has no weights, so checkpoints without the block keep their state-dict keys
        self.context = GlobalContext(512) if context else nn.Identity()
        self.dec4 = DecoderBlock(512, 256, d1)  # -> 1/16
        self.dec3 = DecoderBlock(d1, 128, d2)  # -> 1/8
        self.dec2 = DecoderBlock(d2, 64, d3)  # -> 1/4
        self.dec1 = DecoderBlock(d3, 64, d4)  # -> 1/2
        self.full_res = conv_bn_relu(3, d5)  # shallow full-resolution skip for sharp edges
        self.dec0 = DecoderBlock(d4, d5, d5)  # -> 1/1
        self.out_channels = d5
        #: sides that are whole multiples of this halve evenly down to the encoder's 1/32 level
        self.input_multiple = 32
        self.head = nn.Conv2d(d5, num_classes, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        e = self.encoder
        s0 = e.relu(e.bn1(e.conv1(x)))  # 1/2, 64
        s1 = e.layer1(e.maxpool(s0))  # 1/4, 64
        s2 = e.layer2(s1)  # 1/8, 128
        s3 = e.layer3(s2)  # 1/16, 256
        s4 = self.dropout(self.context(e.layer4(s3)))  # 1/32, 512
        y = self.dec4(s4, s3)
        y = self.dec3(y, s2)
        y = self.dec2(y, s1)
        y = self.dec1(y, s0)
        return self.dec0(y, self.full_res(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


@register("resunet")
def build_resunet(
    num_classes: int = 9,
    encoder_init: str = "none",
    decoder_channels: tuple[int, ...] = (128, 64, 48, 32, 16),
    dropout: float = 0.1,
    context: bool = False,
) -> ResUNet:
    return ResUNet(num_classes, encoder_init, tuple(decoder_channels), dropout, context)
