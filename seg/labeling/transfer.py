"""What every export and import format shares: the labelled items going out, and one way in.

Going out, every format reads the same thing (``labelled_items``: name, split, image file,
class ids) into a folder the caller chose outside the workspace. Coming in, every format
hands each image with its class ids to ``add_labelled``, which imports the image like any
upload (decoded, size-limited, de-duplicated), maps the dataset's classes onto the
workspace's by name (adding the missing ones at new ids, never relabelling existing masks),
and saves the mask as a new version unless it is already the current one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from seg.io import MAX_PIXELS, ImageLoadError, load_image
from seg.labeling.classes import FORBIDDEN_IN_NAMES, MAX_CLASS_NAME_LENGTH, ClassList, ClassListError
from seg.labeling.workspace import SPLIT_DIRS, Problem, Workspace, WorkspaceError

#: Dataset files larger than this are refused before reading (annotation JSON, label PNGs).
MAX_FILE_BYTES = 512 * 1024 * 1024
#: PNG modes that hold class ids rather than colours.
LABEL_MODES = ("P", "L", "I", "I;16", "1")


@dataclass
class ExportReport:
    out: Path
    exported: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


@dataclass
class DatasetImportReport:
    """What an import did: images added, masks saved, masks already current, files skipped."""

    added: list[str] = field(default_factory=list)
    saved: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    unlabelled: list[str] = field(default_factory=list)
    new_classes: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def summary(self) -> str:
        parts = [
            f"{len(self.saved)} mask(s) saved",
            f"{len(self.unchanged)} already current",
            f"{len(self.added)} new image(s)",
        ]
        if self.unlabelled:
            parts.append(f"{len(self.unlabelled)} image(s) without a mask")
        if self.new_classes:
            parts.append(f"new classes: {', '.join(self.new_classes)}")
        if self.problems:
            parts.append(f"{len(self.problems)} problem(s)")
        return "; ".join(parts)


@dataclass(frozen=True)
class LabelledItem:
    name: str
    split: str
    image_path: Path
    label: np.ndarray


def output_folder(workspace: Workspace, out: str | Path) -> Path:
    """The export folder, resolved; refused inside the workspace (it would be read as foreign files)."""
    out = Path(out).expanduser().resolve()
    if out == workspace.root or workspace.root in out.parents:
        raise WorkspaceError("export to a folder outside the workspace (it would be read as foreign files)")
    if out.exists() and not out.is_dir():
        raise WorkspaceError(f"{out.name!r} exists and is not a folder")
    return out


def labelled_items(workspace: Workspace, problems: list[Problem]) -> Iterator[LabelledItem]:
    """Every labelled, readable image with its current class ids, sorted by name."""
    scan = workspace.scan()
    problems.extend(scan.problems)
    for it in scan.items:
        if not it.labelled:
            continue
        label = workspace.load(it.name).label
        if label is None:
            problems.append(Problem(it.name, "label unreadable, not exported"))
            continue
        yield LabelledItem(it.name, it.split or "train", it.image_path, label)


def split_from_subset(subset: str | None) -> str | None:
    """A dataset's subset name as a workspace split (train/val/test), else None (the workspace decides)."""
    subset = (subset or "").strip().lower()
    aliases = {"training": "train", "validation": "val", "valid": "val", "testing": "test"}
    subset = aliases.get(subset, subset)
    return subset if subset in SPLIT_DIRS else None


def usable_class_name(raw: object, index: int) -> str:
    """A dataset's class name made acceptable to ``ClassList`` (field separators replaced)."""
    text = str(raw or "").strip()
    text = "".join("_" if ch in FORBIDDEN_IN_NAMES or not ch.isprintable() else ch for ch in text)
    text = re.sub(r"\s+", " ", text)[:MAX_CLASS_NAME_LENGTH].strip()
    return text or f"class_{index}"


def merge_classes(workspace: Workspace, incoming: ClassList, report: DatasetImportReport) -> np.ndarray:
    """(256,) lookup: incoming class id -> workspace class id, matched by name (case-insensitive).

    Names the workspace lacks are added at new ids (with their colour unless another class has it),
    so no saved mask changes meaning.
    """
    lut = np.zeros(256, dtype=np.int32)
    lut[:] = -1
    classes = workspace.class_list
    for i, name in enumerate(incoming.names):
        try:
            lut[i] = classes.index(name)
            continue
        except ClassListError:
            pass
        try:
            classes = classes.added(name, incoming.colours[i])
        except ClassListError:
            classes = classes.added(usable_class_name(name, i), None)
        lut[i] = len(classes.names) - 1
        report.new_classes.append(classes.names[-1])
    if classes != workspace.class_list:
        workspace.set_classes(classes)
    return lut


