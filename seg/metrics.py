"""Segmentation metrics over a whole split.

* Confusion matrix (rows truth, columns prediction) with one ``bincount``.
* Per-class IoU, mean IoU, pixel accuracy.
* Per-class average precision on the soft outputs, as the segmentation literature defines it: all
  pixels of the split pooled and ranked by that class's probability, VOC "all points"
  interpolated AP (precision made monotone from the right, summed over recall steps).

AP is computed *streaming and exactly* on float16-rounded probabilities: each batch
adds to a histogram over the 15361 float16 values in [0, 1] (positives and all
pixels per class). Sorting millions of pixels is replaced by a ``bincount``; ties at
one float16 value form one threshold, exactly as scikit-learn treats tied scores, so
the numbers equal scikit-learn's on the same (fp16-rounded) scores.
"""

from __future__ import annotations

import numpy as np
import torch

#: Number of distinct non-negative float16 values up to 1.0 (bit patterns 0..0x3C00).
FP16_BINS = 0x3C00 + 1


def confusion_matrix(
    target: torch.Tensor, pred: torch.Tensor, num_classes: int, ignore_index: int | None = None
) -> torch.Tensor:
    """(C, C) int64 counts, rows = truth, columns = prediction; labels fixed to 0..C-1."""
    t = torch.as_tensor(target).reshape(-1).long()
    p = torch.as_tensor(pred).reshape(-1).long()
    keep = (t >= 0) & (t < num_classes) & (p >= 0) & (p < num_classes)
    if ignore_index is not None:
        keep &= t != ignore_index
    idx = t[keep] * num_classes + p[keep]
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(cm: torch.Tensor | np.ndarray) -> np.ndarray:
    """TP / (TP + FP + FN) per class; NaN for a class that is neither present nor predicted."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(cm: torch.Tensor | np.ndarray) -> float:
    ious = iou_per_class(cm)
    return float(np.nanmean(ious)) if np.isfinite(ious).any() else float("nan")


def pixel_accuracy(cm: torch.Tensor | np.ndarray) -> float:
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    return float(np.trace(cm) / total) if total > 0 else float("nan")


def _ap_from_ranked(
    tp_counts: np.ndarray, fp_counts: np.ndarray, interpolated: bool
) -> tuple[float, np.ndarray, np.ndarray]:
    """AP from per-threshold positive/negative counts, thresholds sorted by descending score."""
    keep = (tp_counts + fp_counts) > 0
    tp = np.cumsum(tp_counts[keep], dtype=np.float64)
    fp = np.cumsum(fp_counts[keep], dtype=np.float64)
    total_pos = tp[-1] if tp.size else 0.0
    if total_pos <= 0:
        return float("nan"), np.array([1.0]), np.array([0.0])
    precision = tp / (tp + fp)
    recall = tp / total_pos
    if interpolated:
        precision_used = np.maximum.accumulate(precision[::-1])[::-1]
    else:
        precision_used = precision
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(steps * precision_used)), precision, recall


def average_precision(scores, labels, interpolated: bool = True) -> float:
    """AP of one class from raw scores and binary labels (reference implementation, sorts).

    ``interpolated=False`` is scikit-learn's ``average_precision_score``;
    ``interpolated=True`` is VOC all-points AP (the default).
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    # group tied scores into one threshold
    boundaries = np.flatnonzero(np.diff(s)) + 1
    starts = np.concatenate([[0], boundaries])
    pos = np.add.reduceat(y.astype(np.int64), starts) if s.size else np.zeros(0, np.int64)
    cnt = np.diff(np.concatenate([starts, [s.size]]))
    ap, _, _ = _ap_from_ranked(pos, cnt - pos, interpolated)
    return ap


def _thin_curve(precision: np.ndarray, recall: np.ndarray, points: int = 200) -> tuple[list[float], list[float]]:
    if precision.size > points:
        idx = np.unique(np.linspace(0, precision.size - 1, points).round().astype(int))
        precision, recall = precision[idx], recall[idx]
    return precision.round(5).tolist(), recall.round(5).tolist()


