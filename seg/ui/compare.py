"""Compare tab: experiment runs (``runs/``) and the shipped checkpoints side by side.

Lists every run of every experiment (``seg.runs``) and the store's semantic checkpoints, filters by
experiment, overlays their curves, tabulates their metrics, plots a setting against val mIoU and,
for a clicked run, shows its predictions on the first val images. A timer watches the runs' cards,
so a run that finishes (or finishes an epoch) appears without reloading. Everything is drawn from
the cards with plotly inside the page: no network access.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from seg.cards import weights_path
from seg.classes import colorize
from seg.config import dataset_dir
from seg.modelstore import ModelStore, ModelUnavailable
from seg.render import hstack, vstack
from seg.runs import ExperimentError, experiment_runs, list_experiments, runs_signature

log = logging.getLogger("seg.ui.compare")

ALL = "all"
#: the experiment column of the model store's checkpoints (the shipped ones and any saved beside them)
SHIPPED = "checkpoints"
TABLE_HEADERS = [
    "run",
    "experiment",
    "status",
    "epochs",
    "val mIoU",
    "val mAP",
    "test mIoU",
    "test mAP",
    "train mIoU",
    "wall min",
    "threads",
    "settings",
]
CURVES = (("miou", "val mIoU"), ("map", "val mAP"), ("train_loss", "train loss"), ("val_loss", "val loss"))
#: settings taken from the config when a run's experiment does not vary them
CONFIG_KEYS = ("model", "lr", "epochs", "seed", "batch_size")
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


@dataclass
class Listed:
    """One row of the comparison: an experiment run or a shipped checkpoint."""

    id: str  # "<experiment>/<run>" or the checkpoint's name
    experiment: str
    status: str
    card: dict
    stem: Path | None
    settings: dict = field(default_factory=dict)


def collect(store: ModelStore | None, root: str | Path | None = None) -> list[Listed]:
    """Every experiment run with a card (finished or in progress), then the store's semantic checkpoints."""
    rows: list[Listed] = []
    for name in list_experiments(root):
        try:
            _, records = experiment_runs(name, root)
        except ExperimentError:
            continue
        for record in records:
            if record.card is not None:
                rows.append(
                    Listed(f"{name}/{record.name}", name, record.status, record.card, record.out, dict(record.settings))
                )
    if store is not None:
        store.refresh()
        for name in store.names("semantic"):
            try:
                entry = store.entry(name)
            except ModelUnavailable:
                continue
            rows.append(Listed(name, SHIPPED, "checkpoint", dict(entry.card or {}), entry.path))
    return rows


def experiment_choices(rows: list[Listed]) -> list[str]:
    names = sorted({r.experiment for r in rows if r.experiment != SHIPPED})
    return [ALL] + names + ([SHIPPED] if any(r.experiment == SHIPPED for r in rows) else [])


def filtered(rows: list[Listed], choice: str | None) -> list[Listed]:
    if not choice or choice == ALL:
        return rows
    return [r for r in rows if r.experiment == choice]


def _metric(card: dict, split: str, key: str) -> float | None:
    value = (card.get(f"{split}_metrics") or {}).get(key)
    return float(value) if isinstance(value, (int, float)) else None


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return "x".join(_shown(v) for v in value)
    if isinstance(value, float):
        return format(value, "g")
    return str(value)


def table_rows(rows: list[Listed]) -> list[list[str]]:
    out = []
    for r in rows:
        ex = r.card.get("experiment") or {}
        wall = ex.get("wall_s", r.card.get("training_time_s"))
        out.append(
            [
                r.id,
                r.experiment,
                r.status,
                str(len(r.card["curve"])) if r.card.get("curve") else "–",  # an ensemble is built, not trained
                _fmt(_metric(r.card, "val", "miou")),
                _fmt(_metric(r.card, "val", "map")),
                _fmt(_metric(r.card, "test", "miou")),
                _fmt(_metric(r.card, "test", "map")),
                _fmt(_metric(r.card, "train", "miou")),
                f"{wall / 60:.1f}" if isinstance(wall, (int, float)) else "–",
                str(ex.get("threads", "–")),
                ", ".join(f"{k.split('.')[-1]}={_shown(v)}" for k, v in r.settings.items()),
            ]
        )
    return out


