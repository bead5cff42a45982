"""COCO-style evaluation of an instance checkpoint at each image's original size.

Evaluation runs every image through ``InstancePredictor`` exactly as ``predict`` does, so
the numbers are those a user of the checkpoint gets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def evaluate_instance_checkpoint(
    checkpoint: str | Path,
    data_dir: Path,
    split: str = "val",
    method: str | None = None,
    limit: int | None = None,
    tta: str = "card",
    candidates: str = "card",
) -> dict:
    """Every image of ``split`` at its original size through ``InstancePredictor``; the report's keys.

    ``candidates``: ``card`` ranks the DWT's alternatives after its partition as tuned,
    ``partition`` scores the id map alone."""
    from seg.instances.coco_eval import InstanceEvaluator
    from seg.instances.data import ids_for_split, load_sample
    from seg.instances.inference import TTA_OPTIONS, InstancePredictor

    flip, scales = (None, None) if tta == "card" else TTA_OPTIONS[tta]
    fill_scales = None if tta == "card" else ()  # a fixed setting is those views alone, as predict(tta=False)
    predictor = InstancePredictor.from_checkpoint(
        checkpoint, method=method, flip=flip, scales=scales, fill_scales=fill_scales
    )
    evaluator = InstanceEvaluator()
    latencies = []
    for image_id in ids_for_split(data_dir, split)[:limit]:
        sample = load_sample(data_dir, image_id)
        result = predictor.predict(sample.image, candidates=candidates == "card")
        latencies.append(result.latency_ms)
        masks, scores, boxes = result.candidates()
        evaluator.add(sample.masks(), masks, scores, boxes)
    metrics = evaluator.compute()
    metrics.update(
        {
            "split": split,
            "method": predictor.method,
            "checkpoint": str(checkpoint),
            "tta_flip": predictor.flip,
            "tta_scales": list(predictor.scales),
            "candidates": candidates if not predictor.detector else None,
            "alternative_scales": list(predictor.alternative_scales) if not predictor.detector else None,
            "fill_scales": list(predictor.fill_scales) if not predictor.detector else None,
            "mask_threshold": predictor.mask_threshold if predictor.detector else None,
            "mean_latency_ms": float(np.mean(latencies)) if latencies else None,
            "postprocess": vars(predictor.params) if not predictor.detector else None,
        }
    )
    return metrics
