"""The Label tab: model-assisted mask labeling into a workspace that trains directly.

Thin by design: storage, versioning, painting, fills and diffs are ``seg.labeling``;
this module only moves arrays between those functions and Gradio components.

How painting stays exact: the editor's background is the image with the current mask
blended in (display opacity), and its layer holds only the strokes not yet applied.
"Apply", a fill, "Save" decode that layer to class ids (alpha-thresholded, exact palette
colours, blended edges from their painted neighbours: ``seg.labeling.paint.decode_strokes``),
merge them into the session's class-id mask, and reset the layer. The blended picture and
the editor's composite are never read back.

Every handler is a module-level function of (inputs..., ``LabelSession``); ``build`` only
lays out the components (``_layout``) and wires the events (``_wire``).
"""

from __future__ import annotations

import html
import logging
import threading
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from seg.classes import SBD_CLASSES
from seg.io import ImageLoadError
from seg.labeling import paint
from seg.labeling.names import UnsafePathError
from seg.labeling.workspace import Problem, Workspace, WorkspaceError, default_workspace, palette_for
from seg.modelstore import ModelStore
from seg.ui.pickers import get_predictor, watch
from seg.ui.queues import INFERENCE_QUEUE
from seg.ui.samples import sbd_choices, sbd_samples
from seg.ui.style import legend_html

log = logging.getLogger("seg.ui.label")

#: Fixed editor canvas (width, height); images are letterboxed into it by ``CanvasView``.
CANVAS = (640, 480)
BRUSH_RADIUS = 10
TOOLS = ("paint", "erase to model prediction")
FILLS = ("region of the same class", "superpixel")
#: Class names that mean "not labelled yet"; a fresh mask starts in the first one present.
UNKNOWN_NAMES = ("misc", "unknown", "unlabeled", "unlabelled", "void", "background")


@dataclass
class LabelSession:
    """One browser session's editing state (``gr.State`` deep-copies it, so it holds the workspace's
    folder, not the ``Workspace`` object, which is shared through ``open_workspace``)."""

    root: str | None = None  # the open workspace's folder
    name: str | None = None  # the image being edited
    image: np.ndarray | None = None  # (H, W, 3) uint8
    label: np.ndarray | None = None  # (H, W) uint8 class ids being edited
    reference: np.ndarray | None = None  # the mask as loaded or prefilled (for "changed by hand")
    model: str | None = None  # the model that prefilled ``reference``
    version: int = 0  # the saved version the edits started from
    undo: paint.UndoStack = field(default_factory=paint.UndoStack)
    segments: np.ndarray | None = None  # superpixels of ``image``, computed on the first superpixel fill
    dirty: bool = False  # edits not saved yet


# -- the workspace: opened in one place -----------------------------------------------------------
_workspaces: dict[str, Workspace] = {}
_ws_lock = threading.Lock()


def open_workspace(root: str | Path | None) -> Workspace:
    """One ``Workspace`` object per folder per process, so every session shares its lock."""
    path = Path(root).expanduser().resolve() if root else default_workspace().resolve()
    with _ws_lock:
        ws = _workspaces.get(str(path))
        if ws is None:
            ws = _workspaces[str(path)] = Workspace(path)
        return ws


def _ws(s: LabelSession) -> Workspace | None:
    """The session's workspace (None before one is opened)."""
    return open_workspace(s.root) if s.root else None


def _require(s: LabelSession) -> Workspace:
    ws = _ws(s)
    if ws is None:
        raise gr.Error("Open a workspace first.")
    return ws


def _require_image(s: LabelSession) -> Workspace:
    ws = _require(s)
    if s.image is None:
        raise gr.Error("Pick an image first.")
    return ws


# -- pictures and text ------------------------------------------------------------------------------
def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _brush(palette: list[tuple[int, int, int]]) -> gr.Brush:
    """Only the workspace's class colours can be picked: a colour is a class."""
    return gr.Brush(
        colors=[_hex(c) for c in palette], default_color=_hex(palette[0]), color_mode="fixed", default_size=BRUSH_RADIUS
    )


def _view(s: LabelSession) -> paint.CanvasView:
    h, w = s.image.shape[:2]
    return paint.CanvasView(h, w, CANVAS[0], CANVAS[1])


def _editor_value(s: LabelSession, opacity: float) -> dict | None:
    """The editor's value: the blended picture as background, one empty layer for new strokes."""
    if s.image is None:
        return None
    background = _view(s).to_canvas(paint.render(s.image, s.label, _ws(s).palette, opacity))
    blank = np.zeros((CANVAS[1], CANVAS[0], 4), dtype=np.uint8)
    return {"background": background, "layers": [blank], "composite": None}


