"""Combine trained semantic checkpoints into one ``ensemble`` checkpoint (``seglab ensemble``).

The ensemble averages its members' class probabilities (``seg.models.ensemble``). Its checkpoint
names the members, which must sit in the same folder, with the hash of each one's weights, and
holds only the mixing weights: shipping it costs no bytes beyond the members it is made of, and a
member retrained afterwards is noticed on load instead of silently changing the ensemble.
"""

from __future__ import annotations

from pathlib import Path

from seg.cards import CheckpointError, stem_of, weights_path
from seg.checkpoints import INIT_ARGUMENTS, load_checkpoint, save_checkpoint
from seg.io import sha256_file
from seg.models import create

#: card keys the members must agree on, copied from the first (they describe the data and the output)
SHARED_KEYS = ("task", "classes", "palette", "input_size", "data")


def _total(card: dict, key: str) -> float:
    """A member's own ``epochs_run`` or ``training_time_s`` plus that of the runs it was warm-restarted from."""
    earlier_key = "total_epochs" if key == "epochs_run" else f"total_{key}"
    earlier = (card.get("init_from") or {}).get(earlier_key) or 0
    return float(card.get(key) or 0) + float(earlier)


def combine(paths: list[str | Path], out: str | Path) -> dict:
    """Write the ensemble of the checkpoints ``paths`` to ``out`` (stem); returns its card (no metrics yet)."""
    stems = [stem_of(p) for p in paths]
    out = stem_of(out)
    if len(stems) < 2:
        raise ValueError("combine at least two semantic checkpoints")
    if len({s.name for s in stems}) != len(stems):
        raise ValueError("each member once")
    for stem in stems:
        if stem.parent.resolve() != out.parent.resolve():
            raise ValueError(f"{stem}: members must sit in the ensemble's folder ({out.parent}), which names them")
        if stem.name == out.name:
            raise ValueError(f"the ensemble cannot replace its member {stem.name!r}")
    models, cards = [], []
    for stem in stems:
        model, card = load_checkpoint(stem)
        if card.get("task", "semantic") != "semantic" or not getattr(model, "trainable", True):
            raise CheckpointError(f"{stem.name}: only trained semantic models combine (dwt: ensemble-instances)")
        if card.get("member_checkpoints"):
            raise CheckpointError(f"{stem.name} is an ensemble already; combine its members")
        models.append(model)
        cards.append(card)
    first = cards[0]
    for stem, card in zip(stems[1:], cards[1:]):
        differs = [k for k in SHARED_KEYS if k != "data" and card.get(k) != first.get(k)]
        if differs:
            raise ValueError(f"{stem.name}: {', '.join(differs)} differ from {stems[0].name}'s")
    specs = []
    for card in cards:
        kwargs = {k: ("none" if k in INIT_ARGUMENTS else v) for k, v in (card.get("arch_kwargs") or {}).items()}
        specs.append({"architecture": card["architecture"], "arch_kwargs": kwargs})
    ensemble = create("ensemble", num_classes=len(first["classes"]), members=specs)
    for slot, model in zip(ensemble.members, models):
        slot.load_state_dict(model.state_dict())
    members = [
        {
            "checkpoint": stem.name,
            "sha256": sha256_file(weights_path(stem)),
            "architecture": card["architecture"],
            "command": card.get("command"),
            "encoder_init": card.get("encoder_init"),
            "val_miou": (card.get("val_metrics") or {}).get("miou"),
        }
        for stem, card in zip(stems, cards)
    ]
    card = {k: first[k] for k in SHARED_KEYS if k in first}
    card.update(
        {
            "method": f"mean of the class probabilities of {len(stems)} models: "
            + ", ".join(m["checkpoint"] for m in members),
            "member_checkpoints": members,
            "encoder_init": "members: "
            + "; ".join(f"{m['checkpoint']}: {m['encoder_init']}" for m in members)
            + ("" if any(c.get("pretrained") for c in cards) else " (no pretrained weights)"),
            "pretrained": any(bool(c.get("pretrained")) for c in cards),
            "training_time_s": round(sum(_total(c, "training_time_s") for c in cards), 1),
            "epochs_run": "+".join(str(int(_total(c, "epochs_run"))) for c in cards),
            "command": "seglab ensemble " + " ".join(s.name for s in stems) + f" --out {out.name}",
        }
    )
    save_checkpoint(out, ensemble, card)
    return card
