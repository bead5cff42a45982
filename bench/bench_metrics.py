"""Metrics on the val split: seg.metrics vs scikit-learn, same numbers, time ratio (target >= 10x).

The scores are the shipped U-Net's softmax outputs on the val split (random scores if no
checkpoint), rounded to float16, the precision ``SegMetrics`` ranks at; scikit-learn gets
the same rounded scores so both must give the same numbers.

    python bench/bench_metrics.py
"""

from __future__ import annotations

import _common  # noqa: F401  (first: it imports seg, which sets OpenMP's spin before torch loads)

# isort: split
import time

import numpy as np
import torch
from _common import sbd_dir_or_exit, threads_from_env
from sklearn.metrics import average_precision_score, confusion_matrix

from seg.checkpoints import list_checkpoints
from seg.data.sbd import load_semantic_split
from seg.inference import Predictor
from seg.metrics import SegMetrics


def main() -> None:
    threads_from_env()
    val = load_semantic_split(sbd_dir_or_exit(), "val")
    ckpt = {c.name: c for c in list_checkpoints() if c.available}.get("unet")
    if ckpt:
        probs = torch.cat(
            [
                Predictor.from_checkpoint(ckpt.path, "cpu").predict_probs_batch(val.images[i : i + 16])
                for i in range(0, len(val), 16)
            ]
        )
        source = "unet checkpoint"
    else:
        probs = torch.randn(len(val), 9, 224, 288).softmax(1)
        source = "random scores (no unet checkpoint)"
    probs = probs.half().float()
    target = val.masks.long()
    c = probs.shape[1]

    start = time.perf_counter()
    metrics = SegMetrics(c)
    for i in range(0, len(val), 16):
        metrics.update(probs[i : i + 16], target[i : i + 16])
    ours_cm = metrics.confusion.numpy()
    ours_ap, _ = metrics.average_precisions(interpolated=False)
    ours_s = time.perf_counter() - start

    start = time.perf_counter()
    y = target.reshape(-1).numpy()
    flat = probs.permute(1, 0, 2, 3).reshape(c, -1).numpy()
    sk_cm = confusion_matrix(y, flat.argmax(0), labels=list(range(c)))
    sk_ap = np.array([average_precision_score(y == k, flat[k]) for k in range(c)])
    sk_s = time.perf_counter() - start

    same_cm = np.array_equal(ours_cm, sk_cm)
    max_diff = float(np.max(np.abs(ours_ap - sk_ap)))
    print(f"{len(val)} val images, {y.size / 1e6:.1f} M pixels, {c} classes, scores: {source}")
    print(f"seg.metrics  : {ours_s * 1000:8.1f} ms")
    print(f"scikit-learn : {sk_s * 1000:8.1f} ms")
    print(f"ratio        : {sk_s / ours_s:8.1f}x  (target >= 10x)")
    print(f"same numbers : confusion matrix identical={same_cm}, max |AP difference|={max_diff:.2e}")
    print(f"mAP (sklearn-style, non-interpolated) ours={ours_ap.mean():.6f} sklearn={sk_ap.mean():.6f}")


if __name__ == "__main__":
    main()
