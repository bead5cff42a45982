"""Shared fixtures: the real datasets when the data root is set, skipped otherwise."""

from __future__ import annotations

import gc
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

try:
    import fcntl
except ImportError:  # not POSIX: no locks (``_cpu_share``)
    fcntl = None

from seg.config import dataset_dir
from seg.io import atomic_write_text
from seg.memory import reuse_freed_memory

# Each pytest-xdist worker gets its share of the cores (the fast loop runs one per core: see the hook below).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // _WORKERS))
# Batch work, as in the seglab command: freed tensors are reused instead of faulted in again.
reuse_freed_memory()
# Tests compare against eager PyTorch, the reference: the dashboard's and predict's default (the runtime
# measured fastest, calibrated on first use) would export and time every model in each test process.
# Tests of the serving runtimes ask for it by name; subprocesses (the app, predict) inherit this.
os.environ.setdefault("SEG_RUNTIME", "eager")
# Likewise training's ``auto`` precision: fp32, instead of a few seconds of bf16-vs-fp32 training steps
# measured again in every test process and cache (tests of that decision clear this variable).
os.environ.setdefault("SEG_BF16_TRAINING", "0")
# The run's start, set where pytest starts (before pytest-xdist starts its workers, which inherit it).
os.environ.setdefault("SEG_TEST_RUN_STARTED", repr(time.time()))


def _dataset_or_skip(name: str, probe: str) -> Path:
    if not os.environ.get("SEG_DATA_DIR"):
        pytest.skip(
            f"SEG_DATA_DIR is not set; integration tests need the {name} dataset (python -m seg download {name})"
        )
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


@pytest.fixture
def serving_cache(request, monkeypatch):
    """Exports, calibrations and eager references of the shipped models kept in pytest's own cache
    (keyed by the weights): the first run on a machine pays for them, later runs re-check agreement
    only. ``pytest --cache-clear`` starts afresh."""
    monkeypatch.setenv("SEG_CACHE_DIR", str(request.config.cache.mkdir("seglab-serving")))


# -- headless Chromium for the browser tests (Debian's chromium, driven by Playwright by path) --
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium_path() -> str | None:
    for candidate in (
        os.environ.get("CHROMIUM_PATH"),
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
        "/usr/bin/chromium",
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium, or a skip with the reason (no playwright, no browser, browser won't start)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium found (install Debian's `chromium`, or set CHROMIUM_PATH); .ci/run installs it")
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        except Exception as err:  # a broken browser install is an environment problem, not a UI bug
            pytest.skip(f"Chromium at {path} did not start: {err}")
        yield b
        b.close()


@pytest.fixture(scope="session")
def run_started() -> float:
    """When this test run started (``time.time()``), the same in every pytest-xdist worker: a result
    another test wrote to a shared cache after it was computed in this run, from this code."""
    return float(os.environ["SEG_TEST_RUN_STARTED"])


#: Modules whose tests share an eager val reference through the serving cache (the DWT's: about two
#: minutes). Queued together on one worker, the second test reads what the first wrote instead of
#: another worker waiting on the lock while it is computed.
SHARED_REFERENCE = ("test_shipped_checkpoints.py", "test_shipped_runtime.py")

#: Each test's seconds in a whole parallel run (setup, call and teardown), the order's cost estimate;
#: ``pytest --store-durations`` rewrites it. A test not listed counts as ``UNLISTED_S``.
DURATIONS = Path(__file__).with_name("durations.json")
UNLISTED_S = 0.1
#: A module group at least this long starts a worker's queue (work stealing never takes it away).
HEAVY_S = 5.0
#: Seconds of short tests that start every other slice: longer than the uncontended test's own setup
#: (its app and browser), so the exclusive lock never waits for a long test that started meanwhile.
LEAD_S = 10.0


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--store-durations",
        action="store_true",
        help=f"write each test's duration in this run to {DURATIONS.name} (the order's cost estimate)",
    )


@pytest.hookimpl(wrapper=True)
def pytest_collection(session):  # noqa: ARG001
    """Collection imports torch, gradio and OpenVINO and builds every test: the garbage collector's passes
    over that growing heap took about 1.5 s a process. It is paused while collecting; what exists then is
    frozen (modules, classes, tests: never garbage, and walked by no later pass)."""
    gc.disable()
    try:
        return (yield)
    finally:
        gc.freeze()
        gc.enable()


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected: the slices are of what runs
def pytest_collection_modifyitems(config, items) -> None:  # noqa: ARG001
    """Modules with an ``uncontended`` test run first, so it waits for the other workers' first
    (short) tests rather than for whatever long test they are in; then the ``SHARED_REFERENCE``
    modules; modules stay contiguous. Under pytest-xdist, the order is then balanced across workers
    (``balanced_order``)."""
    first = {item.module for item in items if item.get_closest_marker("uncontended")}
    items.sort(key=lambda item: (item.module not in first, item.path.name not in SHARED_REFERENCE))
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and os.environ.get("PYTEST_XDIST_WORKER"):
        items[:] = balanced_order(items, workers, _stored_durations(), first)