def curves_figure(rows: list[Listed]) -> go.Figure:
    """val mIoU, val mAP, train and val loss per epoch, one colour per run."""
    fig = make_subplots(rows=2, cols=2, subplot_titles=[label for _, label in CURVES])
    shown = 0
    for r in rows:
        curve = [row for row in r.card.get("curve") or [] if isinstance(row, dict) and "epoch" in row]
        if not curve:
            continue
        colour = PALETTE[shown % len(PALETTE)]
        for k, (key, _) in enumerate(CURVES):
            fig.add_trace(
                go.Scatter(
                    x=[row["epoch"] for row in curve],
                    y=[row.get(key) for row in curve],
                    mode="lines+markers",
                    name=r.id,
                    legendgroup=r.id,
                    showlegend=k == 0,
                    line={"color": colour},
                ),
                row=k // 2 + 1,
                col=k % 2 + 1,
            )
        shown += 1
    fig.update_layout(height=560, margin={"t": 40, "b": 30}, legend={"font": {"size": 10}})
    fig.update_xaxes(title_text="epoch", row=2)
    return fig


def setting_of(row: Listed, key: str) -> Any:
    if key in row.settings:
        return row.settings[key]
    config = row.card.get("config") or {}
    if key in config:
        return config[key]
    value = (config.get("semantic") or {}).get(key)
    if value is None and key == "model":  # a card without a training config (an ensemble) still names its model
        return row.card.get("architecture")
    return value


def hyper_choices(rows: list[Listed]) -> list[str]:
    """Settings that differ between the listed runs (what is worth plotting against val mIoU)."""
    keys = sorted({k for r in rows for k in r.settings}) + [k for k in CONFIG_KEYS]
    useful = []
    for key in dict.fromkeys(keys):
        values = {_shown(setting_of(r, key)) for r in rows}
        if len(values) > 1:
            useful.append(key)
    return useful


def hyper_figure(rows: list[Listed], key: str | None) -> go.Figure:
    fig = go.Figure()
    if key:
        points = [(setting_of(r, key), _metric(r.card, "val", "miou"), r.id) for r in rows]
        points = [(x, y, name) for x, y, name in points if y is not None and x is not None]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x, _, _ in points)
        fig.add_trace(
            go.Scatter(
                x=[x if numeric else _shown(x) for x, _, _ in points],
                y=[y for _, y, _ in points],
                mode="markers",
                text=[name for _, _, name in points],
                marker={"size": 11},
                hovertemplate="%{text}<br>%{x}: val mIoU %{y:.4f}<extra></extra>",
            )
        )
        fig.update_layout(xaxis_title=key, xaxis={"type": "linear" if numeric else "category"})
    fig.update_layout(yaxis_title="val mIoU", height=360, margin={"t": 30, "b": 40})
    return fig


# -- sample predictions -----------------------------------------------------------------------

_val_cache: dict[str, Any] = {}
_cache_lock = threading.Lock()


def _val_images(count: int):
    from seg.data.sbd import load_semantic_split

    root = dataset_dir("sbd")
    if not (root / "images").is_dir():
        return None
    key = f"{root}:{count}"
    with _cache_lock:
        if key not in _val_cache:
            _val_cache[key] = load_semantic_split(root, "val", limit=count)
        return _val_cache[key]


