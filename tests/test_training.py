"""The engine and the CLI end to end on a few real images (skipped without the data)."""

from __future__ import annotations

import copy
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
from seg.data.sbd import load_semantic_split
from seg.engine import Stage, run
from seg.semantic_task import SemanticTask, build_stages
from seg.training import SemanticOptions, TrainConfig, train

CARD_KEYS = {
    "architecture",
    "arch_kwargs",
    "classes",
    "palette",
    "encoder_init",
    "data",
    "command",
    "seed",
    "training_time_s",
    "curve",
    "val_metrics",
}


def tiny_cnn(sbd_root: Path, **changes) -> TrainConfig:
    """A 4-channel CNN on a few real images: the engine's behaviour in seconds."""
    settings = dict(model="cnn", data_dir=str(sbd_root), limit=8, batch_size=4, model_kwargs={"width": 4})
    return TrainConfig(**(settings | changes))


@pytest.mark.slow
def test_cli_train_eval_predict(sbd_root, tmp_path, capsys):
    out = tmp_path / "tiny"
    tiny = "train --model unet --arch base_channels=4 --epochs 1 --limit 6 --batch-size 3 --quiet".split()
    assert main([*tiny, "--out", str(out)]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert CARD_KEYS <= set(card)
    assert card["data"]["num_train"] == 6 and "SHA-1" in card["data"]["split_rule"]
    assert "no pretrained" in card["encoder_init"] and card["pretrained"] is False
    assert card["command"].startswith("seglab train")
    assert {"miou", "map", "per_class", "confusion_matrix"} <= set(card["val_metrics"])

    # warm restart from that checkpoint: lineage on the card; another architecture is refused
    again = tmp_path / "again"
    assert main([*tiny, "--out", str(again), "--init-from", str(out)]) == 0
    lineage = json.loads(again.with_suffix(".json").read_text())["init_from"]
    assert lineage["checkpoint"] == "tiny" and lineage["total_epochs"] == 1 and "--out" in lineage["command"]
    other = "train --model cnn --epochs 1 --limit 6 --quiet".split()
    assert main([*other, "--out", str(tmp_path / "x"), "--init-from", str(out)]) == 1
    assert "architecture" in capsys.readouterr().err

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
    assert (
        np.array_equal(np.asarray(label), probs.astype(np.float32).argmax(0))
        or (np.asarray(label) == probs.astype(np.float32).argmax(0)).mean() > 0.99
    )  # fp16 ties


def test_stop_event_ends_between_steps_and_keeps_best(sbd_root, tmp_path):
    config = tiny_cnn(sbd_root, out=str(tmp_path / "c"), epochs=3, limit=16, batch_size=2)
    stop = threading.Event()
    events = []
    for event in train(config, stop_event=stop):
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
    config = TrainConfig(
        model="resunet",
        data_dir=str(sbd_root),
        epochs=2,
        limit=4,
        batch_size=2,
        semantic=SemanticOptions(frozen_epochs=1, train_size=(96, 64)),
    )
    stages = build_stages(config)
    assert [s.name for s in stages] == ["frozen", "unfrozen"] and stages[0].frozen == ("encoder.",)
    from seg.models import create

    model = create("resunet")
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    task = SemanticTask(
        load_semantic_split(sbd_root, "train", limit=4),
        load_semantic_split(sbd_root, "val", limit=2),
        config.semantic,
        None,
        batch_size=2,
    )
    list(run(model, task, stages[:1], out=None, card={}))
    after = model.encoder.state_dict()
    assert all(torch.equal(before[k], after[k].cpu()) for k in before)  # weights and BN statistics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes(sbd_root, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        "-m",
        "seg",
        "train",
        "--model",
        "unet",
        "--arch",
        "base_channels=4",
        "--epochs",
        "1",
        "--limit",
        "8",
        "--batch-size",
        "2",
        "--out",
        str(out),
        "--quiet",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["world_size"] == 2
    assert proc.stdout.count("epoch 1/1") == 1  # only rank 0 reports and writes
    assert card["val_metrics"]["num_images"] == 8


def test_bf16_precision_trains_and_is_recorded(sbd_root, monkeypatch):
    from seg.engine import resolve_precision
    from seg.hardware import BF16_TRAINING_ENV, bf16_training_pays

    monkeypatch.delenv(BF16_TRAINING_ENV, raising=False)  # the CPU decides, as outside the tests
    auto = resolve_precision("auto", torch.device("cpu"))  # bf16 only where it pays (AMX, or measured)
    assert auto == (torch.bfloat16 if bf16_training_pays() else None)
    assert resolve_precision("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError):
        resolve_precision("fp16", torch.device("cpu"))
    config = tiny_cnn(sbd_root, epochs=2, precision="bf16", semantic=SemanticOptions(train_size=(96, 64)))
    events = list(train(config))
    assert events[0]["precision"] == "bfloat16"
    epochs = [e for e in events if e["type"] == "epoch"]
    assert all(np.isfinite(e["train_loss"]) for e in epochs)


def test_ema_validates_and_saves_the_moving_average(sbd_root, tmp_path):
    from seg.checkpoints import load_checkpoint
    from seg.models import create

    options = SemanticOptions(train_size=(96, 64))
    task = SemanticTask(
        load_semantic_split(sbd_root, "train", limit=8),
        load_semantic_split(sbd_root, "val", limit=2),
        options,
        None,
        batch_size=2,
    )
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
    assert any(
        not torch.allclose(saved.state_dict()[k], last[k].float(), atol=1e-2)
        for k in last
        if last[k].is_floating_point()
    )  # not simply the last weights


def test_resume_continues_an_interrupted_run_exactly(sbd_root, tmp_path):
    from seg.checkpoints import load_checkpoint
    from seg.resume import has_state

    def config(out: Path) -> TrainConfig:
        return tiny_cnn(sbd_root, out=str(out), epochs=3, semantic=SemanticOptions(train_size=(96, 64)))

    whole = [e for e in train(config(tmp_path / "whole")) if e["type"] == "epoch"]
    assert not has_state(tmp_path / "whole")  # a finished run leaves no state behind
    stop = threading.Event()
    for event in train(config(tmp_path / "cut"), stop_event=stop):
        if event["type"] == "step" and event["epoch"] == 2:
            stop.set()  # in the middle of epoch 2: the state of epoch 1 is kept
    assert has_state(tmp_path / "cut")
    rest = list(train(config(tmp_path / "cut"), resume=True))
    assert rest[0]["resumed_from_epoch"] == 1 and [e["epoch"] for e in rest if e["type"] == "epoch"] == [2, 3]
    a, _ = load_checkpoint(tmp_path / "whole")
    b, card = load_checkpoint(tmp_path / "cut")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert [r["score"] for r in card["curve"]] == [round(e["score"], 5) for e in whole]
    assert card["epochs_run"] == 3 and not has_state(tmp_path / "cut")


def test_flags_of_the_other_task_are_refused(capsys):
    assert main(["train", "--model", "dwt", "--out", "x", "--crop-fraction", "0.5"]) == 2
    assert "--crop-fraction applies to semantic models only; for dwt use --inst-crop" in capsys.readouterr().err
    assert main(["train", "--model", "unet", "--out", "x", "--inst-work-height", "160"]) == 2
    assert "for unet use --train-size" in capsys.readouterr().err
    assert main(["train", "--model", "maskrcnn", "--out", "x", "--frozen-epochs", "2"]) == 2
    assert "--frozen-epochs applies to semantic models only" in capsys.readouterr().err
    assert main(["train", "--model", "dwt", "--out", "x", "--lovasz", "0.5"]) == 2
    assert "--lovasz applies to semantic models only" in capsys.readouterr().err
    assert main(["train", "--model", "maskrcnn", "--out", "x", "--focal-gamma", "2"]) == 2
    assert "--focal-gamma applies to semantic models only" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        ("--epochs 0", "--epochs must be a whole number, 1 or more, got 0"),
        ("--lr -1", "--lr must be in [0, 1000]"),
        ("--lr nan", "--lr must be in [0, 1000]"),
        ("--batch-size 0", "--batch-size must be a whole number, 1 or more"),
        ("--weight-decay -0.1", "--weight-decay must be 0 or more"),
        ("--flip-p 1.5", "--flip-p must be in [0, 1]"),
        ("--color-jitter -1", "--color-jitter must be in [0, 1]"),
        ("--zoom-out 0.5", "--zoom-out must be in [1, 8]"),
        ("--rotate 400", "--rotate must be in [0, 180]"),
        ("--train-size 0x10", "--train-size needs a width and height of 1 px or more"),
        ("--model dwt --inst-crop 4", "--inst-crop must be a whole number, 16 or more"),
        ("--model dwt --inst-work-height 8", "--inst-work-height must be a whole number, 32 or more"),
        ("--model dwt --inst-val-images 0", "--inst-val-images must be a whole number, 1 or more"),
        ("--model dwt --inst-fg-balance -1", "--inst-fg-balance must be 0 or more"),
    ],
)
def test_settings_out_of_range_are_refused_by_their_flag_before_training(flags, said, capsys, tmp_path):
    """A run that would train nothing (0 epochs), diverge at once or fail inside torch is refused up front."""
    model = [] if "--model" in flags else ["--model", "cnn"]
    assert main(["train", *model, "--out", str(tmp_path / "x"), *flags.split()]) == 2
    assert said in capsys.readouterr().err
    assert not any(tmp_path.iterdir()), "nothing was written"


