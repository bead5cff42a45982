"""Evaluate tab: compare checkpoints by their cards, or recomputed on a dataset split.

Metrics come from the cards (``val_metrics``) or from the core's
``seg.evaluate.evaluate_checkpoint``; this module only normalises and plots them.
"""

from __future__ import annotations

import threading
import time
from functools import partial
from typing import Any

import gradio as gr
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from seg.classes import colorize
from seg.evaluate import error_map, evaluate_predictor
from seg.modelstore import ModelStore
from seg.render import card_classes, hstack, vstack
from seg.ui.messages import missing_dataset_md
from seg.ui.pickers import get_predictor, watch
from seg.ui.samples import dataset_available, load_sbd_sample
from seg.ui.style import TOP_LEGEND

EVAL_QUEUE = "evaluate"
SPLITS = ["val", "test", "train"]
TABLE_HEADERS = ["model", "architecture", "source", "mIoU", "mAP", "pixel acc", "params (M)", "latency ms"]

_latency_cache: dict[tuple[str, str], float] = {}
_latency_lock = threading.Lock()


def measure_latency(store: ModelStore, name: str, runs: int = 3) -> float | None:
    """Median model latency on a 288x224 image (cached per checkpoint file)."""
    try:
        entry = store.entry(name)
    except KeyError:
        return None
    key = (name, str(entry.path))
    with _latency_lock:
        if key in _latency_cache:
            return _latency_cache[key]
    predictor = get_predictor(store, name)
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
    """Card or ``SegMetrics.compute()`` dict -> {miou, map, pixel_accuracy, iou{}, ap{}, cm, pr{}, worst[]}."""
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
            ]
        )
    return rows


def iou_figure(results: dict[str, dict], classes: list[str]) -> go.Figure:
    fig = go.Figure()
    for name, m in results.items():
        fig.add_bar(name=name, x=classes, y=[m["iou"].get(c) for c in classes])
    fig.update_layout(
        barmode="group",
        title="Per-class IoU",
        yaxis_range=[0, 1],
        height=360,
        margin={"l": 40, "r": 10, "t": 70, "b": 40},
        legend=TOP_LEGEND,
    )
    return fig


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
                colorscale="Blues",
                showscale=k == 0,
                hovertemplate="truth %{y}<br>predicted %{x}<br>%{z:.2f}<extra>" + name + "</extra>",
            ),
            row=k // cols + 1,
            col=k % cols + 1,
        )
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(
        title="Confusion matrices (row-normalised; rows = truth)",
        height=360 * rows,
        margin={"l": 60, "r": 10, "t": 70, "b": 40},
    )
    return fig


def pr_figure(results: dict[str, dict], classes: list[str]) -> go.Figure:
    """Precision–recall curves, one panel per class, one line per model."""
    if not any(m["pr"] for m in results.values()):
        return _empty("Precision–recall curves need a recomputation on a split (cards hold none).")
    cols = 3
    rows = (len(classes) + cols - 1) // cols
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=classes, vertical_spacing=0.08)
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    for j, (name, m) in enumerate(results.items()):
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
                    line={"color": palette[j % len(palette)], "width": 1.5},
                ),
                row=k // cols + 1,
                col=k % cols + 1,
            )
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(range=[0, 1.02])
    fig.update_layout(
        title="Precision–recall per class (x recall, y precision)",
        height=260 * rows,
        margin={"l": 40, "r": 10, "t": 70, "b": 30},
    )
    return fig


