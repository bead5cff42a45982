"""Serving runtimes: a model exported once, served by the fastest backend that keeps its answers.

Backends (``BACKENDS``): eager PyTorch fp32 (the reference, and the fallback whenever a
package is missing or the device is a GPU), ONNX Runtime fp32 / int8 (static quantisation),
OpenVINO fp32 / bf16 / int8 (NNCF). int8 is calibrated on a few training images; bf16 is a
candidate only where the CPU computes bf16 natively, and then only chosen if it measures
faster. The choice for ``runtime="auto"`` (or a family, ``onnx`` / ``openvino``) is a short
calibration: every candidate is timed against eager fp32 in interleaved rounds on this CPU,
and the fastest that passes the task's agreement contract (``ServingSpec.agreement``, e.g.
val mIoU within 0.005 of eager and >= 98 % of pixels agreeing) wins. The choice is recorded
as JSON beside the exports, so later starts only load the chosen backend.

Serving entry points (``predict``, the dashboard's model store, the benches) ask for ``auto``;
library code (training, evaluation, tuning) keeps eager PyTorch, the reference. Inside
``serving_defaults()`` (what the dashboard loads its models with) a predictor starts at once on
eager PyTorch and a background thread loads the recorded choice, or calibrates when there is
none, then swaps the chosen backend in (``DeferredServing``): a start never waits for an export.

Exports live in ``seg.config.cache_dir() / "runtime" / <weights sha256>``, never beside the
shipped checkpoints. What the shipped checkpoints carry instead is each OpenVINO int8 export's
quantisation ranges with the agreement it passed on val (``int8/`` beside them, ``seg.int8_params``):
where neither training images nor val are at hand, as on a Space without the dataset, the int8
export is rebuilt from them and chosen on that record, provided it is exactly the graph that passed, and
passed with the thread count serving it.

A spec names the *parts* of a model that are plain tensor functions
("" = the whole model; Mask R-CNN serves its backbone and heads this way and keeps its
detection logic in PyTorch; a part's nested arguments, like a list of feature maps, are traced
through their flat tensors); each part is replaced by a ``RuntimePart`` module, so callers
keep calling an ``nn.Module``.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import types
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from seg.config import cache_dir, checkpoint_dir, shipped_checkpoint_dir
from seg.hardware import cpu_features, runtime_versions
from seg.io import atomic_write_text
from seg.memory import release_memory

log = logging.getLogger("seg.runtime")

RUNTIME_ENV = "SEG_RUNTIME"
#: What a user asks for (``--runtime``): a family, ``auto`` (every family), or ``eager``.
RUNTIMES = ("auto", "eager", "onnx", "openvino")
#: Concrete backends, fastest-first order irrelevant; ``<family>-<precision>``.
BACKENDS = ("eager-fp32", "onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-bf16", "openvino-int8")
EAGER = "eager-fp32"
#: A backend must be at least this much faster than eager fp32 to be worth serving.
MIN_SPEEDUP = 1.1
#: Without val data a backend is accepted only when it reproduces eager's outputs this closely
#: (largest difference over the largest magnitude, on the example inputs): fp32 backends do.
EXACT_TOLERANCE = 1e-3
#: Training images used to calibrate int8 quantisation.
CALIBRATION_IMAGES = 32
#: How a calibration times its candidates: one warm-up round (compiles, first allocations), then
#: interleaved rounds for up to this many seconds (at least three). A large model's gaps between
#: backends are wide; small models get their seven rounds within a second or two.
TIMING_WARMUP, TIMING_BUDGET_S = 1, 15.0
#: A candidate this many times slower than the fastest after one timed round is timed no further.
TIMING_DROP_BEYOND = 2.0
#: Packages each backend family needs: both export through ``torch.onnx``, which needs ``onnx``.
_PACKAGES = {"onnx": ("onnx", "onnxruntime"), "openvino": ("onnx", "openvino")}
_RECORD_VERSION = 1


#: (default runtime, deferred) while inside ``serving_defaults``; None outside (eager, synchronous).
_SERVING_DEFAULTS: ContextVar[tuple[str, bool] | None] = ContextVar("seg_serving_defaults", default=None)


@contextlib.contextmanager
def serving_defaults(runtime: str = "auto", deferred: bool = True) -> Iterator[None]:
    """Within: models built without an explicit runtime are served on ``runtime`` (``$SEG_RUNTIME``
    still wins), and with ``deferred`` they start on eager PyTorch while the chosen backend is
    loaded, or calibrated on first use, in a background thread.

    The dashboard's model store loads with it, so a cold start never waits for an export.
    """
    token = _SERVING_DEFAULTS.set((runtime, deferred))
    try:
        yield
    finally:
        _SERVING_DEFAULTS.reset(token)


def resolve_runtime(requested: str | None = None, default: str | None = None) -> str:
    """``requested``, else ``$SEG_RUNTIME``, else ``default``; one of ``RUNTIMES`` or ``BACKENDS``.

    Without ``default``: ``serving_defaults``'s runtime inside it, else eager. Library code
    defaults to eager (training, evaluation and tuning measure the reference); serving entry
    points (``predict``, the dashboard, the benches) ask for ``auto``.
    """
    if default is None:
        context = _SERVING_DEFAULTS.get()
        default = context[0] if context else "eager"
    value = (requested or os.environ.get(RUNTIME_ENV) or default).strip().lower()
    if value not in RUNTIMES and value not in BACKENDS:
        raise ValueError(f"unknown runtime {value!r}; choose from {', '.join(RUNTIMES + BACKENDS)}")
    return value


def missing_packages(family: str) -> list[str]:
    """The packages of a backend family that are not installed (none for eager).

    Found without importing them: importing ``onnx`` alone takes most of a second, which a model's
    first request would otherwise wait for although a recorded choice never needs it. A package
    that is installed but fails to import shows up later, as a backend that could not be exported
    or loaded, and eager PyTorch serves. (``find_spec`` also sees a module blocked in ``sys.modules``.)
    """
    if family == "eager":
        return []
    return [package for package in _PACKAGES[family] if importlib.util.find_spec(package) is None]


def package_available(family: str) -> bool:
    """Whether the backend family's packages are installed (eager always is)."""
    return not missing_packages(family)


def candidate_backends(requested: str, int8: bool = True) -> list[str]:
    """Backends ``requested`` may choose among on this CPU, eager first; missing packages are left out."""
    if requested in BACKENDS:
        family = requested.split("-")[0]
        return [EAGER] + ([requested] if requested != EAGER and package_available(family) else [])
    families = ("onnx", "openvino") if requested == "auto" else (requested,) if requested != "eager" else ()
    out = [EAGER]
    for family in families:
        if not package_available(family):
            continue
        for backend in BACKENDS:
            name, precision = backend.split("-")
            if name != family or (precision == "int8" and not int8):
                continue
            if precision == "bf16" and not cpu_features().native_bf16:
                continue  # emulated bf16 is never faster
            out.append(backend)
    return out


def weights_key(model: nn.Module) -> str:
    """sha256 of the model's weights (names, dtypes, shapes and values): what exports are keyed by."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _code_digest(digest: Any, code: types.CodeType) -> None:
    """Feed a function's bytecode, names and constants (nested functions too) to ``digest``."""
    digest.update(code.co_code)
    digest.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_digest(digest, const)
        elif isinstance(const, frozenset):  # its order follows string hashing, which differs per process
            digest.update(repr(sorted(map(repr, const))).encode())
        else:
            digest.update(repr(const).encode())


