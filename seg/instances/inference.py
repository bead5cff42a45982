"""Instance prediction for any instance checkpoint (DWT or Mask R-CNN), at the input's size.

``InstancePredictor.from_checkpoint(path).predict(rgb)`` is what the CLI and the
dashboard call. The DWT runs at the working height; its foreground probability and
expected energy are upsampled (both are linear in the level probabilities, so this
equals upsampling the distributions) and post-processed at the original size. Its
mirrored test-time pass runs in the same batch as the plain one; a separate pass on the image
enlarged (the card's ``fill_scales``) adds the small pedestrians it finds where the partition has
none (``fill_partition``). Mask R-CNN's test-time views
(mirror, larger scale) each give a set of detections; ``merge_detections`` makes them one.

``runtime`` says what runs the network (``seg.runtime``): eager PyTorch by default, ``auto``
for the fastest backend that keeps the agreement contract on the val split (mask AP within
``MASK_AP_TOLERANCE`` of eager fp32, instance count within ``COUNT_TOLERANCE`` on every
image). The DWT is served whole; Mask R-CNN serves its backbone, RPN head, box head and mask
head through the backend (``DETECTOR_PARTS``) and keeps anchors, proposals, RoI pooling and mask
pasting in PyTorch.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from torch import nn

from seg.config import dataset_dir
from seg.instances import INSTANCE_ARCHITECTURES
from seg.instances.coco_eval import InstanceEvaluator, mask_iou
from seg.instances.data import (
    WORK_HEIGHT,
    InstanceSample,
    boxes_from_ids,
    ids_for_split,
    load_instance_samples,
    load_sample,
    relabel_sequential,
    work_size,
)
from seg.instances.models import DEFAULT_STRIDE, DWTEnsemble, is_detector, split_outputs
from seg.instances.postprocess import (
    FILL_MAX_IOU,
    FILL_MIN_FREE,
    FILL_SCORE_SCALE,
    FILL_SIZE_FACTOR,
    PostprocessParams,
    partition,
    ranked_candidates,
)
from seg.io import atomic_write_text, check_rgb
from seg.runtime import (
    CALIBRATION_IMAGES,
    Agreement,
    DeferredServing,
    RuntimeChoice,
    RuntimePart,
    ServingSpec,
    channels_last_on_cpu,
    code_key,
    exclusive_lock,
    export_dir,
    fold_batch_norms,
    module_device,
    resolve_runtime,
    serving_module,
    weights_key,
)

DETECTION_SCORE_THRESHOLD = 0.5
#: a detector's soft masks are cut here unless its card says otherwise (``mask_threshold``, tuned on val)
MASK_THRESHOLD = 0.5
#: mask IoU at which detections of two test-time views are one pedestrian (chosen on val: from 0.5
#: to 0.8, mask AP varied by 0.005 with the mirror alone and peaked at 0.7 with the mirror and 1.25x)
DETECTION_MERGE_IOU = 0.7
#: The agreement contract for an instance model served by a faster backend (on the val split).
MASK_AP_TOLERANCE = 0.005
COUNT_TOLERANCE = 1
#: Mask R-CNN's parts served by a backend (plain tensor functions) and their varying input dims:
#: the backbone and the RPN head (a list of feature maps) vary in size, the RoI heads in rows.
DETECTOR_PARTS = {
    "backbone": (0, 2, 3),
    "rpn.head": (0, 2, 3),
    "roi_heads.box_head": (0,),
    "roi_heads.mask_head": (0,),
    "roi_heads.mask_predictor": (0,),
}
#: Smaller sets tried on a backend whose full set fails the agreement contract (the rest stays eager).
DETECTOR_FALLBACK_PARTS = (
    ("backbone", "rpn.head", "roi_heads.box_head"),
    ("backbone", "roi_heads.box_head"),
)


@dataclass
class InstanceResult:
    """Per-pixel instance ids (0 background) and per-instance scores / xyxy boxes, at the input size."""

    instances: np.ndarray  # (H, W) int32
    scores: np.ndarray  # (N,)
    boxes: np.ndarray  # (N, 4) xyxy, x2/y2 exclusive
    energy: np.ndarray | None  # (H, W) expected energy level on the predicted foreground, 0 elsewhere (DWT)
    foreground: np.ndarray | None  # (H, W) foreground probability (DWT only)
    latency_ms: float
    # every candidate, overlapping allowed (Mask R-CNN; the DWT's partition + alternatives) — what COCO AP ranks
    all_masks: np.ndarray | None = None  # (P, H, W) bool
    all_scores: np.ndarray | None = None

    @property
    def num_instances(self) -> int:
        return len(self.scores)

    def candidates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(masks, scores, boxes) for AP: every candidate when there are more than the id map's."""
        if self.all_masks is not None:
            return self.all_masks, self.all_scores, boxes_of_masks(self.all_masks)
        ids = np.arange(1, self.num_instances + 1)
        return self.instances[None] == ids[:, None, None], self.scores, self.boxes


def boxes_of_masks(masks: np.ndarray) -> np.ndarray:
    boxes = np.zeros((len(masks), 4), np.float32)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        if len(xs):
            boxes[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return boxes


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)


#: test-time augmentation settings by name: (flip, scales); ``tune-instances --tta auto`` tries them all
TTA_OPTIONS: dict[str, tuple[bool, tuple[float, ...]]] = {
    "none": (False, (1.0,)),
    "flip": (True, (1.0,)),
    "scales": (False, (1.0, 1.25)),
    "flip+scales": (True, (1.0, 1.25)),
}

