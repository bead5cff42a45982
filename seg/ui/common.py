"""Shared pieces of the dashboard: the model store, upload handling, overlays, messages.

Every tab imports from here instead of from each other, so one tab never copies
another's code. Nothing here re-implements core logic: decoding is ``seg.io``,
models are ``seg.checkpoints`` / ``seg.inference``, colours are ``seg.classes``.
"""

from __future__ import annotations

import html
import logging
import os
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import numpy as np
from PIL import Image

from seg.classes import SBD_CLASSES, SBD_PALETTE, colorize
from seg.config import REPO_ROOT, checkpoint_dir, dataset_dir
from seg.io import ImageLoadError, encode_png, label_to_png_image, load_image

log = logging.getLogger("seg.ui")

#: Longest side of an image the dashboard works on; bigger uploads are downscaled
#: before inference and display (CPU latency and browser payload stay bounded).
WORK_MAX_SIDE = 1024
#: Where generated example images live (made by ``assets/make_examples.py``).
EXAMPLES_DIR = REPO_ROOT / "assets" / "examples"
#: Per-process scratch folder for files handed to the browser (label PNGs, grids).
_SCRATCH = Path(tempfile.gettempdir()) / f"seglab-ui-{os.getpid()}"

# Concurrency ids: inference events share one queue slot pool sized for a small CPU,
# training has its own pool of one.
INFERENCE_QUEUE = "inference"
#: Plotly legend above the plot area (never over the x-axis title), shared by every figure.
TOP_LEGEND = dict(orientation="h", yanchor="bottom", y=1.02, x=0)
TRAIN_QUEUE = "training"


