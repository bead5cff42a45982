"""The Label tab: model-assisted mask labeling into a workspace that trains directly.

Thin by design: storage, versioning, painting, fills and diffs are ``seg.labeling``;
this module only moves arrays between those functions and Gradio components.

How painting stays exact: the editor's background is the image with the current mask
blended in (display opacity), and its layer holds only the strokes not yet applied.
"Apply", a fill, "Save" decode that layer to class ids (alpha-thresholded, exact palette
colours, blended edges from their painted neighbours: ``seg.labeling.paint.decode_strokes``),
merge them into the session's class-id mask, and reset the layer. The blended picture and
the editor's composite are never read back.
"""

from __future__ import annotations

import html
import logging
import threading
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from seg.classes import SBD_CLASSES
from seg.io import ImageLoadError
from seg.labeling import paint
from seg.labeling.names import UnsafePathError
from seg.labeling.workspace import Problem, Workspace, WorkspaceError, default_workspace, palette_for
from seg.ui.common import (
    INFERENCE_QUEUE,
    ModelStore,
    get_predictor,
    legend_html,
    sbd_choices,
    sbd_samples,
)

log = logging.getLogger("seg.ui.label")

#: Fixed editor canvas (width, height); images are letterboxed into it by ``CanvasView``.
CANVAS = (640, 480)
BRUSH_RADIUS = 10
TOOLS = ("paint", "erase to model prediction")
FILLS = ("region of the same class", "superpixel")

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


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _brush(palette: list[tuple[int, int, int]]) -> gr.Brush:
    """Only the workspace's class colours can be picked: a colour is a class."""
    return gr.Brush(colors=[_hex(c) for c in palette], default_color=_hex(palette[0]),
                    color_mode="fixed", default_size=BRUSH_RADIUS)


def _new_session() -> dict[str, Any]:
    return {"root": None, "name": None, "image": None, "label": None, "reference": None, "model": None,
            "version": 0, "undo": paint.UndoStack(), "segments": None, "dirty": False}


# -- pure-ish helpers shared by the handlers --------------------------------------------------
def _editor_value(s: dict, opacity: float) -> dict | None:
    if s["image"] is None:
        return None
    view = _view(s)
    background = view.to_canvas(paint.render(s["image"], s["label"], _ws(s).palette, opacity))
    blank = np.zeros((CANVAS[1], CANVAS[0], 4), dtype=np.uint8)
    return {"background": background, "layers": [blank], "composite": None}


def _view(s: dict) -> paint.CanvasView:
    h, w = s["image"].shape[:2]
    return paint.CanvasView(h, w, CANVAS[0], CANVAS[1])


def _preview(s: dict, opacity: float, show_changes: bool) -> np.ndarray | None:
    if s["image"] is None:
        return None
    changed = paint.changed_mask(s["label"], s["reference"]) if show_changes else None
    return paint.render(s["image"], s["label"], _ws(s).palette, opacity, changed)


def _strokes(s: dict, editor: dict | None) -> np.ndarray | None:
    """Class ids painted on the editor's layers (image resolution), or None when nothing was painted."""
    if s["image"] is None or not editor:
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


def _apply_pending(s: dict, editor: dict | None, tool: str) -> int:
    """Merge unapplied strokes into the mask; returns how many pixels they covered."""
    strokes = _strokes(s, editor)
    if strokes is None:
        return 0
    s["undo"].push(s["label"])
    if tool == TOOLS[1]:
        s["label"] = paint.erase_strokes(s["label"], strokes, s["reference"])
    else:
        s["label"] = paint.apply_strokes(s["label"], strokes)
    s["dirty"] = True
    return int((strokes != paint.NO_STROKE).sum())


def _progress_md(ws: Workspace | None, root: Path | None = None) -> str:
    if ws is None:
        return f"New workspace: `{html.escape(str(root))}` is created when you add the first image."
    labelled, total = ws.progress()
    return f"**{labelled} of {total} labelled** in `{html.escape(str(ws.root))}`"


def _history_update(ws: Workspace, name: str) -> dict:
    """Version picker choices: newest first, with time, prefill model and pixels changed by hand."""
    choices = [(f"v{v.version} · {v.saved_at[:19].replace('T', ' ')} UTC · {v.model or 'no model'} · "
                f"{v.changed_pixels} px by hand", v.version) for v in reversed(ws.versions(name))]
    return gr.update(choices=choices, value=None)


