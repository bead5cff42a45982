"""``python -m seg eval-instances`` and ``predict-instances`` (wired in by ``seg.cli``).

Evaluation runs at each image's original size, like prediction, so the numbers are
those a user of ``predict-instances`` gets.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


#: ``tune-instances`` pays for a dearer test-time setting only when val mask AP gains more than this
TUNE_MIN_GAIN = 0.005


def add_subcommands(subparsers) -> None:
    p = subparsers.add_parser("eval-instances", help="COCO mask/box AP, counting error and best IoU on Penn-Fudan")
    p.add_argument("--checkpoint", required=True, help="a dwt or maskrcnn checkpoint (stem, .json or .safetensors)")
    p.add_argument("--data", help="the PennFudanPed folder (overrides $SEG_DATA_DIR)")
    p.add_argument("--split", default="val", choices=("train", "val", "test", "all"),
                   help="'all' evaluates every image in the folder")
    p.add_argument("--json", help="write the metrics to this JSON file")
    p.add_argument("--limit", type=int, default=None, help="only the first N images of the split (smoke tests)")
    p.add_argument("--method", default=None, choices=("dwt", "components"),
                   help="DWT checkpoints: watershed post-processing (default) or the connected-components baseline")
    p.add_argument("--tta", default="card", choices=("card", "none", "flip", "scales", "flip+scales"),
                   help="DWT test-time augmentation: as tuned on the card (default), or a fixed one: mirror image, "
                        "an extra 1.25x pass, or both")
    p.add_argument("--candidates", default="card", choices=("card", "partition"),
                   help="DWT: rank the alternatives after the partition as the card says (default), or "
                        "evaluate the partition (the id map) alone")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=cmd_eval_instances)

    p = subparsers.add_parser("tune-instances",
                              help="choose a DWT checkpoint's post-processing on val and store it in its card")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", help="the PennFudanPed folder (overrides $SEG_DATA_DIR)")
    p.add_argument("--split", default="val", choices=("train", "val"), help="never tune on test")
    p.add_argument("--tta", default="auto", choices=("auto", "none", "flip", "scales", "flip+scales"),
                   help="test-time augmentation: auto tries every setting and keeps the best mask AP on the split")
    p.add_argument("--limit", type=int, default=None, help="only the first N images of the split (smoke tests)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=cmd_tune_instances)

    p = subparsers.add_parser("ensemble-instances",
                              help="combine DWT checkpoints into one ensemble checkpoint (then tune-instances)")
    p.add_argument("members", nargs="+", help="two or more dwt checkpoints of the same architecture")
    p.add_argument("--out", required=True, help="output checkpoint stem")
    p.set_defaults(func=cmd_ensemble_instances)

    p = subparsers.add_parser("predict-instances",
                              help="instance-id PNGs (16-bit past 255 instances) + per-instance JSON")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="+")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=cmd_predict_instances)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Extra ``train`` flags for the instance models (all prefixed ``--inst-``)."""
    group = parser.add_argument_group("instance models (dwt, maskrcnn)")
    group.add_argument("--inst-batch-size", type=int, default=None, help="images per step (dwt 4, maskrcnn 2)")
    group.add_argument("--inst-crop", type=int, default=None, help="training crop side in px (dwt 224, maskrcnn 320)")
    group.add_argument("--inst-work-height", type=int, default=None,
                       help="dwt: image height to train and run at (default 224; inference uses the card's)")
    group.add_argument("--inst-fg-balance", type=float, default=None,
                       help="dwt: weight of an extra foreground term over pedestrian pixels weighted "
                            "1/sqrt(instance area), so small pedestrians count (default 0: plain cross entropy)")
    group.add_argument("--inst-max-images", type=int, default=None, help="use only the first N training images")
    group.add_argument("--inst-val-images", type=int, default=None, help="validate on the first N val images")


