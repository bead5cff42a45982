"""Train tab: start a training run, watch it step by step, stop it cleanly.

A run belongs to the process, not to a browser tab: a background thread drives the core's event
generator (``seg.training.train``, a "step" event after every step) and records its events in a
``TrainingRun``. The person who clicks Start streams them; a polling timer shows the run to
everyone allowed to see it. Closing the page does not stop the run; Stop does: the engine checks
between steps, so it takes effect within a step, and it keeps the best checkpoint so far.

Who sees and stops what (``RunBoard``): locally there is one run at a time, everyone sees it and
anyone may stop it. In public mode each visitor sees only their own run, only they can stop it,
runs are bounded (epochs, images, wall time: ``seg.deploy``), at most a few run at once
(``seg.visitors.RunSlots``), and checkpoints go to the visitor's own folder. Nobody types a path:
the data is Stanford Background or a labeling workspace picked by name (or, in public mode, the
visitor's own).
"""

from __future__ import annotations

import contextlib
import html
import logging
import math
import re
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, is_dataclass
from functools import partial
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import plotly.graph_objects as go

from seg.cards import can_teach, jsonable, without_paths
from seg.classes import colorize
from seg.deploy import TrainingBounds
from seg.errors import UserError, user_message
from seg.instances import INSTANCE_ARCHITECTURES
from seg.labeling.workspace import DEFAULT_WORKSPACE_NAME, Workspace, WorkspaceError
from seg.memory import release_memory
from seg.render import hstack, vstack
from seg.resume import clear_state
from seg.ui.api import ModelChoice
from seg.ui.messages import missing_dataset_md, missing_dataset_text
from seg.ui.pickers import (
    Serving,
    VisitorStore,
    current_request,
    current_visitor_key,
    require_visitor_key,
    serving_of,
)
from seg.ui.pickers import watch as watch_dropdown
from seg.ui.queues import TRAIN_QUEUE
from seg.ui.samples import dataset_available
from seg.ui.style import TOP_LEGEND
from seg.visitors import RunClaim, visitor_digest

log = logging.getLogger("seg.ui.train")

WEIGHTINGS = ["inverse_sqrt", "inverse", "none"]
#: Upper bounds of the scale, rotation and loss levers the form offers.
MAX_ZOOM_OUT, MAX_ROTATE, MAX_LOVASZ = 2.0, 30.0, 2.0
#: the teacher dropdown's "no teacher" choice; the weight and temperature bounds of distillation
NO_TEACHER = "none"
MAX_DISTILL_WEIGHT, MIN_DISTILL_TEMPERATURE, MAX_DISTILL_TEMPERATURE = 5.0, 0.5, 10.0
DATA_SBD = "Stanford Background"
DATA_LABELS = "My labels (labeling workspace)"
#: Least time between two streamed snapshots: one a step would redraw the plots needlessly often.
STREAM_INTERVAL_S = 0.4
STREAM_STALE_S = 10.0  # a Start stream sends at least every ~2 s; silent this long, it is gone
FINISHED = ("done", "stopped", "failed")


@dataclass
class RunState:
    """What a viewer can see of a run (or of the last one); replaced by each new run."""

    status: str = "idle"  # idle | running | stopping | done | stopped | failed
    name: str = ""
    config: dict = field(default_factory=dict)
    started: float = 0.0
    epochs: int = 0
    rows: list[dict] = field(default_factory=list)  # one per epoch
    steps: list[tuple[int, int, float]] = field(default_factory=list)  # (epoch, step, loss)
    steps_per_epoch: int = 0
    samples: np.ndarray | None = None  # stacked sample predictions of the last epoch
    samples_epoch: int | None = None
    ended: float | None = None
    events: list[dict] = field(default_factory=list)  # light copies of the non-step events, for the API
    checkpoint: str | None = None
    error: str | None = None
    #: Plain words on how the run was bounded or why it stopped (public limits, the time limit).
    note: str = ""
    stop_asked: float | None = None
    version: int = 0


