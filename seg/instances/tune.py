"""Choose an instance checkpoint's inference settings on val, and record them on its card.

A DWT's post-processing and test-time augmentation: the training's per-epoch search is coarse
(it runs every epoch); ``tune_checkpoint`` runs the thorough one once, on the finished model,
over every test-time setting. A Mask R-CNN's count of region proposals at inference and its
test-time augmentation.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

    from seg.instances.postprocess import PostprocessParams
    from seg.instances.task import DWTValidation

#: ``tune-instances`` pays for a dearer test-time setting only when val mask AP gains more than this
TUNE_MIN_GAIN = 0.005
#: Mask R-CNN proposals kept at inference, cheapest first (torchvision's default is the last)
PROPOSAL_OPTIONS = (300, 500, 1000)
#: where a Mask R-CNN's soft masks may be cut; another cut than the default must beat it by more than
#: ``TUNE_MIN_GAIN``
MASK_THRESHOLD_OPTIONS = (0.4, 0.45, 0.5, 0.55, 0.6)


def cheapest_near_best(scores: dict) -> object:
    """The first key (options go cheapest first) whose score is within ``TUNE_MIN_GAIN`` of the best."""
    best = max(v or 0.0 for v in scores.values())
    return next(k for k, v in scores.items() if (v or 0.0) >= best - TUNE_MIN_GAIN)


def _passes_name(scales: tuple[float, ...]) -> str:
    """How the tuning record names a set of separate passes: ``none``, ``1.5x``, ``1.5x+2x``."""
    return "+".join(f"{s:g}x" for s in scales) or "none"


def tune_checkpoint(
    checkpoint: str | Path, data_dir: Path, split: str = "val", limit: int | None = None, tta: str = "auto"
) -> dict:
    """Re-run the training's post-processing search on ``split``; writes ``postprocess`` into the card.

    ``tta``: ``auto`` searches with every test-time augmentation setting (``TTA_OPTIONS``)
    and keeps the cheapest one within ``TUNE_MIN_GAIN`` of the best mask AP (25 val images:
    a smaller gain is noise, and the dearer settings cost 2-5x the time); the choice goes in
    the card too.
    Then, with the chosen parameters, each ``FILL_SCALE_OPTIONS`` entry: separate passes on the
    image enlarged whose small pedestrians join the partition (``fill_partition``); the cheapest
    within ``TUNE_MIN_GAIN`` of the best val mask AP of the partition alone (the id map users see) is kept,
    and for an ensemble the fewest members that run them within ``TUNE_MIN_GAIN`` (``_fill_members``).
    Then each ``ALTERNATIVE_SCALE_OPTIONS`` entry: separate
    passes (e.g. 1.5x, which sees small pedestrians) whose new instances rank last; kept
    only if val mask AP rises by more than ``TUNE_MIN_GAIN``. A Mask R-CNN goes to ``tune_detector``.
    """
    import torch

    from seg.checkpoints import load_checkpoint
    from seg.instances import DWT_ARCHITECTURES
    from seg.instances.data import WORK_HEIGHT, load_instance_split
    from seg.instances.inference import ALTERNATIVE_SCALE_OPTIONS, FILL_SCALE_OPTIONS, TTA_OPTIONS
    from seg.instances.postprocess import PostprocessParams
    from seg.instances.targets import ENERGY_EDGES
    from seg.instances.task import DWTValidation

    model, card = load_checkpoint(checkpoint)
    if card.get("architecture") == "maskrcnn":
        return tune_detector(checkpoint, model, card, data_dir, split, limit, tta)
    if card.get("architecture") not in DWT_ARCHITECTURES:
        raise ValueError("only DWT and Mask R-CNN checkpoints have inference settings to tune")
    samples = load_instance_split(data_dir, split, int(card.get("work_height", WORK_HEIGHT)), limit)
    edges = tuple(card.get("energy_edges", ENERGY_EDGES))
    options = list(TTA_OPTIONS) if tta == "auto" else [tta]  # cheapest first
    model, cpu = model.float().eval(), torch.device("cpu")
    results, computed = {}, {}
    for name in options:
        validation = DWTValidation(samples, edges, *TTA_OPTIONS[name])
        maps, val_loss = validation.maps(model, cpu)
        results[name], computed[name] = validation.report(maps, val_loss, thorough=True), (validation, maps)
    chosen = cheapest_near_best({name: results[name]["mask_ap"] for name in options})
    flip, scales = TTA_OPTIONS[chosen]
    result = results[chosen]
    validation, maps = computed[chosen]
    params = PostprocessParams(**result["postprocess"])
    fill_maps = {(): maps}  # the partition alone, then filled from each set of enlarged passes
    fill_maps |= {fill: validation.with_passes(maps, model, cpu, fill, "fills") for fill in FILL_SCALE_OPTIONS}
    partition_ap = {
        fill: validation.evaluate(filled, replace(params, alternatives=False))["mask_ap"]
        for fill, filled in fill_maps.items()
    }
    fills_compared = {_passes_name(fill): ap for fill, ap in partition_ap.items()}
    fill_scales = cheapest_near_best(partition_ap)
    maps = fill_maps[fill_scales]
    fill_members, members_compared = (), {}
    if fill_scales and len(getattr(model, "members", ())) > 1:
        fill_members, members_compared, maps = _fill_members(validation, maps, model, cpu, fill_scales, params)
    if fill_scales:
        metrics = validation.evaluate(maps, params)
        result = result | {k: v for k, v in metrics.items() if k in result} | {"score": metrics["mask_ap"]}
    alternative_scales, alternatives_compared = (), {"none": result["mask_ap"]}
    for extra in ALTERNATIVE_SCALE_OPTIONS:  # the chosen setting's maps plus each set of separate passes
        metrics = validation.evaluate(validation.with_passes(maps, model, cpu, extra, "alternatives"), params)
        alternatives_compared[_passes_name(extra)] = metrics["mask_ap"]
        if (metrics["mask_ap"] or 0.0) > (result["mask_ap"] or 0.0) + TUNE_MIN_GAIN:
            alternative_scales = extra
            result = result | {k: v for k, v in metrics.items() if k in result} | {"score": metrics["mask_ap"]}
    card["postprocess"] = result["postprocess"]
    card["tta_flip"], card["tta_scales"] = flip, list(scales)
    card["alternative_scales"] = list(alternative_scales)
    card["fill_scales"] = list(fill_scales)
    card["fill_members"] = list(fill_members)
    val_metrics = result | {
        "tta": chosen,
        "tta_flip": flip,
        "tta_scales": list(scales),
        "alternative_scales": list(alternative_scales),
        "fill_scales": list(fill_scales),
        "fill_members": list(fill_members),
    }
    keys = ("mask_ap", "mask_ap50", "mask_ap75", "count_error", "components_mask_ap")
    tuning = {
        "tta": chosen,
        "tta_flip": flip,
        "tta_scales": list(scales),
        **{k: result[k] for k in keys},
        "compared": {name: {k: results[name][k] for k in keys[:3]} for name in options},
        "fill_scales": list(fill_scales),
        "fill_scales_compared": fills_compared,
        "fill_members": list(fill_members),
        "fill_members_compared": members_compared,
        "alternative_scales": list(alternative_scales),
        "alternative_scales_compared": alternatives_compared,
    }
    _record_tuning(checkpoint, card, split, len(samples), val_metrics, tuning)
    return card["postprocess_tuning"] | {"postprocess": card["postprocess"]}


def _fill_members(
    validation: DWTValidation,
    maps: list,
    model: nn.Module,
    device: torch.device,
    fill_scales: tuple[float, ...],
    params: PostprocessParams,
) -> tuple[tuple[int, ...], dict[str, float], list]:
    """The ensemble members the fill passes run on: for each count of members, cheapest first, the ones whose
    fills give the best val partition; the fewest within ``TUNE_MIN_GAIN`` of all of them are kept (``()``:
    all). A fill pass at 2x is most of a served image's time, and one member's found nearly every pedestrian
    the four did. Returns them, every subset's partition mask AP, and ``maps`` with their fills."""
    import itertools
    from dataclasses import replace

    import numpy as np

    from seg.instances.models import DWTEnsemble

    count = len(model.members)
    # each member's fills alone; a subset's are their mean (the heads are linear in the members' probabilities)
    alone = [
        validation.with_passes(maps, DWTEnsemble([member]).eval(), device, fill_scales, "fills")
        for member in model.members
    ]

    def filled(subset: tuple[int, ...]) -> list:
        """``maps`` with the fills of ``subset``: per image, per pass, its members' (fg, energy) averaged."""
        out = []
        for m, members_maps in zip(maps, zip(*(alone[i] for i in subset))):
            passes = zip(*(member.fills for member in members_maps))  # per pass: each member's (fg, energy)
            out.append(m._replace(fills=tuple(tuple(np.mean(h, axis=0) for h in zip(*p)) for p in passes)))
        return out

    partition_params = replace(params, alternatives=False)
    scored = {
        subset: validation.evaluate(filled(subset), partition_params)["mask_ap"] or 0.0
        for size in range(1, count + 1)
        for subset in itertools.combinations(range(count), size)
    }
    best_of_size = {}
    for subset, ap in scored.items():  # in order of size: the best of each size, cheapest first
        if ap > best_of_size.get(len(subset), ((), -1.0))[1]:
            best_of_size[len(subset)] = (subset, ap)
    chosen = cheapest_near_best({subset: ap for subset, ap in best_of_size.values()})
    compared = {"+".join(str(i) for i in subset): ap for subset, ap in scored.items()}
    members = () if len(chosen) == count else chosen
    return members, compared, filled(chosen) if members else maps


