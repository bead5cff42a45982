"""The Label tab: model-assisted mask labeling into a workspace that trains directly.

Thin by design: storage, versioning, painting, fills and diffs are ``seg.labeling``;
this module only moves arrays between those functions and Gradio components.

How painting stays exact: the editor's background is the image with the current mask
blended in (display opacity), and its layer holds only the strokes not yet applied.
"Apply", a fill, "Save" decode that layer to class ids (alpha-thresholded, exact palette
colours, blended edges from their painted neighbours: ``seg.labeling.paint.decode_strokes``),
merge them into the session's class-id mask, and reset the layer. The blended picture and
the editor's composite are never read back.

Which workspace: nobody types a path. In local mode a workspace is picked from the labels root's
list or created there by name (``seg.labeling.workspace.LabelsRoot``); a server folder can be
imported only from the operator's import roots, and the control exists only when there are some.
In public mode each visitor works in their own space (``seg.visitors``), with quotas, a zip
download and a delete button. ``WorkspaceAccess`` holds those rules in a few functions; the
session only remembers the folder the server resolved.

Every handler is a module-level function of (access?, inputs..., ``LabelSession``); ``build`` only
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
from seg.deploy import MB
from seg.errors import UserError, user_message
from seg.io import ImageLoadError
from seg.labeling import paint
from seg.labeling.classes import ClassList
from seg.labeling.workspace import DEFAULT_WORKSPACE_NAME, Problem, Workspace, palette_for
from seg.modelstore import ModelStore
from seg.ui import label_io, label_tools
from seg.ui.messages import guard_events
from seg.ui.pickers import Serving, current_visitor_key, get_predictor, require_visitor_key, serving_of, watch
from seg.ui.queues import INFERENCE_QUEUE
from seg.ui.samples import sbd_choices, sbd_samples
from seg.ui.scratch import scratch_path, write_scratch

log = logging.getLogger("seg.ui.label")

#: The empty editor's canvas (width, height); with an image the canvas is the image itself, so it opens fitted.
CANVAS = (640, 480)
BRUSH_RADIUS = label_tools.BRUSH_SIZE
#: Brush and eraser first, then scribbles, polygon, box and the fills (``seg.ui.label_tools``).
TOOLS = label_tools.TOOLS
#: Class names that mean "not labelled yet"; a fresh mask starts in the first one present.
UNKNOWN_NAMES = ("misc", "unknown", "unlabeled", "unlabelled", "void", "background")


@dataclass
class LabelSession:
    """One browser session's editing state (``gr.State`` deep-copies it, so it holds the workspace's
    folder, not the ``Workspace`` object, which is shared through ``open_workspace``).

    ``root`` is only ever set by the server (``WorkspaceAccess``): Gradio never takes a state's
    value from the client."""

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
    workspace: str | None = None  # the open workspace's name, for people (local mode)
    current_class: int = 0  # the class swatch picked: what polygon, box, scribbles and fills draw
    tool: str = label_tools.BRUSH  # the tool whose strokes the editor may hold
    points: list = field(default_factory=list)  # polygon vertices or a box's first corner (x, y)
    drafts: dict = field(default_factory=dict)  # image name -> label_tools.Draft: unsaved edits elsewhere


# -- the workspace: opened in one place -----------------------------------------------------------
_workspaces: dict[str, Workspace] = {}
_ws_lock = threading.Lock()


def open_workspace(root: str | Path) -> Workspace:
    """One ``Workspace`` object per folder per process, so every session shares its lock.

    ``root`` is a folder the server chose (``WorkspaceAccess`` or a test), never one a person typed.
    """
    path = Path(root).expanduser().resolve()
    with _ws_lock:
        ws = _workspaces.get(str(path))
        if ws is None:
            ws = _workspaces[str(path)] = Workspace(path)
        return ws


def _share(ws: Workspace) -> Workspace:
    """Make ``ws`` the object ``open_workspace`` hands out for its folder (it may check a quota)."""
    with _ws_lock:
        _workspaces[str(ws.root)] = ws
    return ws


@dataclass
class WorkspaceAccess:
    """Which workspaces this app lets a person use, and how they are named (see the module docstring)."""

    serving: Serving

    @property
    def public(self) -> bool:
        return self.serving.public

    # -- local mode: named workspaces under the labels root --------------------------------------
    def names(self) -> list[str]:
        return self.serving.labels.names() if self.serving.labels is not None else []

    def open_named(self, name: object) -> Workspace:
        if self.serving.labels is None:
            raise UserError("Your workspace is opened for you here; there is no other to choose.")
        return _share(self.serving.labels.open(name))

    def create_named(self, name: object, classes: ClassList | None = None) -> Workspace:
        if self.serving.labels is None:
            raise UserError("Your workspace is made for you here; there is no other to create.")
        return _share(self.serving.labels.create(name, classes))

    def default_name(self) -> str | None:
        names = self.names()
        return DEFAULT_WORKSPACE_NAME if DEFAULT_WORKSPACE_NAME in names else (names[0] if names else None)

    # -- public mode: the visitor's own space ------------------------------------------------------
    def visitor_workspace(self, create: bool) -> Workspace | None:
        """The asking visitor's workspace (made on first use when ``create``), None when they have none."""
        visitors = self.serving.visitors
        if visitors is None:
            return None
        key = require_visitor_key()
        space = visitors.space(key) if create else visitors.existing(key)
        return _share(space.workspace) if space is not None else None

    # -- both ---------------------------------------------------------------------------------------------
    def workspace(self, s: LabelSession, create: bool = False) -> Workspace | None:
        """The workspace the session works in: the visitor's own (public) or the one it opened (local)."""
        if self.public:
            return self.visitor_workspace(create)
        return open_workspace(s.root) if s.root else None

    def describe(self, ws: Workspace | None) -> str:
        """The progress line: images labelled, and in public mode what the quota leaves."""
        if ws is None:
            if self.public:
                return "Your workspace is empty: upload images or pick dataset images to start."
            return "No workspace open: pick one, or create one by name."
        labelled, total = ws.progress()
        if not self.public:
            return f"**{labelled} of {total} labelled** in workspace `{html.escape(ws.root.name)}`"
        text = f"**{labelled} of {total} labelled** in your workspace"
        visitors, key = self.serving.visitors, current_visitor_key()
        space = visitors.existing(key) if visitors is not None and key else None
        if space is not None:
            used = space.usage()
            text += (
                f" · {used.images} of {visitors.max_images} images, {used.bytes / MB:.1f} of "
                f"{visitors.max_bytes / MB:.0f} MB used; deleted after "
                f"{visitors.expiry_s / 3600:g} hours unused"
            )
        return text