#: separate passes whose instances ``tune-instances`` tries ranking after the main pass's (besides none)
ALTERNATIVE_SCALE_OPTIONS: tuple[tuple[float, ...], ...] = ((1.5,),)
#: separate passes whose small pedestrians ``tune-instances`` tries adding to the partition (besides
#: none), cheapest first
FILL_SCALE_OPTIONS: tuple[tuple[float, ...], ...] = ((1.5,), (1.75,), (2.0,))
#: a fill pass runs on this many vertical strips of the enlarged image, each reaching ``STRIP_OVERLAP``
#: px (enlarged) past its share on both sides: its peak memory is a narrower pass's. Whole, the 2x pass
#: held the dashboard's process 0.4 GB above the passes at the working size
FILL_STRIPS = 2
STRIP_OVERLAP = 64
#: the DWT's inputs are padded to whole multiples of its body's stride (``pad_to_stride``), this one for a body
#: that says none: the U-Net body's four poolings
PAD_MULTIPLE = DEFAULT_STRIDE
#: and their widths further, to whole multiples of this: a pass's height is set by the working height, so its
#: width alone tells one image's input shape from another's. OpenVINO keeps the kernels of the last 15-20 shapes
#: a dynamic-shape DWT has met (``seg.runtime``'s cache bound); with 16-px widths Penn-Fudan brings 81 shapes
#: and, simulated, about half of a browsing visitor's passes meet a shape to be set up anew, with 64-px widths
#: 25 shapes and about 5 % (docs/experiments.md, "Widths in 64-px steps")
PAD_WIDTH_MULTIPLE = 64
#: the DWT runs an image at most this many working heights wide (a 1024x40 panorama would be 288 x 7373 px,
#: 18 s of eager DWT and 40 s with the fill pass): wider ones run at a lower height. Penn-Fudan's widest
#: image is 2.3 working heights wide
MAX_WORK_ASPECT = 4.0
#: strips are never wider than this (enlarged px, before their overlap): a very wide upload gets more
#: of them, so a strip's memory stays that of a Penn-Fudan image's (the widest is 1,320 px at 2x: two strips)
MAX_STRIP_WIDTH = 704


class ImageMaps(NamedTuple):
    """One image's DWT maps at one size: the main pass's foreground probability and expected energy,
    and (fg, energy) of separate passes: ``alternatives`` rank after the partition (COCO AP only),
    ``fills`` add their small pedestrians to it (``fill_partition``)."""

    fg: np.ndarray
    energy: np.ndarray
    alternatives: tuple[tuple[np.ndarray, np.ndarray], ...] = ()
    fills: tuple[tuple[np.ndarray, np.ndarray], ...] = ()


