"""Export a workspace to, and import it from, the formats other tools read.

=======  ===================================================  =============================
format   layout                                               module
=======  ===================================================  =============================
cvat     CVAT Segmentation Mask 1.1 (colour PNGs + labelmap)  ``seg.labeling.cvat``
coco     COCO instances JSON, one RLE annotation per region   ``seg.labeling.coco``
voc      Pascal-VOC-style palette PNGs (value = class id)     ``seg.labeling.voc``
zip      the whole workspace, history included               ``seg.labeling.archive``
=======  ===================================================  =============================

Exports write into a folder the caller gives (never inside the workspace; the zip goes to
``<out>/<workspace>.zip``) and include the images, so an export imports again;
``export_archive`` packs any format into one zip to download, and every import also takes
such a zip (what a browser uploads). Imports
match classes by name, add classes the workspace lacks at new ids, and save each mask as a
new version (unless it already is the current one): export -> import into a fresh workspace
gives the same masks, splits and classes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from seg.labeling.archive import export_zip, import_zip, read_zip_classes, unpacked, zip_folder
from seg.labeling.classes import ClassList
from seg.labeling.coco import export_coco, import_coco, read_coco_classes
from seg.labeling.cvat import export_cvat, import_cvat, labelmap_text, read_cvat_classes
from seg.labeling.transfer import DatasetImportReport, ExportReport, output_folder
from seg.labeling.voc import export_voc, import_voc, read_voc_classes
from seg.labeling.workspace import Workspace, WorkspaceError

FORMATS = ("cvat", "coco", "voc", "zip")

_EXPORTERS: dict[str, Callable[..., ExportReport]] = {
    "cvat": export_cvat,
    "coco": export_coco,
    "voc": export_voc,
    "zip": lambda ws, out, include_images=True: export_zip(ws, out),
}
_IMPORTERS: dict[str, Callable[[Workspace, Path], DatasetImportReport]] = {
    "cvat": import_cvat,
    "coco": import_coco,
    "voc": import_voc,
    "zip": import_zip,
}
_CLASS_READERS: dict[str, Callable[[Path], ClassList]] = {
    "cvat": read_cvat_classes,
    "coco": read_coco_classes,
    "voc": read_voc_classes,
    "zip": read_zip_classes,
}


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise WorkspaceError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return fmt


def export_workspace(workspace: Workspace, fmt: str, out: str | Path, include_images: bool = True) -> ExportReport:
    """Write ``workspace`` in format ``fmt`` under the folder ``out``."""
    return _EXPORTERS[_check_format(fmt)](workspace, out, include_images=include_images)


def export_archive(workspace: Workspace, fmt: str, out: str | Path) -> ExportReport:
    """One zip file to download: ``<out>/<workspace>.zip`` (fmt zip) or ``<out>/<workspace>-<fmt>.zip``
    holding the export's folder; ``report.out`` is the zip."""
    if _check_format(fmt) == "zip":
        return export_zip(workspace, out)
    out = output_folder(workspace, out)
    with tempfile.TemporaryDirectory(prefix="seglab-export-") as tmp:
        folder = Path(tmp) / f"{workspace.root.name}-{fmt}"
        report = export_workspace(workspace, fmt, folder)
        report.out = out / f"{folder.name}.zip"
        zip_folder(folder, report.out)
    return report


@contextmanager
def _dataset_folder(fmt: str, source: str | Path) -> Iterator[Path]:
    """The dataset's folder; a .zip of a cvat/coco/voc folder (what a browser uploads) is unpacked first."""
    path = Path(source).expanduser()
    if not path.exists():
        raise WorkspaceError(f"there is no {path.name!r} to import")
    if fmt != "zip" and path.is_file() and path.suffix.lower() == ".zip":
        with unpacked(path) as folder:
            yield folder
    else:
        yield path


def dataset_classes(fmt: str, source: str | Path) -> ClassList:
    """The classes a dataset in ``fmt`` at ``source`` would bring (to create a workspace that matches it)."""
    with _dataset_folder(_check_format(fmt), source) as folder:
        return _CLASS_READERS[fmt](folder)


def import_dataset(workspace: Workspace, fmt: str, source: str | Path) -> DatasetImportReport:
    """Add a dataset in ``fmt`` to ``workspace``: a folder, or a .zip of one; a workspace zip for zip;
    a COCO annotation .json file also works."""
    with _dataset_folder(_check_format(fmt), source) as folder:
        return _IMPORTERS[fmt](workspace, folder)


__all__ = [
    "FORMATS",
    "DatasetImportReport",
    "ExportReport",
    "dataset_classes",
    "export_archive",
    "export_coco",
    "export_cvat",
    "export_voc",
    "export_workspace",
    "export_zip",
    "import_coco",
    "import_cvat",
    "import_dataset",
    "import_voc",
    "import_zip",
    "labelmap_text",
]
