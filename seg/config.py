"""Where things live: data root, caches, checkpoints, and the compute device.

Everything is resolved at call time (not import time) so tests and the CLI can
change environment variables on the fly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

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


def checkpoint_dir() -> Path:
    env = os.environ.get(CHECKPOINT_ENV)
    return Path(env).expanduser() if env else REPO_ROOT / "checkpoints"


def get_device(prefer: str | None = None) -> "torch.device":
    """CUDA when present (or asked for), else CPU."""
    import torch  # lazy: keeps `python -m seg --help` and download fast

    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
