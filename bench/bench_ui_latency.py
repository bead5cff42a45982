"""How fast the dashboard's live updates feel: augment on a slider release, segment on upload, redraw.

    python bench/bench_ui_latency.py [--runs 10] [--checkpoints DIR] [--no-browser]
                                     [--out bench/results/ui_latency.json]

The app runs as its own process (``python app.py``) on a snapshot of the checkpoints. Measured:
1. through ``gradio_client``: ``/augment`` with 8 samples and a new seed per call (what a slider
   release or a seed edit sends), and ``/segment_compare`` with the Segment tab's default models on
   an upload (a new upload per call); p50 / p95 end to end;
2. in a headless Chromium (when playwright and chromium are present): from the user's action to
   the new pictures on screen, for an upload on the Segment tab, a slider release on the Augment
   tab and an opacity release on the Segment tab (a redraw from the cached label maps).
References measured in the same run: the core ``seg.transforms.augment_samples`` alone (8 samples,
same image size), each model's own latency as the app reports it, and the browser harness itself
(a click on the opacity slider until its number box changes, which involves no server).
Targets: augment p50 <= 300 ms through the client; a redraw adds < 100 ms (p50) to the harness.
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
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from seg.io import atomic_write_text  # noqa: E402
from seg.ui.devserver import connect, free_port, wait_http  # noqa: E402

SCENES = [REPO / "assets" / "examples" / "scenes-1.png", REPO / "assets" / "examples" / "scenes-2.png"]
AUGMENT_SAMPLES = 8


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))]


def _summary(times_ms: list[float]) -> dict:
    return {
        "p50": round(statistics.median(times_ms), 1),
        "p95": round(_percentile(times_ms, 95), 1),
        "runs": len(times_ms),
    }


def _timed(fn, runs: int, warmup: int = 2) -> list[float]:
    for k in range(warmup):
        fn(-1 - k)
    out = []
    for k in range(runs):
        start = time.perf_counter()
        fn(k)
        out.append((time.perf_counter() - start) * 1000)
    return out


def augment_source() -> tuple[str, str | None]:
    """("dataset image", id) when Stanford Background is present, else ("upload", None)."""
    from seg.ui.samples import sbd_choices

    first = sbd_choices(("train",), 1)
    return ("dataset image", first[0]) if first else ("upload", None)


def core_augment_ms(sample_id: str | None, runs: int) -> list[float]:
    """The core transform alone on the tab's working copy of the same image (the reference)."""
    from seg.render import thumbnail
    from seg.transforms import augment_samples
    from seg.ui.augment import AUGMENT_MAX_SIDE
    from seg.ui.samples import load_sbd_sample

    if sample_id:
        image, mask = load_sbd_sample(sample_id)
    else:
        from PIL import Image

        image = np.asarray(Image.open(SCENES[0]).convert("RGB"))
        mask = np.zeros(image.shape[:2], np.uint8)
    image = thumbnail(image, AUGMENT_MAX_SIDE)
    if mask.shape != image.shape[:2]:
        from PIL import Image

        mask = np.asarray(Image.fromarray(mask).resize((image.shape[1], image.shape[0]), Image.NEAREST))
    return _timed(lambda k: augment_samples(image, mask, 0.25, 0.5, AUGMENT_SAMPLES, seed=1000 + k), runs)


def client_figures(url: str, runs: int) -> dict:
    from gradio_client import handle_file

    client = connect(url)
    listing = client.predict(api_name="/models")
    semantic = [m for m in listing["models"] if m["task"] == "semantic"]
    semantic.sort(key=lambda m: -(m["val_metrics"].get("miou") or -1))
    models = [m["name"] for m in semantic[:2]]
    source, sample_id = augment_source()
    upload = None if sample_id else handle_file(str(SCENES[0]))
    mask_model = None if sample_id else models[0]

    def augment_call(k: int) -> None:
        client.predict(source, sample_id, upload, mask_model, 0.25, 0.5, 1000 + k, AUGMENT_SAMPLES, api_name="/augment")

    model_ms: dict[str, list[float]] = {m: [] for m in models}

    def segment_call(k: int) -> None:
        out = client.predict(handle_file(str(SCENES[k % 2])), models, 0.5, "(all classes)", api_name="/segment_compare")
        for row in out[3]["data"]:
            model_ms[row[0]].append(float(row[1]))

    augment = _summary(_timed(augment_call, runs))
    core = _summary(core_augment_ms(sample_id, runs))
    augment.update(
        {
            "source": source,
            "samples": AUGMENT_SAMPLES,
            "core_transform_p50": core["p50"],
            "ratio_to_core": round(augment["p50"] / max(core["p50"], 1e-6), 1),
        }
    )
    segment = _summary(_timed(segment_call, runs))
    segment.update(
        {
            "models": models,
            "model_p50": {m: round(statistics.median(v), 1) for m, v in model_ms.items() if v},
            "image": SCENES[0].name,
        }
    )
    return {"augment_on_release_ms": augment, "segment_on_upload_ms": segment}


