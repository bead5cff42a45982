"""``python -m seg label-*`` and ``box-to-mask``: labeling workspaces from the shell.

``seg/cli.py`` calls ``add_subcommands(subparsers)``; each subcommand sets ``func`` to a
callable taking the parsed args and returning an exit code (0 done, 1 done with skipped
files, 2 refused). Heavy imports happen inside the commands so that ``--help`` stays instant.

``--workspace`` takes a workspace *name* under the labels root (``$SEG_LABEL_DIR``, see
``seg.labeling.workspace.LabelsRoot``); a full path (starting with '/' or '~') is taken as
a folder, for operators scripting the CLI. ``workspace_location`` is the one place that decides.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from seg.io import ImageLoadError

FORMAT_CHOICES = ("cvat", "coco", "voc", "zip")


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Register the labeling subcommands on the main parser's subparsers."""
    p = subparsers.add_parser("label-init", help="create a labeling workspace with your own classes and colours")
    p.add_argument("--workspace", required=True, help="workspace name (letters, digits, '.', '_', '-')")
    p.add_argument("--classes", required=True, help="class names in id order, comma-separated: road,car,person")
    p.add_argument(
        "--colors",
        "--colours",
        dest="colours",
        default=None,
        help="their colours, comma-separated #rrggbb (missing ones get distinct defaults)",
    )
    p.set_defaults(func=_init)

    p = subparsers.add_parser(
        "label-classes",
        help="list, add, rename or recolour a workspace's classes "
        "(ids never change, so saved masks keep their meaning)",
    )
    _workspace_arg(p)
    p.add_argument("--add", action="append", default=[], metavar="NAME[=#rrggbb]", help="a new class at the next id")
    p.add_argument("--rename", action="append", default=[], metavar="OLD=NEW", help="rename a class (same id)")
    p.add_argument(
        "--color",
        "--colour",
        dest="recolour",
        action="append",
        default=[],
        metavar="NAME=#rrggbb",
        help="change a class's colour",
    )
    p.set_defaults(func=_classes)

    p = subparsers.add_parser(
        "label-export",
        help="export a labeling workspace: CVAT Segmentation Mask 1.1, "
        "COCO (RLE), a VOC-style PNG folder, or a zip of it all",
    )
    _workspace_arg(p)
    p.add_argument("--format", choices=FORMAT_CHOICES, default="cvat")
    p.add_argument("--out", required=True, help="output folder (outside the workspace); zip: <out>/<workspace>.zip")
    p.add_argument(
        "--images",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="include the images (needed to import the export again)",
    )
    p.set_defaults(func=_export)

    p = subparsers.add_parser(
        "label-import", help="add images, or a labelled dataset (cvat, coco, voc, zip), to a labeling workspace"
    )
    _workspace_arg(p)
    p.add_argument(
        "--format",
        choices=("images", *FORMAT_CHOICES),
        default="images",
        help="images: image files or folders; otherwise one dataset folder (or .zip, COCO .json)",
    )
    p.add_argument("paths", nargs="+", help="image files or folders of images, or the dataset")
    p.set_defaults(func=_import)

    p = subparsers.add_parser("label-versions", help="list an image's saved versions, or restore one")
    _workspace_arg(p)
    p.add_argument("--name", required=True, help="image name in the workspace")
    p.add_argument("--restore", type=int, default=None, metavar="N", help="make version N current (as a new version)")
    p.set_defaults(func=_versions)

    p = subparsers.add_parser("label-scan", help="progress and problems (corrupt/foreign files) of a workspace")
    _workspace_arg(p)
    p.set_defaults(func=_scan)

    p = subparsers.add_parser(
        "box-to-mask",
        help="cut objects out of an image from boxes (GrabCut, optionally "
        "seeded by a model); writes 0 background, k for the k-th box",
    )
    p.add_argument("image")
    p.add_argument(
        "--box",
        action="append",
        required=True,
        type=_box,
        metavar="X0,Y0,X1,Y1",
        help="a box in pixels (x1, y1 exclusive); repeat for more objects",
    )
    p.add_argument(
        "--model",
        action="append",
        default=None,
        metavar="CHECKPOINT",
        help="an instance checkpoint (name or path) whose probabilities for each box seed GrabCut: a DWT or "
        "a Mask R-CNN (its mask head on the boxes); repeat (or comma-separate) to average several, e.g. "
        "--model dwt --model maskrcnn, the most accurate",
    )
    p.add_argument(
        "--members",
        type=int,
        default=None,
        metavar="N",
        help="with --model: average the first N members of an ensemble (0: all; default: the tool's own choice, "
        "the first member)",
    )
    p.add_argument("--out", required=True, help="the mask PNG to write (palette PNG of box numbers)")
    p.set_defaults(func=_box_to_mask)


