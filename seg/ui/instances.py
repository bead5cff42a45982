"""Instances tab: pedestrians one by one, ground truth, DWT and Mask R-CNN side by side in one row.

Prediction is ``seg.instances.inference.InstancePredictor`` (through the model store),
data is ``seg.instances.data`` and the metrics are ``seg.instances.coco_eval``; this
module only draws: each instance in its own colour with its contour and box, and the
DWT's energy (distance) map, and a summary in words (the raw numbers are under "Details").
"""

from __future__ import annotations

import html
from functools import lru_cache, partial
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image
from plotly.colors import sample_colorscale, unlabel_rgb

from seg.instances.coco_eval import InstanceEvaluator, ids_to_masks
from seg.instances.data import boxes_from_ids, list_ids, load_sample
from seg.memory import trim_above
from seg.modelstore import ModelStore
from seg.render import draw_instances, thumbnail
from seg.ui.api import ModelChoice
from seg.ui.messages import missing_dataset_md
from seg.ui.pickers import get_predictor, watch
from seg.ui.queues import INFERENCE_QUEUE
from seg.ui.samples import dataset_available, example_images
from seg.ui.style import TRUTH_COLOUR, format_ms, model_colour, model_table, plural, swatch
from seg.ui.uploads import read_image

SOURCES = ("Penn-Fudan image", "upload")
#: Working longest side for instance inference (Penn-Fudan images are at most ~1000 px).
INSTANCE_MAX_SIDE = 800
METRIC_HEADERS = ["model", "instances", "latency ms", "mask AP", "mask AP50", "box AP", "count error", "mean best IoU"]
#: past this resident memory an Instances request hands freed heap pages back (``seg.memory.trim_above``):
#: the dashboard's budget is 2.5 GB with every model loaded
TRIM_ABOVE_BYTES = 2_300_000_000
#: Pictures in the one comparison row (ground truth, models, energy maps) on a wide window.
ROW_TILES = 4
#: Scores listed per model in the summary before "and N more".
SUMMARY_SCORES = 6


@lru_cache(maxsize=1)
def _viridis() -> np.ndarray:
    return np.array(
        [unlabel_rgb(c) for c in sample_colorscale("Viridis", [i / 255 for i in range(256)])], dtype=np.uint8
    )


def energy_image(energy: np.ndarray) -> np.ndarray:
    """The DWT's expected energy level (distance to the instance boundary) as a colour map."""
    e = np.asarray(energy, dtype=np.float32)
    top = float(e.max(initial=0)) or 1.0
    return _viridis()[np.clip(e / top * 255, 0, 255).astype(np.uint8)]


def _pennfudan_ids() -> list[str]:
    root = dataset_available("pennfudan")
    if root is None:
        return []
    try:
        return list_ids(root)
    except (OSError, FileNotFoundError):
        return []


