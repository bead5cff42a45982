"""Inference latency per model at 288x224, batch 1, on $BENCH_THREADS threads (default 2), beside
segmentation_models_pytorch's ``Unet('resnet18', encoder_weights=None)`` as a peer.

    python bench/bench_inference.py [--repeats 30]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from _common import p, threads_from_env, time_calls
from seg.checkpoints import list_checkpoints, load_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    threads = threads_from_env()
    x = torch.rand(1, 3, 224, 288).contiguous(memory_format=torch.channels_last)
    models: dict[str, torch.nn.Module] = {}
    for info in list_checkpoints():
        if info.available and (info.card or {}).get("task", "semantic") == "semantic":
            models[info.name], _ = load_checkpoint(info.path)
    try:
        import segmentation_models_pytorch as smp

        models["smp Unet(resnet18) [peer]"] = smp.Unet("resnet18", encoder_weights=None, classes=9).eval()
    except ImportError:
        print("segmentation_models_pytorch not installed: no peer")
    print(f"threads={threads}, input 1x3x224x288, {args.repeats} timed runs each (ms)")
    print(f"{'model':<28} {'params':>8} {'p50':>8} {'p95':>8}")
    results = {}
    for name, model in models.items():
        model = model.eval().to(memory_format=torch.channels_last)
        with torch.inference_mode():
            times = [t * 1000 for t in time_calls(lambda: model(x), args.repeats, warmup=3)]
        params = sum(q.numel() for q in model.parameters()) / 1e6
        results[name] = float(np.median(times))
        print(f"{name:<28} {params:7.2f}M {np.median(times):8.1f} {p(times, 95):8.1f}")
    peer = next((v for k, v in results.items() if "peer" in k), None)
    if peer:
        for name, value in results.items():
            if "peer" not in name:
                print(f"ratio {name} / peer: {value / peer:.2f}")


if __name__ == "__main__":
    main()
