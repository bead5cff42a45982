"""Command line: ``python -m seg train|eval|predict|download`` (and the instance/labeling commands).

Each subcommand lives in a small function; heavy imports happen inside them so that
``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import os
import contextlib
import shlex
import signal
import sys
import threading
from pathlib import Path

from seg.config import dataset_dir

SEMANTIC_MODELS = ("prior", "cnn", "unet", "resunet")
INSTANCE_MODELS = ("dwt", "maskrcnn")


def _crop_fraction(text: str):
    """'0.25' -> 0.25; '0.25,1' -> (0.25, 1.0); 'none' -> None."""
    if text.lower() == "none":
        return None
    parts = [float(p) for p in text.split(",")]
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


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model and write checkpoints/<name>.safetensors + .json",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help=f"one of {', '.join(SEMANTIC_MODELS + INSTANCE_MODELS)}")
    p.add_argument("--data", help="the dataset's own folder (overrides $SEG_DATA_DIR)")
    p.add_argument("--out", required=True, help="checkpoint path stem, e.g. checkpoints/unet")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop-fraction", type=_crop_fraction, default=(0.25, 1.0),
                   help="crop area as a fraction of the image: one value (e.g. 0.25) or a range 'min,max'; 'none'")
    p.add_argument("--flip-p", type=float, default=0.5, help="horizontal flip probability")
    p.add_argument("--color-jitter", type=float, default=0.2)
    p.add_argument("--train-size", type=_size, default=None, metavar="WxH",
                   help="size the crops are resized to for training, e.g. 144x112 (default: the full 288x224)")
    p.add_argument("--class-weights", default="inverse_sqrt", choices=("none", "inverse_sqrt", "inverse"),
                   help="cross-entropy class weights from training-set frequencies")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frozen-epochs", type=int, default=None,
                   help="epochs with the encoder frozen before unfreezing (resunet; default 3 for resunet, else 0)")
    p.add_argument("--encoder-lr-ratio", type=float, default=0.1,
                   help="encoder learning rate as a fraction of --lr once unfrozen")
    p.add_argument("--encoder-init", default="none",
                   help="resunet encoder: 'imagenet' (torchvision weights API / hub cache), a local weights file, or 'none'")
    p.add_argument("--arch", type=_arch_kwarg, action="append", default=[], metavar="KEY=VALUE",
                   help="architecture argument, e.g. --arch base_channels=16")
    p.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="continue from a checkpoint of the same architecture (warm restart); for dwt also a semantic "
                        "checkpoint of its body (e.g. checkpoints/unet); recorded on the card")
    p.add_argument("--ema", type=float, default=None, metavar="DECAY",
                   help="validate and save an exponential moving average of the weights (e.g. 0.995)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images of each split (smoke tests)")
    p.add_argument("--val-split", default="val", choices=("val", "test"))
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="training-step precision: auto = fp16 mixed precision on CUDA, fp32 on CPU; "
                        "bf16 is about 2x faster on CPUs with native bf16 (AVX512-BF16/AMX)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    try:
        from seg.instances.cli import add_train_arguments
    except ModuleNotFoundError:
        add_train_arguments = None
    if add_train_arguments is not None:
        add_train_arguments(p)
    p.set_defaults(func=cmd_train)


@contextlib.contextmanager
def _stop_on_signals():
    """Ctrl-C / SIGTERM end training cleanly between steps, keeping the best checkpoint."""
    stop = threading.Event()

    def handler(signum, frame):  # noqa: ARG001
        if stop.is_set():
            raise KeyboardInterrupt
        print("\nstopping after this step (again to abort)...", file=sys.stderr)
        stop.set()

    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def cmd_train(args) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python -m seg " + " ".join(shlex.quote(a) for a in args.argv)
    if args.model in INSTANCE_MODELS:
        from seg.instances.task import train_instances

        events = train_instances(args, command=command)
    else:
        from seg.train_semantic import SemanticTrainConfig, train_semantic

        if args.model not in SEMANTIC_MODELS:
            print(f"error: unknown model {args.model!r}", file=sys.stderr)
            return 2
        frozen = args.frozen_epochs if args.frozen_epochs is not None else (3 if args.model == "resunet" else 0)
        config = SemanticTrainConfig(
            model=args.model, data_dir=str(dataset_dir("sbd", args.data)), out=args.out, epochs=args.epochs,
            lr=args.lr, batch_size=args.batch_size, crop_fraction=args.crop_fraction, flip_p=args.flip_p,
            color_jitter=args.color_jitter, train_size=args.train_size, class_weighting=args.class_weights,
            weight_decay=args.weight_decay,
            seed=args.seed, frozen_epochs=frozen, encoder_lr_ratio=args.encoder_lr_ratio,
            encoder_init=args.encoder_init, model_kwargs=dict(args.arch), limit=args.limit,
            val_split=args.val_split, device=args.device, command=command,
            init_from=args.init_from, precision=args.precision, ema_decay=args.ema)
        with _stop_on_signals() as stop:
            return _report_events(train_semantic(config, stop_event=stop), args.quiet)
    return _report_events(events, args.quiet)


def _report_events(events, quiet: bool) -> int:
    """Print the engine's events: a progress bar per epoch and one line per epoch."""
    from tqdm import tqdm

    bar = None
    rank0 = int(os.environ.get("RANK", "0")) == 0
    for event in events:
        if not rank0:
            continue
        kind = event["type"]
        if kind == "start":
            print(f"training on {event['device']} (world size {event['world_size']}), {event['epochs']} epochs")
        elif kind == "step" and not quiet:
            if bar is None:
                bar = tqdm(desc=f"epoch {event['epoch']}", unit="step", leave=False)
            bar.update(1 if event["step"] == 0 else 10)
            bar.set_postfix(loss=f"{event['loss']:.3f}")
        elif kind == "epoch":
            if bar is not None:
                bar.close()
                bar = None
            m = event["metrics"]
            extras = "  ".join(f"{k} {m[k]:.4f}" for k in ("miou", "map", "pixel_accuracy", "mask_ap", "mask_ap50")
                               if isinstance(m.get(k), (int, float)))
            tl = event["train_loss"]
            print(f"epoch {event['epoch']}/{event['epochs']} [{event['stage']}] "
                  f"train_loss {tl if tl is None else round(tl, 4)} val_loss {event['val_loss']} {extras} "
                  f"{'*' if event['improved'] else ''} ({event['elapsed']:.0f}s)", flush=True)
        elif kind == "done":
            print(f"done: best score {event['best_score']} at epoch {event['best_epoch']}; "
                  f"checkpoint {event['checkpoint']}" + (" (stopped early)" if event["stopped"] else ""))
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a semantic checkpoint on a split")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", help="the dataset's own folder (overrides $SEG_DATA_DIR)")
    p.add_argument("--split", default="val", choices=("train", "val", "test", "all"),
                   help="'all' evaluates every labelled image in the folder")
    p.add_argument("--json", help="write the metrics to this JSON file")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    from seg.evaluate import evaluate_checkpoint, format_table
    from seg.io import atomic_write_text

    result = evaluate_checkpoint(args.checkpoint, dataset_dir("sbd", args.data), args.split)
    print(format_table(result))
    if args.json:
        public = {k: result[k] for k in ("miou", "map", "pixel_accuracy", "per_class", "confusion_matrix",
                                         "num_images", "split", "checkpoint")}
        atomic_write_text(args.json, json.dumps(public, indent=1))
        print(f"wrote {args.json}")
    return 0


