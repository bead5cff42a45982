"""Experiments: a base training config plus a grid, run as a resumable sweep of ordinary training runs.

An experiment file (TOML) names a base ``TrainConfig`` and the settings that vary::

    title = "Augmentation"
    evaluate = ["test"]                 # splits measured on the best checkpoint at the end
    threads = 1                         # torch threads per run (default: the CPUs split between the jobs)

    [base]                              # TrainConfig.from_dict format
    model = "cnn"
    epochs = 12
    model_kwargs = { width = 16 }
    [base.semantic]
    train_size = [144, 112]

    [grid]                              # every combination is one run
    crop_fraction = [0.25, 0.0625]      # bare option names, or dotted paths ("model_kwargs.width")
    flip_p = [0.5, 0.25]
    seed = [0, 1]

    [[group]]                           # more runs: fixed settings (set) x their own grid
    label = "noaug"
    set = { crop_fraction = "none", flip_p = 0.0 }
    grid = { seed = [0, 1] }

Each run trains through ``seg.training.train`` (the same engine as ``seglab train``) into
``runs/<experiment>/<run>/model`` (checkpoint + card), then evaluates its best checkpoint on the
``evaluate`` splits and records ``<split>_metrics`` and an ``experiment`` section (settings, threads,
wall and CPU time) on its card. Re-running a file skips finished runs, resumes interrupted ones from
their last finished epoch (``seg.resume``) and refuses runs whose card was made with other settings.

Parallelism: ``--jobs N`` runs N runs at once in worker processes, the torch threads split between
them. Under ``torchrun`` every rank takes its share of the runs (run i goes to rank i mod world size)
and trains it alone, so a cluster job array or ``torchrun --nnodes ...`` spreads a sweep without any
coordination beyond a shared ``runs/`` folder; a lock file keeps two processes off the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fnmatch
import itertools
import os
import re
import resource
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from seg.cards import beside, card_path, jsonable, update_card, write_json
from seg.config import dataset_dir, positive_int
from seg.runs import (
    MANIFEST,
    PROGRESS,
    RUNS_ENV,
    ExperimentError,
    RunSpec,
    run_status,
    runs_dir,
)

FILE_KEYS = {"name", "title", "question", "description", "evaluate", "threads", "base", "grid", "group", "notes"}
#: torchrun's variables, hidden from the engine so that each rank trains its runs alone
DISTRIBUTED_ENV = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "GROUP_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
)


# -- experiment files ---------------------------------------------------------------------------


@dataclass
class Experiment:
    name: str
    source: Path | None
    text: str
    title: str
    question: str
    description: str
    evaluate: list[str]
    base: dict
    runs: list[RunSpec] = field(default_factory=list)
    notes: str = ""
    #: torch threads per run unless --threads says otherwise (a run's numbers depend on its thread count)
    threads: int | None = None

    @property
    def folder(self) -> Path:
        return self.runs[0].folder.parent if self.runs else Path()


def _option_fields() -> tuple[set[str], set[str], set[str]]:
    from dataclasses import fields

    from seg.training import InstanceOptions, SemanticOptions, TrainConfig

    return (
        {f.name for f in fields(TrainConfig)},
        {f.name for f in fields(SemanticOptions)},
        {f.name for f in fields(InstanceOptions)},
    )


def resolve_key(key: str) -> tuple[str, ...]:
    """'crop_fraction' -> ('semantic', 'crop_fraction'); 'model_kwargs.width' -> ('model_kwargs', 'width')."""
    top, semantic, instances = _option_fields()
    parts = tuple(key.split("."))
    if len(parts) > 1:
        if parts[0] in ("semantic", "instances", "model_kwargs") and all(parts):
            return parts
        raise ExperimentError(f"setting {key!r}: dotted names start with semantic., instances. or model_kwargs.")
    if key in top and key not in ("semantic", "instances", "command", "out"):
        return (key,)
    if key in semantic:
        return ("semantic", key)
    if key in instances:
        return ("instances", key)
    raise ExperimentError(
        f"unknown setting {key!r}; settings are TrainConfig fields (epochs, lr, seed, ...), "
        "semantic or instance options (crop_fraction, flip_p, ...) or model_kwargs.NAME"
    )


def _value(path: tuple[str, ...], value: Any) -> Any:
    """TOML value -> config value: crop fractions and sizes as the CLI reads them, 'none' where None is meant."""
    leaf = path[-1]
    if path[0] == "semantic" and leaf == "crop_fraction":
        if isinstance(value, str) and value.lower() == "none":
            return None
        if isinstance(value, (int, float)):
            return [float(value), float(value)]
        if isinstance(value, list) and len(value) == 2:
            return [float(v) for v in value]
        raise ExperimentError('crop_fraction is a number, [min, max] or "none"')
    if path[0] == "semantic" and leaf == "train_size":
        if isinstance(value, str) and value.lower() == "none":
            return None
        if isinstance(value, str) and "x" in value.lower():
            try:
                return [int(v) for v in value.lower().split("x")]
            except ValueError:
                raise ExperimentError('train_size is "WIDTHxHEIGHT" or [width, height]') from None
        if isinstance(value, list) and len(value) == 2:
            return [int(v) for v in value]
        raise ExperimentError('train_size is "WIDTHxHEIGHT" or [width, height]')
    return value


def _apply(config: dict, key: str, value: Any) -> None:
    path = resolve_key(key)
    node = config
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ExperimentError(f"setting {key!r}: {part} is not a table")
    node[path[-1]] = _value(path, value)


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, list):
        return "x".join(_shown(v) for v in value)
    return str(value)


def run_name(label: str, varying: dict[str, Any]) -> str:
    """'noaug' + {seed: 0} -> 'noaug,seed=0'; only [A-Za-z0-9._=,+-] survive (a folder name everywhere)."""
    parts = ([label] if label else []) + [f"{k.split('.')[-1]}={_shown(v)}" for k, v in varying.items()]
    name = ",".join(parts) or "base"
    return re.sub(r"[^A-Za-z0-9._=,+-]", "-", name)


def _grid(table: Any, where: str) -> list[dict[str, Any]]:
    if table is None:
        return [{}]
    if not isinstance(table, dict):
        raise ExperimentError(f"{where} is a table of setting = [values]")
    keys = list(table)
    for key in keys:
        if not isinstance(table[key], list) or not table[key]:
            raise ExperimentError(f"{where}.{key} must be a non-empty list of values")
    return [dict(zip(keys, combo)) for combo in itertools.product(*(table[k] for k in keys))]


def parse_experiment(text: str, name: str, source: Path | None = None, root: str | Path | None = None) -> Experiment:
    """Read an experiment file's text; every run's config is checked with ``TrainConfig.from_dict``."""
    from seg.models import available, task_of
    from seg.training import TrainConfig

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ExperimentError(f"the experiment file is not valid TOML: {err}") from None
    unknown = sorted(set(data) - FILE_KEYS)
    if unknown:
        raise ExperimentError(
            f"unknown entries in the experiment file: {', '.join(unknown)} (known: {', '.join(sorted(FILE_KEYS))})"
        )
    name = str(data.get("name") or name)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ExperimentError(f"experiment name {name!r}: use letters, digits, '.', '_' and '-'")
    threads = data.get("threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ExperimentError("threads is a whole number of torch threads per run, 1 or more")
    evaluate = data.get("evaluate", ["test"])
    if not isinstance(evaluate, list) or any(s not in ("train", "test") for s in evaluate):
        raise ExperimentError("evaluate is a list of splits, train and/or test (training measures val)")
    base = data.get("base") or {}
    if not isinstance(base, dict):
        raise ExperimentError("[base] is a table of training settings")
    groups: list[tuple[str, dict, Any]] = []
    extra = data.get("group") or []
    if not isinstance(extra, list):
        raise ExperimentError("groups are written [[group]]")
    if "grid" in data or not extra:
        groups.append(("", {}, data.get("grid")))
    for i, group in enumerate(extra):
        unknown = sorted(set(group) - {"label", "set", "grid"})
        if unknown:
            raise ExperimentError(f"group {i + 1}: unknown entries {', '.join(unknown)} (label, set, grid)")
        groups.append((str(group.get("label", "")), dict(group.get("set") or {}), group.get("grid")))
    folder = runs_dir(root) / name
    where = str(source) if source is not None else f"{name}.toml"
    runs: list[RunSpec] = []
    seen: set[str] = set()
    for label, fixed, grid in groups:
        for varying in _grid(grid, "grid" if not label else f"group {label!r} grid"):
            config = copy.deepcopy(base)
            config.pop("out", None)
            for key, value in list((config.get("semantic") or {}).items()):
                config["semantic"][key] = _value(("semantic", key), value)
            settings = dict(fixed) | varying
            for key, value in settings.items():
                _apply(config, key, value)
            model = config.get("model", "unet")
            if model not in available():
                raise ExperimentError(f"unknown model {model!r}; available: {', '.join(available())}")
            if task_of(model) != "semantic":
                raise ExperimentError(f"{model} is an instance model; experiments run semantic models")
            config.pop("instances", None)
            try:
                checked = TrainConfig.from_dict(
                    {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items()}
                )
            except (TypeError, ValueError) as err:
                raise ExperimentError(f"run settings {settings}: {err}") from None
            full = jsonable({k: v for k, v in checked.to_dict().items() if k not in ("out",)})
            if not base.get("data_dir") and not config.get("data_dir"):
                full["data_dir"] = ""
            rname = run_name(label, varying)
            if rname in seen:
                raise ExperimentError(f"two runs would be named {rname!r}; give the groups different labels")
            seen.add(rname)
            command = f"seglab experiment {shlex.quote(where)} --only {shlex.quote(rname)}"
            runs.append(RunSpec(name, rname, jsonable(settings), full, folder / rname, command))
    return Experiment(
        name,
        source,
        text,
        str(data.get("title") or name),
        str(data.get("question") or ""),
        str(data.get("description") or ""),
        list(evaluate),
        base,
        runs,
        str(data.get("notes") or ""),
        threads,
    )


def load_experiment(path: str | Path, root: str | Path | None = None) -> Experiment:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise ExperimentError(f"cannot read the experiment file {path.name}") from None
    try:
        shown = path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        shown = Path(path.name)
    return parse_experiment(text, path.stem, shown, root)


def write_manifest(experiment: Experiment) -> Path:
    """``runs/<experiment>/experiment.json``: the file's text and every run's settings, for reports and the UI."""
    where = experiment.folder / MANIFEST
    where.parent.mkdir(parents=True, exist_ok=True)
    write_json(
        where,
        {
            "name": experiment.name,
            "title": experiment.title,
            "question": experiment.question,
            "description": experiment.description,
            "notes": experiment.notes,
            "source": str(experiment.source) if experiment.source else None,
            "text": experiment.text,
            "evaluate": experiment.evaluate,
            "runs": [
                {"name": r.name, "settings": r.settings, "config": r.config, "command": r.command}
                for r in experiment.runs
            ],
        },
    )
    return where


# -- one run ------------------------------------------------------------------------------------


def cpu_seconds() -> float:
    """CPU time of this process, every thread (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="ascii", errors="ignore").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or platform.machine()


