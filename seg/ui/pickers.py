"""Who is asking, and which models they may pick: the app's serving settings, each visitor's model
store, dropdowns that follow the store, and predictors for event handlers.

Public mode has no logins to lean on, so a visitor is their browser session (or their Hugging Face
login when the Space enables OAuth): ``current_visitor_key`` reads it from the request Gradio is
serving. ``VisitorStore`` stands in for the model store in every tab: the shipped checkpoints,
read-only, plus the asking visitor's own folder on top, so one visitor never lists, loads or
overwrites another's checkpoints. The store (``seg.modelstore``) knows nothing of Gradio; this module
remembers which dropdowns list which task, so ``seg.ui.app`` can refresh their choices when a tab is
opened.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import gradio as gr

from seg.deploy import Deployment
from seg.labeling.workspace import LabelsRoot
from seg.modelstore import ModelStore, ModelUnavailable
from seg.visitors import RunSlots, VisitorError, VisitorRegistry, visitor_key


# -- how the app serves people -------------------------------------------------------------------
@dataclass
class Serving:
    """The deployment and the per-process objects that follow from it (one per built app)."""

    deployment: Deployment
    #: Local mode: the folder of named workspaces. Public mode: None (visitors never name one).
    labels: LabelsRoot | None
    #: Public mode: every visitor's own space. Local mode: None.
    visitors: VisitorRegistry | None
    #: Who may start and stop training runs.
    slots: RunSlots

    @classmethod
    def from_deployment(cls, deployment: Deployment) -> Serving:
        public = deployment.public
        return cls(
            deployment=deployment,
            labels=None if public else LabelsRoot(deployment.labels_root),
            visitors=VisitorRegistry.from_deployment(deployment) if public else None,
            slots=RunSlots.from_deployment(deployment),
        )

    @property
    def public(self) -> bool:
        return self.deployment.public


_serving: weakref.WeakKeyDictionary[Any, Serving] = weakref.WeakKeyDictionary()


def attach_serving(store: Any, serving: Serving) -> None:
    """Tie ``serving`` to the store a set of tabs is built with (``build(store)`` stays one argument)."""
    _serving[store] = serving


def serving_of(store: Any) -> Serving:
    """The serving settings of the app built with ``store``; a tab built alone gets them from the environment."""
    serving = _serving.get(store) if store is not None else None
    if serving is None:
        serving = Serving.from_deployment(Deployment.from_env())
        if store is not None:
            _serving[store] = serving
    return serving


# -- who is asking ------------------------------------------------------------------------------
_acting_as: ContextVar[str | None] = ContextVar("seg_acting_as", default=None)


def current_request() -> Any:
    """The ``gr.Request`` of the event being served on this thread (None outside an event)."""
    from gradio.context import LocalContext

    return LocalContext.request.get(None)


def oauth_username(request: Any) -> str | None:
    """The Hugging Face user name when the Space has OAuth and the visitor is logged in, else None.

    The app's own ``--auth`` login is deliberately not used: several people may share it.
    """
    try:
        session = request.session  # only present when the Space installs OAuth's session middleware
    except Exception:  # noqa: BLE001 - starlette asserts when there is no session at all
        return None
    info = session.get("oauth_info") if hasattr(session, "get") else None
    if not isinstance(info, dict):
        return None
    expires = info.get("expires_at")
    if isinstance(expires, (int, float)) and expires < time.time():
        return None
    name = (info.get("userinfo") or {}).get("preferred_username")
    return name if isinstance(name, str) and name.strip() else None


def current_visitor_key() -> str | None:
    """The key of the visitor whose event is being served (``seg.visitors.visitor_key``), or None."""
    forced = _acting_as.get()
    if forced:
        return forced
    request = current_request()
    if request is None:
        return None
    try:
        return visitor_key(getattr(request, "session_hash", None), oauth_username(request))
    except VisitorError:
        return None


def require_visitor_key() -> str:
    """``current_visitor_key`` or a plain refusal (an event sent without a session)."""
    key = current_visitor_key()
    if key is None:
        raise VisitorError("Your browser session could not be identified; reload the page.")
    return key


@contextmanager
def acting_as(key: str) -> Iterator[None]:
    """Serve as the visitor ``key`` outside a Gradio event (scripts and tests)."""
    token = _acting_as.set(key)
    try:
        yield
    finally:
        _acting_as.reset(token)


# -- each visitor's models ------------------------------------------------------------------------
class VisitorStore:
    """A model store per visitor, behind the one object the tabs are built with.

    Outside an event (building the page) it is the shipped store. Inside one, it is the asking
    visitor's overlay (``ModelStore.overlay``): the shipped folders read-only plus their own
    checkpoints folder, which holds what they trained. Visitors without a space see the shipped
    store, so merely looking never makes a folder. Overlays share the loaded models.
    """

    def __init__(self, base: ModelStore, visitors: VisitorRegistry):
        self.base = base
        self.visitors = visitors
        self._lock = threading.Lock()
        self._overlays: dict[str, ModelStore] = {}

    def for_key(self, key: str | None, create: bool = False) -> ModelStore:
        """The store of visitor ``key`` (made with their space when ``create``); the shipped one without."""
        if key is None:
            return self.base
        space = self.visitors.space(key) if create else self.visitors.existing(key)
        if space is None:
            return self.base
        with self._lock:
            store = self._overlays.get(space.digest)
            if store is None:
                store = self.base.overlay(space.checkpoints, label="your checkpoints")
                self._overlays[space.digest] = store
        return store

    def current(self) -> ModelStore:
        return self.for_key(current_visitor_key())

    def forget(self, digests: Iterable[str]) -> None:
        """Drop the overlays of spaces that were deleted (expired, or deleted by their visitor)."""
        with self._lock:
            for digest in digests:
                self._overlays.pop(digest, None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.current(), name)


# -- dropdowns that follow the store -----------------------------------------------------------------
@dataclass(frozen=True)
class WatchedDropdown:
    """A model dropdown built by a tab: the component, the task it lists, whether it is multiselect, and
    ``choices(store, current)`` for a list other than the task's models (e.g. "no teacher" first)."""

    component: Any
    task: str
    multiselect: bool
    choices: Callable[[Any, Any], dict] | None = None

    def update(self, store: Any, current: Any) -> dict:
        if self.choices is not None:
            return self.choices(store, current)
        return dropdown_update(store, self.task, self.multiselect, current)


