"""The Label tab's handlers without a browser: every tool on synthetic images with known answers, one
undo/redo history over all of them, drafts instead of dropped edits, skipped identical saves, plain
sentences for useless imports, a workspace's own classes, the import/export panel round trip, the
uncertainty queue with the prefill default, and the keyboard shortcuts' targets."""

from __future__ import annotations

import re
import zipfile

import numpy as np
import pytest

gr = pytest.importorskip("gradio")

from seg.checkpoints import save_checkpoint  # noqa: E402
from seg.data.sbd import read_class_table  # noqa: E402
from seg.deploy import Deployment  # noqa: E402
from seg.labeling import tools  # noqa: E402
from seg.labeling.classes import ClassList  # noqa: E402
from seg.labeling.workspace import LabelsRoot  # noqa: E402
from seg.models import create  # noqa: E402
from seg.modelstore import ModelStore  # noqa: E402
from seg.ui import label as tab  # noqa: E402
from seg.ui import label_io, label_tools  # noqa: E402
from seg.ui.pickers import Serving  # noqa: E402

H, W = 96, 128
SQUARE = (slice(24, 72), slice(40, 100))  # the red object: rows 24..71, cols 40..99
CLASSES = ClassList.create(["road", "car", "person"], ["#808080", "#e01010", "#10a0f0"])


def _scene(seed: int = 0) -> np.ndarray:
    """Grey-green textured background with a red square object."""
    rng = np.random.default_rng(seed)
    image = np.zeros((H, W, 3), np.uint8)
    image[:] = (90, 120, 80)
    image[SQUARE] = (200, 30, 30)
    return np.clip(image.astype(int) + rng.integers(-15, 16, image.shape), 0, 255).astype(np.uint8)


def _truth() -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[SQUARE] = True
    return mask


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.fixture()
def access(tmp_path):
    return tab.WorkspaceAccess(Serving.from_deployment(Deployment(labels_root=tmp_path / "labels")))


@pytest.fixture()
def opened(access):
    """(workspace, session with the scene loaded) in a 3-class workspace created the way the tab does."""
    out = tab.do_create(access, "streets", tab.LabelSession(), "road, car, person", "#808080, #e01010, #10a0f0")
    session = out[0]
    ws = access.workspace(session)
    ws.import_image(_scene(0), name="scene.jpg")
    ws.import_image(_scene(1), name="other.jpg")
    s = tab.do_load(access, "scene", session, 0.5, True)[0]
    return ws, s


def _click(x: float, y: float) -> gr.SelectData:
    return gr.SelectData(None, {"index": [x, y], "value": None, "selected": True})


def _layer(*strokes: tuple[tuple[slice, slice], tuple[int, int, int]]) -> dict:
    """An editor value whose one layer holds the given opaque strokes (image size, as the browser sends it)."""
    layer = np.zeros((H, W, 4), np.uint8)
    for where, colour in strokes:
        layer[where] = (*colour, 255)
    return {"background": None, "layers": [layer], "composite": None}


def _ws_of(ws):
    return lambda s, create=False: ws


def test_a_new_workspace_has_its_own_classes_in_the_one_class_file_format(access, opened):
    ws, s = opened
    assert ws.classes == ["road", "car", "person"] and ws.palette == list(CLASSES.colours)
    assert read_class_table(ws.root) == (ws.classes, ws.palette), "training reads the classes labeling wrote"
    assert s.label.shape == (H, W) and s.current_class == 0
    with pytest.raises(gr.Error, match="two classes named"):
        tab.do_create(access, "twice", tab.LabelSession(), "car, Car")
    with pytest.raises(gr.Error, match="class names too"):
        label_io.class_list_from_text("", "#ff0000")
    with pytest.raises(gr.Error, match="not a colour"):
        label_io.class_list_from_text("a, b", "#ff0000, blue")
    assert label_io.class_list_from_text(" ") is None  # no classes typed: the default ones
    assert label_io.colour_text("rgba(255, 136, 0, 1)") == "#ff8800"


