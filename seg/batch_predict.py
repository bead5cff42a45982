"""Predict at scale: files, folders and glob patterns through the serving runtime.

Images are decoded (and, for semantic models, resized to the model's input) in worker
processes, run in batches on the runtime the checkpoint's calibration chose, and written
by a background thread, so decoding, the network and PNG encoding overlap. Outputs that
already exist are skipped with ``resume``; unreadable files are collected and reported at
the end without stopping the run.

Sharding: ``rank``/``world`` (default: ``$RANK``/``$WORLD_SIZE``, as ``torchrun`` sets them)
split the sorted list of inputs, so each process of ``torchrun --nproc_per_node N
[--nnodes M] -m seg predict ...`` writes its own share and no image is written twice. The
processes do not talk to each other: any launcher that sets the two variables works.

Semantic checkpoints write palette PNGs of class ids (``<name>.png``, optionally
``<name>.probs.npy``); instance checkpoints write id PNGs and JSON
(``<name>_instances.png`` / ``.json``), as the one-by-one ``predict`` did. Inputs from a
folder keep their path below it, so equal file names in subfolders do not collide.
"""

from __future__ import annotations

import glob
import io
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seg.cards import read_card, write_json
from seg.inference import Predictor, labels_at, prepare_input
from seg.instances.inference import InstancePredictor
from seg.io import ImageLoadError, atomic_write_bytes, load_image, save_instance_png, save_label_png
from seg.runtime import EAGER, RuntimeChoice, resolve_runtime, serving_module, with_int8_checked, write_int8_params

#: File name endings read from folders (a file named explicitly is tried whatever its ending).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: Images in flight to the writer before the network waits for it (bounds memory).
MAX_PENDING_WRITES = 64


@dataclass(frozen=True)
class Job:
    """One input image and where its outputs go (relative to the output folder, no suffix)."""

    source: str
    name: str


@dataclass
class PredictReport:
    """What one process did: its share of the inputs, written, skipped and failed."""

    rank: int
    world: int
    backend: str
    total: int = 0  # inputs in this process's share
    written: list[str] = field(default_factory=list)  # inputs whose outputs were written
    skipped_existing: list[str] = field(default_factory=list)  # inputs whose outputs were there (resume)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (input, reason): unreadable, unwritable
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return len(self.written) / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """A few lines for the end of a run: counts, speed, and every failure with its reason."""
        share = f" (rank {self.rank} of {self.world})" if self.world > 1 else ""
        lines = [
            f"{len(self.written)} written, {len(self.skipped_existing)} already there, "
            f"{len(self.failures)} failed of {self.total}{share}; {self.images_per_s:.1f} images/s "
            f"on {self.backend}"
        ]
        lines += [f"  failed: {source}: {reason}" for source, reason in self.failures]
        return "\n".join(lines)


def shard_from_env() -> tuple[int, int]:
    """(rank, world size) from ``$RANK`` / ``$WORLD_SIZE`` (torchrun's), else (0, 1)."""
    world = max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))
    rank = int(os.environ.get("RANK", "0") or 0)
    if not 0 <= rank < world:
        raise ValueError(f"RANK {rank} is outside WORLD_SIZE {world}")
    return rank, world


def expand_inputs(inputs: Sequence[str | Path]) -> tuple[list[Job], list[tuple[str, str]]]:
    """Files, folders (searched recursively for images) and glob patterns -> jobs sorted by name.

    An input that names nothing, and a second image that would write the same output as an
    earlier one, come back as (input, reason) problems instead of stopping the run.
    """
    jobs: dict[str, Job] = {}
    seen: set[str] = set()
    problems: list[tuple[str, str]] = []

    def add(path: Path, name: str, given: str) -> None:
        resolved = str(path.resolve())
        if resolved in seen:
            return
        seen.add(resolved)
        if name in jobs:
            problems.append((str(path), f"same output name as {jobs[name].source}"))
            return
        jobs[name] = Job(str(path), name)

    def add_folder(folder: Path, given: str) -> None:
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
            add(path, path.relative_to(folder).with_suffix("").as_posix(), given)

    for given in map(str, inputs):
        path = Path(given).expanduser()
        if path.is_dir():
            add_folder(path, given)
        elif path.is_file():
            add(path, path.stem, given)
        elif glob.has_magic(given):
            matches = sorted(glob.glob(str(path), recursive=True))
            if not matches:
                problems.append((given, "no file matches this pattern"))
            for match in map(Path, matches):
                if match.is_dir():
                    add_folder(match, given)
                elif match.is_file():
                    add(match, match.stem, given)
        else:
            problems.append((given, "no such file or folder"))
    return [jobs[name] for name in sorted(jobs)], problems


