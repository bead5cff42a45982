"""Train tab: start one training run, watch it live, stop it cleanly.

The run belongs to the process, not to a browser session: a background thread drives
the core's event generator (``seg.training.train``) and records its events
in ``RUN``. The user who clicks Start streams them; everyone else sees the same run
through a polling timer. Closing the page does not stop the run; Stop does (the engine
stops between steps and keeps the best checkpoint so far).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
import numpy as np
import plotly.graph_objects as go

from seg.classes import colorize
from seg.instances import INSTANCE_ARCHITECTURES
from seg.modelstore import ModelStore
from seg.render import hstack, vstack
from seg.ui.messages import missing_dataset_md
from seg.ui.queues import TRAIN_QUEUE
from seg.ui.samples import dataset_available
from seg.ui.style import TOP_LEGEND

log = logging.getLogger("seg.ui.train")

WEIGHTINGS = ["inverse_sqrt", "inverse", "none"]


@dataclass
class RunState:
    """What every session can see of the current (or last) run; replaced by each new run."""

    status: str = "idle"  # idle | running | stopping | done | stopped | failed
    name: str = ""
    config: dict = field(default_factory=dict)
    started: float = 0.0
    epochs: int = 0
    rows: list[dict] = field(default_factory=list)        # one per epoch
    steps: list[tuple[int, int, float]] = field(default_factory=list)  # (epoch, step, loss)
    samples: np.ndarray | None = None  # stacked sample predictions of the last epoch
    samples_epoch: int | None = None
    ended: float | None = None
    events: list[dict] = field(default_factory=list)      # light copies, for the API
    checkpoint: str | None = None
    error: str | None = None
    version: int = 0


class TrainingRun:
    """The process-wide single training run: start, stop, and a versioned snapshot to watch."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.state = RunState()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, config: Any, name: str, store: ModelStore) -> None:
        """Launch the run in a background thread; ``gr.Error`` when one is already running."""
        from seg.training import train

        with self._lock:
            if self.running:
                raise gr.Error(f"A training run ({self.state.name}) is already in progress; "
                               "one run at a time. Its curves are shown below.")
            self._stop = threading.Event()
            self.state = RunState(status="running", name=name, config=_public_config(config),
                                  started=time.time(), epochs=int(getattr(config, "epochs", 0)))
            stop = self._stop

            def work() -> None:
                try:
                    for event in train(config, stop):
                        self._record(event)
                except Exception as err:  # the run fails, the app keeps serving
                    log.error("training failed:\n%s", traceback.format_exc())
                    self._finish("failed", f"{type(err).__name__}: {err}")
                    return
                finally:
                    store.refresh()  # the new checkpoint appears in every tab's lists
                self._finish("stopped" if stop.is_set() else "done", None)

            self._thread = threading.Thread(target=work, name=f"train-{name}", daemon=True)
            self._thread.start()

    def stop(self) -> str:
        with self._lock:
            if not self.running:
                return "No training run is in progress."
            self._stop.set()
            self.state.status = "stopping"
            self._bump()
        return "Stopping after the current step; the best checkpoint so far is kept."

    def wait(self, version: int, timeout: float) -> int:
        """Block until the snapshot's version differs from ``version`` (or timeout); returns it."""
        with self._changed:
            self._changed.wait_for(lambda: self.state.version != version, timeout=timeout)
            return self.state.version

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    # -- called from the worker thread ------------------------------------------------
    def _bump(self) -> None:
        self.state.version += 1
        self._changed.notify_all()

    def _record(self, event: dict) -> None:
        kind = event.get("type")
        with self._lock:
            s = self.state
            light = {k: v for k, v in event.items() if k not in ("samples", "metrics", "curve")}
            if kind == "epoch":
                metrics = event.get("metrics") or {}
                light.update({k: metrics.get(k) for k in ("miou", "map", "pixel_accuracy")})
                s.rows.append({"epoch": event.get("epoch"), "train_loss": event.get("train_loss"),
                               "val_loss": event.get("val_loss"), "miou": metrics.get("miou"),
                               "map": metrics.get("map"), "pixel_accuracy": metrics.get("pixel_accuracy"),
                               "stage": event.get("stage")})
                tiles = _sample_tiles(event.get("samples") or [], event.get("epoch"))
                if tiles is not None:
                    s.samples, s.samples_epoch = tiles, event.get("epoch")
            elif kind == "step":
                s.steps.append((int(event.get("epoch") or 1), int(event.get("step") or 0),
                                float(event.get("loss", np.nan))))
            elif kind == "start":
                s.epochs = int(event.get("epochs") or s.epochs)
            elif kind == "done":
                s.checkpoint = event.get("checkpoint")
            s.events.append(_jsonable(light))
            self._bump()

    def _finish(self, status: str, error: str | None) -> None:
        with self._lock:
            self.state.status = status
            self.state.error = error
            self.state.ended = time.time()
            self._bump()


