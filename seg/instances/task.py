"""Training tasks for the engine: ``DWTTask`` and ``MaskRCNNTask`` (the engine's ``Task`` protocol).

``prepare_instances(config)`` is what ``seg.training.train`` calls for ``dwt`` and
``maskrcnn``. Both tasks hold Penn-Fudan in memory (150 small images), augment on the fly with
a generator seeded by (seed, epoch) so a run is reproducible, and validate with the COCO
evaluation. The DWT's validation also picks the post-processing (cut level, minimum
size) on the val split; the choice travels in the metrics into the checkpoint's card.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seg.checkpoints import continued_init, warm_start
from seg.engine import Stage
from seg.instances.coco_eval import InstanceEvaluator
from seg.instances.data import (
    SPLIT_FRACTIONS,
    WORK_HEIGHT,
    InstanceAugment,
    InstanceSample,
    boxes_from_ids,
    load_instance_split,
    paste_instances,
)
from seg.instances.inference import (
    DETECTION_SCORE_THRESHOLD,
    FILL_STRIPS,
    MASK_THRESHOLD,
    ImageMaps,
    InstancePredictor,
    alternative_passes,
    at_stride,
    components_from_foreground,
    dwt_heads,
    heads_from_logits,
    sample_batch,
    score_maps,
    with_mirror,
)
from seg.instances.losses import direction_loss, dwt_loss, level_weights
from seg.instances.models import split_outputs
from seg.instances.postprocess import PostprocessParams
from seg.instances.targets import ENERGY_EDGES, cached_distance, quantise
from seg.models import create
from seg.models.encoders import describe_init
from seg.runtime import channels_last_on_cpu
from seg.train_config import Prepared, TrainConfig, default_command

ENERGY_NOTE = (
    "K=12 levels with lower edges 0,1,2,3,4,5,6,8,10,12,15,19 px (paper: K=16 up to 54 px for Cityscapes). "
    "At the default 224 px working height a pedestrian's deepest pixel lies 8-34 px from its "
    "boundary (median 18): the paper's levels above ~24 px would be nearly empty, so the top level is 19+ "
    "and unit steps are kept below 6 px, where the seeds are cut. The edges stay in pixels at other working "
    "heights (scale augmentation already shows the model people 0.8-1.25x their working size)."
)
DWT_METHOD = (
    "Deep Watershed Transform (Bai & Urtasun, CVPR 2017) without the direction network: foreground and "
    "energy heads on one U-Net body (its initialisation: encoder_init); seeds cut from the expected energy, grown back "
    "over the foreground by watershed (scikit-image); cut level, seed size and minimum size chosen on val"
)
#: Grid searched on val every epoch (post-processing is ms per image, so this is cheap).
CUT_LEVELS = (2, 3, 4, 5, 6)
MIN_SEEDS = (0, 100, 300, 600)
MIN_SIZES = (50, 100, 300, 600)
#: tune-instances' finer search (offline; ~45 s per TTA setting on 25 images): cut level, seed size and
#: foreground threshold jointly, then the minimum size. Coordinate search on this grid gets stuck.
FINE_CUT_LEVELS = (2, 2.5, 3, 3.5, 4, 5, 6)
FINE_MIN_SEEDS = (0, 100, 200, 300, 450, 600)
FINE_MIN_SIZES = (50, 100, 200, 300, 450, 600, 800)
FG_THRESHOLDS = (0.4, 0.45, 0.5, 0.55, 0.6)
LOSS_NOTE = (
    "foreground loss = cross entropy over all pixels + fg_balance x cross entropy over pedestrian "
    "pixels weighted 1/sqrt(instance area) (normalised by the weights' sum); 0 = plain cross entropy. "
    "direction: weight of a training-only head's loss, 1 - cos between its vector and the direction "
    "away from the nearest boundary, over pedestrian pixels weighted as the energy term; 0 = no such head"
)
MASKRCNN_HEIGHT = 320  # Mask R-CNN's min_size: images are fed at this height
COPY_PASTE_NOTE = (
    "share of training crops that get a random half of another augmented crop's pedestrians pasted over "
    "them (Simple Copy-Paste, Ghiasi et al. 2021); 0 = none. copy_paste_shrink: 1 pastes them at the "
    "same place; below 1 scales them by a random factor in [shrink, 1] and places them at random"
)


def _batches(
    samples: list[InstanceSample],
    augment: InstanceAugment,
    batch_size: int,
    epoch: int,
    seed: int,
    rank: int,
    world: int,
    copy_paste: float = 0.0,
    paste_shrink: float = 1.0,
) -> Iterator[list[InstanceSample]]:
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(samples))[rank::world]
    aug_rng = np.random.default_rng([seed, epoch, rank, 1])

    def sample(i: int) -> InstanceSample:
        out = augment(samples[i], aug_rng)
        if copy_paste > 0 and len(samples) > 1 and aug_rng.random() < copy_paste:
            other = (i + int(aug_rng.integers(1, len(samples)))) % len(samples)  # any image but this one
            out = paste_instances(out, augment(samples[other], aug_rng), aug_rng, augment.min_area, paste_shrink)
        return out

    for start in range(0, len(order), batch_size):
        yield [sample(i) for i in order[start : start + batch_size]]


def _task_batches(task: DWTTask | MaskRCNNTask, epoch: int, rank: int, world: int) -> Iterator[list[InstanceSample]]:
    """``_batches`` with an instance task's own samples, augmentation and copy-paste settings."""
    return _batches(
        task.train,
        task.augment,
        task.batch_size,
        epoch,
        task.seed,
        rank,
        world,
        task.copy_paste,
        task.paste_shrink,
    )