def heads_from_logits(logits: torch.Tensor, flip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground probability and expected energy level, (N, 1, H, W) each, from DWT logits.

    ``flip``: the logits are of a batch followed by its mirror image (``dwt_heads``); the two
    foreground probabilities and expected energies are averaged (``mirror_mean``).
    """
    fg_logits, energy_logits = split_outputs(logits.float())
    return heads_from_probabilities(fg_logits.softmax(1)[:, 1:2], energy_logits.softmax(1), flip)


def heads_from_probabilities(
    fg: torch.Tensor, probs: torch.Tensor, flip: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``heads_from_logits`` from the foreground probability (N, 1, H, W) and the energy levels'
    probabilities (N, K, H, W).

    The expected level is linear in the probabilities, so it is taken before the mirror is averaged:
    one channel flipped and added instead of K (the same maps up to float rounding).
    """
    levels = torch.arange(probs.shape[1], dtype=probs.dtype, device=probs.device)
    energy = torch.einsum("nkhw,k->nhw", probs, levels).unsqueeze(1)
    return mirror_mean(fg, flip), mirror_mean(energy, flip)


def mirror_mean(maps: torch.Tensor, flip: bool) -> torch.Tensor:
    """``maps`` of a batch followed by its mirror (``with_mirror``) averaged with the mirror's (``flip``)."""
    if not flip:
        return maps
    n = maps.shape[0] // 2
    return mirrored_average(maps[:n], maps[n:])


def mirrored_average(plain: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
    """The mean of an image's map and its mirror image's map, the latter turned back."""
    return (plain + mirrored.flip(-1)) / 2


def _serving_now(model: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """What a ``DeferredServing`` (the dashboard's, while a backend is prepared) serves with now; else ``model``."""
    return model.current if isinstance(model, DeferredServing) else model


def network_heads(
    model: nn.Module, x: torch.Tensor, flip: bool = False, fill: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``heads_from_logits(model(x))``, run on ``x`` padded to the stride (``pad_to_stride``) and cut back;
    an ensemble's (served or not) straight from the probabilities its members average, without the log its
    forward takes for a caller that reads logits (4 ms on a 2x strip, and as much again for the softmax that
    undoes it). ``fill``: a fill pass, which an ensemble runs on its fill members where it has them.

    ``flip``: the mirror of ``x`` runs too and the heads are averaged (``mirrored_average``). Eager PyTorch runs
    it in one batch with ``x`` (``with_mirror``), 1.27x faster than two calls (docs/experiments.md); a served graph
    as a second call of the same shape: it then meets no shapes beyond the plain pass's and its peak memory is one
    image's, at the same speed. Each call's heads are read from its own output, never copied into one batch."""
    core = _serving_now(model)
    network = core.heads_for(fill) if isinstance(core, DWTEnsemble) else core
    if flip and isinstance(network, RuntimePart):
        (fg, energy), (fg_mirror, energy_mirror) = (_heads(core, at_stride(network, view)) for view in (x, x.flip(-1)))
        return mirrored_average(fg, fg_mirror), mirrored_average(energy, energy_mirror)
    return _heads(core, at_stride(network, with_mirror(x, flip)), flip)


def _heads(core: nn.Module, out: torch.Tensor, flip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground probability and expected energy from a network's output ``out``: an ensemble's holds
    probabilities already, a DWT's logits. ``out`` is cut to the input's size before a mirrored half is turned
    back (``flip``), or the padding would shift it."""
    if isinstance(core, DWTEnsemble):
        probs = out.float()
        return heads_from_probabilities(probs[:, 1:2], probs[:, 2:], flip)
    return heads_from_logits(out, flip)


def input_stride(model: Callable[[torch.Tensor], torch.Tensor]) -> int:
    """What ``model``'s inputs are padded to: the stride its body says (``input_multiple``: the U-Net's
    ``2**depth``, the ResUNet's 32), kept by a served part (``seg.runtime``), else ``PAD_MULTIPLE``."""
    multiple = getattr(_serving_now(model), "input_multiple", None)
    return multiple if isinstance(multiple, int) and multiple > 0 else PAD_MULTIPLE


def at_stride(network: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``network(x)``, run on ``x`` padded to its stride (``pad_to_stride``) and cut back to ``x``'s size."""
    h, w = x.shape[-2:]
    return network(pad_to_stride(x, input_stride(network)))[..., :h, :w]


def width_multiple(stride: int) -> int:
    """What a pass's width is padded to: whole 64-px steps (``PAD_WIDTH_MULTIPLE``) that are also whole strides."""
    return math.lcm(stride, PAD_WIDTH_MULTIPLE)


def pad_to_stride(x: torch.Tensor, stride: int = PAD_MULTIPLE) -> torch.Tensor:
    """``x`` extended on the right and at the bottom (edge pixels repeated) to whole multiples of ``stride``,
    its width to whole multiples of ``PAD_WIDTH_MULTIPLE`` (and of ``stride``).

    The U-Net body pools four times (ceil mode); at sides that do not halve evenly its decoder upsamples by
    less than 2x and its levels no longer line up. Padded, every level halves exactly: val partition mask AP
    0.5741 -> 0.5805 (docs/experiments.md, "Inputs padded to the network's stride"). A deeper body (a U-Net of
    depth 5, a ResUNet) says its own stride. The padding is cut off the heads, so the maps keep the input's
    size. The sizes a served graph meets come in steps of 16 rows and 64 columns, so they repeat and their
    kernels stay set up (a new size costs OpenVINO 90-380 ms).
    """
    h, w = x.shape[-2:]
    bottom, right = -h % stride, -w % width_multiple(stride)
    if not (bottom or right):
        return x
    return F.pad(x, (0, right, 0, bottom), mode="replicate")


def with_mirror(x: torch.Tensor, flip: bool) -> torch.Tensor:
    """The batch, followed by its horizontal mirror when ``flip`` (one forward pass for both)."""
    return torch.cat([x, x.flip(-1)]) if flip else x


def dwt_heads(
    model: nn.Module,
    x: torch.Tensor,
    flip: bool = False,
    scales: tuple[float, ...] = (1.0,),
    at_one: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground probability and expected energy level for a float batch, at ``x``'s size.

    Test-time augmentation: ``flip`` averages the mirrored pass (``heads_from_logits``);
    ``scales`` averages passes at these multiples of ``x``'s size. Scale augmentation in
    training (0.8-1.25x) makes a slightly enlarged input in-distribution, and it finds small
    pedestrians the working size misses. Energy levels are pixels (unit steps up to level 6,
    where seeds are cut), so a pass at scale s has its expected level divided by s.
    ``at_one``: the scale-1 heads if the caller already has them (validation gets them
    from the forward that gives its loss).
    """
    fgs, energies = [], []
    for s in scales:
        if s == 1.0:
            fg, energy = at_one or network_heads(model, x, flip)
        else:
            fg, energy = dwt_pass(model, x, flip, s)
            energy = energy / s
        fgs.append(fg)
        energies.append(energy)
    if len(fgs) == 1:
        return fgs[0], energies[0]
    return torch.stack(fgs).mean(0), torch.stack(energies).mean(0)


def dwt_pass(
    model: nn.Module, x: torch.Tensor, flip: bool, scale: float, strips: int = 1, fill: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Heads of one pass on ``x`` resized by ``scale``, brought back to ``x``'s size.

    The energy stays in that pass's pixels: ``dwt_heads`` divides it by ``scale`` to average
    passes; an alternative pass (``dwt_alternative_maps``) is post-processed as it is.
    ``strips``: run the resized image as that many vertical strips, each with ``STRIP_OVERLAP``
    px of context past its share, and keep each strip's own share (less memory at a time).
    ``fill``: a fill pass (``network_heads``).
    """
    h, w = x.shape[-2:]
    if scale == 1.0 and strips == 1:
        return network_heads(model, x, flip, fill)
    parts = []
    for piece, keep in strip_inputs(x, scale, strips):
        fg, energy = network_heads(model, piece, flip, fill)
        parts.append(torch.cat([fg, energy], 1)[..., keep])
    maps = F.interpolate(torch.cat(parts, -1), size=(h, w), mode="bilinear", align_corners=False)
    return maps[:, :1], maps[:, 1:]


def strip_inputs(x: torch.Tensor, scale: float, strips: int) -> list[tuple[torch.Tensor, slice]]:
    """``x`` resized by ``scale`` and cut into ``strips`` vertical strips (more where they would be wider
    than ``MAX_STRIP_WIDTH``), each with ``STRIP_OVERLAP`` px of context past its share: (strip, the
    columns of the strip that are its share)."""
    h, w = x.shape[-2:]
    if scale != 1.0:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=scale < 1.0)
    width = x.shape[-1]
    if strips > 1:
        strips = max(strips, -(-width // MAX_STRIP_WIDTH))
    cuts = [round(width * k / strips) for k in range(strips + 1)]
    out = []
    for start, stop in zip(cuts[:-1], cuts[1:]):
        lo, hi = max(0, start - STRIP_OVERLAP), min(width, stop + STRIP_OVERLAP)
        out.append((x[..., lo:hi], slice(start - lo, stop - lo)))
    return out


def dwt_work_size(height: int, width: int, work_height: int) -> tuple[int, int]:
    """(h, w) the DWT runs an image at: the working height, aspect kept, unless that is wider than
    ``MAX_WORK_ASPECT`` working heights; then that width, and a lower height."""
    size = work_size(height, width, work_height)
    max_width = round(MAX_WORK_ASPECT * work_height)
    return size if size[1] <= max_width else (max(1, round(height * max_width / width)), max_width)


def _work_batch(model: nn.Module, rgb: np.ndarray, work_height: int) -> torch.Tensor:
    """The image as a (1, 3, h, w) float batch at its working size (``dwt_work_size``), on the model's device."""
    h, w = rgb.shape[:2]
    x = to_tensor(rgb)[None].to(module_device(model))
    size = dwt_work_size(h, w, work_height)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def _maps_at(fg: torch.Tensor, energy: torch.Tensor, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(1, 1, h, w) heads -> (H, W) numpy maps at ``size`` (bilinear: both are linear in the probabilities)."""
    maps = F.interpolate(torch.cat([fg, energy], 1), size=size, mode="bilinear", align_corners=False)[0].cpu().numpy()
    return maps[0], maps[1]


def dwt_maps(
    model: nn.Module,
    rgb: np.ndarray,
    out_size: tuple[int, int] | None = None,
    work_height: int = WORK_HEIGHT,
    flip: bool = False,
    scales: tuple[float, ...] = (1.0,),
) -> tuple[np.ndarray, np.ndarray]:
    """Foreground probability and expected energy level, (H, W) each, at ``out_size`` (default: input size)."""
    with torch.inference_mode():
        return _maps_at(
            *dwt_heads(model, _work_batch(model, rgb, work_height), flip, scales), out_size or rgb.shape[:2]
        )


def dwt_alternative_maps(
    model: nn.Module,
    rgb: np.ndarray,
    scales: tuple[float, ...],
    work_height: int = WORK_HEIGHT,
    flip: bool = False,
    strips: int = 1,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fg, energy) of one separate pass per scale, at the input size: where ``ranked_candidates``
    looks for pedestrians the main pass missed (an enlarged pass sees the small ones), and the fill
    passes (``strips=FILL_STRIPS``)."""
    with torch.inference_mode():
        return _passes_at(model, _work_batch(model, rgb, work_height), scales, flip, strips, rgb.shape[:2])


def _passes_at(
    model: nn.Module,
    x: torch.Tensor,
    scales: tuple[float, ...],
    flip: bool,
    strips: int,
    size: tuple[int, int],
    fill: bool = False,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``dwt_alternative_maps`` of a batch already at the working size."""
    return [_maps_at(*dwt_pass(model, x, flip, scale, strips, fill), size) for scale in scales]


def sample_batch(sample: InstanceSample, device: torch.device) -> torch.Tensor:
    """A sample already at the working height as a (1, 3, h, w) float batch."""
    return torch.from_numpy(sample.image).permute(2, 0, 1)[None].to(device).float() / 255.0


def alternative_passes(
    model: nn.Module, images: torch.Tensor, flip: bool, scales: tuple[float, ...], strips: int = 1, fill: bool = False
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fg, energy) of one separate pass per scale at ``images``' size (``ranked_candidates``' alternatives,
    and with ``strips=FILL_STRIPS, fill=True`` the fill passes)."""
    return [
        tuple(m[0, 0].cpu().numpy() for m in dwt_pass(model, images, flip, scale, strips, fill)) for scale in scales
    ]


def working_height_maps(
    model: nn.Module,
    samples: list[InstanceSample],
    flip: bool,
    scales: tuple[float, ...],
    alternative_scales: tuple[float, ...],
    fill_scales: tuple[float, ...] = (),
) -> list[ImageMaps]:
    """Per sample its maps at the working height: what a DWT card's val metrics score
    (``DWTValidation`` adds the loss it computes from the same forward)."""
    device = module_device(model)
    maps = []
    with torch.inference_mode():
        for sample in samples:
            images = sample_batch(sample, device)
            fg, energy = dwt_heads(model, images, flip, scales)
            maps.append(
                ImageMaps(
                    fg[0, 0].cpu().numpy(),
                    energy[0, 0].cpu().numpy(),
                    tuple(alternative_passes(model, images, flip, alternative_scales)),
                    tuple(alternative_passes(model, images, flip, fill_scales, FILL_STRIPS, fill=True)),
                )
            )
    return maps


def score_maps(samples: list[InstanceSample], maps: list[tuple], params: PostprocessParams) -> dict:
    """COCO metrics of the ranked candidates of every sample's maps (a DWT card's val metrics), and
    ``counts``: the instances of each image's partition, the id map users see."""
    evaluator = InstanceEvaluator()
    counts = []
    for sample, image_maps in zip(samples, maps):
        m = ImageMaps(*image_maps)  # a plain (fg, energy[, alternatives[, fills]]) tuple too
        labels, _, masks, scores = ranked_candidates(m.fg, m.energy, params, m.alternatives, m.fills)
        evaluator.add(sample.masks(), masks, scores)
        counts.append(int(labels.max(initial=0)))
    return evaluator.compute() | {"counts": counts}


def components_from_foreground(fg_prob: np.ndarray, params: PostprocessParams) -> tuple[np.ndarray, np.ndarray]:
    """The trivial baseline: connected components of the foreground, scored by mean probability."""
    labels, _ = ndi.label(fg_prob > params.fg_threshold)
    labels = relabel_sequential(labels.astype(np.int32), params.min_size)
    n = int(labels.max(initial=0))
    if n == 0:
        return labels, np.zeros(0, np.float32)
    flat = labels.ravel()
    mean = np.bincount(flat, weights=fg_prob.ravel(), minlength=n + 1)[1:] / np.bincount(flat, minlength=n + 1)[1:]
    return labels, mean.astype(np.float32)


def params_from_card(card: dict) -> PostprocessParams:
    """Post-processing chosen on val (stored by the task in the card), else the defaults."""
    source = card.get("postprocess") or (card.get("val_metrics") or {}).get("postprocess") or {}
    defaults = PostprocessParams()
    return PostprocessParams(
        float(source.get("cut_level", defaults.cut_level)),
        int(source.get("min_size", defaults.min_size)),
        float(source.get("fg_threshold", defaults.fg_threshold)),
        int(source.get("min_seed", defaults.min_seed)),
        bool(source.get("alternatives", defaults.alternatives)),
    )


#: fewer boxes than this are pooled in one call (a thread hand-off costs more than it saves)
THREADED_ROI_MIN_BOXES = 64
_roi_pool_lock = threading.Lock()
_roi_pool_executor: ThreadPoolExecutor | None = None


def _roi_executor() -> ThreadPoolExecutor:
    global _roi_pool_executor
    with _roi_pool_lock:
        if _roi_pool_executor is None:
            _roi_pool_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="seglab-roi")
        return _roi_pool_executor


class ThreadedRoIPool(nn.Module):
    """torchvision's ``MultiScaleRoIAlign`` with one image's boxes split across threads.

    Its CPU kernel pools box after box on about one core: for Mask R-CNN's 1,000 proposals that is
    the largest part of a served image. A box's pooled features depend on that box alone, so the
    chunks' results, concatenated in order, are exactly the unsplit result.
    """

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.pool = pool

    def _pooled(self, x: dict, boxes: list[torch.Tensor], image_shapes: list) -> torch.Tensor:
        with torch.inference_mode():  # inference mode is per thread
            return self.pool(x, boxes, image_shapes)

    def forward(self, x: dict, boxes: list[torch.Tensor], image_shapes: list) -> torch.Tensor:
        workers = torch.get_num_threads()
        if (
            workers < 2
            or len(boxes) != 1
            or len(boxes[0]) < THREADED_ROI_MIN_BOXES
            or boxes[0].device.type != "cpu"
            or torch.is_grad_enabled()
        ):
            return self.pool(x, boxes, image_shapes)
        if getattr(self.pool, "scales", None) is None:  # the pool sets its scales on first use: once, here
            self.pool(x, [boxes[0][:1]], image_shapes)
        chunks = boxes[0].tensor_split(workers)
        futures = [_roi_executor().submit(self._pooled, x, [chunk], image_shapes) for chunk in chunks[1:]]
        first = self.pool(x, [chunks[0]], image_shapes)
        return torch.cat([first, *(f.result() for f in futures)])


def detector_views(
    model: nn.Module, rgb: np.ndarray, flip: bool, scales: tuple[float, ...]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """A Mask R-CNN's detections on ``rgb`` under each test-time view: ``(scores, soft masks)``, the
    masks at the image's size and mapped back onto it. Per scale, the mirrored view runs in the
    same batch as the plain one."""
    image = to_tensor(rgb).to(module_device(model))
    views = []
    with torch.inference_mode():
        for scale in scales:
            outputs = _detector_at_scale(model, scale)([image, image.flip(-1)] if flip else [image])
            for mirrored, out in enumerate(outputs):
                masks = out["masks"][:, 0]
                masks = masks.flip(-1) if mirrored else masks
                views.append((out["scores"].cpu().numpy().astype(np.float32), masks.cpu().numpy()))
    return views


def _detector_at_scale(model: nn.Module, scale: float) -> nn.Module:
    """``model`` resizing its inputs ``scale`` times larger than it was built to; the same weights
    and parts, a copy of its module table, so concurrent callers at other scales are unaffected.
    A ``DeferredServing`` (the dashboard's, while a backend is prepared) is scaled as it serves now."""
    if scale == 1.0:
        return model
    model = _serving_now(model)
    transform = copy.copy(model.transform)
    transform.min_size = tuple(int(round(size * scale)) for size in model.transform.min_size)
    transform.max_size = int(round(model.transform.max_size * scale))
    scaled = copy.copy(model)
    scaled._modules = dict(model._modules)  # assigning ``transform`` below must not reach ``model``
    scaled.transform = transform
    return scaled


def merge_detections(
    views: list[tuple[np.ndarray, np.ndarray]], iou_threshold: float = DETECTION_MERGE_IOU
) -> tuple[np.ndarray, np.ndarray]:
    """The detections of several views of one image as one set, best score first.

    Each detection, best first, joins the group whose best member its mask overlaps most (IoU at
    least ``iou_threshold``) among groups with no detection of its view yet, or starts a group.
    A group scores the sum of its members' scores over the number of views, so a pedestrian that
    only one view of two finds keeps half its score; its soft mask is its members' mean.
    """
    scores = np.concatenate([s for s, _ in views]).astype(np.float32)
    soft = np.concatenate([m for _, m in views]).astype(np.float32)
    if not len(scores):
        return scores, soft
    view_of = np.concatenate([np.full(len(s), v) for v, (s, _) in enumerate(views)])
    binary = soft > MASK_THRESHOLD
    ious = mask_iou(binary, binary)
    groups: list[list[int]] = []
    for i in np.argsort(-scores, kind="stable"):
        best, joined = iou_threshold, None
        for group in groups:
            if ious[i, group[0]] >= best and not any(view_of[j] == view_of[i] for j in group):
                best, joined = ious[i, group[0]], group
        if joined is None:
            groups.append([i])
        else:
            joined.append(i)
    merged_scores = np.array([scores[g].sum() / len(views) for g in groups], np.float32)
    order = np.argsort(-merged_scores, kind="stable")
    return merged_scores[order], np.stack([soft[groups[k]].mean(0) for k in order])


def proposal_count(model: nn.Module) -> int:
    """The region proposals a Mask R-CNN keeps at inference (its ``test_proposals`` arch setting)."""
    return int(model.rpn._post_nms_top_n["testing"])


def set_proposal_count(model: nn.Module, count: int) -> None:
    """Keep ``count`` region proposals at inference, as ``build_maskrcnn(test_proposals=count)`` would."""
    model.rpn._post_nms_top_n["testing"] = int(count)


def thread_roi_pools(model: nn.Module) -> None:
    """Wrap a Mask R-CNN's RoI pools in ``ThreadedRoIPool`` (no weights change; idempotent)."""
    heads = getattr(model, "roi_heads", None)
    for attr in ("box_roi_pool", "mask_roi_pool"):
        pool = getattr(heads, attr, None)
        if pool is not None and not isinstance(pool, ThreadedRoIPool):
            setattr(heads, attr, ThreadedRoIPool(pool))


def dwt_parts(model: nn.Module) -> tuple[str, ...]:
    """What a serving runtime replaces in a DWT: an ensemble's averaged members (and its fill members,
    where it has them), a single DWT whole."""
    if not isinstance(model, DWTEnsemble):
        return ("",)
    return (DWTEnsemble.SERVED_PART, "fill") if model.fill is not None else (DWTEnsemble.SERVED_PART,)


class InstancePredictor:
    """Wraps a DWT or Mask R-CNN model; ``method`` 'dwt' | 'components' (DWT only) | 'maskrcnn'.

    ``self.model`` is the eager model (the reference); ``self.serving`` is what runs, as
    ``runtime`` chose (``self.runtime`` says which backend and why).
    """

    def __init__(
        self,
        model: nn.Module,
        card: dict | None = None,
        params: PostprocessParams | None = None,
        method: str | None = None,
        flip: bool | None = None,
        scales: tuple[float, ...] | None = None,
        runtime: str | None = None,
        source: str | Path | None = None,
        fill_scales: tuple[float, ...] | None = None,
    ) -> None:
        """``source``: the checkpoint ``model`` came from, served with its card's settings (a deferred
        calibration then runs apart, as ``seglab export`` would make it). ``flip``, ``scales`` and
        ``fill_scales`` override the card's test-time passes."""
        self.model = model.eval()
        self.card = card or {}
        self.params = params or params_from_card(self.card)
        self.detector = is_detector(model)
        self.method = method or ("maskrcnn" if self.detector else "dwt")
        if self.detector != (self.method == "maskrcnn"):
            raise ValueError(f"method {self.method!r} does not fit a {'detector' if self.detector else 'DWT'} model")
        self.work_height = int(self.card.get("work_height", WORK_HEIGHT))
        # test-time augmentation: as the card says it was tuned, unless overridden
        self.flip = bool(self.card.get("tta_flip", False)) if flip is None else bool(flip)
        self.scales = tuple(float(s) for s in self.card.get("tta_scales", (1.0,))) if scales is None else tuple(scales)
        # separate passes whose instances are ranked after the main pass's (chosen on val; COCO AP only)
        self.alternative_scales = tuple(float(s) for s in self.card.get("alternative_scales", ()))
        # separate passes whose small pedestrians join the partition (chosen on val; off with ``tta=False``)
        fill = self.card.get("fill_scales", ()) if fill_scales is None else fill_scales
        self.fill_scales = tuple(float(s) for s in fill)
        # the ensemble members those passes run on (chosen on val; all of them where the card names none)
        members = tuple(int(i) for i in self.card.get("fill_members") or ())
        self.fill_members = members if self.fill_scales and isinstance(self.model, DWTEnsemble) else ()
        if self.fill_members:
            self.model = self.model.with_fill_members(self.fill_members)
        # where a detector's soft masks are cut (chosen on val)
        self.mask_threshold = float(self.card.get("mask_threshold", MASK_THRESHOLD))
        if self.detector and module_device(self.model).type == "cpu":
            thread_roi_pools(self.model)
        elif not self.detector:
            channels_last_on_cpu(self.model)
        self.serving, self.runtime = serving_module(
            self.model, self.serving_spec, resolve_runtime(runtime), module_device(self.model), source=source
        )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        method: str | None = None,
        flip: bool | None = None,
        scales: tuple[float, ...] | None = None,
        runtime: str | None = None,
        fill_scales: tuple[float, ...] | None = None,
    ) -> InstancePredictor:
        """``runtime``: ``eager`` (default, or ``$SEG_RUNTIME``), ``auto``, ``onnx``, ``openvino`` (see seg.runtime)."""
        from seg.checkpoints import load_checkpoint

        model, card = load_checkpoint(path)
        if card.get("architecture") not in INSTANCE_ARCHITECTURES:
            raise ValueError(f"{Path(path).name} is a {card.get('architecture')!r} checkpoint, not an instance model")
        model = fold_batch_norms(model.float().eval())
        # what ``seglab export`` calibrates
        as_card = method is None and flip is None and scales is None and fill_scales is None
        return cls(
            model,
            card,
            method=method,
            flip=flip,
            scales=scales,
            runtime=runtime,
            source=path if as_card else None,
            fill_scales=fill_scales,
        )

    @property
    def backend(self) -> str:
        """What runs the network, e.g. ``eager-fp32`` or ``openvino-int8``."""
        return self.runtime.backend

    def predict(self, rgb: np.ndarray, tta: bool = True, candidates: bool = False) -> InstanceResult:
        """``tta=False`` skips the test-time augmentation for this call (a faster preview).

        ``candidates=True`` (evaluation): also rank the DWT's alternatives after its partition
        (``result.candidates()``), as the card says; they never change the id map, so a
        caller that only shows or saves the partition leaves them off. The DWT's fill passes
        (``fill_scales``) do change it, and ``tta=False`` skips them too.
        """
        check_rgb(rgb)
        start = time.perf_counter()
        if self.detector:
            result = self._predict_detector(rgb, tta)
        else:
            flip, scales = (self.flip, self.scales) if tta else (False, (1.0,))
            size = rgb.shape[:2]
            with torch.inference_mode():  # one working-size batch for every pass
                x = _work_batch(self.serving, rgb, self.work_height)
                fg, energy = _maps_at(*dwt_heads(self.serving, x, flip, scales), size)
                fill_scales = self.fill_scales if tta and self.method == "dwt" else ()
                fills = _passes_at(self.serving, x, fill_scales, flip, FILL_STRIPS, size, fill=True)
            # sizes tuned in working pixels, in this image's: a very wide one ran below the working height
            params = self.params.scaled((rgb.shape[0] / x.shape[-2]) ** 2)
            if self.method == "components":
                labels, scores = components_from_foreground(fg, params)
                ranked = (None, None)
            elif candidates and (params.alternatives or self.alternative_scales):
                with torch.inference_mode():
                    extra = _passes_at(self.serving, x, self.alternative_scales, flip, 1, size)
                labels, scores, *ranked = ranked_candidates(fg, energy, params, extra, fills)
            else:
                labels, scores = partition(fg, energy, params, fills)
                ranked = (None, None)
            # the energy is only trained on pedestrians: show it where the foreground is
            shown = np.where(fg > params.fg_threshold, energy, 0.0).astype(np.float32)
            result = InstanceResult(labels, scores, boxes_from_ids(labels), shown, fg, 0.0, *ranked)
        result.latency_ms = (time.perf_counter() - start) * 1000.0
        return result

    def _predict_detector(self, rgb: np.ndarray, tta: bool = True) -> InstanceResult:
        flip, scales = (self.flip, self.scales) if tta else (False, (1.0,))
        views = detector_views(self.serving, rgb, flip, scales)
        scores, soft_masks = views[0] if len(views) == 1 else merge_detections(views)
        masks = soft_masks > self.mask_threshold if len(scores) else np.zeros((0,) + rgb.shape[:2], bool)
        ids = np.zeros(rgb.shape[:2], np.int32)
        kept = [i for i in np.argsort(scores)[::-1] if scores[i] >= DETECTION_SCORE_THRESHOLD]
        for rank, i in reversed(list(enumerate(kept, start=1))):  # paint low scores first, high ones win
            ids[masks[i]] = rank
        # ids whose pixels were all covered by better detections vanish; keep ids/scores aligned
        present = np.bincount(ids.ravel(), minlength=len(kept) + 1)[1:] > 0
        table = np.zeros(len(kept) + 1, np.int32)
        table[1:][present] = np.arange(1, int(present.sum()) + 1)
        ids = table[ids]
        kept_scores = scores[kept][present] if kept else np.zeros(0, np.float32)
        return InstanceResult(
            ids, kept_scores, boxes_from_ids(ids), None, None, 0.0, all_masks=masks, all_scores=scores
        )

    # -- serving runtime -------------------------------------------------------------------------

    def _with_serving(self, serving: nn.Module) -> InstancePredictor:
        """This predictor's settings with another module running the network (for the agreement check)."""
        other = copy.copy(self)
        other.serving = serving
        return other

    def _network_input(self, rgb: np.ndarray) -> tuple:
        """The network's call arguments for one image, as ``predict`` builds them (mirror batched)."""
        if self.detector:
            return ([to_tensor(rgb)],)
        return (with_mirror(_work_batch(self.model, rgb, self.work_height), self.flip),)

    def eager_val_results(self, root: Path, ids: list[str], since: float | None = None) -> dict:
        """Eager fp32's val results, the reference of the agreement contract (computed once per weights
        and settings, then read from beside the exports). ``since`` (a ``time.time()``) recomputes them
        unless the copy was written at or after it, so processes started together compute them once;
        ``math.inf`` always recomputes them."""
        return self._reference_results(root, ids, weights_key(self.model), self._serving_context(), since)

    @property
    def _scored_at_working_height(self) -> bool:
        """The DWT's watershed is scored as its card is; Mask R-CNN and the components baseline as ``predict``."""
        return not self.detector and self.method != "components"

    def val_results(self, root: Path, ids: list[str]) -> dict:
        """Val ``mask_ap`` and each image's instance ``counts``, as the agreement contract scores them with
        the network this predictor serves. The DWT is scored as its card's val metrics are (maps at the
        working height, ranked candidates), so eager's results are the card's; Mask R-CNN as
        ``eval-instances`` scores it."""
        if not self._scored_at_working_height:
            return predict_val_results(self, root, ids)
        samples = load_instance_samples(root, ids, self.work_height)
        maps = working_height_maps(
            self.serving, samples, self.flip, self.scales, self.alternative_scales, self.fill_scales
        )
        result = score_maps(samples, maps, self.params)
        return {k: (0.0 if isinstance(v, float) and not np.isfinite(v) else v) for k, v in result.items()}

    def _serving_context(self) -> dict:
        context = {
            "task": "instances",
            "method": self.method,
            "scored": "working height" if self._scored_at_working_height else "predict",
            "work_height": self.work_height,
            "flip": self.flip,
            "scales": list(self.scales),
            "alternative_scales": list(self.alternative_scales),
            **({"fill": self._fill_settings()} if self.fill_scales else {}),
            "postprocess": vars(self.params),
        }
        if self.detector:  # fewer proposals change the detections: a reference per count
            context["test_proposals"] = proposal_count(self.model)
            if self.mask_threshold != MASK_THRESHOLD:
                context["mask_threshold"] = self.mask_threshold
        else:  # the maps of inputs padded to the stride are other maps: a reference of their own
            stride = input_stride(self.model)
            context["pad_multiple"] = [stride, width_multiple(stride)]
        return context

    def _fill_settings(self) -> dict:
        """What the fill passes' instances depend on besides the maps (part of the agreement's key)."""
        return {
            "scales": list(self.fill_scales),
            **({"members": list(self.fill_members)} if self.fill_members else {}),
            "strips": FILL_STRIPS,
            "overlap": STRIP_OVERLAP,
            "min_free": FILL_MIN_FREE,
            "max_iou": FILL_MAX_IOU,
            "score_scale": FILL_SCORE_SCALE,
            "size_factor": FILL_SIZE_FACTOR,
        }

    def serving_spec(self) -> ServingSpec:
        """Export, timing and agreement hooks for ``seg.runtime`` (built only when a runtime is asked for)."""
        context = self._serving_context()
        key = weights_key(self.model)
        images: dict[str, list[np.ndarray] | None] = {}

        def split(name: str, limit: int | None = None) -> list[np.ndarray] | None:
            if name not in images:
                try:
                    root = dataset_dir("pennfudan")
                    ids = ids_for_split(root, name.split("-")[0])[:limit]
                    images[name] = [load_sample(root, i).image for i in ids]
                except (FileNotFoundError, OSError, ValueError):
                    images[name] = None
            return images[name]

        def example_inputs() -> list[tuple]:
            val = split("val-first", 1)
            if val:
                return [self._network_input(val[0])]
            rng = np.random.default_rng(0)
            return [self._network_input(rng.integers(0, 256, (384, 288, 3), dtype=np.uint8))]

        def calibration_inputs() -> list[tuple] | None:
            train = split("train", CALIBRATION_IMAGES)
            if not train:
                return None
            if self.detector or not self.fill_scales:
                return [self._network_input(rgb) for rgb in train]
            batches = [_work_batch(self.model, rgb, self.work_height) for rgb in train]
            strips = [  # the fill passes' strips: larger people, other ranges
                (with_mirror(piece, self.flip),)
                for x in batches
                for scale in self.fill_scales
                for piece, _ in strip_inputs(x, scale, FILL_STRIPS)
            ]
            return [(with_mirror(x, self.flip),) for x in batches] + strips

        def agreement(serving: nn.Module) -> Agreement | None:
            root = dataset_dir("pennfudan")
            try:
                ids = ids_for_split(root, "val")
            except (FileNotFoundError, OSError, ValueError):
                return None
            if not ids:
                return None
            reference = self._reference_results(root, ids, key, context)
            return instance_agreement(reference, self._with_serving(serving).val_results(root, ids))

        return ServingSpec(
            key,
            DETECTOR_PARTS if self.detector else dict.fromkeys(dwt_parts(self.model), (0, 2, 3)),
            example_inputs,
            calibration_inputs,
            agreement,
            context,
            DETECTOR_FALLBACK_PARTS if self.detector else (),
            code_key(self.model),
        )

    def _reference_results(
        self, root: Path, ids: list[str], key: str, context: dict, since: float | None = None
    ) -> dict:
        """Eager fp32's val results, kept beside the exports (the dearest part of a DWT calibration)."""
        digest = hashlib.sha256(json.dumps([context, ids], sort_keys=True, default=str).encode()).hexdigest()[:16]
        path = export_dir(key) / f"reference-{digest}.json"
        # processes sharing a cache compute it once: a reader waits for a writer already at work
        with exclusive_lock(path.with_suffix(".lock")):
            try:
                if since is None or path.stat().st_mtime >= since:
                    return json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                pass
            results = self._with_serving(self.model).val_results(root, ids)
            atomic_write_text(path, json.dumps(results))
            return results


def predict_val_results(predictor: InstancePredictor, root: Path, ids: list[str]) -> dict:
    """Val mask AP (as ``eval-instances`` scores it) and the instance count of every image."""
    evaluator = InstanceEvaluator()
    counts = []
    for image_id in ids:
        sample = load_sample(root, image_id)
        result = predictor.predict(sample.image, candidates=True)
        evaluator.add(sample.masks(), *result.candidates())
        counts.append(int(result.num_instances))
    mask_ap = evaluator.compute()["mask_ap"]
    return {"mask_ap": float(mask_ap) if np.isfinite(mask_ap) else 0.0, "counts": counts}


def instance_agreement(reference: dict, candidate: dict) -> Agreement:
    """The contract: val mask AP within ``MASK_AP_TOLERANCE`` of eager's, counts within ``COUNT_TOLERANCE``."""
    differences = [abs(a - b) for a, b in zip(reference["counts"], candidate["counts"])]
    worst = max(differences, default=0)
    ap_gap = abs(candidate["mask_ap"] - reference["mask_ap"])
    passed = ap_gap <= MASK_AP_TOLERANCE and worst <= COUNT_TOLERANCE
    reason = (
        ""
        if passed
        else (
            f"val mask AP {candidate['mask_ap']:.4f} vs eager {reference['mask_ap']:.4f}, "
            f"instance counts differ by up to {worst} (contract: within {MASK_AP_TOLERANCE}, "
            f"+-{COUNT_TOLERANCE})"
        )
    )
    return Agreement(
        passed,
        {
            "mask_ap": candidate["mask_ap"],
            "reference_mask_ap": reference["mask_ap"],
            "max_count_difference": float(worst),
            "images_with_other_count": float(sum(d > 0 for d in differences)),
            "images": float(len(differences)),
        },
        reason,
    )


__all__ = ["InstancePredictor", "InstanceResult", "RuntimeChoice", "instance_agreement"]
