"""The dashboard's live updates and layouts in a real headless Chromium (Playwright driving Debian's chromium).

Checks that results follow the controls without a button (a Segment upload, a model change, an
Augment slider release, a seed of any size), that compared pictures sit in one row on a 1400-px
window (their bounding boxes share a top edge), that plots follow the dark theme, and that a
390-px phone keeps every tab in view with one overlay per row. Only generated images are uploaded.
Skipped, with the reason, when no browser is present.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a browser and an app per module

REPO = Path(__file__).resolve().parent.parent
SCENE = REPO / "assets" / "examples" / "scenes-1.png"
PEDESTRIANS = REPO / "assets" / "examples" / "pedestrians-1.png"
TABS = ["Segment", "Augment", "Evaluate", "Train", "Instances", "Label", "Compare"]

#: All srcs of a gallery's pictures, joined: a change means new pictures arrived.
SRCS = "sel => [...document.querySelectorAll(sel + ' img')].map(i => i.src).join('|')"
#: True once a gallery shows new pictures (srcs differ from `before`), its first n loaded.
CHANGED = """([sel, before, n]) => {
    const imgs = [...document.querySelectorAll(sel + ' img')];
    return imgs.length >= n && imgs.map(i => i.src).join('|') !== before
        && imgs.slice(0, n).every(i => i.complete && i.naturalWidth > 0);  // lazy ones load when scrolled to
}"""
#: True once no event is running or queued for the component (Gradio's status text on it is gone).
SETTLED = "sel => !/processing|queue/.test(document.querySelector(sel)?.innerText ?? '')"
#: Bounding boxes of a gallery's pictures.
BOXES = """sel => [...document.querySelectorAll(sel + ' .thumbnail-item img')].map(i => {
    const r = i.getBoundingClientRect(); return {top: r.top, left: r.left, width: r.width, height: r.height};
})"""


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


def _open(browser, url: str, width: int, height: int = 1000, theme: str | None = None, phone: bool = False):
    context = browser.new_context(viewport={"width": width, "height": height}, is_mobile=phone, has_touch=phone)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url + (f"?__theme={theme}" if theme else ""), wait_until="domcontentloaded")
    page.get_by_role("tab", name="Segment").first.wait_for(timeout=60_000)
    page.errors = errors  # type: ignore[attr-defined]
    return context, page


@pytest.fixture(scope="module")
def page(browser, app_url):
    context, pg = _open(browser, app_url, 1400)
    yield pg
    context.close()


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()
    page.wait_for_timeout(300)


def _wait_new_pictures(page, gallery: str, before: str, n: int = 1, timeout: int = 90_000) -> None:
    page.wait_for_function(CHANGED, arg=[gallery, before, n], timeout=timeout)


def _click_slider(page, elem_id: str, fraction: float) -> None:
    """Click a slider's track at ``fraction`` of its width: the pointer release Gradio reports as ``release``."""
    track = page.locator(f"#{elem_id} input[type=range]")
    box = track.bounding_box()
    track.click(position={"x": max(2.0, min(box["width"] - 2, box["width"] * fraction)), "y": box["height"] / 2})


def _settled(page, selector: str) -> None:
    """Wait until no event is running or queued for the component at ``selector``."""
    page.wait_for_function(SETTLED, arg=selector, timeout=60_000)


def _segmented(page) -> None:
    """An image segmented on the Segment tab: an earlier test's, or the scene uploaded now (pytest-xdist's
    work stealing may run a test of this module on another worker's fresh page)."""
    if not page.locator("#segment-gallery img").count():
        before = page.evaluate(SRCS, "#segment-gallery")
        page.locator("#segment-image input[type=file]").set_input_files(str(SCENE))
        _wait_new_pictures(page, "#segment-gallery", before)


def _same_top(boxes: list[dict]) -> bool:
    return max(b["top"] for b in boxes) - min(b["top"] for b in boxes) <= 1.0


