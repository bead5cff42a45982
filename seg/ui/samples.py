"""Pictures a tab can offer: Stanford Background samples (listed once per data root) and generated examples."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from seg.config import REPO_ROOT, dataset_dir
from seg.data.sbd import Sample, list_samples, read_label
from seg.ui.uploads import read_image

log = logging.getLogger("seg.ui")

#: Where generated example images live (made by ``assets/make_examples.py``).
EXAMPLES_DIR = REPO_ROOT / "assets" / "examples"
#: A folder that proves each dataset is present under its root.
_PROBES = {"sbd": "images", "pennfudan": "PNGImages"}

_sample_cache: dict[str, dict[str, Sample]] = {}
_sample_lock = threading.Lock()


def dataset_available(name: str) -> Path | None:
    """The dataset's folder when it is present under the data root, else ``None``."""
    try:
        root = dataset_dir(name)
    except ValueError:
        return None
    return root if (root / _PROBES[name]).is_dir() else None


def example_images(kind: str = "scenes") -> list[str]:
    """Paths of the generated example images (``assets/examples/<kind>-*.png``)."""
    if not EXAMPLES_DIR.is_dir():
        return []
    return [str(p) for p in sorted(EXAMPLES_DIR.glob(f"{kind}-*.png"))]


def sbd_samples() -> dict[str, Sample]:
    """id -> ``Sample`` for Stanford Background under the data root (empty when absent); cached."""
    root = dataset_available("sbd")
    if root is None:
        return {}
    key = str(root)
    with _sample_lock:
        if key not in _sample_cache:
            try:
                _sample_cache[key] = {s.id: s for s in list_samples(root)}
            except (OSError, ValueError) as err:
                log.warning("cannot list Stanford Background at %s: %s", root, err)
                _sample_cache[key] = {}
        return _sample_cache[key]


def sbd_choices(splits: tuple[str, ...] = ("val", "test"), limit: int = 300) -> list[str]:
    """Dataset image ids for a picker, the given splits in order."""
    samples = sbd_samples()
    ids = [i for s in splits for i, smp in samples.items() if smp.split == s]
    return ids[:limit]


def load_sbd_sample(sample_id: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A dataset image (working size) and its class mask (None when unlabelled); ``gr.Error`` if unknown."""
    sample = sbd_samples().get(sample_id) if isinstance(sample_id, str) else None
    if sample is None:
        raise gr.Error("Pick a dataset image from the list.")
    image = read_image(sample.image_path, "dataset image")
    mask = None
    if sample.label_path is not None:
        mask = read_label(sample)
        if mask.shape != image.shape[:2]:
            mask = np.asarray(Image.fromarray(mask).resize((image.shape[1], image.shape[0]), Image.NEAREST))
    return image, mask
