"""An attack on the dashboard over Gradio's HTTP protocol, as a browser (or anyone) can call it.

The app runs in its own process, in local mode and in public mode, inside a scratch folder that
holds everything it may write (labels root, visitor spaces, Gradio's upload folder, caches). Every
event listed in the page's ``/config`` is called by its index, the hidden and private ones
included, through ``/gradio_api/queue/join`` + ``/gradio_api/queue/data`` (or ``run/predict`` for
events the page calls outside the queue), and every input of every event gets path strings:
absolute paths, ``..``, ``~``, ``/proc/self``, a symlink out of the labels root and out of the
import root, null bytes, a 5,000-character name, a foreign folder holding a file named ``test``,
a server image, and file payloads pointing at that image. Afterwards:

- nothing was created or changed outside the allowed folders (listings before and after), and
  nothing inside them derives from the server image;
- no response lists a server folder (marker file names never appear) or returns the server image;
- error messages never name the app's own folders;
- the app still serves a segmentation.

``BrowserSession`` is the protocol client; ``tests/test_public_mode.py`` and ``bench/bench_soak.py``
use it too.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")
apply_diff = pytest.importorskip("gradio_client.utils").apply_diff

REPO = Path(__file__).resolve().parent.parent
SCENE = REPO / "assets" / "examples" / "scenes-1.png"
FILE_META = {"_type": "gradio.FileData"}
#: The server image: an aspect ratio (997 x 13) and colour no legitimate output has.
CANARY_SIZE = (997, 13)
CANARY_RGB = (3, 251, 7)


# -- the protocol client -----------------------------------------------------------------------------
@dataclass
class CallResult:
    ok: bool
    outputs: list | None
    error: str | None
    messages: list[dict] = field(default_factory=list)


class BrowserSession:
    """One browser tab: a session hash, the page's config, and events called by index.

    Mirrors ``@gradio/client``: queued events are joined with ``POST queue/join`` and read from the
    session's SSE stream ``GET queue/data``; events marked ``queue: false`` go to ``POST run/predict``.
    """

    def __init__(self, url: str, session_hash: str | None = None, timeout: float = 180.0, config: dict | None = None):
        self.url = url.rstrip("/") + "/"
        self.session_hash = session_hash or secrets.token_hex(8)
        # No kept-alive connections: the server may close an idle one just as a request reuses it.
        self.http = httpx.Client(timeout=timeout, limits=httpx.Limits(max_keepalive_connections=0))
        self.timeout = timeout
        self.config = config or self.http.get(self.url + "config").json()
        self.api = self.url + self.config["api_prefix"].strip("/") + "/"
        self.components = {c["id"]: c for c in self.config["components"]}
        self.deps = {d["id"]: d for d in self.config["dependencies"]}

    def close(self) -> None:
        self.http.close()

    # -- finding events --------------------------------------------------------------------------
    def component_id(self, elem_id: str) -> int:
        return next(i for i, c in self.components.items() if c.get("props", {}).get("elem_id") == elem_id)

    def find(
        self,
        api_name: str | None = None,
        trigger: tuple[str, str] | None = None,
        reads: str | None = None,
        writes: str | None = None,
    ) -> int:
        """The fn index by API name, by (elem_id, event name) of its trigger, or by a component (elem_id)
        it reads and one it writes (events chained with ``.then`` have no trigger of their own); among
        several events on one trigger, the one that reads the triggering component."""
        found = []
        for fn_index, dep in self.deps.items():
            if api_name is not None:
                if dep.get("api_name") == api_name:
                    return fn_index
                continue
            if trigger is not None:
                target = self.component_id(trigger[0])
                if [target, trigger[1]] in [list(t) for t in dep.get("targets", [])]:
                    found.append((target not in dep["inputs"], fn_index))
                continue
            if (reads is None or self.component_id(reads) in dep["inputs"]) and (
                writes is None or self.component_id(writes) in dep["outputs"]
            ):
                found.append((False, fn_index))
        if found:
            return min(found)[1]
        raise KeyError(api_name or trigger or (reads, writes))

    def defaults(self, fn_index: int) -> list:
        """The values the page would send: each input component's current value from the config."""
        return [self.components[i].get("props", {}).get("value") for i in self.deps[fn_index]["inputs"]]

    def values(self, fn_index: int, **by_elem_id: Any) -> list:
        """``defaults`` with the inputs named by their elem_id (dashes as underscores) replaced."""
        data = self.defaults(fn_index)
        for slot, component_id in enumerate(self.deps[fn_index]["inputs"]):
            elem_id = str(self.components[component_id].get("props", {}).get("elem_id") or "").replace("-", "_")
            if elem_id in by_elem_id:
                data[slot] = by_elem_id[elem_id]
        return data

    # -- calling ------------------------------------------------------------------------------------
    def upload(self, path: str | Path) -> dict:
        """Upload a file as the page does; returns the file payload to pass to an event."""
        path = Path(path)
        with open(path, "rb") as fh:
            r = self.http.post(self.api + "upload", files={"files": (path.name, fh, "application/octet-stream")})
        r.raise_for_status()
        return {"path": r.json()[0], "orig_name": path.name, "meta": FILE_META}

    def call(
        self, fn_index: int, data: list, event_data: Any = None, on_output: Callable[[list], None] | None = None
    ) -> CallResult:
        """Call an event as the page does; ``on_output`` sees each streamed output of a generator."""
        dep = self.deps[fn_index]
        target = (dep.get("targets") or [[None]])[0][0]
        body = {
            "data": data,
            "fn_index": fn_index,
            "session_hash": self.session_hash,
            "event_data": event_data,
            "trigger_id": target,
        }
        if dep.get("queue") is False:
            r = self.http.post(self.api + "run/predict", json=body)
            try:
                payload = r.json()
            except ValueError:
                return CallResult(False, None, f"HTTP {r.status_code}: {r.text[:300]}")
            if r.status_code == 200 and "data" in payload:
                return CallResult(True, payload["data"], None, [payload])
            return CallResult(False, None, str(payload.get("error") or payload.get("detail") or payload))
        r = self.http.post(self.api + "queue/join", json=body)
        if r.status_code != 200:
            return CallResult(False, None, f"HTTP {r.status_code}: {r.text[:300]}")
        event_id = r.json()["event_id"]
        return self._follow(event_id, on_output)

    def _follow(self, event_id: str, on_output: Callable[[list], None] | None = None) -> CallResult:
        messages: list[dict] = []
        last_output = None
        deadline = time.monotonic() + self.timeout
        with self.http.stream("GET", self.api + "queue/data", params={"session_hash": self.session_hash}) as r:
            buffer = ""
            for chunk in r.iter_text():
                buffer += chunk
                while "\n\n" in buffer:
                    line, buffer = buffer.split("\n\n", 1)
                    if not line.startswith("data:"):
                        continue
                    msg = json.loads(line[5:])
                    if msg.get("event_id") not in (None, event_id):
                        continue
                    messages.append(msg)
                    kind = msg.get("msg")
                    if kind == "process_generating" and msg.get("success"):
                        data = msg["output"].get("data")
                        # after the first output a generator sends each output as a diff to its last value
                        last_output = (
                            list(data)
                            if last_output is None
                            else [apply_diff(old, diff) for old, diff in zip(last_output, data)]
                        )
                        if on_output is not None:
                            on_output(last_output)
                    if kind == "process_completed":
                        output = msg.get("output") or {}
                        if msg.get("success"):
                            return CallResult(True, output.get("data", last_output), None, messages)
                        return CallResult(False, None, str(output.get("error") or output), messages)
                    if kind == "close_stream" or time.monotonic() > deadline:
                        return CallResult(False, None, "stream closed", messages)
        return CallResult(False, None, "stream ended", messages)

    def call_named(self, api_name: str, *data: Any) -> CallResult:
        return self.call(self.find(api_name=api_name), list(data))

    def fetch_file(self, payload: dict) -> bytes | None:
        url = payload.get("url") or (self.api + "file=" + payload["path"])
        url = url if url.startswith("http") else self.url + url.lstrip("/")
        for attempt in range(3):
            try:
                r = self.http.get(url)
                break
            except httpx.TransportError:  # a kept-alive connection the server had just closed
                if attempt == 2:
                    raise
                time.sleep(0.2)
        return r.content if r.status_code == 200 else None


