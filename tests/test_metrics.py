"""Metrics against straightforward references and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from seg.metrics import SegMetrics, average_precision, confusion_matrix, iou_per_class, mean_iou, pixel_accuracy


def _random_case(seed: int, c: int = 5, n: int = 3, h: int = 17, w: int = 23):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=g) * 2
    target = torch.randint(0, c, (n, h, w), generator=g)
    agree = torch.rand(n, h, w, generator=g) < 0.5  # make predictions informative
    target = torch.where(agree, logits.argmax(1), target)
    return logits.softmax(1), target


def _voc_ap_reference(scores: np.ndarray, labels: np.ndarray) -> float:
    """VOC 'all points' AP written the textbook way: sort, PR curve, monotone envelope."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each tie group
    tp = np.cumsum(y)[distinct]
    fp = (distinct + 1) - tp
    rec = tp / y.sum()
    prec = tp / (tp + fp)
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    for i in range(mpre.size - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_matrix_matches_sklearn(seed):
    probs, target = _random_case(seed)
    pred = probs.argmax(1)
    ours = confusion_matrix(target, pred, 5).numpy()
    theirs = sk_confusion_matrix(target.reshape(-1), pred.reshape(-1), labels=list(range(5)))
    np.testing.assert_array_equal(ours, theirs)


def test_confusion_matrix_fixed_labels_and_ignore():
    target = torch.tensor([0, 0, 255, 2])
    pred = torch.tensor([0, 1, 1, 2])
    cm = confusion_matrix(target, pred, 4, ignore_index=255)
    assert cm.shape == (4, 4)
    assert cm.sum() == 3 and cm[0, 0] == 1 and cm[0, 1] == 1 and cm[2, 2] == 1 and cm[3].sum() == 0


def test_iou_and_accuracy_against_loops():
    cm = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    expected = [5 / (5 + 1 + 2), 3 / (3 + 2 + 1), np.nan]
    got = iou_per_class(cm)
    np.testing.assert_allclose(got[:2], expected[:2])
    assert np.isnan(got[2])  # absent and never predicted: undefined, left out of the mean
    assert mean_iou(cm) == pytest.approx(np.mean(expected[:2]))
    assert pixel_accuracy(cm) == pytest.approx(8 / 11)


@pytest.mark.parametrize("seed", [0, 3])
def test_average_precision_reference_and_sklearn(seed):
    rng = np.random.default_rng(seed)
    scores = rng.random(4000)
    labels = (rng.random(4000) < 0.2 + 0.6 * scores).astype(int)
    scores = np.round(scores, 2)  # ties
    assert average_precision(scores, labels, interpolated=False) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-12
    )
    assert average_precision(scores, labels) == pytest.approx(_voc_ap_reference(scores, labels), abs=1e-12)
    # the monotone envelope can only raise precision
    assert average_precision(scores, labels) >= average_precision(scores, labels, interpolated=False)


def test_average_precision_hand_cases():
    assert average_precision([0.9, 0.8, 0.1], [1, 1, 0]) == pytest.approx(1.0)
    # ranks: P N P -> precision 1 at recall .5, 2/3 at recall 1
    assert average_precision([0.9, 0.8, 0.7], [1, 0, 1]) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # interpolation: P N N P P -> precisions 1, 1/2... envelope at recall 1/3..1 = 3/5
    assert average_precision([5, 4, 3, 2, 1], [1, 0, 0, 1, 1]) == pytest.approx(1 / 3 + 2 / 3 * 3 / 5)
    assert np.isnan(average_precision([0.5, 0.2], [0, 0]))


@pytest.mark.parametrize("seed", [0, 1])
def test_streaming_segmetrics_equals_pooled_references(seed):
    probs, target = _random_case(seed)
    metrics = SegMetrics(5)
    metrics.update(probs[:1], target[:1])
    metrics.update(probs[1:], target[1:])
    result = metrics.compute()
    ap_exact, _ = metrics.average_precisions(interpolated=False)
    rounded = probs.half().float()
    for k in range(5):
        y = (target == k).reshape(-1).numpy()
        s = rounded[:, k].reshape(-1).numpy()
        assert ap_exact[k] == pytest.approx(average_precision_score(y, s), abs=1e-9)
        assert result["ap"][k] == pytest.approx(_voc_ap_reference(s, y), abs=1e-6)
        # fp16 rounding of the scores moves AP very little
        assert result["ap"][k] == pytest.approx(_voc_ap_reference(probs[:, k].reshape(-1).numpy(), y), abs=2e-3)
    cm = sk_confusion_matrix(target.reshape(-1), probs.argmax(1).reshape(-1), labels=list(range(5)))
    assert result["confusion_matrix"] == cm.tolist()
    assert result["miou"] == pytest.approx(np.nanmean(iou_per_class(cm)), abs=1e-6)
    assert result["map"] == pytest.approx(np.mean(result["ap"]), abs=1e-6)
    assert set(result["pr_curves"]["0"]) == {"precision", "recall"}


def test_perfect_prediction_scores_one():
    target = torch.randint(0, 3, (2, 8, 8))
    probs = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float()
    m = SegMetrics(3)
    m.update(probs, target)
    r = m.compute()
    assert r["miou"] == 1.0 and r["map"] == 1.0 and r["pixel_accuracy"] == 1.0


def test_ignored_pixels_are_left_out_of_every_metric():
    probs, target = _random_case(5)
    masked = target.clone()
    masked[:, :4] = 255
    with_ignore = SegMetrics(5, ignore_index=255)
    with_ignore.update(probs, masked)
    keep = masked != 255
    only_valid = SegMetrics(5)
    only_valid.update(probs.permute(0, 2, 3, 1)[keep].T.reshape(1, 5, -1, 1), target[keep].reshape(1, -1, 1))
    a, b = with_ignore.compute(), only_valid.compute()
    assert a["confusion_matrix"] == b["confusion_matrix"] and a["ap"] == b["ap"]


def test_known_class_accuracies_follow_the_published_protocol():
    """8 classes, unknown ("misc") pixels ignored, the prediction the best of the 8 known classes."""
    from seg.classes import SBD_CLASSES

    metrics = SegMetrics(9, class_names=list(SBD_CLASSES))
    target = torch.tensor([[[0, 0, 1, 8]]])  # sky, sky, tree, unknown
    probs = torch.zeros(1, 9, 1, 4)
    probs[0, 0, 0, 0] = 1.0  # sky right
    probs[0, 8, 0, 1], probs[0, 1, 0, 1] = 0.6, 0.4  # misc wins over all, tree over the known 8: wrong
    probs[0, 1, 0, 2] = 1.0  # tree right
    probs[0, 3, 0, 3] = 1.0  # the unknown pixel does not count
    metrics.update(probs, target)
    result = metrics.compute()
    assert result["pixel_accuracy_8"] == pytest.approx(2 / 3)
    assert result["class_accuracy_8"] == pytest.approx((0.5 + 1.0) / 2)  # sky 1/2, tree 1/1; absent classes skipped
    assert result["pixel_accuracy"] == pytest.approx(2 / 4)  # the 9-class figure counts misc as a class
    other = SegMetrics(3, class_names=["road", "car", "person"])
    other.update(torch.softmax(torch.randn(1, 3, 2, 2), 1), torch.zeros(1, 2, 2, dtype=torch.long))
    assert other.compute()["class_accuracy_8"] is None
