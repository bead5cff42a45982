"""Images from visitors (uploads, pasted images, API payloads) decoded for the tabs.

A file input reaches a handler as a path on the server. Gradio checks that path only when it
comes in the shape of a file payload; an event that skips Gradio's preprocessing can receive any
string or ``{"path": ...}`` a client sends. So ``read_image`` reads a path only where images
legitimately come from: Gradio's upload and cache folder, the generated examples, and the datasets
under the data root. Anything else is refused without saying whether it exists.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from seg.config import REPO_ROOT, data_root
from seg.errors import user_message
from seg.io import ImageLoadError, load_image

#: Longest side of an image the dashboard works on; bigger uploads are downscaled
#: before inference and display (CPU latency and browser payload stay bounded).
WORK_MAX_SIDE = 1024
#: The generated example images offered by ``gr.Examples``.
EXAMPLES_DIR = REPO_ROOT / "assets" / "examples"


def upload_folder() -> Path:
    """Gradio's folder for uploads and served outputs (``GRADIO_TEMP_DIR``, else ``<tmp>/gradio``)."""
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder()).resolve()


#: Prefix of the per-process Gradio folders ``claim_upload_folder`` makes under ``<tmp>/gradio``.
OWN_FOLDER_PREFIX = "seglab-"


def claim_upload_folder() -> Path:
    """Give this process a Gradio folder of its own, unless ``GRADIO_TEMP_DIR`` names one.

    Gradio names a cached output by its content, and an app deletes every file it created when it
    shuts down. Two apps sharing the default folder (a second dashboard on the same machine, or a
    restart that overlaps the old process) would delete pictures the other one is still showing:
    the same original image in an augmentation grid is the same file for both. Folders left by
    processes that no longer run (killed before they could clean up) are removed here. Another
    process's own folder, inherited through the environment from the process that started this one,
    is not a choice: this process claims its own.
    """
    shared = Path(tempfile.gettempdir()) / "gradio"
    own = shared / f"{OWN_FOLDER_PREFIX}{os.getpid()}"
    chosen = Path(os.environ.get("GRADIO_TEMP_DIR") or shared)
    claimed = chosen.parent == shared and chosen.name.startswith(OWN_FOLDER_PREFIX)  # by this process or its parent
    if chosen == own or (chosen != shared and not claimed):
        return upload_folder()
    for folder in shared.glob(f"{OWN_FOLDER_PREFIX}*"):
        pid = folder.name.removeprefix(OWN_FOLDER_PREFIX)
        if folder != own and pid.isdigit() and not _running(int(pid)) and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)
    own.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(own)
    return upload_folder()


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists (assumed so where signal 0 is no probe: on Windows it is Ctrl-C)."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError):  # another user's process, or a name that is no pid
        return True
    return True


def readable_roots() -> list[Path]:
    """Folders an image path from an event may point into."""
    return [upload_folder(), EXAMPLES_DIR.resolve(), data_root()]


def check_readable_path(source: str | os.PathLike) -> Path:
    """``source`` resolved, when it lies in one of ``readable_roots``; else ``gr.Error``."""
    text = os.fspath(source)
    if not text or "\x00" in text or len(text) > 4096:
        raise gr.Error("Upload the image again; that file reference is not valid.", print_exception=False)
    try:
        path = Path(text).resolve()
    except (OSError, RuntimeError, ValueError):
        raise gr.Error("Upload the image again; that file reference is not valid.", print_exception=False) from None
    if not any(path.is_relative_to(root) for root in readable_roots()):
        raise gr.Error("Images come from an upload or an example here; upload the image.", print_exception=False)
    return path


def read_image(source: Any, what: str = "image") -> np.ndarray:
    """Decode an upload (file path, bytes, array) with ``seg.io.load_image``; user errors -> ``gr.Error``.

    Downscales to ``WORK_MAX_SIDE`` so a huge upload costs the same as a normal one. A path is read
    only inside ``readable_roots`` (see the module docstring).
    """
    if isinstance(source, dict):  # gr.File / ImageData payloads from the API
        source = source.get("path") or source.get("name")
    if source is None or (isinstance(source, str) and not source):
        raise gr.Error(f"Upload an {what} or pick an example first.", print_exception=False)
    if isinstance(source, (str, os.PathLike)):
        source = check_readable_path(source)
    elif not isinstance(source, (bytes, bytearray, np.ndarray)):
        raise gr.Error(f"Upload an {what} or pick an example first.", print_exception=False)
    try:
        return load_image(source, max_side=WORK_MAX_SIDE)
    except (ImageLoadError, MemoryError, OverflowError) as err:
        raise gr.Error(f"Cannot read the {what}: {user_message(err)}", print_exception=False) from None