def _require(access: WorkspaceAccess, s: LabelSession, create: bool = False) -> Workspace:
    ws = access.workspace(s, create)
    if ws is None:
        raise gr.Error("Add an image first." if access.public else "Open a workspace first.")
    return ws


def _require_image(access: WorkspaceAccess, s: LabelSession) -> Workspace:
    ws = _require(access, s)
    if s.image is None:
        raise gr.Error("Pick an image first.")
    return ws


def _ws(s: LabelSession) -> Workspace | None:
    """The session's workspace for drawing (its palette): the folder the server resolved."""
    return open_workspace(s.root) if s.root else None


# -- pictures and text ------------------------------------------------------------------------------
def _brush(palette: list[tuple[int, int, int]]) -> gr.Brush:
    """Only the workspace's class colours can be picked: a colour is a class."""
    return label_tools.brush_for(palette)


def _editor_value(s: LabelSession, opacity: float) -> dict | None:
    """The editor's value: the blended picture as background, one empty layer for new strokes."""
    if s.image is None:
        return None
    return label_tools.editor_value(s.image, s.label, _ws(s).palette, opacity)


def _preview(s: LabelSession, opacity: float, show_changes: bool) -> np.ndarray | None:
    if s.image is None:
        return None
    return label_tools.preview(s, _ws(s).palette, opacity, show_changes)


