"""Handing memory back to the operating system in a long-running process (the app).

A server with many worker threads grows under glibc's malloc, which keeps a heap arena per thread and
rarely returns freed pages (bench/bench_soak.py measured 16 visitors x 20 requests at +310 MB resident
with the default arenas, +140 MB with two). Work that allocates a lot once and then lets it go (a
training run, a serving backend's calibration on val) leaves the heap large unless it is trimmed. So the
app limits the arenas at start-up and trims the heap after such work; both do nothing off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os

#: ``mallopt``'s parameter for the number of heap arenas (glibc's M_ARENA_MAX).
_M_ARENA_MAX = -8


def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's heap arenas (unless ``MALLOC_ARENA_MAX`` says otherwise); call before threads start."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    libc = _libc()
    return bool(libc is not None and libc.mallopt(_M_ARENA_MAX, int(arenas)))


def release_memory() -> bool:
    """Collect garbage and hand freed heap pages back to the OS (after a training run or a calibration)."""
    gc.collect()
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))
