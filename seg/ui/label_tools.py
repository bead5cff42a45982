"""The Label tab's tools: class swatches, brush and eraser, scribbles, polygon, box -> mask, fills,
one undo/redo, keyboard shortcuts, unsaved drafts, and the uncertainty-first queue.

Two surfaces, one mask. The editor (``gr.ImageEditor``) takes strokes: the brush paints a class,
the eraser gives pixels back the model's prefill, scribbles mark an object and its background for
GrabCut. Its canvas is the image itself (one canvas pixel = one image pixel), so it opens fitted to
the image. The mask preview takes clicks: polygon vertices, the two corners of a box, a region or
a superpixel to fill. Every tool turns into a new class-id mask through ``seg.labeling`` (``paint``,
``tools``) and is recorded in the session's one ``History``, so Undo and Redo (Ctrl+Z, Ctrl+Y)
take back any of them in order.

This module never imports ``seg.ui.label`` (which builds the tab from it): a handler gets the
tab's workspace rule as ``workspace_of(session)``, and reads or writes only the session fields
documented on ``seg.ui.label.LabelSession``.
"""

from __future__ import annotations

import html
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import cv2
import gradio as gr
import numpy as np

from seg.labeling import paint, tools
from seg.labeling.uncertainty import UncertaintyRanker, latest_workspace_model
from seg.labeling.workspace import Workspace, WorkspaceError
from seg.ui.pickers import get_predictor
from seg.ui.queues import INFERENCE_QUEUE
from seg.ui.style import legend_html

log = logging.getLogger("seg.ui.label_tools")

BRUSH, ERASER, SCRIBBLES, POLYGON, BOX, FILL, SUPERPIXEL = (
    "brush",
    "eraser",
    "scribbles",
    "polygon",
    "box",
    "fill",
    "superpixel",
)
#: Every tool, in the order of the tool picker (and of its keys in ``TOOL_KEYS``).
TOOLS = (BRUSH, ERASER, SCRIBBLES, POLYGON, BOX, FILL, SUPERPIXEL)
TOOL_KEYS = ("B", "E", "G", "P", "X", "F", "U")
TOOL_LABELS = {
    BRUSH: "Brush",
    ERASER: "Eraser (back to the prefill)",
    SCRIBBLES: "Scribbles → mask",
    POLYGON: "Polygon",
    BOX: "Box → mask",
    FILL: "Fill region",
    SUPERPIXEL: "Fill superpixel",
}
#: Tools that paint on the editor; the others act on clicks on the mask preview.
STROKE_TOOLS = (BRUSH, ERASER, SCRIBBLES)
#: Scribble colours: what to keep (the object) and what is not it (its background).
OBJECT_MARK = (57, 255, 20)
BACKGROUND_MARK = (255, 23, 68)
BRUSH_SIZE = 10
#: A click this close to the first vertex (fraction of the image's longer side, at least 5 px) closes a polygon.
CLOSE_FRACTION = 0.02
#: Rows of the uncertainty queue shown.
QUEUE_ROWS = 50
#: How often the queue and the prefill default follow the background ranking (seconds).
QUEUE_POLL_S = 3.0

SHORTCUTS: tuple[tuple[str, str], ...] = (
    ("1–9", "pick class 1–9"),
    *((key, TOOL_LABELS[tool].split(" (")[0].lower()) for key, tool in zip(TOOL_KEYS, TOOLS)),
    ("A", "apply strokes"),
    ("Enter", "close the polygon"),
    ("Esc", "drop the polygon's points or the box's first corner"),
    ("Ctrl+Z", "undo"),
    ("Ctrl+Y, Ctrl+Shift+Z", "redo"),
    ("S, Ctrl+S", "save"),
    ("← / →", "previous / next image"),
    ("N", "next most uncertain image"),
)