class TrainingRun:
    """One training run: start it, stop it, and a versioned snapshot to watch."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.state = RunState()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(
        self,
        config: Any,
        name: str,
        on_end: Callable[[], None] | None = None,
        *,
        max_seconds: float | None = None,
        note: str = "",
        log_every: int = 1,
    ) -> None:
        """Launch the run in a background thread; ``gr.Error`` when this one is still going.

        ``on_end`` runs when it ends however it ends, before the final status is shown (it lists the
        new checkpoint). ``max_seconds`` stops it between steps once that much time has passed.
        """
        from seg.training import train

        with self._lock:
            if self.running:
                raise gr.Error(
                    f"A training run ({self.state.name}) is already in progress; one run at a time. "
                    "Its curves are shown below."
                )
            self._stop = threading.Event()
            self.state = RunState(
                status="running",
                name=name,
                config=_public_config(config),
                started=time.time(),
                epochs=int(getattr(config, "epochs", 0)),
                note=note,
            )
            stop = self._stop

            def work() -> None:
                timer = threading.Timer(max_seconds, self._time_up) if max_seconds else None
                if timer is not None:
                    timer.daemon = True
                    timer.start()
                try:
                    for event in train(config, stop, log_every=log_every):
                        self._record(event)
                except Exception as err:  # the run fails, the app keeps serving
                    log.error("training %s failed:\n%s", name, traceback.format_exc())
                    self._finish("failed", user_message(err, "training"))
                    return
                finally:
                    if timer is not None:
                        timer.cancel()
                    if on_end is not None:
                        try:
                            on_end()
                        except Exception:  # noqa: BLE001 - listing checkpoints must not hide the run's end
                            log.exception("after training %s", name)
                    release_memory()  # the run's data and gradients: back to the OS, not kept by the heap
                self._finish("stopped" if stop.is_set() else "done", None)

            self._thread = threading.Thread(target=work, name=f"train-{name}", daemon=True)
            self._thread.start()

    def stop(self) -> str:
        with self._lock:
            if not self.running:
                return "No training run is in progress."
            self._stop.set()
            if self.state.status == "running":
                self.state.status = "stopping"
                self.state.stop_asked = time.time()
            self._bump()
        return "Stopping after the current step; the best checkpoint so far is kept."

    def _time_up(self) -> None:
        with self._lock:
            if not self.running or self._stop.is_set():
                return
            self.state.note = (self.state.note + " " if self.state.note else "") + (
                "The run reached its time limit, so it stopped; the best checkpoint so far is kept."
            )
        self.stop()

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
            if kind == "step":
                s.steps.append((int(event.get("epoch") or 1), int(event.get("step") or 0), _float(event.get("loss"))))
                s.steps_per_epoch = int(event.get("steps") or s.steps_per_epoch or 0)
                self._bump()
                return
            light = {k: v for k, v in event.items() if k not in ("samples", "metrics", "curve")}
            if kind == "epoch":
                metrics = event.get("metrics") or {}
                light.update({k: metrics.get(k) for k in ("miou", "map", "pixel_accuracy")})
                s.rows.append(
                    {
                        "epoch": event.get("epoch"),
                        "train_loss": event.get("train_loss"),
                        "val_loss": event.get("val_loss"),
                        "miou": metrics.get("miou"),
                        "map": metrics.get("map"),
                        "pixel_accuracy": metrics.get("pixel_accuracy"),
                        "stage": event.get("stage"),
                    }
                )
                tiles = _sample_tiles(event.get("samples") or [], event.get("epoch"))
                if tiles is not None:
                    s.samples, s.samples_epoch = tiles, event.get("epoch")
            elif kind == "start":
                s.epochs = int(event.get("epochs") or s.epochs)
            elif kind == "done":
                checkpoint = event.get("checkpoint")
                s.checkpoint = Path(checkpoint).name if checkpoint else None
                light["checkpoint"] = s.checkpoint
            s.events.append(jsonable(light, strict=True))
            self._bump()

    def _finish(self, status: str, error: str | None) -> None:
        with self._lock:
            self.state.status = status
            self.state.error = error
            self.state.ended = time.time()
            self._bump()


@dataclass
class _Follower:
    """A session following a run through its own Start: how many such streams, and when one last sent."""

    streams: int = 0
    beat_at: float = 0.0

    def beat(self) -> None:
        self.beat_at = time.monotonic()


class RunBoard:
    """Who starts, sees and stops which run (see the module docstring); one per built app."""

    def __init__(self, serving: Serving):
        self.serving = serving
        self._lock = threading.Lock()
        self.shared = TrainingRun()  # local mode: the one run everyone sees
        self._runs: dict[str, TrainingRun] = {}  # public mode: each visitor's latest run, by digest
        self._followers: dict[str, _Follower] = {}  # sessions following a run through their own Start

    @property
    def public(self) -> bool:
        return self.serving.public

    @contextlib.contextmanager
    def streaming(self, session: str | None) -> Iterator[Callable[[], None]]:
        """While ``session``'s Start streams a run, that session's timer stays quiet (``is_streaming``).
        Yields the beat to call at every snapshot sent: a stream silent for ``STREAM_STALE_S`` (a client
        gone without the generator being closed) no longer keeps the timer quiet."""
        if session is None:
            yield lambda: None
            return
        with self._lock:
            follower = self._followers.setdefault(session, _Follower())
            follower.streams += 1
            follower.beat()

        def beat() -> None:
            with self._lock:
                follower.beat()

        try:
            yield beat
        finally:
            with self._lock:
                follower.streams -= 1
                if not follower.streams:
                    del self._followers[session]

    def is_streaming(self, session: str | None) -> bool:
        with self._lock:
            follower = self._followers.get(session) if session is not None else None
            return follower is not None and time.monotonic() - follower.beat_at < STREAM_STALE_S

    def run_for_viewer(self) -> TrainingRun | None:
        """The run the asking person sees: the shared one locally, their own in public mode."""
        if not self.public:
            return self.shared
        key = current_visitor_key()
        if key is None:
            return None
        with self._lock:
            return self._runs.get(visitor_digest(key))

    def start(self, config: Any, name: str, store: Any, note: str = "") -> TrainingRun:
        """Start ``config``: refused with a plain sentence when a run (or a slot) is taken."""
        if not self.public:
            self.shared.start(config, name, store.refresh, note=note)
            return self.shared
        key = require_visitor_key()
        claim = self.serving.slots.claim(key, name)
        self._forget_old_runs()
        run = TrainingRun()
        try:
            run.start(
                config,
                name,
                partial(_after_public_run, store, config.out, self.serving, claim),
                max_seconds=self.serving.deployment.public_max_train_seconds,
                note=note,
            )
        except BaseException:
            self.serving.slots.release(claim)
            raise
        with self._lock:
            self._runs[claim.owner] = run
        return run

    def _forget_old_runs(self) -> None:
        """Drop finished runs of visitors whose space has expired by now (their curves and sample tiles)."""
        cutoff = time.time() - self.serving.deployment.visitor_expiry_s
        with self._lock:
            for owner, run in list(self._runs.items()):
                if not run.running and (run.state.ended or 0) < cutoff:
                    del self._runs[owner]

    def stop(self) -> str:
        """Stop the asker's run (public) or the run (local)."""
        if not self.public:
            return self.shared.stop()
        claim = self.serving.slots.check_stop(require_visitor_key())
        with self._lock:
            run = self._runs.get(claim.owner)
        return run.stop() if run is not None else "No training run is in progress."

    def busy_note(self) -> str:
        """For a public viewer without a run: how many of the server's training slots are taken."""
        active, limit = len(self.serving.slots.active()), self.serving.slots.limit
        if not active:
            return "No training run of yours yet."
        return f"No training run of yours yet; {active} of {limit} training slot(s) on this server are in use."


