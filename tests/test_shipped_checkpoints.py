"""The shipped checkpoints: loadable, honest cards, within the size budget, and their
val-split numbers reproduce when recomputed from the weights (needs the data)."""

from __future__ import annotations

import pytest

from seg.checkpoints import list_checkpoints, load_checkpoint
from seg.config import REPO_ROOT
from seg.evaluate import evaluate_semantic_checkpoint

SHIPPED = REPO_ROOT / "checkpoints"
SEMANTIC = ("prior", "cnn", "unet", "resunet", "ensemble")


def _cards() -> dict:
    return {i.name: i for i in list_checkpoints(SHIPPED)}


def _shipped_instance_card(name: str, init_phrase: str) -> dict:
    """The card of a shipped, loadable instance checkpoint that says it has no pretrained weights."""
    info = _cards()[name]
    assert info.available, info.error
    card = info.card
    assert card["pretrained"] is False and init_phrase in card["encoder_init"]
    return card


def _shipped_instance_model(name: str, init_phrase: str, root) -> tuple:
    """A shipped instance checkpoint that says it has no pretrained weights, with its val split at the
    card's working height."""
    from seg.instances.data import load_instance_split

    card = _shipped_instance_card(name, init_phrase)
    model, _ = load_checkpoint(_cards()[name].path)
    return model.float(), card, load_instance_split(root, "val", card["work_height"])


def _assert_card_val(recomputed: dict, card: dict, keys: tuple[str, ...]) -> None:
    for key in keys:
        assert recomputed[key] == pytest.approx(card["val_metrics"][key], abs=1e-3), key


def test_all_shipped_checkpoints_load_and_fit_the_budget():
    infos = _cards()
    assert set(SEMANTIC) <= set(infos), f"missing: {set(SEMANTIC) - set(infos)}"
    total = sum(p.stat().st_size for p in SHIPPED.iterdir() if p.suffix in (".safetensors", ".json"))
    assert total < 60 * 1024 * 1024
    for name in SEMANTIC:
        assert infos[name].available, infos[name].error
        model, card = load_checkpoint(infos[name].path)
        made_by = "ensemble " if card["architecture"] == "ensemble" else f"train --model {name} "
        assert card["command"].startswith((f"python -m seg {made_by}", f"seglab {made_by}")), card["command"]
        assert card["data"]["split_rule"] and card["data"]["root_fingerprint"]


def test_resunet_card_says_how_its_encoder_was_initialised():
    card = _cards()["resunet"].card
    assert card["pretrained"] is False and "--encoder-init none" in card["command"]
    assert "no pretrained" in card["encoder_init"]


@pytest.mark.slow
@pytest.mark.parametrize("name", SEMANTIC)
def test_card_metrics_reproduce_on_val(sbd_root, name):
    info = _cards()[name]
    recomputed = evaluate_semantic_checkpoint(info.path, sbd_root, "val")
    card = info.card["val_metrics"]
    assert recomputed["num_images"] == card["num_images"]
    for key in ("miou", "map", "pixel_accuracy"):
        assert recomputed[key] == pytest.approx(card[key], abs=5e-3), key  # fp16 storage vs fp32 training


def test_model_ordering_on_val():
    m = {name: info.card["val_metrics"] for name, info in _cards().items() if name in SEMANTIC}
    assert 0.20 <= m["prior"]["map"] <= 0.28
    assert m["prior"]["miou"] < m["cnn"]["miou"] < m["unet"]["miou"]
    assert m["prior"]["map"] < m["cnn"]["map"] < m["unet"]["map"]
    assert m["ensemble"]["miou"] > max(m["unet"]["miou"], m["resunet"]["miou"])  # why it ships


def test_the_shipped_ensemble_is_made_of_the_shipped_members():
    cards = _cards()
    card = cards["ensemble"].card
    assert [m["checkpoint"] for m in card["member_checkpoints"]] == ["unet", "resunet"]
    for member in card["member_checkpoints"]:
        assert member["val_miou"] == cards[member["checkpoint"]].card["val_metrics"]["miou"]
    assert card["pretrained"] is False and "no pretrained weights" in card["encoder_init"]


@pytest.mark.slow
def test_shipped_dwt_card_is_honest_and_its_val_metrics_reproduce(serving_cache, run_started, pennfudan_root):
    """Eager fp32's val results (the maps at the working height, ranked candidates: the card's own
    scoring) recomputed from the weights once per test run: here, or by the serving contract's
    calibration if it came first (they share the copy)."""
    from seg.instances.data import ids_for_split
    from seg.instances.inference import InstancePredictor

    card = _shipped_instance_card("dwt", "no ImageNet or COCO")
    if card["architecture"] == "dwt_ensemble":  # every member's own training is on the card
        assert len(card["members"]) == card["arch_kwargs"]["members"] >= 2
        assert all(
            m["command"].startswith(("python -m seg train --model dwt", "seglab train --model dwt"))
            for m in card["members"]
        )
    predictor = InstancePredictor.from_checkpoint(SHIPPED / "dwt", runtime="eager")
    ids = ids_for_split(pennfudan_root, "val")
    recomputed = predictor.eager_val_results(pennfudan_root, ids, since=run_started)
    assert len(recomputed["counts"]) == len(ids) == card["val_metrics"]["num_images"]
    _assert_card_val(recomputed, card, ("mask_ap", "mask_ap50", "count_error"))


@pytest.mark.slow
def test_shipped_maskrcnn_card_val_metrics_reproduce(pennfudan_root):
    """The card's val metrics are its validation with the proposal count it was tuned to."""
    from seg.instances.inference import proposal_count
    from seg.instances.task import detector_val_metrics

    model, card, val = _shipped_instance_model("maskrcnn", "no pretrained weights", pennfudan_root)
    assert proposal_count(model) == card["arch_kwargs"].get("test_proposals", 1000)
    recomputed = detector_val_metrics(model, val, card["work_height"])
    _assert_card_val(recomputed, card, ("mask_ap", "mask_ap50", "box_ap", "count_error"))