_watched: weakref.WeakKeyDictionary[Any, list[WatchedDropdown]] = weakref.WeakKeyDictionary()


def watch(
    store: Any,
    dropdown: Any,
    task: str = "semantic",
    multiselect: bool = False,
    choices: Callable[[Any, Any], dict] | None = None,
) -> Any:
    """Register a model dropdown whose choices must follow ``store.refresh``; returns the dropdown."""
    _watched.setdefault(store, []).append(WatchedDropdown(dropdown, task, multiselect, choices))
    return dropdown


def take_watched(store: Any) -> list[WatchedDropdown]:
    """The dropdowns registered for ``store`` since the last call (one app's worth), forgetting them."""
    return _watched.pop(store, [])


def dropdown_update(store: Any, task: str = "semantic", multiselect: bool = False, current: Any = None) -> dict:
    """``gr.update`` for a model dropdown after a refresh, keeping still-valid selections.

    A selection that is still valid is not sent back: another event (the Label tab's queue timer
    choosing a freshly trained model) may have changed it since this refresh read it, and the
    newer value must win."""
    names = store.names(task)
    if multiselect:
        keep = [c for c in (current or []) if c in names]
        if keep and keep == list(current):
            return gr.update(choices=names)
        return gr.update(choices=names, value=keep or store.best(task))
    if current in names:
        return gr.update(choices=names)
    return gr.update(choices=names, value=names[0] if names else None)


TASK_WORDS = {"semantic": "a semantic model", "instances": "an instance model (DWT or Mask R-CNN)"}


def get_predictor(store: Any, name: str | None, task: str | None = None) -> Any:
    """``store.predictor`` for event handlers: every failure becomes a ``gr.Error`` message.

    ``task``: the kind of model the event works with; a listed model of the other kind is refused.
    """
    if not name or not isinstance(name, str):
        raise gr.Error("Choose a model first.")
    if task is not None and name not in store.names(task) and name in store.names(None):
        raise gr.Error(f"{name} cannot be used here; choose {TASK_WORDS.get(task, 'another model')}.")
    try:
        return store.predictor(name)
    except ModelUnavailable as err:
        raise gr.Error(str(err)) from None