# -- the app in its own process -------------------------------------------------------------------------
@dataclass
class Sandbox:
    """The scratch folder the app lives in, and the places it may write."""

    base: Path
    mark: str

    @property
    def labels(self) -> Path:
        return self.base / "labels"

    @property
    def visitors(self) -> Path:
        return self.base / "visitors"

    @property
    def checkpoints(self) -> Path:
        return self.base / "checkpoints"

    @property
    def foreign(self) -> Path:
        return self.base / "foreign"

    @property
    def import_root(self) -> Path:
        return self.base / "import-root"

    @property
    def home(self) -> Path:
        return self.base / "home"

    @property
    def canary(self) -> Path:
        return self.foreign / "canary.png"

    def writable(self, public: bool) -> list[Path]:
        """Folders the app may change: its caches and temp folders, and the labels (local) or visitor
        (public) root; local mode also writes new checkpoints."""
        places = [self.base / "gradio", self.base / "tmp", self.base / "cache", self.base / "xdg-cache"]
        places += [self.visitors] if public else [self.labels, self.checkpoints]
        return places

    def env(self, public: bool) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SEG_", "GRADIO_", "SPACE_"))}
        env.update(
            HOME=str(self.home),
            TMPDIR=str(self.base / "tmp"),
            GRADIO_TEMP_DIR=str(self.base / "gradio"),
            GRADIO_ANALYTICS_ENABLED="False",
            XDG_CACHE_HOME=str(self.base / "xdg-cache"),
            MPLCONFIGDIR=str(self.base / "xdg-cache" / "mpl"),
            SEG_CACHE_DIR=str(self.base / "cache"),
            SEG_LABEL_DIR=str(self.labels),
            SEG_VISITOR_DIR=str(self.visitors),
            SEG_IMPORT_ROOTS=str(self.import_root),
            SEG_PUBLIC_MAX_EPOCHS="1",
            SEG_PUBLIC_MAX_TRAIN_IMAGES="2",
            SEG_PUBLIC_MAX_TRAIN_SECONDS="30",
            SEG_VISITOR_MAX_IMAGES="20",
            SEG_UI_TORCH_THREADS="1",
            # the handlers are under attack, not the serving runtimes (tests/test_runtime.py and
            # tests/test_shipped_runtime.py have theirs):
            # eager PyTorch spares every app here a background export and calibration of each model
            SEG_RUNTIME="eager",
            # and training in fp32 spares each a measurement of bf16 training steps
            SEG_BF16_TRAINING="0",
            PYTHONPATH=str(REPO),
        )
        if os.environ.get("SEG_DATA_DIR"):
            env["SEG_DATA_DIR"] = os.environ["SEG_DATA_DIR"]
        return env


