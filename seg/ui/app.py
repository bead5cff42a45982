"""Assemble the dashboard from the tab modules, and launch it.

Each tab lives in its own module with ``build(store)``; a tab that fails to build is
replaced by a message so that one broken part never stops the app from starting.
"""

from __future__ import annotations

import html
import importlib
import logging
import traceback
from pathlib import Path

import gradio as gr

from seg.config import REPO_ROOT
from seg.modelstore import ModelStore
from seg.ui.pickers import dropdown_update, take_watched
from seg.ui.queues import inference_concurrency

log = logging.getLogger("seg.ui")

#: (tab label, module under seg.ui, elem_id), in the order the tabs appear.
TABS: list[tuple[str, str, str]] = [
    ("Segment", "segment", "tab-segment"),
    ("Augment", "augment", "tab-augment"),
    ("Evaluate", "evaluate", "tab-evaluate"),
    ("Train", "train", "tab-train"),
    ("Instances", "instances", "tab-instances"),
    ("Label", "label", "tab-label"),
]

CSS_PATH = REPO_ROOT / "assets" / "app.css"
TITLE = "SegLab"


def _build_tab(module_name: str, store: ModelStore) -> None:
    """Import and build one tab; on failure show why instead of crashing the app."""
    try:
        module = importlib.import_module(f"seg.ui.{module_name}")
        module.build(store)
    except Exception as err:  # an absent or broken tab must not take the others down
        log.error("tab %s failed to build:\n%s", module_name, traceback.format_exc())
        missing = isinstance(err, ModuleNotFoundError) and (err.name or "").startswith("seg.ui.")
        if missing:
            gr.Markdown(f"This tab is not installed yet (`seg/ui/{module_name}.py`).")
        else:
            gr.Markdown(
                f"This tab could not be built: `{html.escape(type(err).__name__)}: "
                f"{html.escape(str(err))}`. The other tabs work."
            )


def build_app(
    checkpoint_dir: str | Path | None = None, store: ModelStore | None = None, preload: bool = True
) -> gr.Blocks:
    """The whole dashboard as a ``gr.Blocks`` (not launched); ``launch_kwargs()`` has its theme and CSS.

    ``preload`` loads every checkpoint before the UI is built, so broken ones are listed as
    unavailable (with the reason) instead of failing on first use.
    """
    store = store or ModelStore(checkpoint_dir)
    take_watched(store)  # a store reused for a second app starts with no dropdowns
    if preload:
        store.preload()
    # delete_cache: every hour, drop Gradio's cached uploads/outputs older than two hours.
    with gr.Blocks(title=TITLE, fill_width=True, delete_cache=(3600, 7200)) as demo:
        gr.Markdown(
            "# SegLab\nSemantic and instance segmentation on a CPU: segment, augment, "
            "evaluate, train, inspect instances and label.",
            elem_id="seg-header",
        )
        tabs = []
        with gr.Tabs():
            for label, module_name, elem_id in TABS:
                with gr.Tab(label, id=module_name, elem_id=elem_id) as tab:
                    _build_tab(module_name, store)
                tabs.append(tab)
        _wire_model_lists(tabs, store)
    demo.queue(default_concurrency_limit=inference_concurrency(), max_size=64)
    demo.seg_store = store  # type: ignore[attr-defined]  # tests and the bench reach the store
    return demo


def _wire_model_lists(tabs: list, store: ModelStore) -> None:
    """Refresh every model dropdown on page load and tab switch (new checkpoints appear)."""
    watched = take_watched(store)
    if not watched:
        return
    outputs = [w.component for w in watched]

    def refresh(*current):
        store.refresh()
        return [dropdown_update(store, w.task, w.multiselect, cur) for w, cur in zip(watched, current)]

    for tab in tabs:
        tab.select(
            refresh, inputs=outputs, outputs=outputs, api_visibility="private", queue=False, show_progress="hidden"
        )


def configure_torch_threads() -> int:
    """Intra-op threads for inference from ``SEG_UI_TORCH_THREADS`` (else torch's default); returns it.

    A knob rather than a fixed choice: on a 2-core CPU shared with training runs, one
    thread was far better in an isolated loop but no better through the app (bench/bench_app.py,
    four alternating runs), so the default is left to torch.
    """
    import os

    import torch

    env = os.environ.get("SEG_UI_TORCH_THREADS", "")
    if env.isdigit() and int(env) > 0:
        torch.set_num_threads(int(env))
    return torch.get_num_threads()


def launch_kwargs() -> dict:
    """Theme and CSS: in Gradio 6 they are ``launch()`` arguments, not ``Blocks`` ones."""
    css = CSS_PATH.read_text(encoding="utf-8") if CSS_PATH.is_file() else None
    # System fonts only: the default theme's Google fonts would be fetched by every browser,
    # and the dashboard must work offline.
    theme = gr.themes.Soft(
        primary_hue="blue", font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    return {"theme": theme, "css": css}
