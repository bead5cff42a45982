"""Benchmark the dashboard end to end: the real app (``python app.py``, local mode) through ``gradio_client``.

    python bench/bench_app.py [--checkpoints DIR] [--cache-dir DIR] [--runs 30] [--instance-images 10]
                              [--mixed 200] [--extras] [--cold-only] [--out bench/results/app.json]

Measures, on the CPU it runs on, with the app serving every model on the runtime its calibration
chose (``auto``, the app's default; ``$SEG_RUNTIME`` overrides):

1. cold start: ``python app.py`` spawned -> first ``/segment`` answer received (target <= 5 s);
   the serving backends are prepared in the background meanwhile, so the bench then waits for
   the app's log to say every model's backend is ready before timing anything else;
2. ``/segment`` p50 / p95 per semantic model on a 288x224 image, upload to downloaded label PNG
   (target: unet p50 <= 60 ms);
3. the ``/instances`` endpoint with DWT + Mask R-CNN on Penn-Fudan val images, test-time
   augmentation on, per image end to end and the models' own latency (target <= 600 ms); each
   image's first view is timed apart (an image size the DWT has not run at yet costs its backend
   a one-off set-up), then gradio_client and the page's protocol alternate on the seen images;
4. the resident memory (RSS) of the app's process tree after every shipped model is loaded and
   200 mixed requests (segment on small and 1024x768 uploads, instances) were served
   (target <= 2.5 GB), with psutil.

Also prints the CPU's flags, the package versions and the load average at start and end: the CPU
may be shared, and a load above ``BUSY_LOAD`` makes the figures pessimistic (re-measure later).
Beside ``/segment``, the same calls to a one-line Gradio app that returns its upload unchanged give
gradio_client's own floor on this CPU (upload, queue, its 50-ms result polling, download): the part
of the end-to-end time no model or app code can remove. ``/segment`` (with its floor) and ``/instances``
are also timed through the page's own protocol, as a browser calls them (``BrowserSession`` of
``tests/test_attack.py``: results pushed on the event stream, no polling tick): what a visitor waits.
``--extras``: also the no-download and gradio_client-defaults variants and N concurrent clients.
Results: bench/results/app.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from PIL import Image  # noqa: E402
from test_attack import BrowserSession, files_in  # noqa: E402  (the page's own protocol)

from seg.hardware import cpu_features, runtime_versions  # noqa: E402
from seg.io import atomic_write_text  # noqa: E402
from seg.ui.devserver import connect, free_port, wait_http  # noqa: E402

RESULTS = REPO / "bench" / "results" / "app.json"
#: 1-minute load average above which the machine is too busy for the figures to stand alone.
BUSY_LOAD = 1.5
TARGETS = {"cold_start_s": 5.0, "unet_p50_ms": 60.0, "instances_ms_per_image": 600.0, "rss_gb": 2.5}
READY_LINE = re.compile(r"serving backend ready for weights (\w+): (\S+) \((.*)\) after ([\d.]+) s")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def _segment(client, image: Path, model: str):
    from gradio_client import handle_file

    return client.predict(handle_file(str(image)), model, api_name="/segment")


def _timed_calls(client, image: Path, model: str, runs: int, warmup: int = 3) -> tuple[list[float], list]:
    """``runs`` timed ``/segment`` calls after ``warmup`` untimed ones: (ms per call, the outputs' info)."""
    for _ in range(warmup):
        _segment(client, image, model)
    times, infos = [], []
    for _ in range(runs):
        t = time.perf_counter()
        out = _segment(client, image, model)
        times.append((time.perf_counter() - t) * 1000)
        infos.append(out[1] if isinstance(out, (tuple, list)) else out)
    return times, infos


def _summary(times: list[float]) -> dict:
    return {"p50": round(statistics.median(times), 1), "p95": round(_percentile(times, 95), 1), "runs": len(times)}


def _page_segment(page: BrowserSession, image: Path, model: str) -> float:
    """One ``/segment`` call as the page makes it, the label PNG downloaded: milliseconds."""
    t = time.perf_counter()
    result = page.call_named("segment", page.upload(image), model)
    if not result.ok:
        raise RuntimeError(result.error)
    page.fetch_file(result.outputs[0])
    return (time.perf_counter() - t) * 1000


def _page_timed(url: str, image: Path, model: str, runs: int, warmup: int = 3) -> dict:
    """``/segment`` p50/p95 through the page's own protocol (upload, ``queue/join``, the session's event
    stream, the download): results arrive when the server sends them, where gradio_client looks for
    them every 50 ms."""
    page = BrowserSession(url)
    for _ in range(warmup):
        _page_segment(page, image, model)
    return _summary([_page_segment(page, image, model) for _ in range(runs)])


def _page_instances(page: BrowserSession, sample_id: str, models: list[str]) -> float:
    """One ``/instances`` call as the page makes it, every picture of the gallery downloaded: milliseconds."""
    t = time.perf_counter()
    result = page.call_named("instances", "Penn-Fudan image", sample_id, None, models, True)
    if not result.ok:
        raise RuntimeError(result.error)
    for payload in files_in(result.outputs[0]):
        page.fetch_file(payload)
    return (time.perf_counter() - t) * 1000


FLOOR_APP = """
import sys, torch, gradio as gr
with gr.Blocks() as demo:
    upload, model, label, info = gr.Image(type="filepath"), gr.Textbox(), gr.File(), gr.JSON()
    gr.Button().click(lambda p, m: (p, {"model": m}), [upload, model], [label, info], api_name="segment")
demo.launch(server_name="127.0.0.1", server_port=int(sys.argv[1]), quiet=True)
"""


def _floors(image: Path, runs: int) -> dict:
    """What any Gradio app on torch pays, measured on a one-button app that returns its upload as a file
    and a JSON, as ``/segment`` answers: seconds from spawning it to its first answer (imports of gradio
    and torch included), then p50/p95 of ``runs`` calls through ``connect()``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", FLOOR_APP, str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_http(url, timeout=120)
        client = connect(url)
        _segment(client, image, "none")
        floors: dict = {"cold_start_s": round(time.perf_counter() - start, 2)}
        if runs:
            times, _ = _timed_calls(client, image, "none", runs)
            floors.update(_summary(times), page_protocol=_page_timed(url, image, "none", runs))
        return floors
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _print_cold_floor(results: dict) -> None:
    print(
        "cold start floor (python importing gradio and torch, launching a one-button app, first answer): "
        f"{results['cold_start']['floor_s']:.2f} s",
        flush=True,
    )


def _instances(client, sample_id: str, models: list[str]) -> dict:
    """One ``/instances`` call on a Penn-Fudan image, test-time augmentation on: its details JSON."""
    out = client.predict("Penn-Fudan image", sample_id, None, models, True, api_name="/instances")
    return out[2] if isinstance(out, (tuple, list)) else out


def _timed_instances(client, sample_id: str, models: list[str]) -> tuple[float, dict]:
    """``_instances`` end to end: milliseconds and the details."""
    t = time.perf_counter()
    details = _instances(client, sample_id, models)
    return (time.perf_counter() - t) * 1000, details


def bench_images(folder: Path) -> dict[str, Path]:
    """A generated scene at the models' native size (288x224) and as a 1024x768 upload."""
    src = Image.open(REPO / "assets" / "examples" / "scenes-1.png").convert("RGB")
    out = {}
    for name, size in (("288x224", (288, 224)), ("1024x768", (1024, 768))):
        out[name] = folder / f"bench-{name}.png"
        src.resize(size, Image.BILINEAR).save(out[name])
    return out


def tree_rss(pid: int) -> tuple[int, dict[str, int]]:
    """Resident bytes of a process and all its descendants (sum), and per process (name:pid -> bytes)."""
    import psutil

    root = psutil.Process(pid)
    per: dict[str, int] = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            per[f"{proc.name()}:{proc.pid}"] = proc.memory_info().rss
        except psutil.Error:
            continue
    return sum(per.values()), per


def wait_for_backends(log: Path, expected: int, timeout: float, proc: subprocess.Popen) -> list[dict]:
    """The app's 'serving backend ready' lines, once there are ``expected`` of them (or at the timeout)."""
    deadline = time.perf_counter() + timeout
    while True:
        text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
        found = [
            {"weights": m[1], "backend": m[2], "reason": m[3], "seconds": float(m[4])}
            for m in READY_LINE.finditer(text)
        ]
        if len(found) >= expected or time.perf_counter() > deadline or proc.poll() is not None:
            return found
        time.sleep(0.5)


def _models(client, elem_id: str) -> list[str]:
    """Model names offered by a dropdown of the app (read from its config)."""
    for comp in client.config.get("components", []):
        props = comp.get("props", {})
        if props.get("elem_id") == elem_id:
            return [c[0] if isinstance(c, (list, tuple)) else c for c in props.get("choices", [])]
    raise RuntimeError(f"cannot find {elem_id} in the app's config")


def _instance_models(client) -> list[str]:
    for comp in client.config.get("components", []):
        props = comp.get("props", {})
        if props.get("label") == "Instance models":
            return [c[0] if isinstance(c, (list, tuple)) else c for c in props.get("choices", [])]
    return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoints", default=None, help="checkpoint folder (default: the app's)")
    parser.add_argument("--cache-dir", default=None, help="the app's SEG_CACHE_DIR (exports and choices)")
    parser.add_argument("--runs", type=int, default=30, help="timed /segment calls per model")
    parser.add_argument("--instance-images", type=int, default=10, help="Penn-Fudan val images for /instances")
    parser.add_argument("--mixed", type=int, default=200, help="mixed requests before the memory reading")
    parser.add_argument("--backend-timeout", type=float, default=900, help="seconds to wait for the backends")
    parser.add_argument("--extras", action="store_true", help="client variants and concurrent clients too")
    parser.add_argument("--cold-only", action="store_true", help="only the cold start (a quick re-measure)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--calls-per-client", type=int, default=6)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    if args.cold_only and args.out == str(RESULTS):
        args.out = str(RESULTS.with_name("app_cold_start.json"))  # the full results stay whole

    import gradio
    import gradio_client

    features = cpu_features()
    versions = runtime_versions() | {"gradio": gradio.__version__, "gradio_client": gradio_client.__version__}
    load_start = os.getloadavg()
    print(f"CPU: {features.summary()}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in load_start)}")

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    tmp = Path(tempfile.mkdtemp(prefix="seglab-bench-"))
    images = bench_images(tmp)
    # Serve a snapshot of the checkpoints: a training run rewriting them mid-bench would
    # otherwise change (or briefly hide) the models being measured.
    from seg.config import checkpoint_dir, dataset_dir

    snapshot = tmp / "checkpoints"
    shutil.copytree(args.checkpoints or checkpoint_dir(), snapshot)
    expected_models = len(list(snapshot.glob("*.safetensors")))
    cmd = [sys.executable, str(REPO / "app.py"), "--port", str(port), "--checkpoints", str(snapshot)]
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    if args.cache_dir:
        env["SEG_CACHE_DIR"] = str(Path(args.cache_dir).expanduser())
    log_path = tmp / "app.log"
    results: dict = {
        "cpu": features.summary(),
        "flags": list(features.flags),
        "versions": versions,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "load_average_at_start": load_start},
        "runtime_requested": env.get("SEG_RUNTIME") or "auto (default)",
        "torch_threads": env.get("SEG_UI_TORCH_THREADS") or "torch default",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "targets": TARGETS,
    }
    start = time.perf_counter()
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log_file)
    try:
        wait_http(url, timeout=180)
        page_s = time.perf_counter() - start
        client = connect(url)
        semantic = _models(client, "segment-models")
        first = "unet" if "unet" in semantic else semantic[0]
        _segment(client, images["288x224"], first)
        first_s = time.perf_counter() - start
        results["cold_start"] = {"page_s": round(page_s, 2), "first_segment_s": round(first_s, 2), "model": first}
        print(f"cold start: page {page_s:.2f} s, first /segment answer {first_s:.2f} s (target <= 5 s)", flush=True)
        if args.cold_only:
            results["cold_start"]["floor_s"] = _floors(images["288x224"], 0)["cold_start_s"]
            _print_cold_floor(results)
            return finish(results, args, proc, log_path, tmp, load_start)

        ready = wait_for_backends(log_path, expected_models, args.backend_timeout, proc)
        results["backends_ready"] = ready
        results["backends_ready_s"] = round(time.perf_counter() - start, 1)
        print(f"{len(ready)} of {expected_models} serving backends ready after {results['backends_ready_s']} s:")
        for item in ready:
            print(f"  weights {item['weights']}: {item['backend']} ({item['reason']}; {item['seconds']:.1f} s)")

        results["segment_ms"] = {}
        for model in semantic:
            times, infos = _timed_calls(client, images["288x224"], model, args.runs)
            row = _summary(times) | {"model_p50": round(statistics.median(i["latency_ms"] for i in infos), 1)}
            results["segment_ms"][model] = row
            print(
                f"/segment {model:>8} 288x224: end-to-end p50 {row['p50']:6.1f} ms, p95 {row['p95']:6.1f} ms "
                f"(model alone p50 {row['model_p50']:.1f} ms)",
                flush=True,
            )
        results["segment_ms_page_protocol"] = {first: _page_timed(url, images["288x224"], first, args.runs)}
        floor = _floors(images["288x224"], args.runs)  # measured once the app is idle: no calibration beside it
        results["cold_start"]["floor_s"] = floor.pop("cold_start_s")
        results["client_floor_ms"] = floor
        _print_cold_floor(results)
        print(
            f"gradio_client floor (an app that returns the upload as a file): p50 {floor['p50']:.1f} ms; "
            f"/segment {first} p50 minus the floor: {results['segment_ms'][first]['p50'] - floor['p50']:.1f} ms",
            flush=True,
        )
        print(
            f"/segment {first} through the page's own protocol (as a browser calls it): p50 "
            f"{results['segment_ms_page_protocol'][first]['p50']:.1f} ms; the same app-free floor "
            f"{floor['page_protocol']['p50']:.1f} ms",
            flush=True,
        )
        times, infos = _timed_calls(client, images["1024x768"], first, max(5, args.runs // 3), warmup=1)
        results["segment_1024x768_ms"] = {
            first: {
                "p50": round(statistics.median(times), 1),
                "model_p50": round(statistics.median(i["latency_ms"] for i in infos), 1),
            }
        }
        print(f"/segment {first:>8} 1024x768: end-to-end p50 {statistics.median(times):6.1f} ms", flush=True)

        instance_models = _instance_models(client)
        root = dataset_dir("pennfudan")
        from seg.instances.data import ids_for_split

        sample_ids = ids_for_split(root, "val")[: args.instance_images] if (root / "PNGImages").is_dir() else []
        if instance_models and sample_ids:
            # An image size the DWT has not run at costs its backend a one-off set-up (new shapes): time
            # each image's first view apart, then both protocols on images already seen, alternating.
            first_view = [_timed_instances(client, sample_id, instance_models)[0] for sample_id in sample_ids]
            per_image, per_image_page, per_model = [], [], {m: [] for m in instance_models}
            page = BrowserSession(url)

            def through_client(sample_id: str) -> None:
                ms, details = _timed_instances(client, sample_id, instance_models)
                per_image.append(ms)
                for m in instance_models:
                    per_model[m].append(details["models"][m]["latency_ms"])

            def through_page(sample_id: str) -> None:
                per_image_page.append(_page_instances(page, sample_id, instance_models))

            for k, sample_id in enumerate(sample_ids):  # which protocol goes first alternates
                for call in (through_client, through_page) if k % 2 == 0 else (through_page, through_client):
                    call(sample_id)
            model_sum = statistics.median([sum(v) for v in zip(*per_model.values())])
            results["instances_ms_per_image"] = {
                "models": instance_models,
                "images": len(sample_ids),
                "tta": True,
                "end_to_end_p50": round(statistics.median(per_image), 1),
                "end_to_end_max": round(max(per_image), 1),
                "models_p50": {m: round(statistics.median(v), 1) for m, v in per_model.items()},
                "models_sum_p50": round(model_sum, 1),
                "page_protocol_p50": round(statistics.median(per_image_page), 1),
                "first_view_p50": round(statistics.median(first_view), 1),
            }
            print(
                f"/instances {'+'.join(instance_models)} (tta): end-to-end p50 {statistics.median(per_image):.0f} ms "
                f"per image, models alone {model_sum:.0f} ms ("
                + ", ".join(f"{m} {statistics.median(v):.0f}" for m, v in per_model.items())
                + f") (target <= 600 ms); through the page's own protocol {statistics.median(per_image_page):.0f} ms; "
                f"an image's first view {statistics.median(first_view):.0f} ms (gradio_client)",
                flush=True,
            )

        rss_loaded, _ = tree_rss(proc.pid)
        t = time.perf_counter()
        for i in range(args.mixed):
            if i % 5 == 4 and instance_models and sample_ids:
                _instances(client, sample_ids[(i // 5) % len(sample_ids)], instance_models)
            else:
                size = "1024x768" if i % 2 else "288x224"
                _segment(client, images[size], semantic[i % len(semantic)])
        rss, per_process = tree_rss(proc.pid)
        results["memory"] = {
            "rss_after_loading_gb": round(rss_loaded / 1e9, 3),
            "rss_after_mixed_gb": round(rss / 1e9, 3),
            "mixed_requests": args.mixed,
            "mixed_seconds": round(time.perf_counter() - t, 1),
            "processes": {k: round(v / 1e9, 3) for k, v in per_process.items()},
        }
        print(
            f"resident memory (process tree): {rss_loaded / 1e9:.2f} GB with every model loaded, "
            f"{rss / 1e9:.2f} GB after {args.mixed} mixed requests (target <= 2.5 GB)",
            flush=True,
        )
        if args.extras:
            _extras(results, url, images["288x224"], first, args)
    except BaseException:
        _stop(proc, log_path, tmp)
        raise
    finish(results, args, proc, log_path, tmp, load_start)


def _stop(proc: subprocess.Popen, log_path: Path, tmp: Path) -> None:
    """End the app (printing its log's tail if it failed) and remove the scratch folder."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    if proc.returncode not in (0, -15, None) and log_path.is_file():
        print(log_path.read_text(encoding="utf-8", errors="replace")[-3000:], file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)


def finish(
    results: dict, args: argparse.Namespace, proc: subprocess.Popen, log_path: Path, tmp: Path, load_start: tuple
) -> None:
    """Stop the app, add the load average at the end and the verdicts, and write the results."""
    _stop(proc, log_path, tmp)
    load_end = os.getloadavg()
    results["machine"]["load_average_at_end"] = load_end
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in load_end)}")
    if max(load_start[0], load_end[0]) > BUSY_LOAD:
        results["machine"]["busy"] = True
        print(f"the machine was busy (1-minute load above {BUSY_LOAD}): the figures are pessimistic; re-measure later")
    results["met"] = _verdicts(results)
    for name, ok in results["met"].items():
        print(f"  {name}: {'met' if ok else 'MISSED'}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(results, indent=1))
    print(f"wrote {args.out}")


def _verdicts(results: dict) -> dict[str, bool]:
    met = {}
    if "cold_start" in results:
        met["cold_start_le_5s"] = results["cold_start"]["first_segment_s"] <= TARGETS["cold_start_s"]
    if "unet" in results.get("segment_ms", {}):
        met["segment_unet_p50_le_60ms"] = results["segment_ms"]["unet"]["p50"] <= TARGETS["unet_p50_ms"]
    if "instances_ms_per_image" in results:
        met["instances_le_600ms_per_image"] = (
            results["instances_ms_per_image"]["end_to_end_p50"] <= TARGETS["instances_ms_per_image"]
        )
    if "memory" in results:
        met["rss_le_2_5gb"] = results["memory"]["rss_after_mixed_gb"] <= TARGETS["rss_gb"]
    return met


def _extras(results: dict, url: str, image: Path, model: str, args: argparse.Namespace) -> None:
    """The client variants (ratio to ``connect()``) and N concurrent clients on one model."""
    from gradio_client import Client

    variants = {
        # the same calls from a client that takes the label PNG's URL instead of downloading it
        "segment_ms_no_download": ("without downloading the PNG", connect(url, download_files=False)),
        # ...and from one left at gradio_client's defaults (a certificate-verifying SSL context per request)
        "segment_ms_client_defaults": ("with gradio_client's default ssl_verify=True", Client(url, verbose=False)),
    }
    for key, (what, variant) in variants.items():
        times, _ = _timed_calls(variant, image, model, args.runs)
        p50 = statistics.median(times)
        results[key] = {model: _summary(times)}
        ratio = p50 / results["segment_ms"][model]["p50"]
        print(f"/segment {model}: {what} p50 {p50:.0f} ms (ratio to connect(): {ratio:.2f})")
    clients = [connect(url) for _ in range(args.clients)]
    errors: list[str] = []

    def worker(c) -> None:
        for _ in range(args.calls_per_client):
            try:
                _segment(c, image, model)
            except Exception as err:  # counted, not fatal: the bench reports them
                errors.append(str(err))

    t = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(c,)) for c in clients]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    calls = args.clients * args.calls_per_client
    results["throughput"] = {
        "model": model,
        "clients": args.clients,
        "calls": calls,
        "errors": len(errors),
        "requests_per_s": round(calls / wall, 2),
    }
    print(f"throughput ({model}, {args.clients} clients): {calls / wall:.1f} req/s, {len(errors)} errors")


if __name__ == "__main__":
    main()