def _problems_md(problems: list) -> str:
    if not problems:
        return ""
    lines = [f"- `{html.escape(p.path)}`: {html.escape(p.reason)}" for p in problems[:20]]
    more = f"\n- …and {len(problems) - 20} more" if len(problems) > 20 else ""
    return "**Skipped files** (the rest of the workspace works):\n" + "\n".join(lines) + more


def _ws(s: dict) -> Workspace | None:
    """The session's workspace (sessions hold only its path: ``gr.State`` deep-copies values)."""
    return open_workspace(s["root"]) if s["root"] else None


def _require(s: dict) -> Workspace:
    ws = _ws(s)
    if ws is None:
        raise gr.Error("Open a workspace first.")
    return ws


#: Class names that mean "not labelled yet"; a fresh mask starts in the first one present.
UNKNOWN_NAMES = ("misc", "unknown", "unlabeled", "unlabelled", "void", "background")


def _start_label(ws: Workspace, image: np.ndarray) -> np.ndarray:
    """A fresh mask before any prefill: all "misc" (SBD's unknown class) or the like, else class 0."""
    lowered = [c.lower() for c in ws.classes]
    start = next((lowered.index(n) for n in UNKNOWN_NAMES if n in lowered), 0)
    return np.full(image.shape[:2], start, dtype=np.uint8)


