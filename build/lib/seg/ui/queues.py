"""Concurrency groups of the dashboard's events: inference shares a small pool, training has its own."""

from __future__ import annotations

import os

#: Concurrency id of every inference event (segment, augment, instances, prefill).
INFERENCE_QUEUE = "inference"
#: Concurrency id of the training stream, so following a run never takes an inference slot.
TRAIN_QUEUE = "training"


def inference_concurrency() -> int:
    """Concurrent inference jobs: one per two cores, at least 1, at most 4 (``SEG_UI_WORKERS`` overrides)."""
    env = os.environ.get("SEG_UI_WORKERS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(4, (os.cpu_count() or 2) // 2))