#: Installed once per page (``demo.load(js=...)``); keys act only while the Label tab is shown and no
#: text field has the focus. Each key clicks the control that does the same, so a key and a click
#: can never behave differently.
SHORTCUTS_JS = """
() => {
  if (window.segLabelShortcuts) return [];
  window.segLabelShortcuts = true;
  const TOOL_KEYS = @TOOL_KEYS@;
  const visible = (el) => el && el.offsetParent !== null;
  const click = (selector) => {
    const el = document.querySelector(selector);
    if (!visible(el)) return false;
    el.click();
    return true;
  };
  const pick = (selector, index) => {
    const options = document.querySelectorAll(selector + ' input[type=radio]');
    if (index < 0 || index >= options.length) return false;
    options[index].click();
    return true;
  };
  document.addEventListener('keydown', (event) => {
    if (!visible(document.getElementById('label-tools'))) return;
    const target = event.target;
    const tag = target && target.tagName;
    const typing = target && (target.isContentEditable || tag === 'TEXTAREA' || tag === 'SELECT' ||
      (tag === 'INPUT' && !['radio', 'checkbox', 'button', 'range'].includes(target.type)));
    if (typing) return;
    const key = event.key.toLowerCase();
    if (tag === 'BUTTON' && (key === 'enter' || key === ' ')) return;
    let done = false;
    if (event.ctrlKey || event.metaKey) {
      if (key === 'z' && !event.shiftKey) done = click('#label-undo');
      else if (key === 'y' || (key === 'z' && event.shiftKey)) done = click('#label-redo');
      else if (key === 's') done = click('#label-save');
    } else if (!event.altKey) {
      if (/^[1-9]$/.test(key)) done = pick('#label-class', Number(key) - 1);
      else if (TOOL_KEYS.includes(key)) done = pick('#label-tool', TOOL_KEYS.indexOf(key));
      else if (key === 'a') done = click('#label-apply');
      else if (key === 's') done = click('#label-save');
      else if (key === 'n') done = click('#label-next-uncertain');
      else if (key === 'enter') done = click('#label-close-polygon');
      else if (key === 'escape') done = click('#label-cancel-points');
      else if (key === 'arrowleft') done = click('#label-prev');
      else if (key === 'arrowright') done = click('#label-next');
    }
    if (done) event.preventDefault();
  });
  return [];
}
""".replace("@TOOL_KEYS@", str([k.lower() for k in TOOL_KEYS]))

#: One ranker per process: rankings are kept per workspace folder.
RANKER = UncertaintyRanker()

WorkspaceOf = Callable[[Any], Workspace]


# -- looks -------------------------------------------------------------------------------------------
def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def brush_for(palette: list[tuple[int, int, int]], tool: str | None = BRUSH, class_id: int = 0) -> gr.Brush:
    """The editor's brush: the class colours (the selected one first picked), or the two scribble marks."""
    if tool == SCRIBBLES:
        colours = [_hex(OBJECT_MARK), _hex(BACKGROUND_MARK)]
        return gr.Brush(colors=colours, default_color=colours[0], color_mode="fixed", default_size=BRUSH_SIZE)
    colours = [_hex(c) for c in palette]
    default = colours[class_id] if 0 <= class_id < len(colours) else colours[0]
    return gr.Brush(colors=colours, default_color=default, color_mode="fixed", default_size=BRUSH_SIZE)


def class_choices(classes: list[str]) -> list[tuple[str, int]]:
    """Swatch labels: the key that picks the class (1–9), then its name."""
    return [(f"{i + 1} {name}" if i < 9 else name, i) for i, name in enumerate(classes)]


def class_update(classes: list[str], value: int = 0) -> dict:
    return gr.update(choices=class_choices(classes), value=value if 0 <= value < len(classes) else 0)


def legend(classes: list[str], palette: list[tuple[int, int, int]]) -> str:
    """The legend, plus the class swatches' colours (each option of ``#label-class`` gets its class colour)."""
    rules = [
        f"#label-class label:nth-of-type({i + 1}) {{ border-left: 14px solid {_hex(tuple(c))} !important; }}"
        for i, c in enumerate(palette[: len(classes)])
    ]
    return f"<style>{''.join(rules)}</style>" + legend_html(classes, palette)


def shortcuts_md() -> str:
    return "**Keys**: " + " · ".join(f"`{html.escape(k)}` {html.escape(v)}" for k, v in SHORTCUTS)


def editor_value(image: np.ndarray, label: np.ndarray, palette: list, opacity: float) -> dict:
    """The editor's value at the image's own size: the blended picture behind one empty stroke layer."""
    background = paint.render(image, label, palette, opacity)
    blank = np.zeros((*image.shape[:2], 4), dtype=np.uint8)
    return {"background": background, "layers": [blank], "composite": None}


