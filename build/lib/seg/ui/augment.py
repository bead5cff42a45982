"""Augment tab: what the training-time crop and flip do to an image and its mask.

It calls the core's ``seg.transforms.augment_samples`` (the same transform training
uses); with an uploaded image, the mask comes from a chosen model.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from seg.classes import SBD_CLASSES, SBD_PALETTE
from seg.modelstore import ModelStore
from seg.render import card_classes, hstack, overlay, thumbnail
from seg.transforms import augment_samples
from seg.ui.messages import missing_dataset_md
from seg.ui.pickers import get_predictor, watch
from seg.ui.queues import INFERENCE_QUEUE
from seg.ui.samples import dataset_available, example_images, load_sbd_sample, sbd_choices
from seg.ui.style import legend_html
from seg.ui.uploads import read_image

SOURCES = ("dataset image", "upload")
#: Augmentation works on a display-sized copy: the grid is for looking, not training.
AUGMENT_MAX_SIDE = 384


def _pair_tile(image: np.ndarray, mask: np.ndarray, palette) -> np.ndarray:
    """Image and its colourised mask side by side, with a 4-pixel white gap."""
    return hstack([image, overlay(image, mask, palette, alpha=0.85)])


def source_pair(
    store: ModelStore, source: str, sample_id: str | None, upload: Any, model: str | None
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int]], str]:
    """The (image, mask, palette, description) to augment, from the dataset or an upload + model."""
    if source == "upload" or (upload and not sample_id):
        image = thumbnail(read_image(upload), AUGMENT_MAX_SIDE)
        predictor = get_predictor(store, model)
        try:
            mask = np.asarray(predictor.predict(image).label, dtype=np.uint8)
        except (RuntimeError, ValueError) as err:
            raise gr.Error(f"{model} failed on this image: {err}") from None
        _, palette = card_classes(store.card(model))
        return image, mask, palette, f"upload, mask predicted by {model}"
    if not sample_id:
        raise gr.Error("Pick a dataset image, or switch the source to upload.")
    if dataset_available("sbd") is None:
        raise gr.Error(missing_dataset_md("sbd", "Dataset images"))
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
    source: str,
    sample_id: str | None,
    upload: Any,
    model: str | None,
    crop_fraction: float,
    flip_p: float,
    seed: float,
    n: float,
):
    """API endpoint ``augment``: a gallery of (image | mask) tiles and a caption."""
    image, mask, palette, what = source_pair(store, source, sample_id, upload, model)
    try:
        pairs = augment_samples(
            image, mask, crop_fraction=float(crop_fraction), flip_p=float(flip_p), n=int(n), seed=int(seed)
        )
    except ValueError as err:
        raise gr.Error(f"Bad augmentation settings: {err}") from None
    tiles = [(_pair_tile(img, msk, palette), f"#{i + 1}") for i, (img, msk) in enumerate(pairs)]
    original = (_pair_tile(image, mask, palette), "original")
    caption = (
        f"{len(pairs)} samples of {what}; crop {float(crop_fraction):.2f} of the area, "
        f"flip p={float(flip_p):.2f}, seed {int(seed)}"
    )
    return [original] + tiles, caption


def build(store: ModelStore) -> None:
    """Components and events of the Augment tab."""
    has_data = dataset_available("sbd") is not None
    names = store.names("semantic")
    with gr.Row():
        with gr.Column(scale=2):
            source = gr.Radio(list(SOURCES), value=SOURCES[0] if has_data else SOURCES[1], label="Source")
            if has_data:
                sample = gr.Dropdown(
                    sbd_choices(("train", "val", "test")),
                    label="Dataset image",
                    value=(sbd_choices(("train",), 1) or [None])[0],
                )
            else:
                gr.Markdown(missing_dataset_md("sbd", "Augmenting dataset images with their true masks"))
                sample = gr.Dropdown([], label="Dataset image", value=None, visible=False)
            upload = gr.Image(
                type="filepath",
                label="Upload (its mask comes from the model below)",
                sources=["upload", "clipboard"],
                height=220,
                elem_id="augment-upload",
            )
            examples = example_images("scenes")
            if examples:
                gr.Examples(examples, inputs=upload, label="Generated examples")
            model = watch(
                store,
                gr.Dropdown(names, value=(store.best("semantic", 1) or [None])[0], label="Model for the upload's mask"),
                "semantic",
            )
            crop = gr.Slider(0.05, 1.0, value=0.25, step=0.05, label="Crop fraction (of the area)")
            flip = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Flip probability")
            with gr.Row():
                seed = gr.Number(0, precision=0, label="Seed")
                count = gr.Slider(1, 16, value=8, step=1, label="Samples")
            run = gr.Button("Augment", variant="primary", elem_id="augment-run")
        with gr.Column(scale=3):
            grid = gr.Gallery(
                label="Image | mask pairs", columns=2, height=600, object_fit="contain", elem_id="augment-gallery"
            )
            caption = gr.Markdown()
            gr.HTML(legend_html(list(SBD_CLASSES), list(SBD_PALETTE)))
    upload.upload(lambda: SOURCES[1], None, source, api_visibility="private", queue=False)
    run.click(
        partial(augment, store),
        [source, sample, upload, model, crop, flip, seed, count],
        [grid, caption],
        api_name="augment",
        concurrency_id=INFERENCE_QUEUE,
        preprocess=False,
    )
