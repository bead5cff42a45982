"""Labeling workspace: round trip through the core loader, versions, concurrency, names, corrupt files."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seg.classes import SBD_PALETTE
from seg.data.sbd import list_samples, load_semantic_split, read_label
from seg.io import ImageLoadError, read_label_png
from seg.labeling import paint
from seg.labeling.manifest import Manifest
from seg.labeling.names import UnsafePathError, safe_join, sanitize_name
from seg.labeling.workspace import (
    MANIFEST_NAME,
    LabelsRoot,
    Workspace,
    WorkspaceError,
    is_workspace,
    resolve_import_folder,
)

H, W = 120, 160


def scene(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    """A synthetic photo-like image (sky over grass with noise); no dataset files needed."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2] = (90, 140, 230)
    img[h // 2 :] = (50, 130, 40)
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
    split = load_semantic_split(ws.root, "train", size=(W, H))
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
    with pytest.raises(WorkspaceError, match="neither empty nor a labeling workspace"):
        Workspace(ws.root)  # without its manifest it is no longer a workspace...
    fresh = Workspace(ws.root, adopt=True)  # ...until the operator adopts it
    result = fresh.save(name, np.ones((H, W), np.uint8))
    assert result.version == 1
    assert np.array_equal(fresh.read_version(name, 0), np.zeros((H, W), np.uint8))
    assert first.label_path == result.label_path


def test_an_image_moved_by_another_save_mid_listing_is_still_found(tmp_path: Path, monkeypatch):
    """Another session's first save moves the image from unlabeled/ to a split folder while this session
    lists the workspace: after the listing has read one folder, whichever it reads first."""
    import seg.labeling.workspace as workspace_module

    root = tmp_path / "ws"
    ws = Workspace(root)
    name, _ = ws.import_image(scene(), name="moving")
    listed = workspace_module._jpegs
    moved = []

    def list_then_move(folder: Path) -> list[Path]:
        paths = listed(folder)
        if not moved:  # one folder read: the other session moves the image now
            (root / "train").mkdir(exist_ok=True)
            os.replace(root / "unlabeled" / f"{name}.jpg", root / "train" / f"{name}.jpg")
            moved.append(name)
        return paths

    monkeypatch.setattr(workspace_module, "_jpegs", list_then_move)
    item = ws.item(name)
    assert moved and item.split == "train" and item.image_path == root / "train" / f"{name}.jpg"
    assert ws.save(name, np.full((H, W), 2, np.uint8)).version == 1


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
            results[tag].append(ws.save(name, np.full((H, W), class_id, np.uint8), base_version=0, session=tag))

    threads = [
        threading.Thread(target=worker, args=("A", sessions[0], 1)),
        threading.Thread(target=worker, args=("B", sessions[1], 5)),
    ]
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


@pytest.mark.parametrize(
    "raw, expected",
    [
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
    ],
)
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
    report = ws.import_folder(src, import_roots=[src])
    assert sorted(report.added) == ["one", "two"]
    assert sorted(p.path for p in report.problems) == ["broken.jpg", "notes.txt"]
    again = ws.import_folder(src, import_roots=[tmp_path])
    assert again.added == [] and sorted(again.existing) == ["one", "two"]
    # Same name, different picture: gets a new name instead of overwriting.
    name, added = ws.import_image(scene(3), name="one.png")
    assert added and name == "one_2"
    with pytest.raises(ImageLoadError):
        ws.import_image(b"definitely not an image", name="x")
    with pytest.raises(WorkspaceError, match="outside the workspace"):
        ws.import_folder(ws.root, import_roots=[tmp_path])
    with pytest.raises(WorkspaceError, match="turned off"):
        ws.import_folder(src)  # no import roots: a server folder is never read
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
        split = load_semantic_split(ws.root, "train", size=(W, H))
    assert "good" in split.ids and "small" in split.ids and "bad" not in split.ids


def test_corrupt_manifest_is_set_aside(tmp_path: Path):
    root = Workspace(tmp_path / "ws").root
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


def test_a_hand_made_course_folder_is_adopted_only_when_asked(tmp_path: Path):
    """A course-layout folder (here with a .jpeg and no manifest) can be labelled further once the
    operator adopts it; opened plainly it is refused and left untouched."""
    root = tmp_path / "course"
    (root / "train").mkdir(parents=True)
    Image.fromarray(scene()).save(root / "train" / "a.jpeg")
    Image.fromarray(np.full((H, W), 4, np.uint8), mode="L").save(root / "train" / "a.png")
    with pytest.raises(WorkspaceError):
        Workspace(root)
    assert sorted(p.name for p in root.iterdir()) == ["train"]
    ws = Workspace(root, adopt=True)
    assert sorted(p.name for p in root.iterdir()) == ["classes.txt", MANIFEST_NAME, "train", "val"]
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


# -- one labels root, workspaces by name, import roots: hostile input creates and reads nothing --------
def tree(base: Path) -> list[str]:
    """Every entry under ``base`` (symlinks listed, never followed), to compare before and after."""
    out = []
    for folder, dirs, files in os.walk(base):
        rel = Path(folder).relative_to(base)
        out += [str(rel / n) for n in dirs + files]
    return sorted(out)


def foreign_folder(parent: Path) -> Path:
    """Like /usr/bin: a folder that holds a program named ``test`` (and a ``train`` file)."""
    folder = parent / "bin"
    folder.mkdir()
    (folder / "test").write_bytes(b"\x7fELF not really")
    (folder / "train").write_text("a file, not a folder")
    return folder


def test_is_workspace_is_strict(tmp_path: Path):
    real = Workspace(tmp_path / "real").root
    assert is_workspace(real)
    assert sorted(p.name for p in real.iterdir()) == ["classes.txt", MANIFEST_NAME, "train", "val"]
    assert not is_workspace(foreign_folder(tmp_path))
    assert not is_workspace("/usr/bin") and not is_workspace("/proc/self") and not is_workspace(tmp_path / "nope")
    # Each required part swapped for a symlink (which could lead anywhere) or the wrong kind of entry.
    for part, make in [
        ("classes.txt", lambda p: os.symlink("/etc/hostname", p)),
        (MANIFEST_NAME, lambda p: p.mkdir()),
        ("train", lambda p: os.symlink(tmp_path, p)),
        ("val", lambda p: p.write_text("x")),
    ]:
        copy = tmp_path / f"copy-{part}"
        shutil.copytree(real, copy)
        target = copy / part
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        make(target)
        assert not is_workspace(copy), part


def test_foreign_folders_are_never_written_into(tmp_path: Path):
    bin_dir = foreign_folder(tmp_path)
    before = tree(tmp_path)
    for bad in (bin_dir, "/usr/bin", "/proc/self"):
        with pytest.raises(WorkspaceError):
            Workspace(bad)
    assert tree(tmp_path) == before


def test_labels_root_creates_lists_and_opens_by_name(tmp_path: Path):
    labels = LabelsRoot(tmp_path / "labels")
    assert labels.names() == [] and not (tmp_path / "labels").exists()  # listing creates nothing
    alpha = labels.create("alpha")
    labels.create("b-2.v1", classes=["bg", "thing"])
    foreign_folder(labels.path)
    (labels.path / "half").mkdir()
    (labels.path / "half" / "train").mkdir()
    (labels.path / "notes.txt").write_text("x")
    shutil.copytree(alpha.root, labels.path / " alpha")  # no name a person could type: never listed
    shutil.copytree(alpha.root, labels.path / ".hidden")
    assert labels.names() == ["alpha", "b-2.v1"]
    assert labels.open("alpha") is alpha  # one object per workspace: sessions share its lock
    assert labels.open(" b-2.v1 ").classes == ["bg", "thing"]
    with pytest.raises(WorkspaceError, match="exists already"):
        labels.create("alpha")
    with pytest.raises(WorkspaceError, match="exists already"):
        labels.create("bin")  # a foreign folder's name is taken, and it is left alone
    with pytest.raises(WorkspaceError, match="no workspace named"):
        labels.open("bin")
    with pytest.raises(WorkspaceError, match="no workspace named"):
        labels.open("missing")
    assert sorted(p.name for p in (labels.path / "bin").iterdir()) == ["test", "train"]
    assert labels.open_or_create().root == labels.path / "labels"
    assert not [p for p in labels.path.iterdir() if p.name.startswith(".new-")]  # no staging left


def test_workspace_without_split_folders_is_listed_and_completed(tmp_path: Path):
    labels = LabelsRoot(tmp_path / "labels")
    old = labels.path / "old"
    old.mkdir(parents=True)
    (old / "classes.txt").write_text("a\nb\n")
    Manifest(old / MANIFEST_NAME)
    fake = labels.path / "fake"
    fake.mkdir()
    (fake / "classes.txt").write_text("a\n")
    (fake / MANIFEST_NAME).write_text("not a database")
    assert labels.names() == ["old"]
    assert labels.open("old").classes == ["a", "b"] and is_workspace(old)


HOSTILE_NAMES = [
    "..",
    "../escape",
    "a/../../b",
    "~",
    "~/ws",
    "~root",
    "/proc/self",
    "/etc",
    "x\x00y",
    "ws\x00",
    "x" * 5000,
    "x" * 65,
    "",
    "   ",
    ".hidden",
    ".",
    "a..b",
    "con",
    "nul.txt",
    "na me",
    "Ümlaut",
    "a\\b",
    "ws\nx",
    None,
    42,
    ["ws"],
]


def test_labels_root_refuses_hostile_names_and_creates_nothing_outside(tmp_path: Path):
    labels = LabelsRoot(tmp_path / "labels")
    labels.create("mine")
    outside = Workspace(tmp_path / "outside-ws").root  # a real workspace outside the root
    os.symlink(outside, labels.path / "link-out")
    os.symlink("/usr/bin", labels.path / "link-bin")
    foreign_folder(labels.path)
    absolute = [str(tmp_path / "elsewhere" / "new" / "deep" / "ws"), str(outside), f"/tmp/seglab-{os.getpid()}/x"]
    before, root_before = tree(tmp_path), tree(labels.path)
    for bad in HOSTILE_NAMES + absolute + ["link-out", "link-bin"]:
        for action in (labels.create, labels.open, labels.path_of):
            if action is labels.path_of and bad in ("link-out", "link-bin"):
                continue  # valid names; it is what they lead to that is refused below
            with pytest.raises((UnsafePathError, WorkspaceError)) as info:
                action(bad)
            message = str(info.value)
            assert len(message) < 200 and str(tmp_path) not in message, (bad, message)
    for link in ("link-out", "link-bin"):
        with pytest.raises(UnsafePathError, match="outside"):
            labels.path_of(link)
    assert labels.names() == ["mine"]
    assert tree(tmp_path) == before and tree(labels.path) == root_before
    assert not Path(f"/tmp/seglab-{os.getpid()}").exists()


def test_concurrent_creates_of_one_name_make_one_workspace(tmp_path: Path):
    labels = LabelsRoot(tmp_path / "labels")
    results: list[str] = []
    barrier = threading.Barrier(6)

    def create() -> None:
        barrier.wait()
        try:
            labels.create("shared")
            results.append("made")
        except WorkspaceError:
            results.append("refused")

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results) == ["made"] + ["refused"] * 5
    assert sorted(p.name for p in labels.path.iterdir()) == ["shared"]


