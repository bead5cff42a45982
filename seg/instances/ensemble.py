"""Combine trained DWT checkpoints into one ``dwt_ensemble`` checkpoint, or take one member out.

Each member is a checkpoint trained by ``python -m seg train --model dwt``; the ensemble
averages their foreground and energy-level probabilities (see ``DWTEnsemble``). Members
must share the architecture and the energy levels; the card keeps every member's
command, initialisation and validation scores, and says the post-processing must be
re-tuned (``tune-instances``) for the averaged maps. ``take_member`` writes one member back
out as a plain DWT, so an ensemble's members can be trained further and combined again.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from seg.checkpoints import load_checkpoint, save_checkpoint, stem_of
from seg.instances.models import DWTEnsemble

#: card keys copied from the first member (they describe the data and the method, not one run)
SHARED_KEYS = (
    "task",
    "dataset",
    "work_height",
    "energy_edges",
    "energy_levels_note",
    "split_fractions",
    "train_images",
    "val_images",
    "classes",
    "palette",
)


def _init_summary(card: dict) -> str:
    """One short phrase per member for the ensemble's card (each member's card has the details)."""
    source, restarts = card.get("init_from") or {}, 0
    while source.get("architecture") == "dwt":  # follow warm restarts back to the first start
        source, restarts = source.get("earlier") or {}, restarts + 1
    if source.get("architecture") == "dwt_ensemble":  # a member taken out (its own start is on its card)
        start = f"a member of this project's {source.get('checkpoint')!r} DWT ensemble"
    elif source.get("architecture") is not None:
        start = f"body from this project's {source.get('dataset')} {source.get('checkpoint')!r} checkpoint"
    elif card.get("pretrained"):
        start = str(card.get("encoder_init"))
    else:
        start = "random initialisation"
    return start + (f", then {restarts} warm restart(s)" if restarts else "")


def _shared_kwargs(card: dict) -> dict:
    """The architecture members must share (the training-only direction head is not part of it)."""
    return {k: v for k, v in (card.get("arch_kwargs") or {}).items() if k not in ("num_classes", "direction_head")}


def combine(paths: list[str | Path], out: str | Path) -> dict:
    """Write the ensemble of ``paths`` to ``out`` (stem); returns its card."""
    if len(paths) < 2:
        raise ValueError("combine at least two DWT checkpoints")
    models, cards = [], []
    for path in paths:
        model, card = load_checkpoint(path)
        if card.get("architecture") != "dwt":
            raise ValueError(f"{path}: a {card.get('architecture')!r} checkpoint; only dwt checkpoints combine")
        model.direction_head = None  # trained only, never run at inference: members with and without combine
        models.append(model.float())
        cards.append(card)
    first = cards[0]
    kwargs = _shared_kwargs(first)
    for path, card in zip(paths[1:], cards[1:]):
        other = _shared_kwargs(card)
        if other != kwargs or card.get("energy_edges") != first.get("energy_edges"):
            raise ValueError(f"{path}: architecture or energy levels differ from {paths[0]}")
    ensemble = DWTEnsemble(models)
    ensemble.arch_name = "dwt_ensemble"  # what the registry would have set; the card's architecture
    inits = Counter(_init_summary(c) for c in cards)
    members = [
        {
            "checkpoint": str(p),
            "command": c.get("command"),
            "encoder_init": c.get("encoder_init"),
            "init_from": (c.get("init_from") or {}).get("checkpoint"),
            "epochs_run": c.get("epochs_run"),
            "training_time_s": c.get("training_time_s"),
            "best_epoch": c.get("best_epoch"),
            "val_mask_ap": (c.get("val_metrics") or {}).get("mask_ap"),
        }
        for p, c in zip(paths, cards)
    ]
    card = {k: first[k] for k in SHARED_KEYS if k in first}
    card.update(
        {
            "architecture": "dwt_ensemble",
            "arch_kwargs": {"num_classes": 2, "members": len(models), **kwargs},
            "method": (
                f"Deep Watershed Transform, ensemble of {len(models)} independently trained DWTs (same "
                "architecture): foreground and energy-level probabilities averaged, then the DWT "
                "post-processing (seeds cut from the expected energy, watershed over the foreground)"
            ),
            "encoder_init": "members: "
            + ", ".join(f"{n}x {init}" for init, n in inits.items())
            + ("" if any(c.get("pretrained") for c in cards) else "; no ImageNet or COCO weights"),
            "pretrained": any(bool(c.get("pretrained")) for c in cards),
            "members": members,
            "training_time_s": sum(float(c.get("training_time_s") or 0) for c in cards),
            "epochs_run": "+".join(str(c.get("epochs_run", "?")) for c in cards),
            "command": "python -m seg ensemble-instances " + " ".join(str(p) for p in paths) + f" --out {out}",
            "postprocess_note": "re-tune on val after combining: python -m seg tune-instances --checkpoint <out>",
        }
    )
    save_checkpoint(out, ensemble, card)
    return card


def take_member(ensemble: str | Path, index: int, out: str | Path) -> dict:
    """Write member ``index`` (from 0) of a ``dwt_ensemble`` checkpoint to ``out`` as a plain DWT; returns its card.

    The weights are the member's, unchanged. The ensemble keeps each member's last command and
    initialisation, not its whole card, so the new card's ``init_from`` names the ensemble and
    carries what it knew of the member; ``encoder_init`` is the member's own.
    """
    model, card = load_checkpoint(ensemble)
    if card.get("architecture") != "dwt_ensemble":
        raise ValueError(f"{ensemble}: a {card.get('architecture')!r} checkpoint; members come from a dwt_ensemble")
    count = len(model.members)
    if not 0 <= index < count:
        raise ValueError(f"{ensemble} has {count} members (0 to {count - 1}); there is no member {index}")
    member = model.members[index]
    member.arch_name = "dwt"
    listed = card.get("members") or []
    info = listed[index] if index < len(listed) else {}  # what the ensemble's card knew of the member
    source = {
        "checkpoint": stem_of(ensemble).name,  # the name it is known by (a shipped ensemble keeps its build name)
        "architecture": "dwt_ensemble",
        "dataset": card.get("dataset"),
        "member": index,
        "member_checkpoint": info.get("checkpoint"),
        "command": info.get("command"),
        "its_encoder_init": info.get("encoder_init"),
        "its_val_metrics": {"mask_ap": info.get("val_mask_ap")},
        "pretrained": bool(card.get("pretrained")),
        "epochs": info.get("epochs_run"),
        "training_time_s": info.get("training_time_s"),
        "loaded": f"member {index}'s weights, unchanged",
    }
    new = {k: card[k] for k in SHARED_KEYS if k in card}
    new.update(
        {
            "architecture": "dwt",
            "arch_kwargs": {k: v for k, v in card["arch_kwargs"].items() if k != "members"},
            "method": "one Deep Watershed Transform of a DWT ensemble, taken out alone (foreground and energy "
            "heads; seeds cut from the expected energy, grown back by watershed)",
            "encoder_init": info.get("encoder_init") or card.get("encoder_init"),
            "pretrained": bool(card.get("pretrained")),
            "init_from": source,
            "epochs_run": info.get("epochs_run"),
            "training_time_s": info.get("training_time_s"),
            "command": f"python -m seg ensemble-instances {ensemble} --take {index} --out {out}",
            "postprocess_note": "tune on val before serving alone: python -m seg tune-instances --checkpoint <out>",
        }
    )
    save_checkpoint(out, member, new)
    return new