def _after_public_run(store: Any, out: str | None, serving: Serving, claim: RunClaim) -> None:
    """A public run ended: drop its resume state (no resuming here; it would eat the quota), list the
    checkpoint, free the slot."""
    try:
        if out:
            clear_state(out)
        store.refresh()
    finally:
        serving.slots.release(claim)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _public_config(config: Any) -> dict:
    """The run's settings as viewers see them: no server paths."""
    data = asdict(config) if is_dataclass(config) else dict(vars(config))
    data.pop("data_dir", None)
    data.pop("init_from", None)
    return without_paths(jsonable(data, strict=True))  # the checkpoint's and the teacher's folders: their names


def _sample_tiles(samples: list[dict], epoch: Any = None) -> np.ndarray | None:
    """One picture: a row per validation sample (image | truth | prediction), rows stacked."""
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
    """Step losses at fractional epochs (step k of n in epoch e sits at e - 1 + (k + 1) / n), epoch losses at e."""
    fig = go.Figure()
    if s.steps:
        per_epoch = max(1, s.steps_per_epoch or 1 + max(k for _, k, _ in s.steps))
        xs = [e - 1 + (k + 1) / per_epoch for e, k, _ in s.steps]
        ys = [y if math.isfinite(y) else None for _, _, y in s.steps]
        fig.add_scatter(x=xs, y=ys, mode="lines", name="step loss", line={"width": 1, "color": "#9ab"})
    epochs = [r["epoch"] for r in s.rows]
    fig.add_scatter(x=epochs, y=[r["train_loss"] for r in s.rows], mode="lines+markers", name="train loss")
    fig.add_scatter(x=epochs, y=[r["val_loss"] for r in s.rows], mode="lines+markers", name="val loss")
    fig.update_layout(
        title="Loss",
        xaxis_title="epoch",
        height=300,
        margin={"l": 40, "r": 10, "t": 60, "b": 40},
        legend=TOP_LEGEND,
        xaxis_dtick=1,
    )
    return fig


def metric_figure(s: RunState) -> go.Figure:
    fig = go.Figure()
    epochs = [r["epoch"] for r in s.rows]
    for key, label in (("miou", "val mIoU"), ("map", "val mAP"), ("pixel_accuracy", "val pixel acc")):
        fig.add_scatter(x=epochs, y=[r.get(key) for r in s.rows], mode="lines+markers", name=label)
    fig.update_layout(
        title="Validation",
        xaxis_title="epoch",
        yaxis_range=[0, 1],
        height=300,
        margin={"l": 40, "r": 10, "t": 60, "b": 40},
        legend=TOP_LEGEND,
        xaxis_dtick=1,
    )
    return fig


IDLE_TEXT = "No training run yet. One run at a time; everyone sees the current run here."


def stop_latency(s: RunState) -> float | None:
    """Seconds from pressing Stop to the run's end (the step in progress, then the best checkpoint kept)."""
    if s.status != "stopped" or s.stop_asked is None or s.ended is None:
        return None
    return max(0.0, s.ended - s.stop_asked)