def test_import_folder_reads_only_under_the_import_roots(tmp_path: Path):
    allowed = tmp_path / "allowed"
    photos = allowed / "photos"
    photos.mkdir(parents=True)
    Image.fromarray(scene(1)).save(photos / "ok.png")
    secret = tmp_path / "secret"
    secret.mkdir()
    Image.fromarray(scene(2)).save(secret / "private.png")
    os.symlink(secret / "private.png", photos / "linked.png")  # a file leading out
    os.symlink(secret, allowed / "escape")  # a folder leading out
    ws = Workspace(tmp_path / "ws")
    before = tree(tmp_path)
    hostile = [
        "/etc",
        "/proc/self",
        "/proc/self/root/etc",
        str(secret),
        str(allowed / "escape"),
        f"{allowed}/../secret",
        "~",
        "~/photos",
        "photos",
        "",
        "x\x00y",
        "/" + "a" * 5000,
        str(allowed / "missing"),
        None,
        7,
    ]
    for bad in hostile:
        with pytest.raises(WorkspaceError) as info:
            ws.import_folder(bad, import_roots=[allowed])
        assert str(tmp_path) not in str(info.value) and "secret" not in str(info.value)
    for bad in (str(photos), "/etc"):
        with pytest.raises(WorkspaceError, match="turned off"):
            ws.import_folder(bad)  # no roots at all: the operator offers none by default
    assert tree(tmp_path) == before and ws.names() == []
    report = ws.import_folder(str(photos), import_roots=[allowed])
    assert report.added == ["ok"] and [p.path for p in report.problems] == ["linked.png"]
    assert ws.names() == ["ok"]
    assert resolve_import_folder(f"  {photos}  ", [allowed]) == photos.resolve()