def test_counts_below_one_are_refused_by_the_parser_and_the_api(capsys):
    for command in (
        ["train", "--model", "cnn", "--out", "x", "--threads", "0"],
        ["eval", "--checkpoint", "unet", "--limit", "0"],
        ["predict", "--checkpoint", "unet", "x.png", "--out", "o", "--workers", "0"],
        ["tune-instances", "--checkpoint", "dwt", "--threads", "-1"],
        ["experiment", "sweep.toml", "--jobs", "0"],
    ):
        with pytest.raises(SystemExit) as stopped:
            main(command)
        assert stopped.value.code == 2 and "expected 1 or more, got" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--epochs must be a whole number"):
        TrainConfig(model="cnn", epochs=0)
    with pytest.raises(ValueError, match="--limit must be a whole number"):
        TrainConfig(model="cnn", limit=-3)
    with pytest.raises(ValueError, match="--batch-size must be a whole number"):
        TrainConfig(model="cnn", batch_size=2.5)


def _train_until_first_epoch_then_signal(cmd: list[str], sig: int) -> tuple[int, str]:
    """Run ``cmd``, send ``sig`` once it reports its first epoch, return (exit code, output)."""
    import signal as _signal  # noqa: F401 - the caller passes its members

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=Path(__file__).parent.parent
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("epoch 1/"):
            proc.send_signal(sig)
    return proc.wait(timeout=300), "".join(lines)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["unet", "dwt"])
