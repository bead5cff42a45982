"""Handing memory back to the operating system in a long-running process (the app).

A server with many worker threads grows under glibc's malloc, which keeps a heap arena per thread and
rarely returns freed pages (bench/bench_soak.py measured 16 visitors x 20 requests at +310 MB resident
with the default arenas, +140 MB with two). Work that allocates a lot once and then lets it go (a
training run, a serving backend's calibration on val) leaves the heap large unless it is trimmed. So the
app limits the arenas at start-up and trims the heap after such work; both do nothing off glibc.

Batch work (training, evaluation, prediction: the ``seglab`` command, the tests) wants the opposite:
glibc hands every block of 128 kB and up (the threshold adapts, to 32 MB at most) to the OS when it is
freed and trims the heap's top past 128 kB, so each step's activations come back as fresh pages that
the kernel zeroes again. ``reuse_freed_memory`` keeps them: the DWT's eager val pass, which spent a sixth
of its time in the kernel, runs about 1.14x faster (docs/experiments.md, "Reusing freed memory").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os

#: ``mallopt``'s parameters (glibc's M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_ARENA_MAX).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -2, -3, -8
#: Blocks below this come from the heap and are reused; glibc refuses more than 32 MB on 64-bit.
MMAP_THRESHOLD = 32 << 20
#: Freed memory at the heap's top kept for the next step, up to this much (a bound on what is held).
TRIM_THRESHOLD = 256 << 20
#: The heap grows by this much beyond a request, so a growing step asks the kernel less often.
TOP_PAD = 64 << 20
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def _libc():
    try:
        libc = ctypes.CDLL(None)  # the process's own symbols: libc's, without find_library's ldconfig call
        if not hasattr(libc, "mallopt"):
            name = ctypes.util.find_library("c")
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


def reuse_freed_memory() -> bool:
    """Keep freed blocks of up to 32 MB and up to 256 MB of the heap's top for reuse (batch processes;
    not the app, which keeps its resident memory low); a ``MALLOC_*_`` setting in the environment wins.
    """
    if any(os.environ.get(name) for name in _MALLOC_ENV):
        return False
    libc = _libc()
    if libc is None:
        return False
    settings = ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD))
    return all(bool(libc.mallopt(param, value)) for param, value in settings)


def release_memory() -> bool:
    """Collect garbage and hand freed heap pages back to the OS (after a training run or a calibration)."""
    gc.collect()
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))


def resident_bytes() -> int | None:
    """This process's resident memory (Linux's ``/proc/self/statm``), or None where it cannot be read."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def trim_above(limit_bytes: int) -> bool:
    """Hand the heap's free pages back when this process holds more than ``limit_bytes``; True when it
    trimmed. No garbage collection, so it is cheap enough after a request: the app calls it after the
    heaviest ones, whose freed buffers glibc would otherwise keep (the next such request pays for
    fresh pages, which is the price of the bound)."""
    resident = resident_bytes()
    if resident is None or resident <= limit_bytes:
        return False
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
