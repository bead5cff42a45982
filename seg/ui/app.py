"""Assemble the dashboard from the tab modules, and launch it (``seglab-app``, ``python app.py``).

Each tab lives in its own module with ``build(store)``; a tab that fails to build is
replaced by a message so that one broken part never stops the app from starting.

How the app is deployed (``seg.deploy``) decides what the tabs are built with: in local mode the
model store itself and a labels root of named workspaces; in public mode a per-visitor model store
(``seg.ui.pickers.VisitorStore``) over read-only shipped checkpoints, a space per visitor that
expires, and bounded training. Every event handler is wrapped once here (``guard_events``) so
that whatever goes wrong reaches the person as a plain sentence (``seg.errors``) and the operator's
log gets a traceback only for real faults.
"""

from __future__ import annotations

import argparse
import gc
import html
import importlib
import logging
import os
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import gradio as gr

from seg.config import REPO_ROOT, checkpoint_dir
from seg.deploy import Deployment, DeploymentError, add_arguments, describe
from seg.errors import clean, register_expected
from seg.memory import limit_malloc_arenas, release_memory
from seg.modelstore import CheckpointFolder, CheckpointNameTaken, ModelStore, ModelUnavailable, ReadOnlyStore
from seg.ui.api import build_api
from seg.ui.messages import guard_events
from seg.ui.pickers import Serving, VisitorStore, attach_serving, take_watched
from seg.ui.queues import inference_concurrency
from seg.ui.uploads import claim_upload_folder

log = logging.getLogger("seg.ui")
register_expected(ModelUnavailable, CheckpointNameTaken, ReadOnlyStore)

#: (tab label, module under seg.ui, elem_id), in the order the tabs appear.
TABS: list[tuple[str, str, str]] = [
    ("Segment", "segment", "tab-segment"),
    ("Augment", "augment", "tab-augment"),
    ("Evaluate", "evaluate", "tab-evaluate"),
    ("Train", "train", "tab-train"),
    ("Instances", "instances", "tab-instances"),
    ("Label", "label", "tab-label"),
    ("Compare", "compare", "tab-compare"),
]

CSS_PATH = REPO_ROOT / "assets" / "app.css"
TITLE = "SegLab"
#: Largest upload accepted (Gradio refuses bigger files before any handler runs).
MAX_FILE_SIZE = "50mb"


def _build_tab(module_name: str, store: Any) -> list[dict[str, Any]]:
    """Import and build one tab; on failure show why instead of crashing the app.

    Returns the tab's events, if its ``build`` has any: ``Blocks.load`` arguments, run on page load,
    or with ``on="select"``, run each time the tab is opened.
    """
    try:
        module = importlib.import_module(f"seg.ui.{module_name}")
        return module.build(store) or []
    except Exception as err:  # an absent or broken tab must not take the others down
        log.error("tab %s failed to build:\n%s", module_name, traceback.format_exc())
        missing = isinstance(err, ModuleNotFoundError) and (err.name or "").startswith("seg.ui.")
        if missing:
            gr.Markdown(f"This tab is not installed yet (`seg/ui/{module_name}.py`).")
        else:
            gr.Markdown(f"This tab could not be built: {html.escape(clean(str(err)))} The other tabs work.")
        return []


def base_store(checkpoints: str | Path | None, public: bool) -> ModelStore:
    """The checkpoints every visitor sees: writable locally, read-only (the shipped ones) in public mode."""
    if not public:
        return ModelStore(checkpoints)
    folder = CheckpointFolder(Path(checkpoints) if checkpoints else checkpoint_dir(), writable=False, label="shipped")
    return ModelStore(folders=[folder])


def build_app(
    checkpoint_dir: str | Path | None = None,
    store: ModelStore | None = None,
    preload: bool = True,
    deployment: Deployment | None = None,
) -> gr.Blocks:
    """The whole dashboard as a ``gr.Blocks`` (not launched); ``launch_kwargs()`` has its theme and CSS.

    ``deployment`` defaults to the environment's (``Deployment.from_env``: public on a Space).
    ``preload`` loads every checkpoint before the UI is built, so broken ones are listed as
    unavailable (with the reason) instead of failing on first use.
    """
    deployment = deployment or Deployment.from_env()
    serving = Serving.from_deployment(deployment)
    base = store or base_store(checkpoint_dir, deployment.public)
    tab_store: Any = VisitorStore(base, serving.visitors) if serving.visitors is not None else base
    attach_serving(tab_store, serving)
    take_watched(tab_store)  # a store reused for a second app starts with no dropdowns
    if preload:
        base.preload()
    # Gradio's queue rebuilds a pandas summary of up to 10,000 past events after every event, for its
    # monitoring page: 5-20 ms of CPU per request on a server that has run a while. Every 1,000 is plenty.
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "1000")
    claim_upload_folder()  # before any component exists: each reads the folder when it is made
    # delete_cache: every hour, drop Gradio's cached uploads/outputs older than two hours.
    with gr.Blocks(title=TITLE, fill_width=True, delete_cache=(3600, 7200)) as demo:
        gr.Markdown(_header(deployment), elem_id="seg-header")
        tabs, page_loads = [], []
        with gr.Tabs(overflow_behavior="wrap"):  # on a phone every tab stays in view
            for label, module_name, elem_id in TABS:
                with gr.Tab(label, id=module_name, elem_id=elem_id) as tab:
                    events = _build_tab(module_name, tab_store)
                for event in events:
                    if event.pop("on", "load") == "select":
                        tab.select(**event, api_visibility="private")
                    else:
                        page_loads.append(event)
                tabs.append(tab)
        for event in page_loads:
            demo.load(**event, api_visibility="private")
        _wire_model_lists(tabs, tab_store)
        build_api(tab_store)
    guard_events(demo)
    demo.queue(default_concurrency_limit=inference_concurrency(), max_size=64)
    if isinstance(tab_store, VisitorStore):
        start_sweeper(serving, tab_store)
    demo.seg_store = tab_store  # type: ignore[attr-defined]  # tests and the bench reach the store
    demo.seg_serving = serving  # type: ignore[attr-defined]
    return demo