def tune_detector(
    checkpoint: str | Path,
    model: nn.Module,
    card: dict,
    data_dir: Path,
    split: str,
    limit: int | None,
    tta: str = "auto",
) -> dict:
    """A Mask R-CNN's proposals, then its test-time augmentation, each the cheapest option within
    ``TUNE_MIN_GAIN`` of the best val mask AP; then where its soft masks are cut: the best of
    ``MASK_THRESHOLD_OPTIONS`` if it beats the default cut by more than ``TUNE_MIN_GAIN``.

    Every proposal is pooled by the box and mask heads, so that is most of a served image's time,
    while a few pedestrians per image rarely need a thousand. Proposals are chosen without
    test-time views; ``tta`` (``auto``: every ``TTA_OPTIONS`` entry) is then chosen with them.
    Writes ``arch_kwargs.test_proposals``, ``tta_flip``, ``tta_scales`` and ``mask_threshold``.
    """
    from seg.instances.data import load_instance_split
    from seg.instances.inference import MASK_THRESHOLD, TTA_OPTIONS, set_proposal_count
    from seg.instances.task import MASKRCNN_HEIGHT, detector_val_metrics

    work_height = int(card.get("work_height", MASKRCNN_HEIGHT))
    samples = load_instance_split(data_dir, split, work_height, limit)
    model = model.float().eval()
    results = {}
    for count in PROPOSAL_OPTIONS:
        set_proposal_count(model, count)
        results[count] = detector_val_metrics(model, samples, work_height)
    proposals = cheapest_near_best({n: results[n]["mask_ap"] for n in PROPOSAL_OPTIONS})
    set_proposal_count(model, proposals)
    options = list(TTA_OPTIONS) if tta == "auto" else [tta]
    with_views = {}
    for name in options:
        if name == "none":  # measured above
            with_views[name] = results[proposals]
        else:
            with_views[name] = detector_val_metrics(model, samples, work_height, *TTA_OPTIONS[name])
    chosen = cheapest_near_best({name: with_views[name]["mask_ap"] for name in options})
    flip, scales = TTA_OPTIONS[chosen]
    cuts = {MASK_THRESHOLD: with_views[chosen]}  # measured above
    cuts |= {
        t: detector_val_metrics(model, samples, work_height, flip, scales, t)
        for t in MASK_THRESHOLD_OPTIONS
        if t != MASK_THRESHOLD
    }
    best_cut = max(MASK_THRESHOLD_OPTIONS, key=lambda t: cuts[t]["mask_ap"] or 0.0)
    gain = (cuts[best_cut]["mask_ap"] or 0.0) - (cuts[MASK_THRESHOLD]["mask_ap"] or 0.0)
    mask_threshold = best_cut if gain > TUNE_MIN_GAIN else MASK_THRESHOLD
    card["arch_kwargs"] = dict(card.get("arch_kwargs") or {}, test_proposals=proposals)
    card["tta_flip"], card["tta_scales"] = flip, list(scales)
    card["mask_threshold"] = mask_threshold
    settings = {
        "test_proposals": proposals,
        "tta": chosen,
        "tta_flip": flip,
        "tta_scales": list(scales),
        "mask_threshold": mask_threshold,
    }
    keys = ("mask_ap", "mask_ap50", "mask_ap75", "box_ap", "count_error")
    tuning = {
        **settings,
        **{k: cuts[mask_threshold][k] for k in keys},
        "compared": {str(n): {k: results[n][k] for k in keys} for n in PROPOSAL_OPTIONS},
        "tta_compared": {name: {k: with_views[name][k] for k in keys} for name in options},
        "mask_threshold_compared": {f"{t:g}": {k: cuts[t][k] for k in keys} for t in MASK_THRESHOLD_OPTIONS},
    }
    _record_tuning(checkpoint, card, split, len(samples), cuts[mask_threshold] | settings, tuning)
    return card["postprocess_tuning"]


def _record_tuning(
    checkpoint: str | Path, card: dict, split: str, images: int, val_metrics: dict, tuning: dict
) -> None:
    """Write a tuning into the card: ``postprocess_tuning``, and on val the card's ``val_metrics`` (they
    describe the model as it now runs; the training's first ones are kept as ``training_val_metrics``)."""
    from seg.cards import stem_of, write_card

    if split == "val":
        if card.get("val_metrics") is not None:
            card.setdefault("training_val_metrics", card["val_metrics"])
        card["val_metrics"] = val_metrics | {"at": "working height"}
    card["postprocess_tuning"] = {"split": split, "num_images": images, "at": "working height", **tuning}
    write_card(stem_of(checkpoint), card)
