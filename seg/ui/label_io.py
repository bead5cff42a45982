"""The Label tab's workspace panel: a new workspace's own classes, changing classes later, and
import/export in every format the labeling core knows (``seg.labeling.export.FORMATS``).

Classes only ever grow or change name or colour (``seg.labeling.classes.ClassList``): a saved mask
stores class ids, so removing or reordering classes would silently relabel it. Exports are zips
written to the app's scratch folder and handed to the browser as downloads; imports take what a
browser uploads (a zip of a CVAT, COCO or VOC folder, a COCO .json, or a workspace zip) into the
open workspace, or, locally, into a new workspace made with the dataset's own classes, so that its
masks keep their class ids exactly.

Like ``seg.ui.label_tools`` this module never imports ``seg.ui.label``: handlers get the tab's
workspace rule as ``workspace_of(session, create)``, and ``seg.ui.label`` chains its own refresh
after the events ``wire`` returns.
"""

from __future__ import annotations

import html
import logging
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import gradio as gr

from seg.errors import is_expected, user_message
from seg.labeling.classes import ClassList, ClassListError, format_colour
from seg.labeling.export import FORMATS, dataset_classes, export_archive, import_dataset
from seg.labeling.workspace import LabelsRoot, Workspace, WorkspaceError
from seg.ui.scratch import scratch_path

log = logging.getLogger("seg.ui.label_io")

FORMAT_LABELS: dict[str, str] = {
    "cvat": "CVAT Segmentation Mask 1.1",
    "coco": "COCO (masks as RLE)",
    "voc": "Pascal VOC (PNG class masks)",
    "zip": "Whole workspace (zip, with history)",
}
assert set(FORMAT_LABELS) == set(FORMATS), "every export format has a name for people"
_RGB = re.compile(r"rgba?\(\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)")

WorkspaceOf = Callable[..., Workspace]


# -- classes from text --------------------------------------------------------------------------------
def split_list(text: Any) -> list[str]:
    """Comma- or line-separated entries, stripped, empty ones dropped."""
    if not isinstance(text, str):
        return []
    return [part.strip() for part in re.split(r"[,\n]", text) if part.strip()]


def colour_text(value: Any) -> str:
    """A colour picker's value as ``#rrggbb`` (pickers may answer ``rgb(...)`` or ``rgba(...)``)."""
    text = str(value or "").strip()
    match = _RGB.match(text)
    if match:
        r, g, b = (max(0, min(255, round(float(v)))) for v in match.groups())
        return format_colour((r, g, b))
    return text


def class_list_from_text(names: Any, colours: Any = "") -> ClassList | None:
    """The classes of a new workspace typed as ``road, car, person`` (colours optional, same order);
    None when no names were typed (the workspace gets the default classes)."""
    names_list, colours_list = split_list(names), split_list(colours)
    if not names_list:
        if colours_list:
            raise gr.Error("Type the class names too, in the same order as the colours.")
        return None
    try:
        return ClassList.create(names_list, colours_list or None)
    except ClassListError as err:
        raise gr.Error(str(err)) from None


# -- layout -------------------------------------------------------------------------------------------------
@dataclass
class CreateInputs:
    """The classes (and colours) of a workspace about to be created, beside its name."""

    classes: gr.Textbox
    colours: gr.Textbox


def create_inputs() -> CreateInputs:
    with gr.Row():
        classes = gr.Textbox(
            label="Classes of the new workspace, in id order (empty: the 9 Stanford Background classes)",
            placeholder="road, car, person",
            scale=3,
            max_length=4000,
            elem_id="label-new-classes",
        )
        colours = gr.Textbox(
            label="Their colours (optional)",
            placeholder="#808080, #ff0000, #00a0ff",
            scale=2,
            max_length=4000,
            elem_id="label-new-colours",
        )
    return CreateInputs(classes, colours)


@dataclass
class IoPanel:
    """Class editing and import/export (``io_panel`` lays them out)."""

    class_pick: gr.Dropdown
    class_name: gr.Textbox
    class_colour: gr.ColorPicker
    add_btn: gr.Button
    rename_btn: gr.Button
    recolour_btn: gr.Button
    class_status: gr.Markdown
    fmt: gr.Radio
    export_btn: gr.Button
    export_file: gr.File
    import_file: gr.File
    import_into: gr.Textbox | None
    import_btn: gr.Button
    import_status: gr.Markdown
    #: The name of a workspace an import just created (read by the tab's refresh), else None.
    created: gr.State


