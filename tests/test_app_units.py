"""Dashboard pieces without a server: the model store's bookkeeping, the single training
run (with a stand-in trainer, so no dataset is needed), and the drawing helpers."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

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


def test_a_model_list_refresh_leaves_a_valid_choice_to_newer_events(ckpt_dir):
    """The tab-switch refresh sends the choices only, unless the choice it read is gone: a value sent back
    could undo one set meanwhile (the Label tab choosing a model it just trained)."""
    from seg.ui.pickers import dropdown_update

    store = ModelStore(ckpt_dir)
    names = store.names("semantic")
    assert len(names) >= 2
    assert dropdown_update(store, "semantic", current=names[1]) == gr.update(choices=names)
    assert dropdown_update(store, "semantic", current="deleted")["value"] == names[0]
    assert dropdown_update(store, "semantic", multiselect=True, current=names[:2]) == gr.update(choices=names)
    assert dropdown_update(store, "semantic", multiselect=True, current=[names[0], "deleted"])["value"] == [names[0]]
    assert dropdown_update(store, "semantic", multiselect=True, current=[])["value"] == store.best("semantic")


def test_preload_loads_the_pages_default_models_first(ckpt_dir, monkeypatch):
    store = ModelStore(ckpt_dir)
    order: list[str] = []
    monkeypatch.setattr(store, "predictor", order.append)
    store.preload()
    defaults = store.best("semantic", 2)
    assert defaults and order[: len(defaults)] == defaults
    assert sorted(order) == store.names(None), "then every other model, once"


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


def _fake_train(steps_per_epoch: int = 50, epochs: int = 3, step_s: float = 0.01):
    """A stand-in for ``seg.training.train``: steps, epochs with samples, a stop between steps."""

    def fake_train(config, stop, log_every=10):
        yield {"type": "start", "epochs": epochs}
        for epoch in range(1, epochs + 1):
            for step in range(steps_per_epoch):
                if stop.is_set():
                    yield {"type": "done", "stopped": True, "checkpoint": "/server/folder/kept-best"}
                    return
                time.sleep(step_s)
                if step % log_every == 0:
                    yield {
                        "type": "step",
                        "epoch": epoch,
                        "step": step,
                        "steps": steps_per_epoch,
                        "loss": 1.0 / (step + 1),
                    }
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
        yield {"type": "done", "stopped": False, "checkpoint": "/server/folder/final"}

    return fake_train


def _wait_for(run, condition, timeout: float = 10.0) -> None:
    version, deadline = -1, time.time() + timeout
    while not condition(run.state) and time.time() < deadline:
        version = run.wait(version, timeout=0.5)


def test_training_run_is_single_streams_steps_and_stops_within_a_step(monkeypatch, ckpt_dir):
    import seg.training as ts
    from seg.ui import train

    monkeypatch.setattr(ts, "train", _fake_train())
    run = train.TrainingRun()
    store = ModelStore(ckpt_dir)
    run.start(ts.TrainConfig(model="cnn", epochs=3), "first", store.refresh)
    with pytest.raises(gr.Error, match="already in progress"):
        run.start(ts.TrainConfig(model="cnn", epochs=3), "second", store.refresh)
    _wait_for(run, lambda s: len(s.steps) >= 5)
    epoch, step, _ = run.state.steps[-1]
    assert run.state.steps_per_epoch == 50 and len(run.state.steps) >= 5, "every step is reported"
    bar = train.progress_html(run.state)
    assert 'max="50"' in bar and f"Epoch {epoch} of 3: step {step + 1} of 50" in bar
    _wait_for(run, lambda s: bool(s.rows))
    assert run.state.rows and run.state.samples is not None, "epoch rows and sample tiles recorded"
    assert run.state.samples.shape == (8, 8 * 3 + 8, 3)  # image | truth | prediction
    asked = time.monotonic()
    assert "already" not in run.stop()
    assert run.state.status == "stopping" and "stopping" in train.progress_html(run.state)
    run.join(10)
    assert time.monotonic() - asked < 2.0, "Stop takes effect between steps, not at the end of the epoch"
    assert run.state.status == "stopped" and run.state.checkpoint == "kept-best", "no server folder is shown"
    status, bar, loss, metric, samples, info = train.snapshot(run.state)
    assert "stopped" in status and info["events"][0]["type"] == "start"
    assert "/server" not in status + str(info)


def test_watch_skips_when_nothing_changed(tmp_path):
    from seg.deploy import Deployment
    from seg.ui import train
    from seg.ui.pickers import Serving

    board = train.RunBoard(Serving.from_deployment(Deployment(labels_root=tmp_path)))
    first = train.watch(board, None)
    again = train.watch(board, first[-1])
    assert all(isinstance(x, type(gr.skip())) for x in again[:-1]) and again[-1] == first[-1]


def test_the_timer_keeps_quiet_while_the_sessions_own_start_streams(monkeypatch, tmp_path, ckpt_dir):
    """A tick answered after a newer streamed snapshot would show the older one: while a session's
    Start streams, that session's ticks change nothing; other sessions' ticks follow the run."""
    import seg.training as ts
    from seg.deploy import Deployment
    from seg.ui import train
    from seg.ui.pickers import Serving

    monkeypatch.setattr(ts, "train", _fake_train(steps_per_epoch=20, epochs=1, step_s=0.01))
    monkeypatch.setattr(train, "dataset_available", lambda name: tmp_path)  # the data is never read (fake train)
    session = {"id": "starter"}
    monkeypatch.setattr(train, "_session", lambda: session["id"])
    board = train.RunBoard(Serving.from_deployment(Deployment(labels_root=tmp_path)))
    form = ("cnn", 1, 0.002, 2, 1.0, 0.5, "none", 0, "none", 10, 0, "quiet", train.DATA_SBD)
    stream = train.train_stream(board, ModelStore(ckpt_dir), *form)
    snapshots = [next(stream)]
    assert board.is_streaming("starter") and not board.is_streaming("other")
    assert all(isinstance(x, type(gr.skip())) for x in train.watch(board, None)), "the starter's timer is quiet"
    session["id"] = "other"
    assert "running" in train.watch(board, None)[0], "another page follows the run through its timer"
    monkeypatch.setattr(train, "STREAM_STALE_S", 0.0)
    assert not board.is_streaming("starter"), "a stream that stopped sending no longer silences the timer"
    monkeypatch.setattr(train, "STREAM_STALE_S", 10.0)
    assert board.is_streaming("starter")
    snapshots += list(stream)
    status = snapshots[-1][0]
    assert "done, 1 of 1 epochs" in status and "Best checkpoint: **final**" in status, "the stream ends on the end"
    assert not board.is_streaming("starter"), "the stream's end hands the display back to the timer"
    session["id"] = "starter"
    assert train.watch(board, None)[0] == status


def test_public_runs_are_bounded_owned_and_stopped_only_by_their_visitor(monkeypatch, tmp_path, ckpt_dir):
    """Two visitors: A's run is cut to the public limits, lives in A's space; B can neither see nor stop it,
    nor start another while the one slot is taken."""
    import seg.training as ts
    from seg.deploy import Deployment
    from seg.ui import train
    from seg.ui.app import base_store
    from seg.ui.pickers import Serving, VisitorStore, acting_as
    from seg.visitors import RunRefused

    monkeypatch.setattr(ts, "train", _fake_train(steps_per_epoch=400, epochs=1, step_s=0.02))
    monkeypatch.setattr(train, "dataset_available", lambda name: tmp_path)  # the data is never read (fake train)
    deployment = Deployment(
        public=True,
        visitor_root=tmp_path / "visitors",
        public_max_epochs=2,
        public_max_train_images=5,
        public_max_train_seconds=60,
        public_max_runs=1,
    )
    serving = Serving.from_deployment(deployment)
    store = VisitorStore(base_store(ckpt_dir, public=True), serving.visitors)
    board = train.RunBoard(serving)
    form = ("cnn", 50, 0.002, 2, 1.0, 0.5, "none", 0, "none", 100, 0, "mine", train.DATA_SBD)
    with acting_as("session:A"):
        stream = train.train_stream(board, store, *form)
        status, *_ = next(stream)
        run = board.run_for_viewer()
        assert run.state.config["epochs"] == 2 and run.state.config["limit"] == 5, "cut to the public limits"
        assert "limited to 2 epochs and 5 images" in run.state.note
        out = Path(store.for_key("session:A").directory)
        assert out.parent.parent == serving.visitors.root, "the checkpoint goes to the visitor's space"
    with acting_as("session:B"):
        assert board.run_for_viewer() is None, "B does not see A's run"
        assert "1 of 1 training slot" in train.watch(board, None)[0]
        with pytest.raises(RunRefused, match="no training run going"):
            board.stop()
        with pytest.raises(RunRefused, match="already going"):
            next(train.train_stream(board, store, *form))
    assert run.state.status == "running", "B's stop did not touch A's run"
    with acting_as("session:A"):
        assert "Stopping" in board.stop()
    run.join(10)
    assert run.state.status == "stopped" and not serving.slots.active(), "the slot is free again"


def test_a_public_train_form_starts_within_the_limits(tmp_path, ckpt_dir):
    """What a visitor's form shows is what the run gets: the epochs slider ends at the public limit and the
    image count starts at it; a local form keeps the full range."""
    from dataclasses import replace

    from seg.deploy import Deployment
    from seg.ui.app import build_app

    def form(deployment: Deployment) -> tuple[gr.Slider, gr.Number]:
        blocks = build_app(ckpt_dir, preload=False, deployment=deployment).blocks.values()
        by_id = {getattr(b, "elem_id", None): b for b in blocks}
        return by_id["train-epochs"], by_id["train-limit"]

    public = Deployment(
        public=True, visitor_root=tmp_path / "visitors", public_max_epochs=3, public_max_train_images=40
    )
    epochs, limit = form(public)
    assert (epochs.maximum, epochs.value, limit.value) == (3, 3, 40) and "at most 40" in limit.label
    epochs, _ = form(replace(public, public_max_epochs=1))  # a slider still has two ends
    assert (epochs.minimum, epochs.maximum, epochs.value) == (1, 2, 1)
    epochs, limit = form(Deployment(labels_root=tmp_path / "labels"))
    assert (epochs.maximum, epochs.value, limit.value) == (100, 10, 0)


def test_form_refusals_are_plain_sentences(tmp_path, monkeypatch):
    from seg.ui import train

    monkeypatch.setattr(train, "dataset_available", lambda name: None)
    store = ModelStore(tmp_path / "ckpts")
    good = ["cnn", 1, 0.002, 2, 1.0, 0.5, "none", 0, "none", 0, 0, "x"]
    for slot, bad, words in [
        (10, 1.5, "Seed must be a whole number"),
        (1, float("nan"), "Epochs must be a whole number"),
        (2, "/etc", "Learning rate must be a number"),
        (0, "../../unet", "Choose one of the listed models"),
    ]:
        form = list(good)
        form[slot] = bad
        with pytest.raises(gr.Error, match=words):
            train.make_config(store, *form, train.DATA_SBD)
    with pytest.raises(gr.Error) as err:
        train.make_config(store, *good[:10], 10**30, "x", train.DATA_SBD)  # any seed is fine; the data is not
    assert "needs the Stanford Background dataset" in err.value.message and "**" not in err.value.message


def test_the_train_form_offers_zoom_out_rotation_and_lovasz(tmp_path, monkeypatch):
    from seg.ui import train

    monkeypatch.setattr(train, "dataset_available", lambda name: tmp_path)
    store = ModelStore(tmp_path / "ckpts")
    form = ["unet", 3, 0.002, 2, 0.4, 0.5, "inverse_sqrt", 0, "none", 0, 0, "x", train.DATA_SBD]
    config, _ = train.make_config(store, *form, zoom_out=1.4, rotate=5, lovasz=0.5)
    assert (config.semantic.zoom_out, config.semantic.rotate, config.semantic.lovasz) == (1.4, 5.0, 0.5)
    assert config.command.endswith("zoom_out=1.4 rotate=5 lovasz=0.5"), "the card says how it was trained"
    plain, _ = train.make_config(store, *form)
    assert (plain.semantic.zoom_out, plain.semantic.rotate, plain.semantic.lovasz) == (1.0, 0.0, 0.0)
    assert "zoom_out" not in plain.command
    for lever, bad, words in [
        ("zoom_out", 0.5, "Zoom out must be a number from 1 up to 2"),
        ("rotate", 90, "Rotation must be a number from 0 up to 30"),
        ("lovasz", "/etc", "Lovasz weight must be a number"),
    ]:
        with pytest.raises(gr.Error, match=words):
            train.make_config(store, *form, **{lever: bad})


def test_the_train_form_offers_a_teacher_by_name_among_the_visible_models(tmp_path, monkeypatch):
    """Distillation from the Train tab: a listed semantic model's name (its path is the server's), with
    weight and temperature; anything else, or a model of other classes, is refused in plain words."""
    from seg.ui import train

    make_tiny_checkpoints(tmp_path / "ckpts")
    monkeypatch.setattr(train, "dataset_available", lambda name: tmp_path)
    store = ModelStore(tmp_path / "ckpts")
    form = ["cnn", 3, 0.002, 2, 0.4, 0.5, "inverse_sqrt", 0, "none", 0, 0, "x", train.DATA_SBD]
    config, _ = train.make_config(store, *form, distill_from="tiny-unet", distill_temperature=3)
    semantic = config.semantic
    assert Path(semantic.distill_from) == store.entry("tiny-unet").path
    assert (semantic.distill_weight, semantic.distill_temperature) == (1.0, 3.0)
    assert config.command.endswith("distill_from=tiny-unet weight=1 temperature=3"), "the card says how"
    assert train._public_config(config)["semantic"]["distill_from"] == "tiny-unet", "viewers see no server path"
    for no_teacher in (None, "", train.NO_TEACHER):
        plain, _ = train.make_config(store, *form, distill_from=no_teacher)
        assert plain.semantic.distill_from is None and "distill" not in plain.command
    for settings, words in [
        ({"distill_from": "/etc"}, "Choose a listed model to learn from"),
        ({"distill_from": str(store.entry("tiny-unet").path)}, "Choose a listed model to learn from"),
        ({"distill_from": "tiny-dwt"}, "Choose a listed model to learn from"),  # an instance model
        ({"distill_from": ["tiny-unet"]}, "Choose a listed model to learn from"),
        ({"distill_weight": 9}, "Distillation weight must be a number from 0 up to 5"),
        ({"distill_temperature": 0}, "Distillation temperature must be a number from 0.5 up to 10"),
    ]:
        with pytest.raises(gr.Error, match=words):
            train.make_config(store, *form, **settings)
    (tmp_path / "classes.txt").write_text("sky\nrest\n")  # training data of other classes
    with pytest.raises(gr.Error, match="tiny-unet knows other classes than this training data"):
        train.make_config(store, *form, distill_from="tiny-unet")
    choices = train.teacher_choices(store, "gone")
    teachers = [n for n in store.best("semantic", k=3) if n != "tiny-prior"]  # the prior has nothing to teach
    assert "tiny-prior" in store.names("semantic") and len(teachers) == 2
    assert choices["choices"] == [train.NO_TEACHER, *teachers], "no teacher, then best first"
    assert "tiny-dwt" not in choices["choices"] and choices["value"] == train.NO_TEACHER
    (tmp_path / "classes.txt").unlink()
    with pytest.raises(gr.Error, match="Choose a listed model to learn from"):
        train.make_config(store, *form, distill_from="tiny-prior")


def test_events_refuse_in_plain_sentences_and_log_faults_once(caplog):
    """Every handler is wrapped: a handler's gr.Error loses Markdown and paths; a bug gets a generic
    sentence (logged with its traceback), an expected refusal is logged at INFO without one."""
    import logging

    from seg.ui.messages import guard_events

    def refuse():
        raise gr.Error("**Cannot open** `/srv/secret/labels/ws`: FileNotFoundError: gone")

    def crash():
        raise RuntimeError("boom at /srv/secret/file.py")

    def stream():
        yield "first"
        raise ValueError("cannot convert float NaN to integer")

    with gr.Blocks() as demo:
        out = gr.Textbox()
        for fn in (refuse, crash, stream):
            gr.Button().click(fn, None, out)
    guard_events(demo)
    fns = [f.fn for f in demo.fns.values()]
    with caplog.at_level(logging.INFO, logger="seg.ui"):
        with pytest.raises(gr.Error) as refused:
            fns[0]()
        with pytest.raises(gr.Error) as crashed:
            fns[1]()
        generator = fns[2]()
        assert next(generator) == "first"
        with pytest.raises(gr.Error) as nan:
            next(generator)
    assert refused.value.message == "Cannot open ws: gone." and not refused.value.print_exception
    assert "Something went wrong on the server" in crashed.value.message and "/srv" not in crashed.value.message
    assert nan.value.message == "A number you entered is not a valid number."
    levels = {r.levelname for r in caplog.records}
    assert levels == {"INFO", "ERROR"} and sum(r.exc_info is not None for r in caplog.records) == 1


def test_read_image_reads_uploads_but_no_other_server_file(tmp_path, monkeypatch):
    from PIL import Image

    from seg.ui import uploads

    uploaded = tmp_path / "gradio" / "abc" / "photo.png"
    uploaded.parent.mkdir(parents=True)
    Image.new("RGB", (12, 8), (10, 20, 30)).save(uploaded)
    elsewhere = tmp_path / "elsewhere.png"
    Image.new("RGB", (12, 8), (10, 20, 30)).save(elsewhere)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    assert uploads.read_image(str(uploaded)).shape == (8, 12, 3)
    assert uploads.read_image({"path": str(uploaded)}).shape == (8, 12, 3)
    for bad in (
        str(elsewhere),
        {"path": str(elsewhere)},
        "/etc/passwd",
        str(tmp_path / "gradio" / ".." / "elsewhere.png"),
        "/proc/self/environ",
        "x\x00y",
        ["/etc/passwd"],
    ):
        with pytest.raises(gr.Error) as err:
            uploads.read_image(bad)
        assert str(tmp_path) not in err.value.message


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
    # a tab switch refreshes every model list, the teacher's included (no teacher first, then models)
    switches = [fn for fn in demo.fns.values() if any(t[1] == "select" for t in fn.targets) and fn.outputs]
    refresh = next(fn for fn in switches if any(getattr(o, "elem_id", None) == "train-teacher" for o in fn.outputs))
    teacher_slot = [getattr(o, "elem_id", None) for o in refresh.outputs].index("train-teacher")
    updates = refresh.fn(*[None] * len(refresh.inputs))
    from seg.ui.train import NO_TEACHER

    assert updates[teacher_slot]["choices"][0] == NO_TEACHER and updates[teacher_slot]["value"] == NO_TEACHER


def test_opening_the_evaluate_tab_fills_it_from_the_cards(ckpt_dir):
    """A visitor opening Evaluate sees the cards' comparison at once; a table already filled (say, by a
    recomputation) is left alone, and values no page sends change nothing and raise nothing."""
    from seg.ui.app import build_app

    demo = build_app(ckpt_dir)
    opened = [
        fn
        for fn in demo.fns.values()
        if any(t[1] == "select" for t in fn.targets)
        and any(getattr(o, "elem_id", None) == "evaluate-table" for o in fn.outputs)
    ]
    assert len(opened) == 1
    fill = opened[0].fn
    table, *_, note = fill(["tiny-cnn"], "val", None)
    card = demo.seg_store.card("tiny-cnn")["val_metrics"]
    assert table["data"][0][:3] == ["tiny-cnn", card_architecture(demo, "tiny-cnn"), "card"]
    assert table["data"][0][3] == pytest.approx(card["miou"], abs=1e-3) and "cards" in note
    untouched = fill(["tiny-cnn"], "val", table)
    assert all(update == gr.skip() for update in untouched)
    for hostile in (("/etc/passwd", "../../x", {"data": 3}), ([["x"]], 7, "table"), (["tiny-cnn"], "train", None)):
        assert all(update == gr.skip() for update in fill(*hostile))
    everything, *_ = fill(None, None, None)  # no choice sent: every model, as the Evaluate button does
    assert {row[0] for row in everything["data"]} == set(demo.seg_store.names("semantic"))


def card_architecture(demo, name: str) -> str:
    return demo.seg_store.card(name).get("architecture", "?")


def test_evaluate_reads_the_split_the_cards_hold():
    """Card metrics follow the Split choice: the shipped cards hold test metrics besides val, with the
    8-class protocol of the published results; a split a card lacks is named, not replaced by val."""
    from seg.config import REPO_ROOT
    from seg.ui import evaluate as tab

    store = ModelStore(REPO_ROOT / "checkpoints")
    table, *_, note = tab.evaluate(store, ["unet"], "card", "test")
    row = dict(zip(tab.TABLE_HEADERS, table["data"][0]))
    held = store.card("unet")["test_metrics"]
    assert row["source"] == "card (test)" and "test split" in note
    assert row["mIoU"] == pytest.approx(held["miou"], abs=1e-3)
    assert row["pixel acc (8)"] == pytest.approx(held["pixel_accuracy_8"], abs=1e-3)
    assert row["class acc (8)"] == pytest.approx(held["class_accuracy_8"], abs=1e-3)
    with pytest.raises(gr.Error, match="no train metrics"):
        tab.evaluate(store, ["unet"], "card", "train")


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
    # the queue's per-event statistics summary (a pandas table of past events) is rebuilt rarely
    assert demo._queue.ANAYLTICS_CACHE_FREQUENCY >= 1000


def test_the_apps_entry_points_pause_the_collector_for_the_imports_and_main_resumes_it_frozen():
    """``python app.py`` and ``seglab-app`` import the app with the garbage collector paused; after the
    server starts, what exists is frozen out of later passes and collection goes on."""
    import tomllib

    from seg.config import REPO_ROOT
    from seg.ui.app import settle_startup_heap

    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert scripts["seglab-app"] == "seg.ui:main"
    probe = (  # the real seg.ui.app.main would serve: a stand-in reports the collector's state instead
        "import gc, runpy, sys, types\n"
        "sys.modules['seg.ui.app'] = types.SimpleNamespace(main=lambda argv=None: print(gc.isenabled()))\n"
        "{}\n"
    )
    for start in ("runpy.run_path('app.py', run_name='__main__')", "import seg.ui; seg.ui.main([])"):
        done = subprocess.run(
            [sys.executable, "-c", probe.format(start)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() == "False", (start, done.stdout)  # paused until main settles the heap
    was_enabled, frozen = gc.isenabled(), gc.get_freeze_count()
    gc.disable()
    try:
        settle_startup_heap()
        assert gc.isenabled()
        assert gc.get_freeze_count() > frozen
    finally:
        if not was_enabled:
            gc.disable()


def test_seglab_app_without_the_app_extra_says_what_to_install():
    from seg.config import REPO_ROOT

    probe = "import sys\nsys.modules['gradio'] = None  # not installed\nfrom seg.ui import main\nmain(['--help'])\n"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == "seglab-app: the dashboard needs gradio: pip install 'seglab[app]'"


def test_command_line_sets_mode_and_login(tmp_path):
    from seg.deploy import Deployment
    from seg.ui.app import deployment_launch_kwargs, parse_args

    args = parse_args(["--public", "--auth", "ada:s3cret:x", "--port", "7861"])
    deployment = Deployment.from_args(args, environ={"SEG_VISITOR_DIR": str(tmp_path)})
    kwargs = deployment_launch_kwargs(deployment)
    assert deployment.public and args.port == 7861
    assert kwargs["auth"] == [("ada", "s3cret:x")] and kwargs["show_error"] is False
    local = Deployment.from_args(parse_args([]), environ={"SEG_AUTH": "bob:pw"})
    assert not local.public and deployment_launch_kwargs(local)["auth"] == [("bob", "pw")]
    assert "auth" not in deployment_launch_kwargs(Deployment.from_args(parse_args([]), environ={}))


def test_label_workspaces_are_chosen_by_name_never_by_path(tmp_path):
    from seg.deploy import Deployment
    from seg.ui import label
    from seg.ui.pickers import Serving

    root, outside = tmp_path / "labels", tmp_path / "outside"
    outside.mkdir()
    (outside / "test").write_text("a file named test")
    root.mkdir()
    (root / "escape").symlink_to(outside, target_is_directory=True)
    access = label.WorkspaceAccess(Serving.from_deployment(Deployment(labels_root=root)))
    for bad in ("/tmp/x/brand/new/ws", "../outside", "~/ws", "a" * 5000, "ws\x00x", str(outside), "escape", ".."):
        with pytest.raises((ValueError, gr.Error)) as err:
            label.do_create(access, bad, label.LabelSession())
        assert str(tmp_path) not in str(err.value)
        with pytest.raises((ValueError, gr.Error)):
            label.do_open(access, bad, label.LabelSession())
    assert sorted(p.name for p in root.iterdir()) == ["escape"] and sorted(p.name for p in outside.iterdir()) == [
        "test"
    ]
    session, progress, *_ = label.do_create(access, "mine", label.LabelSession())
    assert session.workspace == "mine" and (root / "mine" / "classes.txt").is_file()
    assert "workspace `mine`" in progress and str(tmp_path) not in progress
    with pytest.raises(ValueError, match="exists already"):
        label.do_create(access, "mine", label.LabelSession())
    assert access.names() == ["mine"]
    assert label.do_open(access, "mine", label.LabelSession())[0].root == str(root / "mine")


def test_label_public_workspace_is_the_visitors_own(tmp_path):
    import zipfile

    from PIL import Image

    from seg.deploy import Deployment
    from seg.ui import label
    from seg.ui.pickers import Serving, acting_as

    serving = Serving.from_deployment(Deployment(public=True, visitor_root=tmp_path / "visitors"))
    access = label.WorkspaceAccess(serving)
    photo = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (20, 120, 40)).save(photo)
    with acting_as("session:ada"):
        assert access.workspace(label.LabelSession()) is None, "looking makes no folder"
        assert not (tmp_path / "visitors").exists() or not any((tmp_path / "visitors").iterdir())
        session, progress, *_ = label.do_upload(access, [str(photo)], label.LabelSession())
        assert "1 of 200 images" in progress and str(tmp_path) not in progress
        ada_root = session.root
    with acting_as("session:bob"):
        assert access.workspace(label.LabelSession(root=ada_root)) is None, "a session's folder is never trusted"
        with pytest.raises(gr.Error, match="nothing to download"):
            label.do_download(access)
    with acting_as("session:ada"):
        with zipfile.ZipFile(label.do_download(access)) as archive:
            assert "workspace/unlabeled/photo.jpg" in archive.namelist()
        *_, note = label.do_delete(access, session)
        assert "deleted" in note and access.workspace(label.LabelSession()) is None


@pytest.mark.slow  # a fresh interpreter imports gradio and torch: 8-11 s
def test_the_app_starts_without_torchvision_and_draws_the_augment_grid_on_page_load(ckpt_dir, sbd_root):
    """Building the app must not import torchvision (it pulls in torch._dynamo, seconds of a cold start);
    the Augment tab's first grid is drawn once, by a page-load event, and reused."""
    code = (
        "import sys\n"
        "from seg.ui.app import build_app\n"
        f"demo = build_app({str(ckpt_dir)!r}, preload=False)\n"
        "print(sorted(m for m in ('torchvision', 'torch._dynamo') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout

    from seg.ui.app import build_app

    demo = build_app(ckpt_dir, preload=False)
    loads = [fn for fn in demo.fns.values() if any(t[1] == "load" for t in fn.targets)]
    grid_loads = [fn for fn in loads if any(getattr(o, "elem_id", None) == "augment-gallery" for o in fn.outputs)]
    assert len(grid_loads) == 1
    draw = grid_loads[0].fn
    assert all(isinstance(v, type(gr.skip())) for v in draw("a grid the visitor chose")), "never over theirs"
    grid, caption = draw()
    assert [c for _, c in grid][0] == "original" and len(grid) == 9 and caption, "the original and 8 augmented"
    assert draw()[0] is grid, "drawn once, then reused"


def test_the_compare_tab_places_the_shipped_ensemble_beside_the_trained_models(tmp_path):
    """The ensemble has no epochs of its own (shown as a dash, not 0) and still has a place on the
    model axis of the setting plot, like every trained checkpoint."""
    from seg.config import REPO_ROOT
    from seg.ui import compare

    rows = compare.collect(ModelStore(REPO_ROOT / "checkpoints"), root=tmp_path / "no-runs")
    table = {row[0]: row for row in compare.table_rows(rows)}
    assert table["ensemble"][3] == "–" and table["unet"][3] == str(
        len(ModelStore(REPO_ROOT / "checkpoints").card("unet")["curve"])
    )
    figure = compare.hyper_figure(rows, "model")
    assert set(figure.data[0].text) == {r.id for r in rows} and "ensemble" in figure.data[0].x


def test_each_app_process_serves_from_a_gradio_folder_of_its_own(monkeypatch, tmp_path, ckpt_dir):
    """Gradio names cached pictures by content and deletes what an app created when it stops: two
    dashboards sharing one folder broke each other's pictures (the same original in an augmentation
    grid). Each process now claims its own folder, and removes those of processes that no longer run."""
    import tempfile

    from seg.ui.app import build_app
    from seg.ui.uploads import OWN_FOLDER_PREFIX, claim_upload_folder, readable_roots

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("GRADIO_TEMP_DIR", "")  # unset for this test; restored afterwards
    shared = tmp_path / "gradio"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])  # a pid that has exited
    gone.wait()
    dead, alive = shared / f"{OWN_FOLDER_PREFIX}{gone.pid}", shared / f"{OWN_FOLDER_PREFIX}{os.getppid()}"
    others = [shared / "0f3a9c", shared / f"{OWN_FOLDER_PREFIX}not-a-pid"]
    for folder in [dead, alive, *others]:
        (folder / "cached").mkdir(parents=True)
        (folder / "cached" / "image.webp").write_bytes(b"x")

    demo = build_app(ckpt_dir, preload=False)
    own = shared / f"{OWN_FOLDER_PREFIX}{os.getpid()}"
    assert os.environ["GRADIO_TEMP_DIR"] == str(own) and own.is_dir()
    assert {Path(b.GRADIO_CACHE) for b in demo.blocks.values()} == {own}, "every component caches there"
    assert own.resolve() in readable_roots(), "uploads are read from the folder Gradio writes them to"
    assert not dead.exists() and alive.is_dir() and all(folder.is_dir() for folder in others)
    dead.mkdir()  # a process claims once: building a second app does not sweep again
    assert claim_upload_folder() == own.resolve() and dead.is_dir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(alive))  # inherited from the process that started this one
    assert claim_upload_folder() == own.resolve() and os.environ["GRADIO_TEMP_DIR"] == str(own)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "chosen"))  # a folder the operator names is kept
    build_app(ckpt_dir, preload=False)
    assert os.environ["GRADIO_TEMP_DIR"] == str(tmp_path / "chosen")