def output_paths(job: Job, out: Path, task: str, probs: bool = False) -> list[Path]:
    """Every file one job writes; all present means done (``resume``)."""
    if task == "instances":
        return [out / f"{job.name}_instances.png", out / f"{job.name}_instances.json"]
    return [out / f"{job.name}.png"] + ([out / f"{job.name}.probs.npy"] if probs else [])


# ------------------------------------------------------------------------------ decoding


class _Decoded(torch.utils.data.Dataset):
    """Decodes one job (in a worker process): (index, payload, None) or (index, None, reason)."""

    def __init__(self, jobs: list[Job], input_size: tuple[int, int] | None) -> None:
        self.jobs, self.input_size = jobs, input_size

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> tuple[int, Any, str | None]:
        try:
            rgb = load_image(self.jobs[index].source, max_side=None)
        except ImageLoadError as err:
            return index, None, str(err)
        except OSError as err:
            return index, None, f"could not be read ({err.strerror or err})"
        if self.input_size is None:
            return index, rgb, None
        return index, (prepare_input(rgb, self.input_size)[0], rgb.shape[:2]), None


def _as_is(item: Any) -> Any:
    return item


def _single_thread_worker(worker_id: int) -> None:  # noqa: ARG001 - DataLoader's signature
    torch.set_num_threads(1)  # the workers decode; the cores' threads belong to the network


def _decoded(
    jobs: list[Job], input_size: tuple[int, int] | None, workers: int
) -> Iterator[tuple[int, Any, str | None]]:
    dataset = _Decoded(jobs, input_size)
    if workers <= 0 or len(jobs) < 2:
        yield from (dataset[i] for i in range(len(dataset)))
        return
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        prefetch_factor=4,
        worker_init_fn=_single_thread_worker,
        collate_fn=_as_is,
    )
    yield from loader


# ------------------------------------------------------------------------------ writing


class _Writer:
    """A background thread that finishes and writes outputs; at most ``MAX_PENDING_WRITES`` queued."""

    def __init__(self, report: PredictReport, on_done: Callable[[], None]) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seg-writer")
        self.slots = threading.BoundedSemaphore(MAX_PENDING_WRITES)
        self.report, self.on_done = report, on_done
        self.lock = threading.Lock()
        self.futures: list[Future] = []

    def submit(self, job: Job, write: Callable[[], None]) -> None:
        self.slots.acquire()

        def run() -> None:
            try:
                write()
                with self.lock:
                    self.report.written.append(job.source)
            except (OSError, ValueError) as err:
                with self.lock:
                    self.report.failures.append((job.source, f"could not be written ({err})"))
            finally:
                self.slots.release()
                self.on_done()

        self.futures.append(self.pool.submit(run))

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        for future in self.futures:
            future.result()  # re-raise anything unexpected


def _semantic_writer(
    out: Path, job: Job, logits: torch.Tensor, size: tuple[int, int], palette: list[tuple[int, int, int]], probs: bool
) -> Callable[[], None]:
    def write() -> None:
        label, full = labels_at(logits, size)
        path = out / f"{job.name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_label_png(path, label.numpy(), palette)
        if probs:
            buf = io.BytesIO()
            np.save(buf, full.softmax(0).numpy().astype(np.float16), allow_pickle=False)
            atomic_write_bytes(out / f"{job.name}.probs.npy", buf.getvalue())

    return write