def test_write_check_refuses_before_anything_is_written(tmp_path: Path):
    seen: list[tuple[int, int]] = []
    limit = {"images": 1, "bytes": 10**9}

    def check(new_bytes: int, new_images: int) -> None:
        seen.append((new_bytes, new_images))
        if new_images and len(ws.names()) + new_images > limit["images"] or new_bytes > limit["bytes"]:
            raise WorkspaceError("over the quota")

    ws = Workspace(tmp_path / "ws", write_check=check)
    name, _ = ws.import_image(scene(1), name="first")
    with pytest.raises(WorkspaceError, match="quota"):
        ws.import_image(scene(2), name="second")
    assert ws.names() == ["first"] and list((ws.root / "unlabeled").iterdir()) == [ws.root / "unlabeled" / "first.jpg"]
    assert ws.import_image(scene(1), name="again") == ("first", False)  # a duplicate writes nothing: no check
    limit["bytes"] = 10
    with pytest.raises(WorkspaceError, match="quota"):
        ws.save(name, np.zeros((H, W), np.uint8))
    assert ws.versions(name) == [] and not (ws.root / ".versions").exists() and ws.progress() == (0, 1)
    assert seen[0][1] == 1 and seen[0][0] > 0 and seen[-1][1] == 0
    # A refused import leaves no manifest row behind: the same picture imports once allowed.
    limit.update(images=2, bytes=10**9)
    assert ws.import_image(scene(2), name="second") == ("second", True)


def test_trainability_message_names_no_server_path(ws: Workspace):
    with pytest.raises(WorkspaceError) as info:
        ws.check_trainable()
    assert str(ws.root.parent) not in str(info.value)
