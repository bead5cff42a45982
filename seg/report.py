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


def _pair(card: dict, key: str, digits: int = 3, suffix: str = "") -> str:
    """'val / test' of one metric from the card's ``val_metrics`` and ``test_metrics``."""
    val = (card.get(f"val_metrics{suffix}") or {}).get(key)
    test = (card.get(f"test_metrics{suffix}") or {}).get(key)
    return f"{_fmt(val, digits)} / {_fmt(test, digits)}"


def results_markdown(directory: str | Path | None = None) -> str:
    """Two tables (semantic, instances) with val / test from each card; '–' where a card has no figure."""
    semantic, instances, broken = [], [], []
    for info in list_checkpoints(directory):
        if info.card is None:
            broken.append(f"| {info.name} | unavailable: {info.error} |")
            continue
        card = info.card
        init = card.get("encoder_init") or card.get("backbone_init") or "–"
        epochs = card.get("epochs_run", len(card.get("curve") or []))
        if (card.get("init_from") or {}).get("total_epochs"):  # warm restart: earlier epochs + this run's
            epochs = f"{card['init_from'].get('total_epochs')}+{epochs}"
        head = (
            f"| {info.name} | {card['architecture']} | {init} | {card.get('params', 0) / 1e6:.2f} M | {epochs} "
            f"| {_minutes(card)} "
        )
        if card.get("task", "semantic") == "semantic":
            semantic.append(
                head + f"| {_pair(card, 'miou')} | {_pair(card, 'map')} | {_pair(card, 'pixel_accuracy')} "
                f"| {_pair(card, 'pixel_accuracy_8')} | {_pair(card, 'class_accuracy_8')} |"
            )
        else:
            partition = "–" if card.get("architecture") == "maskrcnn" else _pair(card, "mask_ap", suffix="_partition")
            instances.append(
                head + f"| {_pair(card, 'mask_ap')} | {_pair(card, 'mask_ap50')} | {partition} "
                f"| {_pair(card, 'box_ap')} | {_pair(card, 'count_error', 2)} |"
            )
    lines = [
        "Semantic segmentation, Stanford Background, **val / test** (9 classes with misc; the 8-class columns "
        "follow the published protocol: unknown pixels ignored):",
        "",
        "| checkpoint | architecture | encoder init | params | epochs | train time | mIoU | mAP | pixel acc. "
        "| pixel acc. (8) | class acc. (8) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *semantic,
    ]
    if instances:
        lines += [
            "",
            "Instance segmentation, Penn-Fudan pedestrians, **val / test** (COCO-style; the partition "
            "column scores the id map users see, without ranked alternatives):",
            "",
            "| checkpoint | architecture | backbone init | params | epochs | train time | mask AP | mask AP50 "
            "| partition mask AP | box AP | count error |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *instances,
        ]
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
    return text[text.index(START) + len(START) : text.index(END)].strip()