def preview(s: Any, palette: list, opacity: float, show_changes: bool) -> np.ndarray | None:
    """The mask preview, with the polygon's vertices or the box's first corner drawn on it."""
    if s.image is None:
        return None
    changed = paint.changed_mask(s.label, s.reference) if show_changes else None
    out = paint.render(s.image, s.label, palette, opacity, changed)
    points = list(getattr(s, "points", None) or [])
    if not points:
        return out
    height, width = out.shape[:2]
    thickness = max(1, round(max(height, width) / 320))
    pts = np.round(np.asarray(points, dtype=np.float64)).astype(np.int32)
    colour = tuple(int(v) for v in palette[s.current_class]) if 0 <= s.current_class < len(palette) else (255, 255, 0)
    if len(pts) > 1:
        cv2.polylines(out, [pts.reshape(-1, 1, 2)], False, (255, 255, 255), thickness + 2, cv2.LINE_AA)
        cv2.polylines(out, [pts.reshape(-1, 1, 2)], False, colour, thickness, cv2.LINE_AA)
    for x, y in pts:
        cv2.circle(out, (int(x), int(y)), thickness * 3, (255, 255, 255), -1, cv2.LINE_AA)
        cv2.circle(out, (int(x), int(y)), thickness * 2, colour, -1, cv2.LINE_AA)
    return out


# -- strokes -----------------------------------------------------------------------------------------
class ToolError(ValueError):
    """A tool cannot do what was asked; the message is a plain sentence for the person."""


def pending_strokes(s: Any, editor: dict | None, colours: list[tuple[int, int, int]]) -> np.ndarray | None:
    """Ids (indices into ``colours``) painted on the editor's layers at image size; None when nothing was."""
    if s.image is None or not editor:
        return None
    height, width = s.image.shape[:2]
    view = paint.CanvasView(height, width, width, height)  # the canvas is the image: a resize at most
    merged = None
    for layer in editor.get("layers") or []:
        if layer is None:
            continue
        layer = np.asarray(layer)
        if layer.ndim != 3 or layer.shape[2] != 4:
            continue
        ids = paint.decode_strokes(view.from_canvas(layer), colours)
        merged = ids if merged is None else np.where(ids != paint.NO_STROKE, ids, merged)
    if merged is None or not (merged != paint.NO_STROKE).any():
        return None
    return merged


def merge_strokes(s: Any, strokes: np.ndarray, tool: str) -> np.ndarray:
    """The mask after strokes of ``tool``: brush paints, eraser restores the prefill, scribbles cut
    the marked object out with GrabCut into the selected class. Clicking tools' strokes paint."""
    if tool == ERASER:
        reference = s.reference if s.reference is not None else s.label
        return paint.erase_strokes(s.label, strokes, reference)
    if tool == SCRIBBLES:
        marked_object, background = strokes == 0, strokes == 1
        if not marked_object.any():
            raise ToolError("Mark the object with at least one green scribble (red marks what is not it).")
        return tools.scribble_fill(s.label, s.image, marked_object, background, int(s.current_class))
    return paint.apply_strokes(s.label, strokes)


def apply_pending(s: Any, editor: dict | None, tool: str, ws: Workspace) -> int:
    """Merge the strokes not applied yet into the mask as one undoable edit; returns the pixels they cover."""
    colours = [OBJECT_MARK, BACKGROUND_MARK] if tool == SCRIBBLES else list(ws.palette)
    strokes = pending_strokes(s, editor, colours)
    if strokes is None:
        return 0
    _commit(s, merge_strokes(s, strokes, tool), tool)
    return int((strokes != paint.NO_STROKE).sum())


def _commit(s: Any, after: np.ndarray, tool: str) -> bool:
    """Record one edit in the session's history; True when it changed the mask."""
    before = s.label
    s.label = s.undo.commit(before, np.asarray(after, dtype=before.dtype), tool)
    changed = bool(np.any(s.label != before))
    s.dirty = s.dirty or changed
    return changed


# -- drafts and saves ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Draft:
    """Unsaved edits of one image, kept while the person looks at another."""

    label: np.ndarray
    reference: np.ndarray | None
    model: str | None
    version: int


def stash_draft(s: Any) -> dict[str, Draft]:
    """The session's drafts with the open image's unsaved edits added (moving away never drops them)."""
    drafts = dict(getattr(s, "drafts", None) or {})
    if s.name and s.dirty and s.label is not None:
        drafts[s.name] = Draft(s.label.copy(), None if s.reference is None else s.reference.copy(), s.model, s.version)
    return drafts


def restore_draft(s: Any) -> str | None:
    """Put back the unsaved edits of the image just loaded; returns a sentence saying so (None: none)."""
    draft = s.drafts.pop(s.name, None) if s.name else None
    if draft is None or draft.label.shape != s.label.shape:
        return None
    s.label, s.reference, s.model, s.dirty = draft.label, draft.reference, draft.model, True
    note = "Your unsaved changes to this image are back; Save keeps them."
    if draft.version != s.version:
        note += f" (They started from version {draft.version}; version {s.version} was saved meanwhile.)"
    return note


