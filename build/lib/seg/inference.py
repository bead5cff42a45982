"""Inference for any semantic checkpoint: an RGB image of any size in, class
probabilities and labels at the image's original size out.

The image is resized to the model's training size (its card's ``input_size``), run
once, and the probabilities are resized back bilinearly, so labels are smooth at the
original resolution. Thread-safe: one predictor can serve concurrent requests.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from seg.checkpoints import load_checkpoint
from seg.classes import SBD_CLASSES, SBD_PALETTE
from seg.config import get_device
from seg.data.sbd import IMAGE_SIZE


@dataclass
class Prediction:
    probs: np.ndarray       # (C, H, W) float32 at the input's size
    label: np.ndarray       # (H, W) uint8 class ids
    latency_ms: float       # model forward + resizing, excluding decoding the upload

    def class_shares(self, num_classes: int | None = None) -> np.ndarray:
        """Fraction of the image assigned to each class."""
        c = num_classes or self.probs.shape[0]
        counts = np.bincount(self.label.reshape(-1), minlength=c)[:c]
        return counts / max(1, self.label.size)


class Predictor:
    def __init__(self, model: torch.nn.Module, card: dict, device: torch.device | None = None) -> None:
        self.device = device or get_device()
        self.model = model.to(self.device).eval()
        self.card = card
        self.classes: list[str] = list(card.get("classes") or SBD_CLASSES)
        palette = card.get("palette") or SBD_PALETTE
        self.palette: list[tuple[int, int, int]] = [tuple(int(v) for v in c) for c in palette]
        size = card.get("input_size") or {}
        self.input_size = (int(size.get("width", IMAGE_SIZE[0])), int(size.get("height", IMAGE_SIZE[1])))
        self.name = card.get("name", "model")
        if self.device.type == "cpu":
            self.model = self.model.to(memory_format=torch.channels_last)
        self._lock = threading.Lock()

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device | None = None) -> "Predictor":
        dev = torch.device(device) if device else get_device()
        model, card = load_checkpoint(path, device=dev)
        return cls(model, card, dev)

    @torch.inference_mode()
    def predict_probs_batch(self, images: torch.Tensor) -> torch.Tensor:
        """(N,3,H,W) uint8 at the model's input size -> (N,C,H,W) float32 probabilities."""
        x = images.to(self.device).float().div_(255)
        if self.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        with self._lock:
            return self.model(x).float().softmax(1)

    @torch.inference_mode()
    def predict(self, image: np.ndarray) -> Prediction:
        """``image`` (H,W,3) uint8 RGB of any size."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H,W,3) uint8 RGB image, got {image.shape} {image.dtype}")
        start = time.perf_counter()
        h, w = image.shape[:2]
        x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).unsqueeze(0).float().div_(255)
        tw, th = self.input_size
        if (h, w) != (th, tw):
            x = F.interpolate(x, size=(th, tw), mode="bilinear", align_corners=False, antialias=True)
        x = x.to(self.device)
        if self.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        with self._lock:
            logits = self.model(x).float()
        if (h, w) != (th, tw):
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        probs = logits.softmax(1)[0]
        label = probs.argmax(0).to(torch.uint8)
        latency = (time.perf_counter() - start) * 1000
        return Prediction(probs.cpu().numpy(), label.cpu().numpy(), latency)