#: The one run of this process, shared by every browser session.
RUN = TrainingRun()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _public_config(config: Any) -> dict:
    from dataclasses import asdict, is_dataclass

    data = asdict(config) if is_dataclass(config) else dict(vars(config))
    data.pop("data_dir", None)  # do not show server paths to every visitor
    data["out"] = (data.get("out") or "").rsplit("/", 1)[-1]
    return _jsonable(data)


def _sample_tiles(samples: list[dict], epoch: Any = None) -> np.ndarray | None:
    """One picture: a row per validation sample (image | truth | prediction), rows stacked.

    """
    rows = []
    for smp in samples[:4]:
        try:
            image = np.asarray(smp["image"], dtype=np.uint8)
            rows.append(hstack([image, colorize(np.asarray(smp["truth"])), colorize(np.asarray(smp["pred"]))]))
        except (KeyError, ValueError, TypeError):
            continue
    return vstack(rows)


# -- views -----------------------------------------------------------------------------------
def loss_figure(s: RunState) -> go.Figure:
    fig = go.Figure()
    if s.steps:  # step losses at fractional epochs: epoch e spans (e-1, e]
        last_step: dict[int, int] = {}
        for e, k, _ in s.steps:
            last_step[e] = max(last_step.get(e, 0), k)
        xs = [e - 1 + (k + 1) / (last_step[e] + 1) for e, k, _ in s.steps]
        fig.add_scatter(x=xs, y=[y for _, _, y in s.steps], mode="lines", name="step loss",
                        line=dict(width=1, color="#9ab"))
    epochs = [r["epoch"] for r in s.rows]
    fig.add_scatter(x=epochs, y=[r["train_loss"] for r in s.rows], mode="lines+markers", name="train loss")
    fig.add_scatter(x=epochs, y=[r["val_loss"] for r in s.rows], mode="lines+markers", name="val loss")
    fig.update_layout(title="Loss", xaxis_title="epoch", height=300, margin=dict(l=40, r=10, t=60, b=40),
                      legend=TOP_LEGEND, xaxis_dtick=1)
    return fig


def metric_figure(s: RunState) -> go.Figure:
    fig = go.Figure()
    epochs = [r["epoch"] for r in s.rows]
    for key, label in (("miou", "val mIoU"), ("map", "val mAP"), ("pixel_accuracy", "val pixel acc")):
        fig.add_scatter(x=epochs, y=[r.get(key) for r in s.rows], mode="lines+markers", name=label)
    fig.update_layout(title="Validation", xaxis_title="epoch", yaxis_range=[0, 1], height=300,
                      margin=dict(l=40, r=10, t=60, b=40), legend=TOP_LEGEND, xaxis_dtick=1)
    return fig


def status_md(s: RunState) -> str:
    if s.status == "idle":
        return "No training run yet. One run at a time; everyone sees the current run here."
    done = len(s.rows)
    elapsed = (s.ended or time.time()) - s.started if s.started else 0
    last = s.rows[-1] if s.rows else {}
    text = (f"**{s.name}**: {s.status}, epoch {done}/{s.epochs}, {elapsed:.0f} s"
            + (f", last val mIoU {last['miou']:.3f}" if isinstance(last.get("miou"), (int, float)) else ""))
    if s.samples_epoch is not None:
        text += f"; samples from epoch {s.samples_epoch}"
    if s.checkpoint:
        text += f"\n\nBest checkpoint: `{s.checkpoint.rsplit('/', 1)[-1]}` (now listed in the other tabs)."
    if s.error:
        text += f"\n\n**Failed:** {s.error}"
    return text