def _threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def evaluate_checkpoint(checkpoint: str | Path, data_dir: Path, split: str = "val", method: str | None = None,
                        limit: int | None = None, tta: str = "card", candidates: str = "card") -> dict:
    """Every image of ``split`` at its original size through ``InstancePredictor``; the report's keys.

    ``candidates``: ``card`` ranks the DWT's alternatives after its partition as tuned,
    ``partition`` scores the id map alone."""
    from seg.instances.coco_eval import InstanceEvaluator
    from seg.instances.data import ids_for_split, load_sample
    from seg.instances.inference import TTA_OPTIONS, InstancePredictor

    flip, scales = (None, None) if tta == "card" else TTA_OPTIONS[tta]
    predictor = InstancePredictor.from_checkpoint(checkpoint, method=method, flip=flip, scales=scales)
    evaluator = InstanceEvaluator()
    latencies = []
    for image_id in ids_for_split(data_dir, split)[:limit]:
        sample = load_sample(data_dir, image_id)
        result = predictor.predict(sample.image, candidates=candidates == "card")
        latencies.append(result.latency_ms)
        masks, scores, boxes = result.candidates()
        evaluator.add(sample.masks(), masks, scores, boxes)
    metrics = evaluator.compute()
    metrics.update({"split": split, "method": predictor.method, "checkpoint": str(checkpoint),
                    "tta_flip": predictor.flip if not predictor.detector else None,
                    "tta_scales": list(predictor.scales) if not predictor.detector else None,
                    "candidates": candidates if not predictor.detector else None,
                    "alternative_scales": list(predictor.alternative_scales) if not predictor.detector else None,
                    "mean_latency_ms": float(np.mean(latencies)) if latencies else None,
                    "postprocess": vars(predictor.params) if not predictor.detector else None})
    return metrics


def cmd_eval_instances(args: argparse.Namespace) -> int:
    from seg.config import dataset_dir
    from seg.io import atomic_write_text

    _threads(args)
    try:
        metrics = evaluate_checkpoint(args.checkpoint, dataset_dir("pennfudan", args.data), args.split, args.method,
                                      args.limit, args.tta, args.candidates)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    clean = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in metrics.items()}
    text = json.dumps(clean, indent=1)
    if args.json:
        atomic_write_text(args.json, text)
    print(text)
    return 0


def tune_checkpoint(checkpoint: str | Path, data_dir: Path, split: str = "val", limit: int | None = None,
                    tta: str = "auto") -> dict:
    """Re-run the training's post-processing search on ``split``; writes ``postprocess`` into the card.

    ``tta``: ``auto`` searches with every test-time augmentation setting (``TTA_OPTIONS``)
    and keeps the cheapest one within ``TUNE_MIN_GAIN`` of the best mask AP (25 val images:
    a smaller gain is noise, and the dearer settings cost 2-5x the time); the choice goes in
    the card too.
    Then, with the chosen parameters, each ``ALTERNATIVE_SCALE_OPTIONS`` entry: separate
    passes (e.g. 1.5x, which sees small pedestrians) whose new instances rank last; kept
    only if val mask AP rises by more than ``TUNE_MIN_GAIN``.
    """
    import torch

    from seg.checkpoints import load_checkpoint, stem_of
    from seg.instances import DWT_ARCHITECTURES
    from seg.instances.data import WORK_HEIGHT, load_split
    from seg.instances.inference import ALTERNATIVE_SCALE_OPTIONS, TTA_OPTIONS
    from seg.instances.postprocess import PostprocessParams
    from seg.instances.targets import ENERGY_EDGES
    from seg.instances.task import DWTValidation
    from seg.io import atomic_write_text

    model, card = load_checkpoint(checkpoint)
    if card.get("architecture") not in DWT_ARCHITECTURES:
        raise ValueError("only DWT checkpoints have post-processing parameters to tune")
    samples = load_split(data_dir, split, int(card.get("work_height", WORK_HEIGHT)), limit)
    edges = tuple(card.get("energy_edges", ENERGY_EDGES))
    options = list(TTA_OPTIONS) if tta == "auto" else [tta]  # cheapest first
    model, cpu = model.float().eval(), torch.device("cpu")
    results, computed = {}, {}
    for name in options:
        validation = DWTValidation(samples, edges, *TTA_OPTIONS[name])
        maps, val_loss = validation.maps(model, cpu)
        results[name], computed[name] = validation.report(maps, val_loss, thorough=True), (validation, maps)
    best_ap = max(results[name]["mask_ap"] or 0.0 for name in options)
    chosen = next(name for name in options if (results[name]["mask_ap"] or 0.0) >= best_ap - TUNE_MIN_GAIN)
    flip, scales = TTA_OPTIONS[chosen]
    result = results[chosen]
    validation, maps = computed[chosen]
    alternative_scales, alternatives_compared = (), {"none": result["mask_ap"]}
    for extra in ALTERNATIVE_SCALE_OPTIONS:  # the chosen setting's maps plus each set of separate passes
        metrics = validation.evaluate(validation.with_alternatives(maps, model, cpu, extra),
                                      PostprocessParams(**result["postprocess"]))
        alternatives_compared["+".join(f"{s:g}x" for s in extra)] = metrics["mask_ap"]
        if (metrics["mask_ap"] or 0.0) > (result["mask_ap"] or 0.0) + TUNE_MIN_GAIN:
            alternative_scales = extra
            result = result | {k: v for k, v in metrics.items() if k in result} | {"score": metrics["mask_ap"]}
    card["postprocess"] = result["postprocess"]
    card["tta_flip"], card["tta_scales"] = flip, list(scales)
    card["alternative_scales"] = list(alternative_scales)
    if split == "val":  # the card's val metrics describe the model as it now runs (post-processing, TTA)
        if card.get("val_metrics") is not None:
            card.setdefault("training_val_metrics", card["val_metrics"])
        card["val_metrics"] = {k: v for k, v in result.items() if k != "postprocess"} | {
            "postprocess": result["postprocess"], "tta": chosen, "tta_flip": flip, "tta_scales": list(scales),
            "alternative_scales": list(alternative_scales), "at": "working height"}
    keys = ("mask_ap", "mask_ap50", "mask_ap75", "count_error", "components_mask_ap")
    card["postprocess_tuning"] = {"split": split, "num_images": len(samples), "at": "working height",
                                  "tta": chosen, "tta_flip": flip, "tta_scales": list(scales),
                                  **{k: result[k] for k in keys},
                                  "compared": {name: {k: results[name][k] for k in keys[:3]} for name in options},
                                  "alternative_scales": list(alternative_scales),
                                  "alternative_scales_compared": alternatives_compared}
    atomic_write_text(stem_of(checkpoint).with_suffix(".json"), json.dumps(card, indent=1, allow_nan=False))
    return card["postprocess_tuning"] | {"postprocess": card["postprocess"]}


