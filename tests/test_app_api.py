"""The launched dashboard driven through ``gradio_client``: every named endpoint, bad uploads,
unavailable checkpoints, and (with the dataset) evaluation on a split and a 1-epoch training run.

The app is launched once for the module on a free port, serving tiny untrained checkpoints
(plus a corrupt one and one with its weights missing).
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seg.classes import SBD_CLASSES

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SCENE = REPO / "assets" / "examples" / "scenes-1.png"
PEDESTRIANS = REPO / "assets" / "examples" / "pedestrians-1.png"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from seg.ui.devserver import close_app, launch_background, make_tiny_checkpoints

    ckpt = tmp_path_factory.mktemp("checkpoints")
    make_tiny_checkpoints(ckpt)
    demo, url = launch_background(ckpt)
    yield demo, url
    close_app(demo)


@pytest.fixture(scope="module")
def client(app):
    from seg.ui.devserver import connect

    return connect(app[1])


@pytest.fixture(scope="module")
def store(app):
    return app[0].seg_store


def _png(img: Image.Image, path: Path) -> Path:
    img.save(path)
    return path


def _read_label(path: str) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "P", "the label PNG keeps class ids as palette indices"
        return np.asarray(img)


# -- models --------------------------------------------------------------------------------
def test_broken_and_missing_checkpoints_listed_unavailable(store):
    bad = store.unavailable()
    assert set(bad) == {"broken", "missing"}
    assert "corrupt" in bad["broken"]
    assert "missing" in bad["missing"]
    assert store.names("semantic") == ["tiny-cnn", "tiny-prior", "tiny-unet"]
    assert store.names("instances") == ["tiny-dwt"]


def test_segment_endpoint_returns_label_png(client):
    label_path, info = client.predict(handle_file(str(SCENE)), "tiny-unet", api_name="/segment")
    label = _read_label(label_path)
    assert label.shape == (240, 320)
    assert label.max() < len(SBD_CLASSES)
    with Image.open(label_path) as img:  # the PNG's palette is the model's
        assert img.getpalette()[:3] == info["palette"][0]
    assert info["model"] == "tiny-unet" and info["latency_ms"] > 0
    assert abs(sum(info["shares"].values()) - 1) < 1e-3
    # the shares describe the returned label
    counts = np.bincount(label.ravel(), minlength=len(SBD_CLASSES)) / label.size
    assert np.allclose([info["shares"][c] for c in SBD_CLASSES], counts, atol=1e-4)


def test_segment_compare_runs_models_side_by_side(client):
    gallery, legend, plot, table, files = _compare(client, ["tiny-cnn", "tiny-prior"])
    assert [g["caption"].split(" · ")[0] for g in gallery] == ["tiny-cnn", "tiny-prior"]
    assert [row[0] for row in table["data"]] == ["tiny-cnn", "tiny-prior"]
    assert all(row[1] > 0 for row in table["data"])  # latency
    assert len(files) == 2 and all(_read_label(f).shape == (240, 320) for f in files)
    assert "sky" in legend
    assert plot["type"] == "plotly"


def _compare(client, models):
    return client.predict(handle_file(str(SCENE)), models, 0.5, "(all classes)", api_name="/segment_compare")


def test_unavailable_model_gives_clear_error(client):
    with pytest.raises(AppError, match="unavailable.*corrupt"):
        client.predict(handle_file(str(SCENE)), "broken", api_name="/segment")
    with pytest.raises(AppError, match="no such checkpoint"):
        client.predict(handle_file(str(SCENE)), "nope", api_name="/segment")


# -- bad and unusual uploads ---------------------------------------------------------------------
def _huge_png_header(path: Path, width: int = 10000, height: int = 8000) -> Path:
    """A valid-looking PNG whose header claims a decompression-bomb size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    )
    return path


@pytest.mark.parametrize(
    "kind,pattern",
    [
        ("text", "not an image that can be read"),
        ("empty", "empty"),
        ("truncated", "corrupt or truncated|not an image that can be read"),
        ("bomb", "the limit is 64 megapixels"),
    ],
)
def test_bad_uploads_get_clear_errors(client, tmp_path, kind, pattern):
    path = tmp_path / f"{kind}.png"
    if kind == "text":
        path.write_text("this is not an image")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    else:
        _huge_png_header(path)
    with pytest.raises(AppError, match=pattern) as err:
        client.predict(handle_file(str(path)), "tiny-cnn", api_name="/segment")
    assert "/tmp/gradio" not in str(err.value), "server paths must not leak into messages"
    # the app keeps serving
    label_path, _ = client.predict(handle_file(str(SCENE)), "tiny-cnn", api_name="/segment")
    assert _read_label(label_path).shape == (240, 320)