def snapshot(s: RunState) -> tuple:
    return (status_md(s), loss_figure(s), metric_figure(s), s.samples, {"status": s.status, "name": s.name,
            "events": s.events[-50:], "checkpoint": s.checkpoint, "error": s.error, "config": s.config})


# -- actions -----------------------------------------------------------------------------------
def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", (text or "").strip()).strip("-.")[:60]


DATA_SBD = "Stanford Background"
DATA_LABELS = "My labels (labeling workspace)"


def make_config(store: ModelStore, model: str, epochs: float, lr: float, batch_size: float, crop: float,
                flip: float, weighting: str, frozen_epochs: float, encoder_init: str, limit: float,
                seed: float, name: str, data_source: str = DATA_SBD, workspace: str = ""):
    """Validate the form into a ``TrainConfig`` and a checkpoint name (``gr.Error`` on bad input)."""
    from seg.training import SemanticOptions, TrainConfig

    root = _training_root(data_source, workspace)
    if model not in semantic_architectures():
        raise gr.Error(f"Unknown model {model!r}.")
    epochs, batch_size, frozen = int(epochs or 0), int(batch_size or 0), int(frozen_epochs or 0)
    if not 1 <= epochs <= 500:
        raise gr.Error("Epochs must be between 1 and 500.")
    if not 1 <= batch_size <= 256:
        raise gr.Error("Batch size must be between 1 and 256.")
    if not (lr and 0 < float(lr) < 1):
        raise gr.Error("Learning rate must be in (0, 1).")
    if model == "resunet" and frozen >= epochs:
        raise gr.Error("Frozen epochs must be fewer than the total epochs.")
    name = _safe_name(name) or f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = store.directory / name
    if out.with_suffix(".json").exists() or out.with_suffix(".safetensors").exists():
        raise gr.Error(f"A checkpoint named {name!r} exists already; choose another name.")
    crop = float(crop)
    config = TrainConfig(
        model=model, data_dir=str(root), out=str(out), epochs=epochs, lr=float(lr), batch_size=batch_size,
        seed=int(seed or 0), encoder_init=encoder_init if model == "resunet" else "none",
        limit=int(limit) if limit else None,
        command=f"dashboard: train {model} epochs={epochs} lr={lr} batch={batch_size}",
        semantic=SemanticOptions(crop_fraction=(crop, 1.0) if crop < 1.0 else None, flip_p=float(flip),
                                 class_weighting=weighting, frozen_epochs=frozen if model == "resunet" else 0))
    return config, name


def _training_root(data_source: str, workspace: str):
    """The folder to train on: the SBD data root, or a labeling workspace (course layout)."""
    if data_source == DATA_LABELS:
        from seg.labeling import Workspace, WorkspaceError

        try:
            ws = Workspace((workspace or "").strip() or None)
            ws.check_trainable()
        except WorkspaceError as err:
            raise gr.Error(str(err)) from None
        return ws.root
    root = dataset_available("sbd")
    if root is None:
        raise gr.Error(missing_dataset_md("sbd", "Training"))
    return root


def semantic_architectures() -> list[str]:
    from seg.models import available

    return [m for m in available() if m not in INSTANCE_ARCHITECTURES]


def train_stream(store: ModelStore, *form) -> Iterator[tuple]:
    """API endpoint ``train``: start a run and stream snapshots until it ends."""
    config, name = make_config(store, *form)
    RUN.start(config, name, store)
    version = -1
    while True:
        version = RUN.wait(version, timeout=2.0)
        s = RUN.state
        finished = s.status in ("done", "stopped", "failed") or s.name != name
        yield snapshot(s)  # read ``finished`` first: the run may end while this yield is consumed
        if finished:
            break
    if RUN.state.status == "failed":
        raise gr.Error(f"Training failed: {RUN.state.error}")


def stop_training() -> str:
    """API endpoint ``train_stop``: the engine stops between steps and keeps the best checkpoint."""
    return RUN.stop()


