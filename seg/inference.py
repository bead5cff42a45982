"""Inference for any semantic checkpoint: an RGB image of any size in, class labels (and, on
request, probabilities) at the image's original size out.

The image is resized to the model's training size (its card's ``input_size``), run once,
and the logits are resized back bilinearly, so labels are smooth at the original
resolution. Labels are the largest logit per pixel (softmax keeps the order), taken with
``max(0).indices``, which is several times faster than ``argmax`` over a (C, H, W) map;
probabilities are only computed when asked for. Thread-safe: one predictor can serve
concurrent requests.

``runtime`` says what runs the model (``seg.runtime``): eager PyTorch by default, ``auto``
for the fastest backend that passes the agreement contract on this CPU (val mIoU within
``MIOU_TOLERANCE`` of eager fp32 and at least ``PIXEL_AGREEMENT`` of the val pixels with
the same label).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from seg.checkpoints import load_checkpoint
from seg.classes import SBD_CLASSES, SBD_PALETTE
from seg.config import dataset_dir, get_device
from seg.data.sbd import IMAGE_SIZE, load_semantic_split
from seg.io import check_rgb
from seg.metrics import confusion_matrix, mean_iou
from seg.runtime import (
    Agreement,
    RuntimeChoice,
    ServingSpec,
    channels_last_on_cpu,
    code_key,
    fold_batch_norms,
    resolve_runtime,
    serving_module,
    weights_key,
)

log = logging.getLogger("seg.inference")

#: The agreement contract for a semantic model served by a faster backend (on the val split).
MIOU_TOLERANCE = 0.005
PIXEL_AGREEMENT = 0.98


@dataclass
class Prediction:
    label: np.ndarray  # (H, W) uint8 class ids
    latency_ms: float  # model forward + resizing, excluding decoding the upload
    logits: torch.Tensor | None = field(default=None, repr=False)  # (C, H, W) float32 at the input's size
    _probs: np.ndarray | None = field(default=None, repr=False)

    @property
    def probs(self) -> np.ndarray:
        """(C, H, W) float32 class probabilities at the input's size (computed on first access)."""
        if self._probs is None:
            if self.logits is None:
                raise ValueError("this prediction kept no logits")
            self._probs = self.logits.float().softmax(0).cpu().numpy()
        return self._probs

    @property
    def num_classes(self) -> int:
        return int(self.logits.shape[0]) if self.logits is not None else int(self.label.max(initial=0)) + 1

    def class_shares(self, num_classes: int | None = None) -> np.ndarray:
        """Fraction of the image assigned to each class."""
        c = num_classes or self.num_classes
        counts = np.bincount(self.label.reshape(-1), minlength=c)[:c]
        return counts / max(1, self.label.size)


def prepare_input(image: np.ndarray, input_size: tuple[int, int]) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, h, w) float in [0, 1] at ``input_size`` (w, h), antialiased.

    What ``Predictor.predict`` feeds the model; ``seg.batch_predict`` runs it in its decoding
    workers so that batches hold exactly what a single prediction would.
    """
    check_rgb(image)
    h, w = image.shape[:2]
    owned = image if image.flags.writeable and image.flags.c_contiguous else np.array(image, order="C")
    x = torch.from_numpy(owned).permute(2, 0, 1).unsqueeze(0).float().div_(255)
    tw, th = input_size
    if (h, w) != (th, tw):
        x = F.interpolate(x, size=(th, tw), mode="bilinear", align_corners=False, antialias=True)
    return x


def labels_at(logits: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, h, w) logits at the model's size -> (labels (H, W) uint8, logits (C, H, W)) at ``size`` (H, W)."""
    logits = logits.float()
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
    return logits.max(0).indices.to(torch.uint8), logits