# -- live updates ---------------------------------------------------------------------------------------
def test_segment_runs_on_upload_and_on_model_change(page):
    _tab(page, "Segment")
    before = page.evaluate(SRCS, "#segment-gallery")
    page.locator("#segment-image input[type=file]").set_input_files(str(SCENE))
    selected = page.locator("#segment-models .token").count()
    _wait_new_pictures(page, "#segment-gallery", before, max(1, selected))  # no button pressed
    assert " ms" in page.locator("#segment-gallery").inner_text()
    # add every other model (up to four): the row follows the selection, again without the button
    page.locator("#segment-models input").click()
    options = page.locator("#segment-models li[role=option][aria-selected=false]")
    added = 0
    while options.count() and selected + added < 4:
        options.first.click()
        added += 1
        page.wait_for_timeout(150)
    page.keyboard.press("Escape")
    if not added:
        pytest.skip("only one semantic model is served; nothing to add")
    page.wait_for_function(
        "([sel, n]) => document.querySelectorAll(sel + ' .thumbnail-item img').length === n",
        arg=["#segment-gallery", selected + added],
        timeout=120_000,
    )


def test_overlays_share_one_row_at_1400px(page):
    """Every selected model (up to four) side by side: the overlays' boxes share a top edge."""
    _tab(page, "Segment")
    _segmented(page)
    page.wait_for_timeout(500)
    boxes = page.evaluate(BOXES, "#segment-gallery")
    assert 1 <= len(boxes) <= 4
    assert _same_top(boxes), boxes
    assert all(b["left"] + b["width"] <= 1400 for b in boxes), "the row fits the window"
    assert min(b["width"] for b in boxes) >= 250, "each overlay is readable (at least 250 px wide)"
    captions = page.locator("#segment-gallery .caption-label").all_inner_texts()
    assert len(captions) == len(boxes) and all(" · " in c and " ms" in c for c in captions), captions


def test_opacity_release_redraws_without_inference(page):
    _tab(page, "Segment")
    _segmented(page)
    assert page.locator("#segment-gallery img").count()
    before = page.evaluate(SRCS, "#segment-gallery")
    _click_slider(page, "segment-alpha", 0.9)
    _wait_new_pictures(page, "#segment-gallery", before, timeout=30_000)


def test_slider_release_changes_augment_grid_without_button(page):
    _tab(page, "Augment")
    grid = "#augment-gallery"
    if not page.locator(f"{grid} img").count():  # no dataset here: an upload starts the grid by itself
        before = page.evaluate(SRCS, grid)
        page.locator("#augment-upload input[type=file]").set_input_files(str(SCENE))
        _wait_new_pictures(page, grid, before, 2)
    # a fresh page may still be drawing its first grid: the slider's pictures must not be taken for it
    _settled(page, "#augment-caption")
    caption = page.locator("#augment-caption")
    before = page.evaluate(SRCS, grid)
    _click_slider(page, "augment-crop", 0.8)  # crop 0.25 -> 0.8
    _wait_new_pictures(page, grid, before, 2, timeout=60_000)
    _settled(page, "#augment-caption")
    assert "crop 0.80" in caption.inner_text()
    # the seed follows too, however large
    before = page.evaluate(SRCS, grid)
    seed = page.locator("#augment-seed input")
    seed.fill("123456789012345678901234567890")
    seed.press("Tab")
    _wait_new_pictures(page, grid, before, 2, timeout=60_000)
    _settled(page, "#augment-caption")
    text = caption.inner_text()
    assert "used as" in text, text
    assert "Overflow" not in page.locator("body").inner_text()
    assert not page.errors, page.errors  # type: ignore[attr-defined]


def test_instances_look_at_an_upload_and_a_chosen_image_at_once(page):
    """As on the Segment tab, no button: a dropped image is looked at, and so is a Penn-Fudan image
    chosen from the list (with its ground truth first)."""
    _tab(page, "Instances")
    if "not available" in page.locator("#tab-instances").inner_text():
        pytest.skip("no instance checkpoint is served")
    before = page.evaluate(SRCS, "#instances-gallery")
    page.locator("#instances-upload input[type=file]").set_input_files(str(PEDESTRIANS))
    _wait_new_pictures(page, "#instances-gallery", before, timeout=120_000)
    page.wait_for_function(
        "() => document.querySelector('#instances-summary')?.innerText.includes('found')", timeout=60_000
    )
    assert "ground truth" not in page.locator("#instances-gallery").inner_text()  # an upload has none
    if not page.locator("#instances-sample").is_visible():
        return  # no Penn-Fudan here: nothing to choose
    before = page.evaluate(SRCS, "#instances-gallery")
    page.locator("#instances-sample input").click()
    page.locator("#instances-sample li[role=option]").nth(1).click()
    _wait_new_pictures(page, "#instances-gallery", before, timeout=120_000)
    page.wait_for_function(
        "() => document.querySelector('#instances-gallery')?.innerText.includes('ground truth')", timeout=60_000
    )


