"""What a tab says instead of a feature that cannot work here: a missing dataset, no usable model."""

from __future__ import annotations

from seg.config import dataset_dir
from seg.modelstore import ModelStore

#: The command that fetches each dataset.
DOWNLOAD_HINT = {
    "sbd": "python -m seg download sbd",
    "pennfudan": "python -m seg download pennfudan",
}
DATASET_NAMES = {"sbd": "Stanford Background", "pennfudan": "Penn-Fudan"}


def missing_dataset_md(name: str, what: str) -> str:
    """The message a tab shows instead of a dataset-backed feature."""
    try:
        where = str(dataset_dir(name))
    except ValueError:
        where = "the data root"
    return (
        f"**{what} needs the {DATASET_NAMES[name]} dataset**, which was not found at `{where}`. "
        f"Get it with `{DOWNLOAD_HINT[name]}` (or set `SEG_DATA_DIR` to a folder that holds it) "
        f"and restart the app. Everything else works without it."
    )


def no_models_md(store: ModelStore, task: str = "semantic") -> str:
    """What to show when no usable model exists for ``task`` (and why, when some are broken)."""
    what = "semantic segmentation" if task == "semantic" else "instance (DWT/Mask R-CNN)"
    where = " or ".join(f"`{folder.label}/`" for folder in store.folders)
    text = (
        f"**No usable {what} checkpoint** in {where}. Train one in the Train tab "
        f"or with `python -m seg train`, then switch tabs to refresh the lists."
    )
    return text + ("\n\n" + store.describe() if store.unavailable() else "")
