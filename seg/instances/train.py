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

from seg.checkpoints import continued_init
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
    work_height: int | None = None  # dwt only: image height it is trained (and then run) at; default 224
    fg_balance: float | None = None  # dwt only: size-balanced foreground loss term (seg.instances.losses)
    weight_decay: float = 1e-4
    seed: int = 0
    encoder_init: str = "none"
    model_kwargs: dict = field(default_factory=dict)
    max_images: int | None = None
    val_images: int | None = None
    device: str | None = None
    command: str | None = None
    precision: str = "auto"  # see seg.engine.resolve_precision
    ema_decay: float | None = None  # validate/save a moving average of the weights (seg.engine.run)
    init_from: str | None = None  # a dwt checkpoint (warm restart) or a semantic one of the DWT's body


def init_from_checkpoint(model: torch.nn.Module, path: str) -> dict:
    """Start from an earlier checkpoint; returns what the card records about it.

    A checkpoint of the same architecture is a warm restart (every weight). For the DWT, a
    *semantic* checkpoint of its body's architecture (e.g. the Stanford Background ``unet``)
    initialises the body, everything but the semantic head: transfer from the project's own
    scene-parsing model, whose "foreground object" class includes people. Shapes must
    match exactly; nothing is skipped silently.
    """
    from seg.checkpoints import lineage, load_checkpoint

    previous, card = load_checkpoint(path)
    arch = card.get("architecture")
    semantic = card.get("task", "semantic") == "semantic"
    source = dict(lineage(card), dataset=card.get("dataset") or ("stanford-background" if semantic else None),
                  its_val_metrics={k: v for k, v in (card.get("val_metrics") or {}).items()
                                   if isinstance(v, (int, float))})
    if arch == getattr(model, "arch_name", None):
        model.load_state_dict(previous.state_dict())
        return dict(source, loaded="all weights (warm restart)")
    body = getattr(model, "backbone", None)
    if body is None or arch != getattr(body, "arch_name", None):
        raise ValueError(f"--init-from {path}: a {arch!r} checkpoint cannot initialise a "
                         f"{getattr(model, 'arch_name', None)!r} model")
    state = {k: v for k, v in previous.state_dict().items() if not k.startswith("head.")}
    own = body.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in state if k in own and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"--init-from {path}: its {arch} body does not match this model's "
                         f"({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} mis-shaped tensors); "
                         "use the same --arch values")
    body.load_state_dict(state)
    # transfer from another task: its epochs are not this model's, so no running totals
    return dict(source, loaded=f"the {arch} body (all but its semantic head); both DWT heads start fresh",
                total_epochs=None, total_training_time_s=None)


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
                     config.max_images, config.val_images, config.work_height, config.fg_balance)
    model = build_model(config)
    source = init_from_checkpoint(model, config.init_from) if config.init_from else None
    encoder_init = describe_init(config.encoder_init)
    if source and source["architecture"] == config.model:  # a warm restart keeps its weights' first start
        encoder_init = continued_init(source)
    elif source:
        encoder_init = (f"body initialised from this project's {source['checkpoint']!r} checkpoint "
                        f"({source['dataset']}; its own encoder: {source['its_encoder_init']}); "
                        "no ImageNet or COCO weights")
    card = {
        **task.card_info(),
        "encoder_init": encoder_init,
        # pretrained means external weights (ImageNet/COCO); transfer from our own checkpoints is in init_from
        "pretrained": config.encoder_init != "none" or bool(source and source.get("pretrained")),
        "init_from": source,
        "config": {k: v for k, v in asdict(config).items() if k != "command"},
        "command": config.command or " ".join(shlex.quote(a) for a in sys.argv),
        "seed": config.seed,
    }
    device = torch.device(config.device) if config.device else None
    yield from run(model, task, [Stage("main", config.epochs, config.lr)], out=config.out if rank == 0 else None,
                   card=card, seed=config.seed, stop_event=stop_event, device=device,
                   weight_decay=config.weight_decay, precision=config.precision, ema_decay=config.ema_decay)