def _add_quantize(sub) -> None:
    p = sub.add_parser("quantize", help="re-save a checkpoint with int8 weights (half of fp16); semantic "
                                        "checkpoints are re-measured on val and the card updated")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", help="output stem (default: replace the checkpoint)")
    p.add_argument("--data", help="the dataset's own folder (overrides $SEG_DATA_DIR)")
    p.set_defaults(func=cmd_quantize)


def cmd_quantize(args) -> int:
    from seg.checkpoints import CheckpointError, quantize_checkpoint, stem_of
    from seg.evaluate import evaluate_checkpoint
    from seg.io import atomic_write_text

    out = stem_of(args.out or args.checkpoint)
    try:
        card = quantize_checkpoint(args.checkpoint, out)
    except (CheckpointError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    before = card["quantized_from"]["bytes"]
    after = out.with_suffix(".safetensors").stat().st_size
    print(f"wrote {out} ({before:,} -> {after:,} bytes)")
    if card.get("task", "semantic") == "semantic" and card.get("val_metrics"):
        result = evaluate_checkpoint(out, dataset_dir("sbd", args.data), "val")
        card["val_metrics_before_quantization"] = card["val_metrics"]
        # the loss is not re-measured: it stays in the "before" record only, never beside new numbers
        kept = {k: v for k, v in card["val_metrics"].items() if k != "val_loss"}
        card["val_metrics"] = kept | {k: result[k] for k in (
            "miou", "map", "pixel_accuracy", "iou", "ap", "per_class", "confusion_matrix", "num_images")
            if k in result} | {"score": result["miou"]}
        atomic_write_text(out.with_suffix(".json"), json.dumps(card, indent=1, allow_nan=False))
        old = card["val_metrics_before_quantization"]
        print(f"val mIoU {old['miou']:.4f} -> {result['miou']:.4f}, mAP {old['map']:.4f} -> {result['map']:.4f}")
    else:
        print("val_metrics are the source's: re-measure them (eval-instances / tune-instances)")
    return 0


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="segment images: palette PNG of class ids at the original size")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="+")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--probs", action="store_true", help="also save per-class probabilities (float16 .npy, C x H x W)")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args) -> int:
    import numpy as np

    from seg.inference import Predictor
    from seg.io import atomic_write_bytes, iter_images, save_label_png

    predictor = Predictor.from_checkpoint(args.checkpoint)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for path, image in iter_images(args.images, failures):
        pred = predictor.predict(image)
        stem = Path(path).stem
        save_label_png(out / f"{stem}.png", pred.label, predictor.palette)
        if args.probs:
            import io

            buf = io.BytesIO()
            np.save(buf, pred.probs.astype(np.float16), allow_pickle=False)
            atomic_write_bytes(out / f"{stem}.probs.npy", buf.getvalue())
        print(f"{path} -> {out / (stem + '.png')} ({pred.latency_ms:.0f} ms)")
    return 1 if failures and len(failures) == len(args.images) else 0


