"""Training throughput: the project's loop vs a naive loop on the same model and crops, and
bf16 autocast vs fp32 on this CPU.

Project loop: the split decoded and resized once into uint8 tensors, labels parsed once
(cached), augmentation on uint8 tensors, channels_last, the project's AdamW (``seg.optim``,
PyTorch's fused kernel). Naive loop: a torch Dataset that decodes the JPEG and parses the
``.regions.txt`` with ``np.loadtxt`` for every item, float NCHW tensors, a DataLoader, no
caching, PyTorch's default AdamW. Same model (U-Net, 16 base channels), same crop/flip
augmentation and training size, same optimiser settings. The three loops run in rotating
order ``--repeats`` times; images/s are medians and ratios come from the same rounds.

The bf16 line is what ``seg.hardware.bf16_training_pays()`` decides from: AMX present, or
bf16 autocast measured faster than fp32 by ``BF16_MIN_SPEEDUP``.

    python bench/bench_train_throughput.py [--images 256] [--train-size 144x112] [--repeats 3] [--out FILE]

Each loop is one epoch over ``--images`` training images. With 64 (four steps) the ratio spread from 2.6x to
3.1x between runs on one CPU; with 256 it varied by under 0.1 (docs/experiments.md, "Speed").

Results: bench/results/train_throughput.json.
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
from _common import sbd_dir_or_exit, threads_from_env
from PIL import Image

from seg.data.sbd import IMAGE_SIZE, list_samples, load_semantic_split, regions_to_classes
from seg.hardware import BF16_MIN_SPEEDUP, bf16_training_pays, cpu_features, runtime_versions
from seg.io import atomic_write_text
from seg.losses import weighted_cross_entropy
from seg.models import create
from seg.optim import adamw
from seg.semantic_task import SemanticTask
from seg.train_config import SemanticOptions
from seg.transforms import JointAugment

RESULTS = Path(__file__).resolve().parent / "results" / "train_throughput.json"


class NaiveDataset(torch.utils.data.Dataset):
    def __init__(self, samples, augment: JointAugment) -> None:
        self.samples, self.augment = samples, augment

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        s = self.samples[i]
        image = Image.open(s.image_path).convert("RGB").resize(IMAGE_SIZE, Image.BILINEAR)
        label = regions_to_classes(np.loadtxt(s.label_path, dtype=np.int16))
        label = Image.fromarray(label).resize(IMAGE_SIZE, Image.NEAREST)
        img = torch.from_numpy(np.array(image)).permute(2, 0, 1)
        img, mask = self.augment(img, torch.from_numpy(np.array(label)))
        return img.float() / 255, mask.long()


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create("unet", base_channels=16)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--train-size", default="144x112")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS), help="results JSON")
    args = parser.parse_args()
    threads = threads_from_env()
    root = sbd_dir_or_exit()
    features = cpu_features()
    print(f"CPU: {features.summary()}; threads {threads}")
    print(f"AMX: {features.amx}, native bf16: {features.native_bf16}; torch {torch.__version__}")
    w, h = (int(v) for v in args.train_size.split("x"))
    options = SemanticOptions(crop_fraction=(0.15, 0.45), train_size=(w, h), color_jitter=0.0)
    samples = [s for s in list_samples(root) if s.split == "train"][: args.images]
    naive_data = NaiveDataset(samples, JointAugment((0.15, 0.45), 0.5, size=(h, w)))
    start = time.perf_counter()
    train = load_semantic_split(root, "train", limit=args.images)
    load_s = time.perf_counter() - start
    task = SemanticTask(train, train, options, None, batch_size=args.batch_size)
    device = torch.device("cpu")

    def naive_loop() -> float:
        loader = torch.utils.data.DataLoader(naive_data, batch_size=args.batch_size, shuffle=True, num_workers=0)
        model = make_model()
        opt = torch.optim.AdamW(model.parameters(), 1e-3)
        start, seen = time.perf_counter(), 0
        for images, masks in loader:
            loss = weighted_cross_entropy(model(images), masks)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(images)
        return seen / (time.perf_counter() - start)

    def project_loop(bf16: bool) -> float:
        model = make_model().to(memory_format=torch.channels_last)
        opt = adamw(model.parameters(), 1e-3)
        start, seen = time.perf_counter(), 0
        for batch in task.train_batches(1):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = task.train_step(model, batch, device)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(batch[0])
        return seen / (time.perf_counter() - start)

    loops = {
        "naive": naive_loop,
        "project fp32": lambda: project_loop(False),
        "project bf16 autocast": lambda: project_loop(True),
    }
    project_loop(False)  # warm-up: first-call kernel setup is not throughput
    runs: dict[str, list[float]] = {name: [] for name in loops}
    for r in range(args.repeats):
        names = list(loops)
        for name in names[r % 3 :] + names[: r % 3]:
            runs[name].append(loops[name]())
            print(f"  round {r + 1}: {name:<22} {runs[name][-1]:6.1f} images/s", flush=True)
    naive = runs["naive"]
    ratios = {name: statistics.median(v / n for v, n in zip(values, naive)) for name, values in runs.items()}
    bf16_vs_fp32 = statistics.median(b / f for b, f in zip(runs["project bf16 autocast"], runs["project fp32"]))
    print(
        f"threads={threads} images={len(train)} train_size={w}x{h} batch={args.batch_size} "
        f"(split load {load_s:.1f}s once, not per epoch)"
    )
    for name, values in runs.items():
        print(f"{name:<24}: {statistics.median(values):7.1f} images/s  ratio to naive {ratios[name]:5.2f}x")
    decision = bf16_training_pays()
    print(
        f"bf16 autocast / fp32 (project loop, same rounds): {bf16_vs_fp32:.2f}x; "
        f"seg.hardware.bf16_training_pays() -> {decision} (AMX, or measured >= {BF16_MIN_SPEEDUP}x)"
    )
    result = {
        "cpu": features.summary(),
        "flags": list(features.flags),
        "threads": threads,
        "versions": runtime_versions(),
        "images": len(train),
        "train_size": [w, h],
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "images_per_s": {k: [round(v, 2) for v in vs] for k, vs in runs.items()},
        "ratio_to_naive": {k: round(v, 2) for k, v in ratios.items()},
        "bf16_vs_fp32": round(bf16_vs_fp32, 2),
        "bf16_training_pays": decision,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