def test_ctrl_c_and_sigterm_stop_cleanly_for_every_task(model, sbd_root, pennfudan_root, tmp_path):
    import signal

    out = tmp_path / model
    extra = (
        ["--arch", "base_channels=4", "--train-size", "96x64"]
        if model == "unet"
        else ["--arch", "base_channels=4", "--inst-work-height", "96", "--inst-crop", "96", "--inst-val-images", "2"]
    )
    cmd = [
        sys.executable,
        "-m",
        "seg",
        "train",
        "--model",
        model,
        "--epochs",
        "3",
        "--limit",
        "4",
        "--batch-size",
        "2",
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]
    sig = signal.SIGINT if model == "unet" else signal.SIGTERM
    code, output = _train_until_first_epoch_then_signal(cmd, sig)
    assert code == 0, output[-2000:]
    assert "Traceback" not in output and "stopped early" in output
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["stopped_early"] is True and card["epochs_run"] == 1 and len(card["curve"]) == 1
    proc = subprocess.run(
        [sys.executable, "-m", "seg", "train", "--resume", str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parent.parent,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["epochs_run"] == 3 and card["stopped_early"] is False


def test_a_stop_cuts_the_step_in_progress_short_and_nothing_is_applied():
    """StepInterrupt raises in the forward or the backward once a stop is asked, only while armed,
    and leaves no gradient behind; closed, it leaves the model as it was."""
    from torch import nn

    from seg.engine import StepInterrupt, StepInterrupted

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    stop = threading.Event()
    interrupt = StepInterrupt(model, stop)
    x = torch.randn(3, 4)
    stop.set()
    model(x).sum().backward()  # not armed (validation, samples): never cut short
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad(set_to_none=True)
    with pytest.raises(StepInterrupted), interrupt.armed():
        model(x)  # cut in the forward pass
    stop.clear()
    with pytest.raises(StepInterrupted), interrupt.armed():
        loss = model(x).sum()
        stop.set()
        loss.backward()  # cut in the backward pass
    assert all(p.grad is None for p in model.parameters()), "no gradient of the cut step is left to apply"
    interrupt.close()
    with interrupt.armed():
        model(x).sum().backward()  # hooks removed
    assert all(p.grad is not None for p in model.parameters())


def test_zoom_out_rotation_and_lovasz_train_and_are_recorded(sbd_root, tmp_path):
    options = SemanticOptions(crop_fraction=(0.5, 1.0), train_size=(144, 112), zoom_out=1.5, rotate=5.0, lovasz=0.5)
    config = tiny_cnn(sbd_root, out=str(tmp_path / "c"), epochs=1, semantic=options)
    events = list(train(config))
    epoch = next(e for e in events if e["type"] == "epoch")
    assert np.isfinite(epoch["train_loss"]) and epoch["train_loss"] > 0
    card = json.loads((tmp_path / "c.json").read_text())
    assert {k: card["config"]["semantic"][k] for k in ("zoom_out", "rotate", "lovasz")} == {
        "zoom_out": 1.5,
        "rotate": 5.0,
        "lovasz": 0.5,
    }


def test_distillation_learns_from_a_teacher_and_the_card_names_it(sbd_root, tmp_path):
    teacher_out = tmp_path / "teacher"
    list(train(tiny_cnn(sbd_root, out=str(teacher_out), epochs=1)))
    teacher_bytes = teacher_out.with_suffix(".safetensors").read_bytes()
    plain = tiny_cnn(sbd_root, out=str(tmp_path / "plain"), epochs=1, seed=3)
    options = SemanticOptions(distill_from=str(teacher_out), distill_weight=2.0, distill_temperature=3.0)
    distilled = tiny_cnn(sbd_root, out=str(tmp_path / "kd"), epochs=1, seed=3, semantic=options)
    first = [next(e for e in list(train(c, log_every=1)) if e["type"] == "step") for c in (plain, distilled)]
    # same seed, same first batch and weights: the distillation term is added on top of the plain loss
    assert first[1]["loss"] > first[0]["loss"]
    card = json.loads((tmp_path / "kd.json").read_text())
    assert card["distilled_from"]["checkpoint"] == str(teacher_out)
    assert (card["distilled_from"]["weight"], card["distilled_from"]["temperature"]) == (2.0, 3.0)
    assert card["distilled_from"]["architecture"] == "cnn" and card["pretrained"] is False
    assert teacher_out.with_suffix(".safetensors").read_bytes() == teacher_bytes, "the teacher is never trained"
    assert TrainConfig.from_dict(distilled.to_dict()).semantic == distilled.semantic, "--resume keeps the teacher"


def test_distillation_flags_are_checked(sbd_root, tmp_path, capsys):
    assert main(["train", "--model", "unet", "--out", "x", "--distill-weight", "0.5"]) == 2
    assert "--distill-weight and --distill-temperature need --distill-from" in capsys.readouterr().err
    assert main(["train", "--model", "dwt", "--out", "x", "--distill-from", "ensemble"]) == 2
    assert "--distill-from applies to semantic models only" in capsys.readouterr().err
    cold = ["--distill-from", "ensemble", "--distill-temperature", "0"]
    assert main(["train", "--model", "unet", "--out", "x", *cold]) == 2
    assert "--distill-temperature must be above 0" in capsys.readouterr().err
    from seg.semantic_task import _teacher

    with pytest.raises(ValueError, match="a semantic checkpoint with the classes a, b is needed"):
        _teacher("unet", ["a", "b"])
    with pytest.raises(ValueError, match="--distill-from prior: choose a model that looks at the image"):
        _teacher("prior", ["sky", "tree", "road", "grass", "water", "building", "mountain", "foreground", "misc"])


def test_class_mix_reaches_the_batches_and_leaves_other_runs_as_they_were(capsys):
    from seg.data.sbd import SegSplit

    masks = torch.arange(8, dtype=torch.uint8)[:, None, None].expand(8, 16, 16).clone()  # one class an image
    images = (masks * 30)[:, None].expand(8, 3, 16, 16).clone()
    split = SegSplit(images, masks, [str(i) for i in range(8)], list("abcdefgh"))
    options = {"crop_fraction": None, "color_jitter": 0.0, "flip_p": 0.0}

    def first_batch(**extra) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        task = SemanticTask(split, split, SemanticOptions(**options, **extra), None, batch_size=4)
        return next(iter(task.train_batches(0)))

    plain, off, mixed = first_batch(), first_batch(class_mix=0.0), first_batch(class_mix=1.0)
    assert torch.equal(plain[0], off[0]) and torch.equal(plain[1], off[1])
    # one class an image: every crop became the next crop of the batch, image and labels alike
    assert torch.equal(mixed[1], plain[1].roll(-1, 0)) and torch.equal(mixed[0], plain[0].roll(-1, 0))
    with pytest.raises(ValueError, match="--class-mix"):
        SemanticOptions(class_mix=1.5)
    assert main(["train", "--model", "dwt", "--out", "x", "--class-mix", "0.5"]) == 2
    assert "--class-mix applies to semantic models only; for dwt use --inst-copy-paste" in capsys.readouterr().err


def test_repeat_factor_sampling_draws_images_of_rare_classes_more_often(capsys):
    """LVIS's rule on a toy split: a class in 1 of 8 images with t = 0.5 gives its image a factor of sqrt(4) = 2;
    an epoch holds round(sum of factors) images (a fixed length: the schedule counts on it), each drawn in
    proportion to its factor, and the order follows the seed."""
    from seg.data.sbd import SegSplit
    from seg.semantic_task import repeat_factors

    masks = torch.zeros(8, 4, 4, dtype=torch.uint8)
    masks[:, 0] = 1  # class 1 in every image
    masks[0, 1] = 2  # class 2 in one image of eight
    masks[1:4, 2] = 3  # class 3 in three
    factors = repeat_factors(masks, 4, 0.5)
    assert factors[0] == pytest.approx(2.0)  # sqrt(0.5 / 0.125)
    assert factors[1:4].tolist() == pytest.approx([(0.5 / 0.375) ** 0.5] * 3)
    assert factors[4:].tolist() == [1.0] * 4
    assert repeat_factors(masks, 4, 0.0).tolist() == [1.0] * 8

    split = SegSplit(torch.zeros(8, 3, 4, 4, dtype=torch.uint8), masks, [str(i) for i in range(8)], list("abcd"))
    task = SemanticTask(split, split, SemanticOptions(rare_repeat=0.5), None, batch_size=2)
    assert task.epoch_images == round(factors.sum().item()) == 9 and task.steps_per_epoch() == 5
    counts = torch.zeros(8)
    for epoch in range(200):
        order = task.epoch_order(epoch)
        per_image = torch.bincount(order, minlength=8)
        assert len(order) == 9 and per_image[0] in (1, 2) and per_image[4:].max() <= 1
        counts += per_image
    share = 200 * 9 / factors.sum().item()  # draws per unit of factor over the 200 epochs
    assert counts[0].item() == pytest.approx(2 * share, rel=0.03)
    assert counts[1:4].mean().item() == pytest.approx(factors[1].item() * share, rel=0.05)
    assert counts[4:].mean().item() == pytest.approx(share, rel=0.05)
    assert torch.equal(task.epoch_order(3), task.epoch_order(3))
    with pytest.raises(ValueError, match="--rare-repeat"):
        SemanticOptions(rare_repeat=2.0)
    plain = SemanticTask(split, split, SemanticOptions(), None, batch_size=2)
    assert sorted(plain.epoch_order(0).tolist()) == list(range(8))
    assert main(["train", "--model", "dwt", "--out", "x", "--rare-repeat", "0.3"]) == 2
    assert "--rare-repeat applies to semantic models only" in capsys.readouterr().err


def test_a_global_context_block_joins_a_trained_model_as_an_identity_and_reads_the_whole_image(sbd_root, tmp_path):
    from seg.checkpoints import load_checkpoint, warm_start
    from seg.models import create
    from seg.models.common import GlobalContext

    settings = dict(model="unet", epochs=1, seed=3, model_kwargs={"base_channels": 4, "depth": 3})
    list(train(tiny_cnn(sbd_root, out=str(tmp_path / "plain"), **settings)))
    trained, _ = load_checkpoint(tmp_path / "plain")
    widened = create("unet", num_classes=9, base_channels=4, depth=3, context=True)
    assert "global-context block added as an identity" in warm_start(widened, tmp_path / "plain")["loaded"]
    x = torch.rand(2, 3, 64, 48)
    with torch.no_grad():
        assert torch.equal(widened.eval()(x), trained.eval()(x)), "a warm restart starts from the model's answers"

    # a round with the block trains it; dropping it again would change the answers, so it is refused
    context = dict(settings, model_kwargs=settings["model_kwargs"] | {"context": True})
    list(train(tiny_cnn(sbd_root, out=str(tmp_path / "ctx"), init_from=str(tmp_path / "plain"), **context)))
    with_block, card = load_checkpoint(tmp_path / "ctx")
    assert card["arch_kwargs"]["context"] is True and with_block.context.expand.weight.abs().sum() > 0
    with pytest.raises(RuntimeError):
        warm_start(create("unet", num_classes=9, base_channels=4, depth=3), tmp_path / "ctx")

    # every position hears about a change anywhere in the map, at any size
    block = GlobalContext(8).eval()
    torch.nn.init.normal_(block.expand.weight)
    feats = torch.rand(1, 8, 5, 7)
    changed = feats.clone()
    changed[..., 0, 0] += 1.0
    with torch.no_grad():
        far = block(changed)[..., 4, 6] - block(feats)[..., 4, 6]
    assert far.abs().max() > 0 and torch.equal(changed[..., 4, 6], feats[..., 4, 6])


def test_deep_supervision_trains_decoder_classifiers_that_inference_never_runs(sbd_root, tmp_path, capsys):
    from seg.checkpoints import load_checkpoint, warm_start
    from seg.models import create

    model = create("unet", num_classes=9, base_channels=4, depth=3, aux_heads=True).train()
    logits = model(torch.rand(2, 3, 64, 48))
    # one classifier per decoder stage but the last, coarsest first: 1/4 then 1/2 of the input
    assert [tuple(a.shape) for a in model.aux_logits] == [(2, 9, 16, 12), (2, 9, 32, 24)]
    assert logits.shape == (2, 9, 64, 48)
    plain = create("unet", num_classes=9, base_channels=4, depth=3).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("aux_heads.")})
    model.eval().aux_logits = []
    x = torch.rand(1, 3, 64, 48)
    assert torch.equal(model(x), plain(x)) and model.aux_logits == [], "inference is the plain U-Net's"

    settings = dict(model="unet", epochs=1, seed=3, model_kwargs={"base_channels": 4, "depth": 3})
    with_ds = tiny_cnn(sbd_root, out=str(tmp_path / "ds"), semantic=SemanticOptions(deep_supervision=0.5), **settings)
    without = tiny_cnn(sbd_root, out=str(tmp_path / "plain"), **settings)
    first = [next(e for e in list(train(c, log_every=1)) if e["type"] == "step") for c in (without, with_ds)]
    assert first[1]["loss"] > first[0]["loss"], "the classifiers' cross entropy is added on top of the plain loss"
    card = json.loads((tmp_path / "ds.json").read_text())
    assert card["arch_kwargs"]["aux_heads"] is True and card["config"]["semantic"]["deep_supervision"] == 0.5
    trained, _ = load_checkpoint(tmp_path / "ds")
    assert not torch.equal(trained.aux_heads[0].weight, model.aux_heads[0].weight)

    # warm restarts may drop the classifiers or add fresh ones; any other difference is still refused
    assert "heads are dropped" in warm_start(plain, tmp_path / "ds")["loaded"]
    assert "heads start fresh" in warm_start(model, tmp_path / "plain")["loaded"]
    with pytest.raises(RuntimeError):
        warm_start(create("unet", num_classes=9, base_channels=8, depth=3, aux_heads=True), tmp_path / "plain")

    assert main(["train", "--model", "cnn", "--out", "x", "--deep-supervision", "0.5"]) == 2
    assert "--deep-supervision is for unet" in capsys.readouterr().err
    assert main(["train", "--model", "dwt", "--out", "x", "--deep-supervision", "0.5"]) == 2
    assert "--deep-supervision applies to semantic models only" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--deep-supervision must be 0 or more"):
        SemanticOptions(deep_supervision=-1.0)


