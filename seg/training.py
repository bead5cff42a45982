"""One way to train every model: ``TrainConfig`` in, the engine's events out.

``train(config)`` builds the model, the task (Stanford Background or a labeling workspace
for semantic models; Penn-Fudan for ``dwt`` and ``maskrcnn``), the schedule and the card,
then runs ``seg.engine.run``. The CLI, the dashboard and the experiment runner all call
it, so every model stops the same way (``stop_on_signals``: Ctrl-C or SIGTERM ends the run
between steps, keeping the best checkpoint and a final card) and resumes the same way
(``resume=True`` continues an interrupted run from its last finished epoch, exactly).
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import sys
import threading
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Iterator

from seg.models import task_of


@dataclass
class SemanticOptions:
    """Settings only semantic models have (the assignment's augmentation and loss knobs)."""

    crop_fraction: tuple[float, float] | None = (0.25, 1.0)
    flip_p: float = 0.5
    color_jitter: float = 0.2
    #: (width, height) of training crops; None = the full image size
    train_size: tuple[int, int] | None = None
    class_weighting: str = "inverse_sqrt"  # none | inverse_sqrt | inverse
    #: epochs with the encoder frozen before it is unfrozen (None: 3 for resunet, else 0)
    frozen_epochs: int | None = None
    encoder_lr_ratio: float = 0.1
    val_split: str = "val"


@dataclass
class InstanceOptions:
    """Settings only the instance models have (Penn-Fudan crops and the DWT's working size and loss)."""

    crop: int | None = None  # training crop side in px (dwt 224, maskrcnn 320)
    work_height: int | None = None  # dwt: image height it is trained and run at (default 224)
    fg_balance: float | None = None  # dwt: size-balanced foreground loss term
    val_images: int | None = None  # validate on the first N val images


@dataclass
class TrainConfig:
    """Everything a training run needs; the shared fields exist once, each task's own in its options."""

    model: str = "unet"
    data_dir: str = ""
    out: str | None = None
    epochs: int = 30
    lr: float = 2e-3
    batch_size: int | None = None  # semantic 8, dwt 4, maskrcnn 2
    weight_decay: float = 1e-4
    seed: int = 0
    encoder_init: str = "none"
    model_kwargs: dict = field(default_factory=dict)
    limit: int | None = None  # only the first N images of each split (smoke tests)
    device: str | None = None
    precision: str = "auto"  # see seg.engine.resolve_precision
    ema_decay: float | None = None
    init_from: str | None = None  # warm restart from a checkpoint (lineage on the card)
    command: str | None = None
    semantic: SemanticOptions = field(default_factory=SemanticOptions)
    instances: InstanceOptions = field(default_factory=InstanceOptions)

    @property
    def task(self) -> str:
        return task_of(self.model)

    def to_dict(self) -> dict:
        """The config as the card and the resume state record it (only the task's own options)."""
        data = {k: v for k, v in asdict(self).items() if k not in ("semantic", "instances", "command")}
        data[self.task] = asdict(self.semantic if self.task == "semantic" else self.instances)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Inverse of ``to_dict`` (JSON lists become tuples again); unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(unknown)}")
        values = dict(data)
        sem, inst = values.pop("semantic", None) or {}, values.pop("instances", None) or {}
        for key in ("crop_fraction", "train_size"):
            if isinstance(sem.get(key), list):
                sem[key] = tuple(sem[key])
        return cls(**values, semantic=SemanticOptions(**sem), instances=InstanceOptions(**inst))


@dataclass
class Prepared:
    """What a task's ``prepare`` hands the engine; ``fit`` replaces the engine for models without gradients."""

    model: Any
    task: Any
    stages: list
    card: dict
    fit: Callable[[], Iterator[dict]] | None = None


def default_command(config: TrainConfig) -> str:
    return config.command or " ".join(shlex.quote(a) for a in sys.argv)


def prepare(config: TrainConfig) -> Prepared:
    """The model, task, stages and card for ``config`` (the task's own module builds them)."""
    if config.task == "semantic":
        from seg.semantic_task import prepare_semantic

        return prepare_semantic(config)
    if config.task == "instances":
        from seg.instances.task import prepare_instances

        return prepare_instances(config)
    raise ValueError(f"model {config.model!r} has no training task")


def train(config: TrainConfig, stop_event: threading.Event | None = None, resume: bool = False) -> Iterator[dict]:
    """Train ``config`` and yield the engine's events (start, step, epoch, done).

    ``resume``: continue the run whose state lies beside ``config.out`` (``seg.resume``).
    A run that ends without being stopped removes its state files.
    """
    import torch

    from seg.engine import distributed_context, run, seed_everything
    from seg.resume import clear_state

    seed_everything(config.seed)
    rank, _ = distributed_context()
    prepared = prepare(config)
    if prepared.fit is not None:
        yield from prepared.fit()
        return
    device = torch.device(config.device) if config.device else None
    stopped = True
    for event in run(prepared.model, prepared.task, prepared.stages, out=config.out if rank == 0 else None,
                     card=prepared.card, seed=config.seed, stop_event=stop_event, device=device,
                     weight_decay=config.weight_decay, precision=config.precision, ema_decay=config.ema_decay,
                     resume=resume, run_config=config.to_dict() | {"command": default_command(config)}):
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
