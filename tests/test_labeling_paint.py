"""Pure painting logic: canvas mapping, stroke decoding, fills, diff display, undo; and the tab's decoding."""

from __future__ import annotations

import numpy as np
import pytest

from seg.classes import SBD_PALETTE
from seg.labeling import paint


def test_canvas_view_letterboxes_a_portrait_image_and_maps_back():
    view = paint.CanvasView(height=200, width=100, canvas_width=640, canvas_height=480)
    left, top, w, h = view.box
    assert (w, h) == (240, 480) and (left, top) == (200, 0)
    image = np.zeros((200, 100, 3), np.uint8)
    image[:, 50:] = 255
    canvas = view.to_canvas(image)
    assert canvas.shape == (480, 640, 3)
    assert np.all(canvas[:, :left] == 40)  # letterbox fill, not image
    # A layer painted on the right half of the drawn image decodes to the right half of the image.
    layer = np.zeros((480, 640, 4), np.uint8)
    layer[:, left + w // 2 : left + w] = (*SBD_PALETTE[5], 255)
    layer[:, :left] = (*SBD_PALETTE[1], 255)  # strokes on the letterbox margin are outside the image
    ids = paint.decode_strokes(view.from_canvas(layer), SBD_PALETTE)
    assert ids.shape == (200, 100)
    assert np.all(ids[:, 50:] == 5) and np.all(ids[:, :50] == paint.NO_STROKE)


def test_decode_uses_alpha_threshold_and_exact_colours():
    layer = np.zeros((1, 5, 4), np.uint8)
    layer[0, 0] = (*SBD_PALETTE[3], 255)  # exact colour
    layer[0, 1] = (*SBD_PALETTE[3], 127)  # faint fringe: not painted
    layer[0, 3] = (0, 0, 0, 0)  # erased
    layer[0, 4] = (*SBD_PALETTE[8], 128)  # exactly at the threshold counts
    assert paint.decode_strokes(layer, SBD_PALETTE).tolist() == [[3, -1, -1, -1, 8]]
    with pytest.raises(ValueError):
        paint.decode_strokes(np.zeros((4, 4)), SBD_PALETTE)


def test_blended_edges_take_a_neighbouring_stroke_class_never_a_third_class():
    """70% foreground + 30% sky is nearer to *grass*'s colour: naive nearest-colour would invent grass."""
    fg, sky, grass = np.array(SBD_PALETTE[7]), np.array(SBD_PALETTE[0]), np.array(SBD_PALETTE[3])
    blend = (0.7 * fg + 0.3 * sky).astype(np.uint8)
    assert np.abs(blend - grass).sum() < np.abs(blend - fg).sum()  # the trap is real
    layer = np.zeros((3, 10, 4), np.uint8)
    layer[:, 0:4] = (*fg, 255)
    layer[:, 4] = (*blend, 230)
    layer[:, 6:10] = (*sky, 255)
    layer[:, 5] = (*(0.3 * fg + 0.7 * sky).astype(np.uint8), 230)
    ids = paint.decode_strokes(layer, SBD_PALETTE)
    assert ids[:, :5].tolist() == [[7] * 5] * 3
    assert ids[:, 5:].tolist() == [[0] * 5] * 3
    # With no exact pixel at all (a lone blended dab) the nearest colour is the only clue.
    lone = np.zeros((1, 1, 4), np.uint8)
    lone[0, 0] = (*(fg - 10).clip(0), 255)
    assert paint.decode_strokes(lone, SBD_PALETTE).tolist() == [[7]]


def test_apply_and_erase_strokes():
    label = np.zeros((4, 4), np.uint8)
    reference = np.full((4, 4), 6, np.uint8)
    strokes = np.full((4, 4), paint.NO_STROKE, np.int16)
    strokes[1, 1:3] = 4
    painted = paint.apply_strokes(label, strokes)
    assert painted[1, 1] == 4 and painted[1, 2] == 4 and painted.sum() == 8
    assert label.sum() == 0  # inputs are never modified
    erased = paint.erase_strokes(painted, strokes, reference)
    assert erased[1, 1] == 6 and erased[0, 0] == 0


def test_flood_fill_fills_only_the_connected_region_of_the_clicked_class():
    label = np.zeros((5, 5), np.uint8)
    label[:, 2] = 1  # a wall splits the zeros in two
    out = paint.flood_fill(label, 0, 0, 3)
    assert np.all(out[:, :2] == 3) and np.all(out[:, 2] == 1) and np.all(out[:, 3:] == 0)
    with pytest.raises(ValueError):
        paint.flood_fill(label, 9, 0, 3)


def test_superpixel_fill_follows_image_edges():
    image = np.zeros((60, 80, 3), np.uint8)
    image[:, 40:] = (250, 250, 250)
    segments = paint.superpixels(image, n_segments=8)
    assert segments.shape == (60, 80)
    out = paint.superpixel_fill(np.zeros((60, 80), np.uint8), segments, 30, 60, 2)
    filled = out == 2
    assert filled.any() and not filled[:, :40].any()  # never crosses the strong edge


def test_render_is_display_only_and_outlines_changes():
    image = np.full((10, 10, 3), 100, np.uint8)
    label = np.zeros((10, 10), np.uint8)
    reference = label.copy()
    label[4:6, 4:6] = 2
    changed = paint.changed_mask(label, reference)
    assert changed.sum() == 4
    out = paint.render(image, label, SBD_PALETTE, opacity=0.3, changed=changed)
    assert tuple(out[4, 4]) == SBD_PALETTE[2]  # changed pixels at full class colour
    assert tuple(out[3, 4]) == (255, 0, 255)  # outlined just outside
    assert tuple(out[0, 0]) != SBD_PALETTE[0]  # elsewhere blended at display opacity
    assert paint.changed_mask(label, None).sum() == 0


def test_undo_stack_is_bounded_and_copies():
    stack = paint.UndoStack(limit=3)
    a = np.zeros((2, 2), np.uint8)
    for i in range(5):
        a[0, 0] = i
        stack.push(a)
    assert len(stack) == 3
    assert stack.pop()[0, 0] == 4 and stack.pop()[0, 0] == 3 and stack.pop()[0, 0] == 2
    assert stack.pop() is None


def test_tab_decodes_editor_layers_by_palette_not_by_composite(tmp_path):
    """The tab's own decoding of an ImageEditor value (no browser): composite is ignored."""
    pytest.importorskip("gradio")
    from seg.ui import label as tab

    ws = tab.open_workspace(tmp_path / "ws")
    name, _ = ws.import_image(np.full((240, 320, 3), 120, np.uint8), name="img")
    loaded = ws.load(name)
    s = tab.LabelSession(
        root=str(ws.root),
        name=name,
        image=loaded.image,
        label=np.full((240, 320), 8, np.uint8),
        reference=np.full((240, 320), 8, np.uint8),
    )
    layer = np.zeros((tab.CANVAS[1], tab.CANVAS[0], 4), np.uint8)
    layer[100:120, 200:300] = (*SBD_PALETTE[1], 255)
    composite = np.full((tab.CANVAS[1], tab.CANVAS[0], 4), 255, np.uint8)  # blended junk, must be ignored
    n = tab._apply_pending(s, {"background": None, "layers": [layer], "composite": composite}, tab.TOOLS[0])
    assert n == 10 * 50
    assert np.array_equal(np.argwhere(s.label == 1).min(axis=0), [50, 100])
    assert len(s.undo) == 1
    assert tab._apply_pending(s, {"layers": [np.zeros_like(layer)]}, tab.TOOLS[0]) == 0
    value = tab._editor_value(s, 0.5)
    assert value["background"].shape == (240, 320, 3) and value["layers"][0].shape == (240, 320, 4)  # image size
    assert value["layers"][0].max() == 0
