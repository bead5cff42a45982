"""``train_instances``: build the model, task, schedule and card, then run the project's engine.

The CLI's ``train --model dwt|maskrcnn`` and the dashboard call this (mirrors
``seg.train_semantic.train_semantic``); it yields the engine's events.
"""

from __future__ import annotations

import shlex
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from seg.engine import Stage, distributed_context, run, seed_everything
from seg.instances.task import make_task
from seg.models import create
from seg.models.encoders import describe_init


@dataclass
class InstanceTrainConfig:
    model: str = "dwt"  # dwt | maskrcnn
    data_dir: str = ""
    out: str | None = None
    epochs: int = 40
    lr: float = 2e-3
    batch_size: int | None = None  # dwt 4, maskrcnn 2
    crop: int | None = None  # dwt 224, maskrcnn 320
    weight_decay: float = 1e-4
    seed: int = 0
    encoder_init: str = "none"
    model_kwargs: dict = field(default_factory=dict)
    max_images: int | None = None
    val_images: int | None = None
    device: str | None = None
    command: str | None = None
    precision: str = "auto"  # see seg.engine.resolve_precision


def build_model(config: InstanceTrainConfig) -> torch.nn.Module:
    kwargs = dict(config.model_kwargs)
    if config.model == "maskrcnn" or kwargs.get("backbone") == "resunet":
        kwargs["encoder_init"] = config.encoder_init
    elif config.encoder_init != "none":
        raise ValueError("the DWT's U-Net body has no pretrained encoder; use backbone=resunet for encoder_init")
    return create(config.model, num_classes=2, **kwargs)


def train_instances(config: InstanceTrainConfig, stop_event: threading.Event | None = None) -> Iterator[dict]:
    seed_everything(config.seed)
    rank, _ = distributed_context()
    task = make_task(config.model, Path(config.data_dir), config.batch_size, config.crop, config.seed,
                     config.max_images, config.val_images)
    model = build_model(config)
    card = {
        **task.card_info(),
        "encoder_init": describe_init(config.encoder_init),
        "pretrained": config.encoder_init != "none",
        "config": {k: v for k, v in asdict(config).items() if k != "command"},
        "command": config.command or " ".join(shlex.quote(a) for a in sys.argv),
        "seed": config.seed,
    }
    device = torch.device(config.device) if config.device else None
    yield from run(model, task, [Stage("main", config.epochs, config.lr)], out=config.out if rank == 0 else None,
                   card=card, seed=config.seed, stop_event=stop_event, device=device,
                   weight_decay=config.weight_decay, precision=config.precision)