def _preview(s: LabelSession, opacity: float, show_changes: bool) -> np.ndarray | None:
    if s.image is None:
        return None
    changed = paint.changed_mask(s.label, s.reference) if show_changes else None
    return paint.render(s.image, s.label, _ws(s).palette, opacity, changed)


def _views(s: LabelSession, opacity: float, show_changes: bool) -> tuple:
    return _editor_value(s, opacity), _preview(s, opacity, show_changes)


def _progress_md(ws: Workspace | None, root: Path | None = None) -> str:
    if ws is None:
        return f"New workspace: `{html.escape(str(root))}` is created when you add the first image."
    labelled, total = ws.progress()
    return f"**{labelled} of {total} labelled** in `{html.escape(str(ws.root))}`"


def _history_update(ws: Workspace, name: str) -> dict:
    """Version picker choices: newest first, with time, prefill model and pixels changed by hand."""
    choices = [
        (
            (
                f"v{v.version} · {v.saved_at[:19].replace('T', ' ')} UTC · {v.model or 'no model'} · "
                f"{v.changed_pixels} px by hand"
            ),
            v.version,
        )
        for v in reversed(ws.versions(name))
    ]
    return gr.update(choices=choices, value=None)


def _problems_md(problems: list) -> str:
    if not problems:
        return ""
    lines = [f"- `{html.escape(p.path)}`: {html.escape(p.reason)}" for p in problems[:20]]
    more = f"\n- …and {len(problems) - 20} more" if len(problems) > 20 else ""
    return "**Skipped files** (the rest of the workspace works):\n" + "\n".join(lines) + more


# -- editing the mask -------------------------------------------------------------------------------
def _start_label(ws: Workspace, image: np.ndarray) -> np.ndarray:
    """A fresh mask before any prefill: all "misc" (SBD's unknown class) or the like, else class 0."""
    lowered = [c.lower() for c in ws.classes]
    start = next((lowered.index(n) for n in UNKNOWN_NAMES if n in lowered), 0)
    return np.full(image.shape[:2], start, dtype=np.uint8)


def _strokes(s: LabelSession, editor: dict | None) -> np.ndarray | None:
    """Class ids painted on the editor's layers (image resolution), or None when nothing was painted."""
    if s.image is None or not editor:
        return None
    view = _view(s)
    merged = None
    for layer in editor.get("layers") or []:
        if layer is None:
            continue
        layer = np.asarray(layer)
        if layer.ndim != 3 or layer.shape[2] != 4:
            continue
        ids = paint.decode_strokes(view.from_canvas(layer), _ws(s).palette)
        merged = ids if merged is None else np.where(ids != paint.NO_STROKE, ids, merged)
    if merged is None or not (merged != paint.NO_STROKE).any():
        return None
    return merged


def _apply_pending(s: LabelSession, editor: dict | None, tool: str) -> int:
    """Merge unapplied strokes into the mask; returns how many pixels they covered."""
    strokes = _strokes(s, editor)
    if strokes is None:
        return 0
    s.undo.push(s.label)
    if tool == TOOLS[1]:
        s.label = paint.erase_strokes(s.label, strokes, s.reference)
    else:
        s.label = paint.apply_strokes(s.label, strokes)
    s.dirty = True
    return int((strokes != paint.NO_STROKE).sum())


# -- handlers: workspace and navigation -----------------------------------------------------------------
def do_open(path: str, s: LabelSession):
    """Open (or start) the workspace typed in the box; the first unlabelled image gets selected."""
    try:
        ws = open_workspace(path.strip() or None)
    except (WorkspaceError, UnsafePathError, OSError) as err:
        raise gr.Error(f"Cannot open the workspace: {err}") from None
    report = ws.scan()
    choices = [it.name for it in report.items]
    first = next((it.name for it in report.items if not it.labelled), choices[0] if choices else None)
    return (
        LabelSession(root=str(ws.root)),
        _progress_md(ws),
        _problems_md(report.problems),
        gr.update(choices=choices, value=first),
        gr.update(brush=_brush(ws.palette)),
        legend_html(ws.classes, ws.palette),
        gr.update(choices=list(ws.classes), value=ws.classes[0]),
        None,
    )