def _views(s: LabelSession, opacity: float, show_changes: bool) -> tuple:
    return _editor_value(s, opacity), _preview(s, opacity, show_changes)


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


def _apply_pending(s: LabelSession, editor: dict | None, tool: str) -> int:
    """Merge unapplied strokes into the mask as one undoable edit (brush, eraser or scribbles:
    ``label_tools.apply_pending``); returns how many pixels they covered."""
    try:
        return label_tools.apply_pending(s, editor, tool, _ws(s))
    except label_tools.ToolError as err:
        raise gr.Error(str(err)) from None


# -- handlers: workspace and navigation -----------------------------------------------------------------
def _opened(access: WorkspaceAccess, ws: Workspace | None, s: LabelSession | None = None):
    """Outputs after a workspace is (re)opened: session, progress, problems, image list, brush, legend,
    fill classes, preview. The first unlabelled image gets selected."""
    if ws is None:
        palette, classes = palette_for(len(SBD_CLASSES)), list(SBD_CLASSES)
        return (
            LabelSession(),
            access.describe(None),
            "",
            gr.update(choices=[], value=None),
            gr.update(brush=_brush(palette)),
            label_tools.legend(classes, palette),
            label_tools.class_update(classes),
            None,
        )
    report = ws.scan()
    choices = [it.name for it in report.items]
    first = next((it.name for it in report.items if not it.labelled), choices[0] if choices else None)
    keep = s is not None and s.root == str(ws.root)
    session = s if keep else LabelSession(root=str(ws.root), workspace=None if access.public else ws.root.name)
    return (
        session,
        access.describe(ws),
        _problems_md(report.problems),
        gr.update(choices=choices, value=s.name if keep and s.name in choices else first),
        gr.update(brush=_brush(ws.palette)),
        label_tools.legend(ws.classes, ws.palette),
        label_tools.class_update(ws.classes),
        None if not keep else gr.skip(),
    )


def do_start(access: WorkspaceAccess, current: str | None, s: LabelSession):
    """Page load: the list of workspaces (local) or the visitor's own workspace if they have one (public)."""
    if access.public:
        ws = access.visitor_workspace(create=False)
        return (*_opened(access, ws, s), gr.skip())
    names = access.names()
    value = current if current in names else access.default_name()
    return (*((gr.skip(),) * 8), gr.update(choices=names, value=value))


def do_open(access: WorkspaceAccess, name: str | None, s: LabelSession):
    """Open the workspace picked from the list (local mode)."""
    if not name:
        return _opened(access, None)
    if s.root and s.workspace == name:
        return (gr.skip(),) * 8  # already open (the list was refreshed): keep the edits
    label_tools.warn_unsaved(s)
    return _opened(access, access.open_named(name))


def do_create(
    access: WorkspaceAccess, name: str | None, s: LabelSession, classes: str | None = "", colours: str | None = ""
):
    """Create a new, empty workspace by name under the labels root, with the classes (and colours) typed
    beside the name, and open it (local mode)."""
    ws = access.create_named(name, label_io.class_list_from_text(classes, colours))
    log.info("workspace created: %s", ws.root.name)
    return (*_opened(access, ws), gr.update(choices=access.names(), value=ws.root.name), "")


def do_reopen(access: WorkspaceAccess, created: str | None, s: LabelSession):
    """After classes or an import changed the workspace: show it again (its classes, colours and images),
    keeping the open image's edits; or open the workspace an import just created (local mode)."""
    if created and not access.public:
        label_tools.warn_unsaved(s)
        return (*_opened(access, access.open_named(created)), gr.update(choices=access.names(), value=created))
    opened = _opened(access, access.workspace(s), s)
    return opened if access.public else (*opened, gr.skip())


