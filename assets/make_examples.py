"""Draw the dashboard's example images: synthetic outdoor scenes and pedestrians.

The examples must be the project's own (no dataset pixels are ever shipped), so they
are drawn here with PIL from a fixed seed. Run ``python assets/make_examples.py``;
the output is deterministic and written atomically.
"""

from __future__ import annotations

import io
import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

OUT = Path(__file__).resolve().parent / "examples"
SIZE = (320, 240)  # the Stanford Background images' usual size (width, height)


def _atomic_png(img: Image.Image, path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from seg.io import atomic_write_bytes

    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    atomic_write_bytes(path, buf.getvalue())
    path.chmod(0o644)  # mkstemp creates 0600; examples are public files


def _noise(img: Image.Image, rng: random.Random, amount: int = 12) -> Image.Image:
    """Light per-pixel noise so the scenes have texture like photographs."""
    px = img.load()
    w, h = img.size
    for _ in range(w * h // 3):
        x, y = rng.randrange(w), rng.randrange(h)
        r, g, b = px[x, y]
        d = rng.randint(-amount, amount)
        px[x, y] = (max(0, min(255, r + d)), max(0, min(255, g + d)), max(0, min(255, b + d)))
    return img


def scene(seed: int) -> Image.Image:
    """Sky, mountains, a tree line, grass or water, a road, a building and a figure."""
    rng = random.Random(seed)
    w, h = SIZE
    img = Image.new("RGB", SIZE)
    d = ImageDraw.Draw(img)
    horizon = rng.randint(int(h * 0.35), int(h * 0.55))
    for y in range(horizon):  # sky gradient
        t = y / max(1, horizon)
        d.line([(0, y), (w, y)], fill=(int(90 + 80 * t), int(150 + 60 * t), int(230 + 20 * t)))
    if rng.random() < 0.7:  # mountains
        pts = [(0, horizon)]
        for x in range(0, w + 40, 40):
            pts.append((x, horizon - rng.randint(15, 70)))
        pts.append((w, horizon))
        d.polygon(pts, fill=(120 + rng.randint(-15, 15), 105, 90))
    ground = (70 + rng.randint(-10, 10), 160 + rng.randint(-20, 20), 60) if rng.random() < 0.6 else (40, 110, 170)
    d.rectangle([0, horizon, w, h], fill=ground)
    for _ in range(rng.randint(4, 9)):  # trees
        x = rng.randint(0, w)
        r = rng.randint(12, 28)
        d.rectangle([x - 2, horizon - 5, x + 2, horizon + 10], fill=(90, 60, 30))
        d.ellipse([x - r, horizon - 2 * r, x + r, horizon], fill=(30, 110 + rng.randint(-20, 20), 40))
    if rng.random() < 0.8:  # road (perspective trapezoid)
        cx = rng.randint(w // 3, 2 * w // 3)
        d.polygon([(cx - 8, horizon), (cx + 8, horizon), (cx + 120, h), (cx - 120, h)], fill=(105, 100, 105))
    if rng.random() < 0.7:  # building with windows
        bx = rng.randint(0, w - 90)
        top = horizon - rng.randint(40, 90)
        d.rectangle([bx, top, bx + 80, horizon + 20], fill=(190, 100, 70))
        for wy in range(top + 8, horizon + 10, 18):
            for wx in range(bx + 8, bx + 72, 20):
                d.rectangle([wx, wy, wx + 9, wy + 10], fill=(60, 70, 90))
    if rng.random() < 0.6:  # a person-like foreground figure
        px_ = rng.randint(30, w - 30)
        base = rng.randint(horizon + 30, h - 5)
        d.rectangle([px_ - 7, base - 45, px_ + 7, base], fill=(200, 40, 40))
        d.ellipse([px_ - 6, base - 58, px_ + 6, base - 45], fill=(230, 190, 160))
    return _noise(img.filter(ImageFilter.GaussianBlur(0.6)), rng)


def pedestrians(seed: int) -> Image.Image:
    """A street with a few standing figures, for the instance tab."""
    rng = random.Random(1000 + seed)
    w, h = 360, 300
    img = Image.new("RGB", (w, h), (150, 150, 145))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 0, w, 120], fill=(170, 160, 150))  # wall
    d.rectangle([0, 220, w, h], fill=(95, 95, 100))  # pavement
    for _ in range(rng.randint(2, 4)):
        x = rng.randint(30, w - 30)
        s = rng.uniform(0.8, 1.2)
        top = int(60 + rng.randint(0, 40))
        bottom = int(top + 170 * s)
        col = tuple(rng.randint(20, 200) for _ in range(3))
        d.ellipse([x - 11, top, x + 11, top + 24], fill=(220, 180, 150))
        d.rectangle([x - 18, top + 24, x + 18, top + 24 + int(80 * s)], fill=col)
        d.rectangle([x - 15, top + 24 + int(80 * s), x - 3, bottom], fill=(40, 40, 70))
        d.rectangle([x + 3, top + 24 + int(80 * s), x + 15, bottom], fill=(40, 40, 70))
    return _noise(img.filter(ImageFilter.GaussianBlur(0.6)), rng, 8)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        _atomic_png(scene(i), OUT / f"scenes-{i + 1}.png")
    for i in range(2):
        _atomic_png(pedestrians(i), OUT / f"pedestrians-{i + 1}.png")
    print(f"wrote examples to {OUT}")


if __name__ == "__main__":
    main()