def _workspace_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workspace",
        default=None,
        help="workspace name under $SEG_LABEL_DIR (default: 'labels'), or a folder's full path",
    )


def workspace_location(value: str | None) -> Path:
    """Where ``--workspace`` points: a name under the labels root, or a full path."""
    from seg.labeling.workspace import DEFAULT_WORKSPACE_NAME, LabelsRoot, WorkspaceError

    if value and ("/" in value or "\\" in value or value.startswith("~")):
        path = Path(value).expanduser()
        if not path.is_absolute():
            raise WorkspaceError("give a workspace name, or a folder as a full path starting with '/' or '~'")
        return path.resolve()
    return LabelsRoot().path_of(value or DEFAULT_WORKSPACE_NAME)


def _open(args: argparse.Namespace, create: bool = False):
    """The workspace ``--workspace`` names; created when missing only if ``create`` (importing)."""
    from seg.labeling.workspace import DEFAULT_WORKSPACE_NAME, LabelsRoot, Workspace, WorkspaceError

    path = workspace_location(args.workspace)
    if path.parent == LabelsRoot().path and path.name == (args.workspace or DEFAULT_WORKSPACE_NAME):
        root = LabelsRoot()
        return root.open_or_create(path.name) if create else root.open(path.name)
    if not create and not path.exists():
        raise WorkspaceError(f"there is no workspace at {path}")
    return Workspace(path)


def _print_problems(problems, limit: int = 50) -> None:
    for problem in list(problems)[:limit]:
        print(f"  warning: {problem}")
    if len(problems) > limit:
        print(f"  ... and {len(problems) - limit} more")


def _refusal(err: Exception) -> int:
    print(f"error: {err}")
    return 2


def _user_errors() -> tuple[type[Exception], ...]:
    from seg.labeling.classes import ClassListError
    from seg.labeling.names import UnsafePathError
    from seg.labeling.workspace import WorkspaceError

    return WorkspaceError, UnsafePathError, ClassListError