def do_download(access: WorkspaceAccess) -> str:
    """The visitor's workspace and checkpoints as a zip (public mode)."""
    visitors = access.serving.visitors
    space = visitors.existing(require_visitor_key()) if visitors is not None else None
    if space is None:
        raise gr.Error("There is nothing to download yet: add and label images first.")
    path = scratch_path("") / "seglab-work.zip"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_scratch(path, space.zip_bytes())
    return str(path)


def do_delete(access: WorkspaceAccess, s: LabelSession):
    """Delete the visitor's space now: images, labels and trained checkpoints (public mode)."""
    visitors = access.serving.visitors
    key = require_visitor_key()
    if visitors is None:
        raise gr.Error("There is no personal space to delete here.")
    if access.serving.slots.claimed_by(key) is not None:
        raise gr.Error("Stop your training run first; it is writing into your space.")
    visitors.delete(key)
    with _ws_lock:
        if s.root:
            _workspaces.pop(s.root, None)
    return (*_opened(access, None), None, "Your images, labels and checkpoints were deleted.")


def do_load(access: WorkspaceAccess, name: str | None, s: LabelSession, opacity: float, show_changes: bool):
    """Load the picked image with its current mask (or a fresh one); unsaved edits elsewhere are dropped."""
    ws = access.workspace(s)
    if ws is None or not name:
        return s, None, None, "", gr.update(choices=[], value=None)
    if name == s.name and s.image is not None and s.root == str(ws.root):
        return (gr.skip(),) * 5  # already open: keep the edits
    drafts = label_tools.stash_draft(s)  # unsaved edits of the image being left are kept, not dropped
    left = s.name if s.dirty and s.name != name else None
    loaded = ws.load(name)
    label = loaded.label if loaded.label is not None else _start_label(ws, loaded.image)
    s = LabelSession(
        root=str(ws.root),
        workspace=s.workspace,
        name=name,
        image=loaded.image,
        label=label,
        reference=label.copy(),
        model=loaded.model,
        version=loaded.version,
        drafts=drafts,
        current_class=s.current_class,
        tool=s.tool,
    )
    note = (
        f"Version {loaded.version}" + (f", prefilled by `{html.escape(loaded.model)}`" if loaded.model else "")
        if loaded.version
        else "Not labelled yet: prefill with a model or paint."
    )
    restored = label_tools.restore_draft(s)
    if restored:
        note = f"{note} {restored}"
    if left:
        note += f" Your unsaved changes to {html.escape(left)} are kept: open it again to save them."
    return (s, *_views(s, opacity, show_changes), note, _history_update(ws, name))


def do_step(access: WorkspaceAccess, delta: int, only_unlabelled: bool, name: str | None, s: LabelSession):
    """Move ``delta`` images along the list (wrapping), optionally to the next unlabelled one."""
    items = _require(access, s).items()
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
def _after_import(
    access: WorkspaceAccess,
    ws: Workspace,
    s: LabelSession,
    added: list[str],
    problems: list,
    what: str,
    existing: list[str] = (),  # type: ignore[assignment]
):
    """Outputs after an import; the first new (else already present) image gets opened."""
    if s.root != str(ws.root):
        s = LabelSession(root=str(ws.root), workspace=s.workspace)
    text = f"{what}: added {len(added)} image(s)" if added else f"{what}: no new image"
    if existing:
        text += f"; {len(existing)} already in the workspace"
    if problems:
        text += f"; {len(problems)} file(s) could not be used (listed above)"
    first = next(iter([*added, *existing]), None)
    names = ws.names()
    item = gr.update(choices=names, value=first) if first in names else gr.update(choices=names)
    return (s, access.describe(ws), _problems_md(problems), text + ".", item)