def _source(source: str, sample_id: str | None, upload: Any) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(image, ground-truth ids or None, description)."""
    if source == "upload" or (upload and not sample_id):
        return thumbnail(read_image(upload), INSTANCE_MAX_SIDE), None, "upload"
    root = dataset_available("pennfudan")
    if root is None:
        raise gr.Error(
            "Penn-Fudan images need the Penn-Fudan dataset, which is not installed here; switch the source to upload."
        )
    if not sample_id:
        raise gr.Error("Pick a Penn-Fudan image, or switch the source to upload.")
    try:
        sample = load_sample(root, sample_id)
    except (OSError, ValueError):
        raise gr.Error(f"The Penn-Fudan image {sample_id} could not be read.") from None
    image, truth = sample.image, sample.instances
    if max(image.shape[:2]) > INSTANCE_MAX_SIDE:
        image = thumbnail(image, INSTANCE_MAX_SIDE)
        truth = np.asarray(
            Image.fromarray(truth.astype(np.int32)).resize((image.shape[1], image.shape[0]), Image.NEAREST)
        ).astype(np.int32)
    return image, truth, f"Penn-Fudan {sample_id}"


def _metrics(truth: np.ndarray | None, result: Any) -> dict:
    if truth is None:
        return {}
    ev = InstanceEvaluator()
    masks, scores, boxes = result.candidates()
    ev.add(ids_to_masks(truth), masks, scores, boxes)
    return ev.compute()


def _num(v: Any) -> Any:
    return round(float(v), 3) if isinstance(v, (int, float)) and np.isfinite(v) else None


def instances(
    store: ModelStore,
    source: str = SOURCES[0],
    sample_id: str | None = None,
    upload: Any = None,
    models: list[str] | str | None = None,
    tta: bool = True,
):
    """API endpoint ``instances``: the pictures (ground truth, each model, energy maps), the metric
    table and the details (counts, scores, boxes, latency, metrics per model).

    ``upload`` is needed only when ``source`` is "upload"; ``models`` defaults to every instance
    checkpoint. ``tta``: each model's test-time augmentation as its card says (off: faster, less accurate).
    """
    models = [models] if isinstance(models, str) else list(models or [])
    models = models or store.names("instances")
    if not models:
        raise gr.Error(
            "No instance checkpoint (DWT or Mask R-CNN) is available. Train one with the command "
            "python -m seg train-instances, then switch tabs to refresh the lists."
        )
    image, truth, what = _source(source, sample_id, upload)
    pictures: list[tuple[np.ndarray, str]] = []
    energies: list[tuple[np.ndarray, str]] = []
    truth_count = int(truth.max(initial=0)) if truth is not None else None
    if truth is not None:
        pictures.append(
            (draw_instances(image, truth, boxes_from_ids(truth)), f"ground truth · {plural(truth_count, 'pedestrian')}")
        )
    rows: list[list[Any]] = []
    details: dict[str, Any] = {
        "source": what,
        "height": int(image.shape[0]),
        "width": int(image.shape[1]),
        "test_time_augmentation": bool(tta),
        "ground_truth_instances": truth_count,
        "models": {},
    }
    for name in models:
        predictor = get_predictor(store, name, task="instances")
        try:
            result = predictor.predict(image, tta=bool(tta))
        except (RuntimeError, ValueError):
            raise gr.Error(f"{name} could not process this image; try another image or model.") from None
        count = int(result.num_instances)
        pictures.append(
            (
                draw_instances(image, result.instances, result.boxes, result.scores),
                f"{name} · {plural(count, 'instance')} · {format_ms(result.latency_ms)}",
            )
        )
        if getattr(result, "energy", None) is not None:
            energies.append((energy_image(result.energy), f"{name} · energy (distance to the boundary)"))
        m = _metrics(truth, result)
        rows.append(
            [
                name,
                count,
                round(float(result.latency_ms)),
                _num(m.get("mask_ap")),
                _num(m.get("mask_ap50")),
                _num(m.get("box_ap")),
                _num(m.get("count_error")),
                _num(m.get("mean_best_iou")),
            ]
        )
        details["models"][name] = {
            "instances": count,
            "scores": [round(float(s), 4) for s in result.scores],
            "boxes": np.asarray(result.boxes).round(1).tolist(),
            "latency_ms": round(float(result.latency_ms), 1),
            "metrics": {k: _num(v) for k, v in m.items()},
        }
    # the DWT's enlarged fill pass leaves a few hundred MB of freed buffers on the heap
    trim_above(TRIM_ABOVE_BYTES)
    return pictures + energies, model_table(rows, METRIC_HEADERS), details


def summary_html(details: dict | None) -> str:
    """The details in words: what was looked at, and per model how many instances, how sure, how fast, how good."""
    if not isinstance(details, dict) or not details.get("models"):
        return ""
    truth = details.get("ground_truth_instances")
    head = html.escape(str(details.get("source", "")))
    if isinstance(truth, int):
        head += f" · {swatch(TRUTH_COLOUR)}ground truth: {plural(truth, 'pedestrian')}"
    if not details.get("test_time_augmentation", True):
        head += " · test-time passes off"
    items = []
    for name, d in details["models"].items():
        scores = d.get("scores") or []
        shown = ", ".join(f"{s:.2f}" for s in scores[:SUMMARY_SCORES])
        more = f" and {len(scores) - SUMMARY_SCORES} more" if len(scores) > SUMMARY_SCORES else ""
        confidence = f" (scores {shown}{more})" if scores else ""
        found = plural(int(d.get("instances", 0)), "instance")
        line = (
            f"{swatch(model_colour(name))}<b>{html.escape(name)}</b> found {found}"
            f"{confidence} in {format_ms(d.get('latency_ms'))}"
        )
        metrics = d.get("metrics") or {}
        quality = [
            f"{label} {metrics[key]:.2f}"
            for key, label in (("mask_ap", "mask AP"), ("mask_ap50", "mask AP50"), ("mean_best_iou", "mean best IoU"))
            if isinstance(metrics.get(key), (int, float))
        ]
        if isinstance(metrics.get("count_error"), (int, float)):
            quality.append(f"count off by {metrics['count_error']:g}")
        if quality:
            line += " · " + ", ".join(quality)
        items.append(f"<li>{line}</li>")
    return f'<div class="seg-summary"><p>{head}</p><ul>{"".join(items)}</ul></div>'


def build(store: ModelStore) -> None:
    """Components and events of the Instances tab."""
    ids = _pennfudan_ids()
    names = store.names("instances")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=280):
            source = gr.Radio(list(SOURCES), value=SOURCES[0] if ids else SOURCES[1], label="Source")
            if ids:
                sample = gr.Dropdown(ids, value=ids[0], label="Penn-Fudan image", elem_id="instances-sample")
            else:
                gr.Markdown(missing_dataset_md("pennfudan", "Showing Penn-Fudan images with ground truth"))
                sample = gr.Dropdown([], value=None, label="Penn-Fudan image", visible=False)
            upload = gr.Image(
                type="filepath", label="Upload", sources=["upload", "clipboard"], height=200, elem_id="instances-upload"
            )
        with gr.Column(scale=3, min_width=280):
            models = watch(
                store,
                ModelChoice(names, value=names, multiselect=True, label="Instance models"),
                "instances",
                multiselect=True,
            )
            if not names:
                gr.Markdown(
                    "**DWT/Mask R-CNN checkpoint not available.** "
                    + (store.describe() or "No instance checkpoint is installed yet.")
                )
            tta = gr.Checkbox(
                value=True,
                label="Test-time passes (mirror, 1.25x, and the DWT's enlarged pass for small "
                "pedestrians, as tuned on val and stored in each model's card; off is faster)",
                elem_id="instances-tta",
            )
            run = gr.Button("Find pedestrians", variant="primary", elem_id="instances-run")
        with gr.Column(scale=2, min_width=240):
            examples = example_images("pedestrians")
            if examples:
                gr.Examples(examples, inputs=upload, label="Generated examples")
    gallery = gr.Gallery(
        label="Ground truth and each model (each instance its own colour, contour and box), then energy maps",
        columns=ROW_TILES,
        height="auto",
        object_fit="contain",
        format="jpeg",  # ~0.5 ms per picture to encode; webp takes ~16 ms, four or five per request
        elem_id="instances-gallery",
        elem_classes="seg-row-gallery",
    )
    summary = gr.HTML(label="Summary", elem_id="instances-summary")
    table = gr.Dataframe(
        headers=METRIC_HEADERS,
        interactive=False,
        label="Instance metrics on this image (with ground truth; DWT: the partition "
        "shown, without the ranked alternatives of eval-instances)",
        elem_id="instances-table",
    )
    with gr.Accordion("Details (counts, scores, boxes, metrics as JSON)", open=False):
        details = gr.JSON(label="Details", elem_id="instances-details")
    find = {
        "fn": partial(instances, store),
        "inputs": [source, sample, upload, models, tta],
        "outputs": [gallery, table, details],
        "concurrency_id": INFERENCE_QUEUE,
        "preprocess": False,
    }
    describe = {"fn": summary_html, "inputs": details, "outputs": summary, "queue": False, "show_progress": "hidden"}
    run.click(**find, api_name="instances").then(**describe, api_visibility="private")
    # a dropped image or a chosen Penn-Fudan image is looked at at once, as on the Segment tab
    for trigger, chosen in ((upload.upload, SOURCES[1]), (sample.input, SOURCES[0])):
        trigger(lambda chosen=chosen: chosen, None, source, api_visibility="private", queue=False).then(
            **find, api_visibility="private"
        ).then(**describe, api_visibility="private")