def add_labelled(
    workspace: Workspace,
    report: DatasetImportReport,
    name: str,
    image_source,
    label: np.ndarray | None,
    split: str | None,
    lut: np.ndarray | None = None,
) -> str | None:
    """Import one image (path or bytes) and save its mask (dataset class ids, mapped through ``lut``).

    Returns the workspace's name for the image, or None when it could not be imported.
    """
    imported = add_image(workspace, report, name, image_source)
    if imported is None:
        return None
    if label is None:
        report.unlabelled.append(imported[0])
    else:
        save_label(workspace, report, imported[0], label, split, lut)
    return imported[0]


def add_image(workspace: Workspace, report: DatasetImportReport, name: str, image_source) -> tuple[str, bool] | None:
    """Import one image like an upload: (workspace name, newly added), or None when it could not be."""
    try:
        stored, new = workspace.import_image(image_source, name=name, source_desc=f"dataset: {name}")
    except ImageLoadError as err:
        report.problems.append(Problem(name, f"image not imported: {err}"))
        return None
    except WorkspaceError as err:  # a quota or a closed workspace
        report.problems.append(Problem(name, str(err)))
        return None
    if new:
        report.added.append(stored)
    return stored, new


def save_label(
    workspace: Workspace,
    report: DatasetImportReport,
    stored: str,
    label: np.ndarray,
    split: str | None,
    lut: np.ndarray | None = None,
) -> bool:
    """Save a dataset mask for the workspace image ``stored`` unless it is the current label already."""
    ids = np.asarray(label)
    if ids.size and (ids.min() < 0 or ids.max() > 255):
        report.problems.append(Problem(stored, "mask holds values outside 0..255; not saved"))
        return False
    if lut is not None:
        mapped = lut[ids.astype(np.intp)]
        if (mapped < 0).any():
            report.problems.append(
                Problem(
                    stored,
                    f"mask holds class ids the dataset does not name "
                    f"({sorted(set(ids[mapped < 0].tolist()))[:5]}); not saved",
                )
            )
            return False
        ids = mapped
    loaded = workspace.load(stored)
    height, width = loaded.image.shape[:2]
    if ids.shape != (height, width):
        if ids.ndim != 2 or abs(ids.shape[0] / ids.shape[1] - height / width) > 0.01 * height / width:
            report.problems.append(
                Problem(stored, f"mask is {ids.shape[-1]}x{ids.shape[0]} but the image {width}x{height}; not saved")
            )
            return False
        # the image was stored downscaled (large uploads are): the mask follows, nearest neighbour
        ids = np.asarray(Image.fromarray(ids.astype(np.uint8)).resize((width, height), Image.NEAREST))
    ids = ids.astype(np.uint8)
    if loaded.label is not None and np.array_equal(loaded.label, ids):
        report.unchanged.append(stored)
        return False
    try:
        workspace.save(stored, ids, session="import", split=split, base_version=loaded.version)
    except WorkspaceError as err:
        report.problems.append(Problem(stored, f"mask not saved: {err}"))
        return False
    report.saved.append(stored)
    return True


def read_small_file(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """A dataset file's bytes; refused when it is not a regular file or is too large."""
    if not path.is_file():
        raise WorkspaceError(f"{path.name} is missing")
    size = path.stat().st_size
    if size > limit:
        raise WorkspaceError(f"{path.name} is {size / 1e6:.0f} MB; the limit is {limit / 1e6:.0f} MB")
    return path.read_bytes()


def decode_label(data: bytes | Path) -> np.ndarray:
    """Class ids from a palette or greyscale PNG (the palette's colours are ignored)."""
    import io

    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    try:
        with Image.open(source) as img:
            size, mode = img.width * img.height, img.mode
            ids = np.asarray(img).astype(np.int32) if size <= MAX_PIXELS and mode in LABEL_MODES else None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise WorkspaceError(f"mask is not a readable PNG ({err})") from None
    if size > MAX_PIXELS:
        raise WorkspaceError(f"mask has {size / 1e6:.0f} MP; the limit is {MAX_PIXELS / 1e6:.0f} MP")
    if ids is None:
        raise WorkspaceError(f"mask must hold class ids (a palette or greyscale PNG), not mode {mode}")
    return ids


def decode_rgb(data: bytes | Path) -> np.ndarray:
    """(H, W, 3) uint8 of a colour mask, decoded through ``seg.io`` at full size."""
    try:
        return load_image(data, max_side=None)
    except ImageLoadError as err:
        raise WorkspaceError(f"mask is not readable: {err}") from None
