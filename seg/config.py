"""Where things live: data root, caches, checkpoints, and the compute device.

Everything is resolved at call time (not import time) so tests and the CLI can
change environment variables on the fly.
"""

from __future__ import annotations

import argparse
import numbers
import os
from pathlib import Path
from typing import TYPE_CHECKING

from seg.cards import card_path, stem_of

if TYPE_CHECKING:
    import torch

DATA_ENV = "SEG_DATA_DIR"
CACHE_ENV = "SEG_CACHE_DIR"
CHECKPOINT_ENV = "SEG_CHECKPOINT_DIR"

#: Folder names of each dataset under the data root (the official archives' own names).
DATASET_FOLDERS = {"sbd": "iccv09Data", "pennfudan": "PennFudanPed"}

REPO_ROOT = Path(__file__).resolve().parent.parent


def _user_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "seglab"


def data_root() -> Path:
    """The data root: ``$SEG_DATA_DIR`` or the per-user folder that ``download`` writes to."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser().resolve() if env else _user_cache() / "data"


def dataset_dir(name: str, override: str | Path | None = None) -> Path:
    """One dataset's own folder; ``override`` (the CLI's ``--data``) wins over the data root."""
    if override:
        return Path(override).expanduser().resolve()
    if name not in DATASET_FOLDERS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASET_FOLDERS)}")
    return data_root() / DATASET_FOLDERS[name]


def cache_dir() -> Path:
    """Derived-data cache (parsed labels, distance transforms); safe to delete."""
    env = os.environ.get(CACHE_ENV)
    path = Path(env).expanduser() if env else _user_cache() / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def shipped_checkpoint_dir() -> Path | None:
    """The shipped checkpoints: the checkout's ``checkpoints/``, else the copy installed with the package."""
    checkout = REPO_ROOT / "checkpoints"
    if checkout.is_dir():
        return checkout
    from importlib.util import find_spec

    spec = find_spec("seglab_checkpoints")
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations and Path(locations[0]).is_dir() else None


def checkpoint_dir() -> Path:
    """Where checkpoints are listed and written: ``$SEG_CHECKPOINT_DIR``, else the shipped folder."""
    env = os.environ.get(CHECKPOINT_ENV)
    if env:
        return Path(env).expanduser()
    return shipped_checkpoint_dir() or REPO_ROOT / "checkpoints"


def resolve_checkpoint(name: str | Path, directory: str | Path | None = None) -> Path:
    """A checkpoint given by path or by name -> its stem.

    A path to an existing card (with or without ``.json``/``.safetensors``) is taken as is;
    a bare name is looked up in ``directory`` (the CLI's ``--checkpoint-dir``), then
    ``$SEG_CHECKPOINT_DIR``, then the shipped checkpoints. ``FileNotFoundError`` names every
    place that was searched.
    """
    text = str(name)
    stem = stem_of(Path(text).expanduser())
    if card_path(stem).is_file():
        return stem
    searched: list[Path] = []
    candidates = [Path(directory).expanduser()] if directory else []
    if os.environ.get(CHECKPOINT_ENV):
        candidates.append(Path(os.environ[CHECKPOINT_ENV]).expanduser())
    shipped = shipped_checkpoint_dir()
    if shipped is not None:
        candidates.append(shipped)
    if stem.name == text and "/" not in text:
        for folder in candidates:
            searched.append(folder)
            if card_path(folder / text).is_file():
                return folder / text
    places = ", ".join(str(p) for p in searched) or "no checkpoint folder"
    raise FileNotFoundError(
        f"checkpoint {text!r} not found (looked for {text}.json as a path and in: {places}; "
        f"set --checkpoint-dir or ${CHECKPOINT_ENV})"
    )


def get_device(prefer: str | None = None) -> torch.device:
    """CUDA when present (or asked for), else CPU."""
    import torch  # lazy: keeps `python -m seg --help` and download fast

    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def positive_int(text: str) -> int:
    """A command-line count of 1 or more (threads, images, workers, jobs): 0 or less is a mistake, not a
    default, so the parser refuses it by the flag's name."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def require_whole(label: str, value: object, low: int, high: int | None = None) -> None:
    """Refuse ``value`` by ``label`` unless it is a whole number in [low, high] (numpy integers count,
    booleans do not): the one check behind every count a model, a run or a command takes."""
    if (
        not isinstance(value, numbers.Integral)
        or isinstance(value, bool)
        or value < low
        or (high is not None and value > high)
    ):
        span = f" in [{low}, {high}]" if high is not None else f", {low} or more,"
        raise ValueError(f"{label} must be a whole number{span} got {value!r}")
