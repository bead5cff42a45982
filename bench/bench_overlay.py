"""Overlays: ``seg.render`` (OpenCV) vs a plain numpy blend vs torchvision's drawing utilities.

Two pictures the dashboard draws, timed in the same run:

- semantic: a Stanford Background image and its class mask scaled to 1024x768 (the dashboard's
  working size), blended at opacity 0.5;
- instances: Penn-Fudan ``FudanPed00001`` with its ground-truth instances, boxes and scores.

Prints the median time of each and the ratios to ``seg.render``, and the largest pixel
difference of the semantic blends (they compute the same blend). ``--out DIR`` writes the
pictures as PNGs to look at side by side.

    python bench/bench_overlay.py [--repeats 20] [--out /tmp/overlays]
"""

from __future__ import annotations

import _common  # noqa: F401  (first: it imports seg, which sets OpenMP's spin before torch loads)

# isort: split
import argparse
import statistics
from pathlib import Path

import cv2
import numpy as np
import torch
from _common import sbd_dir_or_exit, threads_from_env, time_calls
from PIL import Image, ImageDraw
from scipy import ndimage as ndi
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from seg.classes import SBD_PALETTE, colorize
from seg.config import dataset_dir
from seg.data.sbd import list_samples, read_label
from seg.instances.data import boxes_from_ids, load_sample
from seg.io import load_image
from seg.render import draw_instances, instance_colours, overlay

SIZE = (1024, 768)
ALPHA = 0.5
INSTANCE_ALPHA = 0.45


# -- references ----------------------------------------------------------------------------------
def numpy_overlay(image: np.ndarray, label: np.ndarray, palette, alpha: float) -> np.ndarray:
    """The float32 numpy blend (what a hand-written overlay does)."""
    colours = colorize(label, palette).astype(np.float32)
    out = image.astype(np.float32) * (1 - alpha) + colours * alpha
    return np.clip(out, 0, 255).astype(np.uint8)


def torchvision_overlay(image: np.ndarray, label: np.ndarray, palette, alpha: float) -> np.ndarray:
    """``draw_segmentation_masks`` with one boolean mask per class."""
    x = torch.from_numpy(image).permute(2, 0, 1)
    masks = torch.from_numpy(label)[None] == torch.arange(len(palette))[:, None, None]
    out = draw_segmentation_masks(x, masks, alpha=alpha, colors=[tuple(c) for c in palette])
    return out.permute(1, 2, 0).numpy()


def numpy_pil_instances(image: np.ndarray, ids: np.ndarray, boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Fill and inner contour in numpy (binary erosion), boxes and labels with PIL."""
    n = int(ids.max(initial=0))
    colours = instance_colours(n)
    out = image.astype(np.float32).copy()
    for k in range(1, n + 1):
        mask = ids == k
        out[mask] = out[mask] * (1 - INSTANCE_ALPHA) + colours[k - 1] * INSTANCE_ALPHA
        out[mask & ~ndi.binary_erosion(mask, iterations=2)] = colours[k - 1]
    pil = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for k, (x1, y1, x2, y2) in enumerate(boxes[:n].tolist()):
        colour = tuple(int(c) for c in colours[k])
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], outline=colour, width=2)
        text = f"{k + 1} {scores[k]:.2f}"
        draw.rectangle([x1, max(0, y1 - 12), x1 + 7 * len(text), max(0, y1 - 12) + 12], fill=colour)
        draw.text((x1 + 1, max(0, y1 - 12)), text, fill=(0, 0, 0))
    return np.asarray(pil)


def torchvision_instances(image: np.ndarray, ids: np.ndarray, boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``draw_segmentation_masks`` + ``draw_bounding_boxes`` with labels (no contours: it has none)."""
    n = int(ids.max(initial=0))
    colours = [tuple(int(v) for v in c) for c in instance_colours(n)]
    x = torch.from_numpy(image).permute(2, 0, 1)
    masks = torch.from_numpy(ids)[None] == torch.arange(1, n + 1)[:, None, None]
    x = draw_segmentation_masks(x, masks, alpha=INSTANCE_ALPHA, colors=colours)
    labels = [f"{k + 1} {scores[k]:.2f}" for k in range(n)]
    x = draw_bounding_boxes(x, torch.from_numpy(boxes[:n]).float(), labels=labels, colors=colours, width=2)
    return x.permute(1, 2, 0).numpy()


# -- the run -------------------------------------------------------------------------------------
def _median_ms(fn, repeats: int) -> float:
    return statistics.median(time_calls(fn, repeats)) * 1000


def _report(title: str, timings: dict[str, float]) -> None:
    ours = timings["seg.render (OpenCV)"]
    print(f"\n{title}")
    for name, ms in timings.items():
        print(f"  {name:<34} {ms:8.2f} ms   {ms / ours:5.2f}x the time of seg.render")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, help="write the pictures here as PNGs")
    args = parser.parse_args()
    threads = threads_from_env(1)
    cv2.setNumThreads(threads)

    sample = next(s for s in list_samples(sbd_dir_or_exit()) if s.label_path is not None)
    image = np.array(Image.fromarray(load_image(sample.image_path)).resize(SIZE, Image.BILINEAR))  # writable
    label = np.array(Image.fromarray(read_label(sample)).resize(SIZE, Image.NEAREST))
    semantic = {
        "seg.render (OpenCV)": lambda: overlay(image, label, SBD_PALETTE, ALPHA),
        "numpy float blend": lambda: numpy_overlay(image, label, SBD_PALETTE, ALPHA),
        "torchvision draw_segmentation_masks": lambda: torchvision_overlay(image, label, SBD_PALETTE, ALPHA),
    }
    print(f"{threads} thread(s); semantic: {sample.id} at {SIZE[0]}x{SIZE[1]}, {len(np.unique(label))} classes")
    _report("semantic overlay", {name: _median_ms(fn, args.repeats) for name, fn in semantic.items()})
    pictures = {name: fn() for name, fn in semantic.items()}
    reference = pictures["numpy float blend"].astype(int)
    for name, picture in pictures.items():
        if name == "numpy float blend":
            continue
        print(f"  max |{name} - numpy float blend| = {np.abs(picture.astype(int) - reference).max()} grey levels")

    root = dataset_dir("pennfudan")
    if not (root / "PNGImages").is_dir():
        print(f"\nPenn-Fudan not found at {root}: instance overlay skipped")
        instance_pictures = {}
    else:
        ped = load_sample(root, "FudanPed00001")
        boxes = boxes_from_ids(ped.instances)
        scores = np.linspace(0.99, 0.8, len(boxes))
        instance = {
            "seg.render (OpenCV)": lambda: draw_instances(ped.image, ped.instances, boxes, scores, INSTANCE_ALPHA),
            "numpy + PIL drawing": lambda: numpy_pil_instances(ped.image, ped.instances, boxes, scores),
            "torchvision masks + boxes": lambda: torchvision_instances(ped.image, ped.instances, boxes, scores),
        }
        h, w = ped.image.shape[:2]
        print(f"\ninstances: FudanPed00001, {w}x{h}, {len(boxes)} pedestrians")
        _report("instance overlay", {name: _median_ms(fn, args.repeats) for name, fn in instance.items()})
        instance_pictures = {name: fn() for name, fn in instance.items()}

    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for kind, group in (("semantic", pictures), ("instances", instance_pictures)):
            for name, picture in group.items():
                stem = "opencv" if name.startswith("seg.render") else name.split()[0]
                Image.fromarray(picture).save(args.out / f"{kind}-{stem}.png")
        print(f"\npictures written to {args.out}")


if __name__ == "__main__":
    main()