def test_brush_eraser_and_scribbles(opened):
    ws, s = opened
    band = (slice(10, 14), slice(5, 60))
    assert tab._apply_pending(s, _layer((band, ws.palette[1])), label_tools.BRUSH) == 4 * 55
    assert (s.label[band] == 1).all() and s.label.sum() == 4 * 55 and s.dirty
    s.reference = np.full((H, W), 2, np.uint8)  # as after a prefill: the eraser brings its classes back
    tab._apply_pending(s, _layer(((slice(10, 14), slice(5, 30)), ws.palette[0])), label_tools.ERASER)
    assert (s.label[10:14, 5:30] == 2).all() and (s.label[10:14, 30:60] == 1).all()

    s.current_class = 1
    scribbles = [
        ((slice(44, 50), slice(55, 85)), label_tools.OBJECT_MARK),  # a stroke across the object
        ((slice(4, 8), slice(4, 124)), label_tools.BACKGROUND_MARK),  # and around it
        ((slice(86, 90), slice(4, 124)), label_tools.BACKGROUND_MARK),
        ((slice(4, 90), slice(4, 8)), label_tools.BACKGROUND_MARK),
        ((slice(4, 90), slice(118, 122)), label_tools.BACKGROUND_MARK),
    ]
    before = s.label.copy()
    tab._apply_pending(s, _layer(*scribbles), label_tools.SCRIBBLES)
    cut = (s.label == 1) & (before != 1)
    assert _iou(cut | ((s.label == 1) & _truth()), _truth()) > 0.9
    assert not (cut & ~_truth()).sum() > 0.05 * _truth().sum()
    with pytest.raises(gr.Error, match="green scribble"):
        tab._apply_pending(s, _layer(((slice(4, 8), slice(4, 50)), label_tools.BACKGROUND_MARK)), "scribbles")
    assert len(s.undo) == 3


def test_polygon_box_fills_and_one_undo_redo_over_all_of_them(opened):
    ws, s = opened
    of = _ws_of(ws)
    start = s.label.copy()
    s.current_class = 2
    corners = [(10, 10), (49, 10), (49, 39), (10, 39)]
    for x, y in corners:
        s, _, msg = label_tools.do_click(
            of, None, None, "polygon", s.current_class, False, None, s, 0.5, True, _click(x, y)
        )
    assert "4 point(s)" in msg and s.label.sum() == 0, "nothing is filled before the polygon closes"
    s, _, msg = label_tools.do_click(
        of, None, None, "polygon", s.current_class, False, None, s, 0.5, True, _click(11, 11)
    )
    assert "filled" in msg and not s.points
    expected = tools.polygon_mask((H, W), [(x + 0.5, y + 0.5) for x, y in corners])
    assert np.array_equal(s.label == 2, expected) and expected[10:40, 10:50].all()
    after_polygon = s.label.copy()

    s.current_class = 1
    s, _, msg = label_tools.do_click(of, None, None, "box", s.current_class, False, None, s, 0.5, True, _click(36, 20))
    assert "opposite corner" in msg
    s, _, msg = label_tools.do_click(of, None, None, "box", s.current_class, False, None, s, 0.5, True, _click(103, 75))
    assert msg.startswith("Box") and _iou(s.label == 1, _truth()) > 0.85
    after_box = s.label.copy()

    s.current_class = 0
    s, _, _ = label_tools.do_click(of, None, None, "fill", s.current_class, False, None, s, 0.5, True, _click(60, 50))
    assert not (s.label == 1).any(), "the fill took the whole connected car region"
    s.current_class = 2
    before = s.label.copy()
    s, _, _ = label_tools.do_click(
        of, None, None, "superpixel", s.current_class, False, None, s, 0.5, True, _click(120, 90)
    )
    patch = s.segments == s.segments[90, 120]
    assert (s.label[patch] == 2).all() and np.array_equal(s.label[~patch], before[~patch])

    # Strokes not applied yet are the latest edit: undo takes them back first, redo brings them back.
    stroke = _layer(((slice(80, 84), slice(60, 100)), ws.palette[2]))
    s, _, msg = label_tools.do_undo(of, stroke, "brush", s, 0.5, True)
    assert "brush" in msg and not (s.label[80:84, 60:100] == 2).any()
    s, _, _ = label_tools.do_redo(of, s, 0.5, True)
    assert (s.label[80:84, 60:100] == 2).all()
    s, _, _ = label_tools.do_undo(of, None, "brush", s, 0.5, True)
    for _ in range(2):  # superpixel, fill
        s, _, _ = label_tools.do_undo(of, None, "brush", s, 0.5, True)
    assert np.array_equal(s.label, after_box)
    s, _, msg = label_tools.do_undo(of, None, "brush", s, 0.5, True)
    assert "box" in msg and np.array_equal(s.label, after_polygon)
    s, _, _ = label_tools.do_undo(of, None, "brush", s, 0.5, True)
    assert np.array_equal(s.label, start)
    assert label_tools.do_undo(of, None, "brush", s, 0.5, True)[2] == "Nothing to undo."
    s, _, msg = label_tools.do_redo(of, s, 0.5, True)
    assert "polygon" in msg and np.array_equal(s.label, after_polygon)
    s, _, _ = label_tools.do_click(of, None, None, "fill", s.current_class, False, None, s, 0.5, True, _click(100, 90))
    assert label_tools.do_redo(of, s, 0.5, True)[2] == "Nothing to redo.", "a new edit drops the redo steps"

    with pytest.raises(gr.Error, match="three points"):
        label_tools.do_close_polygon(of, 2, s, 0.5, True)
    s, _, _ = label_tools.do_click(of, None, None, "polygon", s.current_class, False, None, s, 0.5, True, _click(5, 5))
    assert label_tools.do_cancel_points(of, s, 0.5, True)[2] == "Points dropped." and not s.points


