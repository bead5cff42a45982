"""Segment tab: one image through up to four models, side by side in one row.

Inference runs when an image arrives (upload, paste, example, dataset pick) and when the
model selection changes; the button re-runs. The opacity slider and the class highlight only
re-blend the cached label maps (kept in per-session state), so they respond at once.
The ``segment`` API endpoint (one image, one model) is what ``gradio_client`` and the bench call.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from functools import partial
from typing import Any

import gradio as gr
import numpy as np
import plotly.graph_objects as go

from seg.classes import SBD_CLASSES, SBD_PALETTE
from seg.modelstore import ModelStore
from seg.render import card_classes, class_shares, overlay, thumbnail
from seg.ui.api import NAMES_HINT, ModelChoice
from seg.ui.messages import missing_dataset_md, no_models_md
from seg.ui.pickers import get_predictor, watch
from seg.ui.queues import INFERENCE_QUEUE, inference_concurrency
from seg.ui.samples import dataset_available, example_images, load_sbd_sample, sbd_choices
from seg.ui.scratch import label_png
from seg.ui.style import TOP_LEGEND, format_ms, legend_html, model_colour, model_table, themed
from seg.ui.uploads import read_image

NO_HIGHLIGHT = "(all classes)"
#: Models compared at once: four overlays still read side by side on a 1400-px window.
MAX_MODELS = 4
#: Longest side of an overlay sent to the browser (a 1400-px row holds four of them).
OVERLAY_SIDE = 640
TABLE_HEADERS = ["model", "latency ms", "median ms", "runs", "largest classes"]
LATENCY_NOTE = (
    "Latency is each model's own time for this image on the server's CPU. Single runs vary with "
    "other work on the server; the median of its recent runs is the steadier figure."
)

#: Recent model latencies per checkpoint in this process (every visitor's runs), for the median.
_recent_ms: dict[str, deque[float]] = {}
_recent_lock = threading.Lock()
RECENT_RUNS = 30


def _record_latency(name: str, ms: float) -> tuple[float, int]:
    """Remember one run of ``name``; returns (median of its recent runs, how many)."""
    with _recent_lock:
        runs = _recent_ms.setdefault(name, deque(maxlen=RECENT_RUNS))
        runs.append(ms)
        return statistics.median(runs), len(runs)


def run_model(store: ModelStore, image: np.ndarray, name: str) -> dict:
    """Predict with one model; returns what the views need (label map, classes, palette, timings)."""
    predictor = get_predictor(store, name)
    start = time.perf_counter()
    try:
        pred = predictor.predict(image)
    except (RuntimeError, ValueError, MemoryError):
        raise gr.Error(f"{name} could not segment this image; try another image or model.") from None
    total_ms = (time.perf_counter() - start) * 1000
    classes, palette = card_classes(store.card(name))
    classes = list(getattr(predictor, "classes", None) or classes)
    palette = [tuple(c) for c in (getattr(predictor, "palette", None) or palette)]
    label = np.asarray(pred.label, dtype=np.uint8)
    latency_ms = float(getattr(pred, "latency_ms", total_ms))
    median_ms, runs = _record_latency(name, latency_ms)
    return {
        "name": name,
        "label": label,
        "classes": classes,
        "palette": palette,
        "latency_ms": latency_ms,
        "total_ms": total_ms,
        "median_ms": median_ms,
        "runs": runs,
        "shares": class_shares(label, len(classes)),
    }


def _caption(r: dict) -> str:
    typical = f" (median {format_ms(r['median_ms'])})" if r.get("runs", 0) > 2 else ""
    return f"{r['name']} · {format_ms(r['latency_ms'])}{typical}"


def _gallery(image: np.ndarray, results: list[dict], alpha: float, highlight: str | None) -> list:
    items = []
    for r in results:
        hl = r["classes"].index(highlight) if highlight in r["classes"] else None
        items.append((thumbnail(overlay(image, r["label"], r["palette"], alpha, hl), OVERLAY_SIDE), _caption(r)))
    return items


def shares_figure(results: list[dict]) -> go.Figure:
    """Grouped bars: each class's share of the image, one colour per model (the app-wide model colour)."""
    fig = go.Figure()
    for r in results:
        fig.add_bar(
            name=r["name"], x=r["classes"], y=(r["shares"] * 100).round(2), marker_color=model_colour(r["name"])
        )
    fig.update_layout(
        barmode="group",
        margin={"l": 40, "r": 10, "t": 60, "b": 40},
        yaxis_title="% of pixels",
        title="Class shares",
        legend=TOP_LEGEND,
    )
    return themed(fig, height=300)


def _table(results: list[dict]) -> Any:
    rows = []
    for r in results:
        top = np.argsort(r["shares"])[::-1][:3]
        rows.append(
            [
                r["name"],
                round(r["latency_ms"], 1),
                round(r["median_ms"], 1),
                r["runs"],
                ", ".join(f"{r['classes'][i]} {r['shares'][i] * 100:.0f}%" for i in top if r["shares"][i] > 0),
            ]
        )
    return model_table(rows, TABLE_HEADERS)


def _highlight(h: str | None) -> str | None:
    return None if h in (None, "", NO_HIGHLIGHT) else h


def _model_list(models: list[str] | str | None) -> list[str]:
    models = [models] if isinstance(models, str) else list(models or [])
    if len(models) > MAX_MODELS:
        raise gr.Error(f"Choose at most {MAX_MODELS} models to compare.")
    return models