def warn_unsaved(s: Any) -> None:
    """Say which images of the workspace being left have unsaved edits (they stay behind, unsaved)."""
    unsaved = sorted({*(getattr(s, "drafts", None) or {}), *([s.name] if s.dirty and s.name else [])})
    if unsaved:
        shown = ", ".join(unsaved[:5]) + (f" and {len(unsaved) - 5} more" if len(unsaved) > 5 else "")
        gr.Warning(f"Unsaved changes to {shown} in {s.workspace or 'the previous workspace'} were not saved.")


def unchanged_version(ws: Workspace, s: Any) -> int | None:
    """The current saved version when it already holds exactly the session's mask (so a save is skipped)."""
    if s.name is None or s.label is None:
        return None
    latest = ws.manifest.latest(s.name)
    if latest is None or latest.version < 1:
        return None
    try:
        saved = ws.read_version(s.name, latest.version)
    except (WorkspaceError, OSError, ValueError):
        return None
    return latest.version if saved.shape == s.label.shape and np.array_equal(saved, s.label) else None


# -- the tool panel -------------------------------------------------------------------------------------
@dataclass
class ToolPanel:
    """Components of the tool panel and the editor it surrounds (``tool_panel`` lays them out)."""

    class_pick: gr.Radio
    legend: gr.HTML
    tool: gr.Radio
    help: gr.Markdown
    editor: gr.ImageEditor
    apply_btn: gr.Button
    undo_btn: gr.Button
    redo_btn: gr.Button
    close_btn: gr.Button
    cancel_btn: gr.Button
    seed: gr.Checkbox
    #: Whether the last tool change applied strokes (then the editor's picture must be redrawn).
    applied: gr.State


def tool_panel(
    classes: list[str], palette: list[tuple[int, int, int]], make_editor: Callable[[gr.Brush], gr.ImageEditor]
) -> ToolPanel:
    """Class swatches and the tool picker, the editor (``make_editor(brush)``), then apply, undo, redo,
    polygon close/drop, model seeding and the list of keys."""
    class_pick = gr.Radio(class_choices(classes), value=0, label="Class (keys 1–9)", elem_id="label-class")
    legend_box = gr.HTML(legend(classes, palette), elem_id="label-legend")
    tool = gr.Radio(
        [(f"{TOOL_LABELS[t]} ({k})", t) for t, k in zip(TOOLS, TOOL_KEYS)],
        value=BRUSH,
        label="Tool",
        elem_id="label-tool",
    )
    help_md = gr.Markdown(tool_help(BRUSH), elem_id="label-tool-help")
    editor = make_editor(brush_for(palette, BRUSH, 0))
    with gr.Row(elem_id="label-tools"):
        apply_btn = gr.Button("Apply strokes (A)", elem_id="label-apply", size="sm")
        undo_btn = gr.Button("Undo (Ctrl+Z)", elem_id="label-undo", size="sm")
        redo_btn = gr.Button("Redo (Ctrl+Y)", elem_id="label-redo", size="sm")
        close_btn = gr.Button("Close polygon (Enter)", elem_id="label-close-polygon", size="sm")
        cancel_btn = gr.Button("Drop points (Esc)", elem_id="label-cancel-points", size="sm")
    seed = gr.Checkbox(
        False,
        label="Box → mask: start from the prefill model's probabilities for the class (when the model knows it)",
        elem_id="label-seed",
    )
    with gr.Accordion("Keyboard shortcuts", open=False):
        gr.Markdown(shortcuts_md(), elem_id="label-shortcuts")
    return ToolPanel(
        class_pick,
        legend_box,
        tool,
        help_md,
        editor,
        apply_btn,
        undo_btn,
        redo_btn,
        close_btn,
        cancel_btn,
        seed,
        gr.State(False),
    )


def tool_help(tool: str) -> str:
    return {
        BRUSH: "Paint in the editor with the class colour; Apply, Save or any click tool merges the strokes.",
        ERASER: "Paint over applied paint to give those pixels back the prefill's classes.",
        SCRIBBLES: "Scribble green on the object and red beside it, then Apply: GrabCut cuts the object "
        "out into the selected class.",
        POLYGON: "Click the vertices on the mask preview; click the first one again (or Enter) to fill it.",
        BOX: "Click two opposite corners on the mask preview: GrabCut cuts the object in the box out.",
        FILL: "Click a region on the mask preview: the connected pixels of its class take the selected class.",
        SUPERPIXEL: "Click on the mask preview: the superpixel (a patch of similar colour) takes the class.",
    }.get(tool, "")


