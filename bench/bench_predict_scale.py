"""Predict at scale vs one by one, on a folder of images made for the run.

The folder (default 500 images) is made in a temporary directory from Stanford Background
images, cropped and resized to sizes between 320x240 and 1024x768 (never kept). Compared in
alternating runs, each writing a fresh output folder:

- one by one, as ``predict`` did: decode, ``Predictor.predict`` on eager fp32 with the
  earlier label path (softmax + argmax over the full-size map), write the PNG, next image;
- ``seg.batch_predict.predict_inputs``: decoding workers, batches on the runtime the
  calibration chose, background writing.

Images/s of each and their ratio (same run) go to bench/results/predict_scale.json.

    python bench/bench_predict_scale.py [--images 500] [--repeats 2] [--batch-size 8] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import sbd_dir_or_exit, threads_from_env
from bench_inference import earlier_predict
from PIL import Image

from seg.batch_predict import load_predictor, predict_inputs
from seg.config import REPO_ROOT
from seg.hardware import cpu_features, runtime_versions
from seg.inference import Predictor
from seg.io import atomic_write_text, iter_images, save_label_png

RESULTS = Path(__file__).resolve().parent / "results" / "predict_scale.json"


def make_folder(folder: Path, count: int) -> None:
    """``count`` JPEGs cropped and resized from the dataset's images, sizes 320x240 .. 1024x768."""
    sources = sorted((sbd_dir_or_exit() / "images").glob("*.jpg"))
    rng = np.random.default_rng(0)
    for i in range(count):
        with Image.open(sources[i % len(sources)]) as img:
            rgb = img.convert("RGB")
        w, h = rgb.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        scale = rng.uniform(1.0, 3.2)
        size = (min(1024, int(320 * scale)), min(768, int(240 * scale)))
        rgb.crop((x, y, x + cw, y + ch)).resize(size, Image.BILINEAR).save(folder / f"img{i:04d}.jpg", quality=90)


def one_by_one(predictor: Predictor, folder: Path, out: Path) -> float:
    """Images/s of the earlier one-image-at-a-time loop."""
    start = time.perf_counter()
    failures: list[str] = []
    paths = sorted(str(p) for p in folder.glob("*.jpg"))
    for path, image in iter_images(paths, failures):
        save_label_png(out / f"{Path(path).stem}.png", earlier_predict(predictor, image), predictor.palette)
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", default=str(REPO_ROOT / "checkpoints" / "unet"))
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    threads = threads_from_env()
    features = cpu_features()
    print(f"CPU: {features.summary()}; threads {threads}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in runtime_versions().items()))
    eager = Predictor.from_checkpoint(args.checkpoint, device="cpu", runtime="eager")
    served = load_predictor(args.checkpoint, "auto")
    with tempfile.TemporaryDirectory(prefix="seg-bench-predict-") as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        make_folder(folder, args.images)
        print(f"{args.images} images in a temporary folder; at scale on {served.backend}, batch {args.batch_size}")
        runs: dict[str, list[float]] = {"one by one (earlier)": [], "at scale": []}
        for r in range(args.repeats):
            for name in list(runs) if r % 2 == 0 else list(runs)[::-1]:
                out = Path(tmp) / f"out-{r}-{len(runs[name])}-{name[:2]}"
                out.mkdir()
                if name == "at scale":
                    report = predict_inputs(
                        args.checkpoint,
                        [folder],
                        out,
                        batch_size=args.batch_size,
                        workers=args.workers,
                        predictor=served,
                        progress=False,
                        rank=0,
                        world=1,
                    )
                    assert len(report.written) == args.images and not report.failures, report.summary()
                    speed = len(report.written) / report.seconds
                else:
                    speed = one_by_one(eager, folder, out)
                runs[name].append(speed)
                print(f"  run {r + 1}: {name:<22} {speed:7.1f} images/s", flush=True)
                shutil.rmtree(out)
    ratios = [b / a for a, b in zip(runs["one by one (earlier)"], runs["at scale"])]
    result = {
        "cpu": features.summary(),
        "threads": threads,
        "versions": runtime_versions(),
        "images": args.images,
        "batch_size": args.batch_size,
        "backend": served.backend,
        "images_per_s": {k: [round(v, 2) for v in vs] for k, vs in runs.items()},
        "ratio": round(statistics.median(ratios), 2),
        "ratio_per_run": [round(r, 2) for r in ratios],
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    print(f"at scale / one by one: {result['ratio']:.2f}x (per run: {result['ratio_per_run']})")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS, json.dumps(result, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
