"""CVAT's "Segmentation Mask 1.1" layout, both ways.

::

    OUT/labelmap.txt                         # label:color_rgb:parts:actions, one class a line, in id order
    OUT/ImageSets/Segmentation/<split>.txt   # image names per subset (train, val, test)
    OUT/SegmentationClass/<name>.png         # RGB, one labelmap colour per class
    OUT/SegmentationObject/<name>.png        # same colours (semantic labels have no instances)
    OUT/JPEGImages/<name>.jpg                # the images (include_images=True, the default)

CVAT maps mask colours to labels through labelmap.txt, so the masks are written in the
workspace's colours with every class listed; an import maps them back the same way, and a
colour the labelmap does not list makes that mask a reported problem, never a guess.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from seg.classes import colorize
from seg.io import atomic_write_bytes, atomic_write_text, encode_png
from seg.labeling.classes import ClassList, ClassListError, Colour
from seg.labeling.names import UnsafePathError, safe_join
from seg.labeling.transfer import (
    DatasetImportReport,
    ExportReport,
    add_labelled,
    decode_rgb,
    labelled_items,
    merge_classes,
    output_folder,
    read_small_file,
    split_from_subset,
    usable_class_name,
)
from seg.labeling.workspace import Problem, Workspace, WorkspaceError

LABELMAP = "labelmap.txt"
SETS_DIR = ("ImageSets", "Segmentation")
CLASS_DIR = "SegmentationClass"
OBJECT_DIR = "SegmentationObject"
IMAGE_DIR = "JPEGImages"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".JPG", ".JPEG", ".PNG")


def labelmap_text(classes: list[str], palette: list[Colour]) -> str:
    """CVAT's labelmap.txt (class names never hold ':', which separates its fields)."""
    lines = ["# label:color_rgb:parts:actions"]
    for name, (r, g, b) in zip(classes, palette):
        lines.append(f"{name.replace(':', '_')}:{r},{g},{b}::")
    return "\n".join(lines) + "\n"


def parse_labelmap(text: str) -> ClassList:
    """Names and colours from a labelmap.txt, in its order (= class ids)."""
    names, colours = [], []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        try:
            colour = tuple(int(v) for v in fields[1].split(","))
        except (IndexError, ValueError):
            raise WorkspaceError(f"{LABELMAP}: {line[:60]!r} is not 'name:r,g,b:parts:actions'") from None
        if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
            raise WorkspaceError(f"{LABELMAP}: {line[:60]!r} has no r,g,b colour")
        names.append(usable_class_name(fields[0], len(names)))
        colours.append(colour)
    if not names:
        raise WorkspaceError(f"{LABELMAP} lists no labels")
    if len(set(colours)) != len(colours):
        raise WorkspaceError(f"{LABELMAP} gives two labels the same colour, so masks cannot tell them apart")
    try:
        return ClassList(tuple(names), tuple(colours))
    except ClassListError as err:
        raise WorkspaceError(f"{LABELMAP}: {err}") from None


def write_subsets(out: Path, names_by_split: dict[str, list[str]]) -> None:
    """ImageSets/Segmentation/<split>.txt, one file per non-empty split."""
    for split, names in sorted(names_by_split.items()):
        atomic_write_text(out.joinpath(*SETS_DIR, f"{split}.txt"), "".join(f"{n}\n" for n in names))


def read_subsets(folder: Path, mask_dir: str) -> list[tuple[str, str | None]]:
    """(name, split) for every listed image; without lists, every mask in ``mask_dir`` (split unknown)."""
    sets = folder.joinpath(*SETS_DIR)
    listed: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    if sets.is_dir():
        for path in sorted(sets.glob("*.txt")):
            split = split_from_subset(path.stem)
            for line in read_small_file(path).decode("utf-8", "replace").splitlines():
                name = line.strip().split(" ")[0] if line.strip() else ""
                if name and name not in seen:
                    seen.add(name)
                    listed.append((name, split))
    if not listed and (folder / mask_dir).is_dir():
        listed = [(p.stem, None) for p in sorted((folder / mask_dir).glob("*.png"))]
    return listed


def find_image(folder: Path, name: str) -> Path | None:
    """JPEGImages/<name>.<any image suffix>, never outside ``folder``."""
    for suffix in IMAGE_SUFFIXES:
        try:
            path = safe_join(folder, IMAGE_DIR, f"{name}{suffix}")
        except UnsafePathError:
            return None
        if path.is_file():
            return path
    return None


def export_cvat(workspace: Workspace, out: str | Path, include_images: bool = True) -> ExportReport:
    """Write every labelled, readable image of ``workspace`` to ``out`` (created if needed)."""
    out = output_folder(workspace, out)
    report = ExportReport(out)
    by_split: dict[str, list[str]] = {}
    for item in labelled_items(workspace, report.problems):
        png = encode_png(Image.fromarray(colorize(item.label, workspace.palette)))
        atomic_write_bytes(out / CLASS_DIR / f"{item.name}.png", png)
        atomic_write_bytes(out / OBJECT_DIR / f"{item.name}.png", png)
        if include_images:
            atomic_write_bytes(out / IMAGE_DIR / f"{item.name}.jpg", item.image_path.read_bytes())
        by_split.setdefault(item.split, []).append(item.name)
        report.exported.append(item.name)
    atomic_write_text(out / LABELMAP, labelmap_text(workspace.classes, workspace.palette))
    write_subsets(out, by_split)
    return report


def read_cvat_classes(folder: str | Path) -> ClassList:
    return parse_labelmap(read_small_file(Path(folder) / LABELMAP).decode("utf-8", "replace"))


def import_cvat(workspace: Workspace, folder: str | Path) -> DatasetImportReport:
    """Add a Segmentation Mask 1.1 folder's images and masks (mask colours -> classes via labelmap.txt)."""
    folder = Path(folder).expanduser().resolve()
    report = DatasetImportReport()
    classes = read_cvat_classes(folder)
    lut = merge_classes(workspace, classes, report)
    packed = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(classes.colours)}
    keys = np.array(sorted(packed), dtype=np.int64)
    values = np.array([packed[k] for k in keys], dtype=np.int32)
    for name, split in read_subsets(folder, CLASS_DIR):
        image = find_image(folder, name)
        if image is None:
            report.problems.append(Problem(name, "no image in JPEGImages/, skipped"))
            continue
        try:
            rgb = decode_rgb(safe_join(folder, CLASS_DIR, f"{name}.png"))
        except (WorkspaceError, UnsafePathError) as err:
            report.problems.append(Problem(name, f"mask not imported: {err}"))
            add_labelled(workspace, report, name, image, None, split)
            continue
        flat = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
        pos = np.clip(np.searchsorted(keys, flat), 0, len(keys) - 1)
        known = keys[pos] == flat
        if not known.all():
            odd = tuple(int(v) for v in rgb[~known][0])
            report.problems.append(
                Problem(name, f"mask has colour {odd} that labelmap.txt does not list; image imported without it")
            )
            add_labelled(workspace, report, name, image, None, split)
            continue
        add_labelled(workspace, report, name, image, values[pos], split, lut)
    return report