def test_the_optimiser_uses_the_fused_kernel_on_the_cpu_and_updates_as_the_plain_one():
    """Same gradients, same update, across parameter groups; a device without the kernel gets the plain loop."""
    from seg.optim import adamw

    torch.manual_seed(0)
    plain_model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    fused_model = copy.deepcopy(plain_model)
    groups = [
        {"params": list(fused_model[0].parameters()), "lr": 1e-3},
        {"params": list(fused_model[1].parameters()), "lr": 1e-4},
    ]
    fused = adamw(groups, lr=1e-3, weight_decay=1e-4)
    plain = torch.optim.AdamW(
        [
            {"params": list(plain_model[0].parameters()), "lr": 1e-3},
            {"params": list(plain_model[1].parameters()), "lr": 1e-4},
        ],
        lr=1e-3,
        weight_decay=1e-4,
        foreach=False,
    )
    assert fused.defaults["fused"] is True
    x = torch.rand(2, 3, 8, 8)
    for _ in range(3):
        grads = torch.autograd.grad(plain_model(x).square().mean(), list(plain_model.parameters()))
        for model, optimiser in ((plain_model, plain), (fused_model, fused)):
            for p, g in zip(model.parameters(), grads):
                p.grad = g.clone()
            optimiser.step()
    for p, q in zip(plain_model.parameters(), fused_model.parameters()):
        assert torch.allclose(p, q, atol=1e-6), (p - q).abs().max()
    # parameters on a device without the kernel get the plain loop
    meta = adamw([torch.nn.Parameter(torch.zeros(2, device="meta"))], lr=1e-3)
    assert not meta.defaults["fused"]


