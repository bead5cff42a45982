"""Labeling tools on synthetic images with known answers: polygon, box -> mask, scribbles, one undo/redo
history over every tool; and the box tool on real Penn-Fudan pedestrians when the data is at hand."""

from __future__ import annotations

import numpy as np
import pytest

from seg.labeling import paint, tools
from seg.labeling.history import History


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def scene(seed: int = 0, shape=(120, 160)) -> tuple[np.ndarray, np.ndarray]:
    """A textured green-grey background with a red ellipse (the object) left of centre."""
    rng = np.random.default_rng(seed)
    h, w = shape
    image = np.empty((h, w, 3), np.uint8)
    image[...] = (90, 140, 90)
    image = np.clip(image + rng.normal(0, 18, image.shape), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    obj = ((xx - 60) / 28.0) ** 2 + ((yy - 62) / 40.0) ** 2 <= 1.0
    image[obj] = np.clip(np.array((200, 50, 60)) + rng.normal(0, 18, (obj.sum(), 3)), 0, 255).astype(np.uint8)
    return image, obj


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


# -- polygon ----------------------------------------------------------------------------------
def test_polygon_along_pixel_edges_fills_exactly_the_enclosed_pixels():
    mask = tools.polygon_mask((8, 10), [(2, 2), (6, 2), (6, 5), (2, 5)])
    expected = np.zeros((8, 10), bool)
    expected[2:5, 2:6] = True
    assert np.array_equal(mask, expected)


def test_polygon_fill_of_a_triangle_matches_its_area_and_sets_the_class():
    label = np.zeros((100, 100), np.uint8)
    out = tools.polygon_fill(label, [(10, 10), (90, 10), (10, 90)], 3)
    assert set(np.unique(out)) == {0, 3} and label.max() == 0  # input untouched
    assert abs(int((out == 3).sum()) - 0.5 * 80 * 80) <= 80  # within one pixel row of the true area
    assert out[20, 20] == 3 and out[80, 80] == 0
    with pytest.raises(ValueError):
        tools.polygon_fill(label, [(1, 1), (5, 5)], 1)
    # vertices outside the image are clipped, not an error
    assert tools.polygon_mask((10, 10), [(-5, -5), (50, -5), (50, 50), (-5, 50)]).all()


# -- box -> mask ----------------------------------------------------------------------------------
def test_box_mask_cuts_the_object_out_of_its_box():
    image, obj = scene()
    mask = tools.box_mask(image, tight_box(obj))
    assert iou(mask, obj) >= 0.9
    x0, y0, x1, y1 = tight_box(obj)
    assert not mask[:, :x0].any() and not mask[:, x1:].any()  # never outside the box


def test_box_mask_with_model_probabilities_follows_the_model_where_colour_cannot_tell():
    """Object and background share colours; a model that knows the object makes the cut."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (100, 120, 3), dtype=np.uint8)  # pure noise: no colour model can separate
    obj = np.zeros((100, 120), bool)
    obj[20:80, 40:70] = True
    box = (30, 10, 80, 90)
    fg = np.where(obj, 0.95, 0.05).astype(np.float32)
    assert iou(tools.box_mask(image, box, fg), obj) >= 0.95
    assert iou(tools.box_mask(image, box), obj) < 0.9  # GrabCut alone cannot know
    # a model that sees nothing in the box (an object it does not know) leaves the cut to colour alone
    image2, obj2 = scene()
    unseeing = np.zeros(obj2.shape, np.float32)
    assert np.array_equal(tools.box_mask(image2, tight_box(obj2), unseeing), tools.box_mask(image2, tight_box(obj2)))
    with pytest.raises(ValueError):
        tools.box_mask(image, box, fg[:50])


def test_boxes_to_ids_numbers_objects_by_box_and_the_larger_box_wins_overlaps():
    image, obj = scene(shape=(120, 220))
    second = np.zeros_like(obj)
    yy, xx = np.mgrid[:120, :220]
    second[((xx - 170) / 20.0) ** 2 + ((yy - 60) / 30.0) ** 2 <= 1.0] = True
    image[second] = (40, 60, 220)
    boxes = [tight_box(obj), tight_box(second)]
    ids = tools.boxes_to_ids(image, boxes)
    assert ids.dtype == np.uint8 and ids.shape == obj.shape and set(np.unique(ids)) == {0, 1, 2}
    assert iou(ids == 1, obj) >= 0.9 and iou(ids == 2, second) >= 0.85
    full = (0, 0, 220, 120)  # a box around everything, listed after a small one inside it
    ids = tools.boxes_to_ids(image, [tight_box(second), full], np.ones((120, 220), np.float32))
    assert (ids == 2).sum() > (ids == 1).sum()
    with pytest.raises(ValueError):
        tools.boxes_to_ids(image, [(300, 300, 400, 400)])


def test_per_box_model_maps_decide_who_owns_the_overlap():
    """Two same-coloured objects overlap; each box's map (as ForegroundModel.box_maps gives) knows its own."""
    rng = np.random.default_rng(2)
    image = np.clip(np.full((100, 140, 3), 120) + rng.normal(0, 10, (100, 140, 3)), 0, 255).astype(np.uint8)
    front, back = np.zeros((100, 140), bool), np.zeros((100, 140), bool)
    back[20:90, 30:70] = True
    front[10:95, 60:110] = True  # in front: hides part of ``back``
    back &= ~front
    image[back | front] = (200, 60, 60)
    maps = [np.where(back, 0.9, 0.02).astype(np.float32), np.where(front, 0.9, 0.02).astype(np.float32)]
    boxes = [tight_box(back), tight_box(front)]
    ids = tools.boxes_to_ids(image, boxes, maps)
    assert iou(ids == 1, back) >= 0.95 and iou(ids == 2, front) >= 0.95
    with pytest.raises(ValueError):
        tools.boxes_to_ids(image, boxes, maps[:1])


def test_box_fill_sets_the_class_and_clip_box_orders_corners():
    image, obj = scene()
    x0, y0, x1, y1 = tight_box(obj)
    assert tools.clip_box((x1, y1, x0, y0), obj.shape) == (x0, y0, x1, y1)
    assert tools.clip_box((-10.5, -3, 500, 400), obj.shape) == (0, 0, 160, 120)
    out = tools.box_fill(np.zeros(obj.shape, np.uint8), image, (x0, y0, x1, y1), 5)
    assert iou(out == 5, obj) >= 0.9
    with pytest.raises(ValueError):
        tools.box_fill(np.zeros((5, 5), np.uint8), image, (0, 0, 4, 4), 1)


# -- scribbles -----------------------------------------------------------------------------------
def test_scribbles_mark_the_object_and_the_background():
    image, obj = scene()
    fg = np.zeros_like(obj)
    fg[50:75, 58:62] = True  # a short vertical stroke inside the ellipse
    bg = np.zeros_like(obj)
    bg[10:110, 120:123] = True  # a stroke to its right
    bg[5:8, 20:100] = True  # and one above
    mask = tools.scribble_mask(image, fg, bg)
    assert iou(mask, obj) >= 0.85
    assert mask[fg].all() and not mask[bg].any()  # strokes are obeyed exactly
    assert iou(tools.scribble_mask(image, fg, np.zeros_like(obj)), obj) >= 0.8  # foreground strokes alone
    out = tools.scribble_fill(np.ones(obj.shape, np.uint8), image, fg, bg, 4)
    assert iou(out == 4, mask) == 1.0 and (out[~mask] == 1).all()
    with pytest.raises(ValueError):
        tools.scribble_mask(image, np.zeros_like(obj), bg)


# -- one history over every tool ---------------------------------------------------------------------
def test_one_history_undoes_and_redoes_every_tool_in_order():
    image, obj = scene()
    history = History()
    label0 = np.zeros(obj.shape, np.uint8)
    label1 = history.commit(label0, tools.polygon_fill(label0, [(5, 5), (40, 5), (40, 30)], 2), "polygon")
    label2 = history.commit(label1, tools.box_fill(label1, image, tight_box(obj), 1), "box")
    label3 = history.commit(label2, paint.flood_fill(label2, 110, 150, 3), "fill")
    assert history.commit(label3, label3.copy(), "fill") is not None and len(history) == 3  # no-op: not recorded
    assert history.next_undo == "fill" and not history.can_redo
    back2 = history.undo(label3)
    assert np.array_equal(back2, label2) and history.next_redo == "fill"
    back1 = history.undo(back2)
    assert np.array_equal(back1, label1)
    assert np.array_equal(history.redo(back1), label2)
    assert np.array_equal(history.undo(label2), label1)
    assert np.array_equal(history.undo(label1), label0) and history.undo(label0) is None
    # a new edit after undoing drops what could be redone
    other = history.commit(label0, tools.polygon_fill(label0, [(0, 0), (9, 0), (0, 9)], 4), "polygon")
    assert not history.can_redo and np.array_equal(history.undo(other), label0)


def test_history_is_bounded_small_and_keeps_the_older_push_pop_working():
    history = History(limit=3)
    label = np.zeros((200, 300), np.uint8)
    for i in range(5):
        edited = label.copy()
        edited[i, i] = 1
        label = history.commit(label, edited)
    assert len(history) == 3
    assert sum(e.before.size for e in history._undo) == 3  # a one-pixel edit keeps one pixel, not the image
    stack = paint.UndoStack(limit=3)  # the older one-way form, same object
    a = np.zeros((2, 2), np.uint8)
    stack.push(a)
    a2 = a.copy()
    a2[0, 0] = 7
    undone = stack.undo(a2)  # a pushed state can be undone and redone like any edit
    assert undone[0, 0] == 0 and stack.redo(undone)[0, 0] == 7
    stack.clear()
    stack.push(a)
    stack.push(a2)
    assert stack.pop()[0, 0] == 7 and stack.pop()[0, 0] == 0 and stack.pop() is None
    committed = History()
    after = committed.commit(a, a2)
    with pytest.raises(ValueError):
        committed.pop()  # a committed edit needs the current label
    assert committed.pop(after)[0, 0] == 0
    assert committed.commit(a, np.zeros((3, 3), np.uint8)) is not None and not committed.can_undo  # another image


# -- the box tool on real pedestrians --------------------------------------------------------------
def test_box_to_mask_cli_on_a_penn_fudan_image(pennfudan_root, tmp_path):
    """Boxes from the ground truth, seeded by the shipped DWT: each pedestrian comes back as its box number."""
    from seg.cli import main
    from seg.config import REPO_ROOT
    from seg.instances.data import boxes_from_ids, ids_for_split, load_sample
    from seg.io import read_label_png

    if not (REPO_ROOT / "checkpoints" / "dwt.json").is_file():
        pytest.skip("the shipped dwt checkpoint is not in this checkout")
    sample = load_sample(pennfudan_root, ids_for_split(pennfudan_root, "val")[0])
    boxes = boxes_from_ids(sample.instances)
    out = tmp_path / "mask.png"
    args = [str(pennfudan_root / "PNGImages" / f"{sample.id}.png"), "--out", str(out), "--model", "dwt"]
    for box in boxes:
        args += ["--box", ",".join(f"{v:g}" for v in box)]
    assert main(["box-to-mask", *args]) == 0
    ids = read_label_png(out)
    assert ids.shape == sample.instances.shape and int(ids.max()) == len(boxes)
    ious = [iou(ids == k, sample.instances == k) for k in range(1, len(boxes) + 1)]
    assert np.mean(ious) >= 0.7, ious
    assert main(["box-to-mask", args[0], "--out", str(out), "--box", "5000,5000,6000,6000"]) == 2


def _shipped(name: str):
    from seg.config import REPO_ROOT

    if not (REPO_ROOT / "checkpoints" / f"{name}.json").is_file():
        pytest.skip(f"the shipped {name} checkpoint is not in this checkout")
    return REPO_ROOT / "checkpoints" / name


def test_mask_rcnn_mask_head_gives_each_box_its_pedestrian_at_the_image_size(pennfudan_root):
    """The detector's mask branch answers box -> mask directly: one probability map per given box, at the
    image's size, zero outside the box, and each map is mostly its own pedestrian."""
    import torch

    from seg.instances.data import boxes_from_ids, ids_for_split, load_sample
    from seg.labeling.seeding import ForegroundModel

    torch.set_num_threads(1)
    model = ForegroundModel.from_checkpoint(_shipped("maskrcnn"))
    sample = load_sample(pennfudan_root, ids_for_split(pennfudan_root, "val")[1])
    boxes = [tuple(float(v) for v in b) for b in boxes_from_ids(sample.instances)]
    maps = model.box_maps(sample.image, boxes)
    assert len(maps) == len(boxes)
    for k, (prob, box) in enumerate(zip(maps, boxes), start=1):
        assert prob.shape == sample.instances.shape and prob.dtype == np.float32
        assert 0.0 <= prob.min() and prob.max() <= 1.0
        x0, y0, x1, y1 = (int(v) for v in box)
        outside = np.ones(prob.shape, bool)
        outside[y0:y1, x0:x1] = False
        assert not prob[outside].any()
        assert iou(prob >= 0.5, sample.instances == k) >= 0.5
    assert model.box_maps(sample.image, []) == []


def test_two_models_average_their_box_maps_and_the_cli_takes_both(pennfudan_root, tmp_path):
    from seg.cli import main
    from seg.instances.data import boxes_from_ids, ids_for_split, load_sample
    from seg.io import read_label_png
    from seg.labeling.seeding import ForegroundAverage, SeedModelError, load_seed_models

    dwt, maskrcnn = _shipped("dwt"), _shipped("maskrcnn")
    sample = load_sample(pennfudan_root, ids_for_split(pennfudan_root, "val")[0])
    boxes = [tuple(float(v) for v in b) for b in boxes_from_ids(sample.instances)]
    both = load_seed_models([dwt, maskrcnn])
    assert isinstance(both, ForegroundAverage) and both.name == "dwt+maskrcnn"
    alone = [m.box_maps(sample.image, boxes) for m in both.models]
    for mean, first, second in zip(both.box_maps(sample.image, boxes), *alone):
        assert np.allclose(mean, (first + second) / 2, atol=1e-6)
    with pytest.raises(SeedModelError):
        ForegroundAverage([])
    out = tmp_path / "mask.png"
    image = str(pennfudan_root / "PNGImages" / f"{sample.id}.png")
    args = ["box-to-mask", image, "--out", str(out), "--model", "dwt", "--model", "maskrcnn"]
    for box in boxes:
        args += ["--box", ",".join(f"{v:g}" for v in box)]
    assert main(args) == 0
    ids = read_label_png(out)
    assert ids.shape == sample.instances.shape and int(ids.max()) == len(boxes)
    assert np.mean([iou(ids == k, sample.instances == k) for k in range(1, len(boxes) + 1)]) >= 0.7
    assert main([*args[:4], "--model", ",", *args[8:]]) == 2  # no model named: a plain refusal


def test_box_mask_is_the_same_every_time():
    """GrabCut's colour models start from k-means: the tool fixes its seed, so a box always gives one cut."""
    image, obj = scene(seed=3)
    box = tight_box(obj)
    noisy_fg = np.clip(obj * 0.7 + np.random.default_rng(0).uniform(0, 0.4, obj.shape), 0, 1).astype(np.float32)
    first = tools.box_mask(image, box, noisy_fg)
    for _ in range(3):
        assert np.array_equal(tools.box_mask(image, box, noisy_fg), first)
    assert iou(first, obj) >= 0.85


def test_each_box_map_leaves_out_the_instances_of_other_objects():
    from seg.labeling.seeding import _per_box

    instances = np.zeros((60, 100), np.int32)
    instances[10:50, 10:40] = 1
    instances[10:50, 35:70] = 2  # overlaps box 1's right edge
    fg = (instances > 0).astype(np.float32)
    first, second, nowhere = _per_box(instances, fg, [(10, 10, 40, 50), (35, 10, 70, 50), (80, 0, 100, 20)])
    assert (first[instances == 2] == 0).all() and (first[instances == 1] == 1).all()
    assert (second[instances == 1] == 0).all() and (second[instances == 2] == 1).all()
    assert nowhere is fg  # no instance fits: the plain foreground