def _empty(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(height=200, xaxis_visible=False, yaxis_visible=False)
    return fig


def error_tile(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, palette) -> np.ndarray:
    """image | truth | prediction | error map (the core's ``error_map``: red = wrong), side by side."""
    return hstack([image, colorize(truth, palette), colorize(pred, palette), error_map(truth, pred)])


def worst_images(store: ModelStore, results: dict[str, dict], k: int = 3) -> tuple[np.ndarray | None, str]:
    """The ``k`` lowest-mIoU images of each recomputed model with their error maps: one picture
    (a strip per image: image | truth | prediction | errors) and the list saying which is which."""
    rows, lines = [], []
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
            rows.append(error_tile(image, truth, pred, palette))
            score = w.get("miou", w.get("score"))
            shown = f", image mIoU {score:.2f}" if isinstance(score, (int, float)) else ""
            lines.append(f"{len(rows)}. **{name}**: `{w['id']}`{shown}")
    return vstack(rows), "\n".join(lines)


def recompute(store: ModelStore, name: str, split: str, limit: int | None) -> dict:
    """Core evaluation of one checkpoint on a split (``seg.evaluate.evaluate_predictor``, cached model)."""
    root = dataset_available("sbd")
    if root is None:
        raise gr.Error(missing_dataset_md("sbd", "Recomputing metrics"))
    predictor = get_predictor(store, name)
    try:
        return evaluate_predictor(predictor, root, split, limit=int(limit) if limit else None)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        raise gr.Error(f"Evaluating {name} on {split} failed: {err}") from None


def evaluate(store: ModelStore, models: list[str] | str | None, mode: str, split: str, limit: float | None):
    """API endpoint ``evaluate``: table, IoU bars, confusion heatmaps, PR curves, worst images (picture
    and list), note."""
    models = [models] if isinstance(models, str) else list(models or [])
    models = models or store.names("semantic")
    if not models:
        raise gr.Error("No semantic checkpoint is available to evaluate.")
    results: dict[str, dict] = {}
    sources: dict[str, str] = {}
    classes = None
    notes = []
    for name in models:
        try:
            card = store.card(name)
        except KeyError as err:
            raise gr.Error(str(err)) from None
        cls, _ = card_classes(card)
        classes = classes or cls
        if mode == "recompute":
            metrics = recompute(store, name, split, int(limit) if limit else None)
            per_image = {k: v for k, v in metrics.items() if k in ("worst", "per_image")}
            metrics = metrics.get("metrics", metrics) | per_image
            sources[name] = f"{split} (recomputed)"
        else:
            metrics = card.get("val_metrics") or card.get("metrics")
            sources[name] = "card"
        m = normalise(metrics, cls)
        if m is None:
            notes.append(f"{name}: the card has no metrics")
            continue
        results[name] = m
    if not results:
        raise gr.Error("None of the chosen checkpoints has metrics. " + "; ".join(notes))
    classes = classes or []
    worst, worst_list = worst_images(store, results) if mode == "recompute" else (None, "")
    note = (
        "; ".join(notes)
        if notes
        else f"{len(results)} model(s), metrics from "
        + (f"the {split} split (recomputed)" if mode == "recompute" else "their cards (validation split)")
    )
    return (
        table_rows(store, results, sources),
        iou_figure(results, classes),
        confusion_figure(results, classes),
        pr_figure(results, classes),
        worst,
        worst_list,
        note,
    )


def build(store: ModelStore) -> None:
    """Components and events of the Evaluate tab."""
    names = store.names("semantic")
    has_data = dataset_available("sbd") is not None
    with gr.Row():
        models = watch(
            store, gr.Dropdown(names, value=names, multiselect=True, label="Checkpoints"), "semantic", multiselect=True
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
    note = gr.Markdown(elem_id="evaluate-note")
    table = gr.Dataframe(headers=TABLE_HEADERS, label="Comparison", interactive=False, elem_id="evaluate-table")
    iou = gr.Plot(label="Per-class IoU")
    confusion = gr.Plot(label="Confusion matrices")
    pr = gr.Plot(label="Precision–recall")
    with gr.Row():
        worst = gr.Image(
            label="Worst images, top to bottom: image | truth | prediction | errors (red)",
            type="numpy",
            interactive=False,
            scale=4,
            elem_id="evaluate-worst",
        )
        with gr.Column(scale=1, min_width=300):
            worst_list = gr.Markdown(elem_id="evaluate-worst-list")
    outputs = [table, iou, confusion, pr, worst, worst_list, note]
    run.click(
        partial(evaluate, store),
        [models, mode, split, limit],
        outputs,
        api_name="evaluate",
        concurrency_id=EVAL_QUEUE,
        concurrency_limit=1,
    )