def test_a_resumed_fused_optimiser_steps_as_the_uninterrupted_one_on_channels_last_weights(tmp_path):
    """The saved moments are contiguous; a channels-last convolution's come back in its layout, which PyTorch's
    fused AdamW needs (it walks a parameter's memory and its moments' in step)."""
    from seg.optim import adamw
    from seg.resume import load_state, restore_optimization, save_state

    torch.manual_seed(0)
    start = torch.nn.Conv2d(4, 4, 3).to(memory_format=torch.channels_last)
    x = torch.rand(2, 4, 9, 9).contiguous(memory_format=torch.channels_last)

    def steps(model: torch.nn.Module, optimiser: torch.optim.Optimizer, count: int) -> None:
        for _ in range(count):
            optimiser.zero_grad()
            model(x).square().mean().backward()
            optimiser.step()

    def constant(optimiser: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1.0)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # gradients summed in one order, so both runs see the same ones
    try:
        straight = copy.deepcopy(start)
        steps(straight, adamw(straight.parameters(), 1e-2), 4)
        first = copy.deepcopy(start)
        optimiser = adamw(first.parameters(), 1e-2)
        assert optimiser.defaults["fused"]
        steps(first, optimiser, 2)
        save_state(
            tmp_path / "run",
            model=first,
            ema=None,
            optimizer=optimiser,
            scheduler=constant(optimiser),
            scaler=None,
            meta={},
        )
        resumed = copy.deepcopy(first)
        optimiser = adamw(resumed.parameters(), 1e-2)
        restore_optimization(load_state(tmp_path / "run"), optimiser, constant(optimiser), None)
        steps(resumed, optimiser, 2)
    finally:
        torch.set_num_threads(threads)
    # a moment in the wrong layout moves these weights by up to 2e-2
    torch.testing.assert_close(resumed.weight, straight.weight, atol=1e-6, rtol=0)
    torch.testing.assert_close(resumed.bias, straight.bias, atol=1e-6, rtol=0)
