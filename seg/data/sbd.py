"""Stanford Background Dataset: official layout, course layout, in-memory splits.

Official layout (``iccv09Data/``): ``images/<id>.jpg`` and ``labels/<id>.regions.txt``
(whitespace-separated integer matrix, -1 unknown, 0..7 classes). Other files in
``labels/`` are ignored. Unknown (-1) becomes ``misc`` (class 8), as in the common 9-class version.

Course layout: ``train/``, ``val/``, ``test/`` folders of ``<name>.jpg`` images with
``<name>.png`` class-id labels, plus ``classes.txt``. The folders are the split.

Each image is decoded and resized once; a split is held in memory as uint8 tensors.
Parsed label matrices are cached on disk keyed by the label file's content hash, so
a second start does no text parsing.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from seg.classes import SBD_CLASSES, palette_for
from seg.config import cache_dir
from seg.data.split import split_of
from seg.io import ImageLoadError, load_image, read_label_png

#: Training/evaluation size as (width, height), as in the common 288x224 version.
IMAGE_SIZE: tuple[int, int] = (288, 224)
MISC = 8
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
SPLIT_RULE = (
    "split_of(id): SHA-1 of the image id, first 8 bytes as a fraction h in [0,1); "
    "train if h < 0.8, val if h < 0.9, else test (course layout: the folder is the split)"
)


@dataclass(frozen=True)
class Sample:
    id: str
    image_path: Path
    label_path: Path | None
    split: str
    layout: str  # "official" or "course"


@dataclass
class SegSplit:
    """A split held in memory: images (N,3,H,W) uint8, masks (N,H,W) uint8."""

    images: torch.Tensor
    masks: torch.Tensor
    ids: list[str]
    classes: list[str] = field(default_factory=lambda: list(SBD_CLASSES))
    skipped: list[str] = field(default_factory=list)
    #: the classes' colours when the folder names them (a labeling workspace), else None
    palette: list[tuple[int, int, int]] | None = None

    def __len__(self) -> int:
        return len(self.ids)


#: A colour in ``classes.txt``: ``#rrggbb`` as the line's last word.
_HEX_COLOUR = re.compile(r"#([0-9a-fA-F]{6})")


def detect_layout(root: Path) -> str:
    root = Path(root)
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return "official"
    if any((root / s).is_dir() for s in ("train", "val", "test")):
        return "course"
    raise FileNotFoundError(
        f"{root} is not a Stanford Background folder: expected images/ + labels/ (official) "
        f"or train/ val/ test/ (course layout). Get the data with: python -m seg download sbd"
    )


def parse_class_table(text: str) -> list[tuple[str, tuple[int, int, int] | None]]:
    """``classes.txt`` -> (name, colour or None) per non-empty line (``name`` or ``name #rrggbb``).

    The one reader of the format: training (``read_class_table``, hence a model's card) and labeling
    (``seg.labeling.classes.ClassList.parse``) both use it, so a workspace and its models agree."""
    table: list[tuple[str, tuple[int, int, int] | None]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        parts = line.rsplit(None, 1)
        match = _HEX_COLOUR.fullmatch(parts[1]) if len(parts) == 2 else None
        if match is None:
            table.append((line, None))
            continue
        digits = match.group(1)
        table.append((parts[0], (int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16))))
    return table


def read_class_table(root: Path) -> tuple[list[str], list[tuple[int, int, int]] | None]:
    """Names and colours from ``classes.txt`` of a course-layout folder, else the SBD classes.

    Colours are None when no line has one (the default palette applies); a line without one gets
    the default colour of its id, exactly as a labeling workspace shows it."""
    path = Path(root) / "classes.txt"
    table = parse_class_table(path.read_text(encoding="utf-8")) if path.is_file() else []
    if not table:
        return list(SBD_CLASSES), None
    names = [name for name, _ in table]
    if all(colour is None for _, colour in table):
        return names, None
    defaults = palette_for(len(names))
    return names, [colour if colour is not None else default for (_, colour), default in zip(table, defaults)]


def read_classes(root: Path) -> list[str]:
    """``classes.txt`` of a course-layout folder, else the SBD classes."""
    return read_class_table(root)[0]


def list_samples(root: Path) -> list[Sample]:
    """Every image with its label path and split, sorted by id."""
    root = Path(root)
    layout = detect_layout(root)
    samples: list[Sample] = []
    if layout == "official":
        for image_path in sorted((root / "images").glob("*.jpg")):
            image_id = image_path.stem
            label = root / "labels" / f"{image_id}.regions.txt"
            samples.append(
                Sample(
                    image_id,
                    image_path,
                    label if label.is_file() else None,
                    split_of(image_id, SPLIT_FRACTIONS),
                    layout,
                )
            )
    else:
        for split in ("train", "val", "test"):
            folder = root / split
            if not folder.is_dir():
                continue
            for image_path in sorted(folder.iterdir()):
                if image_path.suffix.lower() not in (".jpg", ".jpeg") or image_path.name.startswith("."):
                    continue
                label = image_path.with_suffix(".png")
                samples.append(Sample(image_path.stem, image_path, label if label.is_file() else None, split, layout))
    return samples


def parse_regions(text: bytes | str) -> np.ndarray:
    """Parse a ``.regions.txt`` matrix (H rows x W columns) to int16."""
    if isinstance(text, str):
        text = text.encode()
    rows = [r for r in text.splitlines() if r.strip()]
    if not rows:
        raise ValueError("empty label file")
    width = len(rows[0].split())
    values = np.array(b" ".join(rows).split(), dtype=np.int16)
    if values.size != width * len(rows):
        raise ValueError(f"ragged label matrix: {values.size} values for {len(rows)} rows x {width} cols")
    return values.reshape(len(rows), width)


def regions_to_classes(regions: np.ndarray) -> np.ndarray:
    """-1 (unknown) and anything out of range become misc (8)."""
    out = regions.astype(np.int16, copy=True)
    out[(out < 0) | (out > 7)] = MISC
    return out.astype(np.uint8)


def _cached_regions(label_path: Path) -> np.ndarray:
    data = label_path.read_bytes()
    key = hashlib.sha1(data).hexdigest()
    cache = cache_dir() / "sbd-labels" / f"{key}.npy"
    if cache.is_file():
        try:
            return np.load(cache, allow_pickle=False)
        except (OSError, ValueError):
            pass  # a torn cache file is simply rebuilt
    labels = regions_to_classes(parse_regions(data))
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{np.random.randint(1 << 30)}.tmp.npy")
    np.save(tmp, labels, allow_pickle=False)
    tmp.replace(cache)
    return labels


def read_label(sample: Sample) -> np.ndarray:
    """The sample's class-id mask at its original size (H,W) uint8."""
    if sample.label_path is None:
        raise FileNotFoundError(f"{sample.id} has no label")
    if sample.layout == "official":
        return _cached_regions(sample.label_path)
    return read_label_png(sample.label_path)


def resize_pair(
    image: np.ndarray, mask: np.ndarray | None, size: tuple[int, int] = IMAGE_SIZE
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize to ``size`` (W,H): bilinear for the image, nearest for the mask."""
    img = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    if mask is None:
        return img, None
    return img, np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))


def load_semantic_split(
    root: Path, split: str = "train", size: tuple[int, int] = IMAGE_SIZE, limit: int | None = None
) -> SegSplit:
    """Decode and resize every labelled image of ``split`` ("all" = every one) once."""
    if split not in ("train", "val", "test", "all"):
        raise ValueError(f"split must be train, val, test or all, got {split!r}")
    samples = [s for s in list_samples(root) if split == "all" or s.split == split]
    if limit is not None:
        samples = samples[:limit]
    w, h = size
    classes, palette = read_class_table(root)
    num_classes = len(classes)
    images, masks, ids, skipped = [], [], [], []
    for sample in samples:
        try:
            image = load_image(sample.image_path, max_side=None)
            mask = read_label(sample)
            if mask.shape != image.shape[:2]:
                raise ValueError(f"label is {mask.shape[1]}x{mask.shape[0]}, image {image.shape[1]}x{image.shape[0]}")
            if int(mask.max(initial=0)) >= num_classes:
                raise ValueError(f"label has class id {int(mask.max())}, but there are only {num_classes} classes")
        except (ImageLoadError, OSError, ValueError) as err:
            skipped.append(f"{sample.id}: {err}")
            continue
        image, mask = resize_pair(image, mask, size)
        images.append(torch.from_numpy(np.array(image)).permute(2, 0, 1))
        masks.append(torch.from_numpy(np.array(mask)))
        ids.append(sample.id)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable sample(s) in {root}: " + "; ".join(skipped[:5]), stacklevel=2)
    if not ids:
        raise FileNotFoundError(f"no labelled images for split {split!r} in {root}")
    return SegSplit(
        images=torch.stack(images).contiguous(),
        masks=torch.stack(masks).contiguous(),
        ids=ids,
        classes=classes,
        skipped=skipped,
        palette=palette,
    )


def class_frequencies(masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Fraction of pixels of each class over a stack of masks."""
    counts = torch.bincount(masks.reshape(-1).long(), minlength=num_classes)[:num_classes].double()
    return counts / counts.sum().clamp(min=1)


def fingerprint(root: Path) -> str:
    """A cheap identity of a dataset folder: hash of file names and sizes."""
    digest = hashlib.sha1()
    for sample in list_samples(root):
        for p in (sample.image_path, sample.label_path):
            if p is not None:
                digest.update(f"{p.name}:{p.stat().st_size};".encode())
    return digest.hexdigest()[:16]