def do_upload(access: WorkspaceAccess, files: list | None, s: LabelSession):
    """Import uploaded files (Gradio hands over paths in its upload folder only)."""
    ws = _require(access, s, create=True)
    added, existing, bad = [], [], []
    for f in files or []:
        path = Path(f if isinstance(f, str) else getattr(f, "name", str(f)))
        try:
            name, new = ws.import_image(path, name=path.name, source_desc=f"upload:{path.name}")
            (added if new else existing).append(name)
        except ImageLoadError as err:  # the message must not show the server's temp path
            bad.append(Problem(path.name, f"not imported: {user_message(err)}"))
    return _after_import(access, ws, s, added, bad, "Upload", existing)


def do_folder(access: WorkspaceAccess, path: str, s: LabelSession):
    """Import a server folder, only under the operator's import roots (local mode)."""
    ws = _require(access, s)
    report = ws.import_folder(path, import_roots=access.serving.deployment.import_roots)
    return _after_import(access, ws, s, report.added, report.problems, "Folder", report.existing)


def do_dataset(access: WorkspaceAccess, sample_id: str | None, s: LabelSession):
    sample = sbd_samples().get(sample_id or "") if isinstance(sample_id, str) else None
    if sample is None:
        raise gr.Error("Pick a dataset image first.")
    ws = _require(access, s, create=True)
    name, new = ws.import_image(sample.image_path, name=f"sbd_{sample.id}", source_desc=f"sbd:{sample.id}")
    return _after_import(access, ws, s, [name] if new else [], [], "Dataset", [] if new else [name])


# -- handlers: editing ---------------------------------------------------------------------------------
def do_prefill(store: ModelStore | None, model_name: str | None, s: LabelSession, opacity: float, show_changes: bool):
    """Replace the mask with the model's prediction (undoable); it becomes the "changed by hand" reference."""
    ws = _session_image(s)
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
    _session_ws(s)
    n = _apply_pending(s, editor, tool)
    return (
        s,
        _preview(s, opacity, show_changes),
        (f"Applied strokes over {n} pixel(s)." if n else "No strokes to apply."),
    )


def do_history(version: int | None, s: LabelSession, opacity: float, show_changes: bool):
    """Load a saved version into the editor (undoable); Save makes it current."""
    ws = _session_ws(s)
    if s.image is None or version is None:
        raise gr.Error("Pick an image and one of its versions first.")
    try:
        number = int(version)
    except (TypeError, ValueError):
        raise gr.Error("Pick one of the saved versions.") from None
    label = ws.read_version(s.name, number)
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


def _session_ws(s: LabelSession) -> Workspace:
    ws = _ws(s)
    if ws is None:
        raise gr.Error("Pick an image first.")
    return ws


def _session_image(s: LabelSession) -> Workspace:
    ws = _session_ws(s)
    if s.image is None:
        raise gr.Error("Pick an image first.")
    return ws


def do_save(
    access: WorkspaceAccess, editor: dict | None, tool: str, s: LabelSession, opacity: float, show_changes: bool
):
    """Apply pending strokes and save the mask as a new version (a concurrent save is kept in history)."""
    ws = _require(access, s)
    if s.image is None or s.root != str(ws.root):
        raise gr.Error("Pick an image first.")
    _apply_pending(s, editor, tool)
    same = label_tools.unchanged_version(ws, s)
    if same is not None:  # "Save and next" right after "Save", or edits undone: no identical version
        s.version, s.dirty = same, False
        msg = f"No changes since version {same} of **{html.escape(s.name)}**: nothing new to save."
        return s, _preview(s, opacity, show_changes), msg, access.describe(ws), gr.skip()
    result = ws.save(
        s.name, s.label, model=s.model, reference=s.reference, base_version=s.version, session=current_visitor_key()
    )
    s.version, s.dirty = result.version, False
    log.info(
        "label saved: %s v%d in %s (%d px by hand)", result.name, result.version, ws.root.name, result.changed_pixels
    )
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
    return s, _preview(s, opacity, show_changes), msg, access.describe(ws), _history_update(ws, result.name)


