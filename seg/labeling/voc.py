"""A Pascal-VOC-style folder, both ways: palette PNGs whose pixel values are class ids.

::

    OUT/labelmap.txt                         # the class list (name:r,g,b::), in id order
    OUT/ImageSets/Segmentation/<split>.txt   # image names per split
    OUT/SegmentationClass/<name>.png         # 8-bit palette PNG: value = class id, palette = class colours
    OUT/JPEGImages/<name>.jpg

Unlike CVAT's colour masks, the ids are the pixel values, so any VOC tool (and PIL/numpy)
reads them directly. A VOC folder without a labelmap.txt is read with VOC 2012's 21 classes;
VOC's "void" value 255 (object borders) is imported as class 0, background there.
"""

from __future__ import annotations

from pathlib import Path

from seg.io import atomic_write_bytes, atomic_write_text, encode_png, label_to_png_image
from seg.labeling.classes import ClassList
from seg.labeling.cvat import (
    CLASS_DIR,
    IMAGE_DIR,
    LABELMAP,
    find_image,
    labelmap_text,
    parse_labelmap,
    read_subsets,
    write_subsets,
)
from seg.labeling.names import UnsafePathError, safe_join
from seg.labeling.transfer import (
    DatasetImportReport,
    ExportReport,
    add_labelled,
    decode_label,
    labelled_items,
    merge_classes,
    output_folder,
    read_small_file,
)
from seg.labeling.workspace import Problem, Workspace, WorkspaceError

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
VOID = 255


def _voc_colour_map(n: int) -> list[tuple[int, int, int]]:
    """VOC's own colours: the bits of the index spread over r, g, b (index 0 black)."""
    colours = []
    for index in range(n):
        r = g = b = 0
        c = index
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours.append((r, g, b))
    return colours


def export_voc(workspace: Workspace, out: str | Path, include_images: bool = True) -> ExportReport:
    """Write every labelled, readable image of ``workspace`` to ``out`` as VOC-style palette PNGs."""
    out = output_folder(workspace, out)
    report = ExportReport(out)
    by_split: dict[str, list[str]] = {}
    for item in labelled_items(workspace, report.problems):
        png = encode_png(label_to_png_image(item.label, workspace.palette))
        atomic_write_bytes(out / CLASS_DIR / f"{item.name}.png", png)
        if include_images:
            atomic_write_bytes(out / IMAGE_DIR / f"{item.name}.jpg", item.image_path.read_bytes())
        by_split.setdefault(item.split, []).append(item.name)
        report.exported.append(item.name)
    atomic_write_text(out / LABELMAP, labelmap_text(workspace.classes, workspace.palette))
    write_subsets(out, by_split)
    return report


def read_voc_classes(folder: str | Path) -> ClassList:
    """labelmap.txt's classes, or VOC 2012's when the folder has none."""
    path = Path(folder) / LABELMAP
    if path.is_file():
        return parse_labelmap(read_small_file(path).decode("utf-8", "replace"))
    return ClassList(VOC_CLASSES, tuple(_voc_colour_map(len(VOC_CLASSES))))


def import_voc(workspace: Workspace, folder: str | Path) -> DatasetImportReport:
    """Add a VOC-style folder's images and palette-PNG masks (pixel value = class id)."""
    folder = Path(folder).expanduser().resolve()
    report = DatasetImportReport()
    classes = read_voc_classes(folder)
    lut = merge_classes(workspace, classes, report)
    void_images = 0
    for name, split in read_subsets(folder, CLASS_DIR):
        image = find_image(folder, name)
        if image is None:
            report.problems.append(Problem(name, "no image in JPEGImages/, skipped"))
            continue
        try:
            ids = decode_label(safe_join(folder, CLASS_DIR, f"{name}.png"))
        except (WorkspaceError, UnsafePathError) as err:
            report.problems.append(Problem(name, f"mask not imported: {err}"))
            add_labelled(workspace, report, name, image, None, split)
            continue
        if (ids == VOID).any() and len(classes.names) <= VOID:
            ids[ids == VOID] = 0
            void_images += 1
        add_labelled(workspace, report, name, image, ids, split, lut)
    if void_images:
        report.problems.append(
            Problem(
                "SegmentationClass",
                f"{void_images} mask(s) had void (255) pixels; they were given class 0 ({classes.names[0]})",
            )
        )
    return report
