"""COCO evaluation against hand-made cases whose AP is known."""

from __future__ import annotations

import numpy as np
import pytest

from seg.instances.coco_eval import InstanceEvaluator, mask_iou

H, W = 60, 80


def _rect(y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_perfect_predictions_score_one():
    gt = np.stack([_rect(5, 40, 5, 20), _rect(10, 50, 40, 60)])
    ev = InstanceEvaluator()
    ev.add(gt, gt, np.array([0.9, 0.8]))
    r = ev.compute()
    assert r["mask_ap"] == pytest.approx(1.0) and r["box_ap"] == pytest.approx(1.0)
    assert r["count_error"] == 0 and r["mean_best_iou"] == pytest.approx(1.0) and r["num_images"] == 1


def test_iou_062_counts_at_three_of_ten_thresholds():
    gt = _rect(0, 50, 0, 50)  # 2500 px
    pred = _rect(0, 50, 0, 31)  # 1550 px inside: IoU 0.62
    assert mask_iou(gt[None], pred[None])[0, 0] == pytest.approx(0.62)
    ev = InstanceEvaluator()
    ev.add(gt[None], pred[None], np.array([0.9]))
    r = ev.compute()
    assert r["mask_ap"] == pytest.approx(0.3)  # matched at .50, .55, .60
    assert r["mask_ap50"] == pytest.approx(1.0) and r["mask_ap75"] == pytest.approx(0.0)
    assert r["mean_best_iou"] == pytest.approx(0.62)


def test_false_positive_ranked_first_halves_ap50():
    gt = _rect(5, 40, 5, 20)
    fp = _rect(10, 50, 40, 60)
    ev = InstanceEvaluator()
    ev.add(gt[None], np.stack([fp, gt]), np.array([0.9, 0.8]))
    r = ev.compute()
    assert r["mask_ap50"] == pytest.approx(0.5)
    assert r["count_error"] == 1


def test_missed_pedestrian_caps_recall_and_low_scores_do_not_count():
    gt = np.stack([_rect(5, 40, 5, 20), _rect(10, 50, 40, 60)])
    ev = InstanceEvaluator(score_threshold=0.5)
    ev.add(gt, gt[:1], np.array([0.9]))
    ev.add(gt, gt, np.array([0.9, 0.2]))  # second image: the 0.2 detection is below the counting threshold
    r = ev.compute()
    # three true detections for four pedestrians: precision 1 up to recall 0.75 = 76 of 101 recall points
    assert r["mask_ap50"] == pytest.approx(76 / 101)
    assert r["count_error"] == pytest.approx(1.0)  # one missing in each image
    assert r["mean_best_iou"] == pytest.approx(0.5)


def test_only_missing_detections():
    gt = np.stack([_rect(5, 40, 5, 20), _rect(10, 50, 40, 60)])
    ev = InstanceEvaluator()
    ev.add(gt, gt[:1], np.array([0.9]))
    assert ev.compute()["mask_ap"] == pytest.approx(51 / 101)  # recall 0.5: 51 of 101 recall points


def test_no_detections_at_all_is_zero_not_minus_one():
    ev = InstanceEvaluator()
    ev.add(_rect(5, 40, 5, 20)[None], np.zeros((0, H, W), bool), np.zeros(0))
    r = ev.compute()
    assert r["mask_ap"] == 0.0 and r["count_error"] == 1 and r["mean_best_iou"] == 0.0
