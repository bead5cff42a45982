"""What the app says when something cannot work: a missing dataset, no usable model, a refused request.

Two forms of each notice: Markdown for the page, and a plain sentence for an error message (a toast
shows Markdown markup as raw text). Neither names a server path: the page is seen by visitors.
``guard_events`` wraps every event handler of an app, so that whatever goes wrong reaches the
person as a plain sentence (``seg.errors``) and the log gets a traceback only for real faults.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
from collections.abc import Callable

import gradio as gr

from seg.config import DATASET_FOLDERS
from seg.errors import clean, log_error
from seg.modelstore import ModelStore

log = logging.getLogger("seg.ui")

#: The command that fetches each dataset.
DOWNLOAD_HINT = {
    "sbd": "python -m seg download sbd",
    "pennfudan": "python -m seg download pennfudan",
}
DATASET_NAMES = {"sbd": "Stanford Background", "pennfudan": "Penn-Fudan"}


def _folder(name: str) -> str:
    return DATASET_FOLDERS.get(name, name)


def missing_dataset_md(name: str, what: str) -> str:
    """The message a tab shows instead of a dataset-backed feature."""
    return (
        f"**{what} needs the {DATASET_NAMES[name]} dataset**, which was not found in the data root "
        f"(no `{_folder(name)}/` folder there). Get it with `{DOWNLOAD_HINT[name]}` (or set `SEG_DATA_DIR` "
        f"to a folder that holds it) and restart the app. Everything else works without it."
    )


def missing_dataset_text(name: str, what: str) -> str:
    """``missing_dataset_md`` as a plain sentence, for an error message."""
    return (
        f"{what} needs the {DATASET_NAMES[name]} dataset, which is not installed on this server "
        f"(its operator can add it with: {DOWNLOAD_HINT[name]})."
    )


def no_models_md(store: ModelStore, task: str = "semantic") -> str:
    """What to show when no usable model exists for ``task`` (and why, when some are broken)."""
    what = "semantic segmentation" if task == "semantic" else "instance (DWT/Mask R-CNN)"
    where = " or ".join(f"`{folder.label}/`" for folder in store.folders)
    text = (
        f"**No usable {what} checkpoint** in {where}. Train one in the Train tab "
        f"or with `python -m seg train`, then switch tabs to refresh the lists."
    )
    return text + ("\n\n" + store.describe() if store.unavailable() else "")


# -- errors for people, in every event ------------------------------------------------------------------
_MARKUP = re.compile(r"\*\*|__|`")


def _plain(err: gr.Error) -> gr.Error:
    """A handler's own ``gr.Error`` without Markdown markup, server paths or class names; logged at INFO."""
    text = clean(_MARKUP.sub("", str(err.message))) or "That did not work."
    return gr.Error(text, duration=err.duration, visible=err.visible, title=err.title, print_exception=False)


def _guarded(fn: Callable, action: str) -> Callable:
    """``fn`` with every exception turned into a ``gr.Error`` a person can read (generators too)."""

    def refuse(err: BaseException) -> gr.Error:
        if isinstance(err, gr.Error):
            plain = _plain(err)
            log.info("%s refused: %s", action, plain.message)
            return plain
        return gr.Error(log_error(log, err, action), print_exception=False)

    if inspect.isasyncgenfunction(fn) or inspect.iscoroutinefunction(fn):
        return fn  # none of the tabs has one; Gradio's own handling applies
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as err:
                raise refuse(err) from None

        return generator

    @functools.wraps(fn)
    def function(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            raise refuse(err) from None

    return function


def guard_events(demo: gr.Blocks) -> None:
    """Wrap every event handler of ``demo`` with ``_guarded`` (idempotent)."""
    for block_fn in demo.fns.values():
        fn = getattr(block_fn, "fn", None)
        if fn is None or getattr(fn, "_seg_guarded", False):
            continue
        name = block_fn.api_name or getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__", "")
        guarded = _guarded(fn, f"running {str(name).replace('_', ' ') or 'an action'}")
        guarded._seg_guarded = True  # type: ignore[attr-defined]
        block_fn.fn = guarded
