"""The engine and the CLI end to end on a few real images (skipped without the data)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seg.cli import main
from seg.data.sbd import load_split
from seg.engine import Stage, run
from seg.train_semantic import SemanticTask, SemanticTrainConfig, build_stages, train_semantic

CARD_KEYS = {"architecture", "arch_kwargs", "classes", "palette", "encoder_init", "data", "command", "seed",
             "training_time_s", "curve", "val_metrics"}


def test_cli_train_eval_predict(sbd_root, tmp_path, capsys):
    out = tmp_path / "tiny"
    assert main(["train", "--model", "unet", "--arch", "base_channels=4", "--epochs", "1", "--limit", "6",
                 "--batch-size", "3", "--out", str(out), "--quiet"]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert CARD_KEYS <= set(card)
    assert card["data"]["num_train"] == 6 and "SHA-1" in card["data"]["split_rule"]
    assert "no pretrained" in card["encoder_init"] and card["pretrained"] is False
    assert card["command"].startswith("python -m seg train")
    assert {"miou", "map", "per_class", "confusion_matrix"} <= set(card["val_metrics"])

    # warm restart from that checkpoint: lineage on the card; another architecture is refused
    again = tmp_path / "again"
    assert main(["train", "--model", "unet", "--arch", "base_channels=4", "--epochs", "1", "--limit", "6",
                 "--batch-size", "3", "--out", str(again), "--init-from", str(out), "--quiet"]) == 0
    lineage = json.loads(again.with_suffix(".json").read_text())["init_from"]
    assert lineage["checkpoint"] == "tiny" and lineage["total_epochs"] == 1 and "--out" in lineage["command"]
    with pytest.raises(ValueError, match="architecture"):
        main(["train", "--model", "cnn", "--epochs", "1", "--limit", "6", "--out", str(tmp_path / "x"),
              "--init-from", str(out), "--quiet"])

    report = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(out), "--split", "val", "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert {"miou", "map", "pixel_accuracy", "per_class", "confusion_matrix", "num_images"} <= set(result)
    assert result["num_images"] > 30 and set(result["per_class"]["sky"]) == {"iou", "ap"}
    assert np.asarray(result["confusion_matrix"]).sum() == result["num_images"] * 288 * 224
    assert "mean" in capsys.readouterr().out

    image = next((sbd_root / "images").glob("*.jpg"))
    preds = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(out), str(image), "--out", str(preds), "--probs"]) == 0
    label = Image.open(preds / f"{image.stem}.png")
    assert label.mode == "P" and label.size == Image.open(image).size
    probs = np.load(preds / f"{image.stem}.probs.npy")
    assert probs.dtype == np.float16 and probs.shape == (9, label.size[1], label.size[0])
    assert np.array_equal(np.asarray(label), probs.astype(np.float32).argmax(0)) or \
        (np.asarray(label) == probs.astype(np.float32).argmax(0)).mean() > 0.99  # fp16 ties


def test_stop_event_ends_between_steps_and_keeps_best(sbd_root, tmp_path):
    config = SemanticTrainConfig(model="cnn", data_dir=str(sbd_root), out=str(tmp_path / "c"), epochs=3,
                                 limit=16, batch_size=2, model_kwargs={"width": 4})
    stop = threading.Event()
    events = []
    for event in train_semantic(config, stop_event=stop):
        events.append(event)
        if event["type"] == "epoch":
            stop.set()
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("epoch") == 1
    assert events[-1]["stopped"] is True
    assert (tmp_path / "c.safetensors").is_file()
    epoch_event = next(e for e in events if e["type"] == "epoch")
    assert {"train_loss", "val_loss", "score", "metrics", "elapsed", "samples"} <= set(epoch_event)
    assert epoch_event["samples"][0]["pred"].shape == (224, 288)


def test_frozen_stage_leaves_encoder_untouched(sbd_root):
    config = SemanticTrainConfig(model="resunet", data_dir=str(sbd_root), epochs=2, frozen_epochs=1,
                                 limit=4, batch_size=2, train_size=(96, 64))
    stages = build_stages(config)
    assert [s.name for s in stages] == ["frozen", "unfrozen"] and stages[0].frozen == ("encoder.",)
    from seg.models import create
    model = create("resunet")
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    task = SemanticTask(load_split(sbd_root, "train", limit=4), load_split(sbd_root, "val", limit=2), config, None)
    list(run(model, task, stages[:1], out=None, card={}))
    after = model.encoder.state_dict()
    assert all(torch.equal(before[k], after[k].cpu()) for k in before)  # weights and BN statistics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes(sbd_root, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "-m", "seg", "train", "--model", "unet", "--arch", "base_channels=4", "--epochs", "1", "--limit", "8",
           "--batch-size", "2", "--out", str(out), "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["world_size"] == 2
    assert proc.stdout.count("epoch 1/1") == 1  # only rank 0 reports and writes
    assert card["val_metrics"]["num_images"] == 8


def test_bf16_precision_trains_and_is_recorded(sbd_root):
    from seg.engine import resolve_precision

    assert resolve_precision("auto", torch.device("cpu")) is None  # CPU default stays fp32
    assert resolve_precision("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError):
        resolve_precision("fp16", torch.device("cpu"))
    config = SemanticTrainConfig(model="cnn", data_dir=str(sbd_root), epochs=2, limit=8, batch_size=4,
                                 model_kwargs={"width": 4}, precision="bf16", train_size=(96, 64))
    events = list(train_semantic(config))
    assert events[0]["precision"] == "bfloat16"
    epochs = [e for e in events if e["type"] == "epoch"]
    assert all(np.isfinite(e["train_loss"]) for e in epochs)


def test_ema_validates_and_saves_the_moving_average(sbd_root, tmp_path):
    from seg.checkpoints import load_checkpoint
    from seg.models import create

    config = SemanticTrainConfig(model="cnn", data_dir=str(sbd_root), epochs=1, limit=8, batch_size=2,
                                 model_kwargs={"width": 4}, train_size=(96, 64))
    task = SemanticTask(load_split(sbd_root, "train", limit=8), load_split(sbd_root, "val", limit=2), config, None)
    torch.manual_seed(0)
    model = create("cnn", width=4)
    after_steps: list[dict] = []

    class Recording:  # the task, noting the weights each step starts from (= where the last one ended)
        def __getattr__(self, name):
            return getattr(task, name)

        def train_step(self, m, batch, device):
            after_steps.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            return task.train_step(m, batch, device)

    decay = 0.6
    list(run(model, Recording(), [Stage("main", 1, 1e-2)], out=str(tmp_path / "ema"), card={}, ema_decay=decay))
    after_steps = after_steps[1:] + [{k: v.detach().clone() for k, v in model.state_dict().items()}]
    assert len(after_steps) == 4
    expected = {k: v.float() for k, v in after_steps[0].items()}
    for state in after_steps[1:]:
        for k, v in state.items():
            if v.is_floating_point():
                expected[k] = decay * expected[k] + (1 - decay) * v.float()
    saved, card = load_checkpoint(tmp_path / "ema")
    assert card["best_epoch"] == 1
    for k, v in saved.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, expected[k], atol=2e-3, rtol=2e-3)  # fp16 checkpoint
    last = after_steps[-1]
    assert any(not torch.allclose(saved.state_dict()[k], last[k].float(), atol=1e-2)
               for k in last if last[k].is_floating_point())  # not simply the last weights