def _steps(num_samples: int, batch_size: int, world: int) -> int:
    per_rank = -(-num_samples // world)  # ceiling divisions
    return max(1, -(-per_rank // batch_size))


def _stack_images(samples: list[InstanceSample]) -> torch.Tensor:
    return torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).contiguous()


def dwt_batch_loss(
    model: nn.Module,
    images: torch.Tensor,
    instances: torch.Tensor,
    levels: torch.Tensor,
    level_weight: torch.Tensor,
    fg_balance: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits) of uint8 images (N,3,H,W) against ids and energy levels."""
    logits = model(images.float() / 255.0)
    return dwt_logits_loss(logits, instances, levels, level_weight, fg_balance), logits


def dwt_logits_loss(
    logits: torch.Tensor,
    instances: torch.Tensor,
    levels: torch.Tensor,
    level_weight: torch.Tensor,
    fg_balance: float = 0.0,
) -> torch.Tensor:
    fg_logits, energy_logits = split_outputs(logits)
    loss, _ = dwt_loss(
        fg_logits, energy_logits, instances, levels, level_weight.to(logits.device), fg_balance=fg_balance
    )
    return loss


class DWTValidation:
    """The DWT's val split: loss, maps, COCO metrics, and the post-processing search.

    Separate from the task so a trained checkpoint can be re-tuned without loading the
    training data (``python -m seg tune-instances``).
    """

    def __init__(
        self,
        samples: list[InstanceSample],
        energy_edges: tuple[float, ...] = ENERGY_EDGES,
        flip: bool = False,
        scales: tuple[float, ...] = (1.0,),
        alternative_scales: tuple[float, ...] = (),
        fill_scales: tuple[float, ...] = (),
    ) -> None:
        self.samples = samples
        self.energy_edges = tuple(energy_edges)
        self.level_weight = level_weights(len(self.energy_edges))
        # maps with test-time augmentation (flip, extra scales); the loss stays on the plain image
        self.flip, self.scales = flip, tuple(scales)
        # separate passes whose instances rank after the main maps' (``ranked_candidates``)
        self.alternative_scales = tuple(alternative_scales)
        # separate passes whose small pedestrians join the partition (``fill_partition``)
        self.fill_scales = tuple(fill_scales)
        # the size grids are px at the 224-px working height; a model run taller searches them scaled
        height = samples[0].image.shape[0] if samples else WORK_HEIGHT
        self.area_scale = (height / WORK_HEIGHT) ** 2

    def maps(self, model: nn.Module, device: torch.device) -> tuple[list[ImageMaps], float]:
        """Per image its maps at the working size (with the separate passes asked for), and the mean loss."""
        maps, losses = [], []
        channels_last_on_cpu(model)
        with torch.inference_mode():
            for s in self.samples:
                levels = torch.from_numpy(quantise(cached_distance(s.id, s.instances), self.energy_edges))[None]
                images = sample_batch(s, device)
                ids = torch.from_numpy(s.instances)[None].long().to(device)
                # with flip TTA the mirrored image rides in the same forward; the loss is the plain image's. The
                # input is padded to the stride and the logits cut back, as every pass the card scores is
                logits = at_stride(model, with_mirror(images, self.flip))
                losses.append(float(dwt_logits_loss(logits[:1], ids, levels.to(device), self.level_weight)))
                fg, energy = dwt_heads(
                    model, images, self.flip, self.scales, at_one=heads_from_logits(logits, self.flip)
                )
                maps.append(ImageMaps(fg[0, 0].cpu().numpy(), energy[0, 0].cpu().numpy()))
        if self.fill_scales:
            maps = self.with_passes(maps, model, device, self.fill_scales, "fills")
        if self.alternative_scales:
            maps = self.with_passes(maps, model, device, self.alternative_scales, "alternatives")
        return maps, float(np.mean(losses)) if losses else float("nan")

    def with_passes(
        self, maps: list[ImageMaps], model: nn.Module, device: torch.device, scales: tuple[float, ...], kind: str
    ) -> list[ImageMaps]:
        """``maps`` with each image's separate passes at ``scales`` as its ``alternatives`` (their new
        instances rank last) or its ``fills`` (their small pedestrians join the partition); the other
        maps are reused, not recomputed."""
        strips = FILL_STRIPS if kind == "fills" else 1
        with torch.inference_mode():
            passes = [
                alternative_passes(model, sample_batch(sample, device), self.flip, scales, strips, fill=kind == "fills")
                for sample in self.samples
            ]
        return [m._replace(**{kind: tuple(found)}) for m, found in zip(maps, passes)]

    def evaluate(self, maps: list, params: PostprocessParams, components: bool = False) -> dict:
        if not components:
            return {k: v for k, v in score_maps(self.samples, maps, params).items() if k != "counts"}
        ev = InstanceEvaluator()
        for s, (fg, *_) in zip(self.samples, maps):
            labels, scores = components_from_foreground(fg, params)
            ev.add(s.masks(), labels[None] == np.arange(1, len(scores) + 1)[:, None, None], scores)
        return ev.compute()

    def tune(self, maps: list, thorough: bool = False) -> tuple[PostprocessParams, dict]:
        """Search for the best mask AP: cut level, then seed size, then minimum size, then whether
        alternatives ranked below the partition (``ranked_candidates``) add to it.

        ``thorough`` (tune-instances): cut level, seed size and foreground threshold on a finer
        joint grid, then the minimum size. Ties in AP (spurious low-ranked fragments barely
        move it) go to the smaller counting error.
        """

        def ap(p: PostprocessParams) -> tuple[float, float]:
            r = self.evaluate(maps, p)
            return (-1.0 if math.isnan(r["mask_ap"]) else round(r["mask_ap"], 4)), -r["count_error"]

        def px(sizes: tuple[int, ...]) -> list[int]:
            return [round(m * self.area_scale) for m in sizes]

        best = PostprocessParams().scaled(self.area_scale)
        if thorough:
            best = max(
                (
                    replace(best, cut_level=c, min_seed=m, fg_threshold=t)
                    for c, m, t in itertools.product(FINE_CUT_LEVELS, px(FINE_MIN_SEEDS), FG_THRESHOLDS)
                ),
                key=ap,
            )
            best = max((replace(best, min_size=m) for m in px(FINE_MIN_SIZES)), key=ap)
        else:
            best = max((replace(best, cut_level=c) for c in CUT_LEVELS), key=ap)
            best = max((replace(best, min_seed=m) for m in px(MIN_SEEDS)), key=ap)
            best = max((replace(best, min_size=m) for m in px(MIN_SIZES)), key=ap)
        # alternatives ranked below the partition: kept only if val AP says they help
        best = max((best, replace(best, alternatives=True)), key=ap)
        return best, self.evaluate(maps, best)

    def run(self, model: nn.Module, device: torch.device, thorough: bool = False) -> dict:
        """The engine's validation dict: tuned metrics, ``postprocess``, and the components baseline."""
        was_training = model.training
        model.eval()
        try:
            maps, val_loss = self.maps(model, device)
        finally:
            model.train(was_training)
        return self.report(maps, val_loss, thorough)

    def report(self, maps: list, val_loss: float, thorough: bool = False) -> dict:
        """``run``'s dict from maps already computed (``tune-instances`` keeps them for more choices)."""
        params, metrics = self.tune(maps, thorough)
        baseline = self.evaluate(maps, params, components=True)
        metrics = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
        return {
            "score": metrics["mask_ap"] or 0.0,
            "val_loss": val_loss,
            **metrics,
            "postprocess": asdict(params),
            "components_mask_ap": baseline["mask_ap"],
            "components_mask_ap50": baseline["mask_ap50"],
        }


class DWTTask:
    """Deep Watershed Transform: foreground + quantised distance-to-boundary, from scratch."""

    def __init__(
        self,
        data_dir: Path,
        batch_size: int = 4,
        crop: int = 224,
        seed: int = 0,
        max_images: int | None = None,
        val_images: int | None = None,
        energy_edges: tuple[float, ...] = ENERGY_EDGES,
        work_height: int = WORK_HEIGHT,
        fg_balance: float = 0.0,
        direction: float = 0.0,
        copy_paste: float = 0.0,
        paste_shrink: float = 1.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.copy_paste, self.paste_shrink = float(copy_paste), float(paste_shrink)
        # training loss only: the val loss stays the plain (paper's) loss, comparable across checkpoints
        self.fg_balance = float(fg_balance)
        self.direction = float(direction)
        self.batch_size, self.seed, self.work_height = batch_size, seed, work_height
        self.energy_edges = tuple(energy_edges)
        self.train = load_instance_split(self.data_dir, "train", work_height, max_images)
        for s in self.train:  # distance targets: computed once, cached on disk
            s.distance = cached_distance(s.id, s.instances)
        self.val = load_instance_split(self.data_dir, "val", work_height, val_images)
        self.validation = DWTValidation(self.val, self.energy_edges)
        self.augment = InstanceAugment(size=(crop, crop))
        self.level_weight = level_weights(len(self.energy_edges))

    def card_info(self) -> dict:
        return {
            "task": "instances",
            "dataset": "pennfudan",
            "work_height": self.work_height,
            "energy_edges": list(self.energy_edges),
            "energy_levels_note": ENERGY_NOTE,
            "method": DWT_METHOD,
            "split_fractions": list(SPLIT_FRACTIONS),
            "train_images": len(self.train),
            "val_images": len(self.val),
            "loss": {"fg_balance": self.fg_balance, "direction": self.direction, "note": LOSS_NOTE},
            "copy_paste": self.copy_paste,
            "copy_paste_shrink": self.paste_shrink,
            "copy_paste_note": COPY_PASTE_NOTE,
        }

    def steps_per_epoch(self, world: int = 1) -> int:
        return _steps(len(self.train), self.batch_size, world)

    def train_batches(self, epoch: int, rank: int = 0, world: int = 1) -> Iterable[Any]:
        for group in _task_batches(self, epoch, rank, world):
            ids = torch.from_numpy(np.stack([s.instances for s in group])).long()
            levels = torch.from_numpy(np.stack([quantise(s.distance, self.energy_edges) for s in group]))
            batch = {"images": _stack_images(group), "instances": ids, "levels": levels}
            if self.direction > 0:
                batch["distance"] = torch.from_numpy(np.stack([s.distance for s in group]))
            yield batch

    def train_step(self, model: nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
        instances = batch["instances"].to(device)
        loss, _ = dwt_batch_loss(
            model, batch["images"].to(device), instances, batch["levels"].to(device), self.level_weight, self.fg_balance
        )
        if self.direction > 0:
            core = getattr(model, "module", model)  # under DistributedDataParallel
            logits, core.direction_logits = getattr(core, "direction_logits", None), None  # taken: no graph held
            if logits is None:
                raise ValueError("a direction loss needs a DWT built with direction_head=True (as train builds it)")
            loss = loss + self.direction * direction_loss(logits, batch["distance"].to(device), instances)
        return loss

    def validate(self, model: nn.Module, device: torch.device) -> dict:
        return self.validation.run(model, device)

    def samples(self, model: nn.Module, device: torch.device) -> list[dict]:
        """Two val images with their predicted instance ids (at the working size)."""
        out = []
        predictor = InstancePredictor(model, {"work_height": self.work_height})
        was_training = model.training
        try:
            for s in self.val[:2]:
                result = predictor.predict(s.image)
                out.append(
                    {
                        "id": s.id,
                        "image": s.image,
                        "truth": s.instances,
                        "pred": result.instances,
                        "num_pred": result.num_instances,
                        "num_true": s.num_instances,
                    }
                )
        finally:
            model.train(was_training)
        return out


class MaskRCNNTask:
    """torchvision Mask R-CNN trained on augmented crops at Mask R-CNN's own input height."""

    def __init__(
        self,
        data_dir: Path,
        batch_size: int = 2,
        crop: int = MASKRCNN_HEIGHT,
        seed: int = 0,
        max_images: int | None = None,
        val_images: int | None = None,
        work_height: int = MASKRCNN_HEIGHT,
        copy_paste: float = 0.0,
        paste_shrink: float = 1.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.copy_paste, self.paste_shrink = float(copy_paste), float(paste_shrink)
        self.batch_size, self.seed, self.work_height = batch_size, seed, work_height
        self.train = load_instance_split(self.data_dir, "train", work_height, max_images)
        self.val = load_instance_split(self.data_dir, "val", work_height, val_images)
        # wide crops keep most of a frame: Mask R-CNN learns from whole people, not slivers
        self.augment = InstanceAugment(size=(crop, round(crop * 1.4)), scale=(0.85, 1.2), min_area=100)

    def card_info(self) -> dict:
        return {
            "task": "instances",
            "dataset": "pennfudan",
            "work_height": self.work_height,
            "method": "torchvision Mask R-CNN, 2 classes; small ResNet-FPN sized for a CPU and the "
            "checkpoint budget (see arch_kwargs); images fed at min_size px",
            "backbone_note": "ResNet trunk up to layer3 (ResNet-18's layer4 alone is 8.4M parameters), "
            "128-channel FPN, 256-d box head, tall anchors (h/w 1, 2, 3); group norm "
            "when trained from scratch (batch norm is useless at 2 images per batch), "
            "frozen batch norm with pretrained weights (torchvision's recipe)",
            "split_fractions": list(SPLIT_FRACTIONS),
            "train_images": len(self.train),
            "val_images": len(self.val),
            "score_threshold": DETECTION_SCORE_THRESHOLD,
            "copy_paste": self.copy_paste,
            "copy_paste_shrink": self.paste_shrink,
            "copy_paste_note": COPY_PASTE_NOTE,
        }

    def steps_per_epoch(self, world: int = 1) -> int:
        return _steps(len(self.train), self.batch_size, world)

    def train_batches(self, epoch: int, rank: int = 0, world: int = 1) -> Iterable[Any]:
        for group in _task_batches(self, epoch, rank, world):
            images, targets = [], []
            for s in group:
                images.append(torch.from_numpy(s.image).permute(2, 0, 1).contiguous())
                masks = torch.from_numpy(s.masks()).to(torch.uint8)
                targets.append(
                    {
                        "boxes": torch.from_numpy(boxes_from_ids(s.instances)),
                        "labels": torch.ones(len(masks), dtype=torch.int64),
                        "masks": masks,
                    }
                )
            yield {"images": images, "targets": targets}

    def train_step(self, model: nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
        images = [im.to(device).float() / 255.0 for im in batch["images"]]
        targets = [{k: v.to(device) for k, v in t.items()} for t in batch["targets"]]
        losses = model(images, targets)
        return sum(losses.values())

    def validate(self, model: nn.Module, device: torch.device) -> dict:
        return detector_val_metrics(model, self.val, self.work_height)

    def samples(self, model: nn.Module, device: torch.device) -> list[dict]:
        return []


def detector_val_metrics(
    model: nn.Module,
    samples: list[InstanceSample],
    work_height: int,
    flip: bool = False,
    scales: tuple[float, ...] = (1.0,),
    mask_threshold: float = MASK_THRESHOLD,
) -> dict:
    """A Mask R-CNN's COCO metrics on ``samples`` (already at ``work_height``): its validation, as training
    and ``tune-instances`` measure it, with the test-time views ``flip`` and ``scales`` and its soft
    masks cut at ``mask_threshold``."""
    was_training = model.training
    card = {"work_height": work_height, "mask_threshold": mask_threshold}
    predictor = InstancePredictor(model, card, flip=flip, scales=scales)
    ev = InstanceEvaluator()
    try:
        for s in samples:
            masks, scores, boxes = predictor.predict(s.image).candidates()
            ev.add(s.masks(), masks, scores, boxes)
    finally:
        model.train(was_training)
    metrics = ev.compute()
    metrics = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
    return {"score": metrics["mask_ap"] or 0.0, "val_loss": None, **metrics}


def make_task(
    model_name: str,
    data_dir: Path,
    batch_size: int | None = None,
    crop: int | None = None,
    seed: int = 0,
    max_images: int | None = None,
    val_images: int | None = None,
    work_height: int | None = None,
    fg_balance: float | None = None,
    direction: float | None = None,
    copy_paste: float | None = None,
    paste_shrink: float | None = None,
) -> DWTTask | MaskRCNNTask:
    """The task for ``dwt`` or ``maskrcnn`` with each model's own defaults for unset sizes."""
    if paste_shrink is not None and paste_shrink < 1.0 and not copy_paste:
        raise ValueError("--inst-paste-shrink scales what --inst-copy-paste pastes; set a copy-paste share too")
    common = {
        "seed": seed,
        "max_images": max_images,
        "val_images": val_images,
        "copy_paste": copy_paste or 0.0,
        "paste_shrink": 1.0 if paste_shrink is None else paste_shrink,
    }
    if model_name == "dwt":
        return DWTTask(
            Path(data_dir),
            batch_size=batch_size or 4,
            crop=crop or 224,
            work_height=work_height or WORK_HEIGHT,
            fg_balance=fg_balance or 0.0,
            direction=direction or 0.0,
            **common,
        )
    if work_height:
        raise ValueError("--inst-work-height is a DWT setting (Mask R-CNN resizes inside the model: min_size)")
    if fg_balance:
        raise ValueError("--inst-fg-balance is a DWT loss setting (Mask R-CNN has its own losses)")
    if direction:
        raise ValueError("--inst-direction is a DWT loss setting (Mask R-CNN has its own losses)")
    if model_name == "maskrcnn":
        return MaskRCNNTask(Path(data_dir), batch_size=batch_size or 2, crop=crop or MASKRCNN_HEIGHT, **common)
    raise ValueError(f"no instance task for model {model_name!r}")


def build_model(config: TrainConfig) -> torch.nn.Module:
    kwargs = dict(config.model_kwargs)
    if config.model == "dwt" and config.instances.direction:
        kwargs["direction_head"] = True
    if config.model == "maskrcnn" or kwargs.get("backbone") == "resunet":
        kwargs["encoder_init"] = config.encoder_init
    elif config.encoder_init != "none":
        raise ValueError("the DWT's U-Net body has no pretrained encoder; use backbone=resunet for encoder_init")
    return create(config.model, num_classes=2, **kwargs)


def prepare_instances(config: TrainConfig) -> Prepared:
    """Task, model and card for ``train`` of ``dwt`` or ``maskrcnn`` (one stage, cosine schedule)."""
    options = config.instances
    task = make_task(
        config.model,
        Path(config.data_dir),
        config.batch_size,
        options.crop,
        config.seed,
        config.limit,
        options.val_images or config.limit,
        options.work_height,
        options.fg_balance,
        options.direction,
        options.copy_paste,
        options.paste_shrink,
    )
    model = build_model(config)
    source = warm_start(model, config.init_from) if config.init_from else None
    encoder_init = describe_init(config.encoder_init)
    if source and source["architecture"] == config.model:  # a warm restart keeps its weights' first start
        encoder_init = continued_init(source)
    elif source:
        encoder_init = (
            f"body initialised from this project's {source['checkpoint']!r} checkpoint "
            f"({source['dataset']}; its own encoder: {source['its_encoder_init']}); "
            "no ImageNet or COCO weights"
        )
    card = {
        **task.card_info(),
        "encoder_init": encoder_init,
        # pretrained means external weights (ImageNet/COCO); transfer from our own checkpoints is in init_from
        "pretrained": config.encoder_init != "none" or bool(source and source.get("pretrained")),
        "init_from": source,
        "config": config.to_dict(),
        "precision": config.precision,
        "command": default_command(config),
        "seed": config.seed,
    }
    return Prepared(model, task, [Stage("main", config.epochs, config.lr)], card)
