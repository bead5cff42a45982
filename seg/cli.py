"""Command line: ``seglab`` / ``python -m seg`` with train, eval, predict, quantize, download, results-table,
plus the instance models' and the labeling workspace's own commands.

``eval`` and ``predict`` read the checkpoint's card and dispatch on its task, so one
grammar serves semantic and instance checkpoints (``eval-instances``/``predict-instances``
remain as aliases). Heavy imports happen inside the commands so that ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from seg import experiments
from seg.config import dataset_dir, positive_int, resolve_checkpoint
from seg.instances import cli as instances_cli
from seg.labeling import cli as labeling_cli
from seg.memory import reuse_freed_memory

PROG = "seglab"

#: train flags that only one task has -> (the task, the other task's counterpart or None)
SEMANTIC_ONLY = {
    "crop_fraction": "--inst-crop",
    "flip_p": None,
    "color_jitter": None,
    "zoom_out": None,
    "rotate": None,
    "lovasz": None,
    "deep_supervision": None,
    "focal_gamma": None,
    "rare_repeat": None,
    "class_mix": "--inst-copy-paste",
    "distill_from": None,
    "distill_weight": None,
    "distill_temperature": None,
    "train_size": None,
    "class_weighting": None,
    "frozen_epochs": None,
    "encoder_lr_ratio": None,
    "val_split": None,
}
INSTANCE_ONLY = {
    "crop": "--crop-fraction",
    "work_height": "--train-size",
    "fg_balance": "--class-weights",
    "direction": None,
    "copy_paste": "--class-mix",
    "paste_shrink": None,
    "val_images": "--limit",
}
FLAG_NAMES = {
    "crop_fraction": "--crop-fraction",
    "flip_p": "--flip-p",
    "color_jitter": "--color-jitter",
    "zoom_out": "--zoom-out",
    "rotate": "--rotate",
    "lovasz": "--lovasz",
    "deep_supervision": "--deep-supervision",
    "focal_gamma": "--focal-gamma",
    "rare_repeat": "--rare-repeat",
    "class_mix": "--class-mix",
    "distill_from": "--distill-from",
    "distill_weight": "--distill-weight",
    "distill_temperature": "--distill-temperature",
    "train_size": "--train-size",
    "class_weighting": "--class-weights",
    "frozen_epochs": "--frozen-epochs",
    "encoder_lr_ratio": "--encoder-lr-ratio",
    "val_split": "--val-split",
    "crop": "--inst-crop",
    "work_height": "--inst-work-height",
    "fg_balance": "--inst-fg-balance",
    "direction": "--inst-direction",
    "copy_paste": "--inst-copy-paste",
    "paste_shrink": "--inst-paste-shrink",
    "val_images": "--inst-val-images",
}


def _crop_fraction(text: str) -> tuple[float, float] | None:
    """'0.25' -> (0.25, 0.25); '0.25,1' -> (0.25, 1.0); 'none' -> None."""
    if text.lower() == "none":
        return None
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("crop fraction is a number or 'min,max'") from None
    if len(parts) == 1:
        return (parts[0], parts[0])
    if len(parts) == 2:
        return (parts[0], parts[1])
    raise argparse.ArgumentTypeError("crop fraction is a number or 'min,max'")


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError("size is WIDTHxHEIGHT, e.g. 144x112") from None
    return w, h


def _arch_kwarg(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError("use KEY=VALUE, e.g. base_channels=16")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _checkpoint_dir_flag(p: argparse.ArgumentParser) -> None:
    """``--checkpoint-dir`` also after the command (``SUPPRESS``: the global value is not overwritten)."""
    p.add_argument("--checkpoint-dir", default=argparse.SUPPRESS, help="where checkpoint names are looked up first")


def _threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


# -- train ----------------------------------------------------------------------------------


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train any model; writes <out>.safetensors + <out>.json (its card)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--model", help="a registered model: prior, cnn, unet, resunet (semantic); dwt, maskrcnn (instances)"
    )
    p.add_argument("--out", help="checkpoint path stem, e.g. checkpoints/unet")
    p.add_argument(
        "--resume",
        metavar="RUN",
        default=None,
        help="continue the interrupted run whose checkpoint stem is RUN, exactly where its last finished "
        "epoch left it (model, optimizer, schedule, epoch, random state); other flags are ignored",
    )
    p.add_argument("--data", help="the dataset's own folder (overrides $SEG_DATA_DIR), or a labeling workspace")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument(
        "--batch-size",
        "--inst-batch-size",
        dest="batch_size",
        type=int,
        default=None,
        help="images per step (default: semantic 8, dwt 4, maskrcnn 2)",
    )
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--encoder-init",
        default="none",
        help="resunet/maskrcnn encoder: 'imagenet' (torchvision weights API / hub cache), a local weights "
        "file, or 'none'",
    )
    p.add_argument(
        "--arch",
        type=_arch_kwarg,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="architecture argument, e.g. --arch base_channels=16",
    )
    p.add_argument(
        "--init-from",
        default=None,
        metavar="CHECKPOINT",
        help="start from a checkpoint of the same architecture (warm restart); for dwt also a semantic "
        "checkpoint of its body (e.g. checkpoints/unet); recorded on the card",
    )
    p.add_argument(
        "--ema",
        type=float,
        default=None,
        metavar="DECAY",
        help="validate and save an exponential moving average of the weights (e.g. 0.995)",
    )
    p.add_argument(
        "--limit",
        "--inst-max-images",
        dest="limit",
        type=positive_int,
        default=None,
        help="use only the first N images of each split (smoke tests)",
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="training-step precision: auto = fp16 mixed precision on CUDA; on a CPU bf16 where it "
        "measurably pays (AMX), else fp32",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    sem = p.add_argument_group("semantic models (prior, cnn, unet, resunet)")
    sem.add_argument(
        "--crop-fraction",
        dest="crop_fraction",
        type=_crop_fraction,
        default=None,
        help="crop area as a fraction of the image: one value (e.g. 0.25) or a range 'min,max'; "
        "'none' (default 0.25,1)",
    )
    sem.add_argument("--flip-p", dest="flip_p", type=float, default=None, help="horizontal flip probability (0.5)")
    sem.add_argument("--color-jitter", dest="color_jitter", type=float, default=None, help="(0.2)")
    sem.add_argument(
        "--zoom-out",
        dest="zoom_out",
        type=float,
        default=None,
        help="half the time, put the image on a canvas up to this many times its side (default 1: never)",
    )
    sem.add_argument("--rotate", type=float, default=None, help="random rotation up to +- degrees (default 0)")
    sem.add_argument(
        "--lovasz",
        type=float,
        default=None,
        help="weight of a Lovasz-softmax (IoU surrogate) term beside the weighted cross entropy (default 0)",
    )
    sem.add_argument(
        "--focal-gamma",
        dest="focal_gamma",
        type=float,
        default=None,
        metavar="G",
        help="focal loss: each pixel's weighted cross entropy times (1 - p)^G, so the pixels already right "
        "count less (e.g. 2; default 0: plain weighted cross entropy)",
    )
    sem.add_argument(
        "--deep-supervision",
        dest="deep_supervision",
        type=float,
        default=None,
        metavar="W",
        help="unet: classifiers on the coarser decoder stages, their weighted cross entropy added with weight W at "
        "half resolution, halved for each coarser stage (e.g. 0.5; default 0: off; unused at inference)",
    )
    sem.add_argument(
        "--rare-repeat",
        dest="rare_repeat",
        type=float,
        default=None,
        metavar="T",
        help="repeat factor sampling: an image whose rarest class is in a share f < T of the train images is "
        "drawn about sqrt(T / f) times an epoch (e.g. 0.3; default 0: each image once)",
    )
    sem.add_argument(
        "--class-mix",
        dest="class_mix",
        type=float,
        default=None,
        metavar="P",
        help="ClassMix: a share P of the crops get the pixels of a random half of the classes of another crop "
        "in the batch pasted over them, labels with them (e.g. 0.5; default 0)",
    )
    sem.add_argument(
        "--distill-from",
        dest="distill_from",
        default=None,
        metavar="CHECKPOINT",
        help="a semantic checkpoint (e.g. the ensemble) whose softened answers the model also learns "
        "(knowledge distillation, KL on the valid pixels; default: none)",
    )
    sem.add_argument(
        "--distill-weight",
        dest="distill_weight",
        type=float,
        default=None,
        help="weight of the distillation term beside the weighted cross entropy (1)",
    )
    sem.add_argument(
        "--distill-temperature",
        dest="distill_temperature",
        type=float,
        default=None,
        help="softmax temperature of the distillation term (2)",
    )
    sem.add_argument(
        "--train-size",
        dest="train_size",
        type=_size,
        default=None,
        metavar="WxH",
        help="size the crops are resized to for training, e.g. 144x112 (default: the full 288x224)",
    )
    sem.add_argument(
        "--class-weights",
        dest="class_weighting",
        default=None,
        choices=("none", "inverse_sqrt", "inverse"),
        help="cross-entropy class weights from training-set frequencies (inverse_sqrt)",
    )
    sem.add_argument(
        "--frozen-epochs",
        dest="frozen_epochs",
        type=int,
        default=None,
        help="epochs with the encoder frozen before unfreezing (default 3 for resunet, else 0)",
    )
    sem.add_argument(
        "--encoder-lr-ratio",
        dest="encoder_lr_ratio",
        type=float,
        default=None,
        help="encoder learning rate as a fraction of --lr once unfrozen (0.1)",
    )
    sem.add_argument("--val-split", dest="val_split", default=None, choices=("val", "test"))
    inst = p.add_argument_group("instance models (dwt, maskrcnn)")
    inst.add_argument(
        "--inst-crop", dest="crop", type=int, default=None, help="training crop side in px (dwt 224, maskrcnn 320)"
    )
    inst.add_argument(
        "--inst-work-height",
        dest="work_height",
        type=int,
        default=None,
        help="dwt: image height to train and run at (default 224; inference uses the card's)",
    )
    inst.add_argument(
        "--inst-fg-balance",
        dest="fg_balance",
        type=float,
        default=None,
        help="dwt: weight of an extra foreground term over pedestrian pixels weighted 1/sqrt(instance "
        "area), so small pedestrians count (default 0: plain cross entropy)",
    )
    inst.add_argument(
        "--inst-direction",
        dest="direction",
        type=float,
        default=None,
        help="dwt: weight of the loss of a training-only head that predicts the direction away from the "
        "nearest boundary (the paper's direction network; inference never runs it; default 0: no head)",
    )
    inst.add_argument(
        "--inst-copy-paste",
        dest="copy_paste",
        type=float,
        default=None,
        help="share of training crops that get some of another crop's pedestrians pasted over them "
        "(Simple Copy-Paste; default 0)",
    )
    inst.add_argument(
        "--inst-paste-shrink",
        dest="paste_shrink",
        type=float,
        default=None,
        help="scale pasted pedestrians by a random factor in [S, 1] and place them at random, so the model "
        "meets small pedestrians (default 1: same size, same place)",
    )
    inst.add_argument(
        "--inst-val-images", dest="val_images", type=int, default=None, help="validate on the first N val images"
    )
    p.set_defaults(func=cmd_train)


def config_from_args(args: argparse.Namespace):
    """The ``TrainConfig`` of a ``train`` command line; a flag the model does not have is refused."""
    from dataclasses import fields

    from seg.models import available, task_of
    from seg.training import InstanceOptions, SemanticOptions, TrainConfig

    if not args.model or not args.out:
        raise ValueError("train needs --model and --out (or --resume RUN)")
    if args.model not in available(trainable_only=True):
        hint = "; an ensemble is made with seglab ensemble" if args.model in available() else ""
        raise ValueError(f"unknown model {args.model!r}; trainable: {', '.join(available(trainable_only=True))}{hint}")
    task = task_of(args.model)
    own, foreign = (SEMANTIC_ONLY, INSTANCE_ONLY) if task == "semantic" else (INSTANCE_ONLY, SEMANTIC_ONLY)
    for key, counterpart in foreign.items():
        if getattr(args, key, None) is not None:
            hint = f"; for {args.model} use {counterpart}" if counterpart else f"; {args.model} has no such setting"
            raise ValueError(
                f"{FLAG_NAMES[key]} applies to {'instance' if task == 'semantic' else 'semantic'} models only{hint}"
            )
    if args.distill_from is None and (args.distill_weight is not None or args.distill_temperature is not None):
        raise ValueError("--distill-weight and --distill-temperature need --distill-from CHECKPOINT")
    options_type = SemanticOptions if task == "semantic" else InstanceOptions
    options = options_type(
        **{f.name: getattr(args, f.name) for f in fields(options_type) if getattr(args, f.name, None) is not None}
    )
    data = args.data or dataset_dir("sbd" if task == "semantic" else "pennfudan")
    return TrainConfig(
        model=args.model,
        data_dir=str(data),
        out=args.out,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        weight_decay=args.weight_decay,
        seed=args.seed,
        encoder_init=args.encoder_init,
        model_kwargs=dict(args.arch),
        limit=args.limit,
        device=args.device,
        precision=args.precision,
        ema_decay=args.ema,
        init_from=args.init_from,
        command=f"{PROG} " + " ".join(shlex.quote(a) for a in args.argv),
        **{task: options},
    )


def cmd_train(args: argparse.Namespace) -> int:
    from seg.training import TrainConfig, stop_on_signals, train

    _threads(args)
    try:
        if args.resume:
            from seg.resume import has_state, read_meta

            if not has_state(args.resume):
                raise ValueError(f"{args.resume}: no saved training state to resume (finished, or never started)")
            saved = dict(read_meta(args.resume)["config"])
            command = saved.pop("command", None)
            config = TrainConfig.from_dict(saved)
            config.command = command
            config.out = str(args.resume)
        else:
            config = config_from_args(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with stop_on_signals() as stop:
        try:
            return report_events(train(config, stop_event=stop, resume=bool(args.resume)), args.quiet)
        except (ValueError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1


def report_events(events, quiet: bool) -> int:
    """Print the engine's events: a progress bar per epoch and one line per epoch."""
    from tqdm import tqdm

    bar = None
    rank0 = int(os.environ.get("RANK", "0")) == 0
    for event in events:
        if not rank0:
            continue
        kind = event["type"]
        if kind == "start":
            resumed = f", resumed after epoch {event['resumed_from_epoch']}" if event.get("resumed_from_epoch") else ""
            print(
                f"training on {event['device']} ({event.get('precision', 'float32')}, world size "
                f"{event['world_size']}), {event['epochs']} epochs{resumed}",
                flush=True,
            )
        elif kind == "step" and not quiet:
            if bar is None:
                bar = tqdm(desc=f"epoch {event['epoch']}", total=event.get("steps"), unit="step", leave=False)
            bar.update(event["step"] + 1 - bar.n)
            bar.set_postfix(loss=f"{event['loss']:.3f}")
        elif kind == "epoch":
            if bar is not None:
                bar.close()
                bar = None
            m = event["metrics"]
            extras = "  ".join(
                f"{k} {m[k]:.4f}"
                for k in ("miou", "map", "pixel_accuracy", "mask_ap", "mask_ap50")
                if isinstance(m.get(k), (int, float))
            )
            tl = event["train_loss"]
            print(
                f"epoch {event['epoch']}/{event['epochs']} [{event['stage']}] "
                f"train_loss {tl if tl is None else round(tl, 4)} val_loss {event['val_loss']} {extras} "
                f"{'*' if event['improved'] else ''} ({event['elapsed']:.0f}s)",
                flush=True,
            )
        elif kind == "done":
            if bar is not None:
                bar.close()
            print(
                f"done: best score {event['best_score']} at epoch {event['best_epoch']}; "
                f"checkpoint {event['checkpoint']}" + (" (stopped early)" if event["stopped"] else ""),
                flush=True,
            )
    return 0