def sample_predictions(row: Listed, store: ModelStore | None, count: int = 3) -> tuple[np.ndarray | None, str]:
    """Image | truth | prediction for the first ``count`` val images, and a caption (or the reason there are none)."""
    from seg.inference import Predictor

    if row.stem is None or not weights_path(row.stem).is_file():
        return None, f"**{row.id}** has no checkpoint yet: it has not finished an epoch."
    data = _val_images(count)
    if data is None:
        return None, (
            "Sample predictions need the Stanford Background dataset, which was not found; set "
            "`SEG_DATA_DIR` to the folder that holds it."
        )
    try:
        if row.experiment == SHIPPED and store is not None:
            predictor = store.predictor(row.id)
        else:
            predictor = Predictor.from_checkpoint(row.stem)
    except ModelUnavailable as err:
        return None, f"**{row.id}** cannot be loaded: {err.reason}."
    except Exception as err:  # noqa: BLE001 - any broken file becomes a sentence
        log.warning("run %s failed to load: %s: %s", row.id, type(err).__name__, err)
        return None, f"**{row.id}** cannot be loaded: its checkpoint does not match its card or is damaged."
    palette = [tuple(c) for c in row.card.get("palette") or []] or None
    strips = []
    for i in range(len(data)):
        image = data.images[i].permute(1, 2, 0).numpy()
        pred = predictor.predict(image).label
        truth = data.masks[i].numpy()
        strips.append(
            hstack(
                [
                    image,
                    colorize(truth, palette) if palette else colorize(truth),
                    colorize(pred, palette) if palette else colorize(pred),
                ]
            )
        )
    score = _fmt(_metric(row.card, "val", "miou"))
    return vstack(strips), (
        f"**{row.id}**: val mIoU {score}; the first {len(strips)} val images, "
        "left to right: image | truth | prediction."
    )


# -- the tab ----------------------------------------------------------------------------------


def refresh(store: ModelStore | None, choice: str | None, key: str | None, root: str | Path | None = None):
    """Everything the tab shows for the experiment ``choice``: choices, table, curves, setting plot, note."""
    rows = collect(store, root)
    choices = experiment_choices(rows)
    choice = choice if choice in choices else ALL
    shown = filtered(rows, choice)
    keys = hyper_choices(shown)
    key = key if key in keys else (keys[0] if keys else None)
    if not rows:
        note = (
            "No runs yet. Run an experiment with `seglab experiment experiments/<file>.toml`; its runs appear "
            "here as they finish epochs."
        )
    else:
        note = f"{len(shown)} of {len(rows)} runs and checkpoints. Click a row to see its predictions."
    return (
        gr.update(choices=choices, value=choice),
        table_rows(shown),
        curves_figure(shown),
        gr.update(choices=keys, value=key),
        hyper_figure(shown, key),
        note,
    )


def keep_selection(drawn: tuple, choice: str | None, key: str | None) -> tuple:
    """``refresh``'s answer without the dropdown values that stay as they are (choices still updated)."""
    drawn = list(drawn)
    for slot, current in ((0, choice), (3, key)):
        update = drawn[slot]
        if isinstance(update, dict) and "value" in update and update["value"] == current:
            drawn[slot] = {k: v for k, v in update.items() if k != "value"}
    return tuple(drawn)


