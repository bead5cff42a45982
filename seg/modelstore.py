"""Checkpoint folders -> named, lazily loaded, cached predictors (the dashboard, scripts and benches share it).

A store reads one or more checkpoint folders, each read-only or writable: for example the
shipped folder read-only with a visitor's own folder on top. Names are unique across the
folders: the first folder holding a name owns it, so a later folder can never shadow a
shipped model, and ``path_for_new`` refuses a name that is taken anywhere. Stores made with
``overlay`` share their loaded models, so the shipped checkpoints load once per process
however many overlays there are.

Thread-safe: event handlers run on worker threads, so loading is guarded by a per-file lock
(a model loads once even when eight clients ask at the same moment). A checkpoint that fails
to list or load stays in ``unavailable()`` with its reason instead of crashing the caller.
"""

from __future__ import annotations

import html
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from seg.cards import beside
from seg.checkpoints import list_checkpoints
from seg.config import checkpoint_dir
from seg.inference import Predictor
from seg.instances.inference import InstancePredictor
from seg.runtime import serving_defaults

log = logging.getLogger("seg.modelstore")

#: How each task's checkpoints become predictors (the card's ``task``; absent means semantic).
PREDICTOR_LOADERS: dict[str, Callable[[Path], Any]] = {
    "semantic": Predictor.from_checkpoint,
    "instances": InstancePredictor.from_checkpoint,
}


class ModelUnavailable(KeyError):
    """A model name that is unknown or whose checkpoint cannot be loaded; ``reason`` is user-facing."""

    def __init__(self, name: str, reason: str):
        super().__init__(name)
        self.name = name
        self.reason = reason

    def __str__(self) -> str:  # KeyError would quote the name
        return f"model {self.name!r} is unavailable: {self.reason}"


class CheckpointNameTaken(ValueError):
    """A new checkpoint would reuse a name that a folder of the store already holds."""


class ReadOnlyStore(PermissionError):
    """The store has no writable folder, so nothing new can be saved through it."""


@dataclass(frozen=True)
class CheckpointFolder:
    """One folder of checkpoints; ``label`` names it to people (never the server path)."""

    path: Path
    writable: bool = False
    label: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path).expanduser().resolve())
        if not self.label:
            object.__setattr__(self, "label", self.path.name or "checkpoints")


@dataclass
class ModelEntry:
    """One listed checkpoint; ``error`` set means listed as unavailable, with the reason."""

    name: str
    path: Path | None
    card: dict | None
    error: str | None
    folder: CheckpointFolder | None = None

    @property
    def task(self) -> str:
        return str((self.card or {}).get("task", "semantic"))

    @property
    def writable(self) -> bool:
        """Whether the checkpoint lives in a writable folder (a shipped one never does)."""
        return bool(self.folder and self.folder.writable)


def _stamp(stem: Path | None) -> tuple:
    """Identity of a checkpoint's files (mtime and size of card and weights), to notice replacement."""
    if stem is None:
        return ()
    out = []
    for suffix in (".json", ".safetensors"):
        try:
            st = beside(stem, suffix).stat()
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


def _load_predictor(entry: ModelEntry) -> Any:
    if entry.path is None:
        raise ModelUnavailable(entry.name, "no checkpoint file")
    loader = PREDICTOR_LOADERS.get(entry.task)
    if loader is None:
        raise ModelUnavailable(entry.name, f"checkpoints of task {entry.task!r} cannot be served")
    # served as ``predict`` serves: the runtime measured fastest (``$SEG_RUNTIME`` overrides), prepared
    # in the background while eager PyTorch answers, so loading never waits for an export
    with serving_defaults("auto", deferred=True):
        return loader(entry.path)