def watch(seen: int | None):
    """Timer tick for every session: new snapshot only when the run changed."""
    s = RUN.state
    if seen == s.version:
        return (gr.skip(),) * 5 + (seen,)
    return snapshot(s) + (s.version,)


def build(store: ModelStore) -> None:
    """Components and events of the Train tab."""
    has_data = dataset_available("sbd") is not None
    archs = semantic_architectures()
    if not has_data:
        gr.Markdown(missing_dataset_md("sbd", "Training"))
    with gr.Row():
        with gr.Column(scale=1):
            model = gr.Dropdown(archs, value="unet" if "unet" in archs else (archs or [None])[0], label="Model",
                                elem_id="train-model")
            epochs = gr.Slider(1, 100, value=10, step=1, label="Epochs", elem_id="train-epochs")
            lr = gr.Number(2e-3, label="Learning rate")
            batch = gr.Slider(1, 64, value=8, step=1, label="Batch size")
            crop = gr.Slider(0.05, 1.0, value=0.25, step=0.05, label="Crop fraction (smallest crop area; 1 = no crop)")
            flip = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Flip probability")
            weighting = gr.Radio(WEIGHTINGS, value="inverse_sqrt", label="Class weights")
            with gr.Accordion("ResUNet schedule", open=False):
                frozen = gr.Slider(0, 50, value=2, step=1, label="Epochs with the encoder frozen (then unfrozen)")
                init = gr.Radio(["none", "imagenet"], value="none",
                                label="Encoder initialisation (ImageNet needs the weights in the torch cache)")
            with gr.Row():
                limit = gr.Number(0, precision=0, label="Max images per split (0 = all)",
                                  elem_id="train-limit")
                seed = gr.Number(0, precision=0, label="Seed")
            name = gr.Textbox(label="Checkpoint name", placeholder="default: <model>-<date>")
            with gr.Accordion("Training data", open=False):
                data_source = gr.Radio([DATA_SBD, DATA_LABELS], value=DATA_SBD, label="Train on",
                                       elem_id="train-data-source")
                workspace = gr.Textbox(value="", label="Labeling workspace (empty = the default workspace of "
                                       "the Label tab)", placeholder="~/.local/share/seglab/labels")
            with gr.Row():
                start = gr.Button("Start", variant="primary", elem_id="train-start")
                stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
        with gr.Column(scale=2):
            status = gr.Markdown(status_md(RUN.state), elem_id="train-status")
            with gr.Row():
                loss_plot = gr.Plot(label="Loss")
                metric_plot = gr.Plot(label="Validation")
            samples = gr.Image(label="Sample predictions on validation images, last epoch: image | truth | "
                               "prediction", type="numpy", interactive=False, elem_id="train-samples")
            events = gr.JSON(label="Run", visible=False)
    seen = gr.State(None)
    outputs = [status, loss_plot, metric_plot, samples, events]
    form = [model, epochs, lr, batch, crop, flip, weighting, frozen, init, limit, seed, name, data_source, workspace]
    def run_training(model: str, epochs: float, lr: float, batch_size: float, crop_fraction: float,
                     flip_p: float, class_weights: str, frozen_epochs: float, encoder_init: str,
                     max_images: float, seed: float, name: str, data_source: str = DATA_SBD,
                     workspace: str = ""):
        """API endpoint ``train``: streams (status, loss plot, validation plot, samples, run dict)."""
        yield from train_stream(store, model, epochs, lr, batch_size, crop_fraction, flip_p, class_weights,
                                frozen_epochs, encoder_init, max_images, seed, name, data_source, workspace)

    # Its own concurrency group, so following a run never takes an inference slot. The group
    # admits a few streams: the gate for "one run at a time" is RUN, which refuses a second
    # Start at once with a message instead of leaving the second user queued behind the first.
    start.click(run_training, form, outputs, api_name="train",
                concurrency_id=TRAIN_QUEUE, concurrency_limit=4)
    stop.click(stop_training, None, status, api_name="train_stop", queue=False)
    timer = gr.Timer(2.0)
    timer.tick(watch, seen, outputs + [seen], api_visibility="private", show_progress="hidden",
               concurrency_limit=None, queue=False)