@contextlib.contextmanager
def run_lock(folder: Path) -> Iterator[bool]:
    """An exclusive lock on a run's folder (released when the process ends, however it ends)."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_progress(folder: Path) -> dict:
    import json

    with contextlib.suppress(OSError, ValueError):
        data = json.loads((folder / PROGRESS).read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return data
    return {}


def _clean(spec: RunSpec) -> None:
    """A run starting afresh drops what an attempt that never finished an epoch left behind."""
    for suffix in (".json", ".safetensors"):
        beside(spec.out, suffix).unlink(missing_ok=True)
    (spec.folder / PROGRESS).unlink(missing_ok=True)


def evaluation_metrics(out: Path, data_dir: str, split: str, limit: int | None) -> dict:
    from seg.evaluate import card_metrics, evaluate_semantic_checkpoint

    return card_metrics(evaluate_semantic_checkpoint(out, data_dir, split, limit))


Report = Callable[[dict], None]


def run_one(
    spec: RunSpec,
    evaluate: list[str],
    threads: int,
    report: Report | None = None,
    stop: threading.Event | None = None,
    data_dir: str | None = None,
) -> str:
    """Train (or resume) one run, then evaluate its best checkpoint; returns the run's status afterwards.

    ``report`` receives {"run", "kind": start|step|epoch|evaluate|done, ...} for progress bars.
    """
    import torch

    from seg.training import TrainConfig, train

    report = report or (lambda event: None)
    with run_lock(spec.folder) as locked:
        if not locked:
            report({"run": spec.name, "kind": "busy"})
            return "busy"
        status = run_status(spec, evaluate)
        if status in ("finished", "changed"):
            return status
        torch.set_num_threads(max(1, threads))
        threads = torch.get_num_threads()
        config = TrainConfig.from_dict({k: (tuple(v) if isinstance(v, list) else v) for k, v in spec.config.items()})
        config.data_dir = data_dir or spec.config.get("data_dir") or str(dataset_dir("sbd"))
        config.out = str(spec.out)
        config.command = spec.command
        progress = _read_progress(spec.folder)
        wall0, cpu0 = time.time(), cpu_seconds()
        before_wall, before_cpu = float(progress.get("train_wall_s", 0.0)), float(progress.get("train_cpu_s", 0.0))

        def save_progress(**extra: Any) -> None:
            progress.update(
                train_wall_s=round(before_wall + time.time() - wall0, 2),
                train_cpu_s=round(before_cpu + cpu_seconds() - cpu0, 2),
                threads=threads,
                **extra,
            )
            write_json(spec.folder / PROGRESS, progress)

        if status in ("new", "resume"):
            if status == "new":
                _clean(spec)
            else:
                progress["resumed"] = int(progress.get("resumed", 0)) + 1
            report({"run": spec.name, "kind": "start", "epochs": spec.epochs, "resume": status == "resume"})
            stopped = True
            for event in train(config, stop_event=stop, resume=status == "resume"):
                kind = event["type"]
                if kind == "step":
                    report(
                        {
                            "run": spec.name,
                            "kind": "step",
                            "epoch": event["epoch"],
                            "step": event["step"],
                            "steps": event.get("steps"),
                            "loss": event["loss"],
                        }
                    )
                elif kind == "epoch":
                    save_progress()
                    report(
                        {
                            "run": spec.name,
                            "kind": "epoch",
                            "epoch": event["epoch"],
                            "epochs": event["epochs"],
                            "score": event["score"],
                            "train_loss": event["train_loss"],
                        }
                    )
                elif kind == "done":
                    stopped = bool(event["stopped"])
            save_progress()
            if stopped or not card_path(spec.out).is_file():
                report({"run": spec.name, "kind": "done", "status": "stopped"})
                return "stopped"
            update_card(spec.out, {"experiment": _experiment_section(spec, progress, trained=True)})
        eval_wall0, eval_cpu0 = time.time(), cpu_seconds()
        for split in evaluate:
            if stop is not None and stop.is_set():
                report({"run": spec.name, "kind": "done", "status": "stopped"})
                return "stopped"
            report({"run": spec.name, "kind": "evaluate", "split": split})
            metrics = evaluation_metrics(spec.out, config.data_dir, split, config.limit)
            update_card(spec.out, {f"{split}_metrics": metrics})
        progress.update(
            eval_wall_s=round(float(progress.get("eval_wall_s", 0.0)) + time.time() - eval_wall0, 2),
            eval_cpu_s=round(float(progress.get("eval_cpu_s", 0.0)) + cpu_seconds() - eval_cpu0, 2),
        )
        write_json(spec.folder / PROGRESS, progress)
        update_card(spec.out, {"experiment": _experiment_section(spec, progress, trained=True, finished=True)})
        report({"run": spec.name, "kind": "done", "status": "finished"})
        return "finished"


def _experiment_section(spec: RunSpec, progress: dict, trained: bool, finished: bool = False) -> dict:
    wall = float(progress.get("train_wall_s", 0.0)) + float(progress.get("eval_wall_s", 0.0))
    cpu = float(progress.get("train_cpu_s", 0.0)) + float(progress.get("eval_cpu_s", 0.0))
    return {
        "experiment": spec.experiment,
        "run": spec.name,
        "settings": spec.settings,
        "trained": trained,
        "finished": finished,
        "threads": progress.get("threads"),
        "resumed": int(progress.get("resumed", 0)),
        "train_wall_s": progress.get("train_wall_s"),
        "train_cpu_s": progress.get("train_cpu_s"),
        "eval_wall_s": progress.get("eval_wall_s"),
        "eval_cpu_s": progress.get("eval_cpu_s"),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "cpu": cpu_model(),
        "command": spec.command,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) if finished else None,
    }


# -- the sweep ----------------------------------------------------------------------------------


def distributed_share() -> tuple[int, int]:
    """(rank, world) of a ``torchrun`` launch, then hides it so each rank's runs train alone."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", "0") or 0)
    if world > 1:
        for key in DISTRIBUTED_ENV:
            os.environ.pop(key, None)
    return rank, world


