"""What a training run is made of: ``TrainConfig`` (shared fields once, each task's options apart)
and ``Prepared`` (what a task hands the engine). ``seg.training.train`` runs them."""

from __future__ import annotations

import math
import shlex
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from seg.config import require_whole
from seg.models import task_of


@dataclass
class SemanticOptions:
    """Settings only semantic models have (augmentation and loss)."""

    crop_fraction: tuple[float, float] | None = (0.25, 1.0)
    flip_p: float = 0.5
    color_jitter: float = 0.2
    #: zoom out (shrink the image onto a larger canvas, the border ignored) by up to this side ratio, half
    #: the time; 1 = never. Crops only zoom in; this shows objects smaller than the dataset's framing.
    zoom_out: float = 1.0
    rotate: float = 0.0  # random rotation up to +- this many degrees (the corners ignored)
    lovasz: float = 0.0  # weight of a Lovasz-softmax term added to the weighted cross entropy
    #: focal exponent of the weighted cross entropy: (1 - p)^gamma on each pixel's term; 0 = plain cross entropy
    focal_gamma: float = 0.0
    #: deep supervision (unet): weight of the weighted cross entropy of the classifier on the decoder stage at
    #: half resolution, halved for each coarser one; 0 = off. The deep layers then get a gradient of their own.
    deep_supervision: float = 0.0
    #: repeat factor sampling (LVIS): an image is drawn in proportion to max(1, sqrt(t / f)), f the share of
    #: train images holding its rarest class, an epoch holding the factors' sum; 0 = every image once. Pixel
    #: weights alone leave an image with a rare class as rarely seen as before.
    rare_repeat: float = 0.0
    #: ClassMix: the share of crops that get a random half of the classes of the batch's next crop pasted in
    class_mix: float = 0.0
    #: a semantic checkpoint (e.g. the ensemble) whose softened answers the model also learns; None = none
    distill_from: str | None = None
    distill_weight: float = 1.0  # weight of the distillation term (only with ``distill_from``)
    distill_temperature: float = 2.0
    #: (width, height) of training crops; None = the full image size
    train_size: tuple[int, int] | None = None
    class_weighting: str = "inverse_sqrt"  # none | inverse_sqrt | inverse
    #: epochs with the encoder frozen before it is unfrozen (None: 3 for resunet, else 0)
    frozen_epochs: int | None = None
    encoder_lr_ratio: float = 0.1
    val_split: str = "val"

    def __post_init__(self) -> None:
        # checked where the options are made, so the CLI, the dashboard, the API and --resume all refuse them
        _in_range("--flip-p", self.flip_p, 0.0, 1.0)
        _in_range("--color-jitter", self.color_jitter, 0.0, 1.0)
        _in_range("--zoom-out", self.zoom_out, 1.0, 8.0)
        _in_range("--rotate", self.rotate, 0.0, 180.0)
        _in_range("--lovasz", self.lovasz, 0.0)
        _in_range("--encoder-lr-ratio", self.encoder_lr_ratio, 0.0)
        _at_least("--frozen-epochs", self.frozen_epochs, 0)
        if self.train_size is not None and min(self.train_size) < 1:
            raise ValueError(f"--train-size needs a width and height of 1 px or more, got {self.train_size}")
        if self.distill_temperature <= 0:
            raise ValueError(f"--distill-temperature must be above 0, got {self.distill_temperature:g}")
        _in_range("--distill-weight", self.distill_weight, 0.0)
        _in_range("--focal-gamma", self.focal_gamma, 0.0)
        _in_range("--deep-supervision", self.deep_supervision, 0.0)
        _in_range("--rare-repeat", self.rare_repeat, 0.0, 1.0)  # a share of images
        _in_range("--class-mix", self.class_mix, 0.0, 1.0)


@dataclass
class InstanceOptions:
    """Settings only the instance models have (Penn-Fudan crops and the DWT's working size and loss)."""

    crop: int | None = None  # training crop side in px (dwt 224, maskrcnn 320)
    work_height: int | None = None  # dwt: image height it is trained and run at (default 224)
    fg_balance: float | None = None  # dwt: size-balanced foreground loss term
    direction: float | None = None  # dwt: weight of the direction head's loss (0: no such head)
    copy_paste: float | None = None  # share of crops with another crop's pedestrians pasted in
    paste_shrink: float | None = None  # pasted pedestrians scaled by a random factor in [this, 1], placed at random
    val_images: int | None = None  # validate on the first N val images

    def __post_init__(self) -> None:
        _at_least("--inst-crop", self.crop, 16)
        _at_least("--inst-work-height", self.work_height, 32)
        _in_range("--inst-fg-balance", self.fg_balance, 0.0)
        _in_range("--inst-direction", self.direction, 0.0)
        _in_range("--inst-copy-paste", self.copy_paste, 0.0, 1.0)
        _in_range("--inst-paste-shrink", self.paste_shrink, 0.05, 1.0)  # under 5 % a pedestrian is a few px
        _at_least("--inst-val-images", self.val_images, 1)


def _in_range(flag: str, value: float | None, low: float, high: float = math.inf) -> None:
    """Refuse a setting outside [low, high] (or not a number) by its flag's name; None is the default."""
    if value is None:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        limits = f"in [{low:g}, {high:g}]" if math.isfinite(high) else f"{low:g} or more"
        raise ValueError(f"{flag} must be {limits}, got {value!r}")


def _at_least(flag: str, value: int | None, low: int) -> None:
    """Refuse a count below ``low`` (or not a whole number) by its flag's name; None is the default."""
    if value is not None:
        require_whole(flag, value, low)


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

    def __post_init__(self) -> None:
        _at_least("--epochs", self.epochs, 1)
        _in_range("--lr", self.lr, 0.0, 1e3)  # 0 keeps the weights (e.g. to refresh batch-norm statistics)
        _in_range("--weight-decay", self.weight_decay, 0.0)
        _at_least("--batch-size", self.batch_size, 1)
        _at_least("--limit", self.limit, 1)
        _in_range("--ema-decay", self.ema_decay, 0.0, 0.999999)
        if self.semantic.deep_supervision > 0 and self.model != "unet":
            raise ValueError(f"--deep-supervision is for unet (classifiers on its decoder stages), not {self.model}")

    @property
    def task(self) -> str:
        return task_of(self.model)

    def to_dict(self) -> dict:
        """The config as the card and the resume state record it (only the task's own options)."""
        data = {k: v for k, v in asdict(self).items() if k not in ("semantic", "instances", "command")}
        data[self.task] = asdict(self.semantic if self.task == "semantic" else self.instances)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
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
