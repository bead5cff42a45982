"""Evaluate tab: compare checkpoints by their cards, or recomputed on a dataset split.

Metrics come from the cards (``val_metrics``, ``test_metrics``) or from the core's
``seg.evaluate.evaluate_predictor``; this module only normalises and plots them, each model in
its app-wide colour. A recomputation reports images done / total with the time left. Opening the
tab fills it from the cards, so a visitor sees the comparison before choosing anything.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import cv2
import gradio as gr
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from seg.classes import colorize
from seg.evaluate import error_map, evaluate_predictor
from seg.modelstore import ModelStore
from seg.render import card_classes, hstack, vstack
from seg.ui.api import ModelChoice
from seg.ui.messages import missing_dataset_md
from seg.ui.pickers import get_predictor, watch
from seg.ui.samples import dataset_available, load_sbd_sample, sbd_samples
from seg.ui.style import TOP_LEGEND, format_ms, model_colour, model_table, themed

EVAL_QUEUE = "evaluate"
SPLITS = ["val", "test", "train"]
#: The literature's protocol (8 classes, unknown pixels ignored) comes last, so the course's columns keep their places.
TABLE_HEADERS = [
    "model",
    "architecture",
    "source",
    "mIoU",
    "mAP",
    "pixel acc",
    "params (M)",
    "latency ms",
    "pixel acc (8)",
    "class acc (8)",
]
#: Confusion heatmaps from the page background (transparent) to blue: legible on light and dark themes.
HEATMAP_SCALE = [[0.0, "rgba(33, 113, 181, 0.0)"], [1.0, "rgba(33, 113, 181, 1.0)"]]
#: Column titles drawn above the worst-image strips.
STRIP_TITLES = ("image", "truth", "prediction", "errors (red)")
#: Images per batch when recomputing: small enough for frequent progress, large enough to stay fast.
EVAL_BATCH = 8

_latency_cache: dict[tuple[str, str, str], float] = {}
_latency_lock = threading.Lock()


def measure_latency(store: ModelStore, name: str, runs: int = 3) -> float | None:
    """Median model latency on a 288x224 image, cached per checkpoint file and serving backend: a model
    measured while eager PyTorch stood in for its runtime (still calibrating) is measured again once served."""
    try:
        entry = store.entry(name)
    except KeyError:
        return None
    predictor = get_predictor(store, name)
    key = (name, str(entry.path), str(getattr(predictor, "backend", "")))
    with _latency_lock:
        if key in _latency_cache:
            return _latency_cache[key]
    image = np.random.default_rng(0).integers(0, 255, (224, 288, 3), dtype=np.uint8)
    predictor.predict(image)  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        predictor.predict(image)
        times.append((time.perf_counter() - start) * 1000)
    value = float(np.median(times))
    with _latency_lock:
        _latency_cache[key] = value
    return value


def normalise(metrics: dict | None, classes: list[str]) -> dict | None:
    """Card or ``SegMetrics.compute()`` dict -> {miou, map, pixel_accuracy, pixel_accuracy_8, class_accuracy_8,
    iou{}, ap{}, cm, pr{}, worst[]}."""
    if not metrics:
        return None
    per_class = metrics.get("per_class") or {}
    iou = {c: (per_class.get(c) or {}).get("iou") for c in classes}
    ap = {c: (per_class.get(c) or {}).get("ap") for c in classes}
    for key, target in (("iou", iou), ("ap", ap)):
        values = metrics.get(key)
        if isinstance(values, list):
            for c, v in zip(classes, values):
                target[c] = v if target[c] is None else target[c]
    cm = metrics.get("confusion_matrix")
    pr = {}
    for c, curve in (metrics.get("pr_curves") or {}).items():
        if isinstance(curve, dict):
            pr[c] = (curve.get("precision") or [], curve.get("recall") or [])
        elif isinstance(curve, (list, tuple)) and len(curve) == 2:
            pr[c] = (list(curve[0]), list(curve[1]))
    return {
        "miou": metrics.get("miou"),
        "map": metrics.get("map"),
        "pixel_accuracy": metrics.get("pixel_accuracy"),
        "pixel_accuracy_8": metrics.get("pixel_accuracy_8"),
        "class_accuracy_8": metrics.get("class_accuracy_8"),
        "iou": iou,
        "ap": ap,
        "cm": np.asarray(cm, dtype=np.float64) if cm else None,
        "pr": pr,
        "worst": metrics.get("worst") or metrics.get("per_image") or [],
    }


def _fmt(v: Any, digits: int = 3) -> Any:
    return round(float(v), digits) if isinstance(v, (int, float)) and np.isfinite(v) else None


def table_rows(
    store: ModelStore, results: dict[str, dict], sources: dict[str, str], with_latency: bool = True
) -> list[list[Any]]:
    rows = []
    for name, m in results.items():
        card = store.card(name)
        params = card.get("params")
        latency = measure_latency(store, name) if with_latency else None
        rows.append(
            [
                name,
                card.get("architecture", "?"),
                sources.get(name, "card"),
                _fmt(m.get("miou")),
                _fmt(m.get("map")),
                _fmt(m.get("pixel_accuracy")),
                _fmt(params / 1e6, 3) if isinstance(params, (int, float)) else None,
                _fmt(latency, 1),
                _fmt(m.get("pixel_accuracy_8")),
                _fmt(m.get("class_accuracy_8")),
            ]
        )
    return rows


def iou_figure(results: dict[str, dict], classes: list[str]) -> go.Figure:
    fig = go.Figure()
    for name, m in results.items():
        fig.add_bar(name=name, x=classes, y=[m["iou"].get(c) for c in classes], marker_color=model_colour(name))
    fig.update_layout(
        barmode="group",
        title="Per-class IoU",
        yaxis_range=[0, 1],
        margin={"l": 40, "r": 10, "t": 70, "b": 40},
        legend=TOP_LEGEND,
    )
    return themed(fig, height=360)


def confusion_figure(results: dict[str, dict], classes: list[str]) -> go.Figure:
    """Row-normalised confusion matrices (rows = truth), one heatmap per model."""
    named = [(n, m["cm"]) for n, m in results.items() if m.get("cm") is not None]
    if not named:
        return _empty("No confusion matrix in these cards.")
    cols = min(3, len(named))
    rows = (len(named) + cols - 1) // cols
    fig = make_subplots(
        rows=rows, cols=cols, subplot_titles=[n for n, _ in named], horizontal_spacing=0.08, vertical_spacing=0.12
    )
    for k, (name, cm) in enumerate(named):
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        fig.add_trace(
            go.Heatmap(
                z=norm,
                x=classes[: cm.shape[1]],
                y=classes[: cm.shape[0]],
                zmin=0,
                zmax=1,
                colorscale=HEATMAP_SCALE,
                showscale=k == 0,
                hovertemplate="truth %{y}<br>predicted %{x}<br>%{z:.2f}<extra>" + name + "</extra>",
            ),
            row=k // cols + 1,
            col=k % cols + 1,
        )
    fig.update_yaxes(autorange="reversed", showgrid=False)
    fig.update_xaxes(showgrid=False)
    fig.update_layout(
        title="Confusion matrices (row-normalised; rows = truth)",
        margin={"l": 60, "r": 10, "t": 70, "b": 40},
    )
    for annotation, (name, _) in zip(fig.layout.annotations, named):  # subplot titles in the model's colour
        annotation.font = {"color": model_colour(name)}
    return themed(fig, height=360 * rows)


def pr_figure(results: dict[str, dict], classes: list[str]) -> go.Figure:
    """Precision–recall curves, one panel per class, one line per model (in the model's colour)."""
    if not any(m["pr"] for m in results.values()):
        return _empty("Precision–recall curves need a recomputation on a split (cards hold none).")
    cols = 3
    rows = (len(classes) + cols - 1) // cols
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=classes, vertical_spacing=0.08)
    for name, m in results.items():
        for k, c in enumerate(classes):
            p, r = m["pr"].get(c, ([], []))
            if not p:
                continue
            fig.add_trace(
                go.Scatter(
                    x=r,
                    y=p,
                    mode="lines",
                    name=name,
                    legendgroup=name,
                    showlegend=k == 0,
                    line={"color": model_colour(name), "width": 1.5},
                ),
                row=k // cols + 1,
                col=k % cols + 1,
            )
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(range=[0, 1.02])
    fig.update_layout(
        title="Precision–recall per class (x recall, y precision)",
        margin={"l": 40, "r": 10, "t": 70, "b": 30},
        legend=TOP_LEGEND,
    )
    return themed(fig, height=260 * rows)


