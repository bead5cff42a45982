"""The model store over several checkpoint folders: the shipped folder read-only, a visitor's writable
folder on top. Uses copies of the real shipped checkpoints, so loading and predicting are the real thing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from seg.config import REPO_ROOT
from seg.modelstore import (
    CheckpointFolder,
    CheckpointNameTaken,
    ModelStore,
    ModelUnavailable,
    ReadOnlyStore,
)

SHIPPED = REPO_ROOT / "checkpoints"


def _copy(name: str, folder: Path, as_name: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in (".json", ".safetensors"):
        shutil.copyfile(SHIPPED / f"{name}{suffix}", folder / f"{as_name or name}{suffix}")
    return folder / (as_name or name)


@pytest.fixture
def shipped(tmp_path) -> Path:
    """A read-only-to-the-store copy of three shipped checkpoints (two semantic, one instance)."""
    for name in ("cnn", "unet", "dwt"):
        if not (SHIPPED / f"{name}.safetensors").is_file():
            pytest.skip(f"shipped checkpoint {name} is not in this checkout")
        _copy(name, tmp_path / "shipped")
    return tmp_path / "shipped"


def _scene() -> np.ndarray:
    """A deterministic 240x320 outdoor-like picture: sky, trees, road."""
    rng = np.random.default_rng(0)
    image = np.zeros((240, 320, 3), np.uint8)
    image[:90] = (110, 160, 230)
    image[90:160] = (40, 110, 40)
    image[160:] = (90, 90, 95)
    return np.clip(image.astype(int) + rng.integers(-20, 20, image.shape), 0, 255).astype(np.uint8)


def test_read_only_store_lists_and_serves_but_never_gives_a_place_to_write(shipped):
    store = ModelStore(folders=[CheckpointFolder(shipped, writable=False, label="shipped")])
    assert store.names("semantic") == ["cnn", "unet"] and store.names("instances") == ["dwt"]
    assert store.writable_folder is None and not store.entry("cnn").writable
    with pytest.raises(ReadOnlyStore):
        _ = store.directory
    with pytest.raises(ReadOnlyStore):
        store.path_for_new("mine")
    assert type(store.predictor("dwt")).__name__ == "InstancePredictor", "the card's task picks the predictor"
    by_card = {n: json.loads((shipped / f"{n}.json").read_text())["val_metrics"]["miou"] for n in ("cnn", "unet")}
    assert store.best("semantic", 1) == [max(by_card, key=by_card.get)], "the higher validation mIoU on the card"


def test_visitor_overlay_adds_models_without_shadowing_shipped_ones(shipped, tmp_path):
    base = ModelStore(folders=[CheckpointFolder(shipped, writable=False, label="shipped")])
    visitor_dir = tmp_path / "visitor"
    visitor = base.overlay(visitor_dir, label="yours")
    assert visitor.names("semantic") == ["cnn", "unet"], "a visitor folder that does not exist yet is just empty"
    assert visitor.directory == visitor_dir.resolve() and visitor.writable_folder.label == "yours"

    _copy("cnn", visitor_dir, "mycnn")
    (visitor_dir / "unet.json").write_text(json.dumps({"task": "semantic", "architecture": "unet"}))
    (visitor_dir / "unet.safetensors").write_bytes(b"not weights")  # same name as a shipped model, and broken
    visitor.refresh()
    assert visitor.names("semantic") == ["cnn", "mycnn", "unet"]
    assert visitor.unavailable() == {}, "the visitor's 'unet' is hidden, not listed as a broken 'unet'"
    shipped_unet = visitor.entry("unet")
    assert shipped_unet.folder.label == "shipped" and shipped_unet.path.parent == shipped.resolve()
    assert not shipped_unet.writable and visitor.entry("mycnn").writable
    assert base.names("semantic") == ["cnn", "unet"], "the base store does not see the visitor's folder"

    with pytest.raises(CheckpointNameTaken):
        visitor.path_for_new("cnn")  # shipped
    with pytest.raises(CheckpointNameTaken):
        visitor.path_for_new("mycnn")  # the visitor's own
    with pytest.raises(ValueError):
        visitor.path_for_new("../outside")
    assert visitor.path_for_new("fresh") == visitor_dir.resolve() / "fresh"
    assert sorted(p.name for p in shipped.iterdir()) == sorted(
        f"{n}{s}" for n in ("cnn", "unet", "dwt") for s in (".json", ".safetensors")
    ), "nothing was written into the shipped folder"


def test_overlays_share_loaded_models_and_predict_like_the_shipped_file(shipped, tmp_path):
    from seg.inference import Predictor

    base = ModelStore(folders=[CheckpointFolder(shipped, writable=False)])
    first, second = base.overlay(tmp_path / "a"), base.overlay(tmp_path / "b")
    predictor = first.predictor("unet")
    assert second.predictor("unet") is predictor and base.predictor("unet") is predictor, "loaded once"
    image = _scene()
    direct = Predictor.from_checkpoint(SHIPPED / "unet").predict(image).label
    assert np.array_equal(predictor.predict(image).label, direct)

    _copy("cnn", tmp_path / "a", "mine")
    first.refresh()
    assert "mine" in first.names() and "mine" not in second.names(), "one visitor's model is not another's"
    with pytest.raises(ModelUnavailable, match="no such checkpoint"):
        second.predictor("mine")


def test_load_failure_is_remembered_until_the_files_change(shipped, tmp_path):
    store = ModelStore(folders=[CheckpointFolder(shipped, writable=False), tmp_path / "mine"])
    assert store.directory == (tmp_path / "mine").resolve(), "a plain path is a writable folder"
    mismatched = _copy("cnn", tmp_path / "mine", "mismatch")
    card = json.loads(mismatched.with_suffix(".json").read_text())
    shutil.copyfile(SHIPPED / "unet.safetensors", mismatched.with_suffix(".safetensors"))  # cnn card, unet weights
    store.refresh()
    assert "mismatch" in store.names(), "the header is fine, so it is listed until it is loaded"
    store.preload()
    reason = store.unavailable()["mismatch"]
    assert reason.startswith("failed to load") and "Error" not in reason, "a sentence, no exception class"
    store.refresh()
    assert "mismatch" in store.unavailable(), "the same files stay unavailable after a refresh"
    assert {"cnn", "unet"} <= set(store.names()), "the other models are unaffected"

    shutil.copyfile(SHIPPED / "cnn.safetensors", mismatched.with_suffix(".safetensors"))  # fixed in place
    mismatched.with_suffix(".json").write_text(json.dumps(card))
    store.refresh()
    assert "mismatch" not in store.unavailable()
    assert np.array_equal(
        store.predictor("mismatch").predict(_scene()).label, store.predictor("cnn").predict(_scene()).label
    )


def test_listeners_hear_every_refresh_and_a_failing_one_does_not_stop_the_rest(shipped):
    store = ModelStore(folders=[CheckpointFolder(shipped)])
    heard: list[int] = []
    store.on_refresh(lambda: 1 / 0)
    store.on_refresh(lambda: heard.append(len(store.names(None))))
    store.refresh()
    (shipped / "dwt.json").unlink()
    store.refresh()
    assert heard == [3, 2]
