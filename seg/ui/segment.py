"""Segment tab: one image through several models side by side.

Inference runs once per click; the opacity slider and the class highlight only re-blend
the cached label maps (kept in per-session state), so they respond instantly.
The ``segment`` API endpoint (one image, one model) is what ``gradio_client`` and the
bench call.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import gradio as gr
import numpy as np
import plotly.graph_objects as go

from seg.classes import SBD_CLASSES, SBD_PALETTE
from seg.modelstore import ModelStore
from seg.render import card_classes, class_shares, overlay, thumbnail
from seg.ui.messages import missing_dataset_md, no_models_md
from seg.ui.pickers import get_predictor, watch
from seg.ui.queues import INFERENCE_QUEUE, inference_concurrency
from seg.ui.samples import dataset_available, example_images, load_sbd_sample, sbd_choices
from seg.ui.scratch import label_png
from seg.ui.style import TOP_LEGEND, legend_html
from seg.ui.uploads import read_image

NO_HIGHLIGHT = "(all classes)"


def run_model(store: ModelStore, image: np.ndarray, name: str) -> dict:
    """Predict with one model; returns what the views need (label map, classes, palette, timings)."""
    predictor = get_predictor(store, name)
    start = time.perf_counter()
    try:
        pred = predictor.predict(image)
    except (RuntimeError, ValueError, MemoryError) as err:
        raise gr.Error(f"{name} failed on this image: {err}") from None
    total_ms = (time.perf_counter() - start) * 1000
    classes, palette = card_classes(store.card(name))
    classes = list(getattr(predictor, "classes", None) or classes)
    palette = [tuple(c) for c in (getattr(predictor, "palette", None) or palette)]
    label = np.asarray(pred.label, dtype=np.uint8)
    return {
        "name": name,
        "label": label,
        "classes": classes,
        "palette": palette,
        "latency_ms": float(getattr(pred, "latency_ms", total_ms)),
        "total_ms": total_ms,
        "shares": class_shares(label, len(classes)),
    }


def _gallery(image: np.ndarray, results: list[dict], alpha: float, highlight: str | None) -> list:
    items = []
    for r in results:
        hl = r["classes"].index(highlight) if highlight in r["classes"] else None
        items.append(
            (
                thumbnail(overlay(image, r["label"], r["palette"], alpha, hl), 640),
                f"{r['name']} · {r['latency_ms']:.0f} ms",
            )
        )
    return items


def shares_figure(results: list[dict]) -> go.Figure:
    """Grouped bars: each class's share of the image, one colour per model."""
    fig = go.Figure()
    for r in results:
        fig.add_bar(name=r["name"], x=r["classes"], y=(r["shares"] * 100).round(2))
    fig.update_layout(
        barmode="group",
        height=300,
        margin={"l": 40, "r": 10, "t": 60, "b": 40},
        yaxis_title="% of pixels",
        title="Class shares",
        legend=TOP_LEGEND,
    )
    return fig


def _table(results: list[dict]) -> list[list[Any]]:
    rows = []
    for r in results:
        top = np.argsort(r["shares"])[::-1][:3]
        rows.append(
            [
                r["name"],
                round(r["latency_ms"], 1),
                round(r["total_ms"], 1),
                ", ".join(f"{r['classes'][i]} {r['shares'][i] * 100:.0f}%" for i in top if r["shares"][i] > 0),
            ]
        )
    return rows


def _highlight(h: str | None) -> str | None:
    return None if h in (None, "", NO_HIGHLIGHT) else h


def segment_compare(
    store: ModelStore, image: Any, models: list[str] | str | None, alpha: float = 0.5, highlight: str | None = None
):
    """API ``segment_compare`` and the tab's main action: every chosen model on the image."""
    image_src, highlight = image, _highlight(highlight)
    models = [models] if isinstance(models, str) else list(models or [])
    if not models:
        raise gr.Error("Choose at least one model.")
    image = read_image(image_src)
    results = [run_model(store, image, name) for name in models]
    files = [label_png(r["label"], r["palette"], f"{r['name']}-label") for r in results]
    first = results[0]
    state = {"image": image, "results": results}
    return (
        _gallery(image, results, alpha, highlight),
        legend_html(first["classes"], first["palette"]),
        shares_figure(results),
        _table(results),
        files,
        state,
    )