# -- handlers ---------------------------------------------------------------------------------------------
def _session_ws(workspace_of: WorkspaceOf, s: Any) -> Workspace:
    ws = workspace_of(s)
    if s.image is None:
        raise gr.Error("Pick an image first.")
    return ws


def _class_of(ws: Workspace, class_id: Any) -> int:
    try:
        index = int(class_id)
    except (TypeError, ValueError):
        index = -1
    if not 0 <= index < ws.num_classes:
        raise gr.Error("Pick a class first.")
    return index


def _apply_or_refuse(s: Any, editor: dict | None, tool: str, ws: Workspace) -> int:
    try:
        return apply_pending(s, editor, tool, ws)
    except (ToolError, ValueError) as err:
        raise gr.Error(str(err)) from None


def do_class(workspace_of: WorkspaceOf, class_id: Any, tool: str, s: Any):
    """A class swatch was picked: it is what every tool draws from now on (the brush colour follows)."""
    if s.root is None:
        return s, gr.skip()
    ws = workspace_of(s)
    s.current_class = _class_of(ws, class_id)
    if tool == SCRIBBLES:
        return s, gr.skip()
    return s, gr.update(brush=brush_for(ws.palette, tool, s.current_class))


def do_tool(workspace_of: WorkspaceOf, editor: dict | None, tool: str, s: Any, opacity: float, show_changes: bool):
    """Another tool: strokes of the previous one are applied first, polygon points dropped."""
    if tool not in TOOLS:
        raise gr.Error("Pick one of the listed tools.")
    previous, s.tool, s.points = getattr(s, "tool", BRUSH), tool, []
    if s.image is None or s.root is None:
        return s, gr.skip(), "", tool_help(tool), False
    ws = workspace_of(s)
    n = _apply_or_refuse(s, editor, previous if previous in STROKE_TOOLS else BRUSH, ws)
    if not n:
        return s, gr.skip(), "", tool_help(tool), False
    note = f"Applied the {previous} strokes ({n} pixels) before switching to {tool}."
    return s, preview(s, ws.palette, opacity, show_changes), note, tool_help(tool), True


def redraw_for_tool(workspace_of: WorkspaceOf, s: Any, tool: str, opacity: float, applied: bool = True):
    """The editor after a tool change: the tool's brush colours, and the mask's picture when strokes were
    applied (otherwise the picture stays, so strokes begun meanwhile are not wiped)."""
    if s.root is None:
        return gr.skip()
    ws = workspace_of(s)
    brush = brush_for(ws.palette, tool, s.current_class)
    if not applied or s.image is None:
        return gr.update(brush=brush)
    return gr.update(value=editor_value(s.image, s.label, ws.palette, opacity), brush=brush)


def class_probability(store: Any, model: str | None, ws: Workspace, class_id: int, image: np.ndarray):
    """(the prefill model's probability of the class at image size, or None; a sentence on what seeded the box)."""
    predictor = get_predictor(store, model)
    known = [str(c).casefold() for c in getattr(predictor, "classes", [])]
    wanted = ws.classes[class_id]
    if wanted.casefold() not in known:
        return None, f"`{model}` does not know the class {wanted}, so colour alone cut the box"
    probs = predictor.predict(image).probs
    return probs[known.index(wanted.casefold())], f"seeded by `{model}`"


