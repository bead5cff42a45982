"""A space of their own for each visitor of a public deployment, and who may stop which training run.

A visitor is known by an opaque key: the UI builds it with ``visitor_key`` from the browser
session, or from the Hugging Face login when the Space has OAuth. The key is hashed into the
folder name, so nothing a visitor sends becomes a path, and no visitor can name another's folder.

Layout under the server-chosen visitor root (``Deployment.visitor_root``)::

    <root>/<digest>/workspace/     a labeling workspace (``seg.labeling.workspace``)
    <root>/<digest>/checkpoints/   checkpoints this visitor trained
    <root>/<digest>/.last-used     touched on every use; ``sweep`` deletes spaces unused past the expiry

Quotas (images, bytes of the whole space) are checked under the workspace's write lock before
each import or save writes anything (``Workspace(write_check=...)``), so concurrent requests of
one visitor cannot overshoot them. Everything here is thread-safe: Gradio runs handlers on
worker threads.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import shutil
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from seg.cards import without_paths
from seg.deploy import MB, Deployment
from seg.labeling.names import safe_join, sanitize_name
from seg.labeling.workspace import Workspace, WorkspaceError

WORKSPACE_DIR = "workspace"
CHECKPOINTS_DIR = "checkpoints"
LAST_USED_FILE = ".last-used"
#: Longest key accepted; a session hash or a user name is far shorter.
MAX_KEY_LENGTH = 512
#: Touch the last-used marker at most this often (seconds): every request touches, few write.
TOUCH_EVERY_S = 30.0
_DIGEST = re.compile(r"[0-9a-f]{32}")
#: Already-compressed files are stored as they are in the zip; the rest is deflated.
_STORED_SUFFIXES = {".jpg", ".jpeg", ".png", ".safetensors", ".zip", ".gz"}


class VisitorError(ValueError):
    """A visitor request refused on purpose; ``str(err)`` is a plain sentence for that visitor."""


class QuotaExceeded(WorkspaceError, VisitorError):
    """An import or save would take a visitor's space over its quota (a ``WorkspaceError`` too, so the
    Label tab's existing refusal handling shows it)."""


class ServerFull(VisitorError):
    """No room for another visitor space right now."""


class RunRefused(VisitorError):
    """A training run may not start, or this visitor may not stop it."""


def visitor_key(session_hash: str | None, username: str | None = None) -> str:
    """The key of a visitor: their Hugging Face user name when logged in (the same space on every
    visit), else the browser session; the prefixes keep the two kinds from ever colliding."""
    if isinstance(username, str) and username.strip():
        return f"user:{username.strip()}"
    if isinstance(session_hash, str) and session_hash.strip():
        return f"session:{session_hash.strip()}"
    raise VisitorError("Your browser session could not be identified; reload the page.")