def segment_one(store: ModelStore, image: Any, model: str):
    """API endpoint ``segment``: the label PNG (pixel value = class id) and a summary dict.

    Kept lean for programmatic clients (one file to download); the overlay views are the
    tab's ``segment_compare``.
    """
    image = read_image(image)
    r = run_model(store, image, (model or "").strip())
    info = {
        "model": r["name"],
        "latency_ms": round(r["latency_ms"], 2),
        "height": int(image.shape[0]),
        "width": int(image.shape[1]),
        "classes": r["classes"],
        "palette": [list(c) for c in r["palette"]],
        "shares": {c: round(float(s), 5) for c, s in zip(r["classes"], r["shares"])},
    }
    return label_png(r["label"], r["palette"], f"{r['name']}-label"), info


def rerender(state: dict | None, alpha: float, highlight: str | None):
    """Re-blend cached results when opacity or highlight change (no inference)."""
    if not state:
        return gr.skip()
    return _gallery(state["image"], state["results"], alpha, _highlight(highlight))


def build(store: ModelStore) -> None:
    """Components and events of the Segment tab (inside the current ``gr.Tab``)."""
    names = store.names("semantic")
    with gr.Row():
        with gr.Column(scale=2):
            image = gr.Image(
                type="filepath",
                label="Image (upload, paste or pick an example)",
                sources=["upload", "clipboard"],
                height=320,
                elem_id="segment-image",
            )
            examples = example_images("scenes") + example_images("pedestrians")
            if examples:
                gr.Examples(examples, inputs=image, label="Generated examples", examples_per_page=8)
            if dataset_available("sbd"):
                pick = gr.Dropdown(
                    sbd_choices(),
                    label="…or a Stanford Background image (val/test)",
                    value=None,
                    allow_custom_value=False,
                )
                pick.change(
                    lambda i: load_sbd_sample(i)[0] if i else gr.skip(),
                    pick,
                    image,
                    api_visibility="private",
                    concurrency_id=INFERENCE_QUEUE,
                )
            else:
                gr.Markdown(missing_dataset_md("sbd", "Picking dataset images"))
            models = watch(
                store,
                gr.Dropdown(
                    names, value=store.best("semantic", 2), multiselect=True, label="Models", elem_id="segment-models"
                ),
                "semantic",
                multiselect=True,
            )
            if not names:
                gr.Markdown(no_models_md(store, "semantic"))
            elif store.unavailable():
                gr.Markdown(store.describe())
            alpha = gr.Slider(0, 1, value=0.5, step=0.05, label="Overlay opacity")
            highlight = gr.Radio([NO_HIGHLIGHT] + list(SBD_CLASSES), value=NO_HIGHLIGHT, label="Highlight a class")
            run = gr.Button("Segment", variant="primary", elem_id="segment-run")
        with gr.Column(scale=3):
            gallery = gr.Gallery(
                label="Overlays", columns=2, height=420, object_fit="contain", elem_id="segment-gallery"
            )
            legend = gr.HTML(legend_html(list(SBD_CLASSES), list(SBD_PALETTE)))
            shares = gr.Plot(label="Class shares")
            table = gr.Dataframe(
                headers=["model", "model ms", "total ms", "largest classes"],
                label="Latency and largest classes",
                interactive=False,
            )
            files = gr.File(label="Label PNGs (pixel value = class id)", file_count="multiple")
    state = gr.State(None)

    # Hidden single-model endpoint for gradio_client and the bench.
    with gr.Row(visible=False):
        api_model = gr.Textbox(label="model")
        api_label = gr.File(label="label")
        api_info = gr.JSON(label="info")
        api_button = gr.Button("segment (API)")

    run.click(
        partial(segment_compare, store),
        [image, models, alpha, highlight],
        [gallery, legend, shares, table, files, state],
        api_name="segment_compare",
        concurrency_id=INFERENCE_QUEUE,
        concurrency_limit=inference_concurrency(),
        preprocess=False,
    )
    api_button.click(
        partial(segment_one, store),
        [image, api_model],
        [api_label, api_info],
        api_name="segment",
        concurrency_id=INFERENCE_QUEUE,
        preprocess=False,
    )
    for trigger in (alpha.release, highlight.change):
        trigger(
            rerender,
            [state, alpha, highlight],
            gallery,
            api_visibility="private",
            show_progress="hidden",
            concurrency_limit=None,
        )