def status_md(s: RunState, idle: str = IDLE_TEXT) -> str:
    if s.status == "idle":
        return idle
    done = len(s.rows)
    elapsed = (s.ended or time.time()) - s.started if s.started else 0
    last = s.rows[-1] if s.rows else {}
    text = f"**{html.escape(s.name)}**: {s.status}, {done} of {s.epochs} epochs done, {elapsed:.0f} s"
    if isinstance(last.get("miou"), (int, float)):
        text += f", last val mIoU {last['miou']:.3f}"
    if s.samples_epoch is not None:
        text += f"; samples from epoch {s.samples_epoch}"
    latency = stop_latency(s)
    if latency is not None:
        text += f"; stopped {latency:.1f} s after Stop was pressed"
    if s.note:
        text += f"\n\n{html.escape(s.note)}"
    if s.checkpoint:
        text += f"\n\nBest checkpoint: **{html.escape(s.checkpoint)}** (now listed in the other tabs)."
    elif s.status in ("done", "stopped"):
        text += "\n\nNo checkpoint was saved: the run stopped before its first validation."
    if s.error:
        text += f"\n\nThe run failed: {html.escape(s.error)}"
    return text


def progress_html(s: RunState) -> str:
    """The in-epoch progress bar: epoch, step, latest loss; then validation and stopping."""
    if s.status == "idle":
        return ""
    if s.status in FINISHED:
        return f'<div class="seg-train-progress" id="train-progress-text">Run {html.escape(s.status)}.</div>'
    epoch, step, loss = s.steps[-1] if s.steps else (1, -1, float("nan"))
    per_epoch = max(1, s.steps_per_epoch or 1)
    done_steps = min(per_epoch, step + 1)
    if s.status == "stopping":
        phase = "stopping after this step"
    elif len(s.rows) < epoch and done_steps >= per_epoch:
        phase = "validating"
    elif not s.steps:
        phase = "loading the data and the model"
    else:
        phase = "training"
    loss_text = f" · loss {loss:.4f}" if math.isfinite(loss) else ""
    return (
        f'<div class="seg-train-progress">'
        f'<progress value="{done_steps}" max="{per_epoch}" style="width:100%;height:14px" '
        f'aria-label="steps of this epoch"></progress>'
        f'<div id="train-progress-text">Epoch {epoch} of {max(s.epochs, epoch)}: step {done_steps} of {per_epoch}'
        f"{loss_text} · {phase}</div></div>"
    )


def snapshot(s: RunState, idle: str | None = None) -> tuple:
    info = {
        "status": s.status,
        "name": s.name,
        "events": s.events[-50:],
        "checkpoint": s.checkpoint,
        "error": s.error,
        "config": s.config,
        "step": s.steps[-1][1] if s.steps else None,
        "steps_per_epoch": s.steps_per_epoch,
        "stop_latency_s": None if (latency := stop_latency(s)) is None else round(latency, 2),
    }
    status = status_md(s) if idle is None else status_md(s, idle)
    return (status, progress_html(s), loss_figure(s), metric_figure(s), s.samples, info)


# -- the form ---------------------------------------------------------------------------------
def _safe_name(text: Any) -> str:
    text = text if isinstance(text, str) else ""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text.strip()).strip("-.")[:60]


def _whole(value: Any, what: str, low: int, high: int) -> int:
    """A whole number from a form field, or a plain refusal naming the field and its range."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number != int(number) or not low <= int(number) <= high:
        raise gr.Error(f"{what} must be a whole number between {low} and {high}.")
    return int(number)


def _any_whole(value: Any, what: str) -> int:
    try:
        number = float(value or 0)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number != int(number):
        raise gr.Error(f"{what} must be a whole number.")
    return int(number)


def _real(value: Any, what: str, low: float, high: float, open_low: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number > high or number < low or (open_low and number == low):
        raise gr.Error(f"{what} must be a number {'above' if open_low else 'from'} {low:g} up to {high:g}.")
    return number


@dataclass(frozen=True)
class PlannedRun:
    """A validated form: the run's config, its checkpoint name, and a note when limits cut it down."""

    config: Any
    name: str
    note: str = ""


def make_config(*form: Any, **kwargs: Any):
    """``plan_run`` as (config, checkpoint name)."""
    planned = plan_run(*form, **kwargs)
    return planned.config, planned.name