def inference_concurrency() -> int:
    """Concurrent inference jobs: one per two cores, at least 1, at most 4 (``SEG_UI_WORKERS`` overrides)."""
    env = os.environ.get("SEG_UI_WORKERS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(4, (os.cpu_count() or 2) // 2))


class ModelUnavailable(KeyError):
    """A model name that is unknown or whose checkpoint cannot be loaded; ``reason`` is user-facing."""

    def __init__(self, name: str, reason: str):
        super().__init__(name)
        self.name = name
        self.reason = reason

    def __str__(self) -> str:  # KeyError would quote the name
        return f"model {self.name!r} is unavailable: {self.reason}"


@dataclass
class ModelEntry:
    """One checkpoint as the UI sees it; ``error`` set means listed as unavailable."""

    name: str
    path: Path | None
    card: dict | None
    error: str | None

    @property
    def task(self) -> str:
        return str((self.card or {}).get("task", "semantic"))


class ModelStore:
    """Checkpoints on disk -> named, lazily loaded, cached predictors shared by all tabs.

    Thread-safe: Gradio runs event handlers on worker threads, so loading is guarded by a
    per-name lock (a model loads once even when eight clients ask at the same moment).
    A checkpoint that fails to list or load is kept in ``unavailable()`` with its reason
    instead of crashing the app.
    """

    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory) if directory else checkpoint_dir()
        self._lock = threading.RLock()
        self._load_locks: dict[str, threading.Lock] = {}
        self._entries: dict[str, ModelEntry] = {}
        self._predictors: dict[str, Any] = {}
        self._load_errors: dict[str, tuple[tuple, str]] = {}  # name -> (files' stamp, reason)
        self._stamps: dict[str, tuple] = {}  # name -> files' stamp when its predictor was loaded
        self._listeners: list[Callable[[], None]] = []
        #: Model dropdowns created by the tabs: (component, task, multiselect); ``build_app``
        #: refreshes their choices when a tab is opened, so a newly trained model shows up.
        self.dropdowns: list[tuple[Any, str, bool]] = []
        self.refresh()

    # -- listing -------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-scan the checkpoint folder (after training); keeps predictors whose file is unchanged."""
        entries: dict[str, ModelEntry] = {}
        try:
            from seg.checkpoints import list_checkpoints

            infos = list_checkpoints(self.directory)
        except Exception as err:  # core missing or folder unreadable: the app still starts
            log.warning("cannot list checkpoints in %s: %s", self.directory, err)
            infos = []
            entries["(checkpoints)"] = ModelEntry("(checkpoints)", None, None, f"cannot list {self.directory}: {err}")
        for info in infos:
            entry = ModelEntry(info.name, Path(info.path) if info.path else None, info.card, info.error)
            failed = self._load_errors.get(info.name)
            if entry.error is None and failed and failed[0] == _stamp(entry.path):
                entry.error = failed[1]  # same files that failed to load before: still unavailable
            entries[info.name] = entry
        with self._lock:
            self._entries = entries
            for name in list(self._predictors):
                loaded_stamp = self._stamps.get(name)
                if name not in entries or entries[name].error or loaded_stamp != _stamp(entries[name].path):
                    self._predictors.pop(name, None)  # gone, broken, or retrained in place
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:  # a listener must not break refresh for the others
                log.exception("model store listener failed")

    def on_refresh(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every ``refresh`` (the tabs use it to know lists changed)."""
        self._listeners.append(callback)

    def watch(self, dropdown: Any, task: str = "semantic", multiselect: bool = False) -> Any:
        """Register a model dropdown whose choices must follow ``refresh``; returns it."""
        self.dropdowns.append((dropdown, task, multiselect))
        return dropdown

    def names(self, task: str | None = "semantic") -> list[str]:
        """Available (listable, not known-broken) model names for ``task``; ``None`` = every task."""
        with self._lock:
            return sorted(n for n, e in self._entries.items()
                          if e.error is None and (task is None or e.task == task))

    def best(self, task: str = "semantic", k: int = 2) -> list[str]:
        """The ``k`` available models with the highest validation score on their cards
        (mIoU, or mask AP for instance models): sensible default selections."""
        def score(name: str) -> float:
            metrics = (self.card(name).get("val_metrics") or {})
            value = metrics.get("miou", metrics.get("mask_ap"))
            return float(value) if isinstance(value, (int, float)) else -1.0
        return sorted(self.names(task), key=lambda n: (-score(n), n))[:k]

    def unavailable(self) -> dict[str, str]:
        """name -> reason for every checkpoint the app cannot use."""
        with self._lock:
            return {n: e.error for n, e in sorted(self._entries.items()) if e.error}

    def entry(self, name: str) -> ModelEntry:
        with self._lock:
            entry = self._entries.get(name)
        if entry is None:
            raise ModelUnavailable(name, "no such checkpoint")
        if entry.error:
            raise ModelUnavailable(name, entry.error)
        return entry

    def card(self, name: str) -> dict:
        """The checkpoint's JSON card (metrics, classes, palette, curve...)."""
        return dict(self.entry(name).card or {})

    # -- loading -------------------------------------------------------------------
    def predictor(self, name: str) -> Any:
        """The cached predictor for ``name`` (``seg.inference.Predictor`` or the instance one).

        Raises ``ModelUnavailable``; a checkpoint that fails to load is marked unavailable
        with the reason so the next caller sees it in the model lists.
        """
        with self._lock:
            cached = self._predictors.get(name)
            if cached is not None:
                return cached
            lock = self._load_locks.setdefault(name, threading.Lock())
        entry = self.entry(name)
        with lock:
            with self._lock:
                cached = self._predictors.get(name)
            if cached is not None:
                return cached
            stamp = _stamp(entry.path)
            try:
                predictor = _load_predictor(entry)
            except ModelUnavailable:
                raise
            except Exception as err:
                reason = f"failed to load: {type(err).__name__}: {err}"
                log.warning("checkpoint %s: %s", name, reason)
                with self._lock:
                    self._load_errors[name] = (stamp, reason)
                    if name in self._entries:
                        self._entries[name].error = reason
                raise ModelUnavailable(name, reason) from None
            with self._lock:
                self._predictors[name] = predictor
                self._stamps[name] = stamp
            return predictor

    def preload(self) -> None:
        """Load every listed model now, so a corrupt checkpoint shows as unavailable from the start
        (its card alone may look fine) and the first request does not pay the loading time."""
        for name in self.names(None):
            try:
                self.predictor(name)
            except ModelUnavailable:
                pass  # recorded in unavailable() with the reason

    def describe(self) -> str:
        """Markdown listing of the unavailable models with reasons (empty when all load)."""
        bad = self.unavailable()
        if not bad:
            return ""
        lines = [f"- **{html.escape(n)}** unavailable: {html.escape(r)}" for n, r in bad.items()]
        return "\n".join(lines)


def _stamp(stem: Path | None) -> tuple:
    """Identity of a checkpoint's files (mtime and size of card and weights), to notice replacement."""
    if stem is None:
        return ()
    out = []
    for suffix in (".json", ".safetensors"):
        try:
            st = Path(stem).with_suffix(suffix).stat()
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


def _load_predictor(entry: ModelEntry) -> Any:
    if entry.path is None:
        raise ModelUnavailable(entry.name, "no checkpoint file")
    if entry.task == "instances":
        try:
            from seg.instances.inference import InstancePredictor
        except ImportError as err:
            raise ModelUnavailable(entry.name, f"instance segmentation code not installed ({err})") from None
        return InstancePredictor.from_checkpoint(entry.path)
    from seg.inference import Predictor

    return Predictor.from_checkpoint(entry.path)


def get_predictor(store: ModelStore, name: str | None) -> Any:
    """``store.predictor`` for event handlers: every failure becomes a ``gr.Error`` message."""
    if not name:
        raise gr.Error("Choose a model first.")
    try:
        return store.predictor(name)
    except ModelUnavailable as err:
        raise gr.Error(str(err)) from None


# -- uploads ---------------------------------------------------------------------------
def read_image(source: Any, what: str = "image") -> np.ndarray:
    """Decode an upload (file path, bytes, array) with ``seg.io.load_image``; user errors -> ``gr.Error``.

    Downscales to ``WORK_MAX_SIDE`` so a huge upload costs the same as a normal one.
    """
    if source is None or (isinstance(source, str) and not source):
        raise gr.Error(f"Upload an {what} or pick an example first.")
    if isinstance(source, dict):  # gr.File / ImageData payloads from the API
        source = source.get("path") or source.get("name")
    try:
        return load_image(source, max_side=WORK_MAX_SIDE)
    except ImageLoadError as err:
        message = str(err)
        if isinstance(source, (str, Path)):  # never show server-side temp paths
            message = message.replace(str(source), Path(source).name)
        raise gr.Error(f"Cannot read the {what}: {message}") from None
    except MemoryError:
        raise gr.Error(f"The {what} is too large to process.") from None


# -- pictures ----------------------------------------------------------------------------
def overlay(image: np.ndarray, label: np.ndarray, palette: list[tuple[int, int, int]] = SBD_PALETTE,
            alpha: float = 0.5, highlight: int | None = None) -> np.ndarray:
    """Blend the colourised label over the image; with ``highlight`` other classes are dimmed."""
    colours = colorize(label, palette).astype(np.float32)
    img = image.astype(np.float32)
    a = np.full(label.shape, float(alpha), dtype=np.float32)
    if highlight is not None:
        chosen = label == highlight
        a = np.where(chosen, max(float(alpha), 0.6), 0.0).astype(np.float32)
        img = np.where(chosen[..., None], img, img * 0.35)
    out = img * (1 - a[..., None]) + colours * a[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


def class_shares(label: np.ndarray, num_classes: int) -> np.ndarray:
    """Fraction of the image's pixels in each class (sums to 1)."""
    counts = np.bincount(np.asarray(label, dtype=np.int64).ravel(), minlength=num_classes)[:num_classes]
    return counts / max(1, int(label.size))


def legend_html(classes: list[str], palette: list[tuple[int, int, int]],
                shares: np.ndarray | None = None) -> str:
    """Colour swatches with class names (and shares); HTML-escaped because names come from cards."""
    items = []
    for i, name in enumerate(classes):
        r, g, b = palette[i] if i < len(palette) else (0, 0, 0)
        share = f" {shares[i] * 100:.1f}%" if shares is not None and i < len(shares) else ""
        items.append(f'<span class="seg-legend-item"><span class="seg-swatch" '
                     f'style="background:rgb({r},{g},{b})"></span>{html.escape(name)}{share}</span>')
    return '<div class="seg-legend">' + "".join(items) + "</div>"


def hstack(images: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """Same-height RGB images side by side with white gaps (pairs, error maps, samples)."""
    h = max(img.shape[0] for img in images)
    parts: list[np.ndarray] = []
    for k, img in enumerate(images):
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        if img.shape[0] != h:
            pad = np.full((h - img.shape[0], img.shape[1], 3), 255, np.uint8)
            img = np.concatenate([img, pad], axis=0)
        if k:
            parts.append(np.full((h, gap, 3), 255, np.uint8))
        parts.append(img.astype(np.uint8))
    return np.concatenate(parts, axis=1)


_scratch_calls = 0
#: Scratch files older than this are deleted (Gradio has copied them to its own cache by then).
SCRATCH_MAX_AGE_S = 3600


def scratch_path(suffix: str) -> Path:
    """A fresh, unique file path in this process's scratch folder (for downloads).

    Every 200th call sweeps entries older than an hour, so a long-running app does not fill /tmp.
    """
    global _scratch_calls
    _SCRATCH.mkdir(parents=True, exist_ok=True)
    _scratch_calls += 1
    if _scratch_calls % 200 == 0:
        _sweep_scratch()
    return _SCRATCH / f"{uuid.uuid4().hex}{suffix}"


def vstack(rows: list[np.ndarray], gap: int = 4) -> np.ndarray | None:
    """RGB images stacked top to bottom, narrower ones padded white on the right.

    Wide strips (image | truth | prediction) go in one picture rather than a gallery,
    whose cells are square and would shrink or crop them.
    """
    if not rows:
        return None
    width = max(r.shape[1] for r in rows)
    parts: list[np.ndarray] = []
    for k, r in enumerate(rows):
        if k:
            parts.append(np.full((gap, width, 3), 255, np.uint8))
        parts.append(np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255))
    return np.concatenate(parts, axis=0)


def _sweep_scratch() -> None:
    import shutil
    import time

    cutoff = time.time() - SCRATCH_MAX_AGE_S
    for entry in _SCRATCH.iterdir():
        try:
            if entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        except OSError:
            pass  # another request may be removing it too


def label_png(label: np.ndarray, palette: list[tuple[int, int, int]], stem: str = "label") -> str:
    """Write the class-id map as a palette PNG (pixel value = class id, atomically) and return its path."""
    path = scratch_path("") / f"{_safe(stem)}.png"  # unique folder, readable file name
    path.parent.mkdir(parents=True, exist_ok=True)
    write_scratch(path, encode_png(label_to_png_image(label, palette)))
    return str(path)


def write_scratch(path: Path, data: bytes) -> None:
    """Atomic (temp file + rename) but without fsync: scratch files are per-request and
    disposable, and an fsync per request would cost more than the inference on a busy disk."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:40] or "x"


def thumbnail(image: np.ndarray, max_side: int = 512) -> np.ndarray:
    """Downscale for display only (inference always sees the working image)."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    return np.asarray(Image.fromarray(image).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                    Image.BILINEAR))


def card_classes(card: dict | None) -> tuple[list[str], list[tuple[int, int, int]]]:
    """Class names and palette from a card, falling back to Stanford Background's."""
    card = card or {}
    classes = list(card.get("classes") or SBD_CLASSES)
    palette = [tuple(int(v) for v in c) for c in (card.get("palette") or SBD_PALETTE)]
    return classes, palette  # type: ignore[return-value]


# -- data and examples -------------------------------------------------------------------
DOWNLOAD_HINT = {
    "sbd": "python -m seg download sbd",
    "pennfudan": "python -m seg download pennfudan",
}
_PROBES = {"sbd": "images", "pennfudan": "PNGImages"}


def dataset_available(name: str) -> Path | None:
    """The dataset's folder when it is present under the data root, else ``None``."""
    try:
        root = dataset_dir(name)
    except ValueError:
        return None
    return root if (root / _PROBES[name]).is_dir() else None


def missing_dataset_md(name: str, what: str) -> str:
    """The message a tab shows instead of a dataset-backed feature."""
    pretty = {"sbd": "Stanford Background", "pennfudan": "Penn-Fudan"}[name]
    try:
        where = str(dataset_dir(name))
    except ValueError:
        where = "the data root"
    return (f"**{what} needs the {pretty} dataset**, which was not found at `{where}`. "
            f"Get it with `{DOWNLOAD_HINT[name]}` (or set `SEG_DATA_DIR` to a folder that holds it) "
            f"and restart the app. Everything else works without it.")


def example_images(kind: str = "scenes") -> list[str]:
    """Paths of the generated example images (``assets/examples/<kind>-*.png``)."""
    if not EXAMPLES_DIR.is_dir():
        return []
    return [str(p) for p in sorted(EXAMPLES_DIR.glob(f"{kind}-*.png"))]


def no_models_md(store: ModelStore, task: str = "semantic") -> str:
    """What to show when no usable model exists for ``task`` (and why, when some are broken)."""
    what = "semantic segmentation" if task == "semantic" else "instance (DWT/Mask R-CNN)"
    text = (f"**No usable {what} checkpoint** in `{store.directory.name}/`. Train one in the Train tab "
            f"or with `python -m seg train`, then switch tabs to refresh the lists.")
    return text + ("\n\n" + store.describe() if store.unavailable() else "")


def dropdown_update(store: ModelStore, task: str = "semantic", multiselect: bool = False,
                    current: Any = None) -> dict:
    """``gr.update`` for a model dropdown after a refresh, keeping still-valid selections."""
    names = store.names(task)
    if multiselect:
        keep = [c for c in (current or []) if c in names]
        return gr.update(choices=names, value=keep or store.best(task))
    return gr.update(choices=names, value=current if current in names else (names[0] if names else None))


# -- Stanford Background samples (shared by Segment, Augment, Evaluate) ------------------
_sample_cache: dict[str, dict] = {}
_sample_lock = threading.Lock()


def sbd_samples() -> dict:
    """id -> ``seg.data.sbd.Sample`` for the dataset under the data root (empty when absent); cached."""
    root = dataset_available("sbd")
    if root is None:
        return {}
    key = str(root)
    with _sample_lock:
        if key not in _sample_cache:
            from seg.data.sbd import list_samples

            try:
                _sample_cache[key] = {s.id: s for s in list_samples(root)}
            except (OSError, ValueError) as err:
                log.warning("cannot list Stanford Background at %s: %s", root, err)
                _sample_cache[key] = {}
        return _sample_cache[key]


def sbd_choices(splits: tuple[str, ...] = ("val", "test"), limit: int = 300) -> list[str]:
    """Dataset image ids for a picker ("id (split)" order: the given splits first)."""
    samples = sbd_samples()
    ids = [i for s in splits for i, smp in samples.items() if smp.split == s]
    return ids[:limit]


def load_sbd_sample(sample_id: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A dataset image (working size) and its class mask (None when unlabelled); ``gr.Error`` if unknown."""
    sample = sbd_samples().get(sample_id or "")
    if sample is None:
        raise gr.Error(f"No dataset image {sample_id!r}.")
    image = read_image(sample.image_path, "dataset image")
    mask = None
    if sample.label_path is not None:
        from seg.data.sbd import read_label

        mask = read_label(sample)
        if mask.shape != image.shape[:2]:
            mask = np.asarray(Image.fromarray(mask).resize((image.shape[1], image.shape[0]), Image.NEAREST))
    return image, mask
