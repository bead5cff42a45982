"""Export and import: CVAT Segmentation Mask 1.1, COCO (RLE), a VOC-style PNG folder and a workspace zip;
export -> import into a fresh workspace gives identical masks, splits and classes for each format."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seg.cli import main
from seg.labeling.classes import ClassList
from seg.labeling.export import (
    FORMATS,
    dataset_classes,
    export_archive,
    export_coco,
    export_cvat,
    export_voc,
    export_workspace,
    export_zip,
    import_dataset,
)
from seg.labeling.workspace import LabelsRoot, Workspace, WorkspaceError

CLASSES = ClassList.create(["road", "car", "person"], ["#808080", "#e01010", "#10e010"])


def _labelled_workspace(root: Path, classes: ClassList | None = None) -> Workspace:
    """Four images: three labelled (one with two versions), one not; masks with several regions per class."""
    ws = Workspace(root, classes or CLASSES)
    rng = np.random.default_rng(0)
    for i in range(4):
        height, width = 40 + i, 60
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        name, _ = ws.import_image(image, name=f"img{i}.png")
        if i == 3:
            continue
        label = np.zeros((height, width), np.uint8)
        label[:, 30:] = 1
        label[5:12, 2:8] = 2
        label[20:30, 40:45] = 2  # a second region of class 2, inside class 1
        label[i, i] = 1  # a single-pixel region
        ws.save(name, label)
        if i == 0:
            label[30:, :10] = 2
            ws.save(name, label)
    return ws


def _dataset_path(fmt: str, out: Path, ws: Workspace) -> Path:
    return out / f"{ws.root.name}.zip" if fmt == "zip" else out


def _assert_same(a: Workspace, b: Workspace) -> None:
    assert b.class_list == a.class_list
    labelled = {it.name: it for it in a.scan().items if it.labelled}
    assert labelled and {it.name for it in b.scan().items if it.labelled} == set(labelled)
    for name, it in labelled.items():
        assert np.array_equal(b.load(name).label, a.load(name).label), name
        assert b.item(name).split == it.split, name


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_then_import_into_a_fresh_workspace_gives_identical_masks_and_classes(tmp_path: Path, fmt: str):
    ws = _labelled_workspace(tmp_path / "src")
    report = export_workspace(ws, fmt, tmp_path / "out")
    assert report.exported == ["img0", "img1", "img2"] and not report.problems
    source = _dataset_path(fmt, tmp_path / "out", ws)
    fresh = Workspace(tmp_path / "dst", dataset_classes(fmt, source))
    imported = import_dataset(fresh, fmt, source)
    assert not imported.problems and sorted(imported.saved) == ["img0", "img1", "img2"]
    _assert_same(ws, fresh)
    again = import_dataset(fresh, fmt, source)  # the same dataset again changes nothing
    assert not again.saved and not again.added and len(again.unchanged) == 3
    with pytest.raises(WorkspaceError):
        export_workspace(ws, fmt, ws.root / "export")  # never inside the workspace


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_also_travels_as_one_zip_to_download_and_upload(tmp_path: Path, fmt: str):
    ws = _labelled_workspace(tmp_path / "src")
    report = export_archive(ws, fmt, tmp_path / "downloads")
    assert report.out.parent == tmp_path / "downloads" and report.out.suffix == ".zip"
    assert sorted(p.name for p in (tmp_path / "downloads").iterdir()) == [report.out.name]  # nothing else left
    fresh = Workspace(tmp_path / "dst", dataset_classes(fmt, report.out))
    assert sorted(import_dataset(fresh, fmt, report.out).saved) == ["img0", "img1", "img2"]
    _assert_same(ws, fresh)


def test_import_maps_classes_by_name_and_adds_missing_ones_at_new_ids(tmp_path: Path):
    ws = _labelled_workspace(tmp_path / "src")
    export_coco(ws, tmp_path / "coco")
    other = Workspace(tmp_path / "other", ClassList.create(["person", "sky"]))
    report = import_dataset(other, "coco", tmp_path / "coco")
    assert other.classes == ["person", "sky", "road", "car"] and report.new_classes == ["road", "car"]
    label = ws.load("img1").label
    expected = np.array([2, 3, 0], np.uint8)[label]  # road -> 2, car -> 3, person -> 0
    assert np.array_equal(other.load("img1").label, expected)


def test_cvat_layout_and_colours(tmp_path: Path):
    ws = _labelled_workspace(tmp_path / "ws")
    report = export_cvat(ws, tmp_path / "cvat")
    out = tmp_path / "cvat"
    lines = (out / "labelmap.txt").read_text().splitlines()
    assert lines[0].startswith("#") and lines[1:] == ["road:128,128,128::", "car:224,16,16::", "person:16,224,16::"]
    colour_to_id = {tuple(int(v) for v in ln.split(":")[1].split(",")): i for i, ln in enumerate(lines[1:])}
    subsets = {p.stem: p.read_text().split() for p in (out / "ImageSets" / "Segmentation").glob("*.txt")}
    assert sorted(n for names in subsets.values() for n in names) == report.exported
    assert all(ws.item(n).split == split for split, names in subsets.items() for n in names)
    for name in report.exported:
        rgb = np.array(Image.open(out / "SegmentationClass" / f"{name}.png").convert("RGB"))
        ids = np.vectorize(lambda *c: colour_to_id[c], otypes=[np.uint8])(rgb[..., 0], rgb[..., 1], rgb[..., 2])
        assert np.array_equal(ids, ws.load(name).label)
        assert (out / "SegmentationObject" / f"{name}.png").is_file() and (out / "JPEGImages" / f"{name}.jpg").is_file()
    # a colour that labelmap.txt does not list is reported, never guessed
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(out / "SegmentationClass" / f"{name}.png")
    report = import_dataset(Workspace(tmp_path / "dst", dataset_classes("cvat", out)), "cvat", out)
    assert any("(1, 2, 3)" in p.reason for p in report.problems) and name not in report.saved


def test_coco_has_one_rle_annotation_per_connected_region(tmp_path: Path):
    from pycocotools.coco import COCO

    ws = _labelled_workspace(tmp_path / "ws")
    export_coco(ws, tmp_path / "coco")
    files = sorted((tmp_path / "coco" / "annotations").glob("instances_*.json"))
    assert files and all(
        json.loads(f.read_text())["categories"][1] == {"id": 2, "name": "car", "supercategory": "", "color": "#e01010"}
        for f in files
    )
    seen = 0
    for path in files:
        coco = COCO(str(path))  # the reference API reads it
        for image in coco.dataset["images"]:
            label = ws.load(Path(image["file_name"]).stem).label
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
            person = [a for a in anns if a["category_id"] == 3]
            assert len(person) == 2 + (image["file_name"] == "img0.jpg")  # two regions (three after the edit)
            rebuilt = np.zeros_like(label)
            for ann in anns:
                mask = coco.annToMask(ann).astype(bool)
                assert ann["iscrowd"] == 0 and isinstance(ann["segmentation"]["counts"], str)
                assert ann["area"] == mask.sum() and not (rebuilt[mask] != 0).any()  # regions never overlap
                rebuilt[mask] = ann["category_id"] - 1
            assert np.array_equal(rebuilt, label)
            seen += 1
    assert seen == 3


def test_coco_from_another_tool_gets_a_background_class_for_uncovered_pixels(tmp_path: Path):
    from seg.labeling.coco import encode_rle

    folder = tmp_path / "foreign"
    (folder / "images").mkdir(parents=True)
    Image.fromarray(np.full((30, 40, 3), 128, np.uint8)).save(folder / "images" / "a.jpg")
    cat = np.zeros((30, 40), bool)
    cat[5:15, 5:25] = True
    doc = {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 40, "height": 30}],
        "annotations": [
            {
                "id": 1,
                "image_id": 7,
                "category_id": 17,
                "segmentation": encode_rle(cat),
                "area": int(cat.sum()),
                "iscrowd": 0,
                "bbox": [5, 5, 20, 10],
            },
            {
                "id": 2,
                "image_id": 7,
                "category_id": 18,
                "iscrowd": 0,
                "area": 50,
                "segmentation": [[30, 20, 39, 20, 39, 29, 30, 29]],
            },
        ],
        "categories": [{"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}],
    }
    (folder / "annotations").mkdir()
    (folder / "annotations" / "instances_train.json").write_text(json.dumps(doc))
    classes = dataset_classes("coco", folder)
    assert classes.names == ("cat", "dog", "background")
    ws = Workspace(tmp_path / "ws", classes)
    assert import_dataset(ws, "coco", folder).saved == ["a"]
    label = ws.load("a").label
    assert ws.item("a").split == "train"
    assert (label[cat] == 0).all() and label[25, 35] == 1 and label[0, 0] == 2


def test_voc_masks_are_palette_pngs_of_class_ids(tmp_path: Path):
    ws = _labelled_workspace(tmp_path / "ws")
    export_voc(ws, tmp_path / "voc")
    with Image.open(tmp_path / "voc" / "SegmentationClass" / "img1.png") as img:
        assert img.mode == "P" and img.getpalette()[3:6] == [224, 16, 16]
        assert np.array_equal(np.asarray(img), ws.load("img1").label)
    # a VOC folder without labelmap.txt reads with VOC's classes; void (255) becomes background
    (tmp_path / "voc" / "labelmap.txt").unlink()
    mask = ws.load("img1").label.copy()
    mask[0, :] = 255
    Image.fromarray(mask, mode="L").save(tmp_path / "voc" / "SegmentationClass" / "img1.png")
    dst = Workspace(tmp_path / "dst", dataset_classes("voc", tmp_path / "voc"))
    assert dst.classes[:3] == ["background", "aeroplane", "bicycle"] and len(dst.classes) == 21
    report = import_dataset(dst, "voc", tmp_path / "voc")
    assert "img1" in report.saved and any("void" in p.reason for p in report.problems)
    assert (dst.load("img1").label[0] == 0).all()


def test_zip_holds_the_whole_workspace_and_brings_back_its_history(tmp_path: Path):
    ws = _labelled_workspace(tmp_path / "src")
    report = export_zip(ws, tmp_path / "out")
    with zipfile.ZipFile(report.out) as archive:
        names = set(archive.namelist())
    assert {
        "src/classes.txt",
        "src/manifest.sqlite3",
        "src/unlabeled/img3.jpg",
        "src/.versions/img0/v000002.png",
    } <= names
    dst = Workspace(tmp_path / "dst", dataset_classes("zip", report.out))
    imported = import_dataset(dst, "zip", report.out)
    _assert_same(ws, dst)
    assert [v.version for v in dst.versions("img0")] == [1, 2]  # every saved version, in order
    assert np.array_equal(dst.read_version("img0", 1), ws.read_version("img0", 1))
    assert "img3" in dst.names() and imported.unlabelled == ["img3"]


def test_a_hostile_zip_writes_nothing_outside_the_workspace(tmp_path: Path):
    ws = _labelled_workspace(tmp_path / "src")
    good = export_zip(ws, tmp_path / "out").out
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
        dst.writestr("src/../../escaped.txt", b"x")
        dst.writestr("/abs/train/x.jpg", b"x")
        dst.writestr("src/train/../../../up.png", b"x")
        dst.writestr("src/train/bomb.png", b"\0" * (70 * 1024 * 1024), compress_type=zipfile.ZIP_DEFLATED)
        dst.writestr("src/train/bomb.jpg", good.read_bytes()[:100])
    before = sorted(p.name for p in tmp_path.iterdir())
    target = Workspace(tmp_path / "dst", dataset_classes("zip", evil))
    report = import_dataset(target, "zip", evil)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "dst"])
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "up.png").exists()
    assert "bomb" not in target.names() and report.problems
    _assert_same(ws, target)
    with pytest.raises(WorkspaceError):
        import_dataset(target, "zip", tmp_path / "out")  # a folder is not a zip
    (tmp_path / "notzip.zip").write_bytes(b"PK nonsense")
    with pytest.raises(WorkspaceError):
        dataset_classes("zip", tmp_path / "notzip.zip")


def test_cli_export_and_import_every_format_into_new_workspaces(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("SEG_LABEL_DIR", str(tmp_path / "labels"))
    root = LabelsRoot()
    src = root.create("src", CLASSES)
    _labelled_workspace(src.root)
    for fmt in FORMATS:
        out = tmp_path / f"export-{fmt}"
        assert main(["label-export", "--workspace", "src", "--format", fmt, "--out", str(out)]) == 0
        source = out / "src.zip" if fmt == "zip" else out
        assert main(["label-import", "--workspace", f"from-{fmt}", "--format", fmt, str(source)]) == 0
        assert "3 mask(s) saved" in capsys.readouterr().out
        _assert_same(src, root.open(f"from-{fmt}"))
    assert main(["label-export", "--workspace", "src", "--format", "coco", "--out", str(src.root / "x")]) == 2
    assert main(["label-export", "--workspace", "nope", "--format", "coco", "--out", str(tmp_path / "y")]) == 2
    assert (
        main(["label-import", "--workspace", "src", "--format", "coco", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    )
    assert main(["label-import", "--workspace", "../up", "--format", "coco", str(tmp_path / "export-coco")]) == 2


def test_cli_import_scan_versions(tmp_path: Path, capsys):
    src = tmp_path / "photos"
    src.mkdir()
    for i in range(2):
        Image.fromarray(np.full((30, 40, 3), 50 * i, np.uint8)).save(src / f"p{i}.png")
    (src / "junk.jpg").write_bytes(b"nope")
    ws_dir = tmp_path / "ws"
    assert main(["label-import", "--workspace", str(ws_dir), str(src)]) == 1  # one file failed
    out = capsys.readouterr().out
    assert "added 2" in out and "junk.jpg" in out
    ws = Workspace(ws_dir)
    ws.save("p0", np.ones((30, 40), np.uint8))
    assert main(["label-scan", "--workspace", str(ws_dir)]) == 0
    assert "1 of 2 image(s) labelled" in capsys.readouterr().out
    assert main(["label-export", "--workspace", str(ws_dir), "--out", str(tmp_path / "o")]) == 0  # cvat by default
    assert (tmp_path / "o" / "SegmentationClass" / "p0.png").is_file()
    ws.save("p0", np.full((30, 40), 2, np.uint8))
    assert main(["label-versions", "--workspace", str(ws_dir), "--name", "p0", "--restore", "1"]) == 0
    out = capsys.readouterr().out
    assert "restored version 1 of p0 as version 3" in out and "v3" in out
    assert np.all(Workspace(ws_dir).load("p0").label == 1)
    assert main(["label-versions", "--workspace", str(ws_dir), "--name", "../p0"]) == 2
    assert main(["label-versions", "--workspace", str(ws_dir), "--name", "p0", "--restore", "9"]) == 2
    assert main(["label-scan", "--workspace", str(tmp_path / "missing")]) == 2
    assert not (tmp_path / "missing").exists()