def code_key(model: nn.Module) -> str:
    """sha256 of the methods of every module class in the model (their bytecode): the same weights
    under a changed ``forward`` export to another graph, so a cached export of the old code must not
    be served. Bytecode rather than source: reading a class's source parses its whole file."""
    digest = hashlib.sha256()
    for cls in sorted({type(m) for m in model.modules()}, key=lambda c: f"{c.__module__}.{c.__qualname__}"):
        digest.update(f"{cls.__module__}.{cls.__qualname__};".encode())
        for klass in cls.__mro__:
            if klass is nn.Module or klass is object:
                break
            for name, value in sorted(vars(klass).items()):
                function = getattr(value, "__func__", value)  # static and class methods too
                if isinstance(function, types.FunctionType):
                    digest.update(f"{klass.__qualname__}.{name}".encode())
                    _code_digest(digest, function.__code__)
    return digest.hexdigest()


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """Each eval-mode BatchNorm that directly follows a convolution in a ``Sequential`` folded into that
    convolution's weights (in place): the same function up to rounding, one pass over the activations
    fewer (about 10 % of a U-Net's CPU inference). Only for a model loaded to serve (``from_checkpoint``),
    never one that is training or that a caller still owns."""
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for conv_name, norm_name in zip(names, names[1:]):
            conv, norm = module._modules[conv_name], module._modules[norm_name]
            if (
                isinstance(conv, nn.Conv2d)
                and isinstance(norm, nn.BatchNorm2d)
                and not norm.training
                and norm.track_running_stats
                and norm.running_mean is not None
            ):
                conv.weight, conv.bias = fuse_conv_bn_weights(
                    conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
                )
                module._modules[norm_name] = nn.Identity()
    return model


def channels_last_on_cpu(model: nn.Module) -> nn.Module:
    """``model`` in channels-last layout (in place) when its weights are on the CPU: oneDNN's fp32
    convolutions run faster so (1.6x on the four-member DWT); outputs differ by rounding only."""
    if module_device(model).type == "cpu":
        model.to(memory_format=torch.channels_last)
    return model


def module_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters; CPU for a module served by a runtime (it has none)."""
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


@dataclass
class Agreement:
    """A candidate's answers against eager fp32's: the task's contract and the numbers behind it."""

    passed: bool
    metrics: dict[str, float]
    reason: str = ""


@dataclass
class ServingSpec:
    """What the runtime needs from a task to export, time and check one model.

    ``parts``: submodule name ("" = the whole model) -> the input dims that vary between calls
    (batch always; height and width where images keep their aspect). ``example_inputs``: a few
    whole-model call argument tuples for timing and export (real images where at hand).
    ``calibration_inputs``: training-image argument tuples for int8, or None (no int8).
    ``agreement``: the candidate serving module -> ``Agreement`` on the val split, or None when
    the val data is not at hand (then only exact, fp32 backends qualify).
    ``context``: whatever else the agreement depends on (card settings), part of the record's key.
    ``fallback_parts``: smaller sets of part names, tried in order on a backend whose full set of
    parts fails the agreement (a part that changes the answers is then left to eager PyTorch).
    ``code``: ``code_key`` of the model; exports live apart per code as well as per weights.
    ``int8_float_ops``: op types OpenVINO int8 leaves in float (a key of ``INT8_RECIPES``).
    """

    key: str
    parts: dict[str, tuple[int, ...]]
    example_inputs: Callable[[], list[tuple]]
    calibration_inputs: Callable[[], list[tuple] | None] = lambda: None
    agreement: Callable[[nn.Module], Agreement | None] = lambda module: None
    context: dict[str, Any] = field(default_factory=dict)
    fallback_parts: tuple[tuple[str, ...], ...] = ()
    code: str = ""
    int8_float_ops: tuple[str, ...] = ("Concat",)


@dataclass
class RuntimeChoice:
    """Which backend serves a model and why (what the record holds)."""

    backend: str
    requested: str
    reason: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    agreement: dict[str, dict] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    record: str | None = None
    #: the parts served by ``backend`` (None: every part of the spec)
    parts: list[str] | None = None
    #: True when this process measured the choice (its agreement figures are of the files now served);
    #: False when it was read from a record (never written to it)
    measured_now: bool = False

    @property
    def label(self) -> str:
        """The chosen candidate's key in ``timings_ms`` and ``agreement`` (a subset of parts has its own)."""
        return part_label(self.backend, self.parts)

    @property
    def speedup(self) -> float | None:
        """Chosen candidate's speed over eager fp32, as measured by the calibration."""
        if EAGER in self.timings_ms and self.label in self.timings_ms and self.timings_ms[self.label] > 0:
            return self.timings_ms[EAGER] / self.timings_ms[self.label]
        return None


def part_label(backend: str, parts: Sequence[str] | None) -> str:
    """A calibration candidate's name: the backend, with the parts it serves when not all of them."""
    return f"{backend} [{'+'.join(parts)}]" if parts else backend


# ------------------------------------------------------------------------------ tensors in and out


def flatten_tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in flatten_tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in flatten_tensors(v)]
    raise TypeError(f"a served part may only take and return tensors, got {type(value).__name__}")


def _structure(value: Any) -> Any:
    """A picklable description of an output's nesting, to rebuild it from a flat list."""
    if isinstance(value, torch.Tensor):
        return None
    if isinstance(value, dict):
        return {"dict": [[k, _structure(v)] for k, v in value.items()]}
    return {"seq": [_structure(v) for v in value], "tuple": isinstance(value, tuple)}


def _rebuild(structure: Any, flat: list[torch.Tensor]) -> Any:
    it = iter(flat)

    def build(s: Any) -> Any:
        if s is None:
            return next(it)
        if "dict" in s:
            return OrderedDict((k, build(v)) for k, v in s["dict"])
        items = [build(v) for v in s["seq"]]
        return tuple(items) if s["tuple"] else items

    return build(structure)


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    """``t`` as a C-contiguous float32 array. The layout copy (of a channels-last input) is NumPy's, on one
    thread: PyTorch's parallel copy leaves its OpenMP workers spinning on the cores the runtime needs next."""
    return np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())


# ------------------------------------------------------------------------------ backends


class _OrtEngine:
    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # its threads would spin on after every call, taking the cores from whatever runs next (PyTorch,
        # OpenVINO, another model): 28-35 against 40-46 ms for the next eager U-Net; ONNX Runtime's own
        # calls are as fast without it
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, dict(zip(self.inputs, arrays)))


_OV_CORE = None
_OV_LOCK = threading.Lock()


def _without_telemetry() -> None:
    """Keep OpenVINO's and NNCF's usage telemetry off: importing NNCF otherwise writes a client id and
    usage counts under the user's home (``~/intel``), unasked, from a server. Both packages run without
    ``openvino_telemetry`` (they fall back to no telemetry when it cannot be imported)."""
    if "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]


def _ov_core():
    global _OV_CORE
    with _OV_LOCK:
        if _OV_CORE is None:
            _without_telemetry()
            import openvino as ov

            _OV_CORE = ov.Core()
            try:  # compiled blobs cached: a restart compiles in a fraction of the time
                _OV_CORE.set_property({"CACHE_DIR": str(cache_dir() / "runtime" / "openvino-blobs")})
            except RuntimeError:
                pass
        return _OV_CORE