def test_unusual_but_valid_uploads_are_segmented(client, tmp_path):
    rng = np.random.default_rng(1)
    gray16 = Image.fromarray((rng.integers(0, 65535, (50, 70))).astype(np.uint16))
    rgba = Image.fromarray(rng.integers(0, 255, (30, 40, 4), dtype=np.uint8), "RGBA")
    exif_img = Image.fromarray(rng.integers(0, 255, (20, 40, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: the 40x20 picture is displayed 20 wide, 40 high
    exif_path = tmp_path / "rotated.jpg"
    exif_img.save(exif_path, exif=exif)
    big = Image.new("RGB", (3000, 1500), (80, 140, 230))
    cases = [
        (_png(gray16, tmp_path / "gray16.png"), (50, 70)),
        (_png(rgba, tmp_path / "rgba.png"), (30, 40)),
        (exif_path, (40, 20)),
        (_png(big, tmp_path / "big.png"), (512, 1024)),
    ]
    for path, shape in cases:
        label_path, info = client.predict(handle_file(str(path)), "tiny-cnn", api_name="/segment")
        assert _read_label(label_path).shape == shape, path.name
        assert (info["height"], info["width"]) == shape


# -- other tabs ----------------------------------------------------------------------------------
def test_augment_upload_uses_model_mask(client):
    gallery, caption = client.predict(
        "upload", None, handle_file(str(SCENE)), "tiny-unet", 0.25, 1.0, 3, 4, api_name="/augment"
    )
    assert len(gallery) == 5  # original + 4 samples
    assert "tiny-unet" in caption and "seed 3" in caption
    tiles = [np.asarray(Image.open(g["image"]).convert("RGB")) for g in gallery]
    assert all(t.shape == tiles[0].shape for t in tiles)
    again, _ = client.predict(
        "upload", None, handle_file(str(SCENE)), "tiny-unet", 0.25, 1.0, 3, 4, api_name="/augment"
    )
    assert np.array_equal(np.asarray(Image.open(again[2]["image"]).convert("RGB")), tiles[2]), "seeded"


def test_augment_rejects_bad_settings(client):
    with pytest.raises(AppError, match="Bad augmentation settings"):
        client.predict("upload", None, handle_file(str(SCENE)), "tiny-unet", 0.0, 0.5, 0, 2, api_name="/augment")


def test_instances_on_upload(client):
    gallery, table, summary = client.predict(
        "upload", None, handle_file(str(PEDESTRIANS)), ["tiny-dwt"], api_name="/instances"
    )
    captions = [g["caption"] for g in gallery]
    assert captions[0].startswith("tiny-dwt") and "energy" in captions[1]
    assert table["data"][0][0] == "tiny-dwt"
    assert summary["models"]["tiny-dwt"]["latency_ms"] > 0
    assert (summary["height"], summary["width"]) == (300, 360)
    assert summary["test_time_augmentation"] is True  # the default when a client leaves it out
    _, fast_table, fast = client.predict(
        "upload", None, handle_file(str(PEDESTRIANS)), ["tiny-dwt"], False, api_name="/instances"
    )
    assert fast["test_time_augmentation"] is False and fast_table["data"][0][0] == "tiny-dwt"


def test_evaluate_card_metrics(client, store):
    table, iou, confusion, pr, worst, worst_list, note = client.predict(
        ["tiny-cnn", "tiny-unet"], "card", "val", 0, api_name="/evaluate"
    )
    rows = {r[0]: r for r in table["data"]}
    card = store.card("tiny-cnn")["val_metrics"]
    assert rows["tiny-cnn"][3] == pytest.approx(card["miou"], abs=1e-3)
    assert rows["tiny-cnn"][7] > 0  # latency measured
    assert '"Heatmap"' in confusion["plot"] or '"heatmap"' in confusion["plot"]
    assert worst is None and worst_list == "" and "cards" in note


# -- with the dataset --------------------------------------------------------------------------------
def test_evaluate_recomputed_on_split(client, sbd_root):
    table, iou, confusion, pr, worst, worst_list, note = client.predict(
        ["tiny-cnn"], "recompute", "val", 4, api_name="/evaluate"
    )
    assert table["data"][0][2] == "val (recomputed)"
    assert 0 <= table["data"][0][5] <= 1
    assert '"scatter"' in pr["plot"]  # PR curves exist after recomputation
    listed = [line for line in worst_list.splitlines() if "tiny-cnn" in line]
    assert 1 <= len(listed) <= 3
    with Image.open(worst) as strips:  # one strip per listed image: image | truth | prediction | errors
        assert strips.size[1] >= len(listed) * 137


def test_instances_with_ground_truth(client, pennfudan_root):
    gallery, table, summary = client.predict(
        "Penn-Fudan image", "FudanPed00001", None, ["tiny-dwt"], api_name="/instances"
    )
    assert gallery[0]["caption"].startswith("ground truth · 2 pedestrians")
    metrics = summary["models"]["tiny-dwt"]["metrics"]
    assert set(metrics) >= {"mask_ap", "count_error", "mean_best_iou"}


def test_augment_dataset_image_keeps_mask_aligned(client, sbd_root):
    from seg.ui.samples import sbd_choices

    sample = sbd_choices(("train",), 1)[0]
    gallery, caption = client.predict("dataset image", sample, None, None, 1.0, 1.0, 0, 2, api_name="/augment")
    assert "ground-truth mask" in caption
    original = np.asarray(Image.open(gallery[0]["image"]).convert("RGB"))
    flipped = np.asarray(Image.open(gallery[1]["image"]).convert("RGB"))
    w = (original.shape[1] - 4) // 2  # image | gap | mask overlay
    # crop 1.0 and flip p=1: the sample is the exact mirror image, image and mask alike
    assert np.abs(flipped[:, :w].astype(int) - original[:, :w][:, ::-1].astype(int)).mean() < 3
    assert np.abs(flipped[:, -w:].astype(int) - original[:, -w:][:, ::-1].astype(int)).mean() < 3


def test_training_one_epoch_streams_events(client, store, sbd_root):
    job = client.submit(
        "cnn",
        1,
        0.003,
        2,
        0.5,
        0.5,
        "inverse_sqrt",
        0,
        "none",
        4,
        0,
        "ui-test-cnn",
        "Stanford Background",
        zoom_out=1.3,
        rotate=4,
        lovasz=0.5,
        distill_from="tiny-unet",
        distill_weight=0.5,
        distill_temperature=3,
        api_name="/train",
    )
    status, progress, loss, metric, samples, run = job.result(timeout=300)
    assert len(job.outputs()) >= 2, "the run streams more than its final state"
    assert run["status"] == "done", run
    kinds = [e["type"] for e in run["events"]]
    assert kinds[0] == "start" and "epoch" in kinds and kinds[-1] == "done"
    assert run["checkpoint"] == "ui-test-cnn", "the checkpoint by name, never its server folder"
    assert run["steps_per_epoch"] >= 1 and run["step"] is not None, "steps are streamed"
    assert "Run done" in progress
    with Image.open(samples) as tiles:  # one row per validation sample: image | truth | prediction
        assert tiles.size[0] == 3 * 288 + 2 * 4 and tiles.size[1] >= 224
    assert "ui-test-cnn" in store.names("semantic"), "a new checkpoint appears in the model lists"
    config = store.card("ui-test-cnn")["config"]["semantic"]
    assert (config["zoom_out"], config["rotate"], config["lovasz"]) == (1.3, 4.0, 0.5), "the levers reach the run"
    teacher = store.card("ui-test-cnn")["distilled_from"]
    assert Path(teacher["checkpoint"]).name == "tiny-unet" and (teacher["weight"], teacher["temperature"]) == (0.5, 3)
    assert run["config"]["semantic"]["distill_from"] == "tiny-unet", "viewers see the teacher's name, not its folder"
    label_path, _ = client.predict(handle_file(str(SCENE)), "ui-test-cnn", api_name="/segment")
    assert _read_label(label_path).shape == (240, 320)
    with pytest.raises(AppError, match="exists already"):
        client.predict(
            "cnn",
            1,
            0.003,
            2,
            0.5,
            0.5,
            "inverse_sqrt",
            0,
            "none",
            4,
            0,
            "ui-test-cnn",
            "Stanford Background",
            api_name="/train",
        )
