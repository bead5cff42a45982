"""The whole workspace as one zip, and back.

The zip holds the workspace folder as it is (``classes.txt``, the split folders, unlabelled
images, every saved version under ``.versions/`` and the manifest) under one top folder
named after the workspace, taken while no import or save is half-done. It is a complete
backup: unzipped into the labels root it is the workspace again.

Importing a zip treats it as untrusted: member names must match the workspace layout (no
paths out, no links), sizes are checked before reading, images are decoded and imported like
uploads and each version is saved again in order, so the history comes back through the
same checks as any save. The manifest inside is never opened (its times and model names are
not restored); the same goes for any other file.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from seg.labeling.classes import ClassList, ClassListError
from seg.labeling.transfer import (
    DatasetImportReport,
    ExportReport,
    add_image,
    add_labelled,
    decode_label,
    merge_classes,
    output_folder,
    save_label,
)
from seg.labeling.workspace import CLASSES_FILE, SPLIT_DIRS, UNLABELED_DIR, Problem, Workspace, WorkspaceError

#: Refuse archives beyond these before extracting anything (zip bombs, runaway folders).
MAX_MEMBERS = 200_000
MAX_TOTAL_BYTES = 8 * 1024**3
MAX_MEMBER_BYTES = 64 * 1024**2
MAX_RATIO = 200  # uncompressed / compressed, per member
_STORED = {".jpg", ".jpeg", ".png"}
_IMAGE = re.compile(r"(?P<dir>train|val|test|unlabeled)/(?P<stem>[^/]+)\.(?P<ext>jpe?g|JPE?G)")
_LABEL = re.compile(r"(?P<dir>train|val|test)/(?P<stem>[^/]+)\.png")
_VERSION = re.compile(r"\.versions/(?P<stem>[^/]+)/v(?P<version>\d{6})\.png")


def export_zip(workspace: Workspace, out: str | Path) -> ExportReport:
    """``out/<workspace name>.zip`` with every regular file of the workspace (links and leftovers of
    interrupted writes left out), taken while no import or save is half-done."""
    out = output_folder(workspace, out)
    report = ExportReport(out / f"{workspace.root.name}.zip")
    with workspace.exclusive():
        files = [
            (path, f"{workspace.root.name}/{path.relative_to(workspace.root).as_posix()}")
            for path in _regular_files(workspace.root)
        ]
        write_zip(report.out, files)
    report.exported = sorted(
        PurePosixPath(arcname).stem for _, arcname in files if _LABEL.fullmatch(arcname.split("/", 1)[1])
    )
    return report


def zip_folder(folder: Path, target: Path) -> None:
    """Every regular file under ``folder`` into the zip ``target``, under a top folder of the same name."""
    write_zip(
        target, [(path, f"{folder.name}/{path.relative_to(folder).as_posix()}") for path in _regular_files(folder)]
    )


def write_zip(target: Path, files: list[tuple[Path, str]]) -> None:
    """A zip of (file, name in the zip), written to a temporary file and renamed into place; images
    are stored as they are (already compressed), the rest deflated."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            with zipfile.ZipFile(fh, "w") as archive:
                for path, arcname in files:
                    method = zipfile.ZIP_STORED if path.suffix.lower() in _STORED else zipfile.ZIP_DEFLATED
                    archive.write(path, arcname, compress_type=method)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def unpacked(path: Path) -> Iterator[Path]:
    """A dataset zip unpacked into a temporary folder, which is removed afterwards.

    Only regular files whose names stay inside are written (no absolute names, no '..', no
    links), within the same size limits as a workspace zip. A zip whose entries all sit in one
    top folder yields that folder.
    """
    archive = _open_zip(path)
    try:
        with tempfile.TemporaryDirectory(prefix="seglab-import-") as tmp:
            root = Path(tmp)
            for info in archive.infolist():
                name = info.filename
                if info.is_dir() or not _safe_member(name) or stat.S_ISLNK(info.external_attr >> 16):
                    continue
                target = root.joinpath(*PurePosixPath(name).parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(_read_member(archive, info))
            entries = list(root.iterdir())
            yield entries[0] if len(entries) == 1 and entries[0].is_dir() else root
    finally:
        archive.close()


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile):
        raise WorkspaceError(f"{path.name} is not a readable zip file") from None
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        archive.close()
        raise WorkspaceError(f"the zip has {len(infos)} entries; the limit is {MAX_MEMBERS}")
    if sum(i.file_size for i in infos) > MAX_TOTAL_BYTES:
        archive.close()
        raise WorkspaceError(f"the zip unpacks to more than {MAX_TOTAL_BYTES / 1024**3:.0f} GB")
    return archive