class SegMetrics:
    """Accumulates a split batch by batch; ``compute()`` gives every metric at once."""

    def __init__(self, num_classes: int, ignore_index: int | None = None, class_names: list[str] | None = None) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = class_names or [str(i) for i in range(num_classes)]
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        #: the literature's protocol on Stanford Background: 8 classes, unknown pixels ("misc") ignored,
        #: the prediction the best of the 8 known classes; kept only when the last class is "misc"
        self.unknown_index = num_classes - 1 if self.class_names[-1:] == ["misc"] and num_classes > 1 else None
        self.confusion_known = torch.zeros(max(num_classes - 1, 1), max(num_classes - 1, 1), dtype=torch.int64)
        self.hist_all = torch.zeros(num_classes, FP16_BINS, dtype=torch.int64)
        self.hist_pos = torch.zeros(num_classes, FP16_BINS, dtype=torch.int64)

    @torch.no_grad()
    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        """``probs`` (N,C,H,W) class probabilities (softmax outputs), ``target`` (N,H,W).

        Per class: one bincount of its float16 bit patterns (all pixels); then one gather
        and one bincount for the positives, and the argmax over a channels-last view.
        """
        probs = probs.detach().cpu().float()
        target = target.detach().cpu().long()
        n, c = probs.shape[:2]
        if c != self.num_classes:
            raise ValueError(f"expected {self.num_classes} channels, got {c}")
        valid = (target >= 0) & (target < c)
        if self.ignore_index is not None:
            valid &= target != self.ignore_index
        all_valid = bool(valid.all())
        for k in range(c):
            bits = probs[:, k].half().clamp_(0.0, 1.0).view(torch.int16)  # monotone in value on [0, 1]
            self.hist_all[k] += torch.bincount((bits if all_valid else bits[valid]).reshape(-1), minlength=FP16_BINS)
        safe_target = target if all_valid else torch.where(valid, target, torch.zeros_like(target))
        pos_bits = probs.gather(1, safe_target.unsqueeze(1)).squeeze(1).half().clamp_(0.0, 1.0).view(torch.int16)
        index = safe_target * FP16_BINS + pos_bits
        self.hist_pos += torch.bincount(
            (index if all_valid else index[valid]).reshape(-1), minlength=c * FP16_BINS
        ).reshape(c, FP16_BINS)
        channels_last = probs.permute(0, 2, 3, 1)
        if not channels_last.is_contiguous():  # a reduction over a contiguous last dim is far faster
            channels_last = channels_last.contiguous()
        pred = channels_last.argmax(-1)
        if all_valid:
            self.confusion += confusion_matrix(target, pred, c)
        else:
            self.confusion += confusion_matrix(target[valid], pred[valid], c)
        if self.unknown_index is not None:
            known = valid & (target != self.unknown_index)
            pred_known = channels_last[..., : self.unknown_index].argmax(-1)
            self.confusion_known += confusion_matrix(target[known], pred_known[known], self.unknown_index)

    def average_precisions(self, interpolated: bool = True) -> tuple[np.ndarray, dict]:
        all_h = self.hist_all.numpy()
        pos_h = self.hist_pos.numpy()
        aps, curves = [], {}
        for k in range(self.num_classes):
            pos = pos_h[k, ::-1]
            neg = all_h[k, ::-1] - pos
            ap, precision, recall = _ap_from_ranked(pos, neg, interpolated)
            aps.append(ap)
            curves[self.class_names[k]] = _thin_curve(precision, recall)
        return np.asarray(aps, dtype=np.float64), curves

    def known_class_accuracies(self) -> dict:
        """``pixel_accuracy_8`` and ``class_accuracy_8``: the published Stanford Background protocol
        (unknown pixels ignored, 8 classes); None for class lists without a trailing ``misc``."""
        if self.unknown_index is None:
            return {"pixel_accuracy_8": None, "class_accuracy_8": None}
        cm = self.confusion_known.numpy().astype(np.float64)
        total = cm.sum()
        rows = cm.sum(axis=1)
        per_class = np.divide(np.diag(cm), rows, out=np.full(len(rows), np.nan), where=rows > 0)
        return {
            "pixel_accuracy_8": round(float(np.trace(cm) / total), 6) if total else None,
            "class_accuracy_8": round(float(np.nanmean(per_class)), 6) if np.isfinite(per_class).any() else None,
        }

    def compute(self) -> dict:
        cm = self.confusion.numpy()
        ious = iou_per_class(cm)
        aps, curves = self.average_precisions(interpolated=True)
        nan_to_none = lambda v: None if not np.isfinite(v) else round(float(v), 6)  # noqa: E731
        return {
            "miou": nan_to_none(np.nanmean(ious)) if np.isfinite(ious).any() else None,
            "map": nan_to_none(np.nanmean(aps)) if np.isfinite(aps).any() else None,
            "pixel_accuracy": nan_to_none(pixel_accuracy(cm)),
            "iou": [nan_to_none(v) for v in ious],
            "ap": [nan_to_none(v) for v in aps],
            "per_class": {
                name: {"iou": nan_to_none(ious[i]), "ap": nan_to_none(aps[i])}
                for i, name in enumerate(self.class_names)
            },
            "confusion_matrix": cm.tolist(),
            **self.known_class_accuracies(),
            "pr_curves": {name: {"precision": p, "recall": r} for name, (p, r) in curves.items()},
        }