def visitor_digest(key: str) -> str:
    """The folder name for ``key``: a hash, never the key itself."""
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH or "\x00" in key:
        raise VisitorError("Your browser session could not be identified; reload the page.")
    return hashlib.sha256(b"seglab-visitor\x00" + key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass(frozen=True)
class Usage:
    images: int
    bytes: int


class VisitorSpace:
    """One visitor's folder: their workspace, their checkpoints, their quota."""

    def __init__(self, registry: VisitorRegistry, digest: str):
        self.registry = registry
        self.digest = digest
        self.root = registry.root / digest
        self.checkpoints = self.root / CHECKPOINTS_DIR
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self.workspace = Workspace(self.root / WORKSPACE_DIR, write_check=self._write_check)
        self._last_touch = 0.0

    # -- quota --------------------------------------------------------------------------
    def usage(self) -> Usage:
        """Images in the workspace and bytes of every file in the space (symlinks not followed)."""
        total = 0
        for folder, _dirs, files in os.walk(self.root):
            for name in files:
                try:
                    total += os.lstat(os.path.join(folder, name)).st_size
                except OSError:
                    pass  # removed meanwhile (a temp file renamed into place)
        return Usage(len(self.workspace.names()), total)

    def check_room(self, new_bytes: int = 0, new_images: int = 0) -> None:
        """``QuotaExceeded`` unless ``new_bytes`` more bytes and ``new_images`` more images fit."""
        used = self.usage()
        limit_images, limit_bytes = self.registry.max_images, self.registry.max_bytes
        if new_images and used.images + new_images > limit_images:
            raise QuotaExceeded(
                f"Your space holds {used.images} images, the most allowed here is {limit_images}. "
                f"Download your work, or label with the images you have."
            )
        if used.bytes + new_bytes > limit_bytes:
            needs = f", and this needs {new_bytes / MB:.1f} MB more" if new_bytes else ""
            raise QuotaExceeded(
                f"Your space is full: {used.bytes / MB:.1f} MB of {limit_bytes / MB:.0f} MB used"
                f"{needs}. Download your work to keep it."
            )

    def _write_check(self, new_bytes: int, new_images: int) -> None:
        self.touch()
        self.check_room(new_bytes, new_images)

    # -- use and expiry -------------------------------------------------------------------
    def touch(self, force: bool = False) -> None:
        now = self.registry.clock()
        if not force and now - self._last_touch < TOUCH_EVERY_S:
            return
        self._last_touch = now
        marker = self.root / LAST_USED_FILE
        try:
            marker.touch(exist_ok=True)
            os.utime(marker, (now, now))
        except OSError:
            pass  # the space was swept meanwhile; the registry makes a fresh one on the next request

    def last_used(self) -> float:
        return _last_used(self.root)

    # -- checkpoints and download ------------------------------------------------------
    def checkpoint_stem(self, name: str) -> Path:
        """Where a checkpoint called ``name`` goes (``.json``/``.safetensors`` are added): inside the
        space whatever the name, which is sanitised."""
        return safe_join(self.checkpoints, sanitize_name(name, fallback="model"))

    def zip_bytes(self) -> bytes:
        """The visitor's work (workspace and checkpoints) as a zip, taken while no import or save of
        theirs is half-done. Symlinks and leftovers of interrupted writes are left out."""
        self.touch(force=True)
        buf = io.BytesIO()
        with self.workspace.exclusive(), zipfile.ZipFile(buf, "w") as archive:
            for top in (WORKSPACE_DIR, CHECKPOINTS_DIR):
                for path in _regular_files(self.root / top):
                    rel = path.relative_to(self.root).as_posix()
                    method = zipfile.ZIP_STORED if path.suffix.lower() in _STORED_SUFFIXES else zipfile.ZIP_DEFLATED
                    if top == CHECKPOINTS_DIR and path.suffix.lower() == ".json":
                        text = without_server_paths(path.read_text(encoding="utf-8", errors="replace"))
                        archive.writestr(rel, text, compress_type=method)
                    else:
                        archive.write(path, rel, compress_type=method)
        return buf.getvalue()


class VisitorRegistry:
    """Every visitor space under one server-chosen root; one object per process."""

    def __init__(
        self,
        root: str | Path,
        *,
        max_images: int = 200,
        max_bytes: int = 200 * MB,
        expiry_s: float = 24 * 3600.0,
        max_visitors: int = 500,
        clock: Callable[[], float] = time.time,
    ):
        self.root = Path(root).expanduser().resolve()
        self.max_images, self.max_bytes = int(max_images), int(max_bytes)
        self.expiry_s, self.max_visitors = float(expiry_s), int(max_visitors)
        self.clock = clock
        self._lock = threading.RLock()
        self._spaces: dict[str, VisitorSpace] = {}

    @classmethod
    def from_deployment(cls, settings: Deployment, clock: Callable[[], float] = time.time) -> VisitorRegistry:
        return cls(
            settings.visitor_root,
            max_images=settings.visitor_max_images,
            max_bytes=settings.visitor_max_bytes,
            expiry_s=settings.visitor_expiry_s,
            max_visitors=settings.max_visitors,
            clock=clock,
        )

    def space(self, key: str) -> VisitorSpace:
        """The visitor's space, made on first use; touched, so it does not expire while in use."""
        digest = visitor_digest(key)
        with self._lock:
            space = self._spaces.get(digest)
            if space is None or not space.root.is_dir():
                if not (self.root / digest).is_dir() and self._count() >= self.max_visitors:
                    self.sweep()
                    if self._count() >= self.max_visitors:
                        raise ServerFull(
                            "The server has no room for another visitor right now; please try again later."
                        )
                self.root.mkdir(parents=True, exist_ok=True)
                try:
                    space = VisitorSpace(self, digest)
                except WorkspaceError:  # left half-made by a crash: the server made it, so it starts over
                    self._remove(digest)
                    space = VisitorSpace(self, digest)
                self._spaces[digest] = space
                space.touch(force=True)
        space.touch()
        return space

    def existing(self, key: str) -> VisitorSpace | None:
        """The visitor's space if they have one (nothing is made): for showing their work on page load."""
        digest = visitor_digest(key)
        with self._lock:
            if digest in self._spaces and self._spaces[digest].root.is_dir():
                return self.space(key)
            if (self.root / digest / WORKSPACE_DIR).is_dir():
                return self.space(key)
        return None

    def delete(self, key: str) -> bool:
        """Remove the visitor's space now (their own "delete my data"); True when there was one."""
        digest = visitor_digest(key)
        with self._lock:
            self._spaces.pop(digest, None)
            return self._remove(digest)

    def sweep(self, keep: Iterable[str] = ()) -> list[str]:
        """Delete spaces unused for longer than the expiry; returns their digests.

        ``keep``: digests never deleted now (visitors with a training run going, ``RunSlots.owners()``).
        """
        keep = set(keep)
        removed = []
        with self._lock:
            if not self.root.is_dir():
                return []
            now = self.clock()
            for entry in list(self.root.iterdir()):
                name = entry.name
                if name.startswith(".trash-"):
                    shutil.rmtree(entry, ignore_errors=True)  # a sweep interrupted earlier
                    continue
                if not _DIGEST.fullmatch(name) or name in keep or not entry.is_dir() or entry.is_symlink():
                    continue
                if now - _last_used(entry) > self.expiry_s:
                    self._spaces.pop(name, None)
                    if self._remove(name):
                        removed.append(name)
        return removed

    def digests(self) -> list[str]:
        """Digests of the spaces on disk (for the operator's logs; never shown to visitors)."""
        with self._lock:
            return sorted(self._digests())

    def _digests(self) -> list[str]:
        try:
            return [e.name for e in self.root.iterdir() if _DIGEST.fullmatch(e.name) and e.is_dir()]
        except OSError:
            return []

    def _count(self) -> int:
        return len(self._digests())

    def _remove(self, digest: str) -> bool:
        """Move the space aside in one rename (a request now sees it gone, not half-deleted), then delete."""
        target = self.root / digest
        if not target.is_dir() or target.is_symlink():
            return False
        trash = self.root / f".trash-{digest}-{secrets.token_hex(4)}"
        try:
            os.rename(target, trash)
        except OSError:
            return False
        shutil.rmtree(trash, ignore_errors=True)
        return True


def _last_used(space_root: Path) -> float:
    for path in (space_root / LAST_USED_FILE, space_root):
        try:
            return path.stat().st_mtime
        except OSError:
            continue
    return 0.0


def without_server_paths(card_text: str) -> str:
    """A card as a visitor may take it home (``without_paths``); text that is not JSON is cleaned as text."""
    try:
        return json.dumps(without_paths(json.loads(card_text)), indent=1)
    except ValueError:
        return without_paths(card_text)


def _regular_files(folder: Path) -> Iterator[Path]:
    for current, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = Path(current) / name
            if path.is_symlink() or not path.is_file() or (name.startswith(".") and name.endswith(".tmp")):
                continue
            yield path


# -- training runs -----------------------------------------------------------------------------
@dataclass(frozen=True)
class RunClaim:
    """One training run's slot: who started it (a digest, never the raw key) and until when it may run."""

    run_id: str
    owner: str
    label: str
    started: float
    deadline: float | None

    def overdue(self, now: float | None = None) -> bool:
        """True once the run has used its wall-clock allowance (the runner should stop it)."""
        return self.deadline is not None and (time.monotonic() if now is None else now) >= self.deadline


class RunSlots:
    """At most ``limit`` training runs at once, one per visitor; only a run's owner may stop it."""

    def __init__(self, limit: int = 1, max_seconds: float | None = None):
        if int(limit) < 1:
            raise ValueError("limit must be at least 1")
        self.limit = int(limit)
        self.max_seconds = max_seconds
        self._lock = threading.Lock()
        self._claims: dict[str, RunClaim] = {}

    @classmethod
    def from_deployment(cls, settings: Deployment) -> RunSlots:
        if settings.public:
            return cls(settings.public_max_runs, settings.public_max_train_seconds)
        return cls(1)

    def claim(self, key: str, label: str = "") -> RunClaim:
        """A slot for ``key``'s new run; ``RunRefused`` when they have one going or all slots are taken."""
        owner = visitor_digest(key)
        with self._lock:
            if any(c.owner == owner for c in self._claims.values()):
                raise RunRefused("You already have a training run going; stop it or wait for it to finish.")
            if len(self._claims) >= self.limit:
                runs = "run is" if self.limit == 1 else "runs are"
                raise RunRefused(
                    f"{self.limit} training {runs} already going on this server; please try again when it has finished."
                )
            now = time.monotonic()
            claim = RunClaim(
                secrets.token_hex(8), owner, str(label)[:200], now, now + self.max_seconds if self.max_seconds else None
            )
            self._claims[claim.run_id] = claim
            return claim

    def release(self, claim: RunClaim | str | None) -> None:
        """Free the slot (idempotent): call it when the run ends, however it ends."""
        run_id = claim.run_id if isinstance(claim, RunClaim) else claim
        with self._lock:
            self._claims.pop(run_id or "", None)

    @contextmanager
    def running(self, key: str, label: str = "") -> Iterator[RunClaim]:
        claim = self.claim(key, label)
        try:
            yield claim
        finally:
            self.release(claim)

    def claimed_by(self, key: str) -> RunClaim | None:
        owner = visitor_digest(key)
        with self._lock:
            return next((c for c in self._claims.values() if c.owner == owner), None)

    def check_stop(self, key: str, run_id: str | None = None) -> RunClaim:
        """The claim ``key`` may stop (theirs, or the run ``run_id`` if it is theirs); ``RunRefused`` else."""
        owner = visitor_digest(key)
        with self._lock:
            if run_id is None:
                claim = next((c for c in self._claims.values() if c.owner == owner), None)
            else:
                claim = self._claims.get(run_id) if isinstance(run_id, str) else None
            if claim is None:
                raise RunRefused("You have no training run going.")
            if claim.owner != owner:
                raise RunRefused("Only the visitor who started a training run can stop it.")
            return claim

    def may_stop(self, key: str, run_id: str | None = None) -> bool:
        try:
            self.check_stop(key, run_id)
        except VisitorError:
            return False
        return True

    def active(self) -> list[RunClaim]:
        with self._lock:
            return sorted(self._claims.values(), key=lambda c: c.started)

    def owners(self) -> set[str]:
        """Digests of the visitors with a run going (``VisitorRegistry.sweep(keep=...)``)."""
        with self._lock:
            return {c.owner for c in self._claims.values()}