class LoadedModels:
    """Predictors keyed by checkpoint file, valid while the files are unchanged; shareable by stores."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._file_locks: dict[str, threading.Lock] = {}
        self._loaded: dict[str, tuple[tuple, Any]] = {}  # file stem -> (files' stamp at load, predictor)
        self._failed: dict[str, tuple[tuple, str]] = {}  # file stem -> (files' stamp, reason)

    def failure(self, path: Path | None) -> str | None:
        """Why these exact files failed to load before (``None`` if they did not, or changed since)."""
        with self._lock:
            failed = self._failed.get(str(path))
        return failed[1] if failed and failed[0] == _stamp(path) else None

    def get(self, entry: ModelEntry) -> Any:
        """The entry's predictor, loaded on first use; ``ModelUnavailable`` (remembered) when it fails."""
        key, stamp = str(entry.path), _stamp(entry.path)
        with self._lock:
            cached = self._loaded.get(key)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            file_lock = self._file_locks.setdefault(key, threading.Lock())
        with file_lock:
            with self._lock:
                cached = self._loaded.get(key)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            try:
                predictor = _load_predictor(entry)
            except ModelUnavailable as err:
                reason = err.reason
            except Exception as err:  # noqa: BLE001 - any broken file must become a listed reason
                log.warning("checkpoint %s failed to load: %s: %s", entry.name, type(err).__name__, err)
                reason = f"failed to load: {err}"
            else:
                with self._lock:
                    self._loaded[key] = (stamp, predictor)
                return predictor
            with self._lock:
                self._failed[key] = (stamp, reason)
            raise ModelUnavailable(entry.name, reason) from None

    def prune(self) -> None:
        """Forget predictors whose files were replaced or removed (frees their memory)."""
        with self._lock:
            for key, (stamp, _) in list(self._loaded.items()):
                if _stamp(Path(key)) != stamp:
                    del self._loaded[key]


def _as_folders(folders: Iterable[CheckpointFolder | str | Path]) -> tuple[CheckpointFolder, ...]:
    return tuple(f if isinstance(f, CheckpointFolder) else CheckpointFolder(Path(f), writable=True) for f in folders)


