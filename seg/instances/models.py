"""The two instance models, registered as ``dwt`` and ``maskrcnn``.

``dwt``: the core's U-Net / ResUNet body with two heads (foreground, energy levels);
its forward returns one tensor ``(N, 2 + K, H, W)`` so it fits the registry contract
(logits at input resolution); ``split_outputs`` separates the heads.

``maskrcnn``: torchvision's Mask R-CNN on a small ResNet-FPN, sized for a CPU and for the
shared checkpoint budget. Its backbone initialisation follows the core's encoder rules
(``none`` | ``imagenet`` | a local state-dict file), plus ``coco`` for the full
ResNet-50 model through torchvision's weights API. A weight file that cannot be had
raises; nothing falls back silently.

torchvision is imported when a Mask R-CNN is first built, not with this module: importing it
pulls in ``torch._dynamo`` (seconds), which the DWT and the dashboard's start do not need.
"""

from __future__ import annotations

import functools
import math
import sys
from typing import Any

import torch
from torch import nn

from seg.instances.targets import ENERGY_EDGES
from seg.models import create, register
from seg.models.common import conv_bn_relu
from seg.models.encoders import load_encoder_weights

#: the stride of a body that does not say its own (``input_multiple``): the U-Net's four halvings
DEFAULT_STRIDE = 16

#: ``fg_gate`` values -> how the energy head reads the foreground probability (None: it does not)
FG_GATES: dict[bool | str, str | None] = {
    False: None,
    "none": None,
    True: "multiply",
    "multiply": "multiply",
    "concat": "concat",
}


class DeepWatershed(nn.Module):
    """Backbone features -> foreground logits (2) and energy-level logits (K).

    With ``direction_head`` a third head predicts, on pedestrian pixels, the direction away from the
    nearest boundary (the paper's direction network, here a training signal beside the energy): in
    training mode its (N, 2, H, W) output is left in ``direction_logits`` for the loss; inference
    never runs it, so exports are the two-head DWT's.

    ``fg_gate`` gives the energy head the foreground head's own probability as one more input
    channel (the paper feeds its direction network a semantic segmentation): ``"multiply"`` (or
    ``True``) also gates the features by it, the paper's gating, so the energy, read only inside
    the foreground, need not model the background; ``"concat"`` leaves the features as they are.
    The probability is detached, so the energy loss does not train the foreground head.
    """

    def __init__(
        self, backbone: nn.Module, energy_levels: int, direction_head: bool = False, fg_gate: bool | str = False
    ) -> None:
        super().__init__()
        channels = int(backbone.out_channels)
        if hasattr(backbone, "head"):
            backbone.head = nn.Identity()  # the semantic head is unused; drop its weights
        self.backbone = backbone
        #: what inputs are padded to (``seg.instances.inference.pad_to_stride``): the body's own stride
        self.input_multiple = int(getattr(backbone, "input_multiple", DEFAULT_STRIDE))
        self.energy_levels = energy_levels
        self.fg_head = nn.Sequential(conv_bn_relu(channels, channels), nn.Conv2d(channels, 2, 1))
        # the energy needs a wider view (how far to the boundary), hence two 3x3 layers
        self.fg_gate = FG_GATES[fg_gate]
        self.energy_head = nn.Sequential(
            conv_bn_relu(channels + int(self.fg_gate is not None), channels),
            conv_bn_relu(channels, channels),
            nn.Conv2d(channels, energy_levels, 1),
        )
        self.direction_head = (
            nn.Sequential(conv_bn_relu(channels, channels), nn.Conv2d(channels, 2, 1)) if direction_head else None
        )
        self.direction_logits: torch.Tensor | None = None

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Foreground logits (N, 2, H, W) and energy logits (N, K, H, W), each its own tensor."""
        features = self.backbone.forward_features(x)
        if self.direction_head is not None and self.training:
            self.direction_logits = self.direction_head(features)
        fg = self.fg_head(features)
        if self.fg_gate is None:
            return fg, self.energy_head(features)
        gate = fg.detach().float().softmax(1)[:, 1:].to(features.dtype)
        gated = features * gate if self.fg_gate == "multiply" else features
        return fg, self.energy_head(torch.cat([gated, gate], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.heads(x), dim=1)


def split_outputs(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 2+K, H, W) -> foreground logits (N, 2, H, W), energy logits (N, K, H, W)."""
    return logits[:, :2], logits[:, 2:]