# -- the tab -----------------------------------------------------------------------------------------
@dataclass
class LabelTab:
    """The tab's components, as ``_layout`` made them. Local mode has the workspace list and, with
    import roots, the server-folder import; public mode has the download and delete buttons instead;
    ``ds_pick``/``ds_btn`` exist only with the dataset."""

    state: gr.State
    workspace: gr.Dropdown | None
    new_name: gr.Textbox | None
    create_btn: gr.Button | None
    download_btn: gr.Button | None
    download_file: gr.File | None
    delete_btn: gr.Button | None
    progress: gr.Markdown
    problems: gr.Markdown
    upload: gr.File
    folder: gr.Textbox | None
    folder_btn: gr.Button | None
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
    fill_class: gr.Radio
    opacity: gr.Slider
    show_changes: gr.Checkbox
    save_btn: gr.Button
    save_next_btn: gr.Button
    status: gr.Markdown
    history: gr.Dropdown
    history_btn: gr.Button
    create_inputs: label_io.CreateInputs | None
    tools: label_tools.ToolPanel
    queue: label_tools.QueuePanel
    io: label_io.IoPanel


def _make_editor(brush: gr.Brush) -> gr.ImageEditor:
    """The stroke editor. Its canvas takes each image's own size (``fixed_canvas=False``): one canvas pixel
    is one image pixel, and the editor opens with the whole image fitted in view."""
    return gr.ImageEditor(
        label="Paint (strokes merge into the mask on Apply, Save, a click tool or moving on)",
        type="numpy",
        image_mode="RGBA",
        format="png",
        sources=(),
        transforms=(),
        layers=False,
        canvas_size=CANVAS,
        fixed_canvas=False,
        elem_id="label-editor",
        brush=brush,
        eraser=gr.Eraser(default_size=BRUSH_RADIUS),
    )