def plan_run(
    store: Any,
    model: str,
    epochs: float,
    lr: float,
    batch_size: float,
    crop: float,
    flip: float,
    weighting: str,
    frozen_epochs: float,
    encoder_init: str,
    limit: float,
    seed: float,
    name: str,
    data_source: str = DATA_SBD,
    workspace: Workspace | str | Path | None = None,
    bounds: Callable[[int, int | None], TrainingBounds] | None = None,
    zoom_out: float = 1.0,
    rotate: float = 0.0,
    lovasz: float = 0.0,
    distill_from: str | None = None,
    distill_weight: float = 1.0,
    distill_temperature: float = 2.0,
):
    """Validate the form into a ``PlannedRun`` (``gr.Error`` with a plain sentence on bad input).

    ``zoom_out``, ``rotate`` and ``lovasz`` are ``seglab train``'s ``--zoom-out``, ``--rotate`` and
    ``--lovasz``: the levers the shipped models' later rounds were trained with. ``distill_from``
    names a semantic model of ``store`` (never a path) for ``--distill-from``, with its weight and
    temperature.

    ``workspace`` is a ``Workspace`` the caller resolved, or a folder chosen by server code (never
    text from the page); ``bounds`` cuts epochs and images to the deployment's limits.
    """
    from seg.training import SemanticOptions, TrainConfig

    if model not in semantic_architectures():
        raise gr.Error("Choose one of the listed models.")
    epochs = _whole(epochs, "Epochs", 1, 500)
    batch_size = _whole(batch_size, "Batch size", 1, 256)
    frozen = _whole(frozen_epochs or 0, "Frozen epochs", 0, 500)
    limit = _whole(limit or 0, "Max images per split", 0, 1_000_000)
    seed = _any_whole(seed, "Seed") % 2**31  # any whole number is accepted; the generators take 31 bits
    lr = _real(lr, "Learning rate", 0.0, 1.0, open_low=True)
    crop = _real(crop, "Crop fraction", 0.05, 1.0)
    flip = _real(flip, "Flip probability", 0.0, 1.0)
    zoom_out = _real(1.0 if zoom_out is None else zoom_out, "Zoom out", 1.0, MAX_ZOOM_OUT)
    rotate = _real(rotate or 0.0, "Rotation", 0.0, MAX_ROTATE)
    lovasz = _real(lovasz or 0.0, "Lovasz weight", 0.0, MAX_LOVASZ)
    defaults = SemanticOptions()
    distill_weight = _real(
        defaults.distill_weight if distill_weight is None else distill_weight,
        "Distillation weight",
        0.0,
        MAX_DISTILL_WEIGHT,
    )
    distill_temperature = _real(
        defaults.distill_temperature if distill_temperature is None else distill_temperature,
        "Distillation temperature",
        MIN_DISTILL_TEMPERATURE,
        MAX_DISTILL_TEMPERATURE,
    )
    if weighting not in WEIGHTINGS:
        raise gr.Error("Choose one of the listed class weightings.")
    if encoder_init not in ("none", "imagenet"):
        raise gr.Error("Choose one of the listed encoder initialisations.")
    if model == "resunet" and frozen >= epochs:
        raise gr.Error("Frozen epochs must be fewer than the total epochs.")
    root = _training_root(data_source, workspace)
    teacher = _teacher_path(store, distill_from, root)
    note = ""
    if bounds is not None:
        cut = bounds(epochs, limit or None)
        epochs, limit, note = cut.epochs, cut.images or 0, cut.note
        if model == "resunet" and frozen >= epochs:
            frozen = max(0, epochs - 1)
    name = _safe_name(name) or f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = store.path_for_new(name)
    config = TrainConfig(
        model=model,
        data_dir=str(root),
        out=str(out),
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        encoder_init=encoder_init if model == "resunet" else "none",
        limit=limit or None,
        command=f"dashboard: train {model} epochs={epochs} lr={lr} batch={batch_size}"
        + _lever_words(zoom_out, rotate, lovasz)
        + (
            f" distill_from={distill_from} weight={distill_weight:g} temperature={distill_temperature:g}"
            if teacher
            else ""
        ),
        semantic=SemanticOptions(
            crop_fraction=(crop, 1.0) if crop < 1.0 else None,
            flip_p=flip,
            zoom_out=zoom_out,
            rotate=rotate,
            lovasz=lovasz,
            distill_from=teacher,
            distill_weight=distill_weight,
            distill_temperature=distill_temperature,
            class_weighting=weighting,
            frozen_epochs=frozen if model == "resunet" else 0,
        ),
    )
    return PlannedRun(config, name, note)


def _lever_words(zoom_out: float, rotate: float, lovasz: float) -> str:
    """The levers a run uses beyond the defaults, for its card's command line."""
    words = [
        (f"zoom_out={zoom_out:g}", zoom_out > 1.0),
        (f"rotate={rotate:g}", rotate > 0),
        (f"lovasz={lovasz:g}", lovasz > 0),
    ]
    return "".join(f" {w}" for w, used in words if used)


def _teacher_path(store: Any, name: Any, root: Path) -> str | None:
    """The checkpoint to distill, chosen by name among the semantic models this visitor sees (its path is
    the server's), refused in plain words when its classes are not the training data's; None for no teacher."""
    if name in (None, "", NO_TEACHER):
        return None
    if not isinstance(name, str) or name not in _teacher_names(store):
        raise gr.Error("Choose a listed model to learn from, or none.")
    from seg.data.sbd import read_classes

    entry, classes = store.entry(name), read_classes(root)
    if list((entry.card or {}).get("classes") or []) != list(classes):
        raise gr.Error(f"{name} knows other classes than this training data ({', '.join(classes)}): choose another.")
    return str(entry.path)


