"""Penn-Fudan pedestrians in the official layout, as instance-id maps.

``PNGImages/<id>.png`` + ``PedMasks/<id>_mask.png`` (8-bit, 0 background, 1..N one id
per pedestrian). Everything downstream works on one ``InstanceSample``: the image and
its instance-id map; per-instance masks, boxes and the foreground are derived from the
map so they can never disagree. Images are brought to a fixed *working height*
(pedestrians fill most of the frame in this dataset, so height fixes their scale).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from seg.data.split import split_of
from seg.instances.targets import instance_distance
from seg.io import load_image

#: Penn-Fudan's split fractions (train, val, test), by the shared hash rule.
SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
#: Working height in pixels: the median Penn-Fudan image (486x381) becomes ~288x224.
WORK_HEIGHT = 224
IMAGE_DIR, MASK_DIR = "PNGImages", "PedMasks"


@dataclass
class InstanceSample:
    """One image with its instance ids (0 background, 1..N pedestrians)."""

    id: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    instances: np.ndarray  # (H, W) int32
    distance: np.ndarray | None = field(default=None, repr=False)  # (H, W) float32 px to the instance boundary

    @property
    def num_instances(self) -> int:
        return int(self.instances.max(initial=0))

    @property
    def foreground(self) -> np.ndarray:
        return self.instances > 0

    def masks(self) -> np.ndarray:
        """(N, H, W) bool, one mask per instance id 1..N."""
        ids = np.arange(1, self.num_instances + 1)
        return self.instances[None] == ids[:, None, None]

    def boxes(self) -> np.ndarray:
        """(N, 4) float32 xyxy boxes derived from the masks (x2, y2 exclusive)."""
        return boxes_from_ids(self.instances)


def boxes_from_ids(instances: np.ndarray) -> np.ndarray:
    """Tight xyxy boxes of ids 1..max (exclusive max corner); empty ids give a zero box."""
    n = int(instances.max(initial=0))
    boxes = np.zeros((n, 4), dtype=np.float32)
    if n == 0:
        return boxes
    ys, xs = np.nonzero(instances)
    ids = instances[ys, xs] - 1
    big = np.iinfo(np.int64).max
    x1 = np.full(n, big)
    y1 = np.full(n, big)
    x2 = np.full(n, -1)
    y2 = np.full(n, -1)
    np.minimum.at(x1, ids, xs)
    np.minimum.at(y1, ids, ys)
    np.maximum.at(x2, ids, xs)
    np.maximum.at(y2, ids, ys)
    present = x2 >= 0
    boxes[present] = np.stack([x1, y1, x2 + 1, y2 + 1], axis=1)[present]
    return boxes


def relabel_sequential(instances: np.ndarray, min_area: int = 1) -> np.ndarray:
    """Renumber ids to 1..M in order of first appearance, dropping ids smaller than ``min_area``."""
    counts = np.bincount(instances.ravel())
    keep = np.nonzero(counts >= max(min_area, 1))[0]
    keep = keep[keep > 0]
    table = np.zeros(len(counts), dtype=np.int32)
    table[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
    return table[instances]


def list_ids(root: Path) -> list[str]:
    """Ids that have both an image and a mask, sorted; a missing mask drops the image."""
    root = Path(root)
    image_dir = root / IMAGE_DIR
    if not image_dir.is_dir() or not (root / MASK_DIR).is_dir():
        raise FileNotFoundError(
            f"{root} is not a Penn-Fudan folder (expected {IMAGE_DIR}/ and {MASK_DIR}/); "
            "set SEG_DATA_DIR or pass --data"
        )
    return sorted(p.stem for p in image_dir.glob("*.png") if (root / MASK_DIR / f"{p.stem}_mask.png").is_file())


def ids_for_split(root: Path, split: str) -> list[str]:
    """``split`` in train|val|test|all, by the shared hash rule on the image id."""
    ids = list_ids(root)
    if split == "all":
        return ids
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val, test or all, got {split!r}")
    return [i for i in ids if split_of(i, SPLIT_FRACTIONS) == split]


def read_instance_mask(path: Path) -> np.ndarray:
    """Instance ids from a PedMasks PNG (mode L or P), as int32."""
    with Image.open(path) as img:
        if img.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(f"{Path(path).name}: instance mask must be an id image, got mode {img.mode}")
        return np.asarray(img).astype(np.int32)


def load_sample(root: Path, image_id: str) -> InstanceSample:
    """One image at its original size (ids renumbered 1..N in case of gaps)."""
    root = Path(root)
    image = load_image(root / IMAGE_DIR / f"{image_id}.png", max_side=None)
    instances = relabel_sequential(read_instance_mask(root / MASK_DIR / f"{image_id}_mask.png"))
    if instances.shape != image.shape[:2]:
        raise ValueError(f"{image_id}: mask {instances.shape} does not match image {image.shape[:2]}")
    return InstanceSample(image_id, image, instances)


def work_size(height: int, width: int, work_height: int = WORK_HEIGHT) -> tuple[int, int]:
    """(h, w) at the working height, aspect kept."""
    return work_height, max(1, round(width * work_height / height))


def resize_sample(sample: InstanceSample, size: tuple[int, int]) -> InstanceSample:
    """Image bilinear, ids nearest (so ids stay ids), distance nearest and rescaled."""
    h, w = size
    old_h = sample.image.shape[0]
    image = np.array(Image.fromarray(sample.image).resize((w, h), Image.BILINEAR))
    instances = np.asarray(Image.fromarray(sample.instances).resize((w, h), Image.NEAREST)).astype(np.int32)
    distance = None
    if sample.distance is not None:
        distance = np.asarray(Image.fromarray(sample.distance).resize((w, h), Image.NEAREST)) * (h / old_h)
        distance = np.where(instances > 0, distance, 0).astype(np.float32)
    return InstanceSample(sample.id, image, relabel_sequential(instances), distance)


def load_instance_split(
    root: Path, split: str = "train", work_height: int | None = WORK_HEIGHT, limit: int | None = None
) -> list[InstanceSample]:
    """Samples of one split (the first ``limit`` ids), resized to the working height (None: original sizes)."""
    return load_instance_samples(root, ids_for_split(root, split)[:limit], work_height)


def load_instance_samples(root: Path, ids: list[str], work_height: int | None = WORK_HEIGHT) -> list[InstanceSample]:
    """These images' samples, resized to the working height (None: original sizes)."""
    samples = []
    for image_id in ids:
        sample = load_sample(root, image_id)
        if work_height:
            sample = resize_sample(sample, work_size(*sample.instances.shape, work_height))
        samples.append(sample)
    return samples