def do_load(name: str | None, s: LabelSession, opacity: float, show_changes: bool):
    """Load the picked image with its current mask (or a fresh one); unsaved edits elsewhere are dropped."""
    ws = _ws(s)
    if ws is None or not name:
        return s, None, None, "", gr.update(choices=[], value=None)
    if name == s.name and s.image is not None:
        return (gr.skip(),) * 5  # already open: keep the edits
    discarded = s.name if s.dirty else None
    try:
        loaded = ws.load(name)
    except (WorkspaceError, UnsafePathError, ImageLoadError, OSError) as err:
        raise gr.Error(f"Cannot open {name}: {err}") from None
    label = loaded.label if loaded.label is not None else _start_label(ws, loaded.image)
    s = LabelSession(
        root=str(ws.root),
        name=name,
        image=loaded.image,
        label=label,
        reference=label.copy(),
        model=loaded.model,
        version=loaded.version,
    )
    note = (
        f"Version {loaded.version}" + (f", prefilled by `{loaded.model}`" if loaded.model else "")
        if loaded.version
        else "Not labelled yet: prefill with a model or paint."
    )
    if discarded:
        gr.Warning(f"Unsaved changes to {discarded} were discarded.")
    return (s, *_views(s, opacity, show_changes), note, _history_update(ws, name))


def do_step(delta: int, only_unlabelled: bool, name: str | None, s: LabelSession):
    """Move ``delta`` images along the list (wrapping), optionally to the next unlabelled one."""
    items = _require(s).items()
    if not items:
        return gr.update()
    names = [it.name for it in items]
    i = names.index(name) if name in names else -1
    for k in range(1, len(items) + 1):
        j = (i + delta * k) % len(items)
        if not only_unlabelled or not items[j].labelled:
            return gr.update(choices=names, value=names[j])
    return gr.update(choices=names)


# -- handlers: adding images ---------------------------------------------------------------------------
def _after_import(ws: Workspace, added: list[str], problems: list, what: str):
    return (
        _progress_md(ws),
        _problems_md(problems),
        f"{what}: added {len(added)} image(s).",
        gr.update(choices=ws.names(), value=added[0] if added else gr.skip()),
    )


def do_upload(files: list | None, s: LabelSession):
    ws = _require(s)
    added, bad = [], []
    for f in files or []:
        path = Path(f if isinstance(f, str) else getattr(f, "name", str(f)))
        try:
            name, _ = ws.import_image(path, name=path.name, source_desc=f"upload:{path.name}")
            added.append(name)
        except ImageLoadError as err:  # the message must not show the server's temp path
            bad.append(Problem(path.name, f"not imported: {str(err).replace(str(path), path.name)}"))
    return _after_import(ws, added, bad, "Upload")


def do_folder(path: str, s: LabelSession):
    ws = _require(s)
    try:
        report = ws.import_folder(path)
    except WorkspaceError as err:
        raise gr.Error(str(err)) from None
    return _after_import(ws, report.added + report.existing, report.problems, "Folder")


def do_dataset(sample_id: str | None, s: LabelSession):
    ws = _require(s)
    sample = sbd_samples().get(sample_id or "")
    if sample is None:
        raise gr.Error("Pick a dataset image first.")
    name, _ = ws.import_image(sample.image_path, name=f"sbd_{sample.id}", source_desc=f"sbd:{sample.id}")
    return _after_import(ws, [name], [], "Dataset")


# -- handlers: editing ---------------------------------------------------------------------------------
def do_prefill(store: ModelStore | None, model_name: str | None, s: LabelSession, opacity: float, show_changes: bool):
    """Replace the mask with the model's prediction (undoable); it becomes the "changed by hand" reference."""
    ws = _require_image(s)
    if store is None:
        raise gr.Error("No model store in this app.")
    predictor = get_predictor(store, model_name)
    pred = np.asarray(predictor.predict(s.image).label, dtype=np.uint8)
    if pred.shape != s.image.shape[:2]:
        raise gr.Error(f"The model returned a {pred.shape} mask for a {s.image.shape[:2]} image.")
    if pred.size and int(pred.max()) >= ws.num_classes:
        raise gr.Error(f"The model predicts class {int(pred.max())}, beyond this workspace's {ws.num_classes} classes.")
    s.undo.push(s.label)
    s.label, s.reference, s.model, s.dirty = pred, pred.copy(), model_name, True
    return (s, *_views(s, opacity, show_changes), f"Prefilled with `{html.escape(model_name or '')}`.")