def build(store: ModelStore, root: str | Path | None = None) -> None:
    gr.Markdown(
        "Experiment runs (`runs/`) and the checkpoints (the shipped ones and any saved), compared by their "
        "cards. Runs appear as they finish epochs; the page checks for new ones every few seconds."
    )
    try:
        first = refresh(store, ALL, None, root)
    except Exception as err:  # noqa: BLE001 - the tab still builds; the timer retries
        log.warning("compare: the runs could not be read: %s: %s", type(err).__name__, err)
        first = (
            gr.update(choices=[ALL], value=ALL),
            [],
            curves_figure([]),
            gr.update(choices=[], value=None),
            hyper_figure([], None),
            "The runs could not be read; the page retries every few seconds.",
        )
    with gr.Row():
        experiment = gr.Dropdown(
            first[0].get("choices", [ALL]), value=ALL, label="Experiment", scale=3, elem_id="compare-experiment"
        )
        reload = gr.Button("Refresh", scale=1, elem_id="compare-refresh")
    note = gr.Markdown(first[5], elem_id="compare-note")
    table = gr.Dataframe(
        value=first[1] or None,
        headers=TABLE_HEADERS,
        label="Runs (click one for its predictions)",
        interactive=False,
        wrap=True,
        elem_id="compare-table",
    )
    curves = gr.Plot(first[2], label="Curves per epoch")
    with gr.Row():
        with gr.Column(scale=1, min_width=220):
            setting = gr.Dropdown(
                first[3].get("choices", []),
                value=first[3].get("value"),
                label="Setting against val mIoU",
                elem_id="compare-setting",
            )
        hyper = gr.Plot(first[4], label="Setting against val mIoU", scale=3)
    with gr.Row():
        samples = gr.Image(
            label="Predictions: image | truth | prediction",
            type="numpy",
            interactive=False,
            scale=3,
            elem_id="compare-samples",
        )
        caption = gr.Markdown(elem_id="compare-caption")
    signature = gr.State(runs_signature(root))
    outputs = [experiment, table, curves, setting, hyper, note]

    def update(choice: str | None, key: str | None):
        try:
            return refresh(store, choice, key, root)
        except Exception as err:  # noqa: BLE001 - a broken runs folder becomes a sentence
            log.warning("compare refresh failed: %s: %s", type(err).__name__, err)
            return (gr.skip(),) * 5 + ("The runs could not be read (a card may be half-written); try Refresh.",)

    def poll(seen: tuple):
        """Timer tick: only notes that the runs on disk changed; ``follow`` then redraws."""
        now = runs_signature(root)
        return gr.skip() if now == seen else now

    def follow(choice: str | None, key: str | None):
        """The runs changed on disk: redraw what the visitor is looking at. Its inputs are read when the
        tick has answered, not when it fired, so a pick made meanwhile is what gets drawn; and a pick
        that is still listed is never set again (a tick answering late would otherwise move it back)."""
        return keep_selection(update(choice, key), choice, key)

    def pick(choice: str | None, evt: gr.SelectData):
        rows = filtered(collect(store, root), choice)
        row_value = getattr(evt, "row_value", None)
        wanted = row_value[0] if row_value else None
        index = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        match = next((r for r in rows if r.id == wanted), None)
        if match is None and isinstance(index, int) and 0 <= index < len(rows):
            match = rows[index]
        if match is None:
            return None, "That run is no longer listed; press Refresh."
        return sample_predictions(match, store)

    experiment.change(update, [experiment, setting], outputs, api_visibility="private", show_progress="hidden")
    reload.click(update, [experiment, setting], outputs, api_visibility="private")
    setting.change(
        lambda choice, key: hyper_figure(filtered(collect(store, root), choice), key),
        [experiment, setting],
        hyper,
        api_visibility="private",
        show_progress="hidden",
    )
    table.select(pick, [experiment], [samples, caption], api_visibility="private")

    def compare_runs(experiment: str = ALL) -> dict:
        """The table of runs for one experiment ("all", an experiment's name or "checkpoints")."""
        return {"headers": TABLE_HEADERS, "data": table_rows(filtered(collect(store, root), experiment))}

    def compare_predictions(run: str) -> str:
        """Predict the first val images with run ``run`` ("<experiment>/<run>" or a checkpoint); the caption."""
        image, text = _predictions_by_id(store, root, run)
        return text if image is None else f"{text} ({image.shape[1]}x{image.shape[0]} px)"

    gr.api(compare_runs, api_name="compare_runs")
    gr.api(compare_predictions, api_name="compare_predictions")
    timer = gr.Timer(5.0)
    timer.tick(poll, [signature], [signature], api_visibility="private", show_progress="hidden")
    signature.change(follow, [experiment, setting], outputs, api_visibility="private", show_progress="hidden")


def _predictions_by_id(store: ModelStore | None, root: str | Path | None, run_id: str):
    """The API twin of clicking a row: predictions of the run or checkpoint named ``run_id``."""
    match = next((r for r in collect(store, root) if r.id == run_id), None)
    if match is None:
        return None, f"No run or checkpoint named {run_id!r} is listed."
    return sample_predictions(match, store)