def _safe_member(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return bool(parts) and not (
        name.startswith("/") or "\\" in name or "\x00" in name or ".." in parts or ":" in parts[0]
    )


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A member's bytes, refused when it is large or compressed suspiciously well (a zip bomb)."""
    rel = info.filename
    if info.file_size > MAX_MEMBER_BYTES:
        raise WorkspaceError(f"{rel} is {info.file_size / 1e6:.0f} MB; the limit is {MAX_MEMBER_BYTES / 1e6:.0f} MB")
    if info.compress_size and info.file_size / info.compress_size > MAX_RATIO and info.file_size > 1024**2:
        raise WorkspaceError(f"{rel} is compressed suspiciously well; not read")
    with archive.open(info) as fh:
        data = fh.read(MAX_MEMBER_BYTES + 1)
    if len(data) > MAX_MEMBER_BYTES:
        raise WorkspaceError(f"{rel} is larger than it says; not read")
    return data


def _regular_files(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not os.path.islink(os.path.join(dirpath, d)))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file() or (name.startswith(".") and name.endswith(".tmp")):
                continue
            out.append(path)
    return out


class _Archive:
    """A zip's members under the workspace folder inside it, size-checked on every read."""

    def __init__(self, path: Path):
        self.zip = _open_zip(path)
        infos = self.zip.infolist()
        tops = sorted(
            (i.filename for i in infos if PurePosixPath(i.filename).name == CLASSES_FILE), key=lambda n: n.count("/")
        )
        if not tops:
            self.zip.close()
            raise WorkspaceError(f"the zip holds no {CLASSES_FILE}: it is not a workspace zip")
        self.prefix = tops[0][: -len(CLASSES_FILE)]
        self.members: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            if info.is_dir() or not info.filename.startswith(self.prefix) or not _safe_member(info.filename):
                continue
            self.members[info.filename[len(self.prefix) :]] = info

    def read(self, rel: str) -> bytes:
        return _read_member(self.zip, self.members[rel])

    def close(self) -> None:
        self.zip.close()


def read_zip_classes(path: str | Path) -> ClassList:
    archive = _Archive(Path(path))
    try:
        return ClassList.parse(archive.read(CLASSES_FILE).decode("utf-8"))
    except (UnicodeDecodeError, ClassListError):
        raise WorkspaceError(f"{CLASSES_FILE} in the zip is not a class list") from None
    finally:
        archive.close()


def import_zip(workspace: Workspace, path: str | Path) -> DatasetImportReport:
    """Add a workspace zip's images, every saved version of each mask in order, and its classes."""
    path = Path(path).expanduser().resolve()
    classes = read_zip_classes(path)
    report = DatasetImportReport()
    lut = merge_classes(workspace, classes, report)
    archive = _Archive(path)
    try:
        images: dict[str, tuple[str, str]] = {}  # stem -> (member, folder)
        labels: dict[str, str] = {}
        versions: dict[str, list[tuple[int, str]]] = {}
        for rel in archive.members:
            if m := _IMAGE.fullmatch(rel):
                if m["stem"] not in images or m["dir"] != UNLABELED_DIR:
                    images[m["stem"]] = (rel, m["dir"])
            elif m := _LABEL.fullmatch(rel):
                labels[m["stem"]] = rel
            elif m := _VERSION.fullmatch(rel):
                versions.setdefault(m["stem"], []).append((int(m["version"]), rel))
            elif rel != CLASSES_FILE and not rel.startswith("manifest.sqlite3"):
                report.problems.append(Problem(rel, "not part of a workspace, ignored"))
        for stem in sorted(images):
            member, folder = images[stem]
            split = folder if folder in SPLIT_DIRS else None
            history = [rel for _, rel in sorted(versions.get(stem, []))]
            if stem in labels and (not history or archive.read(labels[stem]) != archive.read(history[-1])):
                history.append(labels[stem])  # a current label that no version holds (made before versioning)
            try:
                image_bytes = archive.read(member)
            except WorkspaceError as err:
                report.problems.append(Problem(member, str(err)))
                continue
            if not history or split is None:
                add_labelled(workspace, report, stem, image_bytes, None, split)
                continue
            imported = add_image(workspace, report, stem, image_bytes)
            if imported is None:
                continue
            stored, new = imported
            for rel in history if new else history[-1:]:  # an image already here gets only the current mask
                try:
                    ids = decode_label(archive.read(rel))
                except WorkspaceError as err:
                    report.problems.append(Problem(rel, f"not imported: {err}"))
                    continue
                save_label(workspace, report, stored, ids, split, lut)
        stray = sorted(set(labels) - set(images))
        for stem in stray:
            report.problems.append(Problem(labels[stem], "mask without its image, ignored"))
    finally:
        archive.close()
    # each image counts once, however many of its versions were saved
    report.saved = sorted(set(report.saved))
    report.unchanged = sorted(set(report.unchanged) - set(report.saved))
    return report
