"""The README's results tables, generated from the checkpoints' cards (never typed).

``python -m seg results-table --write README.md`` replaces the block between the
``<!-- results:start -->`` and ``<!-- results:end -->`` markers.
"""

from __future__ import annotations

import re
from pathlib import Path

from seg.checkpoints import list_checkpoints
from seg.io import atomic_write_text

START, END = "<!-- results:start -->", "<!-- results:end -->"


def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _minutes(card: dict) -> str:
    seconds = card.get("training_time_s")
    if seconds is not None and card.get("init_from"):
        seconds += card["init_from"].get("total_training_time_s") or 0
    return "–" if seconds is None else (f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s")


def results_markdown(directory: str | Path | None = None) -> str:
    semantic, instances, broken = [], [], []
    for info in list_checkpoints(directory):
        if info.card is None:
            broken.append(f"| {info.name} | unavailable: {info.error} |")
            continue
        card, m = info.card, info.card.get("val_metrics") or {}
        init = card.get("encoder_init") or card.get("backbone_init") or "–"
        epochs = card.get("epochs_run", len(card.get("curve") or []))
        if (card.get("init_from") or {}).get("total_epochs"):  # warm restart: earlier epochs + this run's
            epochs = f"{card['init_from'].get('total_epochs')}+{epochs}"
        if card.get("task", "semantic") == "semantic":
            semantic.append(f"| {info.name} | {card['architecture']} | {init} | {card.get('params', 0) / 1e6:.2f} M "
                            f"| {epochs} | {_minutes(card)} | {_fmt(m.get('miou'))} | {_fmt(m.get('map'))} "
                            f"| {_fmt(m.get('pixel_accuracy'))} |")
        else:
            instances.append(f"| {info.name} | {card['architecture']} | {init} | {card.get('params', 0) / 1e6:.2f} M "
                             f"| {epochs} | {_minutes(card)} | {_fmt(m.get('mask_ap'))} | {_fmt(m.get('mask_ap50'))} "
                             f"| {_fmt(m.get('box_ap'))} | {_fmt(m.get('count_error'), 2)} "
                             f"| {_fmt(m.get('mean_best_iou'))} |")
    lines = ["Semantic segmentation, Stanford Background **val split** (9 classes incl. misc; from each card's "
             "`val_metrics`):", "",
             "| checkpoint | architecture | encoder init | params | epochs | train time | mIoU | mAP | pixel acc. |",
             "|---|---|---|---|---|---|---|---|---|", *semantic]
    if instances:
        lines += ["", "Instance segmentation, Penn-Fudan **val split** (COCO-style, from each card):", "",
                  "| checkpoint | architecture | backbone init | params | epochs | train time | mask AP | mask AP50 "
                  "| box AP | count error | mean best IoU |",
                  "|---|---|---|---|---|---|---|---|---|---|---|", *instances]
    if broken:
        lines += ["", "| checkpoint | status |", "|---|---|", *broken]
    return "\n".join(lines)


def update_readme(readme: str | Path, directory: str | Path | None = None) -> bool:
    """Rewrite the results block; returns True if the file changed."""
    path = Path(readme)
    text = path.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise ValueError(f"{path} has no {START} ... {END} block")
    block = f"{START}\n{results_markdown(directory)}\n{END}"
    new = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    if new != text:
        atomic_write_text(path, new)
    return new != text


def readme_block(readme: str | Path) -> str:
    text = Path(readme).read_text(encoding="utf-8")
    return text[text.index(START) + len(START):text.index(END)].strip()
