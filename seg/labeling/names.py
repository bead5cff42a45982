"""Untrusted names -> safe file stems, and paths that cannot leave the workspace.

Image names come from uploads and folders the user points at, so they may hold
``..``, slashes, NULs, control characters or reserved device names. Everything the
workspace writes goes through ``sanitize_name`` and then ``safe_join``, which
re-checks the resolved path (symlinks included) against the workspace root.
Workspace names (``check_workspace_name``) are stricter: refused, never rewritten.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path, PurePosixPath, PureWindowsPath

#: Longest stem we keep; long enough for camera names, short enough for every filesystem.
MAX_NAME_LENGTH = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class UnsafePathError(ValueError):
    """A path would land outside the workspace; the message is user-facing."""


#: Longest workspace name: a name to pick from a list, not a place to smuggle a path.
MAX_WORKSPACE_NAME_LENGTH = 64
_WORKSPACE_NAME = re.compile(r"[A-Za-z0-9._-]+")


def check_workspace_name(raw: object) -> str:
    """``raw`` (stripped) when it is a plain folder name, else ``UnsafePathError`` saying why.

    Unlike ``sanitize_name`` this never rewrites: a workspace name picks a folder, so a name that
    would need changing is refused rather than silently mapped onto another (perhaps existing) one.
    The messages never echo the input, which may be thousands of characters long.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise UnsafePathError("Type a name for the workspace.")
    name = raw.strip()
    if "\x00" in name:
        raise UnsafePathError("A workspace name cannot contain a null character.")
    if len(name) > MAX_WORKSPACE_NAME_LENGTH:
        raise UnsafePathError(f"A workspace name can be at most {MAX_WORKSPACE_NAME_LENGTH} characters long.")
    if "/" in name or "\\" in name or name.startswith("~"):
        raise UnsafePathError("A workspace is chosen by name, not by path: use no slashes and no '~'.")
    if name.startswith(".") or ".." in name:
        raise UnsafePathError("A workspace name cannot start with a dot or contain '..'.")
    if not _WORKSPACE_NAME.fullmatch(name):
        raise UnsafePathError("A workspace name may hold only letters, digits, '.', '_' and '-'.")
    if name.split(".")[0].lower() in _WINDOWS_RESERVED:
        raise UnsafePathError("That name is reserved by some operating systems; choose another.")
    return name


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