def test_instances_truth_and_models_in_one_row(page):
    _tab(page, "Instances")
    panel = page.locator("#tab-instances")
    if "not available" in panel.inner_text():
        pytest.skip("no instance checkpoint is served")
    page.locator("#instances-upload input[type=file]").set_input_files(str(PEDESTRIANS))
    page.locator("#instances-upload img").first.wait_for(timeout=20_000)
    page.locator("#instances-run").click()
    page.wait_for_function(
        "() => document.querySelector('#instances-summary')?.innerText.includes('found')", timeout=120_000
    )
    page.wait_for_timeout(500)
    boxes = page.evaluate(BOXES, "#instances-gallery")
    assert 1 <= len(boxes) <= 4 and _same_top(boxes), boxes
    summary = page.locator("#instances-summary").inner_text()
    assert "1 instances" not in summary and "**" not in summary
    assert " ms" in summary or " s" in summary
    assert page.locator("#instances-details").is_hidden(), "the raw JSON waits in a collapsed accordion"


# -- looks ------------------------------------------------------------------------------------------------
def _luminance(css_colour: str) -> float:
    """Relative brightness 0..1 of an ``rgb(...)`` / ``rgba(...)`` CSS colour."""
    values = [float(v) for v in css_colour[css_colour.index("(") + 1 : css_colour.index(")")].split(",")[:3]]
    r, g, b = (v / 255 for v in values)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_plots_follow_the_dark_theme(browser, app_url):
    context, page = _open(browser, app_url, 1400, theme="dark")
    try:
        _tab(page, "Evaluate")
        page.locator("#evaluate-run").click()
        page.locator("#evaluate-iou .main-svg").first.wait_for(timeout=90_000)
        page.wait_for_timeout(800)
        colours = page.evaluate(
            """() => {
                const svg = document.querySelector('#evaluate-iou .main-svg');
                const tick = document.querySelector('#evaluate-iou .xtick text');
                return {paper: getComputedStyle(svg).backgroundColor, text: getComputedStyle(tick).fill,
                        page: getComputedStyle(document.querySelector('gradio-app')).backgroundColor};
            }"""
        )
        paper = colours["paper"].replace(" ", "")
        assert paper in ("rgba(0,0,0,0)", "transparent"), colours  # no white card on a dark page
        assert _luminance(colours["page"]) < 0.3, colours  # the page is dark...
        assert _luminance(colours["text"]) > 0.6, colours  # light axis labels on the dark page
    finally:
        context.close()


def test_phone_keeps_tabs_in_view_and_one_overlay_per_row(browser, app_url):
    context, page = _open(browser, app_url, 390, height=844, phone=True)
    try:
        tabs = page.locator("[role=tablist] [role=tab]")
        assert tabs.all_inner_texts() == TABS, "every tab is a visible button, none hidden in a menu"
        assert all(tabs.nth(k).is_visible() for k in range(len(TABS)))
        before = page.evaluate(SRCS, "#segment-gallery")
        page.locator("#segment-image input[type=file]").set_input_files(str(SCENE))
        _wait_new_pictures(page, "#segment-gallery", before)
        page.wait_for_timeout(500)
        boxes = page.evaluate(BOXES, "#segment-gallery")
        assert all(b["width"] >= 0.75 * 390 for b in boxes), boxes  # full width, readable
        tops = sorted(b["top"] for b in boxes)
        assert all(b - a > 50 for a, b in zip(tops, tops[1:])), "one overlay per row"
    finally:
        context.close()