def _add_download(sub) -> None:
    p = sub.add_parser("download", help="fetch an official dataset archive into the data root")
    p.add_argument("dataset", choices=("sbd", "pennfudan"))
    p.add_argument("--root", help="data root to unpack into (default: $SEG_DATA_DIR or the user cache)")
    p.add_argument("--timeout", type=float, default=15.0)
    p.add_argument("--sha256", default=None, help="expected SHA-256 of the archive (pins it; the unpacked "
                                                    "content is always checked against sentinel files)")
    p.set_defaults(func=cmd_download)


def cmd_download(args) -> int:
    from seg.data.download import DownloadError, download

    try:
        path = download(args.dataset, root=args.root, timeout=args.timeout, sha256=args.sha256)
    except DownloadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{args.dataset} is ready at {path}")
    return 0


def _add_results(sub) -> None:
    p = sub.add_parser("results-table", help="print the results table from the checkpoints' cards")
    p.add_argument("--checkpoints", help="checkpoint folder (default: checkpoints/)")
    p.add_argument("--write", metavar="README", help="replace the results block in this markdown file")
    p.set_defaults(func=cmd_results)


def cmd_results(args) -> int:
    from seg.report import results_markdown, update_readme

    if args.write:
        changed = update_readme(args.write, args.checkpoints)
        print(f"{args.write}: {'updated' if changed else 'already current'}")
    else:
        print(results_markdown(args.checkpoints))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m seg", description="SegLab: segmentation workbench")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_eval(sub)
    _add_predict(sub)
    _add_quantize(sub)
    _add_download(sub)
    _add_results(sub)
    for module in ("seg.instances.cli", "seg.labeling.cli"):
        try:
            mod = __import__(module, fromlist=["add_subcommands"])
        except ModuleNotFoundError as err:
            if err.name and not module.startswith(err.name):
                raise
            continue
        mod.add_subcommands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded verbatim on checkpoint cards
    return int(args.func(args) or 0)