def _header(deployment: Deployment) -> str:
    text = (
        "# SegLab\nSemantic and instance segmentation on a CPU: segment, augment, "
        "evaluate, train, inspect instances and label."
    )
    if deployment.public:
        hours = deployment.visitor_expiry_s / 3600
        text += (
            f"\n\nA public demo: what you upload, label and train is yours alone, and is deleted after "
            f"{hours:g} hours unused (the Label tab downloads it as a zip)."
        )
    return text


def _wire_model_lists(tabs: list, store: Any) -> None:
    """Refresh every model dropdown on page load and tab switch (new checkpoints appear)."""
    watched = take_watched(store)
    if not watched:
        return
    outputs = [w.component for w in watched]

    def refresh(*current):
        store.refresh()
        return [w.update(store, cur) for w, cur in zip(watched, current)]

    gr.on(  # one event for every tab's select
        [tab.select for tab in tabs],
        refresh,
        inputs=outputs,
        outputs=outputs,
        api_visibility="private",
        queue=False,
        show_progress="hidden",
    )


# -- visitor spaces expire -------------------------------------------------------------------------------
def sweep_once(serving: Serving, store: VisitorStore) -> list[str]:
    """Delete visitor spaces unused past the expiry (never one with a training run going)."""
    if serving.visitors is None:
        return []
    removed = serving.visitors.sweep(keep=serving.slots.owners())
    if removed:
        store.forget(removed)
        log.info("expired %d visitor space(s)", len(removed))
    return removed


def start_sweeper(serving: Serving, store: VisitorStore) -> threading.Thread:
    """A daemon thread sweeping expired visitor spaces at start-up and then every quarter of the expiry."""
    interval = min(3600.0, max(30.0, serving.deployment.visitor_expiry_s / 4))

    def loop() -> None:
        while True:
            try:
                sweep_once(serving, store)
                release_memory()
            except Exception:  # noqa: BLE001 - the sweeper must outlive a transient file-system error
                log.exception("sweeping visitor spaces failed")
            time.sleep(interval)

    thread = threading.Thread(target=loop, name="seglab-visitor-sweep", daemon=True)
    thread.start()
    return thread


# -- launch ---------------------------------------------------------------------------------------------
def configure_torch_threads() -> int:
    """Intra-op threads for inference from ``SEG_UI_TORCH_THREADS`` (else torch's default); returns it.

    A knob rather than a fixed choice: on a 2-core CPU shared with training runs, one
    thread was far better in an isolated loop but no better through the app (bench/bench_app.py,
    four alternating runs), so the default is left to torch.
    """
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


def deployment_launch_kwargs(deployment: Deployment) -> dict:
    """``launch()`` arguments that follow the deployment: the login and how much error text is shown."""
    kwargs: dict[str, Any] = {"max_file_size": MAX_FILE_SIZE, "show_error": not deployment.public}
    if deployment.auth_enabled:
        kwargs["auth"] = [tuple(pair) for pair in deployment.auth]
        kwargs["auth_message"] = "SegLab: sign in with the user name and password the operator gave you."
    return kwargs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="seglab-app", description="SegLab dashboard (Gradio)")
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="interface to bind (0.0.0.0 to serve the network)",
    )
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    parser.add_argument(
        "--checkpoints", default=None, help="checkpoint folder (default: $SEG_CHECKPOINT_DIR or the shipped ones)"
    )
    add_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """``seglab-app`` / ``python app.py``: build the dashboard for this deployment and serve it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no telemetry calls
    limit_malloc_arenas()  # before the server's worker threads exist (see seg.memory)
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        deployment = Deployment.from_args(args)
    except DeploymentError as err:
        raise SystemExit(f"seglab-app: {err}") from None
    log.info("deployment: %s", describe(deployment))
    log.info("torch intra-op threads: %d", configure_torch_threads())
    # The server answers first; the models load right after (a request for one not yet loaded loads it).
    demo = build_app(args.checkpoints, deployment=deployment, preload=False)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        prevent_thread_lock=True,
        **deployment_launch_kwargs(deployment),
        **launch_kwargs(),
    )
    settle_startup_heap()
    getattr(demo.seg_store, "base", demo.seg_store).preload()
    demo.block_thread()


def settle_startup_heap() -> None:
    """Freeze the objects made at start-up (modules, the page's components) out of the garbage collector,
    and turn it back on if the caller paused it for the imports (``python app.py``, ``seglab-app``).

    A full collection walked all of them each time: 0.25 s per pass, a pause in whichever request
    triggered it; paused, gradio, torch and the tabs load about a quarter faster. The start-up's own
    garbage (about 3 MB) is frozen with them rather than collected: a collection first would hold up
    the models' loading by 0.36 s (docs/experiments.md).
    """
    gc.freeze()
    gc.enable()


if __name__ == "__main__":
    main()
