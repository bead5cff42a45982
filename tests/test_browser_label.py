"""The Label tab in headless Chromium: prefill with a model, paint a stroke, save, find the mask on disk.

Serves the tab standalone (``seg.ui.label.standalone``) on a temp workspace with tiny untrained
checkpoints. Skipped, with the reason, when Playwright or Chromium is missing. With
``SEG_SCREENSHOT_DIR`` set, the finished tab is saved there as ``label-tab.png``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

H, W = 240, 320  # the editor canvas is the image: one canvas pixel = one image pixel
WATER = 4  # a class the tiny untrained models never predict, so the stroke is a visible change


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(url, workspace, checkpoint folder) for the standalone Label tab."""
    from seg.labeling.workspace import Workspace
    from seg.modelstore import ModelStore
    from seg.ui.devserver import close_app, free_port, make_tiny_checkpoints, wait_http
    from seg.ui.label import standalone

    root = tmp_path_factory.mktemp("label-browser")
    ckpts = root / "checkpoints"
    make_tiny_checkpoints(ckpts, broken=False, instances=False)
    ws = Workspace(root / "labels")  # the default workspace of the labels root below
    rng = np.random.default_rng(0)
    image = np.zeros((H, W, 3), np.uint8)
    image[: H // 2] = (90, 140, 230)
    image[H // 2 :] = (50, 130, 40)
    image = np.clip(image.astype(int) + rng.integers(0, 30, image.shape), 0, 255).astype(np.uint8)
    ws.import_image(image, name="scene.jpg")
    old = os.environ.get("SEG_LABEL_DIR")
    os.environ["SEG_LABEL_DIR"] = str(root)  # the tab opens the default workspace
    try:
        demo = standalone(ModelStore(ckpts))
    finally:
        if old is None:
            os.environ.pop("SEG_LABEL_DIR", None)
        else:
            os.environ["SEG_LABEL_DIR"] = old
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    wait_http(url)
    yield url, ws, ckpts
    close_app(demo)


T0 = time.monotonic()


def _mark(step: str) -> None:
    """Step timings, printed so that a slow or failing run shows where the time went."""
    print(f"[{time.monotonic() - T0:6.1f}s] {step}", flush=True)


def _wait_text(page, selector: str, text: str, timeout_ms: int = 45_000) -> str:
    _mark(f"wait for {text!r} in {selector}")
    page.wait_for_function(
        "([sel, txt]) => (document.querySelector(sel)?.innerText || '').includes(txt)",
        arg=[selector, text],
        timeout=timeout_ms,
    )
    return page.locator(selector).inner_text()


@pytest.mark.slow
def test_prefill_paint_save_finds_mask_on_disk(browser, served):
    url, ws, ckpts = served
    global T0
    T0 = time.monotonic()
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    page.wait_for_selector("#label-item")
    assert "0 of 1 labelled" in page.locator("#label-progress").inner_text()

    page.locator("#label-item input").click()
    page.get_by_role("option", name="scene").click()
    _wait_text(page, "#label-status", "Not labelled yet")
    _mark("prefill")
    page.locator("#label-prefill").click()
    status = _wait_text(page, "#label-status", "Prefilled")
    model_name = status.split("`")[1] if "`" in status else status.split("with ")[-1].rstrip(".").strip()

    editor = page.locator("#label-editor")
    editor.locator("canvas").first.wait_for()
    _mark("wait for the editor")
    page.wait_for_function(  # the editor's own progress overlay is gone: the new background is in
        "document.querySelector('#label-editor [data-testid=\"status-tracker\"]')?.classList.contains('hide')",
        timeout=45_000,
    )
    page.wait_for_timeout(1000)
    _mark("paint")
    editor.get_by_label("Color", exact=True).click()
    editor.locator("button.color").nth(WATER).click()
    box = editor.locator("canvas").first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 80, cy)
    page.mouse.down()
    for i in range(1, 5):  # few events: the software-rendered canvas is slow on a busy CPU
        page.mouse.move(cx - 80 + i * 40, cy)
    page.mouse.up()
    page.wait_for_timeout(300)
    _mark("save")
    page.locator("#label-save").click()
    saved = _wait_text(page, "#label-status", "Saved")
    assert "version 1" in saved
    _wait_text(page, "#label-progress", "1 of 1 labelled")
    if os.environ.get("SEG_SCREENSHOT_DIR"):
        page.screenshot(path=str(Path(os.environ["SEG_SCREENSHOT_DIR"]) / "label-tab.png"), full_page=True)

    # On disk: a palette PNG of class ids in train/ or val/, its version copy, and the manifest row.
    (record,) = ws.versions("scene")
    assert record.model == model_name
    label_path = ws.root / record.split / "scene.png"
    assert label_path.is_file() and (ws.root / ".versions" / "scene" / "v000001.png").is_file()
    from seg.data.sbd import list_samples, read_label
    from seg.inference import Predictor

    (sample,) = [s for s in list_samples(ws.root) if s.id == "scene"]
    saved_label = read_label(sample)
    assert saved_label.shape == (H, W)
    prediction = Predictor.from_checkpoint(ckpts / model_name).predict(ws.load("scene").image).label
    changed = saved_label != prediction
    # The stroke: a horizontal band of water through the image centre, ~20 px thick (brush radius 10
    # canvas px = 10 image px), everything else exactly the model's prediction.
    painted = saved_label == WATER
    rows = np.nonzero(painted.any(axis=1) & changed.any(axis=1))[0]
    assert rows.size and abs(rows.mean() - H / 2) < 12 and 8 <= rows.size <= 26
    cols = np.nonzero(changed.any(axis=0))[0]
    assert cols.max() - cols.min() >= 60 and abs((cols.max() + cols.min()) / 2 - W / 2) < 20
    assert np.all(saved_label[changed] == WATER)
    assert record.changed_pixels == int(changed.sum()) > 0
    assert set(np.unique(saved_label)) <= set(range(ws.num_classes))  # crisp ids, no blended colours
    assert not errors, errors
    page.close()
    _mark("done")
