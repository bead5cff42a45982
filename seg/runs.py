"""Runs on disk: where experiment runs live, what state each is in, and reading them back.

``runs/<experiment>/experiment.json`` (the manifest: the experiment file's text and every run's
settings) and ``runs/<experiment>/<run>/model.{safetensors,json}`` (checkpoint and card) are written
by ``seg.experiments``; reports (``seg.experiment_report``) and the dashboard read them through here.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seg.cards import CheckpointError, card_path, jsonable, read_card
from seg.config import REPO_ROOT

RUNS_ENV = "SEG_RUNS_DIR"
#: checkpoint stem of every run inside its folder
RUN_STEM = "model"
MANIFEST = "experiment.json"
PROGRESS = "progress.json"
#: settings that do not change what a run computes (compared when deciding whether a run is current)
NOT_COMPARED = ("data_dir", "out", "device", "command")


class ExperimentError(ValueError):
    """An experiment file or a run folder that cannot be used; the message is for people."""


def runs_dir(override: str | Path | None = None) -> Path:
    """Where runs are written: ``--runs-dir``, else ``$SEG_RUNS_DIR``, else the checkout's ``runs/``."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get(RUNS_ENV)
    return Path(env).expanduser() if env else REPO_ROOT / "runs"


@dataclass
class RunSpec:
    """One run of an experiment: its name, the settings that make it differ, and its full config."""

    experiment: str
    name: str
    settings: dict[str, Any]  # dotted key -> value as written in the file
    config: dict  # TrainConfig.from_dict input (data_dir filled in at run time)
    folder: Path
    command: str = ""

    @property
    def out(self) -> Path:
        return self.folder / RUN_STEM

    @property
    def epochs(self) -> int:
        return 1 if self.config.get("model") == "prior" else int(self.config.get("epochs", 30))


def _compared(config: dict) -> dict:
    return {k: v for k, v in jsonable(config).items() if k not in NOT_COMPARED}


def run_status(spec: RunSpec, evaluate: list[str]) -> str:
    """finished | evaluate (trained, metrics missing) | resume | new | changed (made with other settings)."""
    from seg.resume import has_state, read_meta  # torch: only when a run is looked at, so --help stays instant

    made_with = None
    card = None
    if card_path(spec.out).is_file():
        with contextlib.suppress(CheckpointError):
            card = read_card(spec.out)
    if has_state(spec.out):
        with contextlib.suppress(OSError, ValueError):
            made_with = read_meta(spec.out).get("config")
    elif card is not None:
        made_with = card.get("config")
    if made_with is not None and _compared(made_with) != _compared(spec.config):
        return "changed"
    info = (card or {}).get("experiment") or {}
    if info.get("trained") and not has_state(spec.out):
        missing = [s for s in evaluate if not card.get(f"{s}_metrics")]
        return "evaluate" if missing or not info.get("finished") else "finished"
    if has_state(spec.out):
        return "resume"
    return "new"


@dataclass
class RunRecord:
    """A run on disk: its experiment, name, card (None when it has none yet) and status."""

    experiment: str
    name: str
    folder: Path
    card: dict | None
    status: str
    settings: dict = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return self.folder / RUN_STEM


def read_manifest(folder: Path) -> dict:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def list_experiments(root: str | Path | None = None) -> list[str]:
    base = runs_dir(root)
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if p.is_dir() and (p / MANIFEST).is_file())


def experiment_runs(name: str, root: str | Path | None = None) -> tuple[dict, list[RunRecord]]:
    """The manifest of experiment ``name`` and its runs in the file's order, each with its card and status."""
    folder = runs_dir(root) / name
    manifest = read_manifest(folder)
    if not manifest:
        raise ExperimentError(f"no experiment named {name!r} has been run (nothing in the runs folder)")
    evaluate = list(manifest.get("evaluate") or ["test"])
    records = []
    for entry in manifest.get("runs") or []:
        spec = RunSpec(
            name,
            entry["name"],
            entry.get("settings") or {},
            entry.get("config") or {},
            folder / entry["name"],
            entry.get("command") or "",
        )
        card = None
        with contextlib.suppress(CheckpointError):
            if card_path(spec.out).is_file():
                card = read_card(spec.out)
        records.append(RunRecord(name, spec.name, spec.folder, card, run_status(spec, evaluate), spec.settings))
    return manifest, records


def runs_signature(root: str | Path | None = None) -> tuple:
    """Changes whenever a run's card is written (the dashboard refreshes on it)."""
    base = runs_dir(root)
    if not base.is_dir():
        return ()
    stamps = []
    for card in sorted(base.glob(f"*/*/{RUN_STEM}.json")):
        with contextlib.suppress(OSError):
            st = card.stat()
            stamps.append((str(card), st.st_mtime_ns, st.st_size))
    return tuple(stamps)
