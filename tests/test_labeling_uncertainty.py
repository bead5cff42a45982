"""Uncertainty ranking: the per-pixel measures, which checkpoint counts as the workspace's own, and the
background ranker (scores equal to a direct computation, most uncertain first, recomputed when a
newer checkpoint or a new image appears, labelled images left out)."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from seg.checkpoints import save_checkpoint
from seg.labeling.classes import ClassList
from seg.labeling.uncertainty import (
    Ranking,
    UncertaintyRanker,
    entropy_map,
    image_score,
    latest_workspace_model,
    margin_map,
    model_probabilities,
    rank_images,
    workspace_models,
)
from seg.labeling.workspace import Workspace
from seg.models import create
from seg.modelstore import ModelStore

CLASSES = ClassList.create(["road", "car", "person"])


def test_entropy_and_margin_of_known_distributions():
    uniform = np.full((4, 2, 3), 0.25)
    certain = np.zeros((4, 2, 3))
    certain[2] = 1.0
    assert np.allclose(entropy_map(uniform), 1.0) and np.allclose(entropy_map(certain), 0.0)
    assert np.allclose(margin_map(uniform), 1.0) and np.allclose(margin_map(certain), 0.0)
    two_way = np.zeros((3, 1, 1))
    two_way[:2] = 0.5  # a tie between two of three classes: margin says "unsure", entropy log2/log3
    assert margin_map(two_way)[0, 0] == pytest.approx(1.0)
    assert entropy_map(two_way)[0, 0] == pytest.approx(np.log(2) / np.log(3))
    skewed = np.zeros((3, 1, 2))
    skewed[:, 0, 0] = (0.7, 0.2, 0.1)
    skewed[:, 0, 1] = (0.4, 0.35, 0.25)
    assert margin_map(skewed)[0].tolist() == pytest.approx([0.5, 0.95])
    # The image score is the mean over pixels, and orders images by how unsure the model is.
    assert image_score(skewed, "margin") == pytest.approx(0.725)
    assert image_score(uniform) > image_score(skewed) > image_score(certain)
    assert image_score(np.ones((1, 2, 2))) == 0.0  # one class: nothing to be unsure about
    with pytest.raises(ValueError, match="unknown"):
        image_score(uniform, "variance")


def _workspace(tmp_path, n_images: int = 4) -> Workspace:
    ws = Workspace(tmp_path / "ws", CLASSES)
    rng = np.random.default_rng(0)
    for k in range(n_images):
        image = np.zeros((48, 64, 3), np.uint8)
        image[:, : 16 * (k + 1)] = (40 * k, 200 - 30 * k, 90)
        image = np.clip(image.astype(int) + rng.integers(0, 25 * (k + 1), image.shape), 0, 255).astype(np.uint8)
        ws.import_image(image, name=f"img{k}.jpg")
    return ws


def _checkpoint(store_dir, name: str, data_dir, seed: int = 0) -> None:
    """A semantic checkpoint whose card says it was trained on ``data_dir`` (as ``prepare_semantic`` writes)."""
    torch.manual_seed(seed)
    model = create("cnn", num_classes=len(CLASSES.names), width=8, stages=2)
    card = {
        "task": "semantic",
        "classes": list(CLASSES.names),
        "palette": [list(c) for c in CLASSES.colours],
        "input_size": {"width": 64, "height": 48},
        "config": {"model": "cnn", "data_dir": str(data_dir)},
    }
    save_checkpoint(store_dir / name, model, card)


def test_workspace_models_are_the_ones_trained_on_it_newest_first(tmp_path):
    ws = _workspace(tmp_path, 1)
    other = Workspace(tmp_path / "other", CLASSES)
    ckpts = tmp_path / "ckpts"
    _checkpoint(ckpts, "ws-old", ws.root)
    _checkpoint(ckpts, "elsewhere", other.root)
    _checkpoint(ckpts, "ws-new", ws.root, seed=1)
    old = ckpts / "ws-old.safetensors"
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    store = ModelStore(ckpts)
    assert [name for name, _ in workspace_models(store, ws.root)] == ["ws-new", "ws-old"]
    assert latest_workspace_model(store, ws.root) == "ws-new"
    assert latest_workspace_model(store, other.root) == "elsewhere"
    assert latest_workspace_model(store, tmp_path / "nowhere") is None


def test_ranker_scores_in_the_background_and_follows_new_checkpoints_and_images(tmp_path):
    ws = _workspace(tmp_path, 4)
    ckpts = tmp_path / "ckpts"
    store = ModelStore(ckpts)
    ranker = UncertaintyRanker()
    assert ranker.request(ws, store) is None, "no workspace model yet: nothing to rank"

    _checkpoint(ckpts, "first", ws.root)
    store.refresh()
    started = ranker.request(ws, store)
    assert started is not None and started.model == "first" and started.candidates == frozenset(ws.names())
    ranking = ranker.wait(ws.root, timeout=120)
    assert ranking.state == "ready" and set(ranking.scores) == set(ws.names())
    predictor = store.predictor("first")
    for name, score in ranking.scores.items():  # exactly the direct computation
        direct = image_score(model_probabilities(predictor, ws.load(name).image))
        assert score == pytest.approx(direct, abs=1e-6)
    ordered = ranking.ordered()
    assert [s for _, s in ordered] == sorted(ranking.scores.values(), reverse=True)
    assert ranker.request(ws, store) is ranking, "nothing changed: no recomputation"

    # A saved mask takes an image out of the queue without a recomputation.
    top = ordered[0][0]
    ws.save(top, np.zeros(ws.load(top).image.shape[:2], np.uint8))
    unlabelled = [it.name for it in ws.items() if not it.labelled]
    assert top not in [n for n, _ in ranking.ordered(unlabelled)]
    assert ranker.request(ws, store) is ranking

    # A new image makes the ranking stale: only it is scored, the others keep their scores.
    ws.import_image(np.full((48, 64, 3), 128, np.uint8), name="grey.jpg")
    ranker.request(ws, store)
    again = ranker.wait(ws.root, timeout=120)
    assert set(again.scores) == set(unlabelled) | {"grey"}
    assert all(again.scores[n] == ranking.scores[n] for n in unlabelled)

    # The end of a training run refreshes the store: an attached ranker recomputes with the new checkpoint.
    ranker.attach(store)
    time.sleep(0.05)  # a later modification time than the first checkpoint's
    _checkpoint(ckpts, "second", ws.root, seed=3)
    store.refresh()
    newest = ranker.wait(ws.root, timeout=120)
    assert newest.model == "second" and newest.state == "ready"
    assert set(newest.scores) == {it.name for it in ws.items() if not it.labelled}
    assert newest.scores != {n: again.scores[n] for n in newest.scores}, "another model, other scores"


def test_rank_images_reports_unreadable_images(tmp_path):
    ws = _workspace(tmp_path, 2)
    ckpts = tmp_path / "ckpts"
    _checkpoint(ckpts, "m", ws.root)
    predictor = ModelStore(ckpts).predictor("m")
    (ws.root / "unlabeled" / "img1.jpg").write_bytes(b"not a jpeg")
    scores, failed = rank_images(ws, predictor, ["img0", "img1"], "margin")
    assert list(scores) == ["img0"] and failed == ["img1"] and 0.0 <= scores["img0"] <= 1.0


def test_ranking_orders_ties_by_name():
    ranking = Ranking("m", 0.0, "entropy", scores={"b": 0.5, "a": 0.5, "c": 0.9})
    assert ranking.ordered() == [("c", 0.9), ("a", 0.5), ("b", 0.5)]
    assert ranking.ordered(["a", "b"]) == [("a", 0.5), ("b", 0.5)]