def _layout(store: Any, access: WorkspaceAccess) -> LabelTab:
    """Create the tab's components inside the current ``gr.Tab``/``gr.Blocks``."""
    start_name = None if access.public else access.default_name()
    # Nothing is created just because the app started: the default workspace opens only if it exists.
    start_ws = access.open_named(start_name) if start_name else None
    palette = start_ws.palette if start_ws else palette_for(len(SBD_CLASSES))
    classes = start_ws.classes if start_ws else list(SBD_CLASSES)
    start_items = start_ws.items() if start_ws else []
    state = gr.State(LabelSession(root=str(start_ws.root), workspace=start_name) if start_ws else LabelSession())

    workspace = new_name = create_btn = download_btn = download_file = delete_btn = create_inputs = None
    folder = folder_btn = None
    if access.public:
        gr.Markdown(
            "Your own workspace: only this browser session sees it (or your Hugging Face account, when "
            "you are logged in). Download it to keep your work.",
            elem_id="label-public-note",
        )
        with gr.Row():
            download_btn = gr.Button("Download my work (zip)", scale=1, elem_id="label-download")
            delete_btn = gr.Button("Delete my work", variant="stop", scale=1, elem_id="label-delete")
            download_file = gr.File(label="Your work", interactive=False, scale=2, elem_id="label-download-file")
    else:
        with gr.Row():
            workspace = gr.Dropdown(
                access.names(),
                value=start_name,
                label="Workspace",
                scale=3,
                elem_id="label-workspace",
                allow_custom_value=False,
            )
            new_name = gr.Textbox(
                label="…or a new workspace, by name",
                placeholder="letters, digits, '.', '_' and '-'",
                scale=2,
                max_length=64,
                elem_id="label-new-name",
            )
            create_btn = gr.Button("Create workspace", scale=1, elem_id="label-create")
        create_inputs = label_io.create_inputs()
    progress = gr.Markdown(access.describe(start_ws), elem_id="label-progress")
    problems = gr.Markdown("")
    with gr.Accordion("Add images to the workspace", open=access.public), gr.Row():
        upload = gr.File(file_count="multiple", file_types=["image"], label="Upload images", elem_id="label-upload")
        with gr.Column():
            if access.serving.deployment.server_folder_import:
                folder = gr.Textbox(label="…or a folder of images on the server (under the import folders)")
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
    queue = label_tools.queue_layout()
    with gr.Row():
        names = store.names("semantic") if store is not None else []
        best = store.best("semantic", 1) if store is not None else []  # the most accurate prefill leaves least to fix
        model = gr.Dropdown(names, value=(best or [None])[0], label="Model for prefill", scale=3, elem_id="label-model")
        if store is not None:
            watch(store, model, "semantic")
        prefill_btn = gr.Button("Prefill with model", scale=1, elem_id="label-prefill")
    with gr.Row():
        with gr.Column(scale=3):
            tools = label_tools.tool_panel(list(classes), list(palette), _make_editor)
            editor, legend, tool = tools.editor, tools.legend, tools.tool
            apply_btn, undo_btn, fill_class = tools.apply_btn, tools.undo_btn, tools.class_pick
        with gr.Column(scale=2):
            preview = gr.Image(
                label="Mask (click here with polygon, box and the fills)",
                interactive=False,
                elem_id="label-preview",
                format="png",
            )
            opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Mask opacity (display only)")
            show_changes = gr.Checkbox(True, label="Outline pixels changed from the model's prediction")
    with gr.Row():
        save_btn = gr.Button("Save", variant="primary", elem_id="label-save")
        save_next_btn = gr.Button("Save and next", elem_id="label-save-next")
    status = gr.Markdown("", elem_id="label-status")
    with gr.Accordion("Saved versions of this image", open=False), gr.Row():
        history = gr.Dropdown([], label="Version", scale=3, elem_id="label-history")
        history_btn = gr.Button("Load this version into the editor (Save makes it current)", scale=2)
    io = label_io.io_panel(list(classes), local=not access.public)
    if access.public:
        gr.Markdown(
            "Train on these labels in the Train tab (*My labels*); the zip above holds them as a dataset folder."
        )
    else:
        gr.Markdown(
            "Train on these labels in the Train tab (*My labels*) or with "
            "`python -m seg train --model unet --data <workspace folder>`. "
            "Export and import CVAT, COCO, VOC or a workspace zip above, or with "
            "`python -m seg label-export --workspace <workspace folder> --format coco --out DIR`."
        )
    made = locals()  # every component above, matched to ``LabelTab`` by name (a missing one fails at build)
    return LabelTab(**{name: made[name] for name in LabelTab.__dataclass_fields__})


