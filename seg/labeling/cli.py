"""``python -m seg label-export|label-import|label-scan``: the workspace from the shell.

The lead's ``seg/cli.py`` calls ``add_subcommands(subparsers)``; each subcommand sets
``func`` to a callable taking the parsed args and returning an exit code.
"""

from __future__ import annotations

import argparse

from seg.io import ImageLoadError


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Register the labeling subcommands on the main parser's subparsers."""
    p = subparsers.add_parser("label-export", help="export a labeling workspace (CVAT Segmentation Mask 1.1)")
    _workspace_arg(p)
    p.add_argument("--format", choices=["cvat"], default="cvat")
    p.add_argument("--out", required=True, help="output folder (outside the workspace)")
    p.add_argument("--images", action="store_true", help="also copy the images to JPEGImages/")
    p.set_defaults(func=_export)

    p = subparsers.add_parser("label-import", help="add images (a folder or files) to a labeling workspace")
    _workspace_arg(p)
    p.add_argument("paths", nargs="+", help="image files or folders of images")
    p.set_defaults(func=_import)

    p = subparsers.add_parser("label-versions", help="list an image's saved versions, or restore one")
    _workspace_arg(p)
    p.add_argument("--name", required=True, help="image name in the workspace")
    p.add_argument("--restore", type=int, default=None, metavar="N", help="make version N current (as a new version)")
    p.set_defaults(func=_versions)

    p = subparsers.add_parser("label-scan", help="progress and problems (corrupt/foreign files) of a workspace")
    _workspace_arg(p)
    p.set_defaults(func=_scan)


def _workspace_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workspace", default=None,
                   help="workspace folder (default: $SEG_LABEL_DIR/labels or ~/.local/share/seglab/labels)")


def _open(args: argparse.Namespace):
    from seg.labeling.workspace import Workspace

    return Workspace(args.workspace)


def _print_problems(problems) -> None:
    for problem in problems:
        print(f"  warning: {problem}")


def _export(args: argparse.Namespace) -> int:
    from seg.labeling.export import export_cvat
    from seg.labeling.workspace import WorkspaceError

    try:
        report = export_cvat(_open(args), args.out, include_images=args.images)
    except WorkspaceError as err:
        print(f"error: {err}")
        return 2
    print(f"exported {len(report.exported)} labelled image(s) to {report.out}")
    _print_problems(report.problems)
    return 0


def _import(args: argparse.Namespace) -> int:
    from pathlib import Path

    ws = _open(args)
    added = existing = failed = 0
    for raw in args.paths:
        path = Path(raw)
        if path.is_dir():
            report = ws.import_folder(path.resolve(), import_roots=[path.resolve()])  # the operator named it
            added, existing, failed = added + len(report.added), existing + len(report.existing), \
                failed + len(report.problems)
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


def _scan(args: argparse.Namespace) -> int:
    ws = _open(args)
    report = ws.scan()
    print(f"{ws.root}: {report.labelled} of {len(report.items)} image(s) labelled, "
          f"{len(report.problems)} problem(s)")
    _print_problems(report.problems)
    return 0


def _versions(args: argparse.Namespace) -> int:
    from seg.labeling.names import UnsafePathError
    from seg.labeling.workspace import WorkspaceError

    ws = _open(args)
    try:
        if args.restore is not None:
            result = ws.restore(args.name, args.restore, session="cli")
            print(f"restored version {args.restore} of {args.name} as version {result.version}")
        for v in ws.versions(args.name):
            print(f"v{v.version}  {v.saved_at}  {v.split}  model={v.model or '-'}  "
                  f"changed_by_hand={v.changed_pixels}/{v.total_pixels}  session={v.session or '-'}")
    except (WorkspaceError, UnsafePathError) as err:
        print(f"error: {err}")
        return 2
    return 0