def _empty(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(xaxis_visible=False, yaxis_visible=False)
    return themed(fig, height=200)


def error_tile(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, palette) -> np.ndarray:
    """image | truth | prediction | error map (the core's ``error_map``: red = wrong), side by side."""
    return hstack([image, colorize(truth, palette), colorize(pred, palette), error_map(truth, pred)])


def _band(width: int, texts: list[tuple[int, str]], height: int = 22) -> np.ndarray:
    """A white band with dark text at the given x offsets (labels drawn into the picture itself,
    so the strips stay labelled when the picture is downloaded or zoomed)."""
    band = np.full((height, width, 3), 255, np.uint8)
    for x, text in texts:
        cv2.putText(band, text, (x + 4, height - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (20, 20, 20), 1, cv2.LINE_AA)
    return band


def _labelled_strip(parts: list[np.ndarray], caption: str, titles: bool) -> np.ndarray:
    """One worst-image strip with its caption above it (and the column titles when ``titles``)."""
    strip = hstack(parts)
    rows = [_band(strip.shape[1], [(0, caption)])]
    if titles:
        offsets, x = [], 0
        for part, title in zip(parts, STRIP_TITLES):
            offsets.append((x, title))
            x += part.shape[1] + 4
        rows.insert(0, _band(strip.shape[1], offsets))
    return np.concatenate(rows + [strip], axis=0)


def worst_images(store: ModelStore, results: dict[str, dict], k: int = 3) -> tuple[np.ndarray | None, str]:
    """The ``k`` lowest-mIoU images of each recomputed model with their error maps: one picture
    (a captioned strip per image: image | truth | prediction | errors) and a table saying which is which."""
    rows: list[np.ndarray] = []
    lines = ["| # | model | image | image mIoU |", "|---:|---|---|---:|"]
    for name, m in results.items():
        worst = [w for w in m.get("worst") or [] if isinstance(w, dict) and "id" in w]
        if not worst:
            continue
        worst = sorted(worst, key=lambda w: w.get("miou", w.get("score", 1.0)) or 0.0)[:k]
        predictor = get_predictor(store, name)
        _, palette = card_classes(store.card(name))
        for w in worst:
            try:
                image, truth = load_sbd_sample(str(w["id"]))
            except gr.Error:
                continue
            if truth is None:
                continue
            pred = np.asarray(predictor.predict(image).label)
            score = w.get("miou", w.get("score"))
            shown = f"{score:.2f}" if isinstance(score, (int, float)) else "–"
            number = len(rows) + 1
            caption = f"{number}. {name} - image {w['id']} - image mIoU {shown}"
            parts = [image, colorize(truth, palette), colorize(pred, palette), error_map(truth, pred)]
            rows.append(_labelled_strip(parts, caption, titles=not rows))
            lines.append(f"| {number} | {html.escape(name)} | {html.escape(str(w['id']))} | {shown} |")
    return vstack(rows), ("\n".join(lines) if rows else "")


class EvalProgress:
    """Images done / total over every model of one recomputation, with the time left.

    The time left comes from the rate measured so far in this run (images per second),
    not from past runs, so it is right for the chosen split and models.
    """

    def __init__(self, report: Callable[..., Any] | None, models: int, images_per_model: int | None):
        self.report = report
        self.models = models
        self.per_model = images_per_model
        self.finished = 0  # images of the models already done
        self.start = time.perf_counter()

    def model_started(self, index: int, name: str) -> None:
        if self.report is not None:
            self.report(self._fraction(0), desc=f"{name}: loading the images")

    def __call__(self, name: str, done: int, total: int) -> None:
        """Progress inside one model: ``done`` of its ``total`` images."""
        self.per_model = total
        if self.report is None:
            return
        all_done = self.finished + done
        grand_total = total * self.models
        elapsed = time.perf_counter() - self.start
        left = elapsed / all_done * (grand_total - all_done) if all_done else None
        eta = f", about {format_ms(left * 1000)} left" if left is not None and all_done < grand_total else ""
        self.report((all_done, grand_total), desc=f"{name}: {all_done}/{grand_total} images{eta}", unit="images")

    def model_done(self, total: int) -> None:
        self.finished += total

    def _fraction(self, done: int) -> float:
        if not self.per_model:
            return 0.0
        return min(1.0, (self.finished + done) / (self.per_model * self.models))

    def stage(self, text: str) -> None:
        if self.report is not None:
            self.report(1.0, desc=text)


def recompute(
    store: ModelStore, name: str, split: str, limit: int | None, progress: Callable[[int, int], None] | None = None
) -> dict:
    """Core evaluation of one checkpoint on a split (``seg.evaluate.evaluate_predictor``, cached model)."""
    root = dataset_available("sbd")
    if root is None:
        raise gr.Error(
            "Recomputing metrics needs the Stanford Background dataset, which is not installed here; "
            "card metrics work without it."
        )
    predictor = get_predictor(store, name)
    try:
        return evaluate_predictor(
            predictor, root, split, batch_size=EVAL_BATCH, limit=int(limit) if limit else None, progress=progress
        )
    except FileNotFoundError:
        raise gr.Error(f"The {split} split has no labelled images here, so {name} cannot be evaluated on it.") from None
    except ValueError as err:
        raise gr.Error(f"{name} cannot be evaluated on the {split} split: {err}.") from None
    except (RuntimeError, MemoryError):
        raise gr.Error(f"Evaluating {name} on the {split} split failed; try fewer images.") from None


def _split_size(split: str, limit: int | None) -> int | None:
    """Labelled images the recomputation will see (for the progress total before loading)."""
    count = sum(1 for s in sbd_samples().values() if s.split == split and s.label_path is not None)
    if not count:
        return None
    return min(count, limit) if limit else count


def evaluate(
    store: ModelStore,
    models: list[str] | str | None = None,
    mode: str = "card",
    split: str = "val",
    limit: float | None = 0,
    progress: gr.Progress = gr.Progress(),
):
    """API endpoint ``evaluate``: comparison table, per-class IoU bars, confusion heatmaps, PR curves,
    worst images (picture and table) and a one-line summary.

    ``mode`` "card" reads the metrics the checkpoints' cards hold for ``split``; "recompute" evaluates
    them on ``split`` (at most ``limit`` images, 0 = all) and reports images done / total while it runs.
    """
    models = [models] if isinstance(models, str) else list(models or [])
    models = models or store.names("semantic")
    if not models:
        raise gr.Error("No semantic checkpoint is available to evaluate.")
    limit_n = _limit(limit)
    results: dict[str, dict] = {}
    sources: dict[str, str] = {}
    classes = None
    notes = []
    tracker = EvalProgress(progress if mode == "recompute" else None, len(models), None)
    if mode == "recompute":
        tracker.per_model = _split_size(split, limit_n)
    for index, name in enumerate(models):
        try:
            card = store.card(name)
        except KeyError as err:
            raise gr.Error(str(err)) from None
        cls, _ = card_classes(card)
        classes = classes or cls
        if mode == "recompute":
            tracker.model_started(index, name)
            metrics = recompute(store, name, split, limit_n, partial(tracker, name))
            tracker.model_done(int(metrics.get("num_images") or 0))
            per_image = {k: v for k, v in metrics.items() if k in ("worst", "per_image")}
            metrics = metrics.get("metrics", metrics) | per_image
            sources[name] = f"{split} (recomputed)"
        else:
            metrics = card_metrics(card, split)
            sources[name] = "card" if split == "val" else f"card ({split})"
        m = normalise(metrics, cls)
        if m is None:
            notes.append(f"{name}: the card has no {split} metrics (recompute them on the split)")
            continue
        results[name] = m
    if not results:
        raise gr.Error("None of the chosen checkpoints has metrics. " + "; ".join(notes) + ".")
    classes = classes or []
    if mode == "recompute":
        tracker.stage("measuring latency and drawing the worst images")
    worst, worst_list = worst_images(store, results) if mode == "recompute" else (None, "")
    count = f"{len(results)} model{'s' if len(results) != 1 else ''}"
    if mode == "recompute":
        seconds = time.perf_counter() - tracker.start
        note = f"{count}, metrics from the {split} split (recomputed in {format_ms(seconds * 1000)})"
    else:
        note = f"{count}, metrics from their cards ({'validation' if split == 'val' else split} split)"
    if notes:
        note += "; " + "; ".join(notes)
    return (
        model_table(table_rows(store, results, sources), TABLE_HEADERS),
        iou_figure(results, classes),
        confusion_figure(results, classes),
        pr_figure(results, classes),
        worst,
        worst_list,
        note + ".",
    )


def card_metrics(card: dict, split: str) -> dict | None:
    """What a card holds for ``split``: training records val, and test once a run reads it at the end."""
    if split == "val":
        return card.get("val_metrics") or card.get("metrics")
    return card.get(f"{split}_metrics")


def _limit(limit: Any) -> int | None:
    """The "max images" field: 0, empty or negative = all; otherwise a whole number."""
    try:
        value = int(float(limit)) if limit not in (None, "") else 0
    except (TypeError, ValueError):
        raise gr.Error("Max images must be a whole number (0 = all).") from None
    return value if value > 0 else None


def _has_rows(table: Any) -> bool:
    """Whether the comparison table already shows models (a DataFrame, or whatever a client sends)."""
    try:
        first = list(table.iloc[:, 0]) if hasattr(table, "iloc") else [row[0] for row in (table or {}).get("data", [])]
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return False
    return any(isinstance(v, str) and v.strip() for v in first)


def fill_from_cards(store: ModelStore, outputs: int, models: Any, split: Any, table: Any):
    """On opening the tab: the cards' comparison for the chosen models and split (``evaluate``'s
    ``outputs`` values), unless the table already shows one; nothing (and no error) when there is
    nothing to show."""
    skip = tuple(gr.skip() for _ in range(outputs))
    if _has_rows(table):
        return skip
    try:
        return evaluate(store, models, "card", split if split in SPLITS else "val", 0)
    except (gr.Error, KeyError, TypeError, ValueError):  # no page sends those; the Evaluate button says why
        return skip


def build(store: ModelStore) -> list[dict[str, Any]]:
    """Components and events of the Evaluate tab; returns the event that fills it when it is opened."""
    names = store.names("semantic")
    has_data = dataset_available("sbd") is not None
    with gr.Row():
        models = watch(
            store,
            ModelChoice(names, value=names, multiselect=True, label="Checkpoints"),
            "semantic",
            multiselect=True,
        )
        mode = gr.Radio(
            [("card metrics", "card"), ("recompute on a split", "recompute")],
            value="card",
            label="Metrics from",
            interactive=has_data,
        )
        split = gr.Dropdown(SPLITS, value="val", label="Split")
        limit = gr.Number(0, precision=0, label="Max images (0 = all)")
        run = gr.Button("Evaluate", variant="primary", elem_id="evaluate-run")
    if not has_data:
        gr.Markdown(missing_dataset_md("sbd", "Recomputing metrics on a split"))
    if store.unavailable():
        gr.Markdown(store.describe())
    note = gr.Markdown(label="Summary", elem_id="evaluate-note")
    table = gr.Dataframe(headers=TABLE_HEADERS, label="Comparison", interactive=False, elem_id="evaluate-table")
    iou = gr.Plot(label="Per-class IoU", elem_id="evaluate-iou")
    confusion = gr.Plot(label="Confusion matrices", elem_id="evaluate-confusion")
    pr = gr.Plot(label="Precision–recall", elem_id="evaluate-pr")
    with gr.Row(equal_height=False, visible=False) as worst_row:  # shown once a recomputation has some
        worst = gr.Image(
            label="Worst images, each captioned: image | truth | prediction | errors (red)",
            type="numpy",
            interactive=False,
            scale=3,
            elem_id="evaluate-worst",
        )
        with gr.Column(scale=1, min_width=320):
            worst_list = gr.Markdown(label="Worst images", elem_id="evaluate-worst-list")
    outputs = [table, iou, confusion, pr, worst, worst_list, note]
    run.click(
        partial(evaluate, store),
        [models, mode, split, limit],
        outputs,
        api_name="evaluate",
        concurrency_id=EVAL_QUEUE,
        concurrency_limit=1,
    ).then(
        lambda picture: gr.Row(visible=picture is not None),
        worst,
        worst_row,
        api_visibility="private",
        queue=False,
        show_progress="hidden",
    )
    fill = {
        "on": "select",
        "fn": partial(fill_from_cards, store, len(outputs)),
        "inputs": [models, split, table],
        "outputs": outputs,
        "concurrency_id": EVAL_QUEUE,
        "concurrency_limit": 1,
        "show_progress": "minimal",
    }
    return [fill]
