"""Augment tab: what the training-time crop and flip do to an image and its mask.

It calls the core's ``seg.transforms.augment_samples`` (the same transform training
uses); with an uploaded image, the mask comes from a chosen model. The grid follows the
controls: sliders on release, the seed as it is typed, the image and model when chosen.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from functools import partial
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from seg.classes import SBD_CLASSES, SBD_PALETTE
from seg.modelstore import ModelStore
from seg.render import card_classes, hstack, overlay, thumbnail
from seg.transforms import augment_samples
from seg.ui.api import ModelChoice
from seg.ui.messages import missing_dataset_md
from seg.ui.pickers import get_predictor, watch
from seg.ui.queues import INFERENCE_QUEUE
from seg.ui.samples import dataset_available, example_images, load_sbd_sample, sbd_choices
from seg.ui.style import legend_html
from seg.ui.uploads import read_image

log = logging.getLogger("seg.ui")

SOURCES = ("dataset image", "upload")
#: Augmentation works on a display-sized copy: the grid is for looking, not training.
AUGMENT_MAX_SIDE = 384
#: Seeds the random generator tells apart: torch's CPU generator keeps the low 32 bits of a seed,
#: so larger (or negative) seeds are hashed into this range instead of being cut (2**32 would equal 0).
SEED_RANGE = 2**32
MAX_SAMPLES = 16


def seed_value(seed: Any) -> int:
    """Any whole number (however large or negative) -> a seed in ``0 .. 2**32 - 1``: the same number gives
    the same grid, and different large numbers give different grids (they are hashed, not truncated)."""
    if seed is None or (isinstance(seed, str) and not seed.strip()):
        return 0
    try:
        number = int(seed) if isinstance(seed, (int, str)) else float(seed)
    except (TypeError, ValueError):
        raise gr.Error("The seed must be a whole number.") from None
    if isinstance(number, float):
        if not math.isfinite(number):
            raise gr.Error("The seed must be a whole number.")
        number = int(number)
    if 0 <= number < SEED_RANGE:
        return number
    digest = hashlib.blake2b(str(number).encode("ascii"), digest_size=4).digest()
    return int.from_bytes(digest, "big")


def _pair_tile(image: np.ndarray, mask: np.ndarray, palette) -> np.ndarray:
    """Image and its colourised mask side by side, with a 4-pixel white gap."""
    return hstack([image, overlay(image, mask, palette, alpha=0.85)])


def source_pair(
    store: ModelStore, source: str, sample_id: str | None, upload: Any, model: str | None
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int]], str]:
    """The (image, mask, palette, description) to augment, from the dataset or an upload + model."""
    if source == "upload" or (upload and not sample_id):
        image = thumbnail(read_image(upload), AUGMENT_MAX_SIDE)
        predictor = get_predictor(store, model, task="semantic")
        try:
            mask = np.asarray(predictor.predict(image).label, dtype=np.uint8)
        except (RuntimeError, ValueError):
            raise gr.Error(f"{model} could not segment this image; try another image or model.") from None
        _, palette = card_classes(store.card(model))
        return image, mask, palette, f"upload, mask predicted by {model}"
    if not sample_id:
        raise gr.Error("Pick a dataset image, or switch the source to upload.")
    if dataset_available("sbd") is None:
        raise gr.Error(
            "Dataset images need the Stanford Background dataset, which is not installed here; "
            "switch the source to upload."
        )
    image, mask = load_sbd_sample(sample_id)
    if mask is None:
        raise gr.Error(f"{sample_id} has no label file.")
    h, w = image.shape[:2]
    image = thumbnail(image, AUGMENT_MAX_SIDE)
    if image.shape[:2] != (h, w):
        mask = np.asarray(Image.fromarray(mask).resize((image.shape[1], image.shape[0]), Image.NEAREST))
    return image, mask, list(SBD_PALETTE), f"dataset image {sample_id}, ground-truth mask"


def augment(
    store: ModelStore,
    source: str = SOURCES[0],
    sample_id: str | None = None,
    upload: Any = None,
    model: str | None = None,
    crop_fraction: float = 0.25,
    flip_p: float = 0.5,
    seed: float | int | str | None = 0,
    n: float = 8,
):
    """API endpoint ``augment``: the original and ``n`` augmented (image | mask) tiles, and a caption.

    ``upload`` is needed only when ``source`` is "upload" (its mask then comes from ``model``);
    ``seed`` may be any whole number.
    """
    seed_used = seed_value(seed)
    image, mask, palette, what = source_pair(store, source, sample_id, upload, model)
    try:
        count = int(n)
    except (TypeError, ValueError):
        raise gr.Error(f"The number of samples must be a whole number from 1 to {MAX_SAMPLES}.") from None
    try:
        pairs = augment_samples(
            image, mask, crop_fraction=float(crop_fraction), flip_p=float(flip_p), n=count, seed=seed_used
        )
    except ValueError as err:
        raise gr.Error(f"Bad augmentation settings: {err}.") from None
    tiles = [(_pair_tile(img, msk, palette), f"#{i + 1}") for i, (img, msk) in enumerate(pairs)]
    original = (_pair_tile(image, mask, palette), "original")
    seed_text = str(seed_used)
    if seed is not None and str(seed).strip() and _as_text(seed) != seed_text:
        seed_text = f"{_as_text(seed)} (used as {seed_used})"
    caption = (
        f"{len(pairs)} samples of {what}; crop {float(crop_fraction):.2f} of the area, "
        f"flip p={float(flip_p):.2f}, seed {seed_text}"
    )
    return [original] + tiles, caption


def _as_text(seed: Any) -> str:
    """A seed as people typed it: 3.0 reads "3"."""
    if isinstance(seed, float) and math.isfinite(seed) and seed.is_integer():
        return str(int(seed))
    return str(seed).strip()


def _request_key(*inputs: Any) -> str:
    """What a grid depends on (an upload by its server path, which names its content)."""
    return repr([i.get("path") or i.get("url") if isinstance(i, dict) else i for i in inputs])


def augment_live(
    store: ModelStore, source: str, sample_id: str | None, upload: Any, model: str | None, *settings_and_last
):
    """The grid's automatic refresh: quietly waits while the chosen source has no image yet, and skips a
    request identical to the grid shown (the browser can report one change twice)."""
    *settings, last = settings_and_last
    if (source == "upload" and not upload) or (source != "upload" and not sample_id and not upload):
        return gr.skip(), gr.skip(), gr.skip()
    key = _request_key(source, sample_id, upload, model, *settings)
    if key == last:
        return gr.skip(), gr.skip(), gr.skip()
    return (*augment(store, source, sample_id, upload, model, *settings), key)


def on_upload(store: ModelStore, sample_id: str | None, upload: Any, model: str | None, *settings_and_last):
    """A new upload (or example) switches the source to it and refreshes the grid in one step."""
    *settings, last = settings_and_last
    if not upload:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    key = _request_key(SOURCES[1], sample_id, upload, model, *settings)
    if key == last:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    return (SOURCES[1], *augment(store, SOURCES[1], sample_id, upload, model, *settings), key)


class InitialGrid:
    """The default dataset image's grid, drawn when a page loads rather than while the app starts.

    Augmenting imports torchvision, which pulls in ``torch._dynamo`` (seconds on a small CPU); the
    first ``/segment`` answer needs neither. The grid is drawn once, on the first page load (under
    a lock: two pages may load together), and reused by later ones.
    """

    def __init__(self, store: ModelStore, sample_id: str) -> None:
        self._store, self._sample_id = store, sample_id
        self._lock = threading.Lock()
        self._grid: tuple[list | None, str] | None = None

    def __call__(self, last: Any = None):
        """``(grid, caption)``; nothing when a grid made from the visitor's own choices is already shown."""
        if last is not None:
            return gr.skip(), gr.skip()
        with self._lock:
            if self._grid is None:
                try:
                    self._grid = augment(self._store, SOURCES[0], self._sample_id)
                except (gr.Error, OSError, ValueError) as err:  # a missing file must not stop the page
                    log.warning("no initial augmentation grid: %s", err)
                    self._grid = (None, "")
            return self._grid


