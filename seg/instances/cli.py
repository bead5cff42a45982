"""The instance models' own commands: ``tune-instances`` and ``ensemble-instances`` (which also takes a member out).

Training, evaluation and prediction of instance checkpoints go through the shared
``train``/``eval``/``predict`` commands of ``seg.cli``, which dispatch on the card's task.
"""

from __future__ import annotations

import argparse
import json
import sys

from seg.config import positive_int


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tune-instances",
        help="choose an instance checkpoint's inference settings on val and store them in its card "
        "(DWT: post-processing and test-time augmentation; Mask R-CNN: region proposals and test-time augmentation)",
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", help="the PennFudanPed folder (overrides $SEG_DATA_DIR)")
    p.add_argument("--split", default="val", choices=("train", "val"), help="never tune on test")
    p.add_argument(
        "--tta",
        default="auto",
        choices=("auto", "none", "flip", "scales", "flip+scales"),
        help="test-time augmentation: auto tries every setting and keeps the best mask AP on the split",
    )
    p.add_argument(
        "--limit", type=positive_int, default=None, help="only the first N images of the split (smoke tests)"
    )
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.set_defaults(func=cmd_tune_instances)

    p = subparsers.add_parser(
        "ensemble-instances",
        help="combine DWT checkpoints into one ensemble checkpoint (then tune-instances), or take one member out",
    )
    p.add_argument(
        "members", nargs="+", help="two or more dwt checkpoints of the same architecture (with --take: one ensemble)"
    )
    p.add_argument("--out", required=True, help="output checkpoint stem")
    p.add_argument(
        "--take",
        type=int,
        default=None,
        metavar="K",
        help="write member K (from 0) of the one dwt_ensemble given as a plain dwt checkpoint, to train it further",
    )
    p.set_defaults(func=cmd_ensemble_instances)


def cmd_tune_instances(args: argparse.Namespace) -> int:
    from seg.config import dataset_dir, resolve_checkpoint
    from seg.instances.tune import tune_checkpoint

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        checkpoint = resolve_checkpoint(args.checkpoint, getattr(args, "checkpoint_dir", None))
        report = tune_checkpoint(checkpoint, dataset_dir("pennfudan", args.data), args.split, args.limit, args.tta)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=1))
    return 0


def cmd_ensemble_instances(args: argparse.Namespace) -> int:
    from seg.checkpoints import CheckpointError
    from seg.instances.ensemble import combine, take_member

    try:
        if args.take is not None:
            if len(args.members) != 1:
                raise ValueError("--take reads one ensemble checkpoint")
            take_member(args.members[0], args.take, args.out)
            print(f"wrote {args.out} (member {args.take} of {args.members[0]})")
            return 0
        card = combine(args.members, args.out)
    except (FileNotFoundError, ValueError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(
        f"wrote {args.out} ({card['arch_kwargs']['members']} members); "
        f"now: python -m seg tune-instances --checkpoint {args.out}"
    )
    return 0
