"""The workspace is a dataset: one epoch of training on a 6-image workspace, then prefill with the result."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from seg.cli import main
from seg.labeling.workspace import Workspace


def _scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sky above a horizon at a random row, grass below; label follows the picture."""
    rng = np.random.default_rng(seed)
    h, w = 112, 144
    horizon = int(rng.integers(30, 80))
    img = np.empty((h, w, 3), np.uint8)
    img[:horizon] = (90, 140, 230)
    img[horizon:] = (50, 130, 40)
    img = np.clip(img.astype(int) + rng.integers(0, 25, img.shape), 0, 255).astype(np.uint8)
    label = np.full((h, w), 3, np.uint8)
    label[:horizon] = 0
    return img, label


def test_one_epoch_on_a_six_image_workspace_then_prefill(tmp_path: Path, capsys):
    ws = Workspace(tmp_path / "ws")
    for i in range(6):
        img, label = _scene(i)
        name, _ = ws.import_image(img, name=f"shot{i}.jpg")
        ws.save(name, label, split="val" if i >= 4 else "train")
    ws.import_image(_scene(99)[0], name="todo.jpg")  # unlabelled: must be invisible to training
    assert ws.progress() == (6, 7)

    out = tmp_path / "ckpt" / "unet-labels"
    code = main(
        [
            "train",
            "--model",
            "unet",
            "--data",
            str(ws.root),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--arch",
            "base_channels=8",
            "--crop-fraction",
            "none",
            "--train-size",
            "144x112",
            "--threads",
            "2",
            "--quiet",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "epoch 1/1" in printed
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["classes"] == ws.classes
    assert out.with_suffix(".safetensors").is_file()

    from seg.inference import Predictor

    predictor = Predictor.from_checkpoint(out)
    loaded = ws.load("todo")
    prediction = predictor.predict(loaded.image)
    assert prediction.label.shape == loaded.image.shape[:2]
    assert int(prediction.label.max()) < ws.num_classes
    # Prefill -> save records the model and the pixels the person changed by hand.
    edited = prediction.label.copy()
    edited[:10] = 0
    result = ws.save("todo", edited, model=out.name, reference=prediction.label)
    assert result.changed_pixels == int((edited != prediction.label).sum())
    assert ws.versions("todo")[-1].model == "unet-labels"


def test_train_tab_trains_on_my_labels(tmp_path: Path):
    """The Train tab's "My labels" source resolves to the workspace; an empty one is refused clearly."""
    import gradio as gr
    import pytest

    from seg.modelstore import ModelStore
    from seg.ui.train import DATA_LABELS, make_config

    ws = Workspace(tmp_path / "ws")
    for i in range(3):
        img, label = _scene(i)
        name, _ = ws.import_image(img, name=f"s{i}.jpg")
        ws.save(name, label, split="val" if i == 0 else "train")
    store = ModelStore(tmp_path / "ckpts")
    form = ("unet", 1, 1e-3, 2, 1.0, 0.5, "none", 0, "none", 0, 0, "mine")
    config, name = make_config(store, *form, DATA_LABELS, str(ws.root))
    assert Path(config.data_dir) == ws.root and name == "mine"
    with pytest.raises(gr.Error):
        make_config(store, *form, DATA_LABELS, str(tmp_path / "empty-ws"))
