"""Training throughput: the project's loop vs a naive loop on the same model and crops.

Project loop: the split decoded and resized once into uint8 tensors, labels parsed once
(cached), augmentation on uint8 tensors, channels_last. Naive loop: a torch Dataset that
decodes the JPEG and parses the ``.regions.txt`` with ``np.loadtxt`` for every item,
float NCHW tensors, a DataLoader, no caching. Same model (U-Net, 16 base channels), same
crop/flip augmentation and training size, same optimiser. Prints images/second and the
ratios for the project loop in fp32 and with ``--precision bf16`` (bfloat16 autocast,
on CPUs with native bf16) (target: >= 2x).

    python bench/bench_train_throughput.py [--images 96] [--train-size 144x112]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

from _common import sbd_dir_or_exit, threads_from_env
from seg.data.sbd import IMAGE_SIZE, list_samples, load_semantic_split, regions_to_classes
from seg.losses import weighted_cross_entropy
from seg.models import create
from seg.engine import cpu_supports_bf16, resolve_precision
from seg.train_semantic import SemanticTask, SemanticTrainConfig
from seg.transforms import JointAugment


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--train-size", default="144x112")
    args = parser.parse_args()
    threads = threads_from_env()
    root = sbd_dir_or_exit()
    w, h = (int(v) for v in args.train_size.split("x"))
    config = SemanticTrainConfig(batch_size=args.batch_size, crop_fraction=(0.15, 0.45), train_size=(w, h),
                                 color_jitter=0.0)

    def make_model():
        torch.manual_seed(0)
        return create("unet", base_channels=16)

    # naive
    samples = [s for s in list_samples(root) if s.split == "train"][: args.images]
    loader = torch.utils.data.DataLoader(NaiveDataset(samples, JointAugment((0.15, 0.45), 0.5, size=(h, w))),
                                         batch_size=args.batch_size, shuffle=True, num_workers=0)
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    start = time.perf_counter()
    seen = 0
    for images, masks in loader:
        loss = weighted_cross_entropy(model(images), masks)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(images)
    naive = seen / (time.perf_counter() - start)

    # project: the split is loaded into memory once (timed separately), then the engine's step
    start = time.perf_counter()
    train = load_semantic_split(root, "train", limit=args.images)
    load_s = time.perf_counter() - start
    task = SemanticTask(train, train, config, None)
    device = torch.device("cpu")

    def project_loop(precision: str) -> float:
        dtype = resolve_precision(precision, device)
        model = make_model().to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), 1e-3)
        start = time.perf_counter()
        seen = 0
        for batch in task.train_batches(1):
            with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = task.train_step(model, batch, device)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(batch[0])
        return seen / (time.perf_counter() - start)

    fp32 = project_loop("fp32")
    print(f"threads={threads} images={len(train)} train_size={w}x{h} batch={args.batch_size}")
    print(f"naive loop                  : {naive:7.1f} images/s")
    print(f"project loop, fp32          : {fp32:7.1f} images/s  ratio {fp32 / naive:5.2f}x "
          f"(split load {load_s:.1f}s once, not per epoch)")
    if cpu_supports_bf16():
        bf16 = project_loop("bf16")
        print(f"project loop, --precision bf16: {bf16:7.1f} images/s  ratio {bf16 / naive:5.2f}x  (target >= 2x)")
    else:
        print("this CPU has no native bf16: the fp32 ratio is the project's best here (target >= 2x)")


if __name__ == "__main__":
    main()
