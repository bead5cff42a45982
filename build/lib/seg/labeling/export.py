"""Export a workspace to CVAT's "Segmentation Mask 1.1" layout.

::

    OUT/labelmap.txt                      # label:color_rgb:parts:actions
    OUT/ImageSets/Segmentation/default.txt  # image names, no extension
    OUT/SegmentationClass/<name>.png      # RGB, one labelmap colour per class
    OUT/SegmentationObject/<name>.png     # same colours (semantic labels have no instances)
    OUT/JPEGImages/<name>.jpg             # only with include_images

CVAT maps mask colours to labels through labelmap.txt, so the masks are written in
the workspace palette with every class listed; a colour CVAT reserves for
"background" (0,0,0) is never used by a class here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from seg.classes import colorize
from seg.io import atomic_write_bytes, atomic_write_text, encode_png
from seg.labeling.workspace import Problem, Workspace, WorkspaceError


@dataclass
class ExportReport:
    out: Path
    exported: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def labelmap_text(classes: list[str], palette: list[tuple[int, int, int]]) -> str:
    """CVAT's labelmap.txt; ':' in class names would break the format, so it is replaced."""
    lines = ["# label:color_rgb:parts:actions"]
    for name, (r, g, b) in zip(classes, palette):
        lines.append(f"{name.replace(':', '_')}:{r},{g},{b}::")
    return "\n".join(lines) + "\n"


def export_cvat(workspace: Workspace, out: str | Path, include_images: bool = False) -> ExportReport:
    """Write every labelled, readable image of ``workspace`` to ``out`` (created if needed)."""
    out = Path(out).expanduser().resolve()
    if out == workspace.root or workspace.root in out.parents:
        raise WorkspaceError("export to a folder outside the workspace (it would be read as foreign files)")
    scan = workspace.scan()
    report = ExportReport(out, problems=list(scan.problems))
    names = []
    for it in scan.items:
        if not it.labelled:
            continue
        label = workspace.load(it.name).label
        if label is None:
            report.problems.append(Problem(it.name, "label unreadable, not exported"))
            continue
        png = encode_png(Image.fromarray(colorize(label, workspace.palette)))
        atomic_write_bytes(out / "SegmentationClass" / f"{it.name}.png", png)
        atomic_write_bytes(out / "SegmentationObject" / f"{it.name}.png", png)
        if include_images:
            atomic_write_bytes(out / "JPEGImages" / f"{it.name}.jpg", it.image_path.read_bytes())
        names.append(it.name)
    atomic_write_text(out / "labelmap.txt", labelmap_text(workspace.classes, workspace.palette))
    atomic_write_text(out / "ImageSets" / "Segmentation" / "default.txt", "".join(f"{n}\n" for n in names))
    report.exported = names
    return report