def do_click(
    workspace_of: WorkspaceOf,
    store: Any,
    editor: dict | None,
    tool: str,
    class_id: Any,
    seed: bool,
    model: str | None,
    s: Any,
    opacity: float,
    show_changes: bool,
    evt: gr.SelectData,
):
    """A click on the mask preview: a polygon vertex, a box corner, or a fill (pending strokes first).

    The class and the tool come with the click (the page's current picks), never from an earlier event
    that may still be on its way."""
    ws = _session_ws(workspace_of, s)
    try:
        x, y = (float(v) for v in evt.index[:2])
    except (TypeError, ValueError, AttributeError):
        raise gr.Error("Click on the mask.") from None
    height, width = s.image.shape[:2]
    if not (0 <= x < width and 0 <= y < height):
        raise gr.Error("Click inside the image.")
    class_id = s.current_class = _class_of(ws, class_id)
    name = html.escape(ws.classes[class_id])
    if tool in STROKE_TOOLS:
        return s, gr.skip(), f"The {tool} paints in the editor; pick polygon, box or a fill to click here."
    _apply_or_refuse(s, editor, BRUSH, ws)
    row, col = int(y), int(x)
    if tool == POLYGON:
        first = s.points[0] if s.points else None
        near = max(5.0, CLOSE_FRACTION * max(height, width))
        if first is not None and len(s.points) >= 3 and np.hypot(x - first[0], y - first[1]) <= near:
            return (s, *_close(s, ws, opacity, show_changes))
        s.points = [*s.points, (x + 0.5, y + 0.5)]
        msg = f"Polygon: {len(s.points)} point(s); click the first point again or press Enter to fill with {name}."
        return s, preview(s, ws.palette, opacity, show_changes), msg
    if tool == BOX:
        if not s.points:
            s.points = [(x, y)]
            return s, preview(s, ws.palette, opacity, show_changes), "Box: now click the opposite corner."
        (x0, y0), s.points = s.points[0], []
        box = (min(x0, x), min(y0, y), max(x0, x) + 1, max(y0, y) + 1)
        if box[2] - box[0] < 3 or box[3] - box[1] < 3:
            raise gr.Error("That box is too small; click two corners farther apart.")
        foreground, how = (None, "colour alone")
        if seed:
            foreground, how = class_probability(store, model, ws, class_id, s.image)
        start = time.perf_counter()
        after = tools.box_fill(s.label, s.image, box, class_id, foreground)
        ms = (time.perf_counter() - start) * 1000
        _commit(s, after, BOX)
        msg = f"Box → {name} ({how}; {ms:.0f} ms)."
        return s, preview(s, ws.palette, opacity, show_changes), msg
    if tool == SUPERPIXEL:
        if getattr(s, "segments", None) is None or s.segments.shape != s.label.shape:
            s.segments = paint.superpixels(s.image)
        after = paint.superpixel_fill(s.label, s.segments, row, col, class_id)
    else:
        after = paint.flood_fill(s.label, row, col, class_id)
    _commit(s, after, tool)
    return s, preview(s, ws.palette, opacity, show_changes), f"Filled at ({col}, {row}) with {name}."


def _close(s: Any, ws: Workspace, opacity: float, show_changes: bool) -> tuple:
    if len(s.points) < 3:
        raise gr.Error("A polygon needs at least three points: click them on the mask preview.")
    points, s.points = s.points, []
    class_id = _class_of(ws, s.current_class)
    _commit(s, tools.polygon_fill(s.label, points, class_id), POLYGON)
    msg = f"Polygon of {len(points)} points filled with {html.escape(ws.classes[class_id])}."
    return preview(s, ws.palette, opacity, show_changes), msg


def do_close_polygon(workspace_of: WorkspaceOf, class_id: Any, s: Any, opacity: float, show_changes: bool):
    ws = _session_ws(workspace_of, s)
    s.current_class = _class_of(ws, class_id)
    return (s, *_close(s, ws, opacity, show_changes))


def do_cancel_points(workspace_of: WorkspaceOf, s: Any, opacity: float, show_changes: bool):
    if s.image is None or not s.points:
        return s, gr.skip(), "No points to drop."
    ws = workspace_of(s)
    s.points = []
    return s, preview(s, ws.palette, opacity, show_changes), "Points dropped."


def do_undo(workspace_of: WorkspaceOf, editor: dict | None, tool: str, s: Any, opacity: float, show_changes: bool):
    """Undo the latest edit of any tool; strokes not applied yet count as the latest edit."""
    ws = _session_ws(workspace_of, s)
    if s.points:
        s.points = s.points[:-1]
        return s, preview(s, ws.palette, opacity, show_changes), "Took back the last point."
    if tool == SCRIBBLES:
        dropped = pending_strokes(s, editor, [OBJECT_MARK, BACKGROUND_MARK]) is not None
        if dropped:
            return s, gr.skip(), "Dropped the scribbles not applied yet."
    else:
        _apply_or_refuse(s, editor, tool if tool in STROKE_TOOLS else BRUSH, ws)
    what = s.undo.next_undo
    previous = s.undo.undo(s.label)
    if previous is None:
        return s, gr.skip(), "Nothing to undo."
    s.label, s.dirty = previous, True
    return s, preview(s, ws.palette, opacity, show_changes), f"Undid the {what}; {len(s.undo)} step(s) left."


