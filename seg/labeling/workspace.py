"""A labeling workspace: a course-layout dataset folder that a person fills in.

Layout (readable as-is by ``seg.data.sbd`` and ``python -m seg train --data W``)::

    W/classes.txt                  one class a line: name #rrggbb (seg.labeling.classes)
    W/train/<name>.jpg + <name>.png   labelled images (palette PNG of class ids)
    W/val/<name>.jpg   + <name>.png
    W/unlabeled/<name>.jpg         imported, not saved yet (the loader never looks here)
    W/.versions/<name>/v000003.png every saved version, never overwritten
    W/manifest.sqlite3             per version: time, prefill model, pixels changed by hand

Why this shape: the split folders only ever hold complete image+label pairs, so the
training loader needs no knowledge of labeling; versions live in a dot-folder the
loader ignores; and every write is atomic, so a crash leaves the previous state.

Where workspaces live: under one labels root (``LabelsRoot``: ``$SEG_LABEL_DIR``, by default
``~/.local/share/seglab``), chosen by a validated name and never by a path, so whatever someone
types into a name box cannot create or open a folder anywhere else. A folder counts as a workspace
only when ``classes.txt`` and the manifest are regular files and ``train/`` and ``val/`` are folders
(``is_workspace``); importing a server folder needs the operator's import roots.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import shutil
import stat
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from seg.classes import SBD_CLASSES, palette_for
from seg.data.split import split_of
from seg.io import (
    ImageLoadError,
    atomic_write_bytes,
    atomic_write_text,
    encode_png,
    label_to_png_image,
    load_image,
    read_label_png,
)
from seg.labeling.classes import ClassList, ClassListError
from seg.labeling.manifest import MANIFEST_NAME, Manifest, VersionRecord, utc_now
from seg.labeling.names import UnsafePathError, check_workspace_name, is_safe_name, safe_join, sanitize_name

LABEL_ENV = "SEG_LABEL_DIR"
SPLIT_DIRS = ("train", "val", "test")
UNLABELED_DIR = "unlabeled"
VERSIONS_DIR = ".versions"
CLASSES_FILE = "classes.txt"
#: Split folders every workspace has from its creation on (``is_workspace`` requires them).
REQUIRED_SPLITS = ("train", "val")
#: The workspace the Label tab and the CLI open when none is named: ``<labels root>/labels``.
DEFAULT_WORKSPACE_NAME = "labels"
_SQLITE_HEADER = b"SQLite format 3\x00"
#: New labels go to train/val by the project's hash rule on the name (no test split: that is held out).
SPLIT_FRACTIONS = (0.8, 0.2, 0.0)
#: Imported images are stored at most this large (longest side): plenty for labeling, light to train on.
MAX_SIDE = 1024
JPEG_QUALITY = 95
#: Image suffixes the core loader reads in a course-layout folder; this workspace writes ``.jpg``.
JPEG_SUFFIXES = (".jpg", ".jpeg", ".JPG", ".JPEG")


class WorkspaceError(ValueError):
    """A user-facing problem with a workspace operation (unknown image, wrong mask shape...)."""


def labels_root(environ: Mapping[str, str] | None = None) -> Path:
    """The folder holding every local workspace: ``$SEG_LABEL_DIR`` or ``$XDG_DATA_HOME/seglab``
    (``~/.local/share/seglab``).

    Deliberately not under the shared dataset root, which holds pristine downloads.
    """
    env = os.environ if environ is None else environ
    if env.get(LABEL_ENV):
        return Path(env[LABEL_ENV]).expanduser().resolve()
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "seglab"


def default_workspace() -> Path:
    """``<labels root>/labels``: ``~/.local/share/seglab/labels`` unless ``$SEG_LABEL_DIR`` is set."""
    return labels_root() / DEFAULT_WORKSPACE_NAME


def _is_regular_file(path: Path) -> bool:
    """A regular file, not a symlink (which could point at any file on the server)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except (OSError, ValueError):
        return False