@register("dwt", task="instances")
def build_dwt(
    num_classes: int = 2,
    backbone: str = "unet",
    energy_levels: int = len(ENERGY_EDGES),
    direction_head: bool = False,
    fg_gate: bool | str = False,
    **backbone_kwargs,
) -> DeepWatershed:
    """``backbone`` is a registered body with ``forward_features`` (unet, resunet); extra kwargs go to it.

    ``fg_gate``: the energy head also reads the foreground probability, ``"multiply"`` (``true``) gating
    the features by it or ``"concat"`` beside them (``DeepWatershed``).
    """
    if num_classes != 2:
        raise ValueError("the DWT separates one class (pedestrian) from background: num_classes must be 2")
    body = create(backbone, num_classes=2, **backbone_kwargs)
    if not hasattr(body, "forward_features"):
        raise ValueError(f"backbone {backbone!r} has no forward_features; use unet or resunet")
    if not isinstance(fg_gate, (bool, str)) or fg_gate not in FG_GATES:
        raise ValueError(f"fg_gate is one of {sorted(map(str, FG_GATES))}, got {fg_gate!r}")
    return DeepWatershed(body, energy_levels, direction_head, fg_gate)


class AveragedHeads(nn.ModuleList):
    """An ensemble's members run as one: their foreground and energy-level probabilities averaged,
    (N, 2+K, H, W).

    A module of its own (a ``ModuleList``, so the state-dict keys stay ``members.<i>``) that a serving
    runtime exports alone, and that the predictor reads its heads from (``network_heads``): the log the
    ensemble's forward takes for callers that read logits (OpenVINO runs it on a reference kernel, 4 % of
    the served DWT's time) and the softmax that would undo it never run when serving.
    """

    @property
    def input_multiple(self) -> int:
        """The least common multiple of every member's ``input_multiple``."""
        return math.lcm(*(int(getattr(member, "input_multiple", DEFAULT_STRIDE)) for member in self))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # each member's heads apart: concatenating them only to split them again costs an exported
        # graph a copy of every member's full-resolution output (a slow split in OpenVINO)
        heads = [member.heads(x) for member in self]
        fg = torch.stack([f.float().softmax(1) for f, _ in heads]).mean(0)
        energy = torch.stack([e.float().softmax(1) for _, e in heads]).mean(0)
        return torch.cat([fg, energy], dim=1)