def do_redo(workspace_of: WorkspaceOf, s: Any, opacity: float, show_changes: bool):
    ws = _session_ws(workspace_of, s)
    what = s.undo.next_redo
    after = s.undo.redo(s.label)
    if after is None:
        return s, gr.skip(), "Nothing to redo."
    s.label, s.dirty = after, True
    return s, preview(s, ws.palette, opacity, show_changes), f"Redid the {what}."


def redraw(workspace_of: WorkspaceOf, s: Any, opacity: float):
    """The editor's value after an edit (a follow-up event: the editor must not be read and written at once)."""
    if s.image is None or s.root is None:
        return gr.skip()
    return editor_value(s.image, s.label, workspace_of(s).palette, opacity)


def keep_pending(workspace_of: WorkspaceOf, editor: dict | None, tool: str, s: Any):
    """Before another image opens: the open one's strokes become part of its (draft) mask."""
    if s.image is None or s.root is None:
        return s
    try:
        n = apply_pending(s, editor, tool if tool in STROKE_TOOLS else BRUSH, workspace_of(s))
    except (ToolError, ValueError) as err:
        gr.Warning(f"Strokes on {s.name} were not applied: {err}")
        return s
    if n:
        log.info("applied %d pending stroke pixel(s) on %s before moving away", n, s.name)
    return s


def wire(
    panel: ToolPanel,
    workspace_of: WorkspaceOf,
    store: Any,
    *,
    state: Any,
    editor: Any,
    preview_image: Any,
    status: Any,
    model: Any,
    opacity: Any,
    show_changes: Any,
) -> None:
    """Connect the tool panel (every event private: the tab has no public API)."""
    private: dict[str, Any] = {"api_visibility": "private"}
    display = [state, opacity, show_changes]
    edited = [state, preview_image, status]

    def then_redraw(event: Any) -> None:
        event.then(partial(redraw, workspace_of), [state, opacity], editor, show_progress="minimal", **private)

    panel.class_pick.change(
        partial(do_class, workspace_of), [panel.class_pick, panel.tool, state], [state, editor], **private
    )
    panel.tool.change(
        partial(do_tool, workspace_of),
        [editor, panel.tool, *display],
        [*edited, panel.help, panel.applied],
        **private,
    ).then(
        partial(redraw_for_tool, workspace_of),
        [state, panel.tool, opacity, panel.applied],
        editor,
        show_progress="minimal",
        **private,
    )

    def on_click(
        editor: dict | None,
        tool: str,
        class_id: Any,
        seed: bool,
        model: str | None,
        s: Any,
        opacity: float,
        show_changes: bool,
        evt: gr.SelectData,
    ):
        """``do_click`` with its dependencies bound (Gradio finds the click's data only on a plain function)."""
        return do_click(workspace_of, store, editor, tool, class_id, seed, model, s, opacity, show_changes, evt)

    then_redraw(
        preview_image.select(
            on_click,
            [editor, panel.tool, panel.class_pick, panel.seed, model, *display],
            edited,
            concurrency_id=INFERENCE_QUEUE,
            **private,
        )
    )
    then_redraw(panel.undo_btn.click(partial(do_undo, workspace_of), [editor, panel.tool, *display], edited, **private))
    then_redraw(panel.redo_btn.click(partial(do_redo, workspace_of), display, edited, **private))
    then_redraw(
        panel.close_btn.click(partial(do_close_polygon, workspace_of), [panel.class_pick, *display], edited, **private)
    )
    panel.cancel_btn.click(partial(do_cancel_points, workspace_of), display, edited, **private)
    root_block = gr.context.Context.root_block
    if root_block is not None:
        root_block.load(None, None, None, js=SHORTCUTS_JS, **private)


# -- uncertainty first ------------------------------------------------------------------------------------
@dataclass
class QueuePanel:
    """The images the workspace's own model is least sure about, and the button to open the next one."""

    next_btn: gr.Button
    note: gr.Markdown
    table: gr.Dataframe
    timer: gr.Timer
    seen: gr.State


def queue_layout() -> QueuePanel:
    with gr.Row():
        next_btn = gr.Button("Next most uncertain (N)", scale=1, elem_id="label-next-uncertain", size="sm")
        note = gr.Markdown(
            "Train a model on this workspace (Train tab) to rank its unlabelled images by uncertainty.",
            elem_id="label-queue-note",
        )
    with gr.Accordion("Unlabelled images, most uncertain first", open=False):
        table = gr.Dataframe(
            headers=["image", "uncertainty"],
            datatype=["str", "number"],
            interactive=False,
            max_height=260,
            elem_id="label-queue",
        )
    return QueuePanel(next_btn, note, table, gr.Timer(QUEUE_POLL_S), gr.State(None))