def _is_real_dir(path: Path) -> bool:
    """A folder, not a symlink (which could lead anywhere on the server)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except (OSError, ValueError):
        return False


def is_workspace(path: str | Path) -> bool:
    """True when ``path`` is a folder with ``classes.txt`` and the manifest as regular files and
    ``train/`` and ``val/`` as folders (none of them a symlink).

    Strict on purpose: a folder merely holding an entry named ``test`` or ``train`` (``/usr/bin``)
    is not a workspace, so nothing gets written into it.
    """
    path = Path(path)
    return (
        path.is_dir()
        and _is_regular_file(path / CLASSES_FILE)
        and _is_regular_file(path / MANIFEST_NAME)
        and all(_is_real_dir(path / split) for split in REQUIRED_SPLITS)
    )


def _is_incomplete_workspace(path: Path) -> bool:
    """A workspace whose split folders are missing (a workspace created without them gets them on
    its first save): ``classes.txt`` and a SQLite manifest, and nothing else where a split folder
    belongs. Opening it adds the split folders."""
    if not (path.is_dir() and _is_regular_file(path / CLASSES_FILE) and _is_regular_file(path / MANIFEST_NAME)):
        return False
    if any(os.path.lexists(path / split) and not _is_real_dir(path / split) for split in REQUIRED_SPLITS):
        return False
    try:
        with open(path / MANIFEST_NAME, "rb") as fh:
            return fh.read(len(_SQLITE_HEADER)) == _SQLITE_HEADER
    except OSError:
        return False


def image_digest(rgb: np.ndarray) -> str:
    """Content hash of decoded pixels, so re-importing the same picture is recognised."""
    h = hashlib.sha256(f"{rgb.shape}".encode())
    h.update(np.ascontiguousarray(rgb).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Item:
    """One image in the workspace; ``split`` is None while it waits in ``unlabeled/``."""

    name: str
    image_path: Path
    label_path: Path | None
    split: str | None

    @property
    def labelled(self) -> bool:
        return self.label_path is not None


@dataclass
class LoadedItem:
    """An image opened for editing, with its current label (None before the first save)."""

    name: str
    image: np.ndarray
    label: np.ndarray | None
    version: int
    split: str | None
    model: str | None


@dataclass(frozen=True)
class SaveResult:
    name: str
    version: int
    split: str
    label_path: Path
    version_path: Path
    changed_pixels: int
    #: True when another session saved this image after ``base_version``: both versions are kept.
    conflict: bool
    previous_version: int


@dataclass(frozen=True)
class Problem:
    """A file the workspace cannot use; reported, then skipped."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class ScanReport:
    items: list[Item] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def labelled(self) -> int:
        return sum(1 for it in self.items if it.labelled)


@dataclass
class ImportReport:
    added: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


#: ``write_check(new_bytes, new_images)`` runs under the workspace's write lock before anything is
#: written and raises (a ``WorkspaceError``) to refuse: how a visitor's quota is enforced exactly.
WriteCheck = Callable[[int, int], None]


