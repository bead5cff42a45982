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


def test_ap_equals_pycocotools_full_summary_on_mixed_sizes_and_crowded_images():
    """Only the all-areas range at 100 detections is evaluated; AP, AP50 and AP75 must equal
    ``COCOeval.summarize()``'s with every range and cut, on small, medium and large instances and on
    an image with more than 100 detections."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(0)
    ev = InstanceEvaluator()
    for image in range(6):
        h, w = 200, 260
        gts, preds, scores = [], [], []
        for _ in range(rng.integers(1, 6)):
            side = int(rng.choice([6, 20, 70]))  # under 32^2, under 96^2 and over 96^2 px
            y, x = rng.integers(0, h - side), rng.integers(0, w - side)
            m = np.zeros((h, w), bool)
            m[y : y + side, x : x + side] = True
            gts.append(m)
            dy, dx = rng.integers(-side // 3, side // 3 + 1, 2)
            p = np.zeros((h, w), bool)
            p[max(0, y + dy) : y + dy + side, max(0, x + dx) : x + dx + side] = True
            preds.append(p)
            scores.append(rng.uniform(0.3, 1))
        for _ in range(120 if image == 0 else 3):  # false positives; image 0 passes the 100 cut
            y, x = rng.integers(0, h - 10), rng.integers(0, w - 10)
            p = np.zeros((h, w), bool)
            p[y : y + 10, x : x + 10] = True
            preds.append(p)
            scores.append(rng.uniform(0, 0.9))
        ev.add(np.stack(gts), np.stack(preds), np.array(scores))
    report = ev.compute()

    gt = COCO()
    gt.dataset = {"images": ev._images, "annotations": ev._gts, "categories": [{"id": 1, "name": "pedestrian"}]}
    full = {}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        for iou_type in ("segm", "bbox"):
            coco = COCOeval(gt, gt.loadRes([dict(d) for d in ev._dets]), iou_type)
            coco.evaluate()
            coco.accumulate()
            coco.summarize()
            full[iou_type] = coco.stats
    assert 0.05 < report["mask_ap"] < 0.95  # a case where ranking, sizes and the cut all matter
    assert report["mask_ap"] == pytest.approx(full["segm"][0], abs=1e-12)
    assert report["mask_ap50"] == pytest.approx(full["segm"][1], abs=1e-12)
    assert report["mask_ap75"] == pytest.approx(full["segm"][2], abs=1e-12)
    assert report["box_ap"] == pytest.approx(full["bbox"][0], abs=1e-12)
    assert report["box_ap50"] == pytest.approx(full["bbox"][1], abs=1e-12)


def test_best_iou_per_pedestrian_equals_the_pixelwise_iou_over_random_masks():
    """The best IoU per pedestrian comes from the masks' run-length encodings; it must be the pixel count's IoU
    with the best detection at or above the score threshold (none left: 0), including images without any."""
    rng = np.random.default_rng(0)
    for _ in range(30):
        gt = rng.random((int(rng.integers(0, 4)), 30, 40)) > 0.6
        pred = rng.random((int(rng.integers(0, 5)), 30, 40)) > 0.5
        scores = rng.random(len(pred))
        ev = InstanceEvaluator()
        ev.add(gt, pred, scores)
        kept = pred[scores >= ev.score_threshold]
        want = mask_iou(gt, kept).max(axis=1) if len(gt) and len(kept) else np.zeros(len(gt))
        np.testing.assert_allclose(ev._best_ious, want, rtol=1e-6)