def _teacher_names(store: Any) -> list[str]:
    """No teacher, then every semantic model the visitor sees that can teach (``can_teach``), best first."""
    names = store.best("semantic", k=len(store.names("semantic")))
    return [NO_TEACHER, *(n for n in names if can_teach(store.card(n) or {}))]


def teacher_choices(store: Any, current: Any = None) -> dict:
    """The teacher dropdown after a refresh (``_teacher_names``), keeping a still-listed choice."""
    names = _teacher_names(store)
    return gr.update(choices=names, value=current if current in names else NO_TEACHER)


def _training_root(data_source: str, workspace: Workspace | str | Path | None) -> Path:
    """The folder to train on: the Stanford Background root, or a labeling workspace (course layout)."""
    if data_source == DATA_LABELS:
        try:
            ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace or None)
            ws.check_trainable()
        except WorkspaceError as err:
            raise gr.Error(str(err)) from None
        return ws.root
    if data_source != DATA_SBD:
        raise gr.Error("Choose what to train on from the list.")
    root = dataset_available("sbd")
    if root is None:
        raise gr.Error(missing_dataset_text("sbd", "Training"))
    return root


def semantic_architectures() -> list[str]:
    from seg.models import available

    return [m for m in available(trainable_only=True) if m not in INSTANCE_ARCHITECTURES]


def _chosen_workspace(serving: Serving, data_source: str, name: Any) -> Workspace | None:
    """The workspace a run trains on, resolved from a name (local) or the visitor (public); never a path."""
    if data_source != DATA_LABELS:
        return None
    if serving.visitors is not None:
        space = serving.visitors.existing(require_visitor_key())
        if space is None:
            raise UserError("Your workspace is empty: add and label images in the Label tab first.")
        return space.workspace
    return serving.labels.open(name or DEFAULT_WORKSPACE_NAME)


def train_stream(board: RunBoard, store: Any, *form: Any, workspace: Any = None, **levers: Any) -> Iterator[tuple]:
    """API endpoint ``train``: start a run and stream snapshots until it ends (``levers``: ``plan_run``'s
    ``zoom_out``, ``rotate``, ``lovasz`` and the ``distill_*`` settings)."""
    serving = board.serving
    data_source = form[12] if len(form) > 12 else DATA_SBD
    ws = _chosen_workspace(serving, data_source, workspace)
    if isinstance(store, VisitorStore):
        store = store.for_key(require_visitor_key(), create=True)
    bounds = serving.deployment.training_bounds if serving.public else None
    planned = plan_run(store, *form[:12], data_source, ws, bounds=bounds, **levers)
    name = planned.name
    run = board.start(planned.config, name, store, planned.note)
    with board.streaming(_session()) as beat:
        for shot in _follow(run, name):
            beat()
            yield shot
    if run.state.status == "failed":
        raise gr.Error(f"Training failed: {run.state.error}")


def _session() -> str | None:
    """The browser session (or API client) whose event is being served; None outside an event."""
    return getattr(current_request(), "session_hash", None)


def _follow(run: TrainingRun, name: str) -> Iterator[tuple]:
    """Snapshots of ``run`` at most every ``STREAM_INTERVAL_S``, and always its last one."""
    version, last = -1, 0.0
    while True:
        version = run.wait(version, timeout=2.0)
        s = run.state
        finished = s.status in FINISHED or s.name != name
        if not finished and time.monotonic() - last < STREAM_INTERVAL_S:
            time.sleep(STREAM_INTERVAL_S - (time.monotonic() - last))
            continue
        last = time.monotonic()
        yield snapshot(s)  # read ``finished`` first: the run may end while this yield is consumed
        if finished:
            break


def stop_training(board: RunBoard) -> str:
    """API endpoint ``train_stop``: the engine stops between steps and keeps the best checkpoint."""
    return board.stop()


def watch(board: RunBoard, seen: str | None):
    """Timer tick for every session: a new snapshot only when the run it may see changed, and none
    while the session's own Start streams the run (a tick answered after a newer streamed snapshot
    would show the older one; the stream's last snapshot is the run's last state)."""
    if board.is_streaming(_session()):
        return (gr.skip(),) * 7  # ``seen`` included: the tick changes nothing
    run = board.run_for_viewer()
    if run is None:
        marker = f"idle:{board.busy_note()}"
        if seen == marker:
            return (gr.skip(),) * 6 + (seen,)
        return snapshot(RunState(), idle=board.busy_note()) + (marker,)
    marker = f"{id(run)}:{run.state.version}"
    if seen == marker:
        return (gr.skip(),) * 6 + (seen,)
    return snapshot(run.state) + (marker,)