def test_a_latency_measured_on_eager_is_measured_again_once_the_runtime_serves(monkeypatch, ckpt_dir):
    """The Evaluate tab's latency column: a model measured while eager PyTorch stood in for its serving
    runtime (still calibrating) must not keep that figure once the runtime serves it."""
    from seg.ui import evaluate as tab

    class Served:
        backend = "eager-fp32"
        calls = 0

        def predict(self, image):
            Served.calls += 1

    monkeypatch.setattr(tab, "get_predictor", lambda store, name: Served())
    monkeypatch.setattr(tab, "_latency_cache", {})  # other tests of this process measured these models
    store = ModelStore(ckpt_dir)
    name = store.names("semantic")[0]
    tab.measure_latency(store, name)
    tab.measure_latency(store, name)
    assert Served.calls == 4, "measured once (a warm-up and three runs), then read from the cache"
    Served.backend = "openvino-int8"
    assert tab.measure_latency(store, name) is not None and Served.calls == 8


def test_the_label_tab_prefills_with_the_most_accurate_model_by_default():
    """The prefill model starts as the best semantic model by its card (the shipped ensemble, not the
    first name in the list): the better the prefill, the less a labeller has to paint over."""
    from seg.config import REPO_ROOT
    from seg.ui.app import build_app

    demo = build_app(REPO_ROOT / "checkpoints", preload=False)
    by_id = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    store = demo.seg_store
    assert by_id["label-model"].value == store.best("semantic", 1)[0] != sorted(store.names("semantic"))[0]