def make_sandbox(base: Path) -> Sandbox:
    """Folders, a workspace with one image, tiny checkpoints, and the traps: a foreign folder with a
    file named ``test``, a server image, symlinks out of the labels root and the import root."""
    from seg.labeling.workspace import Workspace
    from seg.ui.devserver import make_tiny_checkpoints

    box = Sandbox(base, "zz" + secrets.token_hex(4))
    for folder in ("gradio", "tmp", "cache", "xdg-cache", "home", "cwd", "labels", "visitors"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    make_tiny_checkpoints(box.checkpoints, broken=False)
    box.foreign.mkdir()
    (box.foreign / "test").write_text("a plain file named test\n")
    (box.foreign / f"listing-marker-{box.mark}.txt").write_text("must never be listed\n")
    Image.new("RGB", CANARY_SIZE, CANARY_RGB).save(box.canary)
    box.import_root.mkdir()
    Image.fromarray(np.full((24, 32, 3), 90, np.uint8)).save(box.import_root / "ok.png")
    (box.import_root / "link-out.png").symlink_to(box.canary)
    (box.import_root / "linkdir").symlink_to(box.foreign, target_is_directory=True)
    ws = Workspace(box.labels / "labels")
    ws.import_image(np.asarray(Image.open(SCENE).convert("RGB")), name="scene.jpg")
    (box.labels / "escape").symlink_to(box.foreign, target_is_directory=True)
    return box


@dataclass
class RunningApp:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def launch(box: Sandbox, public: bool, extra_env: dict[str, str] | None = None, timeout: float = 240) -> RunningApp:
    """``python -m seg.ui.app`` on a free port, in the sandbox (cwd included), at low priority."""
    from seg.ui.devserver import free_port, wait_http

    port = free_port()
    args = [sys.executable, "-m", "seg.ui.app", "--port", str(port), "--checkpoints", str(box.checkpoints)]
    if public:
        args.append("--public")
    env = box.env(public) | (extra_env or {})
    log_path = box.base / f"app-{'public' if public else 'local'}-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            ["nice", "-n", "5", *args], cwd=box.base / "cwd", env=env, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_http(url + "config", timeout=timeout)
    except TimeoutError:
        process.kill()
        raise AssertionError("the app did not start:\n" + log_path.read_text(errors="replace")[-3000:]) from None
    return RunningApp(url, process, log_path)


def stop_app(app: RunningApp) -> None:
    app.process.terminate()
    try:
        app.process.wait(20)
    except subprocess.TimeoutExpired:
        app.process.kill()


# -- listings ----------------------------------------------------------------------------------------
def listing(root: Path, skip: list[Path] = ()) -> dict[str, tuple]:
    """Every entry under ``root`` (symlinks not followed) with its kind, size and mtime; ``skip`` left out."""
    out: dict[str, tuple] = {}
    skip = [s.resolve() for s in skip]
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = [d for d in dirs if (here / d).resolve() not in skip or (here / d).is_symlink()]
        for name in dirs + files:
            path = here / name
            if path.resolve() in skip and not path.is_symlink():
                continue
            st = path.lstat()
            out[str(path.relative_to(root))] = (
                st.st_mode >> 12,
                st.st_size if not path.is_dir() else 0,
                st.st_mtime_ns if path.is_file() else 0,
            )
    return out


def images_under(root: Path) -> Iterator[Path]:
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if name.lower().endswith((".jpg", ".jpeg", ".png", ".webp")):
                yield Path(folder) / name


def looks_like_canary(data: bytes) -> bool:
    """The server image, whole or shrunk or pasted: its aspect ratio, or many pixels of its exact colour."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            rgb = np.asarray(img.convert("RGB"))
    except Exception:  # noqa: BLE001 - not an image: not the canary
        return False
    if h and w / h > 20:
        return True
    exact = np.all(rgb == np.array(CANARY_RGB, np.uint8), axis=-1)
    return int(exact.sum()) >= 50


# -- the payloads ------------------------------------------------------------------------------------
def string_payloads(box: Sandbox) -> list[str]:
    depth = len(box.base.resolve().parts)
    return [
        str(box.base / "made-by-attack" / "brand" / "new" / "deep" / "ws"),
        f"/tmp/{box.mark}-absolute/ws",
        "../" * depth + str(box.base.relative_to(box.base.anchor) / "dotdot-made"),
        "../../../../../../../../etc",
        "~/home-made-ws",
        "~",
        "/proc/self",
        "/proc/self/environ",
        "/etc",
        "/",
        "escape",
        "escape/inner-made",
        str(box.import_root / "linkdir"),
        str(box.import_root / "link-out.png"),
        "ws\x00evil",
        str(box.foreign) + "\x00",
        "A" * 5000,
        str(box.foreign),
        str(box.canary),
    ]


def file_payloads(box: Sandbox) -> list[Any]:
    canary = {"path": str(box.canary), "orig_name": "canary.png", "meta": FILE_META}
    bare = {"path": str(box.canary)}
    etc = {"path": "/etc/passwd", "meta": FILE_META}
    return [
        canary,
        bare,
        [canary],
        [bare],
        etc,
        {"background": canary, "layers": [canary], "composite": canary},
        {"path": str(box.foreign), "meta": FILE_META},
    ]


TEXT_TYPES = {"textbox", "dropdown", "radio", "checkboxgroup", "markdown", "html", "json", "code"}
FILE_TYPES = {"file", "image", "imageeditor", "gallery", "uploadbutton", "downloadbutton"}
#: Short runs when an attack string lands in a training form (the rest of the form stays the page's).
QUICK_TRAINING = {"train-epochs": 1, "train-limit": 2, "train-model": "cnn"}


@dataclass
class Probe:
    fn_index: int
    slot: int
    value: Any
    event_data: Any


def probes(session: BrowserSession, box: Sandbox) -> list[Probe]:
    """Every event (with a server function) x every input x the payloads that fit it."""
    strings, files = string_payloads(box), file_payloads(box)
    out = []
    for fn_index, dep in session.deps.items():
        if not dep.get("backend_fn", True):
            continue
        select = any(t[1] == "select" for t in dep.get("targets", []))
        for slot, component_id in enumerate(dep["inputs"]):
            kind = session.components[component_id].get("type")
            if kind == "state":
                continue  # Gradio keeps states on the server; a client's value is ignored
            if kind in FILE_TYPES:
                values = files + strings[:6] + [str(box.canary)]
            elif kind in TEXT_TYPES:
                values = strings + [[s] for s in strings[:3]]
            else:  # numbers, sliders, checkboxes, timers: a path and the long string
                values = [strings[0], strings[-3]]
            for value in values:
                out.append(Probe(fn_index, slot, value, {"index": [5, 5], "value": value} if select else None))
        if not dep["inputs"]:
            out.append(Probe(fn_index, -1, None, {"index": [5, 5], "value": strings[0]} if select else None))
    return out


def base_values(session: BrowserSession, fn_index: int) -> list:
    values = session.defaults(fn_index)
    for slot, component_id in enumerate(session.deps[fn_index]["inputs"]):
        elem_id = session.components[component_id].get("props", {}).get("elem_id")
        if elem_id in QUICK_TRAINING:
            values[slot] = QUICK_TRAINING[elem_id]
    return values


def prime(session: BrowserSession, public: bool) -> None:
    """Make the session look like a person's mid-work: an image in the workspace, loaded."""
    upload = session.find(trigger=("label-upload", "upload"))
    result = session.call(upload, session.values(upload, label_upload=[session.upload(SCENE)]))
    assert result.ok, result.error


def strings_in(value: Any) -> Iterator[str]:
    """Text in an output, leaving out file payloads (their paths are Gradio's cache, by design)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        if (value.get("meta") or {}).get("_type") == "gradio.FileData":
            return
        for v in value.values():
            yield from strings_in(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from strings_in(v)


def files_in(value: Any) -> Iterator[dict]:
    if isinstance(value, dict):
        if (value.get("meta") or {}).get("_type") == "gradio.FileData" and value.get("path"):
            yield value
            return
        for v in value.values():
            yield from files_in(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from files_in(v)


@dataclass
class AttackReport:
    calls: int = 0
    refused: int = 0
    events: set = field(default_factory=set)
    inputs: set = field(default_factory=set)
    texts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    returned_canary: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def attack(app: RunningApp, box: Sandbox, public: bool, workers: int = 3) -> AttackReport:
    first = BrowserSession(app.url)
    config = first.config
    first.close()
    todo = probes(BrowserSession(app.url, config=config), box)
    report = AttackReport()
    chunks = [todo[i::workers] for i in range(workers)]

    def work(chunk: list[Probe]) -> None:
        session = BrowserSession(app.url, config=config)
        prime(session, public)
        for probe in chunk:
            data = base_values(session, probe.fn_index)
            if probe.slot >= 0:
                data[probe.slot] = probe.value
            result = session.call(probe.fn_index, data, probe.event_data)
            dep = session.deps[probe.fn_index]
            name = dep.get("api_name") or str(probe.fn_index)
            seen_files = list(files_in(result.outputs))
            canary = [f["path"] for f in seen_files if (blob := session.fetch_file(f)) and looks_like_canary(blob)]
            with report.lock:
                report.calls += 1
                report.refused += not result.ok
                report.events.add((probe.fn_index, name))
                if probe.slot >= 0:
                    report.inputs.add(
                        (probe.fn_index, probe.slot, session.components[dep["inputs"][probe.slot]]["type"])
                    )
                report.texts.extend(strings_in(result.outputs))
                if result.error:
                    report.errors.append(result.error)
                report.returned_canary.extend(f"{name}: {p}" for p in canary)
        session.close()

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, chunks))
    return report


def check_keeps_serving(app: RunningApp) -> None:
    session = BrowserSession(app.url)
    result = session.call_named("segment", session.upload(SCENE), "tiny-unet")
    assert result.ok, result.error
    label = session.fetch_file(result.outputs[0])
    with Image.open(io.BytesIO(label)) as img:
        assert img.size == (320, 240)
    session.close()


def direct_file_probes(app: RunningApp, box: Sandbox) -> dict[str, int]:
    """Gradio's file route, asked for server files by path: none may be served."""
    session = BrowserSession(app.url)
    targets = [
        box.canary,
        Path("/etc/passwd"),
        box.labels / "labels" / "classes.txt",
        box.checkpoints / "tiny-unet.json",
    ]
    codes = {str(t): session.http.get(session.api + "file=" + str(t)).status_code for t in targets}
    session.close()
    return codes


def app_faults(log: str) -> list[str]:
    """The app's own ERROR lines (unexpected faults), each with the last line of its traceback."""
    lines = log.splitlines()
    out = []
    for i, line in enumerate(lines):
        if " seg" in line and " ERROR " in line:
            tail = next((t for t in lines[i + 1 : i + 80] if t and not t.startswith((" ", "Traceback"))), "")
            out.append(f"{line[24:]} -> {tail[:200]}")
    return out


# -- the tests ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    """Its own temp folder: pytest prunes old ``tmp_path`` roots, which other test runs may trigger mid-attack."""
    base = Path(tempfile.mkdtemp(prefix="seglab-attack-"))
    try:
        yield make_sandbox(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("public", [False, True], ids=["local", "public"])
def test_no_event_creates_lists_or_reads_server_files(sandbox: Sandbox, public: bool):
    box = sandbox
    before = listing(box.base, skip=box.writable(public))
    home_before, foreign_before = listing(box.home), listing(box.foreign)
    tmp_marks_before = sorted(p.name for p in Path("/tmp").glob(f"*{box.mark}*"))
    app = launch(box, public)
    try:
        started = time.monotonic()
        report = attack(app, box, public)
        elapsed = time.monotonic() - started
        check_keeps_serving(app)
        codes = direct_file_probes(app, box)
    finally:
        stop_app(app)
    mode = "public" if public else "local"
    print(
        f"\n[{mode}] {report.calls} calls over {len(report.events)} events and {len(report.inputs)} inputs "
        f"in {elapsed:.0f} s; {report.refused} refused"
    )
    (box.base / f"coverage-{mode}.json").write_text(
        json.dumps({"events": sorted(report.events), "inputs": sorted(report.inputs), "calls": report.calls}, indent=1)
    )

    # Nothing created or changed outside the allowed folders.
    after = listing(box.base, skip=box.writable(public))
    changed = sorted(
        k for k in set(before) | set(after) if before.get(k) != after.get(k) and not k.startswith(("app-", "coverage-"))
    )
    assert not changed, f"created or changed outside the allowed folders: {changed[:20]}"
    assert listing(box.home) == home_before
    assert listing(box.foreign) == foreign_before, "the foreign folder (it holds a file named test) was written"
    assert sorted(p.name for p in Path("/tmp").glob(f"*{box.mark}*")) == tmp_marks_before
    assert not (box.base / "made-by-attack").exists() and not (box.base / "dotdot-made").exists()
    # Nothing inside them came from the server image.
    for root in box.writable(public):
        for path in images_under(root):
            assert not looks_like_canary(path.read_bytes()), f"the server image was imported: {path}"

    # No server folder listed, no server image returned, no server folder named in an error.
    text = "\n".join(report.texts + report.errors)
    for marker in (f"listing-marker-{box.mark}", "gshadow", "adduser.conf", "login.defs"):
        assert marker not in text, f"a server folder was listed ({marker})"
    assert not report.returned_canary, report.returned_canary[:5]
    own_folders = [str(p) for p in (box.labels, box.visitors, box.base / "gradio", box.checkpoints, REPO)]
    leaks = [e for e in report.errors if any(folder in e for folder in own_folders)]
    assert not leaks, leaks[:5]
    assert all(code in (403, 404, 400) for code in codes.values()), codes

    # The events the page can call were all called, the private ones included.
    assert len(report.events) >= 40 and report.calls > 1000
    # Refusals are expected traffic: logged at INFO, never as the app's errors with a traceback.
    assert not app_faults(app.log()), app_faults(app.log())[:8]