def build(store: Any) -> None:
    """Components and events of the Train tab."""
    serving = serving_of(store)
    board = RunBoard(serving)
    has_data = dataset_available("sbd") is not None
    archs = semantic_architectures()
    public = serving.public
    if not has_data:
        gr.Markdown(missing_dataset_md("sbd", "Training on Stanford Background"))
    if public:
        d = serving.deployment
        gr.Markdown(
            f"Runs here are limited to {d.public_max_epochs} epochs, {d.public_max_train_images} images per split "
            f"and {d.public_max_train_seconds / 60:g} minutes; {d.public_max_runs} may run at once. Your run and "
            f"its checkpoint are yours alone (the Label tab downloads them)."
        )
    sources = [DATA_SBD, DATA_LABELS] if has_data else [DATA_LABELS]
    with gr.Row():
        with gr.Column(scale=1):
            model = gr.Dropdown(
                archs,
                value="unet" if "unet" in archs else (archs or [None])[0],
                label="Model",
                elem_id="train-model",
            )
            # a public form starts within the limits, so what it shows is what a run gets
            most_epochs = serving.deployment.public_max_epochs if public else 100
            epochs = gr.Slider(  # a slider needs two ends; a limit of one epoch cuts a 2 with its note
                1, max(2, most_epochs), value=min(10, most_epochs), step=1, label="Epochs", elem_id="train-epochs"
            )
            lr = gr.Number(2e-3, label="Learning rate")
            batch = gr.Slider(1, 64, value=8, step=1, label="Batch size", elem_id="train-batch")
            crop = gr.Slider(0.05, 1.0, value=0.25, step=0.05, label="Crop fraction (smallest crop area; 1 = no crop)")
            flip = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Flip probability")
            weighting = gr.Radio(WEIGHTINGS, value="inverse_sqrt", label="Class weights")
            with gr.Accordion("Scale, rotation and loss", open=False):
                zoom_out = gr.Slider(
                    1.0,
                    MAX_ZOOM_OUT,
                    value=1.0,
                    step=0.1,
                    label="Zoom out up to (x the side; 1 = off)",
                    info="Half the time the image shrinks onto a larger canvas; the border is ignored.",
                    elem_id="train-zoom-out",
                )
                rotate = gr.Slider(
                    0, MAX_ROTATE, value=0, step=1, label="Rotation up to +- degrees", info="The corners are ignored."
                )
                lovasz = gr.Slider(
                    0.0,
                    MAX_LOVASZ,
                    value=0.0,
                    step=0.1,
                    label="Lovasz-softmax weight (0 = off)",
                    info="A differentiable surrogate of IoU, added to the weighted cross entropy.",
                )
            with gr.Accordion("Learn from a trained model (distillation)", open=False):
                teacher = ModelChoice(  # the visitor's own models count too: the handler checks the name
                    _teacher_names(store),
                    value=NO_TEACHER,
                    label="Teacher",
                    info="The new model also learns this model's softened answers, e.g. the ensemble's: "
                    "one fast model that learns from a slower, better one. Each step takes longer.",
                    elem_id="train-teacher",
                )
                watch_dropdown(store, teacher, choices=teacher_choices)  # refreshed on a tab switch too
                distill_weight = gr.Slider(
                    0.0, MAX_DISTILL_WEIGHT, value=1.0, step=0.1, label="Weight of the teacher's answers in the loss"
                )
                distill_temperature = gr.Slider(
                    MIN_DISTILL_TEMPERATURE,
                    MAX_DISTILL_TEMPERATURE,
                    value=2.0,
                    step=0.5,
                    label="Temperature",
                    info="Above 1 softens both models' answers, so the teacher's second choices count too.",
                )
            with gr.Accordion("ResUNet schedule", open=False):
                frozen = gr.Slider(0, 50, value=2, step=1, label="Epochs with the encoder frozen (then unfrozen)")
                init = gr.Radio(
                    ["none", "imagenet"],
                    value="none",
                    label="Encoder initialisation (ImageNet needs the weights in the torch cache)",
                )
            with gr.Row():
                most_images = serving.deployment.public_max_train_images if public else 0
                limit = gr.Number(
                    most_images,
                    precision=0,
                    label=f"Max images per split (at most {most_images} here)"
                    if public
                    else "Max images per split (0 = all)",
                    elem_id="train-limit",
                )
                seed = gr.Number(0, precision=0, label="Seed")
            name = gr.Textbox(label="Checkpoint name", placeholder="default: <model>-<date>", max_length=60)
            with gr.Accordion("Training data", open=not has_data):
                data_source = gr.Radio(sources, value=sources[0], label="Train on", elem_id="train-data-source")
                workspace = None
                if not public:
                    names = serving.labels.names()
                    workspace = gr.Dropdown(
                        names,
                        value=DEFAULT_WORKSPACE_NAME if DEFAULT_WORKSPACE_NAME in names else (names or [None])[0],
                        label="Labeling workspace (made in the Label tab)",
                        elem_id="train-workspace",
                        allow_custom_value=False,
                    )
            with gr.Row():
                start = gr.Button("Start", variant="primary", elem_id="train-start")
                stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
        with gr.Column(scale=2):
            idle = RunState()
            status = gr.Markdown(status_md(idle), elem_id="train-status")
            progress = gr.HTML(progress_html(idle), elem_id="train-progress")
            with gr.Row():
                loss_plot = gr.Plot(label="Loss")
                metric_plot = gr.Plot(label="Validation")
            samples = gr.Image(
                label="Sample predictions on validation images, last epoch: image | truth | prediction",
                type="numpy",
                interactive=False,
                elem_id="train-samples",
            )
            events = gr.JSON(label="Run", visible=False)
    seen = gr.State(None)
    outputs = [status, progress, loss_plot, metric_plot, samples, events]
    form = [model, epochs, lr, batch, crop, flip, weighting, frozen, init, limit, seed, name, data_source]
    # after the older inputs: positional API calls keep their meaning
    levers = [zoom_out, rotate, lovasz, teacher, distill_weight, distill_temperature]

    if workspace is not None:

        def run_training(
            model: str,
            epochs: float,
            lr: float,
            batch_size: float,
            crop_fraction: float,
            flip_p: float,
            class_weights: str,
            frozen_epochs: float,
            encoder_init: str,
            max_images: float,
            seed: float,
            name: str,
            data_source: str = DATA_SBD,
            workspace: str | None = None,
            zoom_out: float = 1.0,
            rotate: float = 0.0,
            lovasz: float = 0.0,
            distill_from: str = NO_TEACHER,
            distill_weight: float = 1.0,
            distill_temperature: float = 2.0,
        ):
            """API endpoint ``train``: streams (status, progress, loss plot, validation plot, samples, run dict)."""
            yield from train_stream(
                board,
                store,
                model,
                epochs,
                lr,
                batch_size,
                crop_fraction,
                flip_p,
                class_weights,
                frozen_epochs,
                encoder_init,
                max_images,
                seed,
                name,
                data_source,
                workspace=workspace,
                zoom_out=zoom_out,
                rotate=rotate,
                lovasz=lovasz,
                distill_from=distill_from,
                distill_weight=distill_weight,
                distill_temperature=distill_temperature,
            )

        inputs = [*form, workspace, *levers]
    else:

        def run_training(  # type: ignore[misc]  # public mode: no workspace argument at all
            model: str,
            epochs: float,
            lr: float,
            batch_size: float,
            crop_fraction: float,
            flip_p: float,
            class_weights: str,
            frozen_epochs: float,
            encoder_init: str,
            max_images: float,
            seed: float,
            name: str,
            data_source: str = DATA_SBD,
            zoom_out: float = 1.0,
            rotate: float = 0.0,
            lovasz: float = 0.0,
            distill_from: str = NO_TEACHER,
            distill_weight: float = 1.0,
            distill_temperature: float = 2.0,
        ):
            """API endpoint ``train``: streams (status, progress, loss plot, validation plot, samples, run dict)."""
            yield from train_stream(
                board,
                store,
                model,
                epochs,
                lr,
                batch_size,
                crop_fraction,
                flip_p,
                class_weights,
                frozen_epochs,
                encoder_init,
                max_images,
                seed,
                name,
                data_source,
                zoom_out=zoom_out,
                rotate=rotate,
                lovasz=lovasz,
                distill_from=distill_from,
                distill_weight=distill_weight,
                distill_temperature=distill_temperature,
            )

        inputs = [*form, *levers]

    # Its own concurrency group, so following a run never takes an inference slot. The group
    # admits a few streams: the gate is the board, which refuses a second Start at once with a
    # message instead of leaving the second person queued behind the first.
    start.click(run_training, inputs, outputs, api_name="train", concurrency_id=TRAIN_QUEUE, concurrency_limit=4)
    stop.click(partial(stop_training, board), None, status, api_name="train_stop", queue=False)
    timer = gr.Timer(2.0)
    timer.tick(
        partial(watch, board),
        seen,
        outputs + [seen],
        api_visibility="private",
        show_progress="hidden",
        concurrency_limit=None,
        queue=False,
    )
    # models trained since the page loaded (the visitor's own, in public mode) appear when the list is opened
    teacher.focus(partial(teacher_choices, store), teacher, teacher, api_visibility="private", queue=False)
    if workspace is not None:
        root_block = gr.context.Context.root_block
        if root_block is not None:  # new workspaces made in the Label tab appear in the list
            root_block.load(
                partial(_workspace_choices, serving), workspace, workspace, api_visibility="private", queue=False
            )
        # ...and those made since the page loaded, when the list is opened
        workspace.focus(
            partial(_workspace_choices, serving), workspace, workspace, api_visibility="private", queue=False
        )


def _workspace_choices(serving: Serving, current: str | None):
    names = serving.labels.names() if serving.labels is not None else []
    return gr.update(choices=names, value=current if current in names else (names or [None])[0])
