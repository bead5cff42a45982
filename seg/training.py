"""One way to train every model: ``TrainConfig`` in, the engine's events out.

``train(config)`` builds the model, the task (Stanford Background or a labeling workspace
for semantic models; Penn-Fudan for ``dwt`` and ``maskrcnn``), the schedule and the card,
then runs ``seg.engine.run``. The CLI, the dashboard and the experiment runner all call
it, so every model stops the same way (``stop_on_signals``: Ctrl-C or SIGTERM cuts the step in
progress short, keeping the best checkpoint and a final card) and resumes the same way
(``resume=True`` continues an interrupted run from its last finished epoch, exactly).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import torch

from seg.engine import distributed_context, run, seed_everything
from seg.instances.task import prepare_instances
from seg.resume import clear_state
from seg.semantic_task import prepare_semantic
from seg.train_config import InstanceOptions, Prepared, SemanticOptions, TrainConfig, default_command

__all__ = ["InstanceOptions", "Prepared", "SemanticOptions", "TrainConfig", "prepare", "stop_on_signals", "train"]

#: how each task builds its run (the task of a model comes from the model registry)
PREPARE = {"semantic": prepare_semantic, "instances": prepare_instances}


def prepare(config: TrainConfig) -> Prepared:
    """The model, task, stages and card for ``config`` (the task's own module builds them)."""
    if config.task not in PREPARE:
        raise ValueError(f"model {config.model!r} has no training task")
    return PREPARE[config.task](config)


def train(
    config: TrainConfig, stop_event: threading.Event | None = None, resume: bool = False, log_every: int = 10
) -> Iterator[dict]:
    """Train ``config`` and yield the engine's events (start, step, epoch, done).

    ``resume``: continue the run whose state lies beside ``config.out`` (``seg.resume``).
    A run that ends without being stopped removes its state files. ``log_every``: a "step" event
    every that many steps (the dashboard asks for every step, to move its progress bar).
    """
    seed_everything(config.seed)
    rank, _ = distributed_context()
    prepared = prepare(config)
    if prepared.fit is not None:
        yield from prepared.fit()
        return
    device = torch.device(config.device) if config.device else None
    stopped = True
    for event in run(
        prepared.model,
        prepared.task,
        prepared.stages,
        out=config.out if rank == 0 else None,
        card=prepared.card,
        seed=config.seed,
        stop_event=stop_event,
        device=device,
        log_every=log_every,
        weight_decay=config.weight_decay,
        precision=config.precision,
        ema_decay=config.ema_decay,
        resume=resume,
        run_config=config.to_dict() | {"command": default_command(config)},
    ):
        if event["type"] == "done":
            stopped = bool(event["stopped"])
        yield event
    if not stopped and config.out and rank == 0:
        clear_state(config.out)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """Ctrl-C / SIGTERM set the returned event: the engine stops between steps and keeps the
    best checkpoint; a second signal aborts at once. Off the main thread (the dashboard) the
    event is just returned: there, the Stop button sets it."""
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:  # noqa: ARG001
        if stop.is_set():
            raise KeyboardInterrupt
        print("\nstopping after this step (again to abort)...", file=sys.stderr)
        stop.set()

    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
