"""Shared fixtures: the real datasets when the data root is set, skipped otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from seg.config import dataset_dir

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _dataset_or_skip(name: str, probe: str) -> Path:
    if not os.environ.get("SEG_DATA_DIR"):
        pytest.skip(f"SEG_DATA_DIR is not set; integration tests need the {name} dataset "
                    f"(python -m seg download {name})")
    root = dataset_dir(name)
    if not (root / probe).is_dir():
        pytest.skip(f"{name} not found at {root} (expected a {probe}/ folder)")
    return root


@pytest.fixture(scope="session")
def sbd_root() -> Path:
    return _dataset_or_skip("sbd", "images")


@pytest.fixture(scope="session")
def pennfudan_root() -> Path:
    return _dataset_or_skip("pennfudan", "PNGImages")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep derived caches out of the user's home during tests (shared across the session)."""
    monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "seg-cache"))
