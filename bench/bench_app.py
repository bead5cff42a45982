"""Benchmark the dashboard end to end through ``gradio_client``.

    python bench/bench_app.py [--checkpoints DIR] [--runs 30] [--clients 8] [--out bench/results_app.json]

Measures, on the CPU it runs on:
1. cold start: ``python app.py`` spawned -> first ``segment`` response received;
2. p50 / p95 latency of the ``segment`` endpoint for each model on a 288x224 image
   (upload, queue, inference, label PNG + overlay encoded and downloaded);
3. throughput with N concurrent clients (each its own ``Client``) on unet.
Clients come from ``seg.ui.devserver.connect`` (no certificate checks over plain http);
one run with gradio_client's defaults is the reference, printed as a ratio.
Target: unet p50 <= 150 ms end to end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from PIL import Image  # noqa: E402

from seg.io import atomic_write_text  # noqa: E402
from seg.ui.devserver import connect, free_port, wait_http  # noqa: E402


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def _timed_calls(client, image: Path, model: str, runs: int, warmup: int = 3) -> tuple[list[float], list]:
    """``runs`` timed ``/segment`` calls after ``warmup`` untimed ones: (ms per call, the outputs' info)."""
    from gradio_client import handle_file

    for _ in range(warmup):
        client.predict(handle_file(str(image)), model, api_name="/segment")
    times, infos = [], []
    for _ in range(runs):
        t = time.perf_counter()
        out = client.predict(handle_file(str(image)), model, api_name="/segment")
        times.append((time.perf_counter() - t) * 1000)
        infos.append(out[1] if isinstance(out, (tuple, list)) else out)
    return times, infos


def bench_image(folder: Path) -> Path:
    """A generated 288x224 scene (the models' native size)."""
    src = REPO / "assets" / "examples" / "scenes-1.png"
    path = folder / "bench-288x224.png"
    Image.open(src).convert("RGB").resize((288, 224), Image.BILINEAR).save(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoints", default=None, help="checkpoint folder (default: the app's)")
    parser.add_argument("--runs", type=int, default=30, help="timed calls per model")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients for throughput")
    parser.add_argument("--calls-per-client", type=int, default=6)
    parser.add_argument("--throughput-model", default="unet")
    parser.add_argument("--out", default=str(REPO / "bench" / "results_app.json"))
    args = parser.parse_args()

    from gradio_client import Client, handle_file

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    tmp = Path(tempfile.mkdtemp(prefix="seglab-bench-"))
    image = bench_image(tmp)
    # Serve a snapshot of the checkpoints: a training run rewriting them mid-bench would
    # otherwise change (or briefly hide) the models being measured.
    from seg.config import checkpoint_dir

    snapshot = tmp / "checkpoints"
    shutil.copytree(args.checkpoints or checkpoint_dir(), snapshot)
    cmd = [sys.executable, str(REPO / "app.py"), "--port", str(port), "--checkpoints", str(snapshot)]
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "app.log", "wb"))
    results: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        },
        "torch_threads": os.environ.get("SEG_UI_TORCH_THREADS") or "torch default",
        "image": "288x224",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        wait_http(url, timeout=180)
        page_s = time.perf_counter() - start
        client = connect(url)
        models = _models(client)
        client.predict(handle_file(str(image)), models[0], api_name="/segment")
        first_s = time.perf_counter() - start
        results["cold_start"] = {"page_s": round(page_s, 2), "first_segment_s": round(first_s, 2)}
        print(f"cold start: page {page_s:.1f} s, first segment response {first_s:.1f} s")

        results["latency_ms"] = {}
        for model in models:
            times, infos = _timed_calls(client, image, model, args.runs)
            row = {
                "p50": round(statistics.median(times), 1),
                "p95": round(_percentile(times, 95), 1),
                "model_p50": round(statistics.median(i["latency_ms"] for i in infos), 1),
                "runs": args.runs,
            }
            results["latency_ms"][model] = row
            print(
                f"{model:>12}: end-to-end p50 {row['p50']:.0f} ms, p95 {row['p95']:.0f} ms "
                f"(model alone p50 {row['model_p50']:.0f} ms)"
            )

        model = args.throughput_model if args.throughput_model in models else models[0]
        variants = {
            # the same calls from a client that takes the label PNG's URL instead of downloading it
            "latency_ms_no_download": ("without downloading the PNG", connect(url, download_files=False)),
            # ...and from one left at gradio_client's defaults (a certificate-verifying SSL context
            # built per request, even over http): the reference the advice is measured by
            "latency_ms_client_defaults": ("with gradio_client's default ssl_verify=True", Client(url, verbose=False)),
        }
        for key, (what, variant) in variants.items():
            times, _ = _timed_calls(variant, image, model, args.runs)
            p50 = statistics.median(times)
            results[key] = {model: {"p50": round(p50, 1), "p95": round(_percentile(times, 95), 1), "runs": args.runs}}
            ratio = p50 / results["latency_ms"][model]["p50"]
            print(
                f"{model:>12}: {what} p50 {p50:.0f} ms, p95 {_percentile(times, 95):.0f} ms "
                f"(ratio to connect(): {ratio:.2f})"
            )

        clients = [connect(url) for _ in range(args.clients)]
        errors: list[str] = []

        def worker(c: Client) -> None:
            for _ in range(args.calls_per_client):
                try:
                    c.predict(handle_file(str(image)), model, api_name="/segment")
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
            "seconds": round(wall, 2),
            "requests_per_s": round(calls / wall, 2),
        }
        print(
            f"throughput ({model}, {args.clients} clients): {calls / wall:.1f} req/s over {calls} calls, "
            f"{len(errors)} errors"
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    unet = results.get("latency_ms", {}).get("unet")
    if unet:
        results["target_unet_p50_le_150ms"] = unet["p50"] <= 150
    results["machine"]["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    atomic_write_text(args.out, json.dumps(results, indent=1))
    print(f"wrote {args.out}")


def _models(client) -> list[str]:
    """Semantic models the app serves (read from the Segment tab's model dropdown choices)."""
    config = client.config
    for comp in config.get("components", []):
        props = comp.get("props", {})
        if props.get("elem_id") == "segment-models":
            return [c[0] if isinstance(c, (list, tuple)) else c for c in props.get("choices", [])]
    raise RuntimeError("cannot find the model list in the app's config")


if __name__ == "__main__":
    main()