def _wire(c: LabelTab, store: Any, access: WorkspaceAccess) -> None:
    """Connect the components to the handlers (every event is private: the tab has no public API)."""
    private: dict[str, Any] = {"api_visibility": "private"}
    views = [c.editor, c.preview]
    display = [c.state, c.opacity, c.show_changes]
    opened = [c.state, c.progress, c.problems, c.item, c.editor, c.legend, c.fill_class, c.preview]

    def then_redraw(event: Any) -> None:
        """The editor is refreshed in a follow-up event: Gradio's ImageEditor stalls when one
        event both reads and writes it."""
        event.then(redraw_editor, [c.state, c.opacity], c.editor, show_progress="minimal", **private)

    load = dict(
        fn=partial(do_load, access),
        inputs=[c.item, *display],
        outputs=[c.state, *views, c.status, c.history],
        **private,
    )
    c.item.change(  # strokes not applied yet join the image's mask (a draft until saved) before another opens
        partial(label_tools.keep_pending, _session_ws), [c.editor, c.tool, c.state], c.state, **private
    ).then(**load)
    root_block = gr.context.Context.root_block
    if access.public:
        if root_block is not None:
            root_block.load(partial(do_start, access, None), [c.state], [*opened, c.status], **private)
        c.download_btn.click(partial(do_download, access), None, c.download_file, **private)
        c.delete_btn.click(partial(do_delete, access), [c.state], [*opened, c.download_file, c.status], **private)
    else:
        if root_block is not None:
            root_block.load(partial(do_start, access), [c.workspace, c.state], [*opened, c.workspace], **private)
        c.workspace.input(partial(do_open, access), [c.workspace, c.state], opened, **private).then(**load)
        gr.on(
            [c.create_btn.click, c.new_name.submit],
            partial(do_create, access),
            [c.new_name, c.state, c.create_inputs.classes, c.create_inputs.colours],
            [*opened, c.workspace, c.new_name],
            **private,
        ).then(**load)
    for button, delta, only_unlabelled in ((c.prev_btn, -1, False), (c.next_btn, +1, False), (c.todo_btn, +1, True)):
        button.click(partial(do_step, access, delta, only_unlabelled), [c.item, c.state], c.item, **private)

    imported = [c.state, c.progress, c.problems, c.status, c.item]
    c.upload.upload(partial(do_upload, access), [c.upload, c.state], imported, **private)
    if c.folder is not None and c.folder_btn is not None:
        c.folder_btn.click(partial(do_folder, access), [c.folder, c.state], imported, **private)
    if c.ds_pick is not None and c.ds_btn is not None:
        c.ds_btn.click(partial(do_dataset, access), [c.ds_pick, c.state], imported, **private)

    c.prefill_btn.click(
        partial(do_prefill, store),
        [c.model, *display],
        [c.state, *views, c.status],
        concurrency_id=INFERENCE_QUEUE,
        **private,
    )
    then_redraw(c.apply_btn.click(do_apply, [c.editor, c.tool, *display], [c.state, c.preview, c.status], **private))
    label_tools.wire(
        c.tools,
        _session_ws,
        store,
        state=c.state,
        editor=c.editor,
        preview_image=c.preview,
        status=c.status,
        model=c.model,
        opacity=c.opacity,
        show_changes=c.show_changes,
    )
    label_tools.wire_queue(c.queue, _session_ws, store, state=c.state, item=c.item, status=c.status, model=c.model)
    reopened = [*opened] if access.public else [*opened, c.workspace]
    for event in label_io.wire(c.io, partial(_require, access), access.serving.labels, state=c.state):
        event.then(partial(do_reopen, access), [c.io.created, c.state], reopened, **private).then(**load)
    c.history_btn.click(do_history, [c.history, *display], [c.state, *views, c.status], **private)
    gr.on([c.opacity.release, c.show_changes.change], do_redraw, display, views, **private)

    save_inputs = [c.editor, c.tool, *display]
    save_outputs = [c.state, c.preview, c.status, c.progress, c.history]
    save = partial(do_save, access)
    then_redraw(c.save_btn.click(save, save_inputs, save_outputs, **private))
    saved_next = c.save_next_btn.click(save, save_inputs, save_outputs, **private)
    saved_next.success(partial(do_step, access, +1, False), [c.item, c.state], c.item, **private)
    then_redraw(saved_next)


def build(store: Any) -> None:
    """Components and events of the Label tab (inside the current ``gr.Tab``)."""
    access = WorkspaceAccess(serving_of(store))
    _wire(_layout(store, access), store, access)


def standalone(store: ModelStore | None = None) -> gr.Blocks:
    """The Label tab alone in a Blocks (development and the browser test)."""
    with gr.Blocks(title="SegLab labeling") as demo:
        build(store)
    guard_events(demo)
    demo.queue(default_concurrency_limit=2)
    return demo


if __name__ == "__main__":
    from seg.ui.app import launch_kwargs

    standalone(ModelStore()).launch(**launch_kwargs())
