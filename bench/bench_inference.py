"""The semantic serving path end to end, and model latency beside a peer.

1. ``Predictor.predict`` on an upload (default 1024x768, a real val image enlarged): the
   earlier path (softmax over the full-size map, then ``argmax``; eager fp32) against the
   current one on eager fp32 and on the runtime the calibration chose (``runtime="auto"``),
   interleaved, with ratios to the earlier path measured in the same rounds.
2. Model latency at 288x224, batch 1, eager fp32, beside segmentation_models_pytorch's
   ``Unet('resnet18', encoder_weights=None)`` as a peer (skipped when smp is absent).

    python bench/bench_inference.py [--models unet,resunet,cnn] [--size 1024x768] [--rounds 15]

Threads: $BENCH_THREADS (default 2). Results: bench/results/inference.json.
"""

from __future__ import annotations

import _common  # noqa: F401  (first: it imports seg, which sets OpenMP's spin before torch loads)

# isort: split
import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import sbd_dir_or_exit, threads_from_env
from PIL import Image

from seg.config import REPO_ROOT
from seg.hardware import cpu_features, runtime_versions
from seg.inference import Predictor
from seg.io import atomic_write_text
from seg.runtime import time_interleaved

RESULTS = Path(__file__).resolve().parent / "results" / "inference.json"


def earlier_predict(predictor: Predictor, image: np.ndarray) -> np.ndarray:
    """The predict path before labels came from ``max(0).indices`` over the logits."""
    h, w = image.shape[:2]
    x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).unsqueeze(0).float().div_(255)
    tw, th = predictor.input_size
    x = F.interpolate(x, size=(th, tw), mode="bilinear", align_corners=False, antialias=True)
    with torch.inference_mode():
        logits = predictor.model(x.contiguous(memory_format=torch.channels_last)).float()
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        probs = logits.softmax(1)[0]
        label = probs.argmax(0).to(torch.uint8)
    return label.numpy()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="unet,resunet,cnn")
    parser.add_argument("--size", default="1024x768", help="upload size WxH")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    threads = threads_from_env()
    features = cpu_features()
    print(f"CPU: {features.summary()}; threads {threads}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in runtime_versions().items()))
    w, h = (int(v) for v in args.size.split("x"))
    source = sorted((sbd_dir_or_exit() / "images").glob("*.jpg"))[0]
    upload = np.asarray(Image.open(source).convert("RGB").resize((w, h), Image.BILINEAR))
    results: dict = {
        "cpu": features.summary(),
        "flags": list(features.flags),
        "threads": threads,
        "versions": runtime_versions(),
        "upload": [w, h],
        "rounds": args.rounds,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "end_to_end": {},
        "model_only": {},
    }
    print(f"\n1. Predictor.predict on a {w}x{h} upload (median ms; ratio to the earlier path, same rounds)")
    for name in args.models.split(","):
        eager = Predictor.from_checkpoint(REPO_ROOT / "checkpoints" / name, device="cpu", runtime="eager")
        served = Predictor.from_checkpoint(REPO_ROOT / "checkpoints" / name, device="cpu", runtime="auto")
        same = float((earlier_predict(eager, upload) == served.predict(upload).label).mean())
        assert np.array_equal(earlier_predict(eager, upload), eager.predict(upload).label)
        paths = {
            "earlier (eager, argmax)": lambda e=eager: earlier_predict(e, upload),
            "now, eager fp32": lambda e=eager: e.predict(upload),
            f"now, {served.backend}": lambda s=served: s.predict(upload),
        }
        runs = [time_interleaved(paths, rounds=args.rounds, budget_s=60) for _ in range(args.repeats)]
        rows = {}
        for label in paths:
            ratios = [r["earlier (eager, argmax)"] / r[label] for r in runs]
            rows[label] = {
                "median_ms": round(statistics.median(r[label] for r in runs), 1),
                "ratio_to_earlier": round(statistics.median(ratios), 2),
            }
        results["end_to_end"][name] = {
            "paths": rows,
            "backend": served.backend,
            "label_agreement_with_earlier": round(same, 5),
        }
        print(f"{name} (served by {served.backend}; {same:.2%} of labels equal to the earlier path's)")
        for label, row in rows.items():
            print(f"  {label:<28} {row['median_ms']:8.1f} ms  {row['ratio_to_earlier']:5.2f}x")
    print("\n2. model only, eager fp32, 1x3x224x288 (median ms)")
    x = torch.rand(1, 3, 224, 288).contiguous(memory_format=torch.channels_last)
    models = {
        name: Predictor.from_checkpoint(REPO_ROOT / "checkpoints" / name, device="cpu").model
        for name in args.models.split(",")
    }
    try:
        import segmentation_models_pytorch as smp

        models["smp Unet(resnet18) [peer]"] = (
            smp.Unet("resnet18", encoder_weights=None, classes=9).eval().to(memory_format=torch.channels_last)
        )
    except ImportError:
        print("segmentation_models_pytorch not installed: no peer")
    timings = time_interleaved({n: (lambda m=m: m(x)) for n, m in models.items()}, rounds=args.rounds)
    peer = next((v for k, v in timings.items() if "peer" in k), None)
    for name, ms in timings.items():
        params = sum(p.numel() for p in models[name].parameters()) / 1e6
        ratio = f"  {ms / peer:4.2f}x the peer's time" if peer and "peer" not in name else ""
        results["model_only"][name] = {
            "median_ms": round(ms, 2),
            "params_m": round(params, 2),
            "time_vs_peer": round(ms / peer, 2) if peer else None,
        }
        print(f"  {name:<28} {params:6.2f}M {ms:8.1f} ms{ratio}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS, json.dumps(results, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