class _OpenVinoEngine:
    """An OpenVINO model compiled for one precision; static shapes compiled per input shape when
    the part's spatial size is fixed (a few percent faster than a dynamic compile).

    Each compiled model keeps one infer request: a new request per call set up its input and output
    tensors afresh each time (0.7 of a served U-Net's 6.4 ms). Calls come one at a time (``RuntimePart``
    serialises them); ``infer`` copies the outputs out of the request, so an answer never changes under
    its caller.
    """

    MAX_STATIC = 4
    #: kernels the CPU plugin keeps for the input shapes it has met (its default: 5,000 entries). A model
    #: served with dynamic shapes meets new shapes with nearly every upload: over 120 images of random
    #: widths the served DWT's process grew to 2.50 GB with the default and 2.10 GB with this bound,
    #: at 13 % more time per image (docs/experiments.md, "The fill pass in the dashboard")
    RUNTIME_CACHE_CAPACITY = 1000

    def __init__(self, path: Path, precision: str, static: bool) -> None:
        core = _ov_core()
        self.model = core.read_model(str(path))
        self.config = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),
            "PERFORMANCE_HINT": "LATENCY",
            "CPU_RUNTIME_CACHE_CAPACITY": self.RUNTIME_CACHE_CAPACITY,
        }
        self.static = static
        self.dynamic = None
        if not static:
            compiled = core.compile_model(self.model, "CPU", self.config)
            self.dynamic = (compiled, compiled.create_infer_request())
        self.compiled: OrderedDict[tuple, tuple[Any, Any]] = OrderedDict()

    def _for(self, shapes: tuple) -> tuple[Any, Any]:
        """(compiled model, its infer request) for inputs of these shapes."""
        if self.dynamic is not None:
            return self.dynamic
        entry = self.compiled.get(shapes)
        if entry is None:
            model = self.model.clone()
            model.reshape({i: list(s) for i, s in enumerate(shapes)})
            compiled = _ov_core().compile_model(model, "CPU", self.config)
            entry = self.compiled[shapes] = (compiled, compiled.create_infer_request())
            while len(self.compiled) > self.MAX_STATIC:
                self.compiled.popitem(last=False)
        self.compiled.move_to_end(shapes)
        return entry

    def __call__(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        compiled, request = self._for(tuple(a.shape for a in arrays))
        result = request.infer(arrays)  # outputs copied out of the request (share_outputs=False)
        return [result[out] for out in compiled.outputs]


#: what callers read off a network to shape its inputs, kept by the part that serves it: a DWT's ``input_multiple``
#: (``seg.instances.inference.input_stride``)
KEPT_ATTRIBUTES = ("input_multiple",)


class RuntimePart(nn.Module):
    """One exported part behind an ``nn.Module`` face: tensors in, the eager part's output structure out.

    ``eager``: the part itself, which answers a call with an empty input (a detector's RoI heads
    with no detection left), where a backend would have to handle a zero-sized dim.
    """

    def __init__(
        self,
        engine: Callable[[list[np.ndarray]], list[np.ndarray]],
        structure: Any,
        backend: str,
        eager: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.engine = engine
        self.structure = structure
        self.backend = backend
        self.eager = eager
        self._lock = threading.Lock()

    def forward(self, *args: Any) -> Any:
        tensors = flatten_tensors(list(args))
        if self.eager is not None and any(t.numel() == 0 for t in tensors):
            return self.eager(*args)
        arrays = [_to_numpy(t) for t in tensors]
        with self._lock:
            outputs = self.engine(arrays)
        # the engines' outputs are the caller's own arrays: no second copy unless the dtype changes
        return _rebuild(self.structure, [torch.from_numpy(np.asarray(o, dtype=np.float32)) for o in outputs])


class DeferredServing(nn.Module):
    """Eager PyTorch until the background worker has the chosen backend ready, then that backend.

    ``ready`` is set once the swap (or the decision to stay eager) is done; the predictor's
    ``RuntimeChoice`` is updated in place at the same moment, so ``predictor.backend`` follows.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.current = model
        self.ready = threading.Event()

    def forward(self, *args: Any) -> Any:
        return self.current(*args)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the chosen backend serves (or eager stays); False on timeout."""
        return self.ready.wait(timeout)


_QUEUE: deque[Callable[[], None]] = deque()
_QUEUE_READY = threading.Condition()
_WORKER: threading.Thread | None = None


def _worker_loop() -> None:
    while True:
        with _QUEUE_READY:
            while not _QUEUE:
                _QUEUE_READY.wait()
            job = _QUEUE.popleft()
        if _EXITING.is_set():  # no new export or compile while the interpreter shuts down
            return
        job()


def _in_background(job: Callable[[], None]) -> None:
    """Run ``job`` on the one serving worker (a daemon thread: jobs run one at a time, in order, so
    several models calibrating at start do not fight over the cores, and exit never waits for them)."""
    global _WORKER
    with _QUEUE_READY:
        _QUEUE.append(job)
        if _WORKER is None or not _WORKER.is_alive():
            _WORKER = threading.Thread(target=_worker_loop, name="seg-runtime", daemon=True)
            _WORKER.start()
        _QUEUE_READY.notify()


#: the longest a child process may take to export and calibrate one checkpoint (then it is calibrated in process)
CHILD_CALIBRATION_TIMEOUT_S = 1800.0

#: calibration children still running, stopped when this process exits (``_stop_children``)
_CHILDREN: set[subprocess.Popen] = set()
_CHILDREN_LOCK = threading.Lock()
_EXITING = threading.Event()


class CalibrationStopped(RuntimeError):
    """A calibration child was stopped from outside (a signal, or this process exiting): not redone in process."""


def _stop_children() -> None:
    """At exit, stop the calibration children: an orphan would go on for minutes on the cores of whatever
    runs next (and, stopped, it is not redone in process while the interpreter shuts down)."""
    _EXITING.set()
    with _CHILDREN_LOCK:
        children = list(_CHILDREN)
    for child in children:
        child.terminate()
    for child in children:
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            child.kill()


atexit.register(_stop_children)


def _export_command(source: Path, runtime: str) -> list[str]:
    """``seglab export`` for ``source`` at this process's thread count, as a child process runs it."""
    command = [sys.executable, "-m", "seg", "export", "--checkpoint", str(source), "--runtime", runtime]
    return command + ["--threads", str(torch.get_num_threads())]


def _calibrate_apart(spec: ServingSpec, runtime: str, source: Path) -> bool:
    """Export and calibrate the checkpoint at ``source`` in a child process (``seglab export``) unless a choice
    is recorded already; True if the child recorded one.

    Calibration allocates a lot once: the val split, eager references, every candidate backend, the
    quantiser's libraries. In a long-running server that memory stays with the process (the heap rarely
    shrinks back to where it was, and the libraries stay imported); in a child it leaves when the child
    exits, and the server then loads the recorded choice as on any later start. Any failure leaves the
    calibration to the caller, in process, except a stop from outside (``CalibrationStopped``): a child
    killed by a signal (Ctrl-C reaches the whole process group) or this process exiting.
    """
    if runtime not in ("auto", "onnx", "openvino") or read_choice(spec, runtime) is not None:
        return False
    if _EXITING.is_set():
        raise CalibrationStopped("the process is exiting")
    package_root = str(Path(__file__).resolve().parents[1])  # the child imports this same ``seg``
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    try:
        child = subprocess.Popen(
            _export_command(source, runtime), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
    except OSError as err:
        log.warning("calibrating %s in a child process failed (%s); calibrating in process", source.name, err)
        return False
    with _CHILDREN_LOCK:
        _CHILDREN.add(child)
    try:
        _, stderr = child.communicate(timeout=CHILD_CALIBRATION_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        log.warning("calibrating %s in a child process took too long; calibrating in process", source.name)
        return False
    finally:
        with _CHILDREN_LOCK:
            _CHILDREN.discard(child)
    if _EXITING.is_set() or child.returncode < 0:
        raise CalibrationStopped(f"calibrating {source.name} was stopped")
    if child.returncode != 0:
        last = (stderr.strip().splitlines() or ["no message"])[-1]
        log.warning("calibrating %s in a child process failed (%s); calibrating in process", source.name, last)
        return False
    return read_choice(spec, runtime) is not None


def _serve_deferred(
    model: nn.Module,
    spec: ServingSpec | Callable[[], ServingSpec],
    runtime: str,
    refresh: bool,
    source: Path | None = None,
) -> tuple[nn.Module, RuntimeChoice]:
    """``model`` wrapped in a ``DeferredServing`` at once; the choice is read or made in the background (in a
    child process when the model's checkpoint file is known: ``_calibrate_apart``)."""
    holder = DeferredServing(model)
    choice = RuntimeChoice(EAGER, runtime, "eager PyTorch while the serving backend is prepared")

    def prepare() -> tuple[str, RuntimeChoice]:
        built = spec() if callable(spec) else spec
        if source is not None and not refresh:
            _calibrate_apart(built, runtime, source)
        # exports and capture hooks work on a private copy: requests keep running on ``model``
        private = copy.deepcopy(model)
        served, final = serving_module(private, built, runtime, torch.device("cpu"), refresh)
        if final.backend != EAGER:
            with torch.inference_mode():  # compile for the serving shape before the first request
                served(*built.example_inputs()[0])
            holder.current = served
        return built.key[:12], final

    def job() -> None:
        started = time.perf_counter()
        key = "?"
        try:
            key, final = prepare()
        except CalibrationStopped as err:  # stopped from outside: nothing went wrong
            log.info("%s; serving eager PyTorch", err)
            final = RuntimeChoice(EAGER, runtime, f"{err}: eager PyTorch")
        except Exception as err:  # noqa: BLE001 - serving goes on with eager PyTorch whatever fails here
            log.warning("the serving backend could not be prepared (%s); serving eager PyTorch", err)
            final = RuntimeChoice(EAGER, runtime, "the serving backend could not be prepared: eager PyTorch")
        # a calibration's val data, references and candidate backends are garbage now: back to the OS
        release_memory()
        for item in fields(RuntimeChoice):
            setattr(choice, item.name, getattr(final, item.name))
        holder.ready.set()
        log.info(
            "serving backend ready for weights %s: %s (%s) after %.1f s",
            key,
            choice.backend,
            choice.reason,
            time.perf_counter() - started,
        )

    _in_background(job)
    return holder, choice


# ------------------------------------------------------------------------------ export


#: exports of the same weights made by other model code (an older version of a class, another torch),
#: untouched this long, are removed when an export for the current code is first made
STALE_EXPORT_S = 7 * 24 * 3600.0


def export_dir(key: str, code: str = "") -> Path:
    """Where one set of weights' exports and choice records live (per model code too, when given)."""
    path = cache_dir() / "runtime" / (f"{key[:24]}-{code[:8]}" if code else key[:24])
    if code and not path.is_dir():
        _prune_other_code(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _prune_other_code(path: Path) -> None:
    """Remove the exports of ``path``'s weights under other code that nothing wrote to for
    ``STALE_EXPORT_S``, unless a process holds their lock (an export or calibration under way)."""
    weights = path.name.rsplit("-", 1)[0]
    now = time.time()
    for other in path.parent.glob(f"{weights}-*"):
        if other == path or not other.is_dir():
            continue
        try:
            newest = max([f.stat().st_mtime for f in other.iterdir()] + [other.stat().st_mtime])
        except OSError:
            continue
        if now - newest < STALE_EXPORT_S:
            continue
        with _lock_if_free(other / ".lock") as free:
            if free:
                shutil.rmtree(other, ignore_errors=True)
                log.info("removed exports of older model code: %s", other)


@contextlib.contextmanager
def _lock_if_free(path: Path) -> Iterator[bool]:
    """Whether the advisory lock on ``path`` could be taken at once (held while the block runs)."""
    try:
        import fcntl
    except ImportError:
        yield True
        return
    try:
        handle = open(path, "a+b")  # noqa: SIM115 - closed below, after the lock
    except OSError:
        yield False
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


#: OpenVINO int8 recipes, by the op types they leave in float, and their numbers. Recipe 2 keeps Concat in
#: float: a quantised Concat shares one scale across its inputs, which crushes a branch whose range is far
#: smaller than the others' (the DWT's heads lost their mask AP to it). Recipe 3 quantises it too: a U-Net's
#: skip connections then stay int8 through the decoder, with no conversions around each Concat (served, the
#: U-Net 3.5 % and the ResUNet 8.6 % faster, the same val agreement). Each task's ``ServingSpec`` names its
#: recipe. ONNX Runtime int8 quantises convolutions and matrix products only, whatever the recipe.
INT8_RECIPES: dict[tuple[str, ...], int] = {("Concat",): 2, (): 3}
_ORT_INT8_RECIPE = 2


def int8_recipe(spec: ServingSpec) -> int:
    """The number of ``spec``'s int8 recipe: it marks the export files and the shipped parameters, so a
    changed recipe is exported afresh and never served on another recipe's parameters."""
    return _recipe_number(spec.int8_float_ops)


def _recipe_number(float_ops: Sequence[str]) -> int:
    return INT8_RECIPES[tuple(float_ops)]


def _int8_suffix(family: str, recipe: int) -> str:
    """The name ending of an int8 export: OpenVINO's carries the spec's recipe, ONNX Runtime's its own."""
    return f"-openvino-int8-r{recipe}.xml" if family == "openvino" else f"-onnx-int8-r{_ORT_INT8_RECIPE}.onnx"


#: Name mark of a draft int8 export (quantised on one image, for timing only; removed after calibrating)
_DRAFT = "-draft"


def _part_file(part: str) -> str:
    return (part or "model").replace(".", "_")


@dataclass
class _Captured:
    inputs: list[tuple[torch.Tensor, ...]]
    structure: Any
    input_structure: Any = None


def capture_parts(model: nn.Module, parts: Sequence[str], calls: list[tuple]) -> dict[str, _Captured]:
    """Run the eager model on ``calls`` and keep each part's flat tensor inputs and output structure."""
    captured: dict[str, _Captured] = {p: _Captured([], None) for p in parts}
    handles = []
    for part in parts:
        module = model.get_submodule(part) if part else model

        def hook(mod: nn.Module, args: tuple, output: Any, part: str = part) -> None:
            captured[part].inputs.append(tuple(t.detach().clone() for t in flatten_tensors(list(args))))
            captured[part].structure = _structure(output)
            captured[part].input_structure = _structure(list(args))

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for call in calls:
                model(*call)
    finally:
        for handle in handles:
            handle.remove()
    return captured


class _FlatCall(nn.Module):
    """A part called with its flat tensors: rebuilds its arguments' nesting (e.g. the RPN head's list
    of feature maps), so any part of plain tensors, lists and tuples can be traced to ONNX."""

    def __init__(self, module: nn.Module, input_structure: Any) -> None:
        super().__init__()
        self.module = module
        self.input_structure = input_structure
        self.train(module.training)  # the trace follows the part's mode (eval: batch norm's running stats)

    def forward(self, *flat: torch.Tensor) -> Any:
        return self.module(*_rebuild(self.input_structure, list(flat)))


def _export_onnx(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    dynamic: tuple[int, ...],
    path: Path,
    input_structure: Any = None,
) -> None:
    """Trace ``module`` to ONNX (opset 17) with the given input dims left dynamic; ``input_structure``
    (from ``capture_parts``) rebuilds nested arguments from the flat example."""
    import warnings

    if input_structure is not None and any(item is not None for item in input_structure["seq"]):
        module = _FlatCall(module, input_structure)  # nested arguments (a list of feature maps)

    names = [f"input{i}" for i in range(len(example))]
    with torch.no_grad():
        outputs = flatten_tensors(module(*example))
    out_names = [f"output{i}" for i in range(len(outputs))]
    axes: dict[str, dict[int, str]] = {}
    for name, t in zip(names, example):
        axes[name] = {d: f"{name}_d{d}" for d in dynamic if d < t.ndim}
    spatial = any(d >= 2 for d in dynamic)
    for name, t in zip(out_names, outputs):
        axes[name] = {d: f"{name}_d{d}" for d in ((0, 2, 3) if spatial and t.ndim == 4 else (0,)) if d < t.ndim}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(t.clone() for t in example),
            str(tmp),
            input_names=names,
            output_names=out_names,
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    os.replace(tmp, path)


def _nncf_quantise(onnx_path: Path, calibration: list[tuple[torch.Tensor, ...]], float_ops: Sequence[str]) -> Any:
    """NNCF post-training int8 (mixed preset: asymmetric activations) on the training images, as an
    ``openvino.Model`` whose weights stay float behind their quantisers (the checked graph: see
    ``seg.int8_params``); ops of the types ``float_ops`` stay float."""
    _without_telemetry()
    import nncf

    model = _ov_core().read_model(str(onnx_path))
    items = [[_to_numpy(t) for t in call] for call in calibration]
    return nncf.quantize(
        model,
        nncf.Dataset(items),
        subset_size=len(items),
        preset=nncf.QuantizationPreset.MIXED,
        fast_bias_correction=True,
        ignored_scope=nncf.IgnoredScope(types=list(float_ops), validate=False),
        advanced_parameters=nncf.AdvancedQuantizationParameters(backend_params={"compress_weights": False}),
    )


def _quantise_openvino(
    onnx_path: Path, calibration: list[tuple[torch.Tensor, ...]], out: Path, float_ops: Sequence[str]
) -> None:
    """The OpenVINO int8 export calibrated on ``calibration``, saved to ``out`` (``_save_int8``)."""
    _save_int8(_nncf_quantise(onnx_path, calibration, float_ops), out)


def _checked_path(out: Path) -> Path:
    """Beside an int8 export: the parameters (``seg.int8_params.extract``) of the graph it was made from."""
    return out.with_name(out.name.removesuffix(".xml") + ".checked.json")


def _save_int8(checked: Any, out: Path) -> None:
    """Serve ``checked`` (an int8 graph with float weights) from ``out``: its parameters and digest go
    beside it first, then its weights are rounded to int8 values on this CPU for a file 4x smaller that
    loads with less memory."""
    from openvino._offline_transformations import compress_quantize_weights_transformation

    from seg.int8_params import extract

    atomic_write_text(_checked_path(out), json.dumps(extract(checked)))
    compress_quantize_weights_transformation(checked)
    _save_openvino(checked, out)


def _save_openvino(model: Any, out: Path) -> None:
    import openvino as ov

    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.xml")
    ov.save_model(model, str(tmp))
    os.replace(tmp.with_suffix(".bin"), out.with_suffix(".bin"))
    os.replace(tmp, out)


def _openvino_int8_from_params(
    onnx_path: Path, example: tuple[torch.Tensor, ...], params: dict, out: Path, float_ops: Sequence[str]
) -> None:
    """The int8 export rebuilt without training images: quantised on one example input (which places the
    quantisers), then given the shipped ranges; refused unless it is the graph that was checked."""
    from seg.int8_params import apply

    _save_int8(apply(_nncf_quantise(onnx_path, [example], float_ops), params), out)


# ------------------------------------------------------------------------------ shipped int8 parameters


def int8_params_paths(key: str) -> list[Path]:
    """Where int8 parameters of the weights ``key`` may be (``seg.int8_params``): ``int8/`` in the checkpoint
    folder (``$SEG_CHECKPOINT_DIR``), then in the shipped checkpoints'."""
    folders = dict.fromkeys(f for f in (checkpoint_dir(), shipped_checkpoint_dir()) if f is not None)
    return [folder / "int8" / f"{key[:24]}.json" for folder in folders]


def read_int8_params(key: str, recipe: int) -> dict | None:
    """The int8 parameters of these weights for the quantisation ``recipe`` (``int8_recipe``), if any are
    shipped in the current format."""
    from seg.int8_params import FORMAT

    for path in int8_params_paths(key):
        try:
            params = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (
            isinstance(params, dict)
            and params.get("format") == FORMAT
            and params.get("key") == key
            and params.get("recipe") == recipe
        ):
            if isinstance(params.get("parts"), dict):
                return params
    return None


def _checked_int8_parts(spec: ServingSpec) -> dict[str, dict] | None:
    """Per part, the parameters of the graph each cached OpenVINO int8 export was made from (its ranges and
    digest); None when one is missing."""
    folder = export_dir(spec.key, spec.code)
    suffix = _int8_suffix("openvino", int8_recipe(spec))
    parts = {}
    for part in spec.parts:
        served = folder / f"{_part_file(part)}{suffix}"
        try:
            checked = json.loads(_checked_path(served).read_text(encoding="utf-8")) if served.is_file() else None
        except (OSError, ValueError):
            checked = None
        if not isinstance(checked, dict) or not isinstance(checked.get("digest"), str):
            return None
        parts[part] = checked
    return parts


def served_int8_digests(spec: ServingSpec) -> dict[str, str] | None:
    """Per part, the digest of the graph each cached OpenVINO int8 export was made from (the one an agreement
    check measured); None when one is missing."""
    parts = _checked_int8_parts(spec)
    return None if parts is None else {p: v["digest"] for p, v in parts.items()}


def _agreement_of_params(spec: ServingSpec, params: dict | None = None) -> dict | None:
    """The agreement recorded in ``params`` (default: the shipped ones, ``read_int8_params``; measured on val when
    they were made) at this process's thread count, when it passed there, the files served now are exactly the
    graph that was checked and the settings it was checked with are this spec's; else None.

    Per thread count, because the same int8 graph can score differently with another: the shipped Mask R-CNN's
    val mask AP was 0.4358 with two threads and 0.4398 with one, against eager's 0.4314 (the contract allows 0.005).
    """
    params = params if params is not None else read_int8_params(spec.key, int8_recipe(spec))
    recorded = (params or {}).get("agreement") or {}
    if _jsonable_context(recorded.get("context")) != _jsonable_context(spec.context):
        return None
    here = (recorded.get("by_threads") or {}).get(str(torch.get_num_threads())) or {}
    if not here.get("passed"):
        return None
    digests = served_int8_digests(spec)
    parts = params["parts"]
    if digests is None or any(parts.get(p, {}).get("digest") != d for p, d in digests.items()):
        return None
    return {**recorded, "passed": True, "metrics": here}


def _jsonable_context(context: Any) -> str:
    return json.dumps(context, sort_keys=True, default=str)


def with_int8_checked(
    model: nn.Module, spec: ServingSpec, choice: RuntimeChoice, progress: Callable[[str], None] | None = None
) -> RuntimeChoice:
    """``choice`` when its calibration checked OpenVINO int8 on val, else a calibration of OpenVINO int8 alone.

    A faster backend that passes first (bf16 where the CPU has AMX) leaves int8 unchecked, yet int8 is what a CPU
    without AMX serves: shipping its parameters (``write_int8_params``) needs its own check on val.
    """
    if "openvino-int8" in choice.agreement or not package_available("openvino"):
        return choice
    with exclusive_lock(export_dir(spec.key, spec.code) / ".lock"):
        return calibrate(model, spec, "openvino-int8", progress)


def write_int8_params(spec: ServingSpec, choice: RuntimeChoice, folder: Path) -> Path:
    """Ship-able int8 parameters (``seg.int8_params``) of the OpenVINO int8 export in the cache, with the
    agreement it passed on val at this thread count: written to ``folder/<weights key>.json``.

    The check is recorded per thread count (``agreement.by_threads``), passed or not; a file already there
    for the very same graph keeps its other thread counts, so running the export once per thread count a
    deployment may use records them all. Raises ``ValueError`` unless int8 was checked on val here (not
    merely without val data) and the graph passed at some recorded thread count.
    """
    from seg.int8_params import FORMAT

    check = choice.agreement.get("openvino-int8")
    if check is None:
        raise ValueError(
            "OpenVINO int8 was not checked on val: a faster backend passed first (--runtime openvino checks it)"
        )
    if str(check.get("reason", "")).startswith("no val data"):
        raise ValueError("OpenVINO int8 was not checked on val here for this checkpoint")
    parts = _checked_int8_parts(spec)
    if parts is None:
        raise ValueError("no OpenVINO int8 export of this checkpoint in the cache")
    path = folder / f"{spec.key[:24]}.json"
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        before = {}
    digests = {p: v["digest"] for p, v in parts.items()}
    same_graph = (
        isinstance(before, dict)
        and before.get("key") == spec.key
        and before.get("recipe") == int8_recipe(spec)
        and {p: v.get("digest") for p, v in (before.get("parts") or {}).items()} == digests
        and _jsonable_context((before.get("agreement") or {}).get("context")) == _jsonable_context(spec.context)
    )
    by_threads = dict((before.get("agreement") or {}).get("by_threads") or {}) if same_graph else {}
    here = str(torch.get_num_threads())
    by_threads[here] = {**check, "passed": bool(check.get("passed"))}
    passing = {n: c for n, c in by_threads.items() if c["passed"]}
    if not passing:
        raise ValueError("OpenVINO int8 has not passed the agreement contract on val here for this checkpoint")
    threads = here if here in passing else min(passing, key=int)
    params = {
        "format": FORMAT,
        "key": spec.key,
        "recipe": int8_recipe(spec),
        "parts": parts,
        # ``metrics``: a passing check (this thread count's when it passed); ``by_threads``: each one checked
        "agreement": {
            "passed": True,
            "context": spec.context,
            "metrics": passing[threads],
            "threads": int(threads),
            "by_threads": dict(sorted(by_threads.items(), key=lambda kv: int(kv[0]))),
        },
        "made_with": {"cpu": cpu_features().summary(), "versions": runtime_versions(), "at": time.strftime("%Y-%m-%d")},
    }
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(params, default=str) + "\n")
    return path


def _quantise_onnx(onnx_path: Path, calibration: list[tuple[torch.Tensor, ...]], out: Path) -> None:
    """ONNX Runtime static int8 (QDQ, per-channel weights) of convolutions and matrix products,
    calibrated on the training images; everything else stays float."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    items = [[_to_numpy(t) for t in call] for call in calibration]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(items)

        def get_next(self) -> dict | None:
            arrays = next(self.it, None)
            return None if arrays is None else {f"input{i}": a for i, a in enumerate(arrays)}

    pre = out.with_name(f".{out.stem}.{os.getpid()}.pre.onnx")
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.onnx")
    try:
        # auto_merge: at dynamic sizes a U-Net's resize targets come from the input's shape and its skips' from
        # the pools, two expressions of one size that the symbolic inference must be allowed to merge (unmerged,
        # it fails and leaves a debug copy of the model in the working directory)
        quant_pre_process(str(onnx_path), str(pre), auto_merge=True)
        quantize_static(
            str(pre),
            str(tmp),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv", "MatMul", "Gemm"],
        )
        os.replace(tmp, out)
    finally:
        for leftover in (pre, tmp):
            leftover.unlink(missing_ok=True)


def _build_part(
    model: nn.Module,
    part: str,
    dynamic: tuple[int, ...],
    capture: Callable[[], dict[str, _Captured]],
    calibration: Callable[[], list[tuple] | None],
    backend: str,
    folder: Path,
    draft: bool,
    params: dict[str, dict] | None,
    float_ops: Sequence[str],
) -> RuntimePart:
    """Export (once, cached) and load one part for one backend; ``capture`` runs only when an export is
    missing, ``calibration`` (this part's int8 calibration inputs) only when an int8 file must be made.

    ``draft``: an int8 file of its own, quantised on whatever calibration it is given (one image), only
    to be timed: its graph, hence its speed, is the full quantisation's. ``params``: shipped int8
    parameters per part (``read_int8_params``), used before calibrating. ``float_ops``: the int8
    recipe's op types left in float (``ServingSpec.int8_float_ops``).
    """
    family, precision = backend.split("-")
    module = model.get_submodule(part) if part else model
    onnx_path = folder / f"{_part_file(part)}.onnx"
    structure_path = folder / f"{_part_file(part)}.outputs.json"
    if not onnx_path.is_file() or not structure_path.is_file():
        captured = capture()[part]
        _export_onnx(module, captured.inputs[0], dynamic, onnx_path, captured.input_structure)
        atomic_write_text(structure_path, json.dumps(captured.structure))
    structure = json.loads(structure_path.read_text(encoding="utf-8"))
    # whole models of a fixed input size compile per batch shape; a part fed a varying number of
    # regions (a detector's RoI heads) would recompile on every new count, so it stays dynamic
    static = dynamic == (0,) and not part
    if precision == "int8":
        recipe = _recipe_number(float_ops)
        path = folder / f"{_part_file(part)}{_DRAFT if draft else ''}{_int8_suffix(family, recipe)}"
        if not _int8_file_complete(path) and family == "openvino" and not draft and part in (params or {}):
            try:
                _openvino_int8_from_params(onnx_path, capture()[part].inputs[0], params[part], path, float_ops)
            except (ValueError, RuntimeError) as err:
                log.warning("the shipped int8 parameters do not apply here (%s); calibrating instead", err)
        if not _int8_file_complete(path):
            calls = calibration()
            if not calls:
                raise RuntimeError("int8 needs training images to calibrate on")
            if family == "openvino":
                _quantise_openvino(onnx_path, calls, path, float_ops)
            else:
                _quantise_onnx(onnx_path, calls, path)
    else:
        path = onnx_path
    engine = _OrtEngine(path) if family == "onnx" else _OpenVinoEngine(path, precision, static)
    # only a part fed regions (a detector's RoI heads: batch dim alone varies) can be called with none left; an
    # image-fed part never is, and its eager copy would stay in memory beside the served graph for nothing
    served = RuntimePart(engine, structure, backend, eager=module if part and dynamic == (0,) else None)
    for name in KEPT_ATTRIBUTES:
        if hasattr(module, name):
            setattr(served, name, getattr(module, name))
    return served


def build_serving(
    model: nn.Module,
    spec: ServingSpec,
    backend: str,
    captured: dict[str, _Captured] | None = None,
    calibration: dict[str, list[tuple]] | Callable[[], dict[str, list[tuple]] | None] | None = None,
    parts: Sequence[str] | None = None,
    draft: bool = False,
) -> nn.Module:
    """The model served by ``backend``: the model itself for eager, else with each part replaced.

    ``parts``: only these of the spec's parts (None: all). Exports already in the cache are loaded
    as they are: no example input is run then. ``calibration``: each part's int8 calibration inputs,
    or a function giving them, called only when an int8 file is made (None: gathered here then).
    ``draft``: int8 parts quantised on ``calibration`` as given, into files of their own (see
    ``_build_part``).
    """
    if backend == EAGER:
        return model
    folder = export_dir(spec.key, spec.code)
    cache: dict[str, dict[str, _Captured]] = {"captured": captured} if captured is not None else {}

    def capture() -> dict[str, _Captured]:
        if "captured" not in cache:
            cache["captured"] = capture_parts(model, list(spec.parts), spec.example_inputs()[:1])
        return cache["captured"]

    calls: dict[str, dict[str, list[tuple]] | None] = {"all": calibration} if isinstance(calibration, dict) else {}
    gather = calibration if callable(calibration) else lambda: _calibration_inputs(model, spec)

    def calibration_of(part: str) -> Callable[[], list[tuple] | None]:
        def inputs() -> list[tuple] | None:
            if "all" not in calls:  # only when an int8 file is made, and neither the cache nor parameters had it
                calls["all"] = gather()
            return (calls["all"] or {}).get(part)

        return inputs

    params = None
    if backend == "openvino-int8" and not draft and not _int8_files_exist(folder, spec, backend):
        params = (read_int8_params(spec.key, int8_recipe(spec)) or {}).get("parts")
    float_ops = spec.int8_float_ops
    if "" in spec.parts:
        return _build_part(
            model, "", spec.parts[""], capture, calibration_of(""), backend, folder, draft, params, float_ops
        )
    served = copy.deepcopy(model)
    for part, dynamic in spec.parts.items():
        if parts is not None and part not in parts:
            continue
        parent_name, _, child = part.rpartition(".")
        parent = served.get_submodule(parent_name) if parent_name else served
        setattr(
            parent,
            child,
            _build_part(model, part, dynamic, capture, calibration_of(part), backend, folder, draft, params, float_ops),
        )
    return served


def _int8_file_complete(path: Path) -> bool:
    """An int8 export is there, with (OpenVINO's) the parameters of the graph it was made from."""
    return path.is_file() and (path.suffix != ".xml" or _checked_path(path).is_file())


def _int8_files_exist(folder: Path, spec: ServingSpec, backend: str) -> bool:
    suffix = _int8_suffix(backend.split("-")[0], int8_recipe(spec))
    return all(_int8_file_complete(folder / f"{_part_file(p)}{suffix}") for p in spec.parts)


def _calibration_inputs(
    model: nn.Module, spec: ServingSpec, calls: list[tuple] | None = None
) -> dict[str, list[tuple]] | None:
    """Each part's int8 calibration inputs for ``calls`` (default: all of ``spec.calibration_inputs()``)."""
    calls = spec.calibration_inputs() if calls is None else calls
    if not calls:
        return None
    parts = list(spec.parts)
    flat = [tuple(flatten_tensors(list(call))) for call in calls]
    if parts == [""]:  # the whole model is the one part: its inputs are the calls, no forward needed
        return {"": flat}
    # a part entered with the very tensors the model was called with (a DWT ensemble's members) takes every
    # call as it is: one forward shows it, where capturing would run the model on every call (43 s for the DWT)
    given: dict[str, bool] = {}

    def note(part: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:  # returns None: the arguments go on unchanged
            given.setdefault(part, list(map(id, flatten_tensors(list(args)))) == first_ids)

        return hook

    first_ids = list(map(id, flat[0]))
    hooks = [model.get_submodule(part).register_forward_pre_hook(note(part)) for part in parts]
    try:
        first = capture_parts(model, parts, calls[:1])
    finally:
        for hook in hooks:
            hook.remove()
    if all(given.get(part) for part in parts):
        return {part: flat for part in parts}
    rest = capture_parts(model, parts, calls[1:])
    return {part: first[part].inputs + rest[part].inputs for part in parts}


# ------------------------------------------------------------------------------ choosing


def _record_path(spec: ServingSpec, requested: str) -> Path:
    features = cpu_features()
    context = {
        "spec": spec.context,
        "parts": spec.parts,
        "int8_recipe": int8_recipe(spec),  # a choice made for one recipe's graph says nothing of another's
        "cpu": features.model,
        "flags": features.flags,
        "threads": torch.get_num_threads(),
        "versions": runtime_versions(),
        "requested": requested,
        "record": _RECORD_VERSION,
    }
    digest = hashlib.sha256(json.dumps(context, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return export_dir(spec.key, spec.code) / f"choice-{requested}-{digest}.json"


def read_choice(spec: ServingSpec, requested: str) -> RuntimeChoice | None:
    """The recorded choice for these weights, settings, CPU, threads and package versions, if any."""
    path = _record_path(spec, requested)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        choice = RuntimeChoice(**{k: v for k, v in data.items() if k in RuntimeChoice.__dataclass_fields__})
    except (OSError, ValueError, TypeError):
        return None
    return choice if choice.backend in BACKENDS else None


def _relative_difference(reference: list[torch.Tensor], candidate: list[torch.Tensor]) -> float:
    worst = 0.0
    for a, b in zip(reference, candidate):
        if a.shape != b.shape:
            return float("inf")
        scale = float(a.abs().max()) if a.numel() else 0.0
        worst = max(worst, float((a.float() - b.float()).abs().max()) / max(scale, 1e-6) if a.numel() else 0.0)
    return worst


def time_interleaved(
    functions: dict[str, Callable[[], Any]],
    rounds: int = 7,
    warmup: int = 2,
    budget_s: float = 30.0,
    until_clear: bool = False,
    drop_beyond: float | None = None,
    keep: Sequence[str] = (),
) -> dict[str, float]:
    """Median milliseconds per call for each function, called in rotating order each round.

    Interleaving means a neighbour's burst of load hits every function alike, so the ratios
    hold even on a shared machine; ``budget_s`` ends the rounds early (at least three).
    ``until_clear``: also end them after three rounds once the fastest function is beyond doubt
    (its slowest call faster than every other function's fastest), which is all a choice needs.
    ``drop_beyond``: after the first timed round, a function slower than this many times the fastest
    (unless in ``keep``) is not called again: one call ranks it, and the slowest cost the most to time.
    """
    names = list(functions)
    with torch.inference_mode():
        for _ in range(warmup):
            for name in names:
                functions[name]()
        times: dict[str, list[float]] = {n: [] for n in names}
        start = time.perf_counter()
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                t0 = time.perf_counter()
                functions[name]()
                times[name].append(time.perf_counter() - t0)
            if r == 0 and drop_beyond is not None:
                fastest = min(v[0] for v in times.values())
                names = [n for n in names if n in keep or times[n][0] <= drop_beyond * fastest]
            if r >= 2 and (time.perf_counter() - start > budget_s or (until_clear and _fastest_is_clear(times))):
                break
    return {n: statistics.median(v) * 1000.0 for n, v in times.items()}


def _fastest_is_clear(times: dict[str, list[float]]) -> bool:
    """True when the function of the lowest median never took as long as any other's fastest call."""
    if len(times) < 2:
        return False
    fastest = min(times, key=lambda n: statistics.median(times[n]))
    return max(times[fastest]) < min(min(v) for n, v in times.items() if n != fastest)


def _first_line(err: BaseException) -> str:
    """An error in a record: its first line, or its type when it has no message."""
    return str(err).splitlines()[0][:200] if str(err) else type(err).__name__


def calibrate(
    model: nn.Module, spec: ServingSpec, requested: str = "auto", progress: Callable[[str], None] | None = None
) -> RuntimeChoice:
    """Export, time and check every candidate backend; record and return the choice.

    Candidates at least ``MIN_SPEEDUP`` faster than eager are checked fastest first; the first
    that passes ``spec.agreement`` wins (without val data: the first that reproduces eager's
    outputs within ``EXACT_TOLERANCE``). Eager fp32 when none does.

    An int8 backend not yet exported is first quantised on one calibration image and timed as such
    (the graph, hence the speed, is the same); only a candidate that comes up for the agreement check
    is quantised on every calibration image, whose inputs are gathered only then (a part's inputs cost a
    forward pass of the whole model per image). Quantisation is most of a cold calibration, and only one
    int8 backend is usually checked.
    """
    say = progress or (lambda message: log.info(message))
    examples = spec.example_inputs()
    folder = export_dir(spec.key, spec.code)
    int8_exported = [b for b in ("onnx-int8", "openvino-int8") if _int8_files_exist(folder, spec, b)]
    shipped = read_int8_params(spec.key, int8_recipe(spec))
    if shipped and set(spec.parts) <= set(shipped["parts"]) and "openvino-int8" not in int8_exported:
        int8_exported.append("openvino-int8")  # rebuilt from the shipped parameters, never a draft
    calls = spec.calibration_inputs() if len(int8_exported) < 2 else None
    # a draft needs one image's inputs; a part's inputs can cost a forward pass of the whole model each
    one_image = _calibration_inputs(model, spec, calls[:1]) if calls else None

    @functools.cache
    def calibration() -> dict[str, list[tuple]] | None:
        """Every calibration image's inputs: gathered once, only when an int8 file is made in full."""
        return _calibration_inputs(model, spec, calls) if calls else None

    backends = candidate_backends(requested, int8=one_image is not None or bool(int8_exported))
    if one_image is None:  # without training images only what exists (or is shipped) can be int8
        backends = [b for b in backends if not b.endswith("int8") or b in int8_exported]
    captured = capture_parts(model, list(spec.parts), examples[:1])
    served: dict[str, nn.Module] = {EAGER: model}
    skipped: dict[str, str] = {}
    drafts: set[str] = set()
    for backend in backends[1:]:
        draft = backend.endswith("int8") and backend not in int8_exported and one_image is not None
        say(f"exporting for {backend}" + (" (a draft quantised on one image, to time)" if draft else ""))
        try:
            served[backend] = build_serving(
                model, spec, backend, captured, one_image if draft else calibration, draft=draft
            )
            if draft:
                drafts.add(backend)
        except Exception as err:  # noqa: BLE001 - a backend that cannot export is simply not a candidate
            log.warning("%s is not usable for this model: %s", backend, err)
            skipped[backend] = f"export failed: {_first_line(err)}"
    with torch.inference_mode():
        reference = flatten_tensors(model(*examples[0]))
        differences = {b: _relative_difference(reference, flatten_tensors(m(*examples[0]))) for b, m in served.items()}
    say(f"timing {', '.join(served)}")
    timings = time_interleaved(
        {b: (lambda m=m: [m(*call) for call in examples]) for b, m in served.items()},
        warmup=TIMING_WARMUP,
        budget_s=TIMING_BUDGET_S,
        until_clear=True,
        drop_beyond=TIMING_DROP_BEYOND,
        keep=[EAGER],  # every speed-up is a ratio to it
    )
    eager_ms = timings[EAGER]
    agreement: dict[str, dict] = {}
    chosen, reason, chosen_parts = EAGER, "", None
    # (label, backend, parts): the full set of parts first; a backend whose full set fails the
    # contract comes back with each of ``spec.fallback_parts``, timed against eager and re-ranked
    pending = [(b, b, None) for b in served if b != EAGER]
    while pending:
        pending.sort(key=lambda item: timings[item[0]])
        label, backend, parts = pending.pop(0)
        if eager_ms / timings[label] < MIN_SPEEDUP:
            break
        if label in drafts:  # the fastest left: quantise it on every calibration image before checking it
            say(f"quantising {label} on every calibration image")
            try:
                served[label] = build_serving(model, spec, backend, captured, calibration)
            except Exception as err:  # noqa: BLE001 - as for a failed export
                log.warning("%s is not usable for this model: %s", label, err)
                skipped[label] = f"export failed: {_first_line(err)}"
                continue
            drafts.discard(label)
            differences.pop(label, None)
        say(f"checking {label} against eager fp32 (on val, or on its record when no val data is at hand)")
        try:
            result = spec.agreement(served[label])
        except Exception as err:  # noqa: BLE001 - a backend that cannot be checked is not chosen
            log.warning("%s could not be checked: %s", label, err)
            result = Agreement(False, {}, f"the check failed: {_first_line(err)}")
        if label not in differences:
            with torch.inference_mode():
                output = flatten_tensors(served[label](*examples[0]))
            differences[label] = _relative_difference(reference, output)
        exact = differences[label] <= EXACT_TOLERANCE
        recorded = _agreement_of_params(spec, shipped) if result is None and label == "openvino-int8" else None
        if recorded is not None:  # the very graph that passed on val when its parameters were made
            agreement[label] = {
                **recorded["metrics"],
                "passed": True,
                "max_relative_difference": differences[label],
                "reason": "no val data here: the same int8 graph passed the contract on val when its "
                "shipped parameters were made",
            }
            passed = True
        elif result is None:
            agreement[label] = {
                "passed": exact,
                "max_relative_difference": differences[label],
                "reason": "no val data: only a backend reproducing eager's outputs qualifies",
            }
            passed = exact
        else:
            agreement[label] = {
                "passed": result.passed,
                "reason": result.reason,
                "max_relative_difference": differences[label],
                **result.metrics,
            }
            passed = result.passed
        if passed:
            chosen, chosen_parts = backend, parts
            reason = "fastest backend that passes the agreement contract" + (
                f" (serving {', '.join(parts)}; the other parts failed it and stay eager)" if parts else ""
            )
            break
        if parts is None:
            for subset in spec.fallback_parts:
                fallback = part_label(backend, subset)
                try:
                    served[fallback] = build_serving(model, spec, backend, captured, calibration, parts=subset)
                except Exception as err:  # noqa: BLE001 - as for a whole backend
                    skipped[fallback] = f"export failed: {_first_line(err)}"
                    continue
                local = time_interleaved(
                    {
                        EAGER: lambda: [model(*call) for call in examples],
                        fallback: lambda m=served[fallback]: [m(*call) for call in examples],
                    },
                    rounds=3,
                    warmup=1,
                )
                timings[fallback] = eager_ms * local[fallback] / local[EAGER]
                pending.append((fallback, backend, list(subset)))
    for leftover in folder.glob(f"*{_DRAFT}-*"):  # drafts were for timing only
        with contextlib.suppress(OSError):  # still open where the platform forbids removing that
            leftover.unlink(missing_ok=True)
    if chosen == EAGER:
        reason = (
            "only eager fp32 is available"
            if len(served) == 1
            else "no faster backend passes the agreement contract"
            if agreement
            else f"no backend is at least {MIN_SPEEDUP}x faster than eager fp32"
        )
    choice = RuntimeChoice(
        chosen,
        requested,
        reason,
        {b: round(t, 3) for b, t in timings.items()},
        _finite(agreement),
        skipped,
        parts=chosen_parts,
        measured_now=True,
    )
    path = _record_path(spec, requested)
    choice.record = str(path)
    atomic_write_text(
        path,
        json.dumps(
            {k: v for k, v in asdict(choice).items() if k != "measured_now"}  # of this process only
            | {
                "cpu": cpu_features().summary(),
                "threads": torch.get_num_threads(),
                "versions": runtime_versions(),
                "context": spec.context,
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
            indent=1,
            default=str,
        ),
    )
    return choice


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def serving_module(
    model: nn.Module,
    spec: ServingSpec | Callable[[], ServingSpec],
    runtime: str,
    device: torch.device | None = None,
    refresh: bool = False,
    progress: Callable[[str], None] | None = None,
    source: str | Path | None = None,
) -> tuple[nn.Module, RuntimeChoice]:
    """The module to serve ``model`` with for ``runtime`` (see ``resolve_runtime``), and why.

    ``spec`` may be a function (built only when a runtime other than eager is asked for).
    Eager on a GPU and whenever the asked-for package is missing; ``auto`` and the families
    use the recorded choice, or calibrate (``refresh`` forces a new calibration). A backend
    named exactly (e.g. ``openvino-int8``) is served without the agreement check: for
    benchmarks and experiments. Inside ``serving_defaults(deferred=True)`` all of that happens
    in the background and a ``DeferredServing`` serves eager PyTorch meanwhile; ``source``, the checkpoint
    ``model`` was loaded from as ``seglab export`` loads it, lets that calibration run in a child process.
    """
    runtime = resolve_runtime(runtime)
    if device is not None and device.type != "cpu":
        return model, RuntimeChoice(EAGER, runtime, f"{device.type} device: eager PyTorch")
    if runtime in ("eager", EAGER):
        return model, RuntimeChoice(EAGER, runtime, "eager PyTorch asked for")
    candidates = candidate_backends(runtime)
    if len(candidates) == 1:
        family = runtime.split("-")[0]
        families = ("onnx", "openvino") if family == "auto" else (family,)
        missing = dict.fromkeys(p for f in families for p in missing_packages(f)) or [
            _PACKAGES[f][-1] for f in families
        ]
        return model, RuntimeChoice(EAGER, runtime, f"{' and '.join(missing)} not installed: eager PyTorch")
    context = _SERVING_DEFAULTS.get()
    if context is not None and context[1]:
        return _serve_deferred(model, spec, runtime, refresh, Path(source).absolute() if source else None)
    spec = spec() if callable(spec) else spec
    # processes sharing a cache export and calibrate once
    with exclusive_lock(export_dir(spec.key, spec.code) / ".lock"):
        if runtime in BACKENDS:
            return build_serving(model, spec, runtime), RuntimeChoice(runtime, runtime, "backend asked for by name")
        choice = None if refresh else read_choice(spec, runtime)
        if choice is None:
            choice = calibrate(model, spec, runtime, progress)
        try:
            return build_serving(model, spec, choice.backend, parts=choice.parts), choice
        except Exception as err:  # noqa: BLE001 - a broken cache must not stop serving
            log.warning("%s failed to load (%s); serving eager PyTorch", choice.backend, err)
            return model, RuntimeChoice(EAGER, runtime, f"{choice.backend} failed to load: eager PyTorch")


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """An advisory lock on ``path`` (POSIX) shared by processes; elsewhere no lock (files are written atomically
    anyway). Not re-entrant: one lock file per purpose."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