def do_apply(editor: dict | None, tool: str, s: LabelSession, opacity: float, show_changes: bool):
    _require(s)
    n = _apply_pending(s, editor, tool)
    return (
        s,
        _preview(s, opacity, show_changes),
        (f"Applied strokes over {n} pixel(s)." if n else "No strokes to apply."),
    )


def do_fill(
    editor: dict | None,
    tool: str,
    class_id: int,
    mode: str,
    s: LabelSession,
    opacity: float,
    show_changes: bool,
    evt: gr.SelectData,
):
    """Fill the clicked region (same-class region or superpixel) with ``class_id``; pending strokes first."""
    ws = _require_image(s)
    _apply_pending(s, editor, tool)
    col, row = (int(v) for v in evt.index[:2])
    s.undo.push(s.label)
    try:
        if mode == FILLS[1]:
            if s.segments is None:
                s.segments = paint.superpixels(s.image)
            s.label = paint.superpixel_fill(s.label, s.segments, row, col, int(class_id))
        else:
            s.label = paint.flood_fill(s.label, row, col, int(class_id))
    except ValueError as err:
        s.undo.pop()
        raise gr.Error(str(err)) from None
    s.dirty = True
    filled = html.escape(ws.classes[int(class_id)])
    return s, _preview(s, opacity, show_changes), f"Filled at ({col}, {row}) with {filled}."


def do_undo(s: LabelSession, opacity: float, show_changes: bool):
    _require(s)
    previous = s.undo.pop()
    if previous is None:
        return s, gr.skip(), gr.skip(), "Nothing to undo (unapplied strokes: use the editor's own undo)."
    s.label = previous
    return (s, *_views(s, opacity, show_changes), f"Undone; {len(s.undo)} step(s) left.")


def do_history(version: int | None, s: LabelSession, opacity: float, show_changes: bool):
    """Load a saved version into the editor (undoable); Save makes it current."""
    ws = _require(s)
    if s.image is None or version is None:
        raise gr.Error("Pick an image and one of its versions first.")
    try:
        label = ws.read_version(s.name, int(version))
    except (WorkspaceError, UnsafePathError, OSError, ValueError) as err:
        raise gr.Error(str(err)) from None
    if label.shape != s.label.shape:
        raise gr.Error(f"Version {version} does not fit the image.")
    s.undo.push(s.label)
    s.label, s.dirty = label, True
    return (s, *_views(s, opacity, show_changes), f"Loaded version {version}; Save to make it current.")


def do_redraw(s: LabelSession, opacity: float, show_changes: bool):
    """Editor and preview after a display setting changed (no edit)."""
    if s.image is None:
        return gr.skip(), gr.skip()
    return _views(s, opacity, show_changes)


def redraw_editor(s: LabelSession, opacity: float):
    return _editor_value(s, opacity) if s.image is not None else gr.skip()


def do_save(editor: dict | None, tool: str, s: LabelSession, opacity: float, show_changes: bool, request: gr.Request):
    """Apply pending strokes and save the mask as a new version (a concurrent save is kept in history)."""
    ws = _require_image(s)
    _apply_pending(s, editor, tool)
    try:
        result = ws.save(
            s.name,
            s.label,
            model=s.model,
            reference=s.reference,
            base_version=s.version,
            session=getattr(request, "session_hash", None),
        )
    except (WorkspaceError, UnsafePathError, OSError) as err:
        raise gr.Error(f"Not saved: {err}") from None
    s.version, s.dirty = result.version, False
    log.info("label saved: %s v%d in %s (%d px by hand)", result.name, result.version, ws.root, result.changed_pixels)
    by_model = f" from the prediction of `{html.escape(s.model)}`" if s.model else ""
    msg = (
        f"Saved **{html.escape(result.name)}** as version {result.version} in `{result.split}/` "
        f"({result.changed_pixels} pixel(s) changed by hand{by_model})."
    )
    if result.conflict:
        msg += (
            f" Note: another session saved version {result.previous_version} meanwhile; "
            f"it is kept in the version history, yours is now current."
        )
    return s, _preview(s, opacity, show_changes), msg, _progress_md(ws), _history_update(ws, result.name)


