"""Labeling workspace: round trip through the core loader, versions, concurrency, names, corrupt files."""

from __future__ import annotations

import os
import sqlite3
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seg.classes import SBD_PALETTE
from seg.data.sbd import list_samples, load_split, read_label
from seg.io import ImageLoadError, read_label_png
from seg.labeling import paint
from seg.labeling.names import UnsafePathError, safe_join, sanitize_name
from seg.labeling.workspace import MANIFEST_NAME, Workspace, WorkspaceError

H, W = 120, 160


def scene(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    """A synthetic photo-like image (sky over grass with noise); no dataset files needed."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2] = (90, 140, 230)
    img[h // 2:] = (50, 130, 40)
    return np.clip(img.astype(int) + rng.integers(0, 40, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture()
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / "ws")


def test_round_trip_painted_shape_reaches_the_loader_exactly(ws: Workspace):
    name, added = ws.import_image(scene(), name="holiday photo.JPG")
    assert added and name == "holiday_photo"
    loaded = ws.load(name)
    assert loaded.label is None and loaded.version == 0
    start = np.full((H, W), 8, np.uint8)  # "misc" everywhere, as the tab starts

    # What the browser sends: a canvas-sized RGBA layer (canvas = 2x the image here), a
    # crisp rectangle of "road" plus antialiased fringe: faint pixels (alpha < 128) and a
    # blended-colour ring that is mostly opaque and nearest to road's colour.
    view = paint.CanvasView(H, W, canvas_width=320, canvas_height=240)
    assert view.box == (0, 0, 320, 240)
    layer = np.zeros((240, 320, 4), np.uint8)
    road = np.array(SBD_PALETTE[2])
    layer[60:140, 100:200] = (*road, 255)
    layer[58:60, 98:202] = (*((road * 0.8 + 0.2 * 255).astype(int)), 200)  # blended edge, opaque enough
    layer[140:142, 100:200] = (*road, 60)  # faint antialiasing: ignored
    strokes = paint.decode_strokes(view.from_canvas(layer), ws.palette)
    label = paint.apply_strokes(start, strokes)

    expected = start.copy()
    expected[30:70, 50:100] = 2
    expected[29, 49:101] = 2  # canvas rows 58..59 sample image row 29 at its centre
    assert np.array_equal(label, expected)

    result = ws.save(name, label, model="unet-test", reference=start, split="train")
    assert result.version == 1 and result.split == "train" and not result.conflict
    assert result.changed_pixels == int((expected != 8).sum())

    samples = [s for s in list_samples(ws.root) if s.id == name]
    assert len(samples) == 1 and samples[0].split == "train"
    assert np.array_equal(read_label(samples[0]), expected)
    split = load_split(ws.root, "train", size=(W, H))
    assert split.ids == [name]
    assert np.array_equal(split.masks[0].numpy(), expected)
    assert split.classes == ws.classes
    # The saved file is a palette PNG whose pixel values are class ids.
    with Image.open(result.label_path) as img:
        assert img.mode == "P"
        assert img.getpalette()[6:9] == list(SBD_PALETTE[2])
    # The manifest records who prefilled it and how much was changed by hand.
    (record,) = ws.versions(name)
    assert (record.model, record.changed_pixels, record.total_pixels) == ("unet-test", result.changed_pixels, H * W)


def test_resave_keeps_every_previous_version(ws: Workspace):
    name, _ = ws.import_image(scene(), name="a.png")
    masks = [np.full((H, W), c, np.uint8) for c in (1, 2, 3)]
    for i, m in enumerate(masks):
        assert ws.save(name, m).version == i + 1
    assert [v.version for v in ws.versions(name)] == [1, 2, 3]
    for i, m in enumerate(masks):
        assert np.array_equal(ws.read_version(name, i + 1), m)
    assert np.array_equal(ws.load(name).label, masks[-1])
    assert ws.load(name).version == 3
    assert ws.progress() == (1, 1)


def test_existing_label_without_manifest_is_kept_as_version_zero(ws: Workspace):
    name, _ = ws.import_image(scene(), name="old")
    first = ws.save(name, np.zeros((H, W), np.uint8))
    # Simulate a course folder made elsewhere: label present, manifest and versions absent.
    os.remove(ws.root / MANIFEST_NAME)
    for p in (ws.root / ".versions" / name).iterdir():
        p.unlink()
    fresh = Workspace(ws.root)
    result = fresh.save(name, np.ones((H, W), np.uint8))
    assert result.version == 1
    assert np.array_equal(fresh.read_version(name, 0), np.zeros((H, W), np.uint8))
    assert first.label_path == result.label_path


def test_concurrent_saves_from_two_sessions_both_keep_their_work(tmp_path: Path):
    root = tmp_path / "ws"
    name, _ = Workspace(root).import_image(scene(), name="shared")
    # Two Workspace objects = two independent sessions/processes: only SQLite serialises them.
    sessions = [Workspace(root), Workspace(root)]
    per_session = 6
    results: dict[str, list] = {"A": [], "B": []}
    barrier = threading.Barrier(2)

    def worker(tag: str, ws: Workspace, class_id: int) -> None:
        barrier.wait()
        for _ in range(per_session):
            results[tag].append(ws.save(name, np.full((H, W), class_id, np.uint8), base_version=0,
                                        session=tag))

    threads = [threading.Thread(target=worker, args=("A", sessions[0], 1)),
               threading.Thread(target=worker, args=("B", sessions[1], 5))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    versions = sorted(r.version for rs in results.values() for r in rs)
    assert versions == list(range(1, 2 * per_session + 1))  # no number handed out twice
    records = Workspace(root).versions(name)
    assert len(records) == 2 * per_session
    for rec in records:  # every version file holds exactly the session's own mask
        expected = 1 if rec.session == "A" else 5
        assert np.all(Workspace(root).read_version(name, rec.version) == expected)
    latest = records[-1]
    assert np.all(read_label_png(root / latest.split / f"{name}.png") == (1 if latest.session == "A" else 5))
    assert any(r.conflict for rs in results.values() for r in rs)


@pytest.mark.parametrize("raw, expected", [
    ("../../etc/passwd", "passwd"),
    ("..\\..\\windows\\system32\\evil.jpg", "evil"),
    ("/abs/path/photo.png", "photo"),
    ("..", "image"),
    ("", "image"),
    (".hidden.jpg", "hidden"),
    ("a\x00b/../c d.jpeg", "c_d"),
    ("Ünïcödé phötö (1).JPG", "Unicode_photo_1"),
    ("con", "image_con"),
    ("x" * 300, "x" * 100),
])
def test_sanitize_name(raw: str, expected: str):
    assert sanitize_name(raw) == expected


def test_traversal_attempts_never_write_outside(ws: Workspace, tmp_path: Path):
    outside_before = sorted(p.name for p in tmp_path.iterdir())
    name, _ = ws.import_image(scene(), name="../../../escape.jpg")
    assert name == "escape" and (ws.root / "unlabeled" / "escape.jpg").is_file()
    for bad in ("../escape", "..", "a/b", "/etc/passwd", "x\x00y", ".versions"):
        with pytest.raises((UnsafePathError, WorkspaceError)):
            ws.save(bad, np.zeros((H, W), np.uint8))
        with pytest.raises((UnsafePathError, WorkspaceError)):
            ws.load(bad)
    with pytest.raises(UnsafePathError):
        safe_join(ws.root, "..", "x")
    # A symlink planted inside the workspace cannot redirect writes outside it.
    target = tmp_path / "elsewhere"
    target.mkdir()
    (ws.root / ".versions").mkdir(exist_ok=True)
    os.symlink(target, ws.root / ".versions" / "escape")
    with pytest.raises(UnsafePathError):
        ws.save("escape", np.zeros((H, W), np.uint8))
    assert list(target.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(outside_before + ["elsewhere"])


def test_wrong_masks_are_refused(ws: Workspace):
    name, _ = ws.import_image(scene(), name="m")
    with pytest.raises(WorkspaceError, match="does not match"):
        ws.save(name, np.zeros((H + 1, W), np.uint8))
    with pytest.raises(WorkspaceError, match="class ids"):
        ws.save(name, np.full((H, W), 9, np.uint8))
    with pytest.raises(WorkspaceError, match="no image"):
        ws.save("missing", np.zeros((H, W), np.uint8))
    assert ws.versions(name) == []


def test_import_dedupes_and_refuses_non_images(ws: Workspace, tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(scene(1)).save(src / "one.png")
    Image.fromarray(scene(2)).save(src / "two.jpg")
    (src / "notes.txt").write_text("not an image")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    report = ws.import_folder(src)
    assert sorted(report.added) == ["one", "two"]
    assert sorted(p.path for p in report.problems) == ["broken.jpg", "notes.txt"]
    again = ws.import_folder(src)
    assert again.added == [] and sorted(again.existing) == ["one", "two"]
    # Same name, different picture: gets a new name instead of overwriting.
    name, added = ws.import_image(scene(3), name="one.png")
    assert added and name == "one_2"
    with pytest.raises(ImageLoadError):
        ws.import_image(b"definitely not an image", name="x")
    with pytest.raises(WorkspaceError):
        ws.import_folder(ws.root)
    assert ws.progress() == (0, 3)


def test_corrupt_and_foreign_files_are_reported_and_skipped(ws: Workspace):
    good, _ = ws.import_image(scene(), name="good")
    ws.save(good, np.full((H, W), 3, np.uint8), split="train")
    (ws.root / "train" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (ws.root / "train" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n nope")
    Image.fromarray(scene(5)).save(ws.root / "train" / "badlabel.jpg")
    (ws.root / "train" / "badlabel.png").write_bytes(b"garbage")
    Image.fromarray(scene(6)).save(ws.root / "train" / "small.jpg")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(ws.root / "train" / "small.png")
    (ws.root / "train" / "orphan.png").write_bytes(b"x")
    (ws.root / "train" / "readme.txt").write_text("hello")
    (ws.root / "train" / ".good.png.abc.tmp").write_bytes(b"half")
    (ws.root / "stuff").mkdir()

    report = ws.scan()
    reasons = {p.path: p.reason for p in report.problems}
    assert "corrupt image" in reasons["train/bad.jpg"]
    assert "corrupt label" in reasons["train/badlabel.png"]
    assert "size does not match" in reasons["train/small.png"]
    assert "without an image" in reasons["train/orphan.png"]
    assert "foreign" in reasons["train/readme.txt"] and "foreign" in reasons["stuff"]
    assert "interrupted write" in reasons["train/.good.png.abc.tmp"]
    by_name = {it.name: it for it in report.items}
    assert set(by_name) == {"good", "badlabel", "small"}
    assert by_name["good"].labelled and not by_name["small"].labelled and not by_name["badlabel"].labelled
    # The workspace keeps working: load, save, and the core loader skips what it cannot read.
    assert ws.load("badlabel").label is None
    ws.save("small", np.zeros((H, W), np.uint8))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        split = load_split(ws.root, "train", size=(W, H))
    assert "good" in split.ids and "small" in split.ids and "bad" not in split.ids


def test_corrupt_manifest_is_set_aside(tmp_path: Path):
    root = tmp_path / "ws"
    root.mkdir()
    (root / MANIFEST_NAME).write_bytes(b"this is not sqlite" * 100)
    ws = Workspace(root)
    assert any(p.path == MANIFEST_NAME for p in ws.scan().problems)
    name, _ = ws.import_image(scene(), name="x")
    assert ws.save(name, np.zeros((H, W), np.uint8)).version == 1
    assert list(root.glob(f"{MANIFEST_NAME}.corrupt-*"))
    sqlite3.connect(root / MANIFEST_NAME).execute("SELECT * FROM versions").fetchall()


def test_custom_classes_and_unreadable_classes_file(tmp_path: Path):
    ws = Workspace(tmp_path / "ws", classes=["bg", "cat", "dog"])
    assert ws.classes == ["bg", "cat", "dog"] and len(ws.palette) == 3
    assert Workspace(ws.root).classes == ["bg", "cat", "dog"]  # classes.txt wins on reopen
    (ws.root / "classes.txt").write_bytes(b"\xff\xfe\x00garbage")
    reopened = Workspace(ws.root)
    assert reopened.classes and any(p.path == "classes.txt" for p in reopened.scan().problems)


def test_first_label_goes_to_val_then_the_hash_rule_and_trainability(ws: Workspace):
    from seg.data.split import split_of
    from seg.labeling.workspace import SPLIT_FRACTIONS

    names = [ws.import_image(scene(i), name=f"img{i}")[0] for i in range(8)]
    with pytest.raises(WorkspaceError, match="no labelled images"):
        ws.check_trainable()
    results = [ws.save(n, np.zeros((H, W), np.uint8)) for n in names]
    assert results[0].split == "val"  # a small workspace can always be validated on
    for n, r in zip(names[1:], results[1:]):
        assert r.split == split_of(n, SPLIT_FRACTIONS)
    assert ws.save(names[0], np.ones((H, W), np.uint8)).split == "val"  # an image never changes split
    counts = ws.split_counts()
    assert counts["train"] + counts["val"] == 8 and counts["test"] == 0
    ws.check_trainable()  # img1..img4 hash to train


def test_a_hand_made_course_folder_opens_as_a_workspace(tmp_path: Path):
    """Any course-layout folder (here with a .jpeg and no manifest) can be labelled further."""
    root = tmp_path / "course"
    (root / "train").mkdir(parents=True)
    Image.fromarray(scene()).save(root / "train" / "a.jpeg")
    Image.fromarray(np.full((H, W), 4, np.uint8), mode="L").save(root / "train" / "a.png")
    ws = Workspace(root)
    assert [(it.name, it.labelled, it.split) for it in ws.items()] == [("a", True, "train")]
    assert ws.scan().problems == [] and np.all(ws.load("a").label == 4)
    result = ws.save("a", np.full((H, W), 5, np.uint8))
    assert result.split == "train" and result.version == 1
    assert np.all(ws.read_version("a", 0) == 4)  # the hand-made label is kept
    assert [s.id for s in list_samples(root)] == ["a"]


def test_refuses_to_turn_other_folders_into_workspaces(tmp_path: Path):
    download = tmp_path / "iccv09Data"
    (download / "images").mkdir(parents=True)
    (download / "labels").mkdir()
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for bad in (download, home, a_file):
        with pytest.raises(WorkspaceError):
            Workspace(bad)
    assert sorted(p.name for p in download.iterdir()) == ["images", "labels"]
    assert [p.name for p in home.iterdir()] == ["notes.txt"]
    assert Workspace(tmp_path / "new" / "nested").root.is_dir()  # a new folder is fine
