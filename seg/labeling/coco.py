"""COCO, both ways: one annotation per connected region of a class, its mask as RLE.

::

    OUT/annotations/instances_<split>.json   # images, annotations, categories of one split
    OUT/images/<name>.jpg

Category ids are class id + 1 (COCO keeps 0 for "no category"); each category also carries
the class's colour as ``"color": "#rrggbb"``, which other tools ignore and an import here
reads back. Masks are compressed RLE (pycocotools), ``iscrowd`` 0: each annotation is one
connected region (8-connected), so a workspace's semantic mask becomes the instance-style
list most COCO tools expect, and the union of a class's regions gives the mask back exactly.

On import, pixels no annotation covers need a class: the one named "background" when the
dataset has it, else a "background" class added to the workspace.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage as ndi

from seg.io import atomic_write_bytes, atomic_write_text
from seg.labeling.classes import ClassList, ClassListError, format_colour, parse_colour
from seg.labeling.names import UnsafePathError, safe_join
from seg.labeling.transfer import (
    DatasetImportReport,
    ExportReport,
    add_labelled,
    labelled_items,
    merge_classes,
    output_folder,
    read_small_file,
    split_from_subset,
    usable_class_name,
)
from seg.labeling.workspace import Problem, Workspace, WorkspaceError

ANNOTATION_DIR = "annotations"
IMAGE_DIR = "images"
BACKGROUND = "background"
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def regions(label: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(class id, bool mask) for each 8-connected region of each class, in class order."""
    out = []
    for class_id in np.unique(label):
        pieces, count = ndi.label(label == class_id, structure=_EIGHT_CONNECTED)
        for k in range(1, count + 1):
            out.append((int(class_id), pieces == k))
    return out


def encode_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def export_coco(workspace: Workspace, out: str | Path, include_images: bool = True) -> ExportReport:
    """Write one COCO annotation file per split, masks as RLE, one annotation per region."""
    out = output_folder(workspace, out)
    report = ExportReport(out)
    categories = [
        {"id": i + 1, "name": name, "supercategory": "", "color": format_colour(colour)}
        for i, (name, colour) in enumerate(zip(workspace.classes, workspace.palette))
    ]
    by_split: dict[str, dict] = {}
    next_annotation = 1
    for item in labelled_items(workspace, report.problems):
        doc = by_split.setdefault(item.split, {"images": [], "annotations": []})
        image_id = len(doc["images"]) + 1
        height, width = item.label.shape
        doc["images"].append({"id": image_id, "file_name": f"{item.name}.jpg", "width": width, "height": height})
        for class_id, mask in regions(item.label):
            rle = encode_rle(mask)
            ys, xs = np.nonzero(mask)
            doc["annotations"].append(
                {
                    "id": next_annotation,
                    "image_id": image_id,
                    "category_id": class_id + 1,
                    "segmentation": rle,
                    "area": int(mask.sum()),
                    "iscrowd": 0,
                    "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
                }
            )
            next_annotation += 1
        if include_images:
            atomic_write_bytes(out / IMAGE_DIR / f"{item.name}.jpg", item.image_path.read_bytes())
        report.exported.append(item.name)
    for split, doc in sorted(by_split.items()):
        payload = {
            "info": {"description": f"SegLab workspace {workspace.root.name}, split {split}"},
            "licenses": [],
            "images": doc["images"],
            "annotations": doc["annotations"],
            "categories": categories,
        }
        atomic_write_text(out / ANNOTATION_DIR / f"instances_{split}.json", json.dumps(payload))
    return report


def _annotation_files(folder: Path) -> list[Path]:
    if folder.is_file():
        return [folder]
    inner = folder / ANNOTATION_DIR
    files = sorted(inner.glob("*.json")) if inner.is_dir() else sorted(folder.glob("*.json"))
    if not files:
        raise WorkspaceError("no COCO annotation file (annotations/*.json) found")
    return files


def _load(path: Path) -> dict:
    try:
        doc = json.loads(read_small_file(path))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WorkspaceError(f"{path.name} is not a JSON file") from None
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("images"), list)
        or not isinstance(doc.get("categories"), list)
    ):
        raise WorkspaceError(f"{path.name} is not a COCO annotation file (no images or categories)")
    return doc


def _categories(docs: list[dict]) -> tuple[ClassList, dict[int, int]]:
    """The classes of all files (category ids sorted) and category id -> class index."""
    seen: dict[int, dict] = {}
    for doc in docs:
        for cat in doc["categories"]:
            if isinstance(cat, dict) and isinstance(cat.get("id"), int) and cat["id"] not in seen:
                seen[cat["id"]] = cat
    if not seen:
        raise WorkspaceError("the annotation files list no categories")
    names, colours, index = [], [], {}
    for cat_id in sorted(seen):
        index[cat_id] = len(names)
        names.append(usable_class_name(seen[cat_id].get("name"), len(names)))
        try:
            colours.append(parse_colour(str(seen[cat_id].get("color", ""))))
        except ClassListError:
            colours.append(None)
    filled = ClassList.parse("\n".join(names)).colours  # default colours for those without one
    final = [c if c is not None else d for c, d in zip(colours, filled)]
    if len(set(final)) != len(final):  # a colour given twice: defaults keep classes apart
        final = list(filled)
    return ClassList(tuple(names), tuple(final)), index