@dataclass
class InstanceAugment:
    """Paired flip / scale / crop that keeps ids, distance and image aligned.

    Instances left with fewer than ``min_area`` pixels after the crop are dropped (set to
    background) so a sliver at the crop edge is not asked to be a pedestrian.
    """

    size: tuple[int, int] = (224, 224)  # output (H, W); smaller results are zero-padded
    scale: tuple[float, float] = (0.8, 1.25)
    flip_p: float = 0.5
    min_area: int = 40
    color_jitter: float = 0.2  # brightness/contrast/per-channel gain spread; 0 turns it off

    def __call__(self, sample: InstanceSample, rng: np.random.Generator) -> InstanceSample:
        h, w = sample.instances.shape
        s = float(rng.uniform(*self.scale))
        if abs(s - 1.0) > 1e-3:
            sample = resize_sample(sample, (max(1, round(h * s)), max(1, round(w * s))))
        image, instances, distance = sample.image, sample.instances, sample.distance
        if rng.random() < self.flip_p:
            image, instances = image[:, ::-1], instances[:, ::-1]
            distance = distance[:, ::-1] if distance is not None else None
        out_h, out_w = self.size
        h, w = instances.shape
        y0 = int(rng.integers(0, h - out_h + 1)) if h > out_h else 0
        x0 = int(rng.integers(0, w - out_w + 1)) if w > out_w else 0
        crop = (slice(y0, y0 + out_h), slice(x0, x0 + out_w))
        new_image = np.zeros((out_h, out_w, 3), np.uint8)
        new_ids = np.zeros((out_h, out_w), np.int32)
        ch, cw = min(h, out_h), min(w, out_w)
        new_image[:ch, :cw] = image[crop]
        new_ids[:ch, :cw] = instances[crop]
        if self.color_jitter > 0:
            new_image[:ch, :cw] = _jitter(new_image[:ch, :cw], self.color_jitter, rng)
        new_ids = relabel_sequential(new_ids, self.min_area)
        new_distance = None
        if distance is not None:
            new_distance = np.zeros((out_h, out_w), np.float32)
            new_distance[:ch, :cw] = distance[crop]
            new_distance[new_ids == 0] = 0
        return InstanceSample(sample.id, new_image, new_ids, new_distance)