def instance_record(source: str, rgb_shape: tuple[int, ...], checkpoint: str, method: str, result: Any) -> dict:
    """The JSON written beside an instance-id PNG: image size, and each instance's score, box and area."""
    areas = np.bincount(result.instances.ravel(), minlength=result.num_instances + 1)[1:]
    return {
        "image": source,
        "width": int(rgb_shape[1]),
        "height": int(rgb_shape[0]),
        "checkpoint": checkpoint,
        "method": method,
        "instances": [
            {
                "id": i + 1,
                "score": round(float(s), 5),
                "box_xyxy": [round(float(v), 1) for v in b],
                "area": int(areas[i]),
            }
            for i, (s, b) in enumerate(zip(result.scores, result.boxes))
        ],
        "latency_ms": round(float(result.latency_ms), 1),
    }


def _instance_writer(out: Path, job: Job, record: dict, instances: np.ndarray) -> Callable[[], None]:
    def write() -> None:
        path = out / f"{job.name}_instances.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_instance_png(path, instances)
        write_json(out / f"{job.name}_instances.json", record)

    return write


# ------------------------------------------------------------------------------ the run


def load_predictor(
    checkpoint: str | Path, runtime: str | None = None, device: str | None = None
) -> Predictor | InstancePredictor:
    """The checkpoint's predictor (semantic or instances, by its card) on ``runtime`` (default: auto);
    ``device`` for a semantic model (instance models run on the CPU)."""
    runtime = resolve_runtime(runtime, default="auto")
    if str(read_card(checkpoint).get("task", "semantic")) == "instances":
        return InstancePredictor.from_checkpoint(checkpoint, runtime=runtime)
    return Predictor.from_checkpoint(checkpoint, device=device, runtime=runtime)


def export_checkpoint(
    checkpoint: str | Path,
    runtime: str = "auto",
    refresh: bool = True,
    progress: Callable[[str], None] | None = None,
    int8_params_dir: Path | None = None,
) -> RuntimeChoice:
    """Export a checkpoint for every candidate backend, calibrate on this CPU and record the choice.

    What ``python -m seg export`` runs (ahead of serving, e.g. when a Space is built); the
    predictors then load the recorded choice without measuring again. ``int8_params_dir``: also
    write the OpenVINO int8 export's parameters there (``seg.int8_params``), which lets a machine
    without the dataset serve the same int8 graph; ``ValueError`` unless it passed on val.
    """
    # loaded as the predictors load it (the same weights, hence the same key), on the CPU it is exported for
    predictor = load_predictor(checkpoint, EAGER, device="cpu")
    spec = predictor.serving_spec()
    choice = serving_module(
        predictor.model,
        spec,
        resolve_runtime(runtime, default="auto"),
        torch.device("cpu"),
        refresh=refresh,
        progress=progress,
    )[1]
    if int8_params_dir is not None:
        write_int8_params(spec, with_int8_checked(predictor.model, spec, choice, progress), Path(int8_params_dir))
    return choice


def describe_choice(choice: RuntimeChoice) -> str:
    """Lines for a terminal: the chosen backend, each candidate's time and ratio, and agreement."""
    lines = [f"serving backend: {choice.label} ({choice.reason})"]
    eager = choice.timings_ms.get("eager-fp32")
    for backend, ms in sorted(choice.timings_ms.items(), key=lambda kv: kv[1]):
        ratio = f"  {eager / ms:5.2f}x eager fp32" if eager and ms else ""
        check = choice.agreement.get(backend)
        verdict = (
            ""
            if check is None
            else ("  agreement: passed" if check.get("passed") else f"  agreement: failed ({check.get('reason', '')})")
        )
        lines.append(f"  {backend:<14} {ms:9.2f} ms{ratio}{verdict}")
    lines += [f"  {backend:<14} not usable: {why}" for backend, why in choice.skipped.items()]
    if choice.record:
        lines.append(f"recorded in {choice.record}")
    return "\n".join(lines)