def default_threads(jobs: int) -> int:
    """Torch threads per job: the CPUs this process may use, split between the jobs."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, cpus // max(1, local) // max(1, jobs))


class SweepProgress:
    """A tqdm bar for the sweep and one per running run (epochs, with the step and loss as postfix)."""

    def __init__(self, total: int, done: int, quiet: bool, label: str) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.quiet = quiet
        self.lock = threading.Lock()
        self.sweep = None if quiet else tqdm(total=total, initial=done, desc=label, unit="run", position=0)
        self.bars: dict[str, Any] = {}
        self.slots: dict[str, int] = {}

    def __call__(self, event: dict) -> None:
        with self.lock:
            self._handle(event)

    def _handle(self, event: dict) -> None:
        run, kind = event["run"], event["kind"]
        if kind == "busy":
            self.write(f"{run}: another process is running it; skipped")
            return
        if kind == "start":
            if self.quiet:
                self.write(f"{run}: {'resuming' if event.get('resume') else 'starting'}")
                return
            slot = min(set(range(1, len(self.slots) + 2)) - set(self.slots.values()))
            self.slots[run] = slot
            self.bars[run] = self._tqdm(total=event["epochs"], desc=run[:40], unit="epoch", position=slot, leave=False)
            return
        bar = self.bars.get(run)
        if kind == "step" and bar is not None:
            bar.set_postfix_str(
                f"epoch {event['epoch']} step {event['step'] + 1}/{event.get('steps') or '?'} loss {event['loss']:.3f}"
            )
        elif kind == "epoch":
            if bar is not None:
                bar.n = event["epoch"]
                bar.set_postfix_str(f"val mIoU {event['score']:.4f}")
                bar.refresh()
            elif self.quiet:
                self.write(f"{run}: epoch {event['epoch']}/{event['epochs']} val mIoU {event['score']:.4f}")
        elif kind == "evaluate" and bar is not None:
            bar.set_postfix_str(f"evaluating on {event['split']}")
        elif kind == "done":
            if bar is not None:
                bar.close()
                self.bars.pop(run, None)
                self.slots.pop(run, None)
            if event["status"] == "finished" and self.sweep is not None:
                self.sweep.update(1)
            self.write(f"{run}: {event['status']}")

    def write(self, text: str) -> None:
        if self.quiet:
            print(text, flush=True)
        else:
            self._tqdm.write(text)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        if self.sweep is not None:
            self.sweep.close()


_worker_queue: Any = None
#: set in a worker once it was asked to stop: runs already queued to it are not started
_worker_stopping = threading.Event()


def _worker_init(queue: Any) -> None:
    global _worker_queue
    _worker_queue = queue
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent asks workers to stop with SIGTERM
    signal.signal(signal.SIGTERM, lambda signum, frame: _worker_stopping.set())
    queue.put({"run": "", "kind": "pid", "pid": os.getpid()})


def _worker_run(spec: RunSpec, evaluate: list[str], threads: int, data_dir: str | None) -> tuple[str, str]:
    from seg.training import stop_on_signals

    if _worker_stopping.is_set():
        return spec.name, "stopped"
    with stop_on_signals() as stop:
        status = run_one(spec, evaluate, threads, _worker_queue.put, stop, data_dir)
    if stop.is_set():
        _worker_stopping.set()
    return spec.name, status


def select_runs(experiment: Experiment, only: list[str] | None) -> list[RunSpec]:
    runs = experiment.runs
    if only:
        runs = [r for r in runs if any(fnmatch.fnmatchcase(r.name, pattern) for pattern in only)]
        if not runs:
            raise ExperimentError(
                f"no run of {experiment.name} matches {', '.join(only)}; "
                f"runs: {', '.join(r.name for r in experiment.runs)}"
            )
    return runs


def run_experiment(
    experiment: Experiment,
    jobs: int = 1,
    threads: int | None = None,
    quiet: bool = False,
    only: list[str] | None = None,
    data_dir: str | None = None,
) -> dict[str, str]:
    """Run every unfinished run (this rank's share under torchrun); returns {run: status}."""
    from seg.training import stop_on_signals

    rank, world = distributed_share()
    chosen = select_runs(experiment, only)
    mine = [r for i, r in enumerate(chosen) if i % world == rank]
    if rank == 0:
        write_manifest(experiment)
    statuses = {r.name: run_status(r, experiment.evaluate) for r in mine}
    for name, status in statuses.items():
        if status == "changed":
            print(
                f"{experiment.name}/{name}: its card or saved state was made with other settings than the file "
                f"now gives; remove runs/{experiment.name}/{name} to run it again",
                file=sys.stderr,
            )
    todo = [r for r in mine if statuses[r.name] not in ("finished", "changed")]
    jobs = max(1, min(jobs, len(todo) or 1))
    per_job = threads or experiment.threads or default_threads(jobs)
    label = f"{experiment.name}" + (f" (rank {rank}/{world})" if world > 1 else "")
    bars = SweepProgress(len(mine), sum(s == "finished" for s in statuses.values()), quiet, label)
    bars.write(
        f"{label}: {len(mine)} runs, {len(mine) - len(todo)} already finished or refused, {len(todo)} to run; "
        f"{jobs} at a time on {per_job} thread{'s' if per_job != 1 else ''} each"
    )
    try:
        if jobs == 1:
            with stop_on_signals() as stop:
                for spec in todo:
                    statuses[spec.name] = run_one(spec, experiment.evaluate, per_job, bars, stop, data_dir)
                    if stop.is_set():
                        break
        else:
            statuses.update(_run_parallel(todo, experiment.evaluate, jobs, per_job, bars, data_dir))
    finally:
        bars.close()
    return statuses


def _run_parallel(
    todo: list[RunSpec], evaluate: list[str], jobs: int, threads: int, bars: SweepProgress, data_dir: str | None
) -> dict[str, str]:
    """Worker processes (spawned: no forked torch state); their events come back through a queue."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from seg.training import stop_on_signals

    context = multiprocessing.get_context("spawn")
    manager = context.Manager()
    queue = manager.Queue()
    pids: set[int] = set()
    done = threading.Event()

    def drain() -> None:
        while not done.is_set() or not queue.empty():
            try:
                event = queue.get(timeout=0.2)
            except Exception:  # noqa: BLE001 - queue.Empty from a manager proxy
                continue
            if event.get("kind") == "pid":
                pids.add(int(event["pid"]))
            else:
                bars(event)

    listener = threading.Thread(target=drain, daemon=True)
    listener.start()
    statuses: dict[str, str] = {}
    asked_to_stop = False
    try:
        with (
            stop_on_signals() as stop,
            ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_init, initargs=(queue,)) as pool,
        ):
            names = {pool.submit(_worker_run, spec, evaluate, threads, data_dir): spec.name for spec in todo}
            pending = set(names)
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in finished:
                    if future.cancelled():
                        statuses[names[future]] = "stopped"
                        continue
                    name, status = future.result()
                    statuses[name] = status
                if stop.is_set() and not asked_to_stop:
                    asked_to_stop = True
                    for future in pending:
                        future.cancel()
                    for pid in pids:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGTERM)
    finally:
        done.set()
        listener.join(timeout=5)
        manager.shutdown()
    return statuses


# -- command line -------------------------------------------------------------------------------


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """``experiment FILE`` and ``experiment-report EXP`` (seg.cli's parser calls this)."""
    p = sub.add_parser(
        "experiment",
        help="run an experiment file (base config + grid) as a resumable sweep under runs/<experiment>/<run>/",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("file", help="experiment file (TOML), e.g. experiments/q1_augmentation.toml")
    p.add_argument("--jobs", type=positive_int, default=1, help="runs trained at once, each in its own process")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch threads per run (default: the file's threads, else the CPUs split between the jobs)",
    )
    p.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="PATTERN",
        help="only the runs whose name matches this shell pattern (repeatable)",
    )
    p.add_argument("--data", help="the dataset's own folder (overrides $SEG_DATA_DIR)")
    p.add_argument("--runs-dir", help=f"where runs are written (default ${RUNS_ENV} or runs/)")
    p.add_argument("--list", action="store_true", help="list the runs and their status, run nothing")
    p.add_argument("--quiet", action="store_true", help="one line per event instead of progress bars")
    p.set_defaults(func=cmd_experiment)

    r = sub.add_parser(
        "experiment-report",
        help="write docs/experiments/<name>.md (+ plots) from an experiment's "
        "runs; --html for an offline interactive page",
    )
    r.add_argument("experiment", help="the experiment's name (runs/<name>) or its file")
    r.add_argument("--runs-dir", help=f"where runs are read (default ${RUNS_ENV} or runs/)")
    r.add_argument("--out", default=None, help="folder of the markdown report (default docs/experiments)")
    r.add_argument("--html", default=None, metavar="FILE", help="also write a self-contained plotly page")
    r.set_defaults(func=cmd_experiment_report)


def cmd_experiment(args: argparse.Namespace) -> int:
    try:
        experiment = load_experiment(args.file, args.runs_dir)
        if args.list:
            for spec in select_runs(experiment, args.only):
                print(f"{run_status(spec, experiment.evaluate):<9} {spec.name}")
            return 0
        data = str(dataset_dir("sbd", args.data)) if args.data else None
        statuses = run_experiment(experiment, args.jobs, args.threads, args.quiet, args.only, data)
    except (ExperimentError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts: dict[str, int] = {}
    for status in statuses.values():
        counts[status] = counts.get(status, 0) + 1
    print(f"{experiment.name}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())), flush=True)
    unfinished = {s for s in statuses.values()} - {"finished"}
    if unfinished & {"stopped", "busy"}:
        print("run the same command again to resume", flush=True)
    return 0 if not unfinished else 1


def cmd_experiment_report(args: argparse.Namespace) -> int:
    from seg.experiment_report import write_report

    name = args.experiment
    try:
        if name.endswith(".toml") or Path(name).is_file():
            name = load_experiment(name, args.runs_dir).name
        written = write_report(name, args.runs_dir, args.out, args.html)
    except ExperimentError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -c 'from seg.experiments import main; main()' experiment FILE``: the commands without seg.cli."""
    parser = argparse.ArgumentParser(prog="seglab")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # ``torchrun --nproc-per-node N -m seg.experiments experiment FILE``
    raise SystemExit(main())