def test_box_seeded_by_a_model_that_knows_the_class(tmp_path, opened):
    ws, s = opened
    ckpts = tmp_path / "ckpts"
    model = create("cnn", num_classes=3, width=8, stages=2)
    card = {"task": "semantic", "classes": ["road", "car", "person"], "input_size": {"width": 64, "height": 48}}
    save_checkpoint(ckpts / "streets-cnn", model, card)
    save_checkpoint(ckpts / "other", model, dict(card, classes=["sky", "tree", "water"]))
    store = ModelStore(ckpts)
    fg, how = label_tools.class_probability(store, "streets-cnn", ws, 1, s.image)
    assert fg.shape == (H, W) and 0.0 <= fg.min() <= fg.max() <= 1.0 and "seeded" in how
    fg, how = label_tools.class_probability(store, "other", ws, 1, s.image)
    assert fg is None and "does not know the class car" in how
    s.current_class = 1
    of = _ws_of(ws)
    label_tools.do_click(of, store, None, "box", 1, True, "other", s, 0.5, True, _click(36, 20))
    s, _, msg = label_tools.do_click(of, store, None, "box", 1, True, "other", s, 0.5, True, _click(103, 75))
    assert "colour alone" in msg and _iou(s.label == 1, _truth()) > 0.85


def test_class_and_tool_changes_set_the_brush_and_apply_the_previous_tools_strokes(opened):
    ws, s = opened
    of = _ws_of(ws)
    s, brush = label_tools.do_class(of, 2, "brush", s)
    assert s.current_class == 2 and brush["brush"].default_color == "#10a0f0"
    assert label_tools.do_class(of, 1, "scribbles", s)[1] == gr.skip() and s.current_class == 1
    with pytest.raises(gr.Error, match="Pick a class"):
        label_tools.do_class(of, 7, "brush", s)
    stroke = _layer(((slice(0, 3), slice(0, 20)), ws.palette[1]))
    s, _, note, help_text, applied = label_tools.do_tool(of, stroke, "scribbles", s, 0.5, True)
    assert "Applied the brush strokes (60 pixels)" in note and (s.label[0:3, 0:20] == 1).all() and applied
    assert s.tool == "scribbles" and "green" in help_text
    assert "value" not in label_tools.redraw_for_tool(of, s, "scribbles", 0.5, False), "nothing applied: no redraw"
    update = label_tools.redraw_for_tool(of, s, "scribbles", 0.5, applied)
    assert update["brush"].colors == ["#39ff14", "#ff1744"] and update["value"]["background"].shape == (H, W, 3)
    assert update["value"]["layers"][0].shape == (H, W, 4), "the canvas is the image: it opens fitted"