class Workspace:
    """Open (and create if needed) a labeling workspace at ``root``.

    ``root`` is a path the operator chose (the CLI, tests, the server's visitor folders); anything a
    visitor types goes through ``LabelsRoot`` instead. An existing folder is opened only when it is
    a workspace (``is_workspace``) or empty; ``adopt=True`` also turns a course-layout folder (one
    with ``train/`` or ``val/``) into a workspace by adding ``classes.txt``, the manifest and the
    missing split folder.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        classes: list[str] | ClassList | None = None,
        *,
        adopt: bool = False,
        write_check: WriteCheck | None = None,
    ):
        self.root = Path(root).expanduser().resolve() if root else default_workspace().resolve()
        _refuse_non_workspace(self.root, adopt=adopt)
        self.root.mkdir(parents=True, exist_ok=True)
        self.write_check = write_check
        self.problems: list[Problem] = []
        class_list = self._init_classes(classes)
        self.classes, self.palette = list(class_list.names), list(class_list.colours)
        self.manifest = Manifest(self.root / MANIFEST_NAME)
        if self.manifest.recovered_from is not None:
            self.problems.append(
                Problem(
                    MANIFEST_NAME,
                    f"was not a readable SQLite file; moved aside to {self.manifest.recovered_from.name} and restarted",
                )
            )
        for split in REQUIRED_SPLITS:  # last: a half-made workspace never passes ``is_workspace``
            (self.root / split).mkdir(exist_ok=True)
        self._lock = threading.Lock()  # in-process guard on top of SQLite's cross-process one
        self._decoded: dict[tuple[str, int, int], tuple[int, int] | str] = {}  # scan cache

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the workspace's write lock (this process's and SQLite's), so that a reader (a zip
        of the whole workspace) sees no half-finished import or save."""
        with self._lock, self.manifest.write():
            yield

    def _init_classes(self, classes: list[str] | ClassList | None) -> ClassList:
        path = self.root / CLASSES_FILE
        fallback = (
            classes
            if isinstance(classes, ClassList)
            else ClassList(tuple(classes or SBD_CLASSES), tuple(palette_for(len(classes or SBD_CLASSES))))
        )
        if path.is_file():
            try:
                return ClassList.parse(path.read_text(encoding="utf-8"))
            except ClassListError:
                self.problems.append(Problem(CLASSES_FILE, "has no usable class names; using the defaults"))
            except (OSError, UnicodeDecodeError) as err:
                self.problems.append(Problem(CLASSES_FILE, f"unreadable ({err}); using the defaults"))
            return fallback
        atomic_write_text(path, fallback.to_text())
        return fallback

    @property
    def class_list(self) -> ClassList:
        return ClassList(tuple(self.classes), tuple(self.palette))

    def set_classes(self, classes: ClassList) -> None:
        """Rename, recolour or add classes (``ClassList.renamed/recoloured/added``); never fewer classes,
        so every saved mask keeps its meaning."""
        classes.check_replaces(self.class_list)
        with self.exclusive():
            atomic_write_text(self._path(CLASSES_FILE), classes.to_text())
            self.classes, self.palette = list(classes.names), list(classes.colours)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    # -- paths ----------------------------------------------------------------------------
    def _path(self, *parts: str) -> Path:
        return safe_join(self.root, *parts)

    def _check_name(self, name: str) -> str:
        if not is_safe_name(name):
            shown = repr(name[:40] + "…") if isinstance(name, str) and len(name) > 40 else repr(name)
            raise UnsafePathError(f"invalid image name {shown}")
        return name

    def version_path(self, name: str, version: int) -> Path:
        return self._path(VERSIONS_DIR, self._check_name(name), f"v{version:06d}.png")

    # -- listing ----------------------------------------------------------------------------
    def items(self) -> list[Item]:
        """Every image (labelled or not), sorted by name; cheap: no decoding.

        ``unlabeled/`` is read first: an image's only move is its first save's, from there into a split
        folder, so while another session saves, this listing sees a moving image in one folder or both
        (the split folder wins), never in neither."""
        found: dict[str, Item] = {}
        folder = self.root / UNLABELED_DIR
        if folder.is_dir():
            for path in _jpegs(folder):
                if is_safe_name(path.stem):
                    found[path.stem] = Item(path.stem, path, None, None)
        for split in SPLIT_DIRS:
            folder = self.root / split
            if not folder.is_dir():
                continue
            for path in _jpegs(folder):
                if not is_safe_name(path.stem) or (path.stem in found and found[path.stem].split is not None):
                    continue
                label = path.with_suffix(".png")
                found[path.stem] = Item(path.stem, path, label if label.is_file() else None, split)
        return [found[k] for k in sorted(found)]

    def names(self) -> list[str]:
        return [it.name for it in self.items()]

    def progress(self) -> tuple[int, int]:
        """(labelled, total) images."""
        items = self.items()
        return sum(1 for it in items if it.labelled), len(items)

    def item(self, name: str) -> Item:
        self._check_name(name)
        for it in self.items():
            if it.name == name:
                return it
        raise WorkspaceError(f"no image named {name!r} in the workspace")

    def _name_taken(self, name: str) -> bool:
        candidates = [self.root / d / f"{name}{ext}" for d in (*SPLIT_DIRS, UNLABELED_DIR) for ext in JPEG_SUFFIXES]
        return any(p.exists() for p in candidates) or (self.root / VERSIONS_DIR / name).exists()

    # -- import -----------------------------------------------------------------------------
    def import_image(self, source, name: str | None = None, source_desc: str | None = None) -> tuple[str, bool]:
        """Decode an untrusted image and add it to ``unlabeled/``; returns (name, newly_added).

        The same picture imported twice returns the existing name instead of a duplicate.
        Raises ``ImageLoadError`` for unreadable input.
        """
        if name is None:
            name = Path(str(source)).name if isinstance(source, (str, Path)) else "image"
        rgb = load_image(source, max_side=MAX_SIDE)
        digest = image_digest(rgb)
        data = _encode_jpeg(rgb)
        stem = sanitize_name(name)
        with self._lock, self.manifest.write() as conn:
            existing = Manifest.name_for_digest(conn, digest)
            if existing and self._name_taken(existing):
                return existing, False
            candidate, n = stem, 1
            while self._name_taken(candidate):
                n += 1
                candidate = f"{stem[: 100 - 6]}_{n}"
            if self.write_check is not None:
                self.write_check(len(data), 1)
            atomic_write_bytes(self._path(UNLABELED_DIR, f"{candidate}.jpg"), data)
            Manifest.add_image(
                conn, candidate, str(source_desc or name)[:500], digest, int(rgb.shape[1]), int(rgb.shape[0])
            )
        return candidate, True

    def import_folder(
        self, folder: str | Path, limit: int = 10_000, *, import_roots: Sequence[str | Path] = ()
    ) -> ImportReport:
        """Import every image file in ``folder`` (not recursive); unreadable files are reported.

        ``folder``, and every file read from it after resolving symlinks, must lie under one of
        ``import_roots``: the folders the operator offers (``SEG_IMPORT_ROOTS``). With none,
        nothing is read. The CLI, where the operator names the folder, passes ``[folder]``.
        """
        report = ImportReport()
        roots = _resolved_roots(import_roots)
        folder = resolve_import_folder(folder, roots)
        if folder == self.root or self.root in folder.parents:
            raise WorkspaceError("choose a folder outside the workspace")
        for path in sorted(folder.iterdir())[:limit]:
            if path.name.startswith("."):
                continue
            try:
                real = path.resolve(strict=True)
            except (OSError, RuntimeError):
                continue  # a dangling or looping link
            if not any(real.is_relative_to(r) for r in roots):
                report.problems.append(Problem(path.name, "links outside the import folders, skipped"))
                continue
            if not real.is_file():
                continue
            try:
                name, added = self.import_image(real, name=path.name, source_desc=str(path))
            except ImageLoadError as err:
                report.problems.append(Problem(path.name, f"not imported: {err}"))
                continue
            (report.added if added else report.existing).append(name)
        return report

    # -- load / save -------------------------------------------------------------------------
    def load(self, name: str) -> LoadedItem:
        """The image and its current label; a label that is unreadable or does not fit is not used."""
        it = self.item(name)
        image = load_image(it.image_path, max_side=None)
        label = None
        if it.label_path is not None:
            try:
                label = read_label_png(it.label_path)
                if label.shape != image.shape[:2]:
                    raise ValueError(
                        f"label is {label.shape[1]}x{label.shape[0]}, image {image.shape[1]}x{image.shape[0]}"
                    )
            except (OSError, ValueError):
                label = None  # ``scan`` reports it; the person relabels from the image
        latest = self.manifest.latest(name)
        return LoadedItem(
            name, image, label, latest.version if latest else 0, it.split, latest.model if latest else None
        )

    def save(
        self,
        name: str,
        label: np.ndarray,
        *,
        model: str | None = None,
        reference: np.ndarray | None = None,
        base_version: int | None = None,
        session: str | None = None,
        split: str | None = None,
    ) -> SaveResult:
        """Save ``label`` as a new version and make it the current label.

        Never overwrites a previous version: each save gets the next number under the
        manifest's write lock, so two sessions saving at once both keep their work (the
        later becomes current; ``conflict`` tells the other one). ``reference`` is what
        the person started from (the model's prefill) and gives ``changed_pixels``.
        """
        it = self.item(name)
        label = np.asarray(label)
        height, width = _image_shape(it.image_path)
        if label.ndim != 2 or label.shape != (height, width):
            raise WorkspaceError(f"mask shape {label.shape} does not match the {width}x{height} image")
        if label.size and (label.min() < 0 or label.max() >= self.num_classes):
            raise WorkspaceError(f"mask holds class ids outside 0..{self.num_classes - 1}")
        label = label.astype(np.uint8)
        png = encode_png(label_to_png_image(label, self.palette))
        digest = hashlib.sha256(png).hexdigest()
        with self._lock, self.manifest.write() as conn:
            it = self.item(name)  # re-read under the lock: another session may have moved it
            latest = max(Manifest.latest_version(conn, name), self._latest_version_file(name))
            if latest == 0 and it.label_path is not None:
                # A label that predates the manifest (an existing course folder) is kept as v0.
                atomic_write_bytes(self.version_path(name, 0), it.label_path.read_bytes())
            previous = reference
            if previous is None and it.label_path is not None:
                try:
                    previous = read_label_png(it.label_path)
                except (OSError, ValueError):
                    previous = None
            changed = (
                int(np.count_nonzero(label != previous))
                if previous is not None and np.shape(previous) == label.shape
                else int(label.size)
            )
            version = latest + 1
            target_split = it.split or split or self._default_split(name)
            if target_split not in SPLIT_DIRS:
                raise WorkspaceError(f"unknown split {target_split!r}")
            if self.write_check is not None:
                self.write_check(2 * len(png), 0)  # the version file and the current label
            version_file = self.version_path(name, version)
            atomic_write_bytes(version_file, png)
            label_path = self._path(target_split, f"{name}.png")
            atomic_write_bytes(label_path, png)  # label first: the loader only lists .jpg files
            if it.split is None:
                os.replace(it.image_path, self._path(target_split, f"{name}.jpg"))
            Manifest.add_version(
                conn,
                VersionRecord(name, version, target_split, utc_now(), model, changed, int(label.size), session, digest),
            )
        conflict = base_version is not None and latest != base_version
        return SaveResult(name, version, target_split, label_path, version_file, changed, conflict, latest)

    def _decoded_shape(self, path: Path) -> tuple[int, int] | str:
        """(height, width) of a fully decoded image, or the decode error; cached by mtime and size
        so reopening a large workspace does not decode every image again."""
        try:
            st = path.stat()
        except OSError as err:
            return str(err)
        key = (str(path), st.st_mtime_ns, st.st_size)
        if key not in self._decoded:
            try:
                self._decoded[key] = load_image(path, max_side=None).shape[:2]
            except (ImageLoadError, OSError, ValueError, SyntaxError) as err:
                self._decoded[key] = str(err)
        return self._decoded[key]

    def _default_split(self, name: str) -> str:
        """The hash rule, except that the first labelled image goes to val so that a small
        workspace can always be validated on (training needs a non-empty val split)."""
        if self.split_counts().get("val", 0) == 0:
            return "val"
        return split_of(name, SPLIT_FRACTIONS)

    def split_counts(self) -> dict[str, int]:
        """Labelled images per split folder."""
        counts = {split: 0 for split in SPLIT_DIRS}
        for it in self.items():
            if it.labelled and it.split:
                counts[it.split] += 1
        return counts

    def check_trainable(self) -> None:
        """Raise ``WorkspaceError`` with what is missing unless ``train`` and ``val`` both have labels."""
        counts = self.split_counts()
        missing = [s for s in ("train", "val") if counts[s] == 0]
        if missing:
            raise WorkspaceError(
                f"the workspace {self.root.name} has no labelled images in {' or '.join(missing)}/ "
                f"yet (labelled: {counts['train']} train, {counts['val']} val); "
                f"label a few more images first"
            )

    def _latest_version_file(self, name: str) -> int:
        folder = self.root / VERSIONS_DIR / name
        numbers = [int(p.stem[1:]) for p in folder.glob("v*.png") if p.stem[1:].isdigit()] if folder.is_dir() else []
        return max(numbers, default=0)

    def versions(self, name: str) -> list[VersionRecord]:
        return self.manifest.versions(self._check_name(name))

    def read_version(self, name: str, version: int) -> np.ndarray:
        try:
            return read_label_png(self.version_path(name, version))
        except FileNotFoundError:
            raise WorkspaceError(f"{name} has no version {version}") from None

    def restore(self, name: str, version: int, session: str | None = None) -> SaveResult:
        """Make an old version current again, as a new version (history only ever grows)."""
        label = self.read_version(name, version)
        record = next((v for v in self.versions(name) if v.version == version), None)
        return self.save(name, label, model=record.model if record else None, session=session)

    # -- health ---------------------------------------------------------------------------
    def scan(self) -> ScanReport:
        """Decode every file once; report corrupt, mismatched and foreign files instead of failing.

        ``items`` holds only the images that can be opened (and whose label, if any, fits).
        """
        report = ScanReport(problems=list(self.problems))
        known_root = {CLASSES_FILE, UNLABELED_DIR, VERSIONS_DIR, *SPLIT_DIRS}
        for entry in sorted(self.root.iterdir()):
            if entry.name in known_root or entry.name.startswith(MANIFEST_NAME):
                continue
            report.problems.append(Problem(entry.name, "foreign file or folder, ignored"))
        good = {}
        for it in self.items():
            rel = str(it.image_path.relative_to(self.root))
            shape = self._decoded_shape(it.image_path)
            if isinstance(shape, str):
                report.problems.append(Problem(rel, f"corrupt image, skipped ({shape})"))
                continue
            if it.label_path is not None:
                lrel = str(it.label_path.relative_to(self.root))
                try:
                    label = read_label_png(it.label_path)
                except (OSError, ValueError, SyntaxError) as err:
                    report.problems.append(Problem(lrel, f"corrupt label, image treated as unlabelled ({err})"))
                    it = Item(it.name, it.image_path, None, it.split)
                else:
                    if label.shape != shape:
                        report.problems.append(
                            Problem(lrel, "label size does not match its image, image treated as unlabelled")
                        )
                        it = Item(it.name, it.image_path, None, it.split)
                    elif label.size and int(label.max()) >= self.num_classes:
                        report.problems.append(
                            Problem(
                                lrel,
                                f"class id {int(label.max())} is beyond the {self.num_classes} classes in classes.txt",
                            )
                        )
                        it = Item(it.name, it.image_path, None, it.split)
            good[it.name] = it
        for folder_name in (*SPLIT_DIRS, UNLABELED_DIR):
            folder = self.root / folder_name
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                rel = f"{folder_name}/{path.name}"
                if path.name.startswith(".") and path.name.endswith(".tmp"):
                    report.problems.append(Problem(rel, "leftover of an interrupted write, ignored"))
                elif path.suffix.lower() in JPEG_SUFFIXES and is_safe_name(path.stem):
                    continue
                elif path.suffix == ".png" and folder_name != UNLABELED_DIR and is_safe_name(path.stem):
                    if not any(path.with_suffix(ext).is_file() for ext in JPEG_SUFFIXES):
                        report.problems.append(Problem(rel, "label without an image, ignored"))
                else:
                    report.problems.append(Problem(rel, "foreign file, ignored"))
        report.items = [good[k] for k in sorted(good)]
        return report


