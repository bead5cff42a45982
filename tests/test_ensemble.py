"""Semantic ensembles: probabilities averaged; the checkpoint names its members and holds no copy of them."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from seg.checkpoints import CheckpointError, load_checkpoint, quantize_checkpoint, save_checkpoint
from seg.cli import main
from seg.ensemble import combine
from seg.models import create

CLASSES = [f"c{i}" for i in range(9)]


def _member(folder, name: str, arch: str, seed: int, **kwargs):
    torch.manual_seed(seed)
    model = create(arch, num_classes=9, **kwargs).eval()
    card = {
        "task": "semantic",
        "classes": CLASSES,
        "palette": [[i, i, i] for i in range(9)],
        "input_size": {"width": 48, "height": 32},
        "encoder_init": "random initialisation",
        "command": f"train {name}",
        "training_time_s": 10.0 + seed,
        "epochs_run": 2,
        "val_metrics": {"miou": 0.1 * (seed + 1)},
    }
    save_checkpoint(folder / name, model, card, weights="float32")
    return model


def test_combine_averages_probabilities_and_stores_only_the_mixing_weights(tmp_path):
    a = _member(tmp_path, "a", "unet", 0, base_channels=4)
    b = _member(tmp_path, "b", "cnn", 1, width=4)
    card = combine([tmp_path / "a", tmp_path / "b"], tmp_path / "both")
    assert set(load_file(str(tmp_path / "both.safetensors"))) == {"mix"}  # the members are not copied
    assert [m["checkpoint"] for m in card["member_checkpoints"]] == ["a", "b"]
    assert card["training_time_s"] == 21.0 and card["epochs_run"] == "2+2" and card["pretrained"] is False
    model, loaded_card = load_checkpoint(tmp_path / "both")
    assert loaded_card["architecture"] == "ensemble"
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        expected = ((a(x).softmax(1) + b(x).softmax(1)) / 2).log()
        assert torch.allclose(model(x), expected, atol=1e-5)


def test_a_changed_missing_or_foreign_member_is_refused(tmp_path):
    _member(tmp_path, "a", "cnn", 0, width=4)
    _member(tmp_path, "b", "cnn", 1, width=4)
    combine([tmp_path / "a", tmp_path / "b"], tmp_path / "e")
    _member(tmp_path, "b", "cnn", 2, width=4)  # retrained after the ensemble was made
    with pytest.raises(CheckpointError, match="changed since the ensemble was made"):
        load_checkpoint(tmp_path / "e")
    card = json.loads((tmp_path / "e.json").read_text())
    card["member_checkpoints"][1]["checkpoint"] = "../b"  # a card may not point out of its folder
    (tmp_path / "e.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="not a checkpoint name"):
        load_checkpoint(tmp_path / "e")
    other = tmp_path / "other"
    other.mkdir()
    _member(other, "c", "cnn", 3, width=4)
    with pytest.raises(ValueError, match="ensemble's folder"):
        combine([tmp_path / "a", other / "c"], tmp_path / "f")
    with pytest.raises(ValueError, match="at least two"):
        combine([tmp_path / "a"], tmp_path / "g")


def test_an_ensemble_is_neither_trained_nor_quantised(tmp_path, capsys):
    with pytest.raises(ValueError, match="made from trained checkpoints"):
        create("ensemble")
    _member(tmp_path, "a", "cnn", 0, width=4)
    _member(tmp_path, "b", "cnn", 1, width=4)
    combine([tmp_path / "a", tmp_path / "b"], tmp_path / "e")
    with pytest.raises(CheckpointError, match="quantize the members"):
        quantize_checkpoint(tmp_path / "e", tmp_path / "q")
    assert main(["ensemble", str(tmp_path / "a"), "--out", str(tmp_path / "x")]) == 1
    assert "at least two" in capsys.readouterr().err


def test_training_forms_and_commands_do_not_offer_the_ensemble(capsys):
    from seg.models import available

    assert "ensemble" in available() and "ensemble" not in available(trainable_only=True)
    assert main(["train", "--model", "ensemble", "--out", "x"]) == 2
    assert "made with seglab ensemble" in capsys.readouterr().err


@pytest.mark.slow
def test_the_ensemble_command_measures_val_and_eval_and_predict_read_it(sbd_root, tmp_path, capsys):
    from PIL import Image

    from seg.classes import SBD_CLASSES, SBD_PALETTE

    for name, arch, seed, kwargs in (("a", "unet", 0, {"base_channels": 4}), ("b", "cnn", 1, {"width": 4})):
        torch.manual_seed(seed)
        card = {
            "task": "semantic",
            "classes": list(SBD_CLASSES),
            "palette": [list(c) for c in SBD_PALETTE],
            "input_size": {"width": 288, "height": 224},
            "encoder_init": "random initialisation",
        }
        save_checkpoint(tmp_path / name, create(arch, num_classes=9, **kwargs).eval(), card)
    assert main(["ensemble", "a", "b", "--out", "ab", "--checkpoint-dir", str(tmp_path), "--data", str(sbd_root)]) == 0
    card = json.loads((tmp_path / "ab.json").read_text())
    assert card["val_metrics"]["num_images"] == 64 and 0 <= card["val_metrics"]["miou"] <= 1
    assert "wrote" in capsys.readouterr().out
    ab = str(tmp_path / "ab")
    assert main(["eval", "--checkpoint", ab, "--data", str(sbd_root), "--json", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["miou"] == pytest.approx(card["val_metrics"]["miou"], abs=1e-6)
    photo = tmp_path / "photo.png"
    Image.new("RGB", (300, 200), (90, 140, 200)).save(photo)
    out = tmp_path / "preds"
    assert main(["predict", "--checkpoint", ab, str(photo), "--out", str(out), "--runtime", "eager"]) == 0
    assert Image.open(next(out.glob("photo*.png"))).size == (300, 200)