def test_moving_away_keeps_unsaved_work_and_identical_saves_are_skipped(access, opened):
    ws, s = opened
    stroke = _layer(((slice(30, 34), slice(0, 50)), ws.palette[2]))
    s = label_tools.keep_pending(_ws_of(ws), stroke, "brush", s)  # what happens before another image opens
    edited = s.label.copy()
    assert (edited[30:34, 0:50] == 2).all() and s.dirty
    s, _, _, note, _ = tab.do_load(access, "other", s, 0.5, True)
    assert "unsaved changes to scene are kept" in note and "scene" in s.drafts
    s, _, _, note, _ = tab.do_load(access, "scene", s, 0.5, True)
    assert "unsaved changes to this image are back" in note and np.array_equal(s.label, edited) and s.dirty

    out = tab.do_save(access, None, "brush", s, 0.5, True)
    s, msg = out[0], out[2]
    assert "version 1" in msg and not s.dirty
    out = tab.do_save(access, None, "brush", s, 0.5, True)  # "Save and next" right after "Save"
    assert "nothing new to save" in out[2] and out[4] == gr.skip()
    assert [v.version for v in ws.versions("scene")] == [1]
    s = out[0]
    label_tools.do_click(_ws_of(ws), None, None, "fill", 1, False, None, s, 0.5, True, _click(1, 1))
    label_tools.do_undo(_ws_of(ws), None, "brush", s, 0.5, True)  # back to what is saved
    assert "nothing new to save" in tab.do_save(access, None, "brush", s, 0.5, True)[2]


def test_useless_imports_are_told_in_a_sentence(tmp_path, access, opened):
    ws, s = opened
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    s, _, problems, status, item = tab.do_upload(access, [str(bad)], s)
    assert status == "Upload: no new image; 1 file(s) could not be used (listed above)."
    assert "notes.jpg" in problems and str(tmp_path) not in problems + status
    assert "value" not in item and "update" not in repr(item.get("choices")), "never an update as a value"
    from PIL import Image

    again = tmp_path / "street.png"
    Image.fromarray(_scene(7)).save(again)
    s, _, _, status, item = tab.do_upload(access, [str(again)], s)
    assert status == "Upload: added 1 image(s)." and item["value"] == "street"
    s, _, _, status, item = tab.do_upload(access, [str(again), str(bad)], s)
    assert status == "Upload: no new image; 1 already in the workspace; 1 file(s) could not be used (listed above)."
    assert item["value"] == "street"


def test_class_panel_adds_renames_and_recolours_without_relabelling(opened):
    ws, s = opened
    of = _ws_of(ws)
    ws.save("scene", np.ones((H, W), np.uint8))
    pick, name, msg = label_io.do_add_class(of, "bicycle", "#ffcc00", s)
    assert ws.classes[-1] == "bicycle" and ws.palette[-1] == (255, 204, 0) and pick["value"] == 3 and name == ""
    assert "class 4" in msg
    label_io.do_rename_class(of, 1, "vehicle", s)
    label_io.do_recolour_class(of, 1, "rgb(0, 0, 255)", s)
    assert ws.classes == ["road", "vehicle", "person", "bicycle"] and ws.palette[1] == (0, 0, 255)
    assert (ws.load("scene").label == 1).all(), "saved masks keep their class ids"
    with pytest.raises(gr.Error, match="two classes named"):
        label_io.do_rename_class(of, 2, "Road", s)
    with pytest.raises(gr.Error, match="share the colour"):
        label_io.do_add_class(of, "bus", "#808080", s)
    reopened = tab.open_workspace(ws.root)
    assert reopened.classes == ws.classes


@pytest.mark.parametrize("fmt", ["coco", "cvat"])
def test_export_then_import_into_a_new_workspace_gives_identical_masks(tmp_path, access, opened, fmt):
    ws, s = opened
    first = np.zeros((H, W), np.uint8)
    first[_truth()] = 1
    first[0:10, 0:30] = 2
    second = np.full((H, W), 2, np.uint8)
    second[50:, :64] = 0
    ws.save("scene", first)
    ws.save("other", second)
    of = _ws_of(ws)
    path, msg = label_io.do_export(of, fmt, s)
    assert path.endswith(".zip") and "2 labelled image(s)" in msg and str(ws.root) not in msg
    labels = access.serving.labels
    status, created = label_io.do_import(of, labels, fmt, path, f"from-{fmt}", s)
    assert created == f"from-{fmt}" and "2 mask(s) saved" in status
    copy = labels.open(created)
    assert copy.classes == ws.classes and copy.palette == ws.palette
    for name, mask in (("scene", first), ("other", second)):
        assert np.array_equal(copy.load(name).label, mask)
    status, created = label_io.do_import(_ws_of(copy), labels, fmt, path, "", s)  # the same file again
    assert created is None and "2 already current" in status and "0 new image(s)" in status
    out = tab.do_reopen(access, f"from-{fmt}", s)
    assert out[0].root == str(copy.root) and out[-1]["value"] == f"from-{fmt}"


