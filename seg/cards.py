"""Model cards: the JSON file beside every checkpoint's weights, and the one place that writes them.

A card says what a checkpoint is (architecture, classes, task), how its weights were
initialised and trained (config, command, curve, lineage) and how well it does (val and
test metrics). Training, tuning, quantisation and ensembling all write through
``write_card``/``update_card``, so every card is written the same way: atomically, as strict
JSON (no NaN), with tensors, paths and numpy scalars converted.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from seg.io import atomic_write_text


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not match its card."""


def stem_of(path: str | Path) -> Path:
    """``x.json`` / ``x.safetensors`` / ``x`` -> ``x``: a checkpoint is named by its stem."""
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".json", ".safetensors") else path


def beside(path: str | Path, suffix: str) -> Path:
    """The checkpoint's file with ``suffix`` (``.json``, ``.safetensors``, ...), appended to its stem.

    Appended, not swapped with ``Path.with_suffix``: a stem such as ``runs/unet-lr0.5`` has a dot,
    and ``with_suffix`` would name ``runs/unet-lr0.json``, another run's card.
    """
    stem = stem_of(path)
    return stem.with_name(stem.name + suffix)


def card_path(path: str | Path) -> Path:
    return beside(path, ".json")


def weights_path(path: str | Path) -> Path:
    return beside(path, ".safetensors")


def jsonable(value: Any, strict: bool = False) -> Any:
    """Plain JSON values from tensors, numpy scalars/arrays, paths, tuples and dataclass-like dicts.

    Non-finite floats become ``None``: a card is read by other tools, and strict JSON has no NaN.
    ``strict``: anything else becomes its text too (for a browser, which must receive JSON).
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v, strict) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, strict) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "tolist") and callable(value.tolist):  # torch tensors and numpy arrays/scalars
        return jsonable(value.tolist(), strict)
    if hasattr(value, "item") and callable(value.item):
        return jsonable(value.item(), strict)
    if strict and not (isinstance(value, (str, int, bool)) or value is None):
        return str(value)
    return value


def can_teach(card: dict) -> bool:
    """Whether a checkpoint's answers are worth distilling: a semantic model that looks at the image
    (the prior answers the same for every image, so it has nothing to teach)."""
    return card.get("task", "semantic") == "semantic" and card.get("architecture") != "prior"


#: An absolute POSIX path inside a string: a "/" that starts a token, then everything up to a space or quote
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/-])/[^\s\"']*")


def _path_name(match: re.Match) -> str:
    return match.group(0).rstrip("/").rsplit("/", 1)[-1]


def without_paths(value: Any) -> Any:
    """``value`` (plain JSON values) with each absolute path inside its strings cut to its last part,
    e.g. ``--out /srv/visitors/ab12/checkpoints/mine`` to ``--out mine``: a card or run settings as
    someone who must not learn the server's folders sees them. A string is cleaned as text."""
    if isinstance(value, str):
        return _ABSOLUTE_PATH.sub(_path_name, value)
    if isinstance(value, list):
        return [without_paths(v) for v in value]
    if isinstance(value, dict):
        return {k: without_paths(v) for k, v in value.items()}
    return value


def read_card(path: str | Path) -> dict:
    """The card of checkpoint ``path``; ``CheckpointError`` when missing or not a card."""
    where = card_path(path)
    if not where.is_file():
        raise CheckpointError(f"card {where.name} is missing")
    try:
        card = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"card {where.name} is not valid JSON: {err}") from None
    if not isinstance(card, dict) or "architecture" not in card:
        raise CheckpointError(f"card {where.name} has no 'architecture'")
    return card


def write_card(path: str | Path, card: dict) -> Path:
    """Write ``card`` (atomically) beside the weights of ``path``; returns the card's path."""
    where = card_path(path)
    where.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(where, json.dumps(jsonable(card), indent=1, allow_nan=False))
    return where


def update_card(path: str | Path, changes: dict) -> dict:
    """Read the card, apply ``changes`` (top-level keys), write it back; returns the new card."""
    card = read_card(path)
    card.update(changes)
    write_card(path, card)
    return card


def write_json(path: str | Path, data: Any) -> None:
    """A metrics or prediction record as strict JSON (atomic), for ``--json`` outputs."""
    atomic_write_text(path, json.dumps(jsonable(data), indent=1, allow_nan=False))