# -- the tab ------------------------------------------------------------------------------------
def build(store: ModelStore | None) -> None:
    """Components and events of the Label tab (inside the current ``gr.Tab``)."""
    start_root = default_workspace().resolve()
    # Do not create the default folder just because the app started; the first action does.
    start_ws = open_workspace(start_root) if start_root.is_dir() else None
    palette = start_ws.palette if start_ws else palette_for(len(SBD_CLASSES))
    classes = start_ws.classes if start_ws else list(SBD_CLASSES)
    state = gr.State(_new_session() | {"root": str(start_root)})
    start_items = start_ws.items() if start_ws else []

    with gr.Row():
        ws_path = gr.Textbox(str(start_root), label="Workspace folder", scale=4, elem_id="label-workspace")
        open_btn = gr.Button("Open workspace", scale=1, elem_id="label-open")
    progress = gr.Markdown(_progress_md(start_ws, start_root), elem_id="label-progress")
    problems = gr.Markdown("")
    with gr.Accordion("Add images to the workspace", open=False):
        with gr.Row():
            upload = gr.File(file_count="multiple", file_types=["image"], label="Upload images",
                             elem_id="label-upload")
            with gr.Column():
                folder = gr.Textbox(label="…or a folder of images on the server")
                folder_btn = gr.Button("Import folder")
                ds_names = sbd_choices(("train", "val", "test"), limit=1000)
                if ds_names:
                    ds_pick = gr.Dropdown(ds_names, label="…or a Stanford Background image", value=None)
                    ds_btn = gr.Button("Import dataset image")
                else:
                    ds_pick = ds_btn = None
    with gr.Row():
        item = gr.Dropdown([it.name for it in start_items], value=None, label="Image", scale=3,
                           elem_id="label-item", allow_custom_value=False)
        prev_btn = gr.Button("◀ Previous", scale=1, elem_id="label-prev")
        next_btn = gr.Button("Next ▶", scale=1, elem_id="label-next")
        todo_btn = gr.Button("Next unlabelled", scale=1)
    with gr.Row():
        names = store.names("semantic") if store is not None else []
        model = gr.Dropdown(names, value=names[0] if names else None, label="Model for prefill", scale=3)
        if store is not None:
            store.watch(model, "semantic")
        prefill_btn = gr.Button("Prefill with model", scale=1, elem_id="label-prefill")
    with gr.Row():
        with gr.Column(scale=3):
            editor = gr.ImageEditor(
                label="Paint (brush colour = class; Apply or Save merges strokes)",
                type="numpy", image_mode="RGBA", format="png", sources=(), transforms=(), layers=False,
                canvas_size=CANVAS, fixed_canvas=True, elem_id="label-editor",
                brush=_brush(palette),
                eraser=gr.Eraser(default_size=BRUSH_RADIUS))
            legend = gr.HTML(legend_html(classes, palette))
            gr.Markdown("Pick a class colour (palette button) and paint. The editor's eraser and undo act on "
                        "strokes not applied yet; to erase applied paint, switch the brush mode to "
                        "*erase to model prediction* and paint over it.")
            with gr.Row():
                tool = gr.Radio(list(TOOLS), value=TOOLS[0], label="Brush mode")
                apply_btn = gr.Button("Apply strokes", elem_id="label-apply")
                undo_btn = gr.Button("Undo", elem_id="label-undo")
        with gr.Column(scale=2):
            preview = gr.Image(label="Mask (click to fill)", interactive=False, elem_id="label-preview",
                               format="png")
            fill_class = gr.Dropdown(list(classes), value=classes[0], label="Fill class", type="index")
            fill_mode = gr.Radio(list(FILLS), value=FILLS[0], label="Fill")
            opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Mask opacity (display only)")
            show_changes = gr.Checkbox(True, label="Outline pixels changed from the model's prediction")
    with gr.Row():
        save_btn = gr.Button("Save", variant="primary", elem_id="label-save")
        save_next_btn = gr.Button("Save and next", elem_id="label-save-next")
    status = gr.Markdown("", elem_id="label-status")
    with gr.Accordion("Saved versions of this image", open=False):
        with gr.Row():
            history = gr.Dropdown([], label="Version", scale=3, elem_id="label-history")
            history_btn = gr.Button("Load this version into the editor (Save makes it current)", scale=2)
    gr.Markdown("Train on these labels: the workspace is a dataset folder, e.g. "
                "`python -m seg train --model unet --data <workspace>`. "
                "Export for CVAT: `python -m seg label-export --workspace <workspace> --format cvat --out DIR`.")

    view_out = [editor, preview]

    def views(s: dict, op: float, changes: bool):
        return _editor_value(s, op), _preview(s, op, changes)

    def redraw_editor(s: dict, op: float):
        return _editor_value(s, op) if s["image"] is not None else gr.skip()

    def then_redraw(event) -> None:
        """The editor is refreshed in a follow-up event: Gradio's ImageEditor stalls when one
        event both reads and writes it."""
        event.then(redraw_editor, [state, opacity], editor, api_visibility="private", show_progress="hidden")

    # -- workspace and navigation ---------------------------------------------------------------
    def do_open(path: str, s: dict):
        try:
            ws = open_workspace(path.strip() or None)
        except (WorkspaceError, UnsafePathError, OSError) as err:
            raise gr.Error(f"Cannot open the workspace: {err}") from None
        s = _new_session() | {"root": str(ws.root)}
        report = ws.scan()
        choices = [it.name for it in report.items]
        first = next((it.name for it in report.items if not it.labelled), choices[0] if choices else None)
        return (s, _progress_md(ws), _problems_md(report.problems),
                gr.update(choices=choices, value=first), gr.update(brush=_brush(ws.palette)),
                legend_html(ws.classes, ws.palette), gr.update(choices=list(ws.classes), value=ws.classes[0]),
                None)

    open_evt = dict(fn=do_open, inputs=[ws_path, state],
                    outputs=[state, progress, problems, item, editor, legend, fill_class, preview])

    def do_load(name: str | None, s: dict, op: float, changes: bool):
        ws = _ws(s)
        if ws is None or not name:
            return s, None, None, "", gr.update(choices=[], value=None)
        if name == s["name"] and s["image"] is not None:
            return (gr.skip(),) * 5  # already open: keep the edits
        discarded = s["name"] if s["dirty"] else None
        try:
            loaded = ws.load(name)
        except (WorkspaceError, UnsafePathError, ImageLoadError, OSError) as err:
            raise gr.Error(f"Cannot open {name}: {err}") from None
        label = loaded.label if loaded.label is not None else _start_label(ws, loaded.image)
        s = _new_session() | {"root": str(ws.root), "name": name, "image": loaded.image, "label": label,
                              "reference": label.copy(), "model": loaded.model, "version": loaded.version}
        note = (f"Version {loaded.version}" + (f", prefilled by `{loaded.model}`" if loaded.model else "")
                if loaded.version else "Not labelled yet: prefill with a model or paint.")
        if discarded:
            gr.Warning(f"Unsaved changes to {discarded} were discarded.")
        return (s, *views(s, op, changes), note, _history_update(ws, name))

    load_evt = dict(fn=do_load, inputs=[item, state, opacity, show_changes],
                    outputs=[state, *view_out, status, history], api_visibility="private")
    item.change(**load_evt)
    gr.on([open_btn.click, ws_path.submit], **open_evt, api_visibility="private").then(**load_evt)

    def step(delta: int, only_unlabelled: bool = False):
        def go(name: str | None, s: dict):
            ws = _require(s)
            items = ws.items()
            if not items:
                return gr.update()
            names_ = [it.name for it in items]
            i = names_.index(name) if name in names_ else -1
            for k in range(1, len(items) + 1):
                j = (i + delta * k) % len(items)
                if not only_unlabelled or not items[j].labelled:
                    return gr.update(choices=names_, value=names_[j])
            return gr.update(choices=names_)
        return go

    prev_btn.click(step(-1), [item, state], item, api_visibility="private")
    next_btn.click(step(+1), [item, state], item, api_visibility="private")
    todo_btn.click(step(+1, True), [item, state], item, api_visibility="private")

    # -- adding images -------------------------------------------------------------------------
    def after_import(s: dict, added: list[str], report_problems: list, what: str):
        ws = _require(s)
        names_ = ws.names()
        msg = f"{what}: added {len(added)} image(s)."
        return (_progress_md(ws), _problems_md(report_problems), msg,
                gr.update(choices=names_, value=added[0] if added else gr.skip()))

    import_out = [progress, problems, status, item]

    def do_upload(files: list | None, s: dict):
        ws = _require(s)
        added, bad = [], []
        for f in files or []:
            path = Path(f if isinstance(f, str) else getattr(f, "name", str(f)))
            try:
                name, _ = ws.import_image(path, name=path.name, source_desc=f"upload:{path.name}")
                added.append(name)
            except ImageLoadError as err:  # the message must not show the server's temp path
                bad.append(Problem(path.name, f"not imported: {str(err).replace(str(path), path.name)}"))
        return after_import(s, added, bad, "Upload")

    upload.upload(do_upload, [upload, state], import_out, api_visibility="private")

    def do_folder(path: str, s: dict):
        ws = _require(s)
        try:
            report = ws.import_folder(path)
        except WorkspaceError as err:
            raise gr.Error(str(err)) from None
        return after_import(s, report.added + report.existing, report.problems, "Folder")

    folder_btn.click(do_folder, [folder, state], import_out, api_visibility="private")

    if ds_pick is not None:
        def do_dataset(sample_id: str | None, s: dict):
            ws = _require(s)
            sample = sbd_samples().get(sample_id or "")
            if sample is None:
                raise gr.Error("Pick a dataset image first.")
            name, _ = ws.import_image(sample.image_path, name=f"sbd_{sample.id}",
                                      source_desc=f"sbd:{sample.id}")
            return after_import(s, [name], [], "Dataset")

        ds_btn.click(do_dataset, [ds_pick, state], import_out, api_visibility="private")

    # -- editing ------------------------------------------------------------------------------------
    def do_prefill(model_name: str | None, s: dict, op: float, changes: bool):
        ws = _require(s)
        if s["image"] is None:
            raise gr.Error("Pick an image first.")
        if store is None:
            raise gr.Error("No model store in this app.")
        predictor = get_predictor(store, model_name)
        pred = np.asarray(predictor.predict(s["image"]).label, dtype=np.uint8)
        if pred.shape != s["image"].shape[:2]:
            raise gr.Error(f"The model returned a {pred.shape} mask for a {s['image'].shape[:2]} image.")
        if pred.size and int(pred.max()) >= ws.num_classes:
            raise gr.Error(f"The model predicts class {int(pred.max())}, beyond this workspace's "
                           f"{ws.num_classes} classes.")
        s["undo"].push(s["label"])
        s["label"], s["reference"], s["model"], s["dirty"] = pred, pred.copy(), model_name, True
        return (s, *views(s, op, changes), f"Prefilled with `{html.escape(model_name or '')}`.")

    prefill_btn.click(do_prefill, [model, state, opacity, show_changes], [state, *view_out, status],
                      api_visibility="private", concurrency_id=INFERENCE_QUEUE)

    def do_apply(ed: dict | None, t: str, s: dict, op: float, changes: bool):
        _require(s)
        n = _apply_pending(s, ed, t)
        return (s, _preview(s, op, changes),
                f"Applied strokes over {n} pixel(s)." if n else "No strokes to apply.")

    then_redraw(apply_btn.click(do_apply, [editor, tool, state, opacity, show_changes], [state, preview, status],
                                api_visibility="private"))

    def do_fill(ed: dict | None, t: str, cls: int, mode: str, s: dict, op: float, changes: bool,
                evt: gr.SelectData):
        _require(s)
        if s["image"] is None:
            raise gr.Error("Pick an image first.")
        _apply_pending(s, ed, t)
        col, row = (int(v) for v in evt.index[:2])
        s["undo"].push(s["label"])
        try:
            if mode == FILLS[1]:
                if s["segments"] is None:
                    s["segments"] = paint.superpixels(s["image"])
                s["label"] = paint.superpixel_fill(s["label"], s["segments"], row, col, int(cls))
            else:
                s["label"] = paint.flood_fill(s["label"], row, col, int(cls))
        except ValueError as err:
            s["undo"].pop()
            raise gr.Error(str(err)) from None
        s["dirty"] = True
        filled = html.escape(_ws(s).classes[int(cls)])
        return s, _preview(s, op, changes), f"Filled at ({col}, {row}) with {filled}."

    then_redraw(preview.select(do_fill, [editor, tool, fill_class, fill_mode, state, opacity, show_changes],
                               [state, preview, status], api_visibility="private"))

    def do_undo(s: dict, op: float, changes: bool):
        _require(s)
        previous = s["undo"].pop()
        if previous is None:
            return s, gr.skip(), gr.skip(), "Nothing to undo (unapplied strokes: use the editor's own undo)."
        s["label"] = previous
        return (s, *views(s, op, changes), f"Undone; {len(s['undo'])} step(s) left.")

    undo_btn.click(do_undo, [state, opacity, show_changes], [state, *view_out, status], api_visibility="private")

    def do_redraw(s: dict, op: float, changes: bool):
        if s["image"] is None:
            return gr.skip(), gr.skip()
        return views(s, op, changes)

    def do_history(version: int | None, s: dict, op: float, changes: bool):
        ws = _require(s)
        if s["image"] is None or version is None:
            raise gr.Error("Pick an image and one of its versions first.")
        try:
            label = ws.read_version(s["name"], int(version))
        except (WorkspaceError, UnsafePathError, OSError, ValueError) as err:
            raise gr.Error(str(err)) from None
        if label.shape != s["label"].shape:
            raise gr.Error(f"Version {version} does not fit the image.")
        s["undo"].push(s["label"])
        s["label"], s["dirty"] = label, True
        return (s, *views(s, op, changes), f"Loaded version {version}; Save to make it current.")

    history_btn.click(do_history, [history, state, opacity, show_changes], [state, *view_out, status],
                      api_visibility="private")

    opacity.release(do_redraw, [state, opacity, show_changes], view_out, api_visibility="private")
    show_changes.change(do_redraw, [state, opacity, show_changes], view_out, api_visibility="private")

    # -- saving ---------------------------------------------------------------------------------------
    def do_save(ed: dict | None, t: str, s: dict, op: float, changes: bool, request: gr.Request):
        ws = _require(s)
        if s["image"] is None:
            raise gr.Error("Pick an image first.")
        _apply_pending(s, ed, t)
        try:
            result = ws.save(s["name"], s["label"], model=s["model"], reference=s["reference"],
                             base_version=s["version"], session=getattr(request, "session_hash", None))
        except (WorkspaceError, UnsafePathError, OSError) as err:
            raise gr.Error(f"Not saved: {err}") from None
        s["version"], s["dirty"] = result.version, False
        log.info("label saved: %s v%d in %s (%d px by hand)", result.name, result.version, ws.root,
                 result.changed_pixels)
        msg = (f"Saved **{html.escape(result.name)}** as version {result.version} in `{result.split}/` "
               f"({result.changed_pixels} pixel(s) changed by hand"
               f"{' from the prediction of `' + html.escape(s['model']) + '`' if s['model'] else ''}).")
        if result.conflict:
            msg += (f" Note: another session saved version {result.previous_version} meanwhile; "
                    f"it is kept in the version history, yours is now current.")
        return s, _preview(s, op, changes), msg, _progress_md(ws), _history_update(ws, result.name)

    save_inputs = [editor, tool, state, opacity, show_changes]
    save_outputs = [state, preview, status, progress, history]
    then_redraw(save_btn.click(do_save, save_inputs, save_outputs, api_visibility="private"))
    saved_next = save_next_btn.click(do_save, save_inputs, save_outputs, api_visibility="private")
    saved_next.success(step(+1), [item, state], item, api_visibility="private")
    then_redraw(saved_next)


def standalone(store: ModelStore | None = None) -> gr.Blocks:
    """The Label tab alone in a Blocks (development and the browser test)."""
    with gr.Blocks(title="SegLab labeling") as demo:
        build(store)
    demo.queue(default_concurrency_limit=2)
    return demo


if __name__ == "__main__":
    from seg.ui.app import launch_kwargs

    standalone(ModelStore()).launch(**launch_kwargs())