class DWTEnsemble(nn.Module):
    """Several DWTs whose head probabilities are averaged (foreground and energy levels).

    The forward returns the *log* of the averaged probabilities, so everything that reads
    a DWT (``split_outputs`` + softmax) reads the ensemble unchanged: softmax(log p) = p.
    """

    #: the part a serving runtime exports (``AveragedHeads``)
    SERVED_PART = "members"

    def __init__(self, members: list[DeepWatershed]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = AveragedHeads(members)
        self.energy_levels = members[0].energy_levels
        #: the members the fill passes run (``with_fill_members``); None: all of them, through ``members``
        self.fill: AveragedHeads | None = None

    @property
    def input_multiple(self) -> int:
        """Its members' (a serving runtime's part that replaces ``members`` keeps it: ``seg.runtime``)."""
        return self.members.input_multiple

    def with_fill_members(self, indices: list[int] | tuple[int, ...]) -> DWTEnsemble:
        """A new ensemble of the same member modules (no weights copied) whose fill passes run on these members
        alone (a card's ``fill_members``; on val, one member's fill found nearly the pedestrians all four did, at a
        quarter of the cost); this one is left as it was. The new one is served, never saved: its state dict holds
        the fill members twice."""
        count = len(self.members)
        if not indices or any(not 0 <= int(i) < count for i in indices):
            raise ValueError(f"fill members must be among 0..{count - 1}, got {list(indices)}")
        ensemble = DWTEnsemble(list(self.members))
        ensemble.fill = AveragedHeads([self.members[int(i)] for i in indices])
        return ensemble.train(self.training)

    def heads_for(self, fill: bool) -> nn.Module:
        """What runs a pass: the fill members for a fill pass where they are set, else every member."""
        return self.fill if fill and self.fill is not None else self.members

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        log = self.members(x).clamp_min(1e-12).log()
        if self.fill is None:
            return log
        # with fill members set (a predictor's model), one call shows a serving runtime both parts
        return log, self.fill(x).clamp_min(1e-12).log()


@register("dwt_ensemble", task="instances")
def build_dwt_ensemble(
    num_classes: int = 2,
    members: int = 2,
    backbone: str = "unet",
    energy_levels: int = len(ENERGY_EDGES),
    **backbone_kwargs,
) -> DWTEnsemble:
    """``members`` DWTs of one architecture (built by ``seg.instances.ensemble.combine``)."""
    return DWTEnsemble(
        [build_dwt(num_classes, backbone, energy_levels, **backbone_kwargs) for _ in range(int(members))]
    )


# --------------------------------------------------------------------------- Mask R-CNN

_RESNETS = ("resnet18", "resnet34", "resnet50")


def _resnet_factory(name: str) -> tuple[Any, Any]:
    """torchvision's ResNet builder and its ImageNet weights entry."""
    from torchvision.models import resnet

    number = name.removeprefix("resnet")
    return getattr(resnet, name), getattr(resnet, f"ResNet{number}_Weights").IMAGENET1K_V1


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4), channels)


def _resnet_body(name: str, encoder_init: str, norm: str) -> nn.Module:
    """The ResNet trunk with the requested initialisation (see module docstring)."""
    if name not in _RESNETS:
        raise ValueError(f"unknown Mask R-CNN backbone {name!r}; choose from {sorted(_RESNETS)}")
    if norm == "auto":
        # pretrained statistics are kept frozen (torchvision's recipe); from scratch with
        # batches of 2 images, batch norm is useless, so group norm (He et al. 2019)
        norm = "frozen_bn" if encoder_init != "none" else "group"
    from torchvision.ops import misc as ops_misc

    norm_layer = {"frozen_bn": ops_misc.FrozenBatchNorm2d, "bn": nn.BatchNorm2d, "group": _group_norm}[norm]
    factory, weights_enum = _resnet_factory(name)
    body = factory(weights=None, norm_layer=norm_layer)
    if encoder_init != "none":
        load_encoder_weights(body, encoder_init, weights_enum)  # the core's single copy of the rules
    return body


def _load_coco(model: nn.Module) -> None:
    """COCO Mask R-CNN weights (ResNet-50 FPN only) via torchvision's weights API + hub cache.

    The two class-specific predictors are left at their fresh initialisation (91 COCO
    classes vs our 2). Raises when the weights are not in the cache and cannot be downloaded.
    """
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    try:
        state = MaskRCNN_ResNet50_FPN_Weights.COCO_V1.get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # network / cache failures surface with a clear message
        raise RuntimeError(
            f"COCO Mask R-CNN weights could not be loaded ({err}); put them in the torch hub "
            "cache or use --encoder-init none|imagenet|<file>"
        ) from err
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)


@functools.cache
def _pedestrian_maskrcnn() -> type:
    """``PedestrianMaskRCNN``: torchvision's MaskRCNN, a named subclass so checkpoints and the UI can
    tell it apart; made on first use (see the module docstring), the same class every time."""
    from torchvision.models.detection import MaskRCNN

    return type(
        "PedestrianMaskRCNN",
        (MaskRCNN,),
        {"__module__": __name__, "__qualname__": "PedestrianMaskRCNN", "__doc__": "torchvision's MaskRCNN, named."},
    )