def browser_figures(url: str, runs: int) -> dict | None:
    """User action -> new pictures on screen, in headless Chromium; None without a browser."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return None
    srcs = "sel => [...document.querySelectorAll(sel + ' img')].map(i => i.src).join('|')"
    changed = (
        "([sel, before, n]) => {const imgs = [...document.querySelectorAll(sel + ' img')];"
        " return imgs.length >= n && imgs.map(i => i.src).join('|') !== before"
        " && imgs.slice(0, n).every(i => i.complete && i.naturalWidth > 0)}"
    )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url, wait_until="domcontentloaded")
        page.get_by_role("tab", name="Segment").first.wait_for(timeout=60_000)

        def act_and_wait(gallery: str, action, n: int = 1) -> float:
            before = page.evaluate(srcs, gallery)
            start = time.perf_counter()
            action()
            page.wait_for_function(changed, arg=[gallery, before, n], timeout=60_000, polling=10)
            return (time.perf_counter() - start) * 1000

        upload = page.locator("#segment-image input[type=file]")
        segment = [
            act_and_wait("#segment-gallery", lambda k=k: upload.set_input_files(str(SCENES[k % 2])), 2)
            for k in range(runs + 1)
        ][1:]
        slider = page.locator("#segment-alpha input[type=range]")
        # slider positions: each differs from the one before and from the defaults, so every release
        # changes the pictures
        positions = [0.2, 0.8, 0.35, 0.65, 0.9, 0.1, 0.7, 0.3, 0.6, 0.85]

        def click_at(locator, frac: float) -> None:
            b = locator.bounding_box()
            locator.click(position={"x": max(2, min(b["width"] - 2, b["width"] * frac)), "y": b["height"] / 2})

        # the harness alone: a click on the slider until its number box shows the new value (no server)
        number = page.locator("#segment-alpha input[type=number]")

        def harness(frac: float) -> float:
            before = number.input_value()
            start = time.perf_counter()
            click_at(slider, frac)
            page.wait_for_function(
                "([sel, v]) => document.querySelector(sel).value !== v",
                arg=["#segment-alpha input[type=number]", before],
                polling=10,
            )
            return (time.perf_counter() - start) * 1000

        reference = [harness(positions[k % 10]) for k in range(runs)]
        page.wait_for_timeout(2000)  # the redraws those clicks started have landed
        redraw = [
            act_and_wait("#segment-gallery", lambda f=positions[k % 10]: click_at(slider, f), 2) for k in range(runs)
        ]
        page.get_by_role("tab", name="Augment", exact=True).click()
        page.wait_for_timeout(500)
        if not page.locator("#augment-gallery img").count():  # no dataset: start from a generated image
            act_and_wait(
                "#augment-gallery",
                lambda: page.locator("#augment-upload input[type=file]").set_input_files(str(SCENES[0])),
            )
        crop = page.locator("#augment-crop input[type=range]")
        augment = [
            act_and_wait("#augment-gallery", lambda f=positions[(k + 1) % 10]: click_at(crop, f), 4)
            for k in range(runs)
        ]
        browser.close()
    return {
        "segment_on_upload_ms": _summary(segment),
        "augment_on_release_ms": _summary(augment),
        "redraw_on_release_ms": _summary(redraw),
        "harness_click_to_slider_value_ms": _summary(reference),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoints", default=None, help="checkpoint folder (default: the app's)")
    parser.add_argument("--runs", type=int, default=10, help="timed actions per figure")
    parser.add_argument("--no-browser", action="store_true", help="only the gradio_client figures")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "ui_latency.json"))
    args = parser.parse_args()

    from seg.config import checkpoint_dir

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    tmp = Path(tempfile.mkdtemp(prefix="seglab-bench-ui-"))
    snapshot = tmp / "checkpoints"  # a training run rewriting checkpoints mid-bench must not change them
    shutil.copytree(args.checkpoints or checkpoint_dir(), snapshot)
    cmd = [sys.executable, str(REPO / "app.py"), "--port", str(port), "--checkpoints", str(snapshot)]
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "app.log", "wb"))
    results: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        },
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        wait_http(url, timeout=240)
        results["client"] = client_figures(url, args.runs)
        if not args.no_browser:
            results["browser"] = browser_figures(url, args.runs)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    results["machine"]["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    augment_p50 = results["client"]["augment_on_release_ms"]["p50"]
    results["targets"] = {"augment_p50_le_300ms": augment_p50 <= 300}
    if results.get("browser"):
        browser = results["browser"]
        added = browser["redraw_on_release_ms"]["p50"] - browser["harness_click_to_slider_value_ms"]["p50"]
        browser["redraw_added_to_harness_p50_ms"] = round(added, 1)
        results["targets"]["redraw_adds_lt_100ms"] = added < 100
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