class Predictor:
    def __init__(
        self,
        model: torch.nn.Module,
        card: dict,
        device: torch.device | None = None,
        runtime: str | None = None,
        source: str | Path | None = None,
    ) -> None:
        """``source``: the checkpoint ``model`` came from, if any (a deferred calibration then runs apart)."""
        self.device = device or get_device()
        self.model = model.to(self.device).eval()
        self.card = card
        self.classes: list[str] = list(card.get("classes") or SBD_CLASSES)
        palette = card.get("palette") or SBD_PALETTE
        self.palette: list[tuple[int, int, int]] = [tuple(int(v) for v in c) for c in palette]
        size = card.get("input_size") or {}
        self.input_size = (int(size.get("width", IMAGE_SIZE[0])), int(size.get("height", IMAGE_SIZE[1])))
        self.name = card.get("name", "model")
        channels_last_on_cpu(self.model)
        self._lock = threading.Lock()
        self.serving, self.runtime = serving_module(
            self.model, self.serving_spec, resolve_runtime(runtime), self.device, source=source
        )

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device | None = None, runtime: str | None = None
    ) -> Predictor:
        """``runtime``: ``eager`` (default, or ``$SEG_RUNTIME``), ``auto``, ``onnx``, ``openvino`` (see seg.runtime)."""
        dev = torch.device(device) if device else get_device()
        model, card = load_checkpoint(path, device=dev)
        return cls(fold_batch_norms(model.eval()), card, dev, runtime, source=path)

    @property
    def backend(self) -> str:
        """What runs the model, e.g. ``eager-fp32`` or ``openvino-int8``."""
        return self.runtime.backend

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        if self.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        with self._lock:
            return self.serving(x).float()

    @torch.inference_mode()
    def predict_logits_batch(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, h, w) float in [0, 1] at the model's input size -> (N, C, h, w) float32 logits on the CPU."""
        return self._forward(x).cpu()

    @torch.inference_mode()
    def predict_probs_batch(self, images: torch.Tensor) -> torch.Tensor:
        """(N,3,H,W) uint8 at the model's input size -> (N,C,H,W) float32 probabilities."""
        return self._forward(images.float().div_(255)).softmax(1)

    @torch.inference_mode()
    def predict(self, image: np.ndarray) -> Prediction:
        """``image`` (H,W,3) uint8 RGB of any size."""
        start = time.perf_counter()
        x = prepare_input(image, self.input_size)
        label, logits = labels_at(self._forward(x)[0].cpu(), image.shape[:2])
        latency = (time.perf_counter() - start) * 1000
        return Prediction(label.numpy(), latency, logits)

    # -- serving runtime -------------------------------------------------------------------------

    def serving_spec(self) -> ServingSpec:
        """Export, timing and agreement hooks for ``seg.runtime`` (built only when a runtime is asked for)."""
        tw, th = self.input_size
        cache: dict[str, object] = {}

        def split(name: str, limit: int | None = None):
            if name not in cache:
                try:
                    data = load_semantic_split(
                        dataset_dir("sbd"), name.split("-")[0], size=self.input_size, limit=limit
                    )
                    cache[name] = data if data.classes == self.classes else None
                except (FileNotFoundError, OSError, ValueError):
                    cache[name] = None
            return cache[name]

        def example_inputs() -> list[tuple]:
            val = split("val") if "val" in cache else split("val-first", limit=1)
            if val is not None:
                return [(val.images[:1].float().div(255).contiguous(memory_format=torch.channels_last),)]
            generator = torch.Generator().manual_seed(0)
            return [(torch.rand(1, 3, th, tw, generator=generator).contiguous(memory_format=torch.channels_last),)]

        def calibration_inputs() -> list[tuple] | None:
            train = split("train", limit=32)
            if train is None:
                return None
            return [(train.images[i : i + 1].float().div(255),) for i in range(len(train))]

        def agreement(serving: torch.nn.Module) -> Agreement | None:
            val = split("val")
            if val is None:
                return None
            if "reference" not in cache:
                cache["reference"] = self._val_logits(self.model, val.images)
            return semantic_agreement(
                cache["reference"], self._val_logits(serving, val.images), val.masks, len(self.classes)
            )

        return ServingSpec(
            weights_key(self.model),
            {"": (0,)},
            example_inputs,
            calibration_inputs,
            agreement,
            {"task": "semantic", "input_size": [tw, th], "classes": self.classes},
            code=code_key(self.model),
            int8_float_ops=(),  # every op int8: the U-Nets' skip connections too (recipe 3)
        )

    def _val_logits(self, module: torch.nn.Module, images: torch.Tensor, batch: int = 16) -> torch.Tensor:
        out = []
        with torch.inference_mode():
            for i in range(0, len(images), batch):
                x = images[i : i + batch].float().div(255).contiguous(memory_format=torch.channels_last)
                out.append(module(x).float())
        return torch.cat(out)


def semantic_agreement(
    reference: torch.Tensor, candidate: torch.Tensor, masks: torch.Tensor, num_classes: int
) -> Agreement:
    """The contract: val mIoU within ``MIOU_TOLERANCE`` of eager's, ``PIXEL_AGREEMENT`` of labels equal."""
    ref_labels, cand_labels = reference.max(1).indices, candidate.max(1).indices
    ref_miou = mean_iou(confusion_matrix(masks, ref_labels, num_classes))
    cand_miou = mean_iou(confusion_matrix(masks, cand_labels, num_classes))
    agree = float((ref_labels == cand_labels).float().mean())
    passed = abs(cand_miou - ref_miou) <= MIOU_TOLERANCE and agree >= PIXEL_AGREEMENT
    reason = (
        ""
        if passed
        else (
            f"val mIoU {cand_miou:.4f} vs eager {ref_miou:.4f}, "
            f"{agree:.2%} of pixels agree (contract: within {MIOU_TOLERANCE}, "
            f">= {PIXEL_AGREEMENT:.0%})"
        )
    )
    return Agreement(
        passed,
        {"miou": cand_miou, "reference_miou": ref_miou, "pixel_agreement": agree, "images": int(len(masks))},
        reason,
    )


__all__ = ["Prediction", "Predictor", "RuntimeChoice", "labels_at", "prepare_input", "semantic_agreement"]