def cmd_tune_instances(args: argparse.Namespace) -> int:
    from seg.config import dataset_dir

    _threads(args)
    try:
        report = tune_checkpoint(args.checkpoint, dataset_dir("pennfudan", args.data), args.split, args.limit,
                                 args.tta)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=1))
    return 0


def cmd_ensemble_instances(args: argparse.Namespace) -> int:
    from seg.checkpoints import CheckpointError
    from seg.instances.ensemble import combine

    try:
        card = combine(args.members, args.out)
    except (FileNotFoundError, ValueError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({card['arch_kwargs']['members']} members); "
          f"now: python -m seg tune-instances --checkpoint {args.out}")
    return 0


def save_instance_png(path: Path, instances: np.ndarray) -> None:
    """8-bit greyscale ids, or 16-bit when there are more than 255 instances (atomic write)."""
    from PIL import Image

    from seg.io import atomic_write_bytes, encode_png

    if instances.max(initial=0) > 65535:
        raise ValueError("more than 65535 instances cannot be stored in a 16-bit PNG")
    if instances.max(initial=0) > 255:
        img = Image.fromarray(instances.astype(np.uint16))  # mode I;16
    else:
        img = Image.fromarray(instances.astype(np.uint8), mode="L")
    atomic_write_bytes(path, encode_png(img))


def cmd_predict_instances(args: argparse.Namespace) -> int:
    from seg.instances.inference import InstancePredictor
    from seg.io import atomic_write_text, iter_images

    _threads(args)
    predictor = InstancePredictor.from_checkpoint(args.checkpoint)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for name, rgb in iter_images(args.images, failures):
        start = time.perf_counter()
        result = predictor.predict(rgb)
        stem = Path(name).stem
        save_instance_png(out / f"{stem}_instances.png", result.instances)
        record = {
            "image": str(name), "width": int(rgb.shape[1]), "height": int(rgb.shape[0]),
            "checkpoint": str(args.checkpoint), "method": predictor.method,
            "instances": [{"id": i + 1, "score": round(float(s), 5),
                           "box_xyxy": [round(float(v), 1) for v in b],
                           "area": int((result.instances == i + 1).sum())}
                          for i, (s, b) in enumerate(zip(result.scores, result.boxes))],
            "latency_ms": round(result.latency_ms, 1),
        }
        atomic_write_text(out / f"{stem}_instances.json", json.dumps(record, indent=1))
        print(f"{name}: {result.num_instances} instances ({(time.perf_counter() - start) * 1000:.0f} ms)")
    return 1 if failures else 0
