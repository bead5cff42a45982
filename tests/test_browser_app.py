"""The dashboard in a real headless Chromium (Playwright driving Debian's ``chromium``).

Opens every tab, uploads an image on the Segment tab, checks the overlays appear by themselves
(no button), and saves a screenshot of every tab (to ``$SEG_SCREENSHOT_DIR`` when set, e.g. ``docs/screenshots``,
otherwise to pytest's temp folder). Skipped, with the reason, when no browser is present.

It serves the shipped checkpoints when ``checkpoints/`` has semantic ones (so the screenshots
show real models), else tiny untrained ones.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a browser and an app per module

REPO = Path(__file__).resolve().parent.parent
SCENE = REPO / "assets" / "examples" / "scenes-1.png"
PEDESTRIANS = REPO / "assets" / "examples" / "pedestrians-1.png"
TABS = ["Segment", "Augment", "Evaluate", "Train", "Instances", "Label", "Compare"]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    from seg.config import checkpoint_dir
    from seg.modelstore import ModelStore
    from seg.ui.devserver import close_app, launch_background, make_tiny_checkpoints

    shipped = checkpoint_dir()
    if ModelStore(shipped).names("semantic"):
        directory = shipped
    else:
        directory = tmp_path_factory.mktemp("checkpoints")
        make_tiny_checkpoints(directory, broken=False)
    demo, url = launch_background(directory)
    yield url
    close_app(demo)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("SEG_SCREENSHOT_DIR") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def page(browser, app_url):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(app_url, wait_until="domcontentloaded")
    pg.get_by_role("tab", name="Segment").wait_for(timeout=60_000)
    pg.errors = errors  # type: ignore[attr-defined]
    yield pg
    context.close()


def _open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()
    page.wait_for_timeout(400)


def test_segment_upload_shows_overlay(page, shots):
    _open_tab(page, "Segment")
    page.locator("#segment-image input[type=file]").set_input_files(str(SCENE))
    page.locator("#segment-image img").first.wait_for(timeout=20_000)
    overlay = page.locator("#segment-gallery img").first  # segmented on upload, no button
    overlay.wait_for(timeout=60_000)
    page.wait_for_function(
        """() => {const i = document.querySelector('#segment-gallery img');
                                      return i && i.complete && i.naturalWidth > 0}""",
        timeout=30_000,
    )
    caption = page.locator("#segment-gallery").inner_text()
    assert " ms" in caption, caption  # each overlay is captioned with its model and latency
    page.wait_for_timeout(800)  # let plotly draw
    page.screenshot(path=str(shots / "segment.png"), full_page=True)


def test_bad_upload_shows_error_and_page_keeps_working(page, tmp_path):
    _open_tab(page, "Segment")
    bad = tmp_path / "not-an-image.png"
    bad.write_bytes(b"this is text, not a PNG")
    remove = page.locator("#segment-image button[aria-label='Remove Image']")
    if remove.count():  # an image from the previous test is still there
        remove.first.click()
    page.locator("#segment-image input[type=file]").set_input_files(str(bad))
    toast = page.get_by_text("Cannot read the image").first  # the automatic run on upload says so
    toast.wait_for(timeout=30_000)
    body = page.locator("body").inner_text()
    assert "LoadError" not in body and "Traceback" not in body, "a plain sentence, no exception names"
    # start the next tests (and their screenshots) from a fresh page, without the error toast
    page.reload(wait_until="domcontentloaded")
    page.get_by_role("tab", name="Segment").wait_for(timeout=60_000)


@pytest.mark.parametrize("tab", TABS[1:])
def test_every_tab_opens(page, shots, tab):
    _open_tab(page, tab)
    panel = page.locator(f"#tab-{tab.lower()}")
    panel.wait_for(state="visible", timeout=10_000)
    assert panel.inner_text().strip(), f"the {tab} tab is empty"
    if tab == "Evaluate":
        page.locator("#evaluate-run").click()
        page.wait_for_function(
            """() => (document.querySelector('#evaluate-note') || {}).innerText
                                          ?.includes('metrics from')""",
            timeout=60_000,
        )
        assert page.locator("#evaluate-table").inner_text().count("card") >= 1
        page.wait_for_timeout(1500)
    # Uploads of generated images only: screenshots must never show dataset pixels.
    if tab == "Augment":
        page.locator("#augment-upload input[type=file]").set_input_files(str(SCENE))
        page.locator("#augment-upload img").first.wait_for(timeout=20_000)
        # the upload alone refreshes the grid (no button)
        page.wait_for_function(
            "() => document.querySelector('#augment-caption')?.innerText.includes('mask predicted by')",
            timeout=60_000,
        )
        page.wait_for_function(
            """() => [...document.querySelectorAll('#augment-gallery img')]
                         .every(i => i.complete && i.naturalWidth > 0)""",
            timeout=30_000,
        )
        page.wait_for_timeout(500)
    if tab == "Instances" and "not available" not in panel.inner_text():
        page.locator("#instances-upload input[type=file]").set_input_files(str(PEDESTRIANS))
        page.locator("#instances-upload img").first.wait_for(timeout=20_000)
        page.locator("#instances-run").click()
        page.wait_for_function(
            "() => document.querySelector('#instances-summary')?.innerText.includes('found')", timeout=120_000
        )
        page.wait_for_timeout(800)
    page.screenshot(path=str(shots / f"{tab.lower()}.png"), full_page=True)
    assert not page.errors, page.errors  # no uncaught JavaScript errors


def test_dark_theme_and_phone_views(browser, app_url, shots):
    """The Evaluate tab in the dark theme and the Segment tab on a 390-px phone, saved like the others."""
    dark = browser.new_context(viewport={"width": 1400, "height": 1000}, color_scheme="dark")
    try:
        page = dark.new_page()
        page.goto(app_url + "?__theme=dark", wait_until="domcontentloaded")
        _open_tab(page, "Evaluate")
        page.locator("#evaluate-run").click()
        page.locator("#evaluate-iou .main-svg").first.wait_for(timeout=90_000)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(shots / "evaluate-dark.png"), full_page=True)
    finally:
        dark.close()
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        page = phone.new_page()
        page.goto(app_url, wait_until="domcontentloaded")
        page.get_by_role("tab", name="Segment").wait_for(timeout=60_000)
        page.locator("#segment-image input[type=file]").set_input_files(str(SCENE))
        page.wait_for_function(
            """() => {const imgs = [...document.querySelectorAll('#segment-gallery img')];
                      return imgs.length && imgs.every(i => i.complete && i.naturalWidth > 0)}""",
            timeout=60_000,
        )
        page.wait_for_timeout(1500)
        page.screenshot(path=str(shots / "segment-phone.png"), full_page=True)
    finally:
        phone.close()


def test_a_closed_app_has_shut_down_and_cleaned_up_while_its_page_is_still_open(browser, tmp_path):
    """``close_app`` returns once the server is down and its cached files are deleted, though a page
    is still open: Gradio's own close gives up after 5 s and leaves both to happen later, when the
    page goes, deleting files a newer app in the process has cached under the same (content) names."""
    import time

    from seg.ui.devserver import close_app, launch_background, make_tiny_checkpoints

    make_tiny_checkpoints(tmp_path, broken=False, instances=False)
    demo, url = launch_background(tmp_path)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = context.new_page()
        page.goto(url, wait_until="domcontentloaded")
        page.get_by_role("tab", name="Segment").first.wait_for(timeout=60_000)  # the first tab, shown
        page.locator("#segment-image input[type=file]").set_input_files(str(SCENE))
        page.wait_for_function(  # segmented on upload
            "() => {const i = document.querySelector('#segment-gallery img');"
            " return i && i.complete && i.naturalWidth > 0}",
            timeout=60_000,
        )
        served = [Path(p) for files in demo.temp_file_sets for p in files if Path(p).name.endswith("-label.png")]
        assert served and all(p.exists() for p in served)
        started = time.monotonic()
        close_app(demo)
        assert not demo.server.thread.is_alive(), "the server is still waiting for the page"
        assert not any(p.exists() for p in served), "its clean-up has not run"
        assert time.monotonic() - started < 5.0
    finally:
        context.close()