def _stored_durations() -> dict[str, float]:
    try:
        return {str(k): float(v) for k, v in json.loads(DURATIONS.read_text(encoding="utf-8")).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def balanced_order(items: list, workers: int, durations: dict[str, float], first: set) -> list:
    """``items`` reordered for pytest-xdist's work stealing, which hands worker k the k-th of ``workers``
    contiguous slices (equal counts) and lets an idle worker steal from the end of a busy one's queue.

    The long module groups (``HEAVY_S`` and up) are spread over the slices, longest first, each to the
    slice with the least long work so far, and start their slice; the short ones fill each slice up to
    its count, where stealing balances what is left. Slice 0 starts with the ``uncontended`` modules
    and every other slice with ``LEAD_S`` of short tests, so the exclusive lock waits for short tests only.
    """
    groups: list[list] = []
    for item in items:  # contiguous module groups; the SHARED_REFERENCE modules form one group
        key = "shared" if item.path.name in SHARED_REFERENCE else item.module
        if groups and groups[-1][0] == key:
            groups[-1][1].append(item)
        else:
            groups.append([key, [item]])

    def cost(group: list) -> float:
        return sum(durations.get(item.nodeid, UNLISTED_S) for item in group)

    sizes, remaining = [], len(items)
    for k in range(workers):  # as pytest-xdist splits the collection among idle workers
        sizes.append(remaining // (workers - k))
        remaining -= sizes[-1]
    heads: list[list] = [[] for _ in range(workers)]
    long_work = [0.0] * workers
    starters = [group for key, group in groups if key in first]
    for group in starters:
        heads[0] += group
    rest = [group for key, group in groups if key not in first]
    heavy = sorted((g for g in rest if cost(g) >= HEAVY_S), key=cost, reverse=True)
    for group in heavy:
        fits = [k for k in range(workers) if len(heads[k]) + len(group) <= sizes[k]]
        if not fits:  # no slice has room: it stays among the short groups
            continue
        k = min(fits, key=lambda k: long_work[k])
        heads[k] += group
        long_work[k] += cost(group)
    placed = {id(item) for head in heads for item in head}
    short = [item for group in rest for item in group if id(item) not in placed]
    order: list = []
    for k in range(workers):
        room = sizes[k] - len(heads[k])
        fill, short = short[:room], short[room:]
        lead = 0  # short tests ahead of the long ones while slice 0 sets up its uncontended test (see above)
        if k > 0 and starters:
            ahead = 0.0
            while lead < len(fill) and ahead < LEAD_S:
                ahead += durations.get(fill[lead].nodeid, UNLISTED_S)
                lead += 1
        order += fill[:lead] + heads[k] + fill[lead:]
    return order + short


_measured: dict[str, float] = {}


def pytest_runtest_logreport(report) -> None:
    """Each test's setup, call and teardown seconds, kept for ``--store-durations``."""
    _measured[report.nodeid] = _measured.get(report.nodeid, 0.0) + report.duration


@pytest.hookimpl(trylast=True)  # after the session's fixtures are torn down
def pytest_sessionfinish(session, exitstatus) -> None:  # noqa: ARG001
    """``--store-durations``: the run's durations (over 0.2 s; the rest count as ``UNLISTED_S``), written once,
    by the process that saw every test (pytest-xdist's controller, or pytest itself).

    Then what is still alive is frozen out of the garbage collector: pytest's last sweep for unraisable
    exceptions collects five times, and each pass walked every object of torch, gradio and OpenVINO
    (about 2 s a worker at the end of every run); garbage is still collected."""
    if session.config.getoption("--store-durations") and not os.environ.get("PYTEST_XDIST_WORKER"):
        kept = {nodeid: round(seconds, 1) for nodeid, seconds in sorted(_measured.items()) if seconds > 0.2}
        atomic_write_text(DURATIONS, json.dumps(kept, indent=0) + "\n")
    gc.collect()
    gc.freeze()


def pytest_xdist_auto_num_workers(config) -> int:  # noqa: ARG001
    """One worker per core; a test marked ``uncontended`` has the cores to itself (``_cpu_share``)."""
    return os.cpu_count() or 1


@pytest.fixture(autouse=True)
def _cpu_share(request, tmp_path_factory):
    """Under pytest-xdist, a test marked ``uncontended`` (a timing bound, e.g. a run stopping within 2 s
    of Stop) runs while no other worker runs a test: the others hold a shared lock, it an exclusive one.
    A turnstile lock lets a waiting exclusive test in before new shared holders."""
    if fcntl is None or not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    shared_dir = tmp_path_factory.getbasetemp().parent  # one folder for all the workers of a run
    exclusive = request.node.get_closest_marker("uncontended") is not None
    with open(shared_dir / "cpu.turnstile", "a+b") as turnstile, open(shared_dir / "cpu.lock", "a+b") as lock:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        fcntl.flock(turnstile, fcntl.LOCK_UN)
        threads = torch.get_num_threads()
        if exclusive:  # the cores are its own while it runs: all of them
            torch.set_num_threads(min(2, os.cpu_count() or 1))
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            fcntl.flock(lock, fcntl.LOCK_UN)
