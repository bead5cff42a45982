"""Dashboard pieces without a server: the model store's bookkeeping, the single training
run (with a stand-in trainer, so no dataset is needed), and the drawing helpers."""

from __future__ import annotations

import threading
import time

import gradio as gr
import numpy as np
import pytest

from seg.modelstore import ModelStore, ModelUnavailable
from seg.render import class_shares, hstack, overlay
from seg.ui.devserver import make_tiny_checkpoints


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    make_tiny_checkpoints(d, instances=False)
    return d


def test_store_keeps_broken_unavailable_across_refresh(ckpt_dir):
    store = ModelStore(ckpt_dir)
    # its card is fine but the weights are not: listing reads the safetensors header, so it is unavailable at once
    assert "broken" not in store.names("semantic") and "corrupt" in store.unavailable()["broken"]
    store.preload()
    assert "broken" not in store.names("semantic") and "corrupt" in store.unavailable()["broken"]
    store.refresh()
    assert "broken" in store.unavailable(), "a failed load is remembered while the files are unchanged"
    with pytest.raises(ModelUnavailable):
        store.predictor("broken")


def test_store_caches_and_reloads_replaced_checkpoint(ckpt_dir):
    from seg.checkpoints import save_checkpoint
    from seg.models import create

    store = ModelStore(ckpt_dir)
    by_miou = sorted(store.names(), key=lambda n: -store.card(n).get("val_metrics", {}).get("miou", -1))
    assert store.best("semantic", 2) == by_miou[:2], "default selections are the best models by their cards"
    first = store.predictor("tiny-cnn")
    assert store.predictor("tiny-cnn") is first
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(store.predictor("tiny-unet"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(r) for r in results}) == 1, "concurrent first use loads once"
    time.sleep(0.01)
    card = store.card("tiny-cnn")
    save_checkpoint(
        ckpt_dir / "tiny-cnn",
        create("cnn", num_classes=9, width=8, stages=2),
        {k: v for k, v in card.items() if k not in ("architecture", "arch_kwargs")},
    )
    store.refresh()
    assert store.predictor("tiny-cnn") is not first, "a checkpoint retrained in place is reloaded"


def test_training_run_is_single_and_stops_cleanly(monkeypatch, ckpt_dir):
    import seg.training as ts
    from seg.ui import train

    def fake_train(config, stop):
        yield {"type": "start", "epochs": 3}
        for epoch in range(1, 4):
            for _step in range(50):
                if stop.is_set():
                    yield {"type": "done", "stopped": True, "checkpoint": "kept-best"}
                    return
                time.sleep(0.01)
            yield {
                "type": "epoch",
                "epoch": epoch,
                "train_loss": 1.0 / epoch,
                "val_loss": 1.1 / epoch,
                "metrics": {"miou": 0.1 * epoch, "map": 0.2, "pixel_accuracy": 0.5},
                "samples": [
                    {
                        "id": "x",
                        "image": np.zeros((8, 8, 3), np.uint8),
                        "truth": np.zeros((8, 8), np.uint8),
                        "pred": np.ones((8, 8), np.uint8),
                    }
                ],
            }
        yield {"type": "done", "stopped": False, "checkpoint": "final"}

    monkeypatch.setattr(ts, "train", fake_train)
    run = train.TrainingRun()
    store = ModelStore(ckpt_dir)
    run.start(ts.TrainConfig(model="cnn", epochs=3), "first", store)
    with pytest.raises(gr.Error, match="already in progress"):
        run.start(ts.TrainConfig(model="cnn", epochs=3), "second", store)
    version = run.wait(-1, timeout=5)
    deadline = time.time() + 10
    while not run.state.rows and time.time() < deadline:
        version = run.wait(version, timeout=1)
    assert run.state.rows and run.state.samples is not None, "epoch rows and sample tiles recorded"
    assert run.state.samples.shape == (8, 8 * 3 + 8, 3)  # image | truth | prediction
    assert "already" not in run.stop()
    run.join(10)
    assert run.state.status == "stopped" and run.state.checkpoint == "kept-best"
    status, loss, metric, samples, info = train.snapshot(run.state)
    assert "stopped" in status and info["events"][0]["type"] == "start"


def test_watch_skips_when_nothing_changed(monkeypatch):
    from seg.ui import train

    monkeypatch.setattr(train, "RUN", train.TrainingRun())
    first = train.watch(None)
    assert first[-1] == train.RUN.state.version
    again = train.watch(first[-1])
    assert all(isinstance(x, type(gr.skip())) for x in again[:-1])


def test_overlay_highlight_and_shares():
    image = np.full((4, 6, 3), 100, np.uint8)
    label = np.zeros((4, 6), np.uint8)
    label[:, 3:] = 2
    palette = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    out = overlay(image, label, palette, alpha=1.0)
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[0, 5]) == (0, 0, 255)
    dimmed = overlay(image, label, palette, alpha=0.5, highlight=2)
    assert dimmed[0, 0].max() < 50, "other classes are dimmed"
    assert np.allclose(class_shares(label, 3), [0.5, 0, 0.5])
    assert hstack([image, image[:2]]).shape == (4, 16, 3)


def test_app_builds_without_data_and_says_how_to_get_it(monkeypatch, tmp_path, ckpt_dir):
    from seg.ui.app import build_app

    monkeypatch.setenv("SEG_DATA_DIR", str(tmp_path / "no-data-here"))
    demo = build_app(ckpt_dir)
    texts = [str(getattr(b, "value", "")) for b in demo.blocks.values() if isinstance(b, gr.Markdown)]
    joined = "\n".join(texts)
    assert "could not be built" not in joined and "not installed yet" not in joined
    assert "python -m seg download sbd" in joined and "python -m seg download pennfudan" in joined
    assert "broken" in joined and "unavailable" in joined, "unavailable checkpoints are listed with the reason"
    names = {getattr(fn, "api_name", None) for fn in demo.fns.values()}
    assert {"segment", "segment_compare", "augment", "evaluate", "train", "instances"} <= names


def test_segment_rerender_uses_cached_labels_only():
    from seg.ui import segment

    image = np.full((6, 8, 3), 120, np.uint8)
    label = np.zeros((6, 8), np.uint8)
    label[3:] = 1
    result = {
        "name": "m",
        "label": label,
        "classes": ["a", "b"],
        "palette": [(255, 0, 0), (0, 0, 255)],
        "latency_ms": 5.0,
        "total_ms": 6.0,
        "shares": np.array([0.5, 0.5]),
    }
    state = {"image": image, "results": [result]}
    ((tile, caption),) = segment.rerender(state, 1.0, None)
    assert tuple(tile[0, 0]) == (255, 0, 0) and caption.startswith("m · 5 ms")
    ((tile, _),) = segment.rerender(state, 0.5, "b")
    assert tile[0, 0].max() < 60 and tile[5, 0, 2] > 150, "highlight dims the other classes"
    assert isinstance(segment.rerender(None, 0.5, None), type(gr.skip()))


def test_app_builds_with_no_checkpoints_at_all(tmp_path):
    from seg.ui.app import build_app

    demo = build_app(tmp_path / "no-checkpoints")
    texts = "\n".join(str(getattr(b, "value", "")) for b in demo.blocks.values() if isinstance(b, gr.Markdown))
    assert "No usable semantic segmentation checkpoint" in texts
    assert "DWT/Mask R-CNN checkpoint not available" in texts
    assert "could not be built" not in texts