def test_bad_import_files_are_refused_in_plain_words(tmp_path, opened):
    ws, s = opened
    junk = tmp_path / "dataset.zip"
    junk.write_bytes(b"this is no zip")
    for fmt in ("coco", "cvat", "voc", "zip"):
        with pytest.raises(gr.Error) as err:
            label_io.do_import(_ws_of(ws), None, fmt, str(junk), "", s)
        text = str(err.value.message)
        assert text.startswith("That file could not be imported as") and str(tmp_path) not in text
        assert "Error" not in text.split(":", 1)[1], text
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("readme.txt", "nothing here")
    with pytest.raises(gr.Error, match="could not be imported as COCO"):
        label_io.do_import(_ws_of(ws), None, "coco", str(empty), "", s)
    with pytest.raises(gr.Error, match="nothing to export"):
        label_io.do_export(_ws_of(ws), "cvat", s)
    with pytest.raises(gr.Error, match="Choose a file"):
        label_io.do_import(_ws_of(ws), None, "coco", None, "", s)


def test_queue_ranks_by_the_workspace_model_which_becomes_the_prefill_default(tmp_path, opened):
    ws, s = opened
    ws.import_image(np.full((H, W, 3), 127, np.uint8), name="grey.jpg")
    ckpts = tmp_path / "ckpts"
    store = ModelStore(ckpts)
    of = _ws_of(ws)
    rows, note, model, seen = label_tools.do_queue(of, store, s, None)
    assert rows == [] and "Train a model on this workspace" in note and model == gr.skip()
    model_net = create("cnn", num_classes=3, width=8, stages=2)
    card = {
        "task": "semantic",
        "classes": ws.classes,
        "palette": [list(c) for c in ws.palette],
        "input_size": {"width": 64, "height": 48},
        "config": {"data_dir": str(ws.root)},
    }
    save_checkpoint(ckpts / "streets-cnn", model_net, card)
    store.refresh()
    label_tools.do_queue(of, store, s, seen)
    ranking = label_tools.RANKER.wait(ws.root, timeout=120)
    assert ranking.state == "ready"
    rows, note, model, seen = label_tools.do_queue(of, store, s, seen)
    assert model["value"] == "streets-cnn", "the newest workspace model becomes the prefill default"
    assert sorted(r[0] for r in rows) == ["grey", "other", "scene"] and "ranked by `streets-cnn`" in note
    assert [r[1] for r in rows] == sorted((r[1] for r in rows), reverse=True)
    assert label_tools.do_queue(of, store, s, seen)[0] == gr.skip(), "nothing changed: nothing sent"
    name, msg = label_tools.next_uncertain(ws, current=rows[0][0])
    assert name == rows[1][0] and f"{rows[1][1]:.3f}" in msg


def test_shortcut_keys_click_controls_that_exist(tmp_path, monkeypatch):
    monkeypatch.setenv("SEG_LABEL_DIR", str(tmp_path))
    LabelsRoot(tmp_path).create("labels")
    demo = tab.standalone(None)
    ids = {block.elem_id for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    targets = set(re.findall(r"#(label-[a-z-]+)", label_tools.SHORTCUTS_JS))
    targets |= set(re.findall(r"getElementById\('(label-[a-z-]+)'\)", label_tools.SHORTCUTS_JS))
    assert targets and targets <= ids, targets - ids
    assert len(set(label_tools.TOOL_KEYS)) == len(label_tools.TOOLS)
    assert not set(k.lower() for k in label_tools.TOOL_KEYS) & {"a", "s", "n"}, "tool keys clash with actions"
    listed = label_tools.shortcuts_md()
    assert all(f"`{k}`" in listed for k in (*label_tools.TOOL_KEYS, "Ctrl+Z", "S, Ctrl+S", "1–9"))