def _split_list(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _print_legend(ws) -> None:
    for class_id, name, colour in ws.class_list.legend():
        print(f"  {class_id:3d}  {colour}  {name}")


def _init(args: argparse.Namespace) -> int:
    from seg.labeling.classes import ClassList
    from seg.labeling.workspace import LabelsRoot

    try:
        classes = ClassList.create(_split_list(args.classes), _split_list(args.colours))
        root = LabelsRoot()
        if root.exists(args.workspace):
            ws = root.open(args.workspace)
            if ws.class_list != classes:
                print(
                    f"error: a workspace named {args.workspace!r} exists already with other classes; "
                    f"change them with: python -m seg label-classes --workspace {args.workspace} ..."
                )
                _print_legend(ws)
                return 2
            print(f"workspace {args.workspace!r} exists already with these classes")
        else:
            ws = root.create(args.workspace, classes)
            print(f"created workspace {args.workspace!r} in {ws.root}")
    except _user_errors() as err:
        return _refusal(err)
    _print_legend(ws)
    return 0


def _key_value(text: str, what: str) -> tuple[str, str]:
    if "=" not in text:
        raise ValueError(f"{what} takes KEY=VALUE, got {text[:40]!r}")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def _classes(args: argparse.Namespace) -> int:
    try:
        ws = _open(args)
        classes = ws.class_list
        for text in args.rename:
            old, new = _key_value(text, "--rename")
            classes = classes.renamed(old, new)
        for text in args.recolour:
            name, colour = _key_value(text, "--color")
            classes = classes.recoloured(name, colour)
        for text in args.add:
            name, _, colour = text.partition("=")
            classes = classes.added(name, colour.strip() or None)
        if classes != ws.class_list:
            ws.set_classes(classes)
            print(f"classes of {ws.root.name!r} updated")
    except (*_user_errors(), ValueError) as err:
        return _refusal(err)
    _print_legend(ws)
    return 0


def _export(args: argparse.Namespace) -> int:
    from seg.labeling.export import export_workspace

    try:
        report = export_workspace(_open(args), args.format, args.out, include_images=args.images)
    except _user_errors() as err:
        return _refusal(err)
    print(f"exported {len(report.exported)} labelled image(s) as {args.format} to {report.out}")
    _print_problems(report.problems)
    return 0


def _import(args: argparse.Namespace) -> int:
    if args.format != "images":
        return _import_dataset(args)
    try:
        ws = _open(args, create=True)
    except _user_errors() as err:
        return _refusal(err)
    added = existing = failed = 0
    for raw in args.paths:
        path = Path(raw)
        if path.is_dir():
            report = ws.import_folder(path.resolve(), import_roots=[path.resolve()])  # the operator named it
            added, existing, failed = (
                added + len(report.added),
                existing + len(report.existing),
                failed + len(report.problems),
            )
            _print_problems(report.problems)
            continue
        try:
            _, new = ws.import_image(path, name=path.name, source_desc=str(path))
        except ImageLoadError as err:
            print(f"  warning: {path.name}: not imported: {err}")
            failed += 1
            continue
        added, existing = added + new, existing + (not new)
    labelled, total = ws.progress()
    print(f"added {added}, already present {existing}, failed {failed}; {labelled} of {total} labelled in {ws.root}")
    return 0 if failed == 0 else 1


def _import_dataset(args: argparse.Namespace) -> int:
    """A dataset goes into the named workspace; one that does not exist yet is created with the
    dataset's own classes and colours, so ids and colours come back exactly."""
    from seg.labeling.export import dataset_classes, import_dataset
    from seg.labeling.workspace import LabelsRoot, Workspace, is_workspace

    if len(args.paths) != 1:
        print(f"error: --format {args.format} imports one dataset (a folder, or a .zip / COCO .json file)")
        return 2
    source = Path(args.paths[0]).expanduser()
    try:
        target = workspace_location(args.workspace)
        fresh = not is_workspace(target)
        classes = dataset_classes(args.format, source) if fresh else None
        if fresh and target.parent == LabelsRoot().path and not target.exists():
            ws = LabelsRoot().create(target.name, classes)
        else:
            ws = Workspace(target, classes)
        report = import_dataset(ws, args.format, source)
    except _user_errors() as err:
        return _refusal(err)
    print(f"{args.format} import into {ws.root.name!r}: {report.summary()}")
    _print_problems(report.problems)
    return 0 if not report.problems else 1


def _scan(args: argparse.Namespace) -> int:
    try:
        ws = _open(args)
    except _user_errors() as err:
        return _refusal(err)
    report = ws.scan()
    print(f"{ws.root}: {report.labelled} of {len(report.items)} image(s) labelled, {len(report.problems)} problem(s)")
    _print_problems(report.problems)
    return 0


def _versions(args: argparse.Namespace) -> int:
    try:
        ws = _open(args)
        if args.restore is not None:
            result = ws.restore(args.name, args.restore, session="cli")
            print(f"restored version {args.restore} of {args.name} as version {result.version}")
        for v in ws.versions(args.name):
            print(
                f"v{v.version}  {v.saved_at}  {v.split}  model={v.model or '-'}  "
                f"changed_by_hand={v.changed_pixels}/{v.total_pixels}  session={v.session or '-'}"
            )
    except _user_errors() as err:
        return _refusal(err)
    return 0


def _box(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"a box is X0,Y0,X1,Y1 in pixels, got {text[:40]!r}")
    return values  # type: ignore[return-value]


def _box_to_mask(args: argparse.Namespace) -> int:
    import time

    from seg.classes import palette_for
    from seg.io import load_image, save_label_png
    from seg.labeling.tools import boxes_to_ids, clip_box

    try:
        image = load_image(args.image, max_side=None)
    except ImageLoadError as err:
        return _refusal(err)
    if len(args.box) > 255:
        return _refusal(ValueError("at most 255 boxes fit in one 8-bit mask"))
    try:
        boxes = [clip_box(box, image.shape[:2]) for box in args.box]
    except ValueError as err:
        return _refusal(err)
    start = time.perf_counter()
    foreground = None
    names = [name.strip() for text in args.model or () for name in text.split(",") if name.strip()]
    if args.model:
        from seg.config import resolve_checkpoint
        from seg.labeling.seeding import SEED_MEMBERS, SeedModelError, load_seed_models

        try:
            members = SEED_MEMBERS if args.members is None else (args.members or None)
            model = load_seed_models([resolve_checkpoint(name) for name in names], members=members)
        except (FileNotFoundError, SeedModelError) as err:
            return _refusal(err)
        foreground = model.box_maps(image, boxes)
    ids = boxes_to_ids(image, boxes, foreground)
    elapsed = time.perf_counter() - start
    save_label_png(args.out, ids, [(0, 0, 0), *palette_for(len(args.box))])
    height, width = ids.shape
    print(
        f"wrote {args.out} ({width}x{height}): "
        + ", ".join(f"box {k}: {int((ids == k).sum())} px" for k in range(1, len(args.box) + 1))
    )
    how = "seeded by " + " + ".join(names) if names else "GrabCut"
    print(f"{1000 * elapsed / len(args.box):.0f} ms per box ({how})")
    return 0
