"""Model choosers: dropdowns that follow the model store, and predictors for event handlers.

The store (``seg.modelstore``) knows nothing of Gradio; this module remembers which dropdowns
list which task, so ``seg.ui.app`` can refresh their choices when a tab is opened.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import gradio as gr

from seg.modelstore import ModelStore, ModelUnavailable


@dataclass(frozen=True)
class WatchedDropdown:
    """A model dropdown built by a tab: the component, the task it lists, whether it is multiselect."""

    component: Any
    task: str
    multiselect: bool


_watched: weakref.WeakKeyDictionary[ModelStore, list[WatchedDropdown]] = weakref.WeakKeyDictionary()


def watch(store: ModelStore, dropdown: Any, task: str = "semantic", multiselect: bool = False) -> Any:
    """Register a model dropdown whose choices must follow ``store.refresh``; returns the dropdown."""
    _watched.setdefault(store, []).append(WatchedDropdown(dropdown, task, multiselect))
    return dropdown


def take_watched(store: ModelStore) -> list[WatchedDropdown]:
    """The dropdowns registered for ``store`` since the last call (one app's worth), forgetting them."""
    return _watched.pop(store, [])


def dropdown_update(store: ModelStore, task: str = "semantic", multiselect: bool = False, current: Any = None) -> dict:
    """``gr.update`` for a model dropdown after a refresh, keeping still-valid selections."""
    names = store.names(task)
    if multiselect:
        keep = [c for c in (current or []) if c in names]
        return gr.update(choices=names, value=keep or store.best(task))
    return gr.update(choices=names, value=current if current in names else (names[0] if names else None))


def get_predictor(store: ModelStore, name: str | None) -> Any:
    """``store.predictor`` for event handlers: every failure becomes a ``gr.Error`` message."""
    if not name:
        raise gr.Error("Choose a model first.")
    try:
        return store.predictor(name)
    except ModelUnavailable as err:
        raise gr.Error(str(err)) from None
