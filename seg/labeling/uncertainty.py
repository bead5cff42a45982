"""Uncertainty first: which unlabelled images of a workspace its own model is least sure about.

Labelling the images a model finds hardest teaches it most per mask drawn (active learning).
An image's score is the mean over its pixels of the model's uncertainty, in 0..1:

* ``entropy``: the class distribution's entropy divided by log(classes), 1 = all classes equally likely;
* ``margin``: 1 - (top probability - second probability), 1 = the two best classes tie.

The model is the newest checkpoint trained on the workspace (its card's ``config.data_dir`` is the
workspace's folder), so the ranking follows the latest run. ``UncertaintyRanker`` computes rankings
in a background thread, one workspace at a time, and keeps the last one per workspace tagged with
the checkpoint it came from: a newer checkpoint (the end of a training run) or newly imported
images start a recomputation, and nobody ever waits for one. The model runs at its own input size
(the size it was trained at), which is what its uncertainty means and keeps a pass cheap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from seg.cards import card_path, weights_path
from seg.labeling.workspace import Workspace

log = logging.getLogger("seg.labeling.uncertainty")

METHODS = ("entropy", "margin")
#: At most this many unlabelled images are scored per ranking (the rest wait for the next one).
MAX_IMAGES = 5000


class ModelSource(Protocol):
    """What the ranker needs of a model store (``seg.modelstore.ModelStore`` is one)."""

    def names(self, task: str | None = "semantic") -> list[str]: ...
    def card(self, name: str) -> dict: ...
    def entry(self, name: str) -> Any: ...
    def predictor(self, name: str) -> Any: ...


# -- scores ----------------------------------------------------------------------------------------
def entropy_map(probs: np.ndarray) -> np.ndarray:
    """(C, H, W) class probabilities -> (H, W) entropy / log(C) in 0..1 (0 for a single class)."""
    probs = np.asarray(probs, dtype=np.float64)
    classes = probs.shape[0]
    if classes < 2:
        return np.zeros(probs.shape[1:], dtype=np.float64)
    p = np.clip(probs, 1e-12, 1.0)
    return np.clip(-(probs * np.log(p)).sum(axis=0) / np.log(classes), 0.0, 1.0)


def margin_map(probs: np.ndarray) -> np.ndarray:
    """(C, H, W) class probabilities -> (H, W) 1 - (best - second best) in 0..1."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape[0] < 2:
        return np.zeros(probs.shape[1:], dtype=np.float64)
    top2 = np.partition(probs, probs.shape[0] - 2, axis=0)[-2:]
    return np.clip(1.0 - (top2[1] - top2[0]), 0.0, 1.0)


def image_score(probs: np.ndarray, method: str = "entropy") -> float:
    """The mean per-pixel uncertainty of one image's (C, H, W) probabilities."""
    if method not in METHODS:
        raise ValueError(f"unknown uncertainty method {method!r}; choose one of {', '.join(METHODS)}")
    per_pixel = entropy_map(probs) if method == "entropy" else margin_map(probs)
    return float(per_pixel.mean()) if per_pixel.size else 0.0


def model_probabilities(predictor: Any, image: np.ndarray) -> np.ndarray:
    """(C, h, w) probabilities of a semantic ``seg.inference.Predictor`` at its own input size."""
    import torch

    from seg.inference import prepare_input

    x = prepare_input(image, predictor.input_size)
    logits = predictor.predict_logits_batch(x)[0]
    return torch.softmax(logits.float(), dim=0).numpy()


# -- which model ------------------------------------------------------------------------------------
def _resolved(path: Any) -> Path | None:
    try:
        return Path(str(path)).expanduser().resolve() if path else None
    except (OSError, RuntimeError, ValueError):
        return None


def _stamp(entry: Any) -> float:
    """When a checkpoint was written (its file's modification time); 0 when unknown."""
    path = getattr(entry, "path", None)
    if path is None:
        return 0.0
    for candidate in (Path(path), weights_path(path), card_path(path)):
        try:
            return candidate.stat().st_mtime
        except OSError:
            continue
    return 0.0


def workspace_models(store: ModelSource, root: str | Path) -> list[tuple[str, float]]:
    """(name, written at) of the semantic checkpoints trained on the workspace at ``root``, newest first."""
    root = _resolved(root)
    found = []
    for name in store.names("semantic"):
        try:
            card = store.card(name)
            entry = store.entry(name)
        except (KeyError, ValueError):
            continue
        config = card.get("config") if isinstance(card.get("config"), dict) else {}
        if root is not None and _resolved(config.get("data_dir")) == root:
            found.append((name, _stamp(entry)))
    return sorted(found, key=lambda item: (-item[1], item[0]))


def latest_workspace_model(store: ModelSource, root: str | Path) -> str | None:
    """The newest checkpoint trained on the workspace at ``root``, or None when there is none."""
    models = workspace_models(store, root)
    return models[0][0] if models else None


# -- rankings ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ranking:
    """Scores of a workspace's unlabelled images by one checkpoint (``state``: ready, computing, failed)."""

    model: str | None
    model_stamp: float
    method: str
    scores: dict[str, float] = field(default_factory=dict)
    #: The unlabelled images when the ranking started (an image imported later makes it stale).
    candidates: frozenset[str] = frozenset()
    state: str = "ready"
    done: int = 0
    computed_at: float = 0.0
    message: str = ""

    def ordered(self, unlabelled: Sequence[str] | None = None) -> list[tuple[str, float]]:
        """(image, score), most uncertain first; only images still in ``unlabelled`` when given."""
        keep = set(unlabelled) if unlabelled is not None else None
        items = [(n, s) for n, s in self.scores.items() if keep is None or n in keep]
        return sorted(items, key=lambda item: (-item[1], item[0]))


