"""Helpers shared by the benchmarks: timing and the data location."""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from seg.config import dataset_dir  # noqa: E402
from seg.memory import reuse_freed_memory  # noqa: E402

reuse_freed_memory()  # as the seglab command does (seg.memory)


def sbd_dir_or_exit() -> Path:
    root = dataset_dir("sbd")
    if not (root / "images").is_dir():
        sys.exit(f"Stanford Background not found at {root}: set SEG_DATA_DIR or run python -m seg download sbd")
    return root


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 2) -> list[float]:
    """Seconds per call, after warm-up calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def threads_from_env(default: int = 2) -> int:
    import torch

    n = int(os.environ.get("BENCH_THREADS", default))
    torch.set_num_threads(n)
    return n
