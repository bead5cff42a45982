"""Untrusted names -> safe file stems, and paths that cannot leave the workspace.

Image names come from uploads and folders the user points at, so they may hold
``..``, slashes, NULs, control characters or reserved device names. Everything the
workspace writes goes through ``sanitize_name`` and then ``safe_join``, which
re-checks the resolved path (symlinks included) against the workspace root.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path, PurePosixPath, PureWindowsPath

#: Longest stem we keep; long enough for camera names, short enough for every filesystem.
MAX_NAME_LENGTH = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                     *(f"lpt{i}" for i in range(1, 10))}
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class UnsafePathError(ValueError):
    """A path would land outside the workspace; the message is user-facing."""


def sanitize_name(raw: str, fallback: str = "image") -> str:
    """A file stem made only of ``[A-Za-z0-9._-]``, with no directory part and no leading dot.

    ``"../../etc/passwd.jpg"`` -> ``"passwd"``; ``"Ünïcode photo (1).JPG"`` -> ``"Unicode_photo_1"``.
    """
    text = unicodedata.normalize("NFKD", str(raw or "")).encode("ascii", "ignore").decode("ascii")
    text = text.replace("\x00", "")
    # Keep only the last path component, whichever separator the client used.
    text = PureWindowsPath(PurePosixPath(text).name).name
    suffix = Path(text).suffix.lower()
    if suffix in _IMAGE_SUFFIXES:
        text = text[: -len(suffix)]
    text = _UNSAFE.sub("_", text).strip("._-")
    text = re.sub(r"_+", "_", text)[:MAX_NAME_LENGTH].strip("._-")
    if not text or text.lower() in _WINDOWS_RESERVED:
        text = f"{fallback}_{text}" if text else fallback
    return text


def is_safe_name(name: str) -> bool:
    """True when ``name`` is already what ``sanitize_name`` would produce."""
    return isinstance(name, str) and bool(name) and sanitize_name(name) == name


def safe_join(root: Path, *parts: str) -> Path:
    """``root / parts`` resolved, refusing anything that escapes ``root`` (``..``, absolute, symlink)."""
    root_resolved = Path(root).resolve()
    for part in parts:
        if not part or "\x00" in part or Path(part).is_absolute() or ".." in Path(part).parts:
            raise UnsafePathError(f"refusing unsafe path component {part!r}")
    target = root_resolved.joinpath(*parts).resolve()
    if target != root_resolved and root_resolved not in target.parents:
        raise UnsafePathError(f"{'/'.join(parts)} resolves outside the workspace")
    return target
