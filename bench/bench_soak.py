"""Soak the public app: concurrent visitors with mixed requests while a bounded training run goes on.

    python bench/bench_soak.py [--clients 16] [--requests 20] [--checkpoints tiny|shipped|DIR]
                               [--out bench/results/soak.json]

The app runs in public mode in its own process (a scratch folder holds everything it writes, as in
``tests/test_attack.py``, whose protocol client this uses: every visitor is a browser session on
Gradio's HTTP queue). One visitor starts a training run bounded by the public limits; meanwhile
``--clients`` visitors each send ``--requests`` requests, cycling through segment, augment,
instances and a label save (each visitor first uploads an image into their own workspace).

Reports, per endpoint, the count, p50 / p95 latency in ms, errors and deliberate refusals (quota,
a training slot taken), and the app's resident memory after the soak over its value after start-up
(the reference measured in the same run), and over its value once one visitor has made every kind of request
(``rss_growth_ratio``: growth during the soak alone, without the models' loading). Targets: 0 errors other than
refusals; memory ratio <= 1.5.
Tiny untrained checkpoints by default, so the soak measures the app rather than the models.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from test_attack import SCENE, BrowserSession, Sandbox, launch, make_sandbox, stop_app  # noqa: E402

from seg.io import atomic_write_text  # noqa: E402

ENDPOINTS = ("segment", "augment", "instances", "label_save")
#: Refusals the app gives on purpose (quota, slots); anything else that fails is an error.
REFUSALS = (
    "space is full",
    "most allowed here",
    "training run is already going",
    "training runs are already going",
    "no room for another visitor",
)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))]


def _rss_mb(pid: int) -> float:
    """Resident memory of the app process in MB (Linux's /proc; psutil when that is absent)."""
    status = Path(f"/proc/{pid}/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


class Visitor:
    """One visitor's browser session with the four requests of the soak."""

    def __init__(self, url: str, config: dict):
        self.page = BrowserSession(url, config=config, timeout=600)
        p = self.page
        self.segment_fn = p.find(api_name="segment")
        self.augment_fn = p.find(api_name="augment")
        self.instances_fn = p.find(api_name="instances")
        self.upload_fn = p.find(trigger=("label-upload", "upload"))
        self.item_fn = p.find(reads="label-item", writes="label-status")
        self.save_fn = p.find(trigger=("label-save", "click"))
        self.semantic = self._choice("segment-models") or "tiny-unet"
        self.image = None

    def _choice(self, elem_id: str):
        try:
            value = self.page.components[self.page.component_id(elem_id)]["props"].get("value")
        except StopIteration:
            return None
        return value[0] if isinstance(value, list) and value else value

    def _slot(self, fn_index: int, label: str) -> int:
        """Which input of an event is the component labelled ``label`` (the tabs may reorder them)."""
        inputs = self.page.deps[fn_index]["inputs"]
        return next(i for i, c in enumerate(inputs) if label in str(self.page.components[c]["props"].get("label")))

    def prepare(self) -> None:
        """Put an image into this visitor's workspace and open it (what a person does before saving)."""
        result = self.page.call(
            self.upload_fn, self.page.values(self.upload_fn, label_upload=[self.page.upload(SCENE)])
        )
        if not result.ok:
            raise RuntimeError(f"upload failed: {result.error}")
        result = self.page.call(self.item_fn, self.page.values(self.item_fn, label_item="scenes-1"))
        if not result.ok:
            raise RuntimeError(f"opening the image failed: {result.error}")

    def request(self, endpoint: str, k: int):
        if endpoint == "segment":
            return self.page.call(self.segment_fn, [self.page.upload(SCENE), self.semantic])
        if endpoint == "augment":
            data = self.page.defaults(self.augment_fn)
            data[self._slot(self.augment_fn, "Seed")] = k  # a different grid each time
            return self.page.call(self.augment_fn, data)
        if endpoint == "instances":
            data = self.page.defaults(self.instances_fn)
            return self.page.call(self.instances_fn, data)
        save = self.page.defaults(self.save_fn)
        return self.page.call(self.save_fn, save)


def soak(url: str, clients: int, requests: int) -> dict:
    config = BrowserSession(url).config
    timings: dict[str, list[float]] = {e: [] for e in ENDPOINTS}
    errors: dict[str, list[str]] = {e: [] for e in ENDPOINTS}
    refusals: dict[str, int] = dict.fromkeys(ENDPOINTS, 0)
    lock = threading.Lock()

    def client(index: int) -> None:
        visitor = Visitor(url, config)
        visitor.prepare()
        for k in range(requests):
            endpoint = ENDPOINTS[(index + k) % len(ENDPOINTS)]
            start = time.perf_counter()
            result = visitor.request(endpoint, k)
            ms = (time.perf_counter() - start) * 1000
            with lock:
                if result.ok:
                    timings[endpoint].append(ms)
                elif any(words in (result.error or "") for words in REFUSALS):
                    refusals[endpoint] += 1
                else:
                    errors[endpoint].append((result.error or "")[:200])

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return {
        e: {
            "count": len(timings[e]),
            "p50_ms": round(_percentile(timings[e], 50) or 0, 1),
            "p95_ms": round(_percentile(timings[e], 95) or 0, 1),
            "errors": len(errors[e]),
            "refusals": refusals[e],
            "error_examples": sorted(set(errors[e]))[:3],
        }
        for e in ENDPOINTS
    }


def train_in_background(url: str, outcome: dict) -> tuple[threading.Thread, str]:
    """One visitor trains a small model through the whole soak; returns the thread and their session."""
    page = BrowserSession(url, timeout=1800)

    def record(outputs: list) -> None:
        info = outputs[-1] if outputs and isinstance(outputs[-1], dict) else {}
        outcome.setdefault("stream", []).append((time.monotonic(), info.get("status"), info.get("step")))

    def run() -> None:
        fn = page.find(api_name="train")
        form = page.defaults(fn)
        form[0], form[1], form[3], form[11] = "cnn", 50, 4, "soak"
        start = time.perf_counter()
        result = page.call(fn, form, on_output=record)
        outcome["ended"] = time.monotonic()
        outcome["seconds"] = round(time.perf_counter() - start, 1)
        outcome["ok"] = result.ok
        outcome["status"] = (result.outputs or [{}])[-1].get("status") if result.ok else result.error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, page.session_hash


def stop_training(url: str, session_hash: str, outcome: dict) -> None:
    """The trainer presses Stop (from their own session): how soon steps cease and the run ends."""
    page = BrowserSession(url, session_hash=session_hash)
    asked = time.monotonic()
    result = page.call(page.find(api_name="train_stop"), [])
    outcome["stop_reply"] = result.outputs[0] if result.ok else result.error
    outcome["stop_asked"] = asked


def summarise_training(outcome: dict) -> dict:
    stream = outcome.pop("stream", [])
    asked, ended = outcome.pop("stop_asked", None), outcome.pop("ended", None)
    steps = [(t, step) for t, _status, step in stream if step is not None]
    summary = {k: v for k, v in outcome.items()}
    summary["streamed_updates"] = len(stream)
    if asked is not None:
        after = [t for t, step in steps if t > asked]
        moved = [t for (t, step), (_, prev) in zip(steps[1:], steps) if t > asked and step != prev]
        summary["steps_ceased_after_stop_s"] = round((max(moved) - asked) if moved else 0.0, 2)
        summary["run_ended_after_stop_s"] = round(ended - asked, 2) if ended else None
        summary["updates_after_stop"] = len(after)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--checkpoints", default="tiny", help="tiny (generated), shipped, or a folder")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "soak.json"))
    parser.add_argument("--no-training", action="store_true", help="the soak alone (to tell the run's memory apart)")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="seglab-soak-"))
    box: Sandbox = make_sandbox(base)
    if args.checkpoints == "shipped":
        shutil.rmtree(box.checkpoints)
        box.checkpoints.symlink_to(REPO / "checkpoints", target_is_directory=True)
    elif args.checkpoints != "tiny":
        shutil.rmtree(box.checkpoints)
        box.checkpoints.symlink_to(Path(args.checkpoints).resolve(), target_is_directory=True)
    env = {
        "SEG_PUBLIC_MAX_EPOCHS": "50",
        "SEG_PUBLIC_MAX_TRAIN_IMAGES": "32",
        "SEG_PUBLIC_MAX_TRAIN_SECONDS": "900",
        "SEG_VISITOR_MAX_IMAGES": "50",
        "SEG_UI_TORCH_THREADS": os.environ.get("SEG_UI_TORCH_THREADS", "1"),
        "SEG_RUNTIME": os.environ.get("SEG_RUNTIME", "auto"),  # served as deployed (the sandbox's default is eager)
        "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", ""),
    }
    started = time.perf_counter()
    app = launch(box, public=True, extra_env=env)
    try:
        startup_s = time.perf_counter() - started
        rss_start = _rss_mb(app.process.pid)
        training: dict = {}
        if not args.no_training:
            trainer, trainer_session = train_in_background(app.url, training)
            time.sleep(10)  # the run is under way before the visitors arrive
        warmup = soak(app.url, 1, len(ENDPOINTS))  # every kind of request once: models loaded, caches made
        rss_warm = _rss_mb(app.process.pid)
        soak_start = time.perf_counter()
        endpoints = soak(app.url, args.clients, args.requests)
        soak_s = time.perf_counter() - soak_start
        if not args.no_training:
            stop_training(app.url, trainer_session, training)
            trainer.join(900)
        time.sleep(2)
        rss_end = _rss_mb(app.process.pid)
    finally:
        stop_app(app)
        shutil.rmtree(base, ignore_errors=True)
    total_errors = sum(e["errors"] for e in endpoints.values())
    result = {
        "clients": args.clients,
        "requests_per_client": args.requests,
        "checkpoints": args.checkpoints,
        "cpus": os.cpu_count(),
        "startup_s": round(startup_s, 1),
        "soak_s": round(soak_s, 1),
        "endpoints": endpoints,
        "errors": total_errors,
        "training": summarise_training(training),
        "rss_after_startup_mb": round(rss_start, 1),
        "rss_after_soak_mb": round(rss_end, 1),
        "rss_ratio": round(rss_end / rss_start, 3),
        # growth during the soak alone: the reference read once one visitor has made every kind of request
        "warmup_errors": sum(e["errors"] for e in warmup.values()),
        "rss_after_warmup_mb": round(rss_warm, 1),
        "rss_growth_ratio": round(rss_end / rss_warm, 3),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(
        f"errors other than refusals: {total_errors} (target 0); memory ratio {result['rss_ratio']} (target <= 1.5; "
        f"its reference is read when the app first answers, before the models have loaded); growth during the soak "
        f"alone {result['rss_growth_ratio']} (reference read after one visitor's warm-up)"
    )


if __name__ == "__main__":
    main()
