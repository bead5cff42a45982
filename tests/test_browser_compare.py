"""The Compare tab in a browser: new runs appear while a visitor looks at an experiment, and the
visitor's pick stays where it was put."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECKPOINTS = REPO / "checkpoints"


def _add_run(root: Path, experiment: str, run: str) -> None:
    """A finished run as ``seglab experiment`` leaves it (manifest entry, card, weights), made from the
    shipped CNN so that no training is needed."""
    folder = root / experiment
    (folder / run).mkdir(parents=True, exist_ok=True)
    manifest_path = folder / "experiment.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"runs": [], "evaluate": ["test"]}
    lr = 1e-3 * (len(manifest["runs"]) + 1)
    manifest["runs"].append({"name": run, "settings": {"lr": lr}, "config": {"model": "cnn", "epochs": 1, "lr": lr}})
    shutil.copy(CHECKPOINTS / "cnn.safetensors", folder / run / "model.safetensors")
    shutil.copy(CHECKPOINTS / "cnn.json", folder / run / "model.json")
    manifest_path.write_text(json.dumps(manifest))


@pytest.mark.slow
def test_new_runs_are_drawn_and_the_visitors_pick_stays(browser, tmp_path):
    gr = pytest.importorskip("gradio")
    from seg.modelstore import ModelStore
    from seg.ui import compare
    from seg.ui.devserver import close_app

    root = tmp_path / "runs"
    _add_run(root, "first", "a1")
    _add_run(root, "second", "b1")
    with gr.Blocks() as demo:
        compare.build(ModelStore(CHECKPOINTS), root=root)
    demo.queue()
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        page = browser.new_page()
        page.goto(url)
        note = page.locator("#compare-note")
        picker = page.locator("#compare-experiment input")
        picker.click()
        page.get_by_role("option", name="second").click()
        page.wait_for_function("() => document.querySelector('#compare-note').innerText.startsWith('1 of ')")
        listed = int(note.inner_text().split(" of ")[1].split()[0])
        _add_run(root, "first", "a2")
        _add_run(root, "second", "b2")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not note.inner_text().startswith("2 of "):
            time.sleep(0.25)
        # the tick drew the new runs of the experiment picked, and left the pick as it was
        assert note.inner_text().startswith(f"2 of {listed + 2} runs"), note.inner_text()
        assert picker.input_value() == "second"
        page.close()
    finally:
        close_app(demo)


def test_a_redraw_after_new_runs_sets_no_dropdown_value_that_stays():
    from seg.ui.compare import keep_selection

    gr = pytest.importorskip("gradio")
    drawn = (
        gr.update(choices=["all", "first"], value="first"),
        [],
        None,
        gr.update(choices=["lr"], value="lr"),
        None,
        "note",
    )
    kept = keep_selection(drawn, "first", "lr")
    assert "value" not in kept[0] and kept[0]["choices"] == ["all", "first"]
    assert "value" not in kept[3] and kept[3]["choices"] == ["lr"]
    assert kept[5] == "note"
    # an experiment no longer listed: the dropdown must move, so its value is kept in the answer
    moved = keep_selection(
        (gr.update(choices=["all"], value="all"), [], None, gr.update(choices=[], value=None), None, "n"), "gone", "lr"
    )
    assert moved[0]["value"] == "all" and moved[3]["value"] is None