def _refuse_non_workspace(root: Path, adopt: bool = False) -> None:
    """Never litter a folder that is not a workspace (``/usr/bin``, a home folder, a dataset download).

    Messages name the folder, never its full path: they may reach a browser.
    """
    if os.path.lexists(root) and not root.is_dir():
        raise WorkspaceError(f"{root.name!r} exists and is not a folder")
    if not root.is_dir() or is_workspace(root) or _is_incomplete_workspace(root):
        return
    try:
        empty = not any(True for _ in root.iterdir())
    except OSError:
        raise WorkspaceError(f"the folder {root.name!r} cannot be read") from None
    if empty:
        return
    if (root / "images").is_dir() and (root / "labels").is_dir() or (root / "PNGImages").is_dir():
        raise WorkspaceError(f"{root.name!r} is a dataset download, not a labeling workspace; choose another folder")
    if adopt and any(_is_real_dir(root / split) for split in REQUIRED_SPLITS):
        return
    raise WorkspaceError(
        f"the folder {root.name!r} is neither empty nor a labeling workspace (one with "
        f"classes.txt, {MANIFEST_NAME}, train/ and val/); choose an empty folder or a workspace"
    )


def _resolved_roots(roots: Sequence[str | Path]) -> list[Path]:
    return [Path(r).expanduser().resolve() for r in roots]