def io_panel(classes: list[str], local: bool) -> IoPanel:
    """The accordion of class editing, export and import (``local``: imports may make a new workspace)."""
    with gr.Accordion("Classes, import and export", open=False, elem_id="label-io"):
        with gr.Row():
            class_pick = gr.Dropdown(
                [(name, i) for i, name in enumerate(classes)],
                value=0 if classes else None,
                label="Class",
                scale=2,
                elem_id="label-io-class",
            )
            class_name = gr.Textbox(
                label="Name (new or renamed class)", scale=2, max_length=64, elem_id="label-io-name"
            )
            class_colour = gr.ColorPicker("#ff8800", label="Colour", scale=1, elem_id="label-io-colour")
        with gr.Row():
            add_btn = gr.Button("Add as a new class", size="sm", elem_id="label-io-add")
            rename_btn = gr.Button("Rename the class", size="sm", elem_id="label-io-rename")
            recolour_btn = gr.Button("Give the class this colour", size="sm", elem_id="label-io-recolour")
        class_status = gr.Markdown(
            "Classes can be added, renamed and recoloured, never removed: saved masks keep their class ids.",
            elem_id="label-io-class-status",
        )
        fmt = gr.Radio(
            [(FORMAT_LABELS[f], f) for f in FORMATS], value=FORMATS[0], label="Format", elem_id="label-io-format"
        )
        with gr.Row():
            with gr.Column():
                export_btn = gr.Button("Export the labelled images", elem_id="label-io-export")
                export_file = gr.File(label="Download", interactive=False, elem_id="label-io-export-file")
            with gr.Column():
                import_file = gr.File(
                    label="Import a dataset (.zip, or COCO .json)",
                    file_types=[".zip", ".json"],
                    type="filepath",
                    elem_id="label-io-import-file",
                )
                import_into = (
                    gr.Textbox(
                        label="…into a new workspace of this name, with the dataset's classes (empty: this one)",
                        max_length=64,
                        elem_id="label-io-import-into",
                    )
                    if local
                    else None
                )
                import_btn = gr.Button("Import", elem_id="label-io-import")
        import_status = gr.Markdown("", elem_id="label-io-status")
    return IoPanel(
        class_pick,
        class_name,
        class_colour,
        add_btn,
        rename_btn,
        recolour_btn,
        class_status,
        fmt,
        export_btn,
        export_file,
        import_file,
        import_into,
        import_btn,
        import_status,
        gr.State(None),
    )


def class_pick_update(ws: Workspace, value: int | None = None) -> dict:
    choices = [(name, i) for i, name in enumerate(ws.classes)]
    return gr.update(choices=choices, value=value if value is not None and 0 <= value < len(choices) else 0)


# -- handlers: classes ---------------------------------------------------------------------------------------
def _change_classes(ws: Workspace, change: Callable[[ClassList], ClassList]) -> ClassList:
    try:
        classes = change(ws.class_list)
        ws.set_classes(classes)
    except ClassListError as err:
        raise gr.Error(str(err)) from None
    return classes


def _class_index(ws: Workspace, class_id: Any) -> int:
    try:
        index = int(class_id)
    except (TypeError, ValueError):
        index = -1
    if not 0 <= index < ws.num_classes:
        raise gr.Error("Pick one of the workspace's classes.")
    return index


def do_add_class(workspace_of: WorkspaceOf, name: Any, colour: Any, s: Any):
    """Add a class at the next id (its colour must differ from the others')."""
    ws = workspace_of(s)
    classes = _change_classes(ws, lambda c: c.added(name, colour_text(colour) or None))
    log.info("class added to %s: %s", ws.root.name, classes.names[-1])
    new_id = len(classes.names) - 1
    msg = f"Added class {new_id + 1}, **{html.escape(classes.names[-1])}**."
    return class_pick_update(ws, new_id), "", msg


def do_rename_class(workspace_of: WorkspaceOf, class_id: Any, name: Any, s: Any):
    """Rename a class; its id (and every mask using it) stays."""
    ws = workspace_of(s)
    index = _class_index(ws, class_id)
    old = ws.classes[index]
    classes = _change_classes(ws, lambda c: c.renamed(index, name))
    msg = f"Renamed {html.escape(old)} to **{html.escape(classes.names[index])}**; saved masks keep the class."
    return class_pick_update(ws, index), "", msg


def do_recolour_class(workspace_of: WorkspaceOf, class_id: Any, colour: Any, s: Any):
    ws = workspace_of(s)
    index = _class_index(ws, class_id)
    classes = _change_classes(ws, lambda c: c.recoloured(index, colour_text(colour)))
    msg = f"**{html.escape(classes.names[index])}** is now {format_colour(classes.colours[index])}."
    return class_pick_update(ws, index), gr.skip(), msg


# -- handlers: export and import --------------------------------------------------------------------------------
def _format(fmt: Any) -> str:
    if fmt not in FORMATS:
        raise gr.Error("Pick one of the listed formats.")
    return fmt


