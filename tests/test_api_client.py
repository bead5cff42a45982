"""What a ``gradio_client`` user sees: the ``/models`` endpoint, named outputs, optional inputs, model
names that follow the store, seeds of any size, evaluation progress, and the human summaries.

The app is launched once for the module on a free port, serving tiny untrained checkpoints
(plus a corrupt one and one with its weights missing); tests that need a dataset skip without it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seg.classes import SBD_CLASSES

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import handle_file  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SCENE = REPO / "assets" / "examples" / "scenes-1.png"
#: Every endpoint the dashboard's tabs (other than Train and Label) and the API module offer.
ENDPOINTS = ["/segment", "/segment_compare", "/augment", "/evaluate", "/instances", "/models"]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from seg.ui.devserver import close_app, launch_background, make_tiny_checkpoints

    folder = tmp_path_factory.mktemp("checkpoints")
    make_tiny_checkpoints(folder)
    demo, url = launch_background(folder)
    yield demo, url, folder
    close_app(demo)


@pytest.fixture(scope="module")
def client(app):
    from seg.ui.devserver import connect

    return connect(app[1])


@pytest.fixture(scope="module")
def store(app):
    return app[0].seg_store


def _api(client) -> dict:
    return client.view_api(return_format="dict", print_info=False)["named_endpoints"]


def _tiles(gallery: list[dict]) -> list[np.ndarray]:
    return [np.asarray(Image.open(g["image"]).convert("RGB")) for g in gallery]


# -- /models -----------------------------------------------------------------------------------------
def test_models_lists_checkpoints_with_task_classes_palette_and_metrics(client, store):
    from seg.ui.style import model_colour

    listing = client.predict(api_name="/models")
    models = {m["name"]: m for m in listing["models"]}
    assert set(models) == set(store.names(None))
    cnn = models["tiny-cnn"]
    card = store.card("tiny-cnn")
    assert cnn["task"] == "semantic" and cnn["classes"] == list(SBD_CLASSES)
    assert cnn["palette"] == card["palette"]
    assert cnn["val_metrics"]["miou"] == pytest.approx(card["val_metrics"]["miou"])
    assert "confusion_matrix" not in cnn["val_metrics"], "only the card's summary numbers, not its tables"
    assert cnn["colour"] == model_colour("tiny-cnn")
    assert models["tiny-dwt"]["task"] == "instances"
    unavailable = {u["name"]: u["reason"] for u in listing["unavailable"]}
    assert set(unavailable) == {"broken", "missing"} and "corrupt" in unavailable["broken"]


def test_checkpoint_saved_after_start_is_listed_and_usable(client, app):
    """Model names are checked against the store when a call runs, not against the start-up list."""
    import torch

    from seg.checkpoints import save_checkpoint
    from seg.classes import SBD_PALETTE
    from seg.models import create

    folder = app[2]
    torch.manual_seed(1)
    card = {
        "task": "semantic",
        "classes": list(SBD_CLASSES),
        "palette": [list(c) for c in SBD_PALETTE],
        "val_metrics": {"miou": 0.1, "map": 0.2, "pixel_accuracy": 0.3},
    }
    save_checkpoint(folder / "late-cnn", create("cnn", num_classes=len(SBD_CLASSES), width=8, stages=2), card)
    try:
        names = [m["name"] for m in client.predict(api_name="/models")["models"]]
        assert "late-cnn" in names
        gallery, *_ = client.predict(handle_file(str(SCENE)), ["late-cnn"], api_name="/segment_compare")
        assert gallery[0]["caption"].startswith("late-cnn · ")
        table, *_ = client.predict(["late-cnn"], "card", api_name="/evaluate")
        assert table["data"][0][0] == "late-cnn"
    finally:
        for suffix in (".json", ".safetensors"):
            (folder / "late-cnn").with_suffix(suffix).unlink(missing_ok=True)
        client.predict(api_name="/models")  # rescans: the removed checkpoint leaves the lists


# -- the schema --------------------------------------------------------------------------------------
def test_every_output_is_named(client):
    api = _api(client)
    for endpoint in ENDPOINTS:
        labels = [r["label"] for r in api[endpoint]["returns"]]
        assert labels and all(label and not label.startswith("value_") for label in labels), (endpoint, labels)
        assert not any(label.endswith(("1st", "2nd")) for label in labels), (endpoint, labels)


def test_optional_inputs_are_marked_optional(client):
    api = _api(client)
    for endpoint in ("/augment", "/instances"):
        params = {p["parameter_name"]: p for p in api[endpoint]["parameters"]}
        assert params["upload"]["parameter_has_default"] and params["upload"]["parameter_default"] is None
        assert all(p["parameter_has_default"] for p in params.values()), endpoint
    compare = {p["parameter_name"]: p for p in api["/segment_compare"]["parameters"]}
    assert not compare["image"]["parameter_has_default"], "the image to segment is required"


def test_model_parameters_take_any_current_name(client):
    """The schema says "a name from /models" instead of freezing the start-up choices."""
    api = _api(client)
    types = {
        endpoint: {p["parameter_name"]: p["python_type"]["type"] for p in api[endpoint]["parameters"]}
        for endpoint in ("/segment_compare", "/augment", "/evaluate", "/instances")
    }
    assert types["/segment_compare"]["models"] == "list[str]"
    assert types["/evaluate"]["models"] == "list[str]"
    assert types["/instances"]["models"] == "list[str]"
    assert types["/augment"]["model"] == "str"


# -- behaviour ---------------------------------------------------------------------------------------
def test_augment_accepts_a_seed_of_any_size(client):
    def grid(seed):
        return client.predict(
            "upload", None, handle_file(str(SCENE)), "tiny-unet", 0.5, 0.5, seed, 3, api_name="/augment"
        )

    huge = 10**30
    first, caption = grid(huge)
    assert f"seed {huge} (used as " in caption
    again, _ = grid(huge)
    assert all(np.array_equal(a, b) for a, b in zip(_tiles(first), _tiles(again))), "the same seed, the same grid"
    other, _ = grid(huge + 1)
    zero, _ = grid(0)
    assert not all(np.array_equal(a, b) for a, b in zip(_tiles(first)[1:], _tiles(other)[1:]))
    assert not all(np.array_equal(a, b) for a, b in zip(_tiles(first)[1:], _tiles(zero)[1:]))
    _, negative = grid(-7)
    assert "seed -7 (used as " in negative


def test_augment_dataset_image_needs_no_upload(client, sbd_root):
    from seg.ui.samples import sbd_choices

    sample = sbd_choices(("train",), 1)[0]
    gallery, caption = client.predict(source="dataset image", sample_id=sample, n=2, api_name="/augment")
    assert len(gallery) == 3 and "ground-truth mask" in caption


def test_instances_dataset_image_needs_no_upload(client, pennfudan_root):
    from seg.ui.instances import summary_html

    gallery, table, details = client.predict(
        source="Penn-Fudan image", sample_id="FudanPed00001", models=["tiny-dwt"], api_name="/instances"
    )
    assert gallery[0]["caption"] == "ground truth · 2 pedestrians"
    assert details["ground_truth_instances"] == 2
    text = summary_html(details)
    assert "ground truth: 2 pedestrians" in text and "tiny-dwt</b> found" in text


def test_evaluate_reports_images_done_with_time_left(client, store, sbd_root):
    from seg.ui import evaluate as tab

    calls: list[tuple] = []

    def record(value, desc=None, unit=None, **_):
        calls.append((value, desc, unit))

    tab.evaluate(store, ["tiny-cnn", "tiny-unet"], "recompute", "val", 2 * tab.EVAL_BATCH, progress=record)
    counted = [(v, d) for v, d, u in calls if u == "images"]
    total = 4 * tab.EVAL_BATCH
    assert [v for v, _ in counted] == [(k * tab.EVAL_BATCH, total) for k in range(1, 5)]
    assert all(f"/{total} images" in d for _, d in counted)
    assert all("left" in d for _, d in counted[:-1]), "every step but the last says how long is left"
    # and a client sees it while the job runs
    job = client.submit(["tiny-cnn"], "recompute", "val", 2 * tab.EVAL_BATCH, api_name="/evaluate")
    seen = set()
    while not job.done():
        status = job.status()
        for unit in status.progress_data or []:
            seen.add(unit.desc)
        time.sleep(0.05)
    job.result()
    assert any(desc and "tiny-cnn" in desc for desc in seen), seen


def test_summaries_read_as_sentences():
    from seg.ui.instances import summary_html
    from seg.ui.style import format_ms, plural

    assert plural(1, "instance") == "1 instance" and plural(2, "instance") == "2 instances"
    assert format_ms(1623.436) == "1.6 s" and format_ms(85.2) == "85 ms"
    details = {
        "source": "upload",
        "test_time_augmentation": True,
        "ground_truth_instances": None,
        "models": {
            "dwt": {"instances": 1, "scores": [0.91], "latency_ms": 1623.4, "metrics": {}},
            "maskrcnn": {"instances": 2, "scores": [0.99, 0.5], "latency_ms": 850.0, "metrics": {}},
        },
    }
    text = summary_html(details)
    assert "found 1 instance (scores 0.91) in 1.6 s" in text
    assert "found 2 instances (scores 0.99, 0.50) in 850 ms" in text
    assert "{" not in text, "no raw JSON"


def test_one_colour_per_model_everywhere():
    from seg.ui import evaluate, segment
    from seg.ui.style import MODEL_PALETTE, model_colour

    assert model_colour("my-new-model") == model_colour("my-new-model") in MODEL_PALETTE
    assert model_colour("unet") != model_colour("resunet")
    result = {"name": "my-new-model", "classes": ["a", "b"], "shares": np.array([0.5, 0.5])}
    bars = segment.shares_figure([result]).data[0]
    metrics = {"iou": {"a": 0.5, "b": 0.4}, "pr": {"a": ([1.0, 0.5], [0.0, 1.0])}}
    iou = evaluate.iou_figure({"my-new-model": metrics}, ["a", "b"]).data[0]
    pr = evaluate.pr_figure({"my-new-model": metrics}, ["a", "b"]).data[0]
    assert bars.marker.color == iou.marker.color == pr.line.color == model_colour("my-new-model")
