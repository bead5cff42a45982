"""A workspace's own classes and colours: created, added, renamed, recoloured, never silently relabelling
saved masks; older classes.txt files without colours still read; label-init / label-classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from seg.classes import palette_for
from seg.cli import main
from seg.data.sbd import read_class_table
from seg.labeling.classes import ClassList, ClassListError, format_colour, parse_colour
from seg.labeling.workspace import LabelsRoot, Workspace


def test_colours_parse_and_format():
    assert parse_colour("#FF8800") == (255, 136, 0) == parse_colour("ff8800") == parse_colour("#f80")
    assert format_colour((255, 136, 0)) == "#ff8800"
    for bad in ("red", "#12345", "#gggggg", ""):
        with pytest.raises(ClassListError):
            parse_colour(bad)


def test_a_new_class_list_checks_names_and_colours_and_fills_missing_colours():
    classes = ClassList.create(["road", "car", "person"], ["#ff0000"])
    assert classes.names == ("road", "car", "person") and classes.colours[0] == (255, 0, 0)
    assert len(set(classes.colours)) == 3  # defaults never repeat a given colour
    assert ClassList.parse(classes.to_text()) == classes
    for names, colours in (
        (["a", "A"], None),
        (["a:b"], None),
        (["a,b"], None),
        (["x#1"], None),
        ([" "], None),
        (["a\nb"], None),
        (["a", "b"], ["#010101", "#010101"]),
        (["a"], ["#000000", "#ffffff"]),
        ([], None),
    ):
        with pytest.raises(ClassListError):
            ClassList.create(names, colours)


def test_an_older_classes_file_without_colours_reads_with_the_default_colours():
    text = "sky\ntree\n\nroad\n"
    classes = ClassList.parse(text)
    assert classes.names == ("sky", "tree", "road") and list(classes.colours) == palette_for(3)
    mixed = ClassList.parse("a #102030\nb\nc d #405060\n")
    assert mixed.names == ("a", "b", "c d") and mixed.colours[0] == (16, 32, 48) and mixed.colours[2] == (64, 80, 96)


def test_adding_renaming_and_recolouring_keep_every_saved_mask_meaning_the_same(tmp_path: Path):
    ws = Workspace(tmp_path / "ws", ClassList.create(["road", "car"], ["#808080", "#ff0000"]))
    name, _ = ws.import_image(np.full((20, 30, 3), 90, np.uint8), name="street")
    label = np.zeros((20, 30), np.uint8)
    label[5:10, 5:20] = 1
    saved = ws.save(name, label)
    before = saved.label_path.read_bytes()

    ws.set_classes(ws.class_list.added("person", "#00ff00"))
    ws.set_classes(ws.class_list.renamed("car", "vehicle").recoloured("road", "#333333"))
    assert ws.classes == ["road", "vehicle", "person"]
    assert ws.palette == [(51, 51, 51), (255, 0, 0), (0, 255, 0)]
    assert saved.label_path.read_bytes() == before  # no mask rewritten
    assert np.array_equal(ws.load(name).label, label)  # ids 0 and 1 still mean road and (renamed) car

    reopened = Workspace(ws.root)
    assert reopened.class_list == ws.class_list
    assert read_class_table(ws.root) == (["road", "vehicle", "person"], ws.palette)  # the training loader agrees
    with pytest.raises(ClassListError):
        ws.set_classes(ClassList.create(["road", "vehicle"]))  # removing a class would relabel masks
    with pytest.raises(ClassListError):
        ws.set_classes(ws.class_list.added("Person"))  # names differ by more than case
    with pytest.raises(ClassListError):
        ws.class_list.recoloured("person", "#ff0000")  # the colour of another class
    with pytest.raises(ClassListError):
        ws.class_list.renamed("bicycle", "bike")
    assert ws.class_list.index(2) == 2 and ws.class_list.index("VEHICLE") == 1


def test_label_init_and_label_classes_from_the_shell(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("SEG_LABEL_DIR", str(tmp_path / "labels"))
    assert (
        main(["label-init", "--workspace", "streets", "--classes", "road,car,person", "--colors", "#ff0000,#00ff00"])
        == 0
    )
    out = capsys.readouterr().out
    assert "#ff0000  road" in out and "#00ff00  car" in out
    ws = LabelsRoot().open("streets")
    assert ws.classes == ["road", "car", "person"] and ws.palette[:2] == [(255, 0, 0), (0, 255, 0)]
    assert ws.root == (tmp_path / "labels" / "streets").resolve()

    assert (
        main(["label-init", "--workspace", "streets", "--classes", "road,car,person", "--colors", "#ff0000,#00ff00"])
        == 0
    )  # the same again: nothing to do
    assert main(["label-init", "--workspace", "streets", "--classes", "road,bike"]) == 2
    assert "exists already with other classes" in capsys.readouterr().out
    for bad in (
        ["--workspace", "../x", "--classes", "a"],
        ["--workspace", "/tmp/x", "--classes", "a"],
        ["--workspace", "ok", "--classes", "a,a"],
        ["--workspace", "ok", "--classes", "a", "--colors", "#zz"],
    ):
        assert main(["label-init", *bad]) == 2
    assert not (tmp_path / "labels" / "ok").exists()

    assert (
        main(
            [
                "label-classes",
                "--workspace",
                "streets",
                "--add",
                "bike=#0000ff",
                "--add",
                "sign",
                "--rename",
                "car=vehicle",
                "--color",
                "road=#222222",
            ]
        )
        == 0
    )
    ws = Workspace(ws.root)
    assert ws.classes == ["road", "vehicle", "person", "bike", "sign"]
    assert ws.palette[0] == (34, 34, 34) and ws.palette[3] == (0, 0, 255) and len(set(ws.palette)) == 5
    assert main(["label-classes", "--workspace", "streets", "--rename", "nothing=else"]) == 2
    assert main(["label-classes", "--workspace", "streets", "--rename", "novalue"]) == 2
    assert main(["label-classes", "--workspace", "missing"]) == 2