def resolve_import_folder(folder: object, import_roots: Sequence[str | Path]) -> Path:
    """``folder`` resolved (symlinks followed) when it lies under one of ``import_roots``; else a
    ``WorkspaceError`` that does not tell whether anything exists outside those roots."""
    roots = _resolved_roots(import_roots)
    if not roots:
        raise WorkspaceError("Importing a folder from the server is turned off here; upload the images instead.")
    text = folder.strip() if isinstance(folder, str) else str(folder) if isinstance(folder, Path) else ""
    if not text:
        raise WorkspaceError("Type the folder to import.")
    if "\x00" in text or len(text) > 4096:
        raise WorkspaceError("That is not a valid folder path.")
    path = Path(text)
    if not path.is_absolute():
        raise WorkspaceError("Type the full path of the folder, starting with '/' (no '~').")
    if ".." in path.parts:
        raise WorkspaceError("A folder path to import cannot contain '..'.")
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):
        raise WorkspaceError("That is not a valid folder path.") from None
    if not any(resolved.is_relative_to(r) for r in roots):
        raise WorkspaceError("That folder is not one this server allows importing from.")
    if not resolved.is_dir():
        raise WorkspaceError("There is no such folder to import from.")
    return resolved


class LabelsRoot:
    """The one folder that holds every local workspace; a workspace is chosen by name, never by path.

    One instance per process (the UI keeps it), so every browser session editing a workspace
    shares its ``Workspace`` object and therefore its lock. Nothing is created outside ``path``:
    names are validated (``check_workspace_name``) and every resolved path is checked to stay
    inside ``path`` after following symlinks.
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path).expanduser().resolve() if path else labels_root().resolve()
        self._lock = threading.Lock()
        self._open: dict[str, Workspace] = {}

    def path_of(self, name: object) -> Path:
        """Where the workspace ``name`` is (or would be): validated, resolved, inside the root."""
        name = check_workspace_name(name)
        try:
            target = (self.path / name).resolve()
        except (OSError, RuntimeError):
            raise UnsafePathError("That workspace cannot be opened.") from None
        if target == self.path or not target.is_relative_to(self.path):
            raise UnsafePathError("That workspace lies outside the labels folder and cannot be used.")
        return target

    def names(self) -> list[str]:
        """Existing workspaces, sorted; folders that are not workspaces or lead outside are left out."""
        try:
            entries = list(self.path.iterdir())
        except OSError:
            return []
        found = []
        for entry in entries:
            try:
                if check_workspace_name(entry.name) != entry.name:
                    continue  # " ws" is no name a person could pick
                target = self.path_of(entry.name)
            except UnsafePathError:
                continue
            if is_workspace(target) or _is_incomplete_workspace(target):
                found.append(entry.name)
        return sorted(found)

    def exists(self, name: object) -> bool:
        target = self.path_of(name)
        return is_workspace(target) or _is_incomplete_workspace(target)

    def open(self, name: object) -> Workspace:
        """The existing workspace ``name``; ``WorkspaceError`` when there is none by that name."""
        name = check_workspace_name(name)
        target = self.path_of(name)
        with self._lock:
            ws = self._open.get(str(target))
            if ws is not None and is_workspace(target):
                return ws
            if not (is_workspace(target) or _is_incomplete_workspace(target)):
                raise WorkspaceError(f"There is no workspace named {name!r}.")
            ws = self._open[str(target)] = Workspace(target)
            return ws

    def create(self, name: object, classes: list[str] | ClassList | None = None) -> Workspace:
        """A new, empty workspace ``name``; ``WorkspaceError`` when that name is taken.

        Built in a hidden staging folder and renamed into place, so the name never shows a
        half-made workspace and a crash leaves no folder that blocks the name.
        """
        name = check_workspace_name(name)
        target = self.path_of(name)
        with self._lock:
            if os.path.lexists(self.path / name):
                raise WorkspaceError(f"A workspace or folder named {name!r} exists already; choose another name.")
            self.path.mkdir(parents=True, exist_ok=True)
            staging = self.path / f".new-{secrets.token_hex(8)}"  # a dot-name is never a workspace name
            staging.mkdir()
            try:
                Workspace(staging, classes)
                try:
                    os.rename(staging, target)  # fails when ``target`` appeared meanwhile and is not empty
                except OSError:
                    raise WorkspaceError(
                        f"A workspace or folder named {name!r} exists already; choose another name."
                    ) from None
            finally:
                shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful rename
            ws = self._open[str(target)] = Workspace(target)
            return ws

    def open_or_create(self, name: object = DEFAULT_WORKSPACE_NAME) -> Workspace:
        name = check_workspace_name(name)
        return self.open(name) if self.exists(name) else self.create(name)


def _image_shape(path: Path) -> tuple[int, int]:
    """(height, width) exactly as the loader will see it (EXIF orientation applied)."""
    try:
        return load_image(path, max_side=None).shape[:2]
    except ImageLoadError as err:
        raise WorkspaceError(f"{path.name} is not readable: {err}") from None


def _jpegs(folder: Path) -> list[Path]:
    """Images of a split folder as the core loader lists them (``.jpg``/``.jpeg``, no dot-files)."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in JPEG_SUFFIXES and not p.name.startswith("."))


def _encode_jpeg(rgb: np.ndarray) -> bytes:
    """JPEG at high quality with no chroma subsampling, so class edges stay where they were painted."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buf.getvalue()