def rank_images(
    ws: Workspace,
    predictor: Any,
    names: Sequence[str],
    method: str = "entropy",
    progress: Callable[[dict[str, float]], None] | None = None,
    stop: threading.Event | None = None,
) -> tuple[dict[str, float], list[str]]:
    """Score ``names`` of ``ws`` with ``predictor``: (scores, images that could not be read)."""
    scores: dict[str, float] = {}
    failed: list[str] = []
    for name in names:
        if stop is not None and stop.is_set():
            break
        try:
            image = ws.load(name).image
            scores[name] = round(image_score(model_probabilities(predictor, image), method), 6)
        except (OSError, ValueError, KeyError) as err:
            log.info("uncertainty: %s skipped (%s)", name, err)
            failed.append(name)
        if progress is not None:
            progress(dict(scores))
    return scores, failed


class UncertaintyRanker:
    """Rankings per workspace, computed in the background (see the module docstring).

    ``request(ws, store)`` is cheap and never blocks: it returns the ranking there is (or None) and,
    when the newest workspace checkpoint or the set of unlabelled images changed since, starts one
    background computation for that workspace. ``attach(store)`` also requests for every workspace
    seen so far whenever the store is refreshed (the end of a training run refreshes it).
    """

    def __init__(self, method: str = "entropy", max_images: int = MAX_IMAGES):
        if method not in METHODS:
            raise ValueError(f"unknown uncertainty method {method!r}")
        self.method = method
        self.max_images = max_images
        self._lock = threading.Lock()
        self._rankings: dict[str, Ranking] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._seen: dict[str, tuple[Workspace, ModelSource]] = {}
        self._attached: set[int] = set()

    def attach(self, store: Any) -> None:
        """Recompute the rankings of the workspaces seen so far after each ``store.refresh``."""
        on_refresh = getattr(store, "on_refresh", None)
        if on_refresh is None or id(store) in self._attached:
            return
        self._attached.add(id(store))
        on_refresh(self._refreshed)

    def _refreshed(self) -> None:
        with self._lock:
            for key in [k for k, (ws, _) in self._seen.items() if not ws.root.is_dir()]:
                del self._seen[key]  # a deleted workspace (an expired visitor's) is forgotten
                self._rankings.pop(key, None)
            seen = list(self._seen.values())
        for ws, store in seen:
            try:
                self.request(ws, store)
            except Exception:  # noqa: BLE001 - a listener must never break the store's refresh
                log.exception("uncertainty request for %s failed", ws.root.name)

    def ranking(self, root: str | Path) -> Ranking | None:
        with self._lock:
            return self._rankings.get(str(Path(root)))

    def busy(self, root: str | Path) -> bool:
        with self._lock:
            thread = self._threads.get(str(Path(root)))
        return thread is not None and thread.is_alive()

    def request(self, ws: Workspace, store: ModelSource) -> Ranking | None:
        """The current ranking of ``ws``; starts a background recomputation when it is stale."""
        key = str(ws.root)
        with self._lock:
            self._seen[key] = (ws, store)
        models = workspace_models(store, ws.root)
        if not models:
            return self.ranking(ws.root)
        model, stamp = models[0]
        unlabelled = [it.name for it in ws.items() if not it.labelled]
        with self._lock:
            current = self._rankings.get(key)
            thread = self._threads.get(key)
            if thread is not None and thread.is_alive():
                return current
            stale = (
                current is None
                or (current.model, current.model_stamp) != (model, stamp)
                or not set(unlabelled[: self.max_images]) <= current.candidates
            )
            if not stale:
                return current
            started = Ranking(
                model,
                stamp,
                self.method,
                scores=dict(current.scores) if current is not None and current.model_stamp == stamp else {},
                candidates=frozenset(unlabelled[: self.max_images]),
                state="computing",
                computed_at=time.time(),
            )
            self._rankings[key] = started
            thread = threading.Thread(
                target=self._compute, args=(ws, store, started), name=f"uncertainty-{ws.root.name}", daemon=True
            )
            self._threads[key] = thread
        thread.start()
        return started

    def wait(self, root: str | Path, timeout: float | None = None) -> Ranking | None:
        """Block until the background computation for ``root`` (if any) ends; returns the ranking."""
        with self._lock:
            thread = self._threads.get(str(Path(root)))
        if thread is not None:
            thread.join(timeout)
        return self.ranking(root)

    def _compute(self, ws: Workspace, store: ModelSource, started: Ranking) -> None:
        key = str(ws.root)

        def progress(scores: dict[str, float]) -> None:
            with self._lock:
                if self._rankings.get(key) is not None and self._rankings[key].model_stamp == started.model_stamp:
                    self._rankings[key] = replace(self._rankings[key], done=len(scores))

        try:
            predictor = store.predictor(started.model)
            known = {n: v for n, v in started.scores.items() if n in started.candidates}  # same checkpoint
            fresh, failed = rank_images(ws, predictor, sorted(started.candidates - set(known)), self.method, progress)
            scores = {**known, **fresh}
            message = f"{len(failed)} image(s) could not be read" if failed else ""
            result = replace(
                started, scores=scores, state="ready", done=len(scores), computed_at=time.time(), message=message
            )
        except Exception:  # noqa: BLE001 - a failed ranking is reported, the app keeps serving
            log.exception("uncertainty ranking of %s with %s failed", ws.root.name, started.model)
            result = replace(started, state="failed", message="the model could not score the images")
        with self._lock:
            self._rankings[key] = result
        log.info("uncertainty: %s ranked by %s (%d images)", ws.root.name, started.model, len(result.scores))