def read_coco_classes(folder: str | Path) -> ClassList:
    """The dataset's classes, plus "background" when some pixels are covered by no annotation."""
    docs = [_load(p) for p in _annotation_files(Path(folder))]
    classes, _ = _categories(docs)
    if _needs_background(docs, classes):
        classes = classes.added(BACKGROUND)
    return classes


def _needs_background(docs: list[dict], classes: ClassList) -> bool:
    if any(n.casefold() == BACKGROUND for n in classes.names):
        return False
    for doc in docs:
        area: dict[object, int] = {}
        for ann in doc.get("annotations") or []:
            if isinstance(ann, dict) and not ann.get("iscrowd"):
                area[ann.get("image_id")] = area.get(ann.get("image_id"), 0) + int(ann.get("area") or 0)
        for image in doc["images"]:
            if isinstance(image, dict) and area.get(image.get("id"), 0) < int(image.get("width", 0)) * int(
                image.get("height", 0)
            ):
                return True
    return False


def _decode(segmentation, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (RLE, compressed or not, or polygons) as an (H, W) bool mask."""
    if isinstance(segmentation, dict):
        size = segmentation.get("size")
        if not (isinstance(size, list) and [int(v) for v in size] == [height, width]):
            raise ValueError("RLE size does not match the image")
        counts = segmentation.get("counts")
        rle = (
            mask_utils.frPyObjects(segmentation, height, width)
            if isinstance(counts, list)
            else {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        )
        return mask_utils.decode(rle).astype(bool)
    if isinstance(segmentation, list) and segmentation:
        polygons = [[float(v) for v in p] for p in segmentation if isinstance(p, list) and len(p) >= 6]
        if not polygons:
            raise ValueError("no polygon with 3 points")
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))).astype(bool)
    raise ValueError("no segmentation")


def _find_image(root: Path, file_name: str, split: str | None) -> Path | None:
    candidates = [(IMAGE_DIR, file_name), (IMAGE_DIR, split or "", file_name), (file_name,)]
    for parts in candidates:
        try:
            path = safe_join(root, *[p for p in parts if p])
        except UnsafePathError:
            return None
        if path.is_file():
            return path
    return None


def import_coco(workspace: Workspace, folder: str | Path) -> DatasetImportReport:
    """Add a COCO dataset's images with their masks (annotations painted in file order)."""
    folder = Path(folder).expanduser().resolve()
    files = _annotation_files(folder)
    root = folder.parent.parent if folder.is_file() else folder
    docs = [_load(p) for p in files]
    report = DatasetImportReport()
    classes, index = _categories(docs)
    background = next((i for i, n in enumerate(classes.names) if n.casefold() == BACKGROUND), None)
    if background is None and _needs_background(docs, classes):
        classes = classes.added(BACKGROUND)
        background = len(classes.names) - 1
    lut = merge_classes(workspace, classes, report)
    for path, doc in zip(files, docs):
        stem = path.stem
        split = split_from_subset(stem[len("instances_") :] if stem.startswith("instances_") else stem)
        by_image: dict[object, list[dict]] = {}
        for ann in doc.get("annotations") or []:
            if isinstance(ann, dict):
                by_image.setdefault(ann.get("image_id"), []).append(ann)
        for image in doc["images"]:
            if not isinstance(image, dict) or not isinstance(image.get("file_name"), str):
                report.problems.append(Problem(path.name, "an image entry without a file_name, skipped"))
                continue
            file_name = image["file_name"]
            name = Path(file_name).stem
            image_path = _find_image(root, file_name, split)
            if image_path is None:
                report.problems.append(Problem(file_name, "image not found next to the annotations, skipped"))
                continue
            try:
                height, width = int(image["height"]), int(image["width"])
                if not (0 < height * width <= 64_000_000):
                    raise ValueError("image size out of range")
                label = np.full((height, width), -1, dtype=np.int32)
                for ann in by_image.get(image.get("id"), []):
                    if ann.get("category_id") not in index:
                        raise ValueError(f"category {ann.get('category_id')!r} is not listed")
                    label[_decode(ann.get("segmentation"), height, width)] = index[ann["category_id"]]
            except (KeyError, TypeError, ValueError) as err:
                report.problems.append(
                    Problem(file_name, f"annotations unreadable ({err}); image imported without a mask")
                )
                add_labelled(workspace, report, name, image_path, None, split)
                continue
            if not by_image.get(image.get("id")):
                add_labelled(workspace, report, name, image_path, None, split)
                continue
            if (label < 0).any():
                label[label < 0] = background if background is not None else 0
            add_labelled(workspace, report, name, image_path, label, split, lut)
    return report