def __getattr__(name: str) -> Any:
    """``PedestrianMaskRCNN`` resolves here (and for pickle's lookups) without importing torchvision early."""
    if name == "PedestrianMaskRCNN":
        return _pedestrian_maskrcnn()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@register("maskrcnn", task="instances")
def build_maskrcnn(
    num_classes: int = 2,
    backbone: str = "resnet18",
    encoder_init: str = "none",
    norm: str = "auto",
    fpn_channels: int = 128,
    returned_layers: tuple[int, ...] = (1, 2, 3),
    min_size: int = 320,
    max_size: int = 560,
    representation_size: int = 256,
    test_proposals: int = 1000,
) -> nn.Module:
    """A small Mask R-CNN: ResNet trunk up to ``layer{max(returned_layers)}``, FPN, tall anchors.

    ``test_proposals``: region proposals kept after the RPN's NMS at inference (torchvision's
    default 1,000); the box and mask heads pool every one, so fewer is faster. It changes no
    weight: ``tune-instances`` chooses it on val and records it here, in the card's ``arch_kwargs``.

    ResNet-18 cut after layer3 with a 128-channel FPN is ~6M parameters (12 MB in fp16),
    which fits the shared checkpoint budget; ``backbone="resnet50", encoder_init="coco"``
    rebuilds torchvision's standard model instead.
    """
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    returned_layers = tuple(int(i) for i in returned_layers)
    if encoder_init == "coco":
        if backbone != "resnet50":
            raise ValueError("COCO Mask R-CNN weights exist for resnet50 only")
        from torchvision.models.detection import maskrcnn_resnet50_fpn

        model = maskrcnn_resnet50_fpn(
            weights=None,
            weights_backbone=None,
            num_classes=91,
            min_size=min_size,
            max_size=max_size,
            rpn_post_nms_top_n_test=int(test_proposals),
        )
        _load_coco(model)
        in_features = model.roi_heads.box_predictor.cls_score.in_features
        model.roi_heads.box_predictor = FastRCNNPredictor(in_features, num_classes)
        model.roi_heads.mask_predictor = MaskRCNNPredictor(256, 256, num_classes)
        model.__class__ = _pedestrian_maskrcnn()
        return model
    body = _resnet_body(backbone, encoder_init, norm)
    stage_channels = {1: 64, 2: 128, 3: 256, 4: 512}
    if backbone == "resnet50":
        stage_channels = {k: v * 4 for k, v in stage_channels.items()}
    return_layers = {f"layer{k}": str(i) for i, k in enumerate(returned_layers)}
    # BackboneWithFPN keeps only the trunk up to the last returned layer
    fpn = BackboneWithFPN(
        body, return_layers, [stage_channels[k] for k in returned_layers], fpn_channels, extra_blocks=LastLevelMaxPool()
    )
    levels = len(returned_layers) + 1
    sizes = tuple((32 * 2**i,) for i in range(levels))
    anchors = AnchorGenerator(sizes, ((1.0, 2.0, 3.0),) * levels)  # h/w: pedestrians are tall
    box_head = TwoMLPHead(fpn_channels * 7 * 7, representation_size)
    mask_head = MaskRCNNHeads(fpn_channels, [fpn_channels] * 4, 1)
    model = _pedestrian_maskrcnn()(
        fpn,
        num_classes=None,
        min_size=min_size,
        max_size=max_size,
        rpn_anchor_generator=anchors,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(representation_size, num_classes),
        mask_head=mask_head,
        mask_predictor=MaskRCNNPredictor(fpn_channels, fpn_channels, num_classes),
        box_detections_per_img=50,
        rpn_post_nms_top_n_test=int(test_proposals),
    )
    return model


def is_detector(model: nn.Module) -> bool:
    """Whether ``model`` is a Mask R-CNN; none can be while torchvision's detection models are not imported."""
    detection = sys.modules.get("torchvision.models.detection")
    return detection is not None and isinstance(model, detection.MaskRCNN)