def do_export(workspace_of: WorkspaceOf, fmt: Any, s: Any):
    """One zip to download: the labelled images and masks in ``fmt`` (or the whole workspace)."""
    fmt = _format(fmt)
    ws = workspace_of(s)
    labelled, total = ws.progress()
    if fmt != "zip" and not labelled:
        raise gr.Error("There is nothing to export yet: save a mask first.")
    folder = scratch_path("")
    folder.mkdir(parents=True, exist_ok=True)
    report = export_archive(ws, fmt, folder)
    log.info("exported %s as %s (%d images)", ws.root.name, fmt, len(report.exported))
    what = f"{len(report.exported)} labelled image(s)" if fmt != "zip" else f"the whole workspace ({total} images)"
    problems = f" {len(report.problems)} file(s) were skipped." if report.problems else ""
    return str(report.out), f"Exported {what} as {FORMAT_LABELS[fmt]}.{problems}"


def _upload_path(upload: Any) -> Path:
    if isinstance(upload, (list, tuple)):
        upload = upload[0] if upload else None
    path = upload if isinstance(upload, str) else getattr(upload, "name", None)
    if not path:
        raise gr.Error("Choose a file to import first.")
    return Path(path)


def _refused(err: BaseException, fmt: str) -> gr.Error:
    """A plain sentence for a file that is not what the format expects."""
    if isinstance(err, (WorkspaceError, ClassListError)) or is_expected(err):
        reason = user_message(err)
    elif isinstance(err, zipfile.BadZipFile):
        reason = "it is not a readable zip file"
    else:
        reason = "its contents are not what that format holds"
    return gr.Error(f"That file could not be imported as {FORMAT_LABELS[fmt]}: {reason.rstrip('.')}.")


def do_import(workspace_of: WorkspaceOf, labels: LabelsRoot | None, fmt: Any, upload: Any, into: Any, s: Any):
    """Import an uploaded dataset into the open workspace, or (``into``, local) a new one with its classes.

    Returns (status, name of the workspace created or None)."""
    fmt = _format(fmt)
    path = _upload_path(upload)
    into = into.strip() if isinstance(into, str) else ""
    created = None
    try:
        if into:
            if labels is None:
                raise gr.Error("Your workspace is made for you here; import into it instead.")
            ws = labels.create(into, dataset_classes(fmt, path))
            created = ws.root.name
        else:
            ws = workspace_of(s, True)
        report = import_dataset(ws, fmt, path)
    except gr.Error:
        raise
    except Exception as err:  # untrusted upload: every failure is a sentence, the app keeps serving
        log.info("import of %s as %s refused: %r", path.name, fmt, err)
        raise _refused(err, fmt) from None
    log.info("imported %s into %s: %s", fmt, ws.root.name, report.summary())
    where = f"the new workspace `{html.escape(ws.root.name)}`" if created else "this workspace"
    lines = [f"Imported into {where}: {html.escape(report.summary())}."]
    if not (report.saved or report.unchanged or report.added or report.unlabelled):
        lines = [f"Nothing was imported into {where}: the file holds no image this format could read."]
    for problem in report.problems[:10]:
        lines.append(f"- `{html.escape(problem.path)}`: {html.escape(problem.reason)}")
    if len(report.problems) > 10:
        lines.append(f"- …and {len(report.problems) - 10} more")
    return "\n".join(lines), created


def wire(panel: IoPanel, workspace_of: WorkspaceOf, labels: LabelsRoot | None, *, state: Any) -> list[Any]:
    """Connect the panel; returns the events after which the tab must reopen the workspace
    (classes or images changed; ``panel.created`` names a workspace an import made)."""
    private: dict[str, Any] = {"api_visibility": "private"}
    class_outputs = [panel.class_pick, panel.class_name, panel.class_status]
    changed = [
        panel.add_btn.click(
            partial(do_add_class, workspace_of), [panel.class_name, panel.class_colour, state], class_outputs, **private
        ),
        panel.rename_btn.click(
            partial(do_rename_class, workspace_of),
            [panel.class_pick, panel.class_name, state],
            class_outputs,
            **private,
        ),
        panel.recolour_btn.click(
            partial(do_recolour_class, workspace_of),
            [panel.class_pick, panel.class_colour, state],
            class_outputs,
            **private,
        ),
    ]
    panel.export_btn.click(
        partial(do_export, workspace_of), [panel.fmt, state], [panel.export_file, panel.import_status], **private
    )
    into = [panel.import_into] if panel.import_into is not None else []
    imported = panel.import_btn.click(
        partial(_import_event, workspace_of, labels, panel.import_into is not None),
        [panel.fmt, panel.import_file, *into, state],
        [panel.import_status, panel.created],
        **private,
    )
    return [*changed, imported]


def _import_event(workspace_of: WorkspaceOf, labels: LabelsRoot | None, has_into: bool, fmt: Any, upload: Any, *rest):
    into, s = (rest[0], rest[1]) if has_into else ("", rest[0])
    return do_import(workspace_of, labels, fmt, upload, into, s)
