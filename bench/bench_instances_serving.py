"""Instance prediction end to end, as the dashboard runs it: ``InstancePredictor.predict`` with the
card's test-time augmentation, eager fp32 against the runtime the calibration chose
(``runtime="auto"``), interleaved over Penn-Fudan val images.

    python bench/bench_instances_serving.py [--models dwt,maskrcnn] [--images 6] [--repeats 2]

Prints the median milliseconds per image and the ratio to eager fp32 in the same rounds, and
the sum over the models (the Instances tab runs both). Results: bench/results/instances_serving.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from _common import threads_from_env

from seg.config import REPO_ROOT, dataset_dir
from seg.hardware import cpu_features, runtime_versions
from seg.instances.data import ids_for_split, load_sample
from seg.instances.inference import InstancePredictor
from seg.io import atomic_write_text
from seg.runtime import time_interleaved

RESULTS = Path(__file__).resolve().parent / "results" / "instances_serving.json"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="dwt,maskrcnn")
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
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
        "models": {},
    }
    totals = {"eager": 0.0, "served": 0.0}
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
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS, json.dumps(results, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