def _concrete(store: Any) -> Any:
    """A per-visitor store resolved to the asking visitor's own (a background thread has no request)."""
    current = getattr(type(store), "current", None)
    return store.current() if callable(current) else store


def queue_view(ws: Workspace, store: Any) -> tuple[list[list], str, str | None]:
    """(rows, note, newest workspace model) for the queue; starts a ranking when it is stale."""
    store = _concrete(store)
    RANKER.attach(store)
    ranking = RANKER.request(ws, store)
    latest = latest_workspace_model(store, ws.root)
    unlabelled = [it.name for it in ws.items() if not it.labelled]
    if ranking is None:
        if latest is None:
            return [], "Train a model on this workspace (Train tab) to rank its unlabelled images by uncertainty.", None
        return [], f"Ranking the unlabelled images with `{html.escape(latest)}`…", latest
    rows = [[name, round(score, 3)] for name, score in ranking.ordered(unlabelled)[:QUEUE_ROWS]]
    who = f"`{html.escape(ranking.model or '')}`"
    if ranking.state == "computing":
        note = f"Ranking {len(ranking.candidates)} unlabelled image(s) with {who} ({ranking.done} done)…"
    elif ranking.state == "failed":
        note = f"Ranking with {who} failed: {html.escape(ranking.message)}."
    else:
        note = f"{len(rows)} unlabelled image(s) ranked by {who} ({ranking.method}; 1 = least sure)."
    return rows, note, latest


def do_queue(workspace_of: WorkspaceOf, store: Any, s: Any, seen: Any):
    """Timer tick: the queue (when it changed), and the newest workspace model as the prefill default."""
    if store is None or s.root is None:
        return gr.skip(), gr.skip(), gr.skip(), seen
    ws = workspace_of(s)
    rows, note, latest = queue_view(ws, store)
    marker = (str(ws.root), repr(rows), note, latest)
    if marker == seen:
        return gr.skip(), gr.skip(), gr.skip(), seen
    old_latest = seen[3] if isinstance(seen, tuple) and seen[0] == str(ws.root) else None
    model = gr.skip()
    if latest is not None and latest != old_latest:
        model = gr.update(choices=_concrete(store).names("semantic"), value=latest)
    return rows, note, model, marker


def next_uncertain(ws: Workspace, current: str | None) -> tuple[str | None, str]:
    """The most uncertain unlabelled image other than ``current`` (else the next unlabelled one)."""
    unlabelled = [it.name for it in ws.items() if not it.labelled]
    ranking = RANKER.ranking(ws.root)
    ordered = [n for n, _ in ranking.ordered(unlabelled)] if ranking is not None else []
    for name in ordered:
        if name != current:
            return name, f"Most uncertain next: {html.escape(name)} ({ranking.scores[name]:.3f})."
    rest = [n for n in unlabelled if n != current]
    if rest:
        return rest[0], "No uncertainty ranking yet: opened the next unlabelled image."
    return None, "Every image is labelled."


def do_next_uncertain(workspace_of: WorkspaceOf, current: str | None, s: Any):
    ws = workspace_of(s)
    name, msg = next_uncertain(ws, current)
    return (gr.update(value=name) if name else gr.skip()), msg


def do_pick_row(table: Any, evt: gr.SelectData):
    """A row of the queue was clicked: open that image."""
    try:
        row = int(evt.index[0])
        rows = table.values.tolist() if hasattr(table, "values") else list(table or [])
        return gr.update(value=str(rows[row][0]))
    except (TypeError, ValueError, IndexError, AttributeError):
        return gr.skip()


def wire_queue(
    panel: QueuePanel, workspace_of: WorkspaceOf, store: Any, *, state: Any, item: Any, status: Any, model: Any
):
    private: dict[str, Any] = {"api_visibility": "private"}
    if store is not None:
        RANKER.attach(_concrete(store))  # a run's end refreshes the store: rankings follow without a page open
    panel.timer.tick(
        partial(do_queue, workspace_of, store),
        [state, panel.seen],
        [panel.table, panel.note, model, panel.seen],
        show_progress="hidden",
        queue=False,
        **private,
    )
    panel.next_btn.click(partial(do_next_uncertain, workspace_of), [item, state], [item, status], **private)
    panel.table.select(do_pick_row, [panel.table], item, **private)