def predict_inputs(
    checkpoint: str | Path,
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    resume: bool = False,
    workers: int | None = None,
    batch_size: int = 8,
    runtime: str | None = None,
    rank: int | None = None,
    world: int | None = None,
    probs: bool = False,
    progress: bool = True,
    predictor: Predictor | InstancePredictor | None = None,
) -> PredictReport:
    """Predict every input image of this process's share and write the outputs under ``out``.

    ``workers``: decoding processes (default: one per spare core, at least one); ``batch_size``:
    images per network call (semantic; instance models run one image at a time, their mirror
    pass batched); ``runtime``: as ``seg.runtime.resolve_runtime`` with ``auto`` the default;
    ``rank``/``world``: this process's share (default from the environment); ``predictor``:
    an already loaded one (benchmarks), else loaded from ``checkpoint``.
    """
    from tqdm import tqdm

    env_rank, env_world = shard_from_env()
    rank, world = (env_rank if rank is None else rank), (env_world if world is None else world)
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside world size {world}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs, problems = expand_inputs(inputs)
    jobs = jobs[rank::world]
    problems = problems[rank::world]  # each input's problem is reported by one process only
    predictor = predictor or load_predictor(checkpoint, runtime)
    task = "instances" if isinstance(predictor, InstancePredictor) else "semantic"
    report = PredictReport(rank, world, predictor.backend, total=len(jobs) + len(problems), failures=list(problems))
    if resume:
        todo = []
        for job in jobs:
            if all(p.is_file() for p in output_paths(job, out, task, probs)):
                report.skipped_existing.append(job.source)
            else:
                todo.append(job)
        jobs = todo
    if workers is None:
        workers = max(1, min(4, (os.cpu_count() or 2) - 1))
    start = time.perf_counter()
    desc = "predict" + (f" [rank {rank}/{world}]" if world > 1 else "")
    bar = tqdm(total=len(jobs), desc=desc, unit="img", disable=not progress, dynamic_ncols=True, smoothing=0.1)
    bar_lock = threading.Lock()

    def tick() -> None:
        with bar_lock:
            bar.update(1)

    writer = _Writer(report, tick)
    try:
        decoded = _decoded(jobs, predictor.input_size if task == "semantic" else None, workers)
        if task == "semantic":
            _run_semantic(predictor, jobs, decoded, out, batch_size, probs, writer, report, tick)
        else:
            _run_instances(predictor, jobs, decoded, out, str(checkpoint), writer, report, tick)
    finally:
        writer.close()
        bar.close()
    report.seconds = time.perf_counter() - start
    return report


def _run_semantic(
    predictor: Predictor,
    jobs: list[Job],
    decoded: Iterator,
    out: Path,
    batch_size: int,
    probs: bool,
    writer: _Writer,
    report: PredictReport,
    tick: Callable[[], None],
) -> None:
    batch: list[tuple[Job, torch.Tensor, tuple[int, int]]] = []

    def flush() -> None:
        logits = predictor.predict_logits_batch(torch.stack([x for _, x, _ in batch]))
        for (job, _, size), one in zip(batch, logits):
            writer.submit(job, _semantic_writer(out, job, one, size, predictor.palette, probs))
        batch.clear()

    for index, payload, error in decoded:
        if error is not None:
            report.failures.append((jobs[index].source, error))
            tick()
            continue
        x, size = payload
        batch.append((jobs[index], x, tuple(size)))
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()


def _run_instances(
    predictor: InstancePredictor,
    jobs: list[Job],
    decoded: Iterator,
    out: Path,
    checkpoint: str,
    writer: _Writer,
    report: PredictReport,
    tick: Callable[[], None],
) -> None:
    for index, rgb, error in decoded:
        job = jobs[index]
        if error is not None:
            report.failures.append((job.source, error))
            tick()
            continue
        result = predictor.predict(rgb)
        record = instance_record(job.source, rgb.shape, Path(checkpoint).name, predictor.method, result)
        writer.submit(job, _instance_writer(out, job, record, result.instances))
