"""Semantic segmentation training on the Stanford Background layout (official or course).

``SemanticTask`` plugs the data, the augmentation and the weighted cross entropy into
the engine; ``prepare_semantic`` builds the model, the schedule and the card for
``seg.training.train``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from seg.cards import can_teach
from seg.checkpoints import continued_init, load_checkpoint, save_checkpoint, warm_start
from seg.classes import palette_for
from seg.config import resolve_checkpoint
from seg.data.sbd import SPLIT_RULE, SegSplit, class_frequencies, fingerprint, load_semantic_split
from seg.engine import Stage, distributed_context
from seg.losses import class_weights, distillation_loss, lovasz_softmax, weighted_cross_entropy
from seg.metrics import SegMetrics
from seg.models import create
from seg.train_config import Prepared, SemanticOptions, TrainConfig, default_command
from seg.transforms import IGNORE, JointAugment, class_mix

#: the default batch size of semantic models (the instance models have their own)
BATCH_SIZE = 8


def repeat_factors(masks: torch.Tensor, num_classes: int, threshold: float) -> torch.Tensor:
    """Each image's repeat factor (LVIS's repeat factor sampling): max over the classes it holds of
    max(1, sqrt(threshold / f_c)), f_c the share of images holding class c; all ones when ``threshold`` is 0."""
    if threshold <= 0 or len(masks) == 0:
        return torch.ones(len(masks))
    flat = masks.flatten(1)  # compared in its own dtype: a widened copy of the train masks would be 8x their size
    present = torch.stack([(flat == c).any(1) for c in range(num_classes)], 1)
    share = present.float().mean(0).clamp_min(1e-12)
    per_class = (threshold / share).sqrt().clamp_min(1.0)
    return torch.where(present, per_class, torch.ones(())).amax(1)


class SemanticTask:
    """Batches of augmented uint8 crops; loss is weighted CE; validation is the full metric set."""

    def __init__(
        self,
        train: SegSplit,
        val: SegSplit,
        options: SemanticOptions,
        weight: torch.Tensor | None,
        batch_size: int = BATCH_SIZE,
        seed: int = 0,
        teacher: nn.Module | None = None,
    ) -> None:
        self.train, self.val, self.options = train, val, options
        self.batch_size, self.seed = batch_size, seed
        #: frozen model whose answers are distilled (``options.distill_from``); moved to the step's device
        self.teacher = teacher
        self._teacher_device: torch.device | None = None
        self.num_classes = len(train.classes)
        self.weight = weight
        h, w = train.images.shape[-2:]
        if options.train_size:
            w, h = options.train_size
        self.augment = JointAugment(
            options.crop_fraction,
            options.flip_p,
            size=(h, w),
            color_jitter=options.color_jitter,
            zoom_out=options.zoom_out,
            rotate=options.rotate,
        )

        self.repeat = repeat_factors(train.masks, self.num_classes, options.rare_repeat)
        #: images drawn per epoch: fixed, so the schedule knows its steps
        self.epoch_images = max(1, round(float(self.repeat.sum()))) if options.rare_repeat > 0 else len(train)

    def steps_per_epoch(self, world: int = 1) -> int:
        per_rank = -(-self.epoch_images // world)
        return max(1, -(-per_rank // self.batch_size))

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The images of one epoch, shuffled: each once, or in proportion to ``repeat_factors`` (systematic
        sampling over a shuffled order: ``epoch_images`` evenly spaced draws, so an image whose share is 1.4
        draws comes once or twice, and the epoch's length is fixed)."""
        g = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        order = torch.randperm(len(self.train), generator=g)
        if self.options.rare_repeat <= 0:
            return order
        ends = torch.cumsum(self.repeat[order].double(), 0)
        step = float(ends[-1]) / self.epoch_images
        positions = (torch.rand(1, generator=g, dtype=torch.float64) + torch.arange(self.epoch_images)) * step
        drawn = order[torch.searchsorted(ends, positions, right=True).clamp_(max=len(order) - 1)]
        return drawn[torch.randperm(len(drawn), generator=g)]

    def train_batches(self, epoch: int, rank: int = 0, world: int = 1):
        order = self.epoch_order(epoch)[rank::world]
        bs = self.batch_size
        # its own generator: runs without class mixing draw exactly what they drew before it existed
        mixing = torch.Generator().manual_seed(
            int(np.random.SeedSequence([self.seed, epoch, rank]).generate_state(1)[0])
        )
        for i in range(0, len(order), bs):
            idx = order[i : i + bs]
            pairs = [self.augment(self.train.images[j], self.train.masks[j]) for j in idx.tolist()]
            images, masks = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
            yield class_mix(images, masks, self.options.class_mix, mixing)

    @staticmethod
    def _to_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
        x = images.to(device, non_blocking=True).float().div_(255)
        return x.contiguous(memory_format=torch.channels_last) if device.type == "cpu" else x

    def train_step(self, model: nn.Module, batch, device: torch.device) -> torch.Tensor:
        images, masks = batch
        x = self._to_input(images, device)
        logits = model(x)
        weight = self.weight.to(device) if self.weight is not None else None
        target = masks.to(device).long()
        loss = self._cross_entropy(logits, target, weight)
        if self.options.deep_supervision > 0:
            loss = loss + self._deep_supervision_loss(model, target, weight)
        if self.options.lovasz > 0:
            # every other pixel each way: the same surrogate at a quarter of its sorting cost
            sub = lovasz_softmax(logits[..., ::2, ::2], target[..., ::2, ::2], ignore_index=IGNORE)
            loss = loss + self.options.lovasz * sub
        if self.teacher is not None:
            teacher = self._teacher_on(device)
            with torch.no_grad():
                teacher_logits = teacher(x)
            kd = distillation_loss(logits, teacher_logits, target != IGNORE, self.options.distill_temperature)
            loss = loss + self.options.distill_weight * kd
        return loss

    def _deep_supervision_loss(
        self, model: nn.Module, target: torch.Tensor, weight: torch.Tensor | None
    ) -> torch.Tensor:
        """The auxiliary classifiers' weighted cross entropy at the labels' size, finest stage first, each
        coarser one at half the weight of the one before."""
        core = getattr(model, "module", model)  # under DistributedDataParallel
        aux, core.aux_logits = core.aux_logits, []  # taken, so the graph is not held past the step
        total = target.new_zeros((), dtype=torch.float32)
        for i, logits in enumerate(reversed(aux)):
            up = F.interpolate(logits.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
            scale = self.options.deep_supervision / 2**i
            total = total + scale * self._cross_entropy(up, target, weight)
        return total

    def _cross_entropy(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        """The weighted cross entropy every output is trained with (focal when ``--focal-gamma`` is set)."""
        return weighted_cross_entropy(logits, target, weight, ignore_index=IGNORE, focal_gamma=self.options.focal_gamma)

    def _teacher_on(self, device: torch.device) -> nn.Module:
        """The teacher on ``device``, laid out as the engine lays out the student (channels_last on a CPU)."""
        if self._teacher_device != device:
            layout = torch.channels_last if device.type == "cpu" else torch.preserve_format
            self.teacher.to(device, memory_format=layout)
            self._teacher_device = device
        return self.teacher

    def validate(self, model: nn.Module, device: torch.device) -> dict:
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        metrics = SegMetrics(self.num_classes, class_names=self.train.classes)
        total_loss, total_n = 0.0, 0
        idx = list(range(len(self.val)))[rank::world]
        for i in range(0, len(idx), 16):
            sel = idx[i : i + 16]
            x = self._to_input(self.val.images[sel], device)
            target = self.val.masks[sel].long()
            logits = model(x).float()
            weight = self.weight.to(device) if self.weight is not None else None
            total_loss += float(weighted_cross_entropy(logits, target.to(device), weight)) * len(sel)
            total_n += len(sel)
            metrics.update(logits.softmax(1).cpu(), target)
        if world > 1:
            for tensor in (metrics.confusion, metrics.confusion_known, metrics.hist_all, metrics.hist_pos):
                dist.all_reduce(tensor)
            t = torch.tensor([total_loss, total_n], dtype=torch.float64)
            dist.all_reduce(t)
            total_loss, total_n = float(t[0]), int(t[1])
        result = metrics.compute()
        result["val_loss"] = round(total_loss / max(total_n, 1), 5)
        result["score"] = result["miou"] if result["miou"] is not None else float("nan")
        result["num_images"] = len(self.val)
        return result

    def samples(self, model: nn.Module, device: torch.device, count: int = 3) -> list[dict]:
        sel = list(range(min(count, len(self.val))))
        if not sel:
            return []
        with torch.no_grad():
            pred = model(self._to_input(self.val.images[sel], device)).argmax(1).cpu().numpy().astype(np.uint8)
        return [
            {
                "id": self.val.ids[i],
                "image": self.val.images[i].permute(1, 2, 0).numpy(),
                "truth": self.val.masks[i].numpy(),
                "pred": pred[k],
            }
            for k, i in enumerate(sel)
        ]


def frozen_epochs_of(config: TrainConfig) -> int:
    """Encoder-frozen epochs: as set, else 3 for the ResNet-18 U-Net and 0 for models without an encoder."""
    frozen = config.semantic.frozen_epochs
    if frozen is None:
        return 3 if config.model == "resunet" and config.epochs > 3 else 0
    return frozen


def build_stages(config: TrainConfig) -> list[Stage]:
    """One stage, or for encoder models: encoder frozen, then unfrozen at ``encoder_lr_ratio``."""
    frozen = frozen_epochs_of(config)
    if frozen <= 0:
        return [Stage("main", config.epochs, config.lr)]
    if frozen >= config.epochs:
        raise ValueError("frozen epochs must be fewer than the total epochs")
    return [
        Stage("frozen", frozen, config.lr, frozen=("encoder.",)),
        Stage("unfrozen", config.epochs - frozen, config.lr, lr_scale={"encoder.": config.semantic.encoder_lr_ratio}),
    ]


def _build_model(config: TrainConfig, num_classes: int) -> tuple[nn.Module, str]:
    kwargs = dict(config.model_kwargs)
    if config.semantic.deep_supervision > 0:  # unet only (``TrainConfig`` refuses the others)
        kwargs["aux_heads"] = True
    if config.model == "resunet":
        kwargs["encoder_init"] = config.encoder_init
    elif config.encoder_init != "none":
        raise ValueError(f"{config.model} has no pretrained encoder to initialise; encoder_init is for resunet")
    model = create(config.model, num_classes=num_classes, **kwargs)
    if config.model == "prior":
        return model, "not applicable: no encoder, per-pixel class frequencies of the train split"
    init = getattr(model, "encoder_init", None) or "random initialisation (trained from scratch, no pretrained weights)"
    return model, init


def _teacher(name: str, classes: list[str]) -> tuple[nn.Module, dict]:
    """The frozen semantic model to distill, refused when its classes are not the training data's."""
    teacher, card = load_checkpoint(resolve_checkpoint(name), "cpu")
    if card.get("task", "semantic") != "semantic" or list(card.get("classes") or []) != list(classes):
        wanted = ", ".join(classes)
        raise ValueError(f"--distill-from {name}: a semantic checkpoint with the classes {wanted} is needed")
    if not can_teach(card):
        raise ValueError(f"--distill-from {name}: choose a model that looks at the image (not the prior)")
    teacher.eval().requires_grad_(False)
    return teacher, card


def prepare_semantic(config: TrainConfig) -> Prepared:
    """Load the data once, build model, task, stages and card (the prior gets a ``fit`` instead)."""
    _, world = distributed_context()
    options = config.semantic
    root = Path(config.data_dir)
    train = load_semantic_split(root, "train", limit=config.limit)
    val = load_semantic_split(root, options.val_split, limit=config.limit)
    num_classes = len(train.classes)
    freqs = class_frequencies(train.masks, num_classes)
    weight = None if options.class_weighting == "none" else class_weights(freqs, options.class_weighting)
    model, init_text = _build_model(config, num_classes)
    source = warm_start(model, config.init_from) if config.init_from else None
    card = {
        "task": "semantic",
        "classes": train.classes,
        "palette": [list(c) for c in (train.palette or palette_for(num_classes))],
        "input_size": {"width": int(train.images.shape[-1]), "height": int(train.images.shape[-2])},
        "encoder_init": init_text,
        "pretrained": config.model == "resunet" and config.encoder_init != "none",
        "data": {
            "root_fingerprint": fingerprint(root),
            "split_rule": SPLIT_RULE,
            "num_train": len(train),
            "num_val": len(val),
            "val_split": options.val_split,
            "train_class_frequencies": [round(float(f), 6) for f in freqs],
        },
        "config": config.to_dict(),
        "precision": config.precision,
        "class_weights": weight.tolist() if weight is not None else None,
        "command": default_command(config),
        "seed": config.seed,
        "world_size": world,
    }
    if source:
        card["init_from"] = source
        card["encoder_init"] = continued_init(source)
        card["pretrained"] = bool(source.get("pretrained", False))
    teacher = None
    if options.distill_from:
        teacher, teacher_card = _teacher(options.distill_from, train.classes)
        card["distilled_from"] = {
            "checkpoint": str(options.distill_from),
            "architecture": teacher_card.get("architecture"),
            "val_miou": (teacher_card.get("val_metrics") or {}).get("miou"),
            "weight": options.distill_weight,
            "temperature": options.distill_temperature,
            "encoder_init": teacher_card.get("encoder_init"),
        }
        card["pretrained"] = card["pretrained"] or bool(teacher_card.get("pretrained", False))
    task = SemanticTask(train, val, options, weight, config.batch_size or BATCH_SIZE, config.seed, teacher)
    if not getattr(model, "trainable", True):
        return Prepared(model, task, [], card, fit=lambda: _fit_prior(model, task, config, card))
    return Prepared(model, task, build_stages(config), card)


def _fit_prior(model: nn.Module, task: SemanticTask, config: TrainConfig, card: dict) -> Iterator[dict]:
    """The prior has no gradient steps: fit the per-pixel table, validate once, save."""
    start = time.time()
    yield {"type": "start", "epochs": 1, "stages": [], "device": "cpu", "world_size": 1, "rank": 0}
    model.fit(task.train.masks)
    metrics = task.validate(model, torch.device("cpu"))
    elapsed = time.time() - start
    row = {
        "epoch": 1,
        "stage": "fit",
        "train_loss": None,
        "val_loss": metrics["val_loss"],
        "score": metrics["score"],
        "miou": metrics["miou"],
        "map": metrics["map"],
        "pixel_accuracy": metrics["pixel_accuracy"],
        "elapsed": round(elapsed, 2),
    }
    out = None
    if config.out:
        val_metrics = {k: v for k, v in metrics.items() if k != "pr_curves"}
        out = save_checkpoint(
            config.out,
            model,
            dict(
                card,
                curve=[row],
                val_metrics=val_metrics,
                best_epoch=1,
                training_time_s=round(elapsed, 2),
                epochs_run=1,
            ),
        )
    yield {
        "type": "epoch",
        "epoch": 1,
        "epochs": 1,
        "stage": "fit",
        "train_loss": None,
        "val_loss": metrics["val_loss"],
        "score": metrics["score"],
        "metrics": metrics,
        "improved": True,
        "elapsed": elapsed,
        "samples": task.samples(model, torch.device("cpu")),
        "curve": [row],
    }
    yield {
        "type": "done",
        "best_score": metrics["score"],
        "best_epoch": 1,
        "stopped": False,
        "checkpoint": str(out) if out else None,
        "elapsed": elapsed,
        "curve": [row],
    }
