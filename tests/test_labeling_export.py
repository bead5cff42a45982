"""CVAT "Segmentation Mask 1.1" export and the label-* CLI commands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seg.cli import main
from seg.labeling.export import export_cvat
from seg.labeling.workspace import Workspace, WorkspaceError


def _labelled_workspace(root: Path) -> Workspace:
    ws = Workspace(root)
    for i in range(3):
        img = np.full((40, 60, 3), 30 * i, np.uint8)
        name, _ = ws.import_image(img, name=f"img{i}")
        if i < 2:
            label = np.zeros((40, 60), np.uint8)
            label[:, 30:] = i + 4
            ws.save(name, label)
    return ws


def test_cvat_export_layout_and_colours(tmp_path: Path):
    ws = _labelled_workspace(tmp_path / "ws")
    report = export_cvat(ws, tmp_path / "cvat", include_images=True)
    assert report.exported == ["img0", "img1"]  # the unlabelled image is not exported
    out = tmp_path / "cvat"
    lines = (out / "labelmap.txt").read_text().splitlines()
    assert lines[0].startswith("#") and lines[1] == "sky:70,130,230::" and len(lines) == 1 + ws.num_classes
    colour_to_id = {tuple(int(v) for v in ln.split(":")[1].split(",")): i for i, ln in enumerate(lines[1:])}
    assert (out / "ImageSets" / "Segmentation" / "default.txt").read_text().split() == ["img0", "img1"]
    for i, name in enumerate(["img0", "img1"]):
        rgb = np.asarray(Image.open(out / "SegmentationClass" / f"{name}.png").convert("RGB"))
        ids = np.vectorize(lambda *c: colour_to_id[c], otypes=[np.uint8])(rgb[..., 0], rgb[..., 1], rgb[..., 2])
        assert np.array_equal(ids, ws.load(name).label)
        assert (out / "SegmentationObject" / f"{name}.png").is_file()
        assert (out / "JPEGImages" / f"{name}.jpg").is_file()
    with pytest.raises(WorkspaceError):
        export_cvat(ws, ws.root / "export")


def test_cli_import_scan_export(tmp_path: Path, capsys):
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
    assert main(["label-export", "--workspace", str(ws_dir), "--format", "cvat", "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "SegmentationClass" / "p0.png").is_file()
    assert main(["label-export", "--workspace", str(ws_dir), "--out", str(ws_dir / "x")]) == 2
    ws.save("p0", np.full((30, 40), 2, np.uint8))
    assert main(["label-versions", "--workspace", str(ws_dir), "--name", "p0", "--restore", "1"]) == 0
    out = capsys.readouterr().out
    assert "restored version 1 of p0 as version 3" in out and "v3" in out
    assert np.all(Workspace(ws_dir).load("p0").label == 1)
    assert main(["label-versions", "--workspace", str(ws_dir), "--name", "../p0"]) == 2
    assert main(["label-versions", "--workspace", str(ws_dir), "--name", "p0", "--restore", "9"]) == 2