# -- eval -----------------------------------------------------------------------------------


def _add_eval(sub: argparse._SubParsersAction, name: str = "eval", alias_of: str | None = None) -> None:
    what = f"alias of {alias_of}" if alias_of else "evaluate any checkpoint on a split (dispatches on its card's task)"
    p = sub.add_parser(name, help=what)
    p.add_argument("--checkpoint", required=True, help="a name (see --checkpoint-dir) or a path stem")
    p.add_argument("--data", help="the dataset's own folder (overrides $SEG_DATA_DIR)")
    p.add_argument(
        "--split",
        default="val",
        choices=("train", "val", "test", "all"),
        help="'all' evaluates every labelled image in the folder",
    )
    p.add_argument("--json", help="write the metrics to this JSON file")
    p.add_argument(
        "--record",
        action="store_true",
        help="also record the metrics on the checkpoint's card (<split>_metrics; the results table reads "
        "them); refused with --limit",
    )
    p.add_argument(
        "--limit", type=positive_int, default=None, help="only the first N images of the split (smoke tests)"
    )
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    inst = p.add_argument_group("instance checkpoints")
    inst.add_argument(
        "--method",
        default=None,
        choices=("dwt", "components"),
        help="DWT: watershed post-processing (default) or the connected-components baseline",
    )
    inst.add_argument(
        "--tta",
        default="card",
        choices=("card", "none", "flip", "scales", "flip+scales"),
        help="test-time augmentation: as tuned on the card (default), or a fixed one (those views alone, "
        "without the DWT's fill pass)",
    )
    inst.add_argument(
        "--candidates",
        default="card",
        choices=("card", "partition"),
        help="DWT: rank the alternatives after the partition as the card says (default), or "
        "evaluate the partition (the id map users see) alone",
    )
    _checkpoint_dir_flag(p)
    p.set_defaults(func=cmd_eval)