# -- the tab -----------------------------------------------------------------------------------------
@dataclass
class LabelTab:
    """The tab's components, as ``_layout`` made them (``ds_pick``/``ds_btn`` only with the dataset)."""

    state: gr.State
    ws_path: gr.Textbox
    open_btn: gr.Button
    progress: gr.Markdown
    problems: gr.Markdown
    upload: gr.File
    folder: gr.Textbox
    folder_btn: gr.Button
    ds_pick: gr.Dropdown | None
    ds_btn: gr.Button | None
    item: gr.Dropdown
    prev_btn: gr.Button
    next_btn: gr.Button
    todo_btn: gr.Button
    model: gr.Dropdown
    prefill_btn: gr.Button
    editor: gr.ImageEditor
    legend: gr.HTML
    tool: gr.Radio
    apply_btn: gr.Button
    undo_btn: gr.Button
    preview: gr.Image
    fill_class: gr.Dropdown
    fill_mode: gr.Radio
    opacity: gr.Slider
    show_changes: gr.Checkbox
    save_btn: gr.Button
    save_next_btn: gr.Button
    status: gr.Markdown
    history: gr.Dropdown
    history_btn: gr.Button


def _layout(store: ModelStore | None) -> LabelTab:
    """Create the tab's components inside the current ``gr.Tab``/``gr.Blocks``."""
    start_root = default_workspace().resolve()
    # Do not create the default folder just because the app started; the first action does.
    start_ws = open_workspace(start_root) if start_root.is_dir() else None
    palette = start_ws.palette if start_ws else palette_for(len(SBD_CLASSES))
    classes = start_ws.classes if start_ws else list(SBD_CLASSES)
    start_items = start_ws.items() if start_ws else []
    state = gr.State(LabelSession(root=str(start_root)))

    with gr.Row():
        ws_path = gr.Textbox(str(start_root), label="Workspace folder", scale=4, elem_id="label-workspace")
        open_btn = gr.Button("Open workspace", scale=1, elem_id="label-open")
    progress = gr.Markdown(_progress_md(start_ws, start_root), elem_id="label-progress")
    problems = gr.Markdown("")
    with gr.Accordion("Add images to the workspace", open=False), gr.Row():
        upload = gr.File(file_count="multiple", file_types=["image"], label="Upload images", elem_id="label-upload")
        with gr.Column():
            folder = gr.Textbox(label="…or a folder of images on the server")
            folder_btn = gr.Button("Import folder")
            ds_names = sbd_choices(("train", "val", "test"), limit=1000)
            ds_pick = gr.Dropdown(ds_names, label="…or a Stanford Background image", value=None) if ds_names else None
            ds_btn = gr.Button("Import dataset image") if ds_names else None
    with gr.Row():
        item = gr.Dropdown(
            [it.name for it in start_items],
            value=None,
            label="Image",
            scale=3,
            elem_id="label-item",
            allow_custom_value=False,
        )
        prev_btn = gr.Button("◀ Previous", scale=1, elem_id="label-prev")
        next_btn = gr.Button("Next ▶", scale=1, elem_id="label-next")
        todo_btn = gr.Button("Next unlabelled", scale=1)
    with gr.Row():
        names = store.names("semantic") if store is not None else []
        model = gr.Dropdown(names, value=names[0] if names else None, label="Model for prefill", scale=3)
        if store is not None:
            watch(store, model, "semantic")
        prefill_btn = gr.Button("Prefill with model", scale=1, elem_id="label-prefill")
    with gr.Row():
        with gr.Column(scale=3):
            editor = gr.ImageEditor(
                label="Paint (brush colour = class; Apply or Save merges strokes)",
                type="numpy",
                image_mode="RGBA",
                format="png",
                sources=(),
                transforms=(),
                layers=False,
                canvas_size=CANVAS,
                fixed_canvas=True,
                elem_id="label-editor",
                brush=_brush(palette),
                eraser=gr.Eraser(default_size=BRUSH_RADIUS),
            )
            legend = gr.HTML(legend_html(classes, palette))
            gr.Markdown(
                "Pick a class colour (palette button) and paint. The editor's eraser and undo act on "
                "strokes not applied yet; to erase applied paint, switch the brush mode to "
                "*erase to model prediction* and paint over it."
            )
            with gr.Row():
                tool = gr.Radio(list(TOOLS), value=TOOLS[0], label="Brush mode")
                apply_btn = gr.Button("Apply strokes", elem_id="label-apply")
                undo_btn = gr.Button("Undo", elem_id="label-undo")
        with gr.Column(scale=2):
            preview = gr.Image(label="Mask (click to fill)", interactive=False, elem_id="label-preview", format="png")
            fill_class = gr.Dropdown(list(classes), value=classes[0], label="Fill class", type="index")
            fill_mode = gr.Radio(list(FILLS), value=FILLS[0], label="Fill")
            opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Mask opacity (display only)")
            show_changes = gr.Checkbox(True, label="Outline pixels changed from the model's prediction")
    with gr.Row():
        save_btn = gr.Button("Save", variant="primary", elem_id="label-save")
        save_next_btn = gr.Button("Save and next", elem_id="label-save-next")
    status = gr.Markdown("", elem_id="label-status")
    with gr.Accordion("Saved versions of this image", open=False), gr.Row():
        history = gr.Dropdown([], label="Version", scale=3, elem_id="label-history")
        history_btn = gr.Button("Load this version into the editor (Save makes it current)", scale=2)
    gr.Markdown(
        "Train on these labels: the workspace is a dataset folder, e.g. "
        "`python -m seg train --model unet --data <workspace>`. "
        "Export for CVAT: `python -m seg label-export --workspace <workspace> --format cvat --out DIR`."
    )
    made = locals()  # every component above, matched to ``LabelTab`` by name (a missing one fails at build)
    return LabelTab(**{name: made[name] for name in LabelTab.__dataclass_fields__})


