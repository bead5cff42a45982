"""Per-process scratch files handed to the browser as downloads (label PNGs, zips), swept after an
hour. (Handing freed memory back to the operating system lives in ``seg.memory``.)
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from seg.io import encode_png, label_to_png_image

#: This process's scratch folder (Gradio copies served files into its own cache).
SCRATCH_DIR = Path(tempfile.gettempdir()) / f"seglab-ui-{os.getpid()}"
#: Scratch files older than this are deleted (Gradio has copied them to its own cache by then).
SCRATCH_MAX_AGE_S = 3600
#: Every this many new paths, old scratch entries are swept.
SWEEP_EVERY = 200

_calls = 0
_calls_lock = threading.Lock()


def scratch_path(suffix: str) -> Path:
    """A fresh, unique path in the scratch folder; every ``SWEEP_EVERY``-th call sweeps old entries."""
    global _calls
    SCRATCH_DIR.mkdir(parents=True, exist_ok=True)
    with _calls_lock:
        _calls += 1
        sweep = _calls % SWEEP_EVERY == 0
    if sweep:
        sweep_scratch()
    return SCRATCH_DIR / f"{uuid.uuid4().hex}{suffix}"


def sweep_scratch(max_age_s: float = SCRATCH_MAX_AGE_S) -> None:
    """Delete scratch entries older than ``max_age_s`` so a long-running app does not fill /tmp."""
    cutoff = time.time() - max_age_s
    for entry in SCRATCH_DIR.iterdir():
        try:
            if entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        except OSError:
            pass  # another request may be removing it too


def write_scratch(path: Path, data: bytes) -> None:
    """Atomic (temp file + rename) but without fsync: scratch files are per-request and
    disposable, and an fsync per request would cost more than the inference on a busy disk."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def label_png(label: np.ndarray, palette: list[tuple[int, int, int]], stem: str = "label") -> str:
    """Write the class-id map as a palette PNG (pixel value = class id) and return its path."""
    path = scratch_path("") / f"{_file_safe(stem)}.png"  # unique folder, readable file name
    path.parent.mkdir(parents=True, exist_ok=True)
    write_scratch(path, encode_png(label_to_png_image(label, palette)))
    return str(path)


def _file_safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:40] or "x"
