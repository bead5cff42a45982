"""Instance prediction end to end, as the dashboard runs it: ``InstancePredictor.predict`` with the
card's test-time augmentation, eager fp32 against the runtime the calibration chose
(``runtime="auto"``), interleaved over Penn-Fudan val images.

    python bench/bench_instances_serving.py [--models dwt,maskrcnn] [--images 6] [--repeats 2]

Prints the median milliseconds per image and the ratio to eager fp32 in the same rounds, and
the sum over the models (the Instances tab runs both). Then the DWT's mirrored test-time pass:
one call of the image and its mirror as a batch of two (what ``predict`` does eagerly) against two
calls of one image (what it does served), on eager fp32 and on the served backend, interleaved, with the
largest difference between the two ways. Results: bench/results/instances_serving.json.
"""

from __future__ import annotations

import _common  # noqa: F401  (first: it imports seg, which sets OpenMP's spin before torch loads)

# isort: split
import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from _common import threads_from_env

from seg.config import REPO_ROOT, dataset_dir
from seg.hardware import cpu_features, runtime_versions
from seg.instances.data import ids_for_split, load_sample
from seg.instances.inference import (
    InstancePredictor,
    _work_batch,
    mirror_mean,
    mirrored_average,
    network_heads,
    with_mirror,
)
from seg.io import atomic_write_text
from seg.runtime import time_interleaved

RESULTS = Path(__file__).resolve().parent / "results" / "instances_serving.json"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="dwt,maskrcnn")
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--mirror-only", action="store_true", help="only the DWT's mirrored-pass batching")
    args = parser.parse_args()
    threads = threads_from_env()
    features = cpu_features()
    print(f"CPU: {features.summary()}; threads {threads}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in runtime_versions().items()))
    root = dataset_dir("pennfudan")
    images = [load_sample(root, i).image for i in ids_for_split(root, "val")[: args.images]]
    results: dict = {
        "cpu": features.summary(),
        "threads": threads,
        "versions": runtime_versions(),
        "images": len(images),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "load_average_at_start": os.getloadavg(),
        "models": {},
    }
    totals = {"eager": 0.0, "served": 0.0}
    if args.mirror_only:
        results["dwt_mirror_pass"] = bench_mirror_batching(images, args.repeats)
        results["load_average_at_end"] = os.getloadavg()
        out = RESULTS.with_name("dwt_mirror_pass.json")
        atomic_write_text(out, json.dumps(results, indent=1))
        print(f"wrote {out}")
        return
    for name in args.models.split(","):
        path = REPO_ROOT / "checkpoints" / name
        eager = InstancePredictor.from_checkpoint(path, runtime="eager")
        served = InstancePredictor.from_checkpoint(path, runtime="auto")
        paths = {
            "eager": lambda p=eager: [p.predict(rgb) for rgb in images],
            "served": lambda p=served: [p.predict(rgb) for rgb in images],
        }
        runs = [time_interleaved(paths, rounds=3, warmup=1, budget_s=300) for _ in range(args.repeats)]
        eager_ms = statistics.median(r["eager"] for r in runs) / len(images)
        served_ms = statistics.median(r["served"] for r in runs) / len(images)
        ratio = statistics.median(r["eager"] / r["served"] for r in runs)
        totals["eager"] += eager_ms
        totals["served"] += served_ms
        results["models"][name] = {
            "backend": served.backend,
            "eager_ms_per_image": round(eager_ms, 1),
            "served_ms_per_image": round(served_ms, 1),
            "ratio": round(ratio, 2),
        }
        print(
            f"{name}: eager fp32 {eager_ms:7.0f} ms/image, {served.backend} {served_ms:7.0f} ms/image ({ratio:.2f}x)",
            flush=True,
        )
    results["total_ms_per_image"] = {k: round(v, 1) for k, v in totals.items()}
    print(f"all models: eager {totals['eager']:.0f} ms/image, served {totals['served']:.0f} ms/image")
    if "dwt" in args.models.split(","):
        results["dwt_mirror_pass"] = bench_mirror_batching(images, args.repeats)
    results["load_average_at_end"] = os.getloadavg()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS, json.dumps(results, indent=1))
    print(f"wrote {RESULTS}")


def _batched(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The image and its mirror as one batch of two in one call, averaged."""
    pair = with_mirror(x, True)
    fg, energy = network_heads(model, pair)  # flip=False: the pair runs as one call
    return mirror_mean(fg, True), mirror_mean(energy, True)


def _two_passes(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mirrored test-time pass as a second call (what predict does), averaged."""
    fg, energy = network_heads(model, x)
    fg_mirror, energy_mirror = network_heads(model, x.flip(-1))
    return mirrored_average(fg, fg_mirror), mirrored_average(energy, energy_mirror)


def bench_mirror_batching(images: list, repeats: int) -> dict:
    """DWT network + heads with the mirror in the batch vs as a second forward, eager and served."""
    path = REPO_ROOT / "checkpoints" / "dwt"
    eager = InstancePredictor.from_checkpoint(path, runtime="eager")
    served = InstancePredictor.from_checkpoint(path, runtime="auto")
    batches = [_work_batch(eager.model, rgb, eager.work_height) for rgb in images]
    out: dict = {}
    for label, module in (("eager-fp32", eager.model), (served.backend, served.serving)):
        with torch.inference_mode():
            difference = max(
                float((a - b).abs().max()) for x in batches for a, b in zip(_batched(module, x), _two_passes(module, x))
            )
        paths = {
            "batched": lambda m=module: [_batched(m, x) for x in batches],
            "two_passes": lambda m=module: [_two_passes(m, x) for x in batches],
        }
        runs = [time_interleaved(paths, rounds=3, warmup=1, budget_s=120) for _ in range(repeats)]
        batched = statistics.median(r["batched"] for r in runs) / len(batches)
        two = statistics.median(r["two_passes"] for r in runs) / len(batches)
        ratio = statistics.median(r["two_passes"] / r["batched"] for r in runs)
        out[label] = {
            "batched_ms_per_image": round(batched, 1),
            "two_passes_ms_per_image": round(two, 1),
            "speedup_of_batching": round(ratio, 2),
            "max_abs_difference": difference,
        }
        print(
            f"dwt mirror pass on {label}: batch of 2 {batched:6.0f} ms/image, two forwards {two:6.0f} ms/image "
            f"({ratio:.2f}x); largest difference {difference:.2e}",
            flush=True,
        )
    return out


if __name__ == "__main__":
    main()
