"""Checkpoints: safetensors + card round trip, corrupt files, listing."""

from __future__ import annotations

import json

import pytest
import torch

from seg.checkpoints import CheckpointError, list_checkpoints, load_checkpoint, save_checkpoint
from seg.models import create


def test_round_trip_fp16_and_card(tmp_path):
    model = create("unet", num_classes=9, base_channels=8).eval()
    save_checkpoint(tmp_path / "m", model, {"classes": ["a"] * 9, "encoder_init": "random", "seed": 3})
    card = json.loads((tmp_path / "m.json").read_text())
    assert card["architecture"] == "unet" and card["arch_kwargs"]["base_channels"] == 8
    assert card["weights_dtype"] == "float16" and card["params"] > 0
    loaded, card2 = load_checkpoint(tmp_path / "m.safetensors")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=5e-2)  # fp16 storage
    assert card2["seed"] == 3


def test_resunet_card_init_is_not_reapplied_on_load(tmp_path):
    model = create("resunet", encoder_init="none")
    save_checkpoint(tmp_path / "r", model, {"classes": ["c"] * 9})
    loaded, card = load_checkpoint(tmp_path / "r")
    assert card["arch_kwargs"]["encoder_init"] == "none"
    assert torch.allclose(loaded.encoder.conv1.weight, model.encoder.conv1.weight.half().float())


def test_corrupt_missing_and_mismatched(tmp_path):
    model = create("cnn", width=8)
    save_checkpoint(tmp_path / "ok", model, {})
    (tmp_path / "bad.json").write_text((tmp_path / "ok.json").read_text())
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "bad")
    (tmp_path / "nojson.safetensors").write_bytes((tmp_path / "ok.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path / "nojson")
    card = json.loads((tmp_path / "ok.json").read_text())
    card["arch_kwargs"]["width"] = 16
    (tmp_path / "wrong.json").write_text(json.dumps(card))
    (tmp_path / "wrong.safetensors").write_bytes((tmp_path / "ok.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(tmp_path / "wrong")
    (tmp_path / "garbage.json").write_text("{not json")
    infos = {i.name: i for i in list_checkpoints(tmp_path)}
    assert infos["ok"].available
    assert not infos["bad"].available and "corrupt" in infos["bad"].error  # found when listing, not on load
    assert not infos["garbage"].available and "JSON" in infos["garbage"].error
    assert set(infos) == {"ok", "bad", "wrong", "garbage"}


def test_a_pickle_is_never_loaded(tmp_path):
    """A .safetensors file holding a pickle payload is rejected, not executed."""
    model = create("cnn", width=8)
    save_checkpoint(tmp_path / "p", model, {})
    torch.save({"x": torch.zeros(1)}, tmp_path / "p.safetensors")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "p")


def test_int8_storage_halves_the_bytes_and_stays_close(tmp_path):
    from safetensors.torch import load_file

    from seg.checkpoints import INT8_SCALE_SUFFIX

    model = create("unet", num_classes=9, base_channels=8).eval()
    save_checkpoint(tmp_path / "h", model, {"classes": ["a"] * 9})
    save_checkpoint(tmp_path / "q", model, {"classes": ["a"] * 9}, weights="int8")
    stored = load_file(str(tmp_path / "q.safetensors"))
    conv = next(k for k, v in model.state_dict().items() if v.ndim == 4)
    assert stored[conv].dtype == torch.int8 and stored[conv + INT8_SCALE_SUFFIX].shape == (stored[conv].shape[0],)
    assert all(v.dtype != torch.int8 for k, v in stored.items() if model.state_dict().get(k, v).ndim < 2)
    half, quarter = ((tmp_path / f"{n}.safetensors").stat().st_size for n in "hq")
    assert quarter < 0.6 * half
    loaded, card = load_checkpoint(tmp_path / "q")
    assert card["weights_dtype"].startswith("int8")
    # every weight within half a quantisation step of the original, per output channel
    for key, value in model.state_dict().items():
        if value.ndim >= 2:
            step = value.reshape(len(value), -1).abs().amax(1) / 127
            err = (loaded.state_dict()[key] - value).reshape(len(value), -1).abs().amax(1)
            assert (err <= step * 0.5 + 1e-6).all(), key
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=5e-2)
    with pytest.raises(ValueError, match="weights must be"):
        save_checkpoint(tmp_path / "x", model, {}, weights="int4")


def test_a_scale_without_its_int8_weight_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    save_checkpoint(tmp_path / "q", create("cnn", width=8), {}, weights="int8")
    stored = load_file(str(tmp_path / "q.safetensors"))
    scale = next(k for k in stored if k.endswith(".int8_scale"))
    stored[scale[: -len(".int8_scale")]] = stored[scale[: -len(".int8_scale")]].half()  # no longer int8
    save_file(stored, str(tmp_path / "q.safetensors"))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "q")


def test_a_dot_in_a_checkpoint_name_is_part_of_the_name(tmp_path):
    """``runs/unet-lr0.5`` and ``runs/unet-lr0.4`` are two checkpoints, not both ``runs/unet-lr0``."""
    from seg.checkpoints import quantize_checkpoint
    from seg.ensemble import combine

    first = create("cnn", width=4).eval()
    second = create("cnn", width=6).eval()
    save_checkpoint(tmp_path / "cnn-lr0.5", first, {"classes": ["a"] * 9, "seed": 5})
    save_checkpoint(tmp_path / "cnn-lr0.4", second, {"classes": ["a"] * 9, "seed": 4})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["cnn-lr0.4.json", "cnn-lr0.4.safetensors", "cnn-lr0.5.json", "cnn-lr0.5.safetensors"]
    assert load_checkpoint(tmp_path / "cnn-lr0.5")[1]["seed"] == 5
    assert load_checkpoint(tmp_path / "cnn-lr0.4.json")[1]["arch_kwargs"]["width"] == 6
    assert sorted(info.name for info in list_checkpoints(tmp_path)) == ["cnn-lr0.4", "cnn-lr0.5"]

    card = quantize_checkpoint(tmp_path / "cnn-lr0.5", tmp_path / "cnn-lr0.5-int8.v2")
    assert card["quantized_from"]["checkpoint"] == "cnn-lr0.5"
    assert (tmp_path / "cnn-lr0.5-int8.v2.safetensors").is_file()
    ensemble = combine([tmp_path / "cnn-lr0.5", tmp_path / "cnn-lr0.4"], tmp_path / "both.e1")
    assert [m["checkpoint"] for m in ensemble["member_checkpoints"]] == ["cnn-lr0.5", "cnn-lr0.4"]
    assert load_checkpoint(tmp_path / "both.e1")[1]["architecture"] == "ensemble"
    assert not (tmp_path / "cnn-lr0.json").exists() and not (tmp_path / "both.json").exists()
