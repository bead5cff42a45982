"""Errors for people: a plain sentence for each expected user error, a logged traceback for the rest.

Anyone can send anything to a public app, so refusals are normal traffic: they are answered in
plain words and logged at INFO without a traceback. The words never carry a server path (a
path becomes its last component), an exception class name or a library's raw text ("Overflow
when unpacking long long", PIL's decompression-bomb warning); an oversized image is told the
pixel limit of ``seg.io``. Anything unexpected gets a generic sentence for the person and a full
traceback in the log for the operator.

Usage in a handler::

    try:
        ...
    except Exception as err:
        raise gr.Error(log_error(log, err, "saving the mask")) from None
"""

from __future__ import annotations

import logging
import re

from seg.deploy import DeploymentError
from seg.io import MAX_PIXELS, ImageLoadError
from seg.labeling.names import UnsafePathError
from seg.labeling.workspace import WorkspaceError
from seg.visitors import VisitorError

#: Longest message shown; longer ones (an echoed 5,000-character name) are cut at a word.
MAX_MESSAGE_LENGTH = 300


class UserError(ValueError):
    """An expected problem with what a person asked for; ``str(err)`` is a plain sentence for them."""


_expected: list[type[BaseException]] = [
    UserError,
    ImageLoadError,
    WorkspaceError,
    UnsafePathError,
    VisitorError,
    DeploymentError,
    OverflowError,
    MemoryError,
]


def register_expected(*types: type[BaseException]) -> None:
    """Add exception types whose ``str()`` is written for people (the UI's ``ModelUnavailable``...)."""
    for kind in types:
        if kind not in _expected:
            _expected.append(kind)


def is_expected(err: BaseException) -> bool:
    """True for refusals and bad input (logged at INFO); False for bugs and server faults."""
    return isinstance(err, tuple(_expected)) or _is_overflow(err) or _is_nan(err)


def user_message(err: BaseException, action: str | None = None) -> str:
    """A plain sentence about ``err`` for the person who caused it; ``action`` ("saving the mask")
    names what failed when the error is unexpected."""
    if isinstance(err, ImageLoadError):
        text = _image_message(str(err))
    elif _is_overflow(err):
        text = "A number you entered is too large or too small."
    elif _is_nan(err):
        text = "A number you entered is not a valid number."
    elif isinstance(err, MemoryError):
        text = "That is too large for this server to process; try a smaller image."
    elif is_expected(err):
        text = str(err)
    else:
        text = ""
    text = clean(text)
    if text:
        return text
    where = f" while {action}" if action else ""
    return f"Something went wrong on the server{where}; the details have been logged for the operator."


def log_error(logger: logging.Logger, err: BaseException, action: str = "handling a request") -> str:
    """Log ``err`` (INFO without traceback when expected, ERROR with it otherwise); return the
    sentence to show."""
    message = user_message(err, action)
    if is_expected(err):
        logger.info("%s refused: %s", action, message)
    else:
        logger.error("%s failed", action, exc_info=(type(err), err, err.__traceback__))
    return message


# -- wording ---------------------------------------------------------------------------------------
_BOMB_SIZE = re.compile(r"(\d+)\s*x\s*(\d+)\s*pixels")
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")
_CLASS_NAME = re.compile(r"\b(?:[A-Za-z_][\w]*\.)*[A-Z]\w*(?:Error|Warning|Exception)\b:?\s*")
_ERRNO = re.compile(r"\[Errno\s*-?\d+\]\s*")
# An absolute path (POSIX, home-relative or Windows) not glued to a preceding word: "train/" and "1/2" stay.
_PATH = re.compile(r"(?<![\w./~\\-])(?:~|[A-Za-z]:)?[/\\][^\s'\"`<>|,;()\[\]{}]*")


def _image_message(text: str) -> str:
    lowered = text.lower()
    limit_mp = f"{MAX_PIXELS / 1e6:.0f}"
    if "decompression" in lowered and "bomb" in lowered:
        size = _BOMB_SIZE.search(text)
        if size:
            w, h = int(size.group(1)), int(size.group(2))
            return f"The image is {w}x{h} pixels ({w * h / 1e6:.0f} megapixels); the limit is {limit_mp} megapixels."
        total = _BOMB_PIXELS.search(text)
        if total:
            return f"The image has {int(total.group(1)) / 1e6:.0f} megapixels; the limit is {limit_mp} megapixels."
        return f"The image has too many pixels; the limit is {limit_mp} megapixels."
    if lowered.startswith("not a readable image"):
        return "The file is not an image that can be read (JPEG, PNG, WebP, BMP, TIFF and GIF can)."
    if lowered.startswith("the image file is corrupt or truncated"):
        return "The image file is corrupt or truncated."
    if "mp); the limit is" in lowered:
        text = re.sub(r"\bMP\b", "megapixels", text)
    if lowered.startswith(("image is ", "file is ", "image has ")):
        text = "The " + text
    return text


def _strip_path(match: re.Match) -> str:
    path = match.group(0).rstrip("/\\.")
    if not path.strip("/\\~"):
        return match.group(0)  # a lone "/" or "~"
    return re.split(r"[/\\]", path)[-1]


def clean(text: str) -> str:
    """``text`` without paths, exception class names or errno tags, capitalised, ending with a
    full stop, at most ``MAX_MESSAGE_LENGTH`` characters."""
    text = (text or "").replace("\x00", "")
    text = _ERRNO.sub("", text)
    text = _CLASS_NAME.sub("", text)
    text = _PATH.sub(_strip_path, text)
    text = " ".join(text.split())
    if len(text) > MAX_MESSAGE_LENGTH:
        text = text[:MAX_MESSAGE_LENGTH].rsplit(" ", 1)[0].rstrip(",;:") + "…"
    text = text.strip(" :")
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?…" else text + "."


def _is_overflow(err: BaseException) -> bool:
    """Python's OverflowError, or torch refusing a huge integer (a ValueError, TypeError or RuntimeError
    whose text carries a C++ stack)."""
    return isinstance(err, OverflowError) or (
        isinstance(err, (ValueError, TypeError, RuntimeError)) and "overflow when unpacking" in str(err).lower()
    )


def _is_nan(err: BaseException) -> bool:
    return isinstance(err, ValueError) and "cannot convert float nan to integer" in str(err).lower()
