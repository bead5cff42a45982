"""COCO-style instance evaluation (pycocotools) plus counting error and best IoU per pedestrian.

Predictions and ground truth are kept per image as instance-id maps / mask stacks;
``InstanceEvaluator`` turns them into in-memory COCO structures at the end, so the
numbers are exactly pycocotools' (AP@[.5:.95] with 101-point interpolation, maxDets 100).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

#: Detections at or above this score count as "predicted pedestrians" for counting / best IoU.
DEFAULT_SCORE_THRESHOLD = 0.5


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _coco_box(box: np.ndarray) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def ids_to_masks(instances: np.ndarray) -> np.ndarray:
    n = int(instances.max(initial=0))
    return instances[None] == np.arange(1, n + 1)[:, None, None]


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(A,H,W) x (B,H,W) bool -> (A,B) IoU."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    fa = a.reshape(len(a), -1).astype(np.float32)
    fb = b.reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None] - inter
    return inter / np.maximum(union, 1)


@dataclass
class InstanceEvaluator:
    """Accumulate (ground truth, prediction) per image; ``compute()`` gives the report's keys."""

    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    _images: list[dict] = field(default_factory=list)
    _gts: list[dict] = field(default_factory=list)
    _dets: list[dict] = field(default_factory=list)
    _count_errors: list[int] = field(default_factory=list)
    _best_ious: list[float] = field(default_factory=list)

    def add(
        self,
        gt_masks: np.ndarray,
        pred_masks: np.ndarray,
        scores: np.ndarray,
        pred_boxes: np.ndarray | None = None,
        gt_boxes: np.ndarray | None = None,
    ) -> None:
        """One image: gt (G,H,W) bool, predictions (P,H,W) bool with (P,) scores, optional xyxy boxes.

        Boxes default to the masks' tight boxes (so the DWT's box AP is its masks' box AP).
        """
        image_id = len(self._images) + 1
        h, w = gt_masks.shape[1:] if gt_masks.ndim == 3 else pred_masks.shape[1:]
        self._images.append({"id": image_id, "height": int(h), "width": int(w)})
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        gt_rles, det_rles = [_rle(m) for m in gt_masks], [_rle(m) for m in pred_masks]
        for i, rle in enumerate(gt_rles):
            box = gt_boxes[i] if gt_boxes is not None else None
            self._gts.append(
                {
                    "id": len(self._gts) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "iscrowd": 0,
                    "segmentation": rle,
                    "area": float(mask_utils.area(rle)),
                    "bbox": _coco_box(box) if box is not None else list(map(float, mask_utils.toBbox(rle))),
                }
            )
        for i, rle in enumerate(det_rles):
            box = _coco_box(pred_boxes[i]) if pred_boxes is not None else list(map(float, mask_utils.toBbox(rle)))
            self._dets.append(
                {
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": rle,
                    "bbox": box,
                    "score": float(scores[i]),
                    "area": float(mask_utils.area(rle)),
                }
            )
        kept = [rle for rle, score in zip(det_rles, scores) if score >= self.score_threshold]
        self._count_errors.append(abs(len(kept) - len(gt_masks)))
        if gt_rles:  # from the run-length encodings already made: no pass over every pixel of every pair
            iou = np.asarray(mask_utils.iou(kept, gt_rles, [0] * len(gt_rles))).reshape(len(kept), len(gt_rles))
            best = iou.max(axis=0) if kept else np.zeros(len(gt_rles))
            self._best_ious.extend(best.tolist())

    def _coco_stats(self, iou_type: str) -> np.ndarray:
        """pycocotools' AP, AP50 and AP75 over all areas at 100 detections; 0 (not -1) when nothing was
        detected.

        Only the all-areas range and the 100-detection cut are evaluated: the report needs no other,
        and each of these numbers depends on its own range and cut alone, so they equal
        ``COCOeval.summarize()``'s first three (a test compares them) for a quarter of the matching and
        about half the time per image, which the dashboard pays for every picture it scores.
        """
        if not self._gts:
            return np.full(3, np.nan)
        if not self._dets:
            return np.zeros(3)
        gt = COCO()
        gt.dataset = {"images": self._images, "annotations": self._gts, "categories": [{"id": 1, "name": "pedestrian"}]}
        with contextlib.redirect_stdout(io.StringIO()):
            gt.createIndex()
            dt = gt.loadRes([dict(d) for d in self._dets])
            ev = COCOeval(gt, dt, iou_type)
            ev.params.areaRng, ev.params.areaRngLbl, ev.params.maxDets = [[0, 1e10]], ["all"], [100]
            ev.evaluate()
            ev.accumulate()
        precision = ev.eval["precision"][:, :, 0, 0, 0]  # (IoU thresholds, recall points)
        thresholds = ev.params.iouThrs

        def mean_precision(rows: np.ndarray) -> float:
            valid = rows[rows > -1]
            return float(valid.mean()) if valid.size else -1.0

        return np.asarray(
            [
                mean_precision(precision),
                mean_precision(precision[np.isclose(thresholds, 0.5)]),
                mean_precision(precision[np.isclose(thresholds, 0.75)]),
            ]
        )

    def compute(self) -> dict:
        segm = self._coco_stats("segm")
        bbox = self._coco_stats("bbox")
        return {
            "mask_ap": float(segm[0]),
            "mask_ap50": float(segm[1]),
            "mask_ap75": float(segm[2]),
            "box_ap": float(bbox[0]),
            "box_ap50": float(bbox[1]),
            "count_error": float(np.mean(self._count_errors)) if self._count_errors else float("nan"),
            "mean_best_iou": float(np.mean(self._best_ious)) if self._best_ious else float("nan"),
            "num_images": len(self._images),
        }