def _wire(c: LabelTab, store: ModelStore | None) -> None:
    """Connect the components to the handlers (every event is private: the tab has no public API)."""
    private: dict[str, Any] = {"api_visibility": "private"}
    views = [c.editor, c.preview]
    display = [c.state, c.opacity, c.show_changes]

    def then_redraw(event: Any) -> None:
        """The editor is refreshed in a follow-up event: Gradio's ImageEditor stalls when one
        event both reads and writes it."""
        event.then(redraw_editor, [c.state, c.opacity], c.editor, show_progress="hidden", **private)

    load = dict(fn=do_load, inputs=[c.item, *display], outputs=[c.state, *views, c.status, c.history], **private)
    c.item.change(**load)
    gr.on(
        [c.open_btn.click, c.ws_path.submit],
        do_open,
        [c.ws_path, c.state],
        [c.state, c.progress, c.problems, c.item, c.editor, c.legend, c.fill_class, c.preview],
        **private,
    ).then(**load)
    for button, delta, only_unlabelled in ((c.prev_btn, -1, False), (c.next_btn, +1, False), (c.todo_btn, +1, True)):
        button.click(partial(do_step, delta, only_unlabelled), [c.item, c.state], c.item, **private)

    imported = [c.progress, c.problems, c.status, c.item]
    c.upload.upload(do_upload, [c.upload, c.state], imported, **private)
    c.folder_btn.click(do_folder, [c.folder, c.state], imported, **private)
    if c.ds_pick is not None and c.ds_btn is not None:
        c.ds_btn.click(do_dataset, [c.ds_pick, c.state], imported, **private)

    c.prefill_btn.click(
        partial(do_prefill, store),
        [c.model, *display],
        [c.state, *views, c.status],
        concurrency_id=INFERENCE_QUEUE,
        **private,
    )
    then_redraw(c.apply_btn.click(do_apply, [c.editor, c.tool, *display], [c.state, c.preview, c.status], **private))
    then_redraw(
        c.preview.select(
            do_fill, [c.editor, c.tool, c.fill_class, c.fill_mode, *display], [c.state, c.preview, c.status], **private
        )
    )
    c.undo_btn.click(do_undo, display, [c.state, *views, c.status], **private)
    c.history_btn.click(do_history, [c.history, *display], [c.state, *views, c.status], **private)
    c.opacity.release(do_redraw, display, views, **private)
    c.show_changes.change(do_redraw, display, views, **private)

    save_inputs = [c.editor, c.tool, *display]
    save_outputs = [c.state, c.preview, c.status, c.progress, c.history]
    then_redraw(c.save_btn.click(do_save, save_inputs, save_outputs, **private))
    saved_next = c.save_next_btn.click(do_save, save_inputs, save_outputs, **private)
    saved_next.success(partial(do_step, +1, False), [c.item, c.state], c.item, **private)
    then_redraw(saved_next)


def build(store: ModelStore | None) -> None:
    """Components and events of the Label tab (inside the current ``gr.Tab``)."""
    _wire(_layout(store), store)


def standalone(store: ModelStore | None = None) -> gr.Blocks:
    """The Label tab alone in a Blocks (development and the browser test)."""
    with gr.Blocks(title="SegLab labeling") as demo:
        build(store)
    demo.queue(default_concurrency_limit=2)
    return demo


if __name__ == "__main__":
    from seg.ui.app import launch_kwargs

    standalone(ModelStore()).launch(**launch_kwargs())