def build(store: ModelStore) -> list[dict[str, Any]]:
    """Components and events of the Augment tab; returns its page-load event (``Blocks.load`` arguments)."""
    has_data = dataset_available("sbd") is not None
    names = store.names("semantic")
    default_sample = (sbd_choices(("train",), 1) or [None])[0] if has_data else None
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=300):
            source = gr.Radio(list(SOURCES), value=SOURCES[0] if has_data else SOURCES[1], label="Source")
            if has_data:
                sample = gr.Dropdown(
                    sbd_choices(("train", "val", "test")),
                    label="Dataset image",
                    value=default_sample,
                    elem_id="augment-sample",
                )
            else:
                gr.Markdown(missing_dataset_md("sbd", "Augmenting dataset images with their true masks"))
                sample = gr.Dropdown([], label="Dataset image", value=None, visible=False)
            upload = gr.Image(
                type="filepath",
                label="Upload (its mask comes from the model below)",
                sources=["upload", "clipboard"],
                height=200,
                elem_id="augment-upload",
            )
            examples = example_images("scenes")
            if examples:
                gr.Examples(examples, inputs=upload, label="Generated examples")
            model = watch(
                store,
                ModelChoice(names, value=(store.best("semantic", 1) or [None])[0], label="Model for the upload's mask"),
                "semantic",
            )
            crop = gr.Slider(
                0.05, 1.0, value=0.25, step=0.05, label="Crop fraction (of the area)", elem_id="augment-crop"
            )
            flip = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Flip probability", elem_id="augment-flip")
            with gr.Row():
                seed = gr.Number(0, precision=0, label="Seed (any whole number)", elem_id="augment-seed")
                count = gr.Slider(1, MAX_SAMPLES, value=8, step=1, label="Samples", elem_id="augment-count")
            run = gr.Button("Augment again", variant="secondary", elem_id="augment-run")
        with gr.Column(scale=3):
            caption = gr.Markdown("", label="Caption", elem_id="augment-caption")
            grid = gr.Gallery(
                None,
                label="Image | mask pairs",
                columns=2,
                height="auto",
                object_fit="contain",
                format="jpeg",  # previews: ~20x faster to encode than webp, which live updates need
                elem_id="augment-gallery",
                elem_classes="seg-row-gallery",
            )
            gr.HTML(legend_html(list(SBD_CLASSES), list(SBD_PALETTE)))
    settings = [crop, flip, seed, count]
    last = gr.State(None)  # what the grid shown was made from
    live = {
        "api_visibility": "private",
        "concurrency_id": INFERENCE_QUEUE,
        "trigger_mode": "always_last",
        "preprocess": False,
    }
    gr.on(
        [source.input, sample.input, model.input, crop.release, flip.release, count.release, seed.input],
        partial(augment_live, store),
        [source, sample, upload, model, *settings, last],
        [grid, caption, last],
        **live,
    )
    upload.change(
        partial(on_upload, store), [sample, upload, model, *settings, last], [source, grid, caption, last], **live
    )
    run.click(
        partial(augment, store),
        [source, sample, upload, model, *settings],
        [grid, caption],
        api_name="augment",
        concurrency_id=INFERENCE_QUEUE,
        preprocess=False,
    )
    if not default_sample:
        return []
    # the default image's grid, drawn on page load (not while the app starts: see InitialGrid), in a
    # queue of its own: a visitor's first segmentation does not wait behind it
    first = InitialGrid(store, default_sample)
    return [{"fn": first, "inputs": [last], "outputs": [grid, caption]}]