class ModelStore:
    """Named checkpoints from one or more folders, with cached predictors shared by all callers.

    ``ModelStore(directory)`` reads one writable folder (``SEG_CHECKPOINT_DIR`` or the checkout's
    ``checkpoints/`` by default); ``ModelStore(folders=[...])`` reads several, earlier folders
    owning a name first. ``loaded`` shares predictors with another store (see ``overlay``).
    """

    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        folders: Iterable[CheckpointFolder | str | Path] | None = None,
        loaded: LoadedModels | None = None,
    ):
        if folders is not None and directory is not None:
            raise ValueError("give either a directory or folders, not both")
        self.folders = (
            _as_folders(folders)
            if folders is not None
            else (CheckpointFolder(Path(directory) if directory else checkpoint_dir(), writable=True),)
        )
        if not self.folders:
            raise ValueError("a model store needs at least one folder")
        self._models = loaded or LoadedModels()
        self._lock = threading.RLock()
        self._entries: dict[str, ModelEntry] = {}
        self._taken: set[str] = set()  # every name on disk, listable or not, in any folder
        self._listeners: list[Callable[[], None]] = []
        self.refresh()

    def overlay(self, directory: str | Path, label: str = "") -> ModelStore:
        """A store that sees this one's folders read-only plus ``directory`` as its one writable folder.

        Loaded models are shared with this store; names already here cannot be reused there.
        """
        base = tuple(replace(f, writable=False) for f in self.folders)
        return ModelStore(
            folders=base + (CheckpointFolder(Path(directory), writable=True, label=label),), loaded=self._models
        )

    # -- folders ------------------------------------------------------------------------------
    @property
    def writable_folder(self) -> CheckpointFolder | None:
        """The folder new checkpoints go to: the first writable one (``None`` when all are read-only)."""
        return next((f for f in self.folders if f.writable), None)

    @property
    def directory(self) -> Path:
        """Path of the writable folder; ``ReadOnlyStore`` when every folder is read-only."""
        folder = self.writable_folder
        if folder is None:
            raise ReadOnlyStore("every checkpoint folder of this store is read-only")
        return folder.path

    def name_taken(self, name: str) -> bool:
        """Whether any folder holds a checkpoint of this name (usable, broken or shadowed), as of now."""
        stem = Path(name).name
        return stem in self._taken or any(
            beside(f.path / stem, s).exists() for f in self.folders for s in (".json", ".safetensors")
        )

    def path_for_new(self, name: str) -> Path:
        """Where a new checkpoint called ``name`` is saved (a file stem in the writable folder).

        Raises ``ReadOnlyStore`` without a writable folder and ``CheckpointNameTaken`` when the
        name exists in any folder, so a new model can never hide or replace a listed one.
        """
        if not name or Path(name).name != name or name.startswith("."):
            raise ValueError("a checkpoint name is a plain file name")
        target = self.directory / name
        if self.name_taken(name):
            raise CheckpointNameTaken(f"a checkpoint named {name!r} exists already; choose another name")
        return target

    # -- listing ------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-scan the folders (after training); predictors of unchanged files stay loaded."""
        entries: dict[str, ModelEntry] = {}
        taken: set[str] = set()
        for folder in self.folders:
            try:
                infos = list_checkpoints(folder.path)
            except OSError as err:  # an unreadable folder: the others still work
                log.warning("cannot list checkpoints in %s: %s", folder.path, err)
                key = f"({folder.label})"
                entries.setdefault(key, ModelEntry(key, None, None, "cannot list this checkpoint folder", folder))
                continue
            for info in infos:
                taken.add(info.name)
                if info.name in entries:
                    log.info(
                        "checkpoint %s in %s is hidden by the one in %s",
                        info.name,
                        folder.label,
                        entries[info.name].folder.label if entries[info.name].folder else "?",
                    )
                    continue
                entry = ModelEntry(info.name, Path(info.path) if info.path else None, info.card, info.error, folder)
                if entry.error is None:
                    entry.error = self._models.failure(entry.path)  # same files failed before: still unavailable
                entries[info.name] = entry
        with self._lock:
            self._entries = entries
            self._taken = taken
        self._models.prune()
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:  # a listener must not break refresh for the others
                log.exception("model store listener failed")

    def on_refresh(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every ``refresh`` (lists of model names can follow it)."""
        self._listeners.append(callback)

    def names(self, task: str | None = "semantic") -> list[str]:
        """Available (listable, not known-broken) model names for ``task``; ``None`` = every task."""
        with self._lock:
            return sorted(n for n, e in self._entries.items() if e.error is None and (task is None or e.task == task))

    def best(self, task: str = "semantic", k: int = 2) -> list[str]:
        """The ``k`` available models with the highest validation score on their cards
        (mIoU, or mask AP for instance models): sensible default selections."""

        def score(name: str) -> float:
            metrics = self.card(name).get("val_metrics") or {}
            value = metrics.get("miou", metrics.get("mask_ap"))
            return float(value) if isinstance(value, (int, float)) else -1.0

        return sorted(self.names(task), key=lambda n: (-score(n), n))[:k]

    def unavailable(self) -> dict[str, str]:
        """name -> reason for every listed checkpoint that cannot be used."""
        with self._lock:
            return {n: e.error for n, e in sorted(self._entries.items()) if e.error}

    def entry(self, name: str) -> ModelEntry:
        """The usable entry of ``name``; ``ModelUnavailable`` when unknown or broken."""
        with self._lock:
            entry = self._entries.get(name)
        if entry is None:
            raise ModelUnavailable(name, "no such checkpoint")
        if entry.error:
            raise ModelUnavailable(name, entry.error)
        return entry

    def card(self, name: str) -> dict:
        """The checkpoint's JSON card (metrics, classes, palette, curve...), as a copy."""
        return dict(self.entry(name).card or {})

    # -- loading ------------------------------------------------------------------------------
    def predictor(self, name: str) -> Any:
        """The cached predictor for ``name`` (``seg.inference.Predictor`` or ``InstancePredictor``).

        Raises ``ModelUnavailable``; a checkpoint that fails to load is marked unavailable with
        the reason, so the next caller sees it in the lists.
        """
        entry = self.entry(name)
        try:
            return self._models.get(entry)
        except ModelUnavailable as err:
            with self._lock:
                if self._entries.get(name) is entry:
                    entry.error = err.reason
            raise

    def preload(self) -> None:
        """Load every listed model now, so a corrupt checkpoint shows as unavailable from the start
        (its card alone may look fine) and the first request does not pay the loading time.

        The page's default choices (the two best semantic models) load first: a visitor's first
        segmentation is the request most likely to arrive while this runs.
        """
        first = self.best("semantic", 2)
        for name in first + [n for n in self.names(None) if n not in first]:
            try:
                self.predictor(name)
            except ModelUnavailable:
                pass  # recorded in unavailable() with the reason

    def describe(self) -> str:
        """Markdown list of the unavailable models with their reasons (empty when all load)."""
        bad = self.unavailable()
        return "\n".join(f"- **{html.escape(n)}** unavailable: {html.escape(r)}" for n, r in bad.items())