def _card_task(checkpoint: Path) -> str:
    from seg.cards import read_card

    return str(read_card(checkpoint).get("task", "semantic"))


def _readable_checkpoint(args: argparse.Namespace) -> Path | None:
    """The checkpoint ``--checkpoint`` names, once its card reads; None after printing why not."""
    from seg.cards import CheckpointError

    try:
        checkpoint = resolve_checkpoint(args.checkpoint, args.checkpoint_dir)
        _card_task(checkpoint)
    except (FileNotFoundError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return None
    return checkpoint


def cmd_eval(args: argparse.Namespace) -> int:
    from seg.cards import CheckpointError, jsonable, write_json

    _threads(args)
    if args.json and Path(args.json).is_dir():  # said before minutes of evaluation, not after
        print(f"error: --json {args.json} is a folder; give a file name", file=sys.stderr)
        return 2
    if args.record and args.limit:
        print("error: --record measures the whole split; drop --limit", file=sys.stderr)
        return 2
    try:
        checkpoint = resolve_checkpoint(args.checkpoint, args.checkpoint_dir)
        if _card_task(checkpoint) == "instances":
            from seg.instances.evaluate import evaluate_instance_checkpoint

            result = evaluate_instance_checkpoint(
                checkpoint,
                dataset_dir("pennfudan", args.data),
                args.split,
                args.method,
                args.limit,
                args.tta,
                args.candidates,
            )
            public = result
            text = json.dumps(jsonable(result), indent=1)
        else:
            from seg.evaluate import card_metrics, evaluate_semantic_checkpoint, format_table

            result = evaluate_semantic_checkpoint(checkpoint, dataset_dir("sbd", args.data), args.split, args.limit)
            text = format_table(result)
            public = card_metrics(result) | {k: result[k] for k in ("split", "checkpoint") if k in result}
    except (FileNotFoundError, ValueError, CheckpointError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(text)
    if args.record:
        key = record_metrics(checkpoint, args.split, public, getattr(args, "candidates", "card"))
        print(f"recorded {key} on {checkpoint.name}.json")
    if args.json:
        try:
            write_json(args.json, public)
        except OSError as err:
            print(json.dumps(jsonable(public), indent=2))  # the metrics are not lost
            print(f"error: could not write --json {args.json}: {err.strerror or err}", file=sys.stderr)
            return 1
        print(f"wrote {args.json}")
    return 0


def record_metrics(checkpoint: Path, split: str, metrics: dict, candidates: str = "card") -> str:
    """Put ``metrics`` on the card as ``<split>_metrics`` (``_partition`` for a DWT's id map alone).

    The training's own ``val_metrics`` are kept; a val evaluation only adds the keys they lack
    (e.g. the 8-class accuracies), so the card never holds two different val numbers."""
    from seg.cards import read_card, update_card

    keep = {k: v for k, v in metrics.items() if k not in ("per_image", "pr_curves", "skipped", "checkpoint")}
    suffix = "_partition" if candidates == "partition" and _card_task(checkpoint) == "instances" else ""
    key = f"{split}_metrics{suffix}"
    card = read_card(checkpoint)
    if key == "val_metrics" and card.get("val_metrics"):
        update_card(
            checkpoint, {key: card["val_metrics"] | {k: v for k, v in keep.items() if k not in card["val_metrics"]}}
        )
    else:
        update_card(checkpoint, {key: keep})
    return key


# -- predict --------------------------------------------------------------------------------


def _add_predict(sub: argparse._SubParsersAction, name: str = "predict", alias_of: str | None = None) -> None:
    what = (
        f"alias of {alias_of}"
        if alias_of
        else "segment images: class-id palette PNGs (semantic) or instance-id PNGs + JSON (instances)"
    )
    p = sub.add_parser(
        name,
        help=what,
        epilog="An input that cannot be read or segmented is named at the end and the others are still "
        "written; the exit status is then 1, so a script sees that something was left out. Under torchrun "
        "each process names the failures of its share and exits 1 only if none of its share was written "
        "(a process that fails makes torchrun stop the others).",
    )
    p.add_argument("--checkpoint", required=True, help="a name (see --checkpoint-dir) or a path stem")
    p.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--probs", action="store_true", help="semantic: also save per-class probabilities (float16 .npy, C x H x W)"
    )
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument(
        "--runtime",
        default=None,
        choices=("eager", "onnx", "openvino", "auto"),
        help="serving runtime (default $SEG_RUNTIME, else auto); auto measures the installed backends "
        "once on this CPU and keeps the fastest that agrees with eager; eager is the reference",
    )
    p.add_argument("--resume", action="store_true", help="skip images whose outputs already exist")
    p.add_argument(
        "--workers", type=positive_int, default=None, help="decoding processes (default: one per spare core)"
    )
    p.add_argument("--batch-size", type=positive_int, default=8, help="images per network call (semantic)")
    _checkpoint_dir_flag(p)
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    _threads(args)
    out = Path(args.out)
    try:  # before the model loads: a wrong --out is said at once
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        what = "is a file, not a folder" if out.exists() else f"cannot be made ({err.strerror or err})"
        print(f"error: --out {out} {what}", file=sys.stderr)
        return 2
    checkpoint = _readable_checkpoint(args)  # the predictor loaded from the card knows its task
    if checkpoint is None:
        return 1
    from seg.batch_predict import predict_inputs
    from seg.runtime import resolve_runtime

    runtime = resolve_runtime(args.runtime, default="auto")
    if runtime != "eager":
        _say_runtime_progress()
    report = predict_inputs(
        checkpoint,
        args.images,
        args.out,
        resume=args.resume,
        workers=args.workers,
        batch_size=args.batch_size,
        runtime=runtime,
        probs=args.probs,
        progress=not os.environ.get("SEG_NO_PROGRESS"),
    )
    print(report.summary())
    if report.world > 1:  # torchrun stops every process once one fails: only a share with nothing done fails
        return 1 if report.failures and not report.written and not report.skipped_existing else 0
    return 1 if report.failures else 0  # the rest was written; a script must still see what was not


def _say_runtime_progress() -> None:
    """Show the serving runtime's steps on stderr (a first calibration takes a while; say why)."""
    import logging

    logger = logging.getLogger("seg.runtime")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("serving runtime: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint for every installed serving backend, measure them on this CPU, check "
        "them against eager and record the choice (what predict and the dashboard then load)",
    )
    p.add_argument("--checkpoint", required=True, help="a name (see --checkpoint-dir) or a path stem")
    p.add_argument(
        "--runtime",
        default=None,
        choices=("onnx", "openvino", "auto"),
        help="backend families to choose among (default $SEG_RUNTIME, else auto: every installed one)",
    )
    p.add_argument(
        "--threads", type=positive_int, default=None, help="torch CPU threads (the choice is per thread count)"
    )
    p.add_argument(
        "--int8-params",
        metavar="DIR",
        default=None,
        help="also write the OpenVINO int8 export's quantisation ranges there (under 300 KB; they must have passed "
        "the agreement contract on val): a machine without the dataset then serves the same int8 graph. The "
        "shipped checkpoints' are in checkpoints/int8/",
    )
    _checkpoint_dir_flag(p)
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    _threads(args)
    checkpoint = _readable_checkpoint(args)
    if checkpoint is None:
        return 1
    from seg.batch_predict import describe_choice, export_checkpoint
    from seg.runtime import resolve_runtime

    runtime = resolve_runtime(args.runtime, default="auto")
    if runtime == "eager":
        print("error: eager PyTorch needs no export; choose onnx, openvino or auto", file=sys.stderr)
        return 1
    _say_runtime_progress()
    try:
        choice = export_checkpoint(checkpoint, runtime, int8_params_dir=args.int8_params)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(describe_choice(choice))
    if args.int8_params:
        print(f"int8 parameters written to {args.int8_params}")
    return 0


# -- quantize, download, results-table ------------------------------------------------------


def _add_quantize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize",
        help="re-save a checkpoint with int8 weights (half of fp16); semantic "
        "checkpoints are re-measured on val and the card updated",
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", help="output stem (default: replace the checkpoint)")
    p.add_argument("--data", help="the dataset's own folder (overrides $SEG_DATA_DIR)")
    _checkpoint_dir_flag(p)
    p.set_defaults(func=cmd_quantize)


def cmd_quantize(args: argparse.Namespace) -> int:
    from seg.cards import CheckpointError, stem_of, update_card, weights_path
    from seg.checkpoints import quantize_checkpoint

    try:
        source = resolve_checkpoint(args.checkpoint, args.checkpoint_dir)
        out = stem_of(args.out) if args.out else source
        card = quantize_checkpoint(source, out)
    except (CheckpointError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    before = card["quantized_from"]["bytes"]
    after = weights_path(out).stat().st_size
    print(f"wrote {out} ({before:,} -> {after:,} bytes)")
    if card.get("task", "semantic") == "semantic" and card.get("val_metrics"):
        from seg.evaluate import card_metrics, evaluate_semantic_checkpoint

        result = evaluate_semantic_checkpoint(out, dataset_dir("sbd", args.data), "val")
        old = card["val_metrics"]
        # the loss is not re-measured: it stays in the "before" record only, never beside new numbers
        kept = {k: v for k, v in old.items() if k != "val_loss"}
        update_card(
            out,
            {
                "val_metrics_before_quantization": old,
                "val_metrics": kept | card_metrics(result) | {"score": result["miou"]},
            },
        )
        print(f"val mIoU {old['miou']:.4f} -> {result['miou']:.4f}, mAP {old['map']:.4f} -> {result['map']:.4f}")
    else:
        print("val_metrics are the source's: re-measure them (eval / tune-instances)")
    return 0


def _add_ensemble(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ensemble",
        help="combine semantic checkpoints of one folder into an ensemble (probabilities averaged), "
        "measured on val; its card names the members",
    )
    p.add_argument("members", nargs="+", help="two or more checkpoint names or path stems, in one folder")
    p.add_argument("--out", required=True, help="ensemble name or path stem, in the members' folder")
    p.add_argument("--data", help="the dataset's own folder (overrides $SEG_DATA_DIR)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    _checkpoint_dir_flag(p)
    p.set_defaults(func=cmd_ensemble)


def cmd_ensemble(args: argparse.Namespace) -> int:
    from seg.cards import CheckpointError, stem_of, update_card
    from seg.ensemble import combine
    from seg.evaluate import card_metrics, evaluate_semantic_checkpoint

    _threads(args)
    try:
        members = [resolve_checkpoint(m, args.checkpoint_dir) for m in args.members]
        out = stem_of(args.out) if ("/" in args.out or "\\" in args.out) else members[0].parent / args.out
        card = combine(members, out)
        result = evaluate_semantic_checkpoint(out, dataset_dir("sbd", args.data), "val")
    except (FileNotFoundError, ValueError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    update_card(out, {"val_metrics": card_metrics(result) | {"score": result["miou"]}})
    for member in card["member_checkpoints"]:
        print(f"  {member['checkpoint']}: val mIoU {member['val_miou']}")
    print(f"wrote {out}: val mIoU {result['miou']:.4f}, mAP {result['map']:.4f}")
    return 0


def _add_download(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("download", help="fetch an official dataset archive into the data root")
    p.add_argument("dataset", choices=("sbd", "pennfudan"))
    p.add_argument("--root", help="data root to unpack into (default: $SEG_DATA_DIR or the user cache)")
    p.add_argument("--timeout", type=float, default=15.0)
    p.add_argument(
        "--sha256",
        default=None,
        help="expected SHA-256 of the archive (pins it; the unpacked content is always checked against sentinel files)",
    )
    p.set_defaults(func=cmd_download)


def cmd_download(args: argparse.Namespace) -> int:
    from seg.data.download import DownloadError, download

    try:
        path = download(args.dataset, root=args.root, timeout=args.timeout, sha256=args.sha256)
    except DownloadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{args.dataset} is ready at {path}")
    return 0


def _add_results(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("results-table", help="print the results table from the checkpoints' cards")
    p.add_argument("--checkpoints", help="checkpoint folder (default: the shipped checkpoints)")
    p.add_argument("--write", metavar="README", help="replace the results block in this markdown file")
    p.set_defaults(func=cmd_results)


def cmd_results(args: argparse.Namespace) -> int:
    from seg.report import results_markdown, update_readme

    folder = Path(args.checkpoints) if args.checkpoints else None
    if folder is not None and not folder.is_dir():
        print(f"error: --checkpoints {folder} is not a folder", file=sys.stderr)
        return 2
    if args.write:
        try:
            changed = update_readme(args.write, args.checkpoints)
        except (OSError, ValueError) as err:  # a missing file, a folder, a file without the results block
            print(f"error: --write {args.write}: {getattr(err, 'strerror', None) or err}", file=sys.stderr)
            return 1
        print(f"{args.write}: {'updated' if changed else 'already current'}")
    else:
        print(results_markdown(args.checkpoints))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="SegLab: semantic and instance segmentation workbench")
    parser.add_argument(
        "--checkpoint-dir",
        default=None,
        help="where checkpoint names are looked up first (then $SEG_CHECKPOINT_DIR, then the shipped checkpoints)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_eval(sub)
    _add_eval(sub, "eval-instances", alias_of="eval")
    _add_predict(sub)
    _add_predict(sub, "predict-instances", alias_of="predict")
    _add_export(sub)
    _add_quantize(sub)
    _add_ensemble(sub)
    _add_download(sub)
    _add_results(sub)
    instances_cli.add_subcommands(sub)
    experiments.add_subcommands(sub)
    labeling_cli.add_subcommands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    reuse_freed_memory()  # batch work: freed activations are reused, not handed back and zeroed again
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded verbatim on checkpoint cards
    return int(args.func(args) or 0)
