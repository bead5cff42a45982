"""Serving backends per model: latency of every backend against eager fp32 in the same run,
and each backend's agreement with eager fp32 on the val split.

Semantic models at their input size (288x224), batch 1; the DWT at its working height, with
its mirrored pass in the same batch when its card asks for one (as it serves); Mask R-CNN on one val image (backbone and
box head through the backend). Times are medians of interleaved rounds (every backend once per
round, rotating order), repeated ``--repeats`` times; ratios are to eager fp32 of the same
rounds. Agreement: val mIoU and pixel agreement (semantic), val mask AP and instance counts
(instances), the contract ``seg.runtime`` checks before choosing a backend, for the lossy
backends (bf16, int8); every backend's largest output difference to eager on the timed input
is shown as well. ``eager-bf16``
(bf16 autocast) is shown for reference; it is not a serving backend.

    python bench/bench_runtime.py [--models unet,resunet,dwt] [--rounds 15] [--repeats 3] [--no-agreement]

Results: bench/results/runtime.json (exports go to the cache dir, as in serving).
"""

from __future__ import annotations

import _common  # noqa: F401  (first: it imports seg, which sets OpenMP's spin before torch loads)

# isort: split
import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from _common import threads_from_env

from seg.batch_predict import load_predictor
from seg.config import REPO_ROOT
from seg.hardware import cpu_features, runtime_versions
from seg.instances.inference import InstancePredictor
from seg.io import atomic_write_text
from seg.runtime import BACKENDS, EAGER, build_serving, candidate_backends, flatten_tensors, time_interleaved

RESULTS = Path(__file__).resolve().parent / "results" / "runtime.json"


class Bf16Autocast(torch.nn.Module):
    """Eager PyTorch under bf16 autocast (for reference in the table)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = self.model(*args)
        return out.float() if isinstance(out, torch.Tensor) else out


def bench_model(name: str, rounds: int, repeats: int, agreement: bool) -> dict:
    predictor = load_predictor(REPO_ROOT / "checkpoints" / name, EAGER, device="cpu")
    spec = predictor.serving_spec()
    example = spec.example_inputs()[0]
    served = {EAGER: predictor.model}
    skipped = {}
    for backend in candidate_backends("auto"):
        if backend == EAGER:
            continue
        try:
            start = time.perf_counter()
            served[backend] = build_serving(predictor.model, spec, backend)
            print(f"  {name}: {backend} ready in {time.perf_counter() - start:.1f}s", flush=True)
        except Exception as err:  # noqa: BLE001 - report and go on
            skipped[backend] = str(err).splitlines()[0][:200]
    if not getattr(predictor, "detector", False):  # a detector's outputs are not one tensor
        served["eager-bf16"] = Bf16Autocast(predictor.model)
    runs = []
    for _ in range(repeats):
        runs.append(
            time_interleaved({b: (lambda m=m: m(*example)) for b, m in served.items()}, rounds=rounds, budget_s=120)
        )
    table = {}
    for backend in served:
        medians = [r[backend] for r in runs]
        ratios = [r[EAGER] / r[backend] for r in runs]
        table[backend] = {
            "median_ms": round(statistics.median(medians), 2),
            "ratio_to_eager_fp32": round(statistics.median(ratios), 2),
            "ratio_range": [round(min(ratios), 2), round(max(ratios), 2)],
        }
    with torch.inference_mode():
        reference = flatten_tensors(predictor.model(*example))
        for backend, module in served.items():
            outputs = flatten_tensors(module(*example))
            same_shapes = all(a.shape == b.shape for a, b in zip(reference, outputs))
            table[backend]["max_relative_difference"] = (
                float(
                    max(
                        float((a.float() - b.float()).abs().max()) / max(float(a.abs().max()), 1e-6)
                        for a, b in zip(reference, outputs)
                        if a.numel()
                    )
                )
                if same_shapes
                else None
            )
    if agreement:
        for backend, module in served.items():
            if backend == EAGER or backend.endswith("fp32"):
                continue  # fp32 backends reproduce eager (max_relative_difference); the check is for lossy ones
            if backend == "eager-bf16" and isinstance(predictor, InstancePredictor):
                continue  # a reference column only, and a full val pass of the DWT at eager speed
            start = time.perf_counter()
            result = spec.agreement(module)
            if result is not None:
                table[backend]["agreement"] = {
                    "passed": result.passed,
                    **{k: round(v, 5) for k, v in result.metrics.items()},
                }
            print(f"  {name}: {backend} agreement in {time.perf_counter() - start:.0f}s", flush=True)
    return {"input": [list(t.shape) for t in flatten_tensors(list(example))], "backends": table, "skipped": skipped}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="unet,resunet,dwt")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-agreement", action="store_true")
    parser.add_argument("--out", default=str(RESULTS), help="results JSON")
    args = parser.parse_args()
    threads = threads_from_env()
    features = cpu_features()
    print(f"CPU: {features.summary()}")
    print(
        f"AMX: {features.amx}, native bf16: {features.native_bf16}, int8 dot products (VNNI/AMX): "
        f"{features.int8_dot}; threads {threads}"
    )
    print("versions: " + ", ".join(f"{k} {v}" for k, v in runtime_versions().items()))
    results = {
        "cpu": features.summary(),
        "flags": list(features.flags),
        "threads": threads,
        "versions": runtime_versions(),
        "rounds": args.rounds,
        "repeats": args.repeats,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "models": {},
    }
    for name in args.models.split(","):
        print(f"{name}:", flush=True)
        results["models"][name] = bench_model(name, args.rounds, args.repeats, not args.no_agreement)
        rows = results["models"][name]["backends"]
        print(f"{name}: input {results['models'][name]['input']}")
        print(f"  {'backend':<14} {'median':>9} {'ratio':>6} {'range':>12}  agreement")
        for backend in sorted(rows, key=lambda b: (b not in BACKENDS, BACKENDS.index(b) if b in BACKENDS else 0)):
            row = rows[backend]
            agree = row.get("agreement", {})
            text = ", ".join(f"{k} {v}" for k, v in agree.items())
            if row.get("max_relative_difference") is not None:
                text = f"max rel diff {row['max_relative_difference']:.1e}; " + text
            print(
                f"  {backend:<14} {row['median_ms']:7.1f}ms {row['ratio_to_eager_fp32']:5.2f}x "
                f"{str(row['ratio_range']):>12}  {text}",
                flush=True,
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