def _jitter(image: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast and per-channel gain (photometric only: ids are untouched)."""
    img = image.astype(np.float32)
    gain = rng.uniform(1 - amount, 1 + amount) * rng.uniform(1 - amount / 2, 1 + amount / 2, size=3)
    mean = img.mean()
    contrast = rng.uniform(1 - amount, 1 + amount)
    img = (img - mean) * contrast + mean
    return np.clip(img * gain, 0, 255).astype(np.uint8)


def paste_instances(
    target: InstanceSample,
    source: InstanceSample,
    rng: np.random.Generator,
    min_area: int = 40,
    shrink: float = 1.0,
) -> InstanceSample:
    """Simple Copy-Paste (Ghiasi et al., CVPR 2021): some of ``source``'s pedestrians pasted over ``target``.

    Both samples are already augmented crops of the same size. A random non-empty half of the
    source's pedestrians is pasted, without blending. With ``shrink`` below 1 they are scaled
    by a random factor in [shrink, 1] and placed at a random spot, so the model meets small
    pedestrians it rarely sees (Penn-Fudan's are mostly near the camera); otherwise they keep
    their place. Target pedestrians they cover lose those pixels (and are dropped under
    ``min_area``); their distance to the boundary is cut where the new occluder begins, so the
    DWT's energy stays exact.
    """
    count = source.num_instances
    if count == 0 or source.instances.shape != target.instances.shape:
        return target
    chosen = np.nonzero(rng.random(count) < 0.5)[0] + 1
    if len(chosen) == 0:
        chosen = np.array([int(rng.integers(1, count + 1))])
    if shrink < 1.0:
        source = _shrunk_layer(source, chosen, float(rng.uniform(shrink, 1.0)), rng, min_area)
        pasted = source.instances > 0
        if not pasted.any():
            return target
    else:
        pasted = np.isin(source.instances, chosen)
    image = target.image.copy()
    image[pasted] = source.image[pasted]
    instances = target.instances.copy()
    instances[pasted] = source.instances[pasted] + target.num_instances  # ids stay apart from the target's
    instances = relabel_sequential(instances, min_area)
    distance = None
    if target.distance is not None and source.distance is not None:
        # px to the nearest pasted pixel, minus 1 like instance_distance: a pixel next to an occluder gets 0
        to_pasted = ndi.distance_transform_edt(~pasted).astype(np.float32) - 1.0
        distance = np.where(pasted, source.distance, np.minimum(target.distance, to_pasted)).astype(np.float32)
        distance[instances == 0] = 0
    return InstanceSample(target.id, image, instances, distance)


def _shrunk_layer(
    source: InstanceSample, chosen: np.ndarray, scale: float, rng: np.random.Generator, min_area: int
) -> InstanceSample:
    """The ``chosen`` pedestrians of ``source`` scaled by ``scale``, at a random spot of a canvas of the
    source's size; their distances recomputed on the scaled ids (exact, not resampled)."""
    h, w = source.instances.shape
    ids = np.where(np.isin(source.instances, chosen), source.instances, 0)
    rows, cols = np.nonzero(ids.any(axis=1))[0], np.nonzero(ids.any(axis=0))[0]
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    bh, bw = ids[box].shape
    size = (max(1, round(bh * scale)), max(1, round(bw * scale)))
    small = resize_sample(InstanceSample(source.id, source.image[box], ids[box]), size)
    small_ids = relabel_sequential(small.instances, min_area)
    y0, x0 = int(rng.integers(0, h - size[0] + 1)), int(rng.integers(0, w - size[1] + 1))
    place = (slice(y0, y0 + size[0]), slice(x0, x0 + size[1]))
    image, instances = np.zeros_like(source.image), np.zeros((h, w), np.int32)
    image[place], instances[place] = small.image, small_ids
    distance = instance_distance(instances) if source.distance is not None else None
    return InstanceSample(source.id, image, instances, distance)
