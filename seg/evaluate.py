"""Evaluate a semantic checkpoint on a split: the metrics of ``seg.metrics`` plus
per-image scores (for "worst images" views) and a printable per-class table."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from seg.data.sbd import load_semantic_split
from seg.inference import Predictor
from seg.metrics import SegMetrics, confusion_matrix, mean_iou, pixel_accuracy

#: What a card keeps of an evaluation (``<split>_metrics``): the split's metrics, not the per-image extras.
CARD_METRIC_KEYS = (
    "miou",
    "map",
    "pixel_accuracy",
    "pixel_accuracy_8",
    "class_accuracy_8",
    "iou",
    "ap",
    "per_class",
    "confusion_matrix",
    "num_images",
)


def card_metrics(result: dict) -> dict:
    """The part of ``evaluate_semantic_checkpoint``'s result a card records."""
    return {k: result[k] for k in CARD_METRIC_KEYS if k in result}


def evaluate_predictor(
    predictor: Predictor,
    data_dir: str | Path,
    split: str = "val",
    batch_size: int = 16,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Metrics of ``predictor`` on ``split``; ``progress(done, total)`` is called after every batch."""
    data = load_semantic_split(Path(data_dir), split, size=predictor.input_size, limit=limit)
    if data.classes != predictor.classes:
        raise ValueError(f"the data's classes {data.classes} differ from the model's {predictor.classes}")
    c = len(predictor.classes)
    metrics = SegMetrics(c, class_names=predictor.classes)
    per_image = []
    for i in range(0, len(data), batch_size):
        probs = predictor.predict_probs_batch(data.images[i : i + batch_size]).cpu()
        target = data.masks[i : i + batch_size].long()
        metrics.update(probs, target)
        pred = probs.argmax(1)
        for k in range(len(target)):
            cm = confusion_matrix(target[k], pred[k], c)
            per_image.append({"id": data.ids[i + k], "pixel_accuracy": pixel_accuracy(cm), "miou": mean_iou(cm)})
        if progress is not None:
            progress(min(i + batch_size, len(data)), len(data))
    result = metrics.compute()
    result.update(
        {
            "num_images": len(data),
            "split": split,
            "checkpoint": predictor.name,
            "per_image": sorted(per_image, key=lambda r: r["pixel_accuracy"]),
            "skipped": data.skipped,
        }
    )
    return result


def evaluate_semantic_checkpoint(
    path: str | Path, data_dir: str | Path, split: str = "val", limit: int | None = None
) -> dict:
    """Every labelled image of ``split`` through the checkpoint's ``Predictor``."""
    return evaluate_predictor(Predictor.from_checkpoint(path), data_dir, split, limit=limit)


def format_table(result: dict) -> str:
    lines = [f"{'class':<12} {'IoU':>7} {'AP':>7}"]
    fmt = lambda v: "    n/a" if v is None else f"{v:7.4f}"  # noqa: E731
    for name, row in result["per_class"].items():
        lines.append(f"{name:<12} {fmt(row['iou'])} {fmt(row['ap'])}")
    lines.append(f"{'mean':<12} {fmt(result['miou'])} {fmt(result['map'])}")
    lines.append(
        f"pixel accuracy {fmt(result['pixel_accuracy']).strip()}  on {result['num_images']} images ({result['split']})"
    )
    return "\n".join(lines)


def error_map(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """RGB image: correct pixels dark grey, wrong pixels red."""
    out = np.full(truth.shape + (3,), 40, dtype=np.uint8)
    out[truth != pred] = (230, 40, 40)
    return out


__all__ = ["evaluate_predictor", "evaluate_semantic_checkpoint", "format_table", "error_map", "torch"]