def segment_compare(
    store: ModelStore,
    image: Any,
    models: list[str] | str | None = None,
    alpha: float = 0.5,
    highlight: str | None = None,
):
    """API ``segment_compare``: every chosen model (at most four) on the image.

    Returns the overlays (captioned with model and latency), the class colours, the class-share
    plot, the latency table and the label PNGs (pixel value = class id).
    """
    highlight = _highlight(highlight)
    models = _model_list(models)
    if not models:
        raise gr.Error("Choose at least one model.")
    image = read_image(image)
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


def _request_key(image: Any, models: list[str] | str | None) -> str:
    """What an automatic run depends on: the uploaded file (its server path names its content) and the models."""
    where = image.get("path") or image.get("url") if isinstance(image, dict) else image
    return f"{where}|{models}"


def segment_live(
    store: ModelStore,
    image: Any,
    models: list[str] | str | None,
    alpha: float,
    highlight: str | None,
    state: dict | None = None,
):
    """The tab's automatic run (new image, new model choice): nothing to do until both are there, nor
    when the image and models are those of the overlays shown (the browser reports one upload twice)."""
    if image is None or image == "" or not models:
        return (gr.skip(),) * 6
    key = _request_key(image, models)
    if state and state.get("key") == key:
        return (gr.skip(),) * 6
    *views, new_state = segment_compare(store, image, models, alpha, highlight)
    return (*views, {**new_state, "key": key})


def segment_one(store: ModelStore, image: Any, model: str):
    """API endpoint ``segment``: the label PNG (pixel value = class id) and a summary dict.

    Kept lean for programmatic clients (one file to download); the overlay views are
    ``segment_compare``.
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
    with gr.Row(equal_height=False, elem_classes="seg-controls"):
        with gr.Column(scale=3, min_width=280):
            image = gr.Image(
                type="filepath",
                label="Image (upload, paste or pick an example)",
                sources=["upload", "clipboard"],
                height=250,
                elem_id="segment-image",
            )
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
        with gr.Column(scale=3, min_width=280):
            models = watch(
                store,
                ModelChoice(
                    names,
                    value=store.best("semantic", 2),
                    multiselect=True,
                    max_choices=MAX_MODELS,
                    label=f"Models (up to {MAX_MODELS})",
                    elem_id="segment-models",
                ),
                "semantic",
                multiselect=True,
            )
            if not names:
                gr.Markdown(no_models_md(store, "semantic"))
            elif store.unavailable():
                gr.Markdown(store.describe())
            alpha = gr.Slider(0, 1, value=0.5, step=0.05, label="Overlay opacity", elem_id="segment-alpha")
            highlight = gr.Radio([NO_HIGHLIGHT] + list(SBD_CLASSES), value=NO_HIGHLIGHT, label="Highlight a class")
            run = gr.Button("Segment again", variant="secondary", elem_id="segment-run")
        with gr.Column(scale=2, min_width=240):
            examples = example_images("scenes") + example_images("pedestrians")
            if examples:
                gr.Examples(examples, inputs=image, label="Generated examples", examples_per_page=8)
    gallery = gr.Gallery(
        label="Overlays (model · latency)",
        columns=MAX_MODELS,
        height="auto",
        object_fit="contain",
        format="jpeg",  # previews: ~20x faster to encode than webp, which live updates need
        elem_id="segment-gallery",
        elem_classes="seg-row-gallery",
    )
    legend = gr.HTML(legend_html(list(SBD_CLASSES), list(SBD_PALETTE)), label="Class colours")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            shares = gr.Plot(label="Class shares", elem_id="segment-shares")
        with gr.Column(scale=1, min_width=300):
            table = gr.Dataframe(
                headers=TABLE_HEADERS,
                label="Latency and largest classes",
                interactive=False,
                elem_id="segment-table",
            )
            gr.Markdown(LATENCY_NOTE, elem_classes="seg-note")
            files = gr.File(label="Label PNGs (pixel value = class id)", file_count="multiple")
    state = gr.State(None)

    # Hidden single-model endpoint for gradio_client and the bench.
    with gr.Row(visible=False):
        api_model = gr.Textbox(label=f"Model ({NAMES_HINT})")
        api_label = gr.File(label="Label PNG (pixel value = class id)")
        api_info = gr.JSON(label="Summary (latency, size, classes, palette, class shares)")
        api_button = gr.Button("segment (API)")

    outputs = [gallery, legend, shares, table, files, state]
    run.click(
        partial(segment_compare, store),
        [image, models, alpha, highlight],
        outputs,
        api_name="segment_compare",
        concurrency_id=INFERENCE_QUEUE,
        concurrency_limit=inference_concurrency(),
        preprocess=False,
    )
    # models.input, not .change: the lists' refresh on a tab switch must not re-run the models
    gr.on(
        [image.change, models.input],
        partial(segment_live, store),
        [image, models, alpha, highlight, state],
        outputs,
        api_visibility="private",
        concurrency_id=INFERENCE_QUEUE,
        trigger_mode="always_last",
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
    gr.on(
        [alpha.release, highlight.change],
        rerender,
        [state, alpha, highlight],
        gallery,
        api_visibility="private",
        show_progress="hidden",
        queue=False,  # a few milliseconds of work: straight to the handler, no queue round trips
        trigger_mode="always_last",
    )
