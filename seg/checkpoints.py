"""Checkpoints: ``<name>.safetensors`` (weights, fp16 storage) + ``<name>.json`` (the card).

Loading rebuilds the architecture through the model registry from the card and reads
tensors with safetensors: nothing is ever unpickled. Both files are written atomically.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save

import seg
from seg.config import checkpoint_dir
from seg.io import atomic_write_bytes, atomic_write_text
from seg.models import create

#: Architecture arguments that say how to *initialise* weights; on load the weights come
#: from the checkpoint, so these are forced to "none" (no download, no local file needed).
INIT_ARGUMENTS = ("encoder_init", "backbone_init")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not match its card."""


@dataclass
class CheckpointInfo:
    name: str
    path: Path
    card: dict | None
    error: str | None = None

    @property
    def available(self) -> bool:
        return self.error is None


def stem_of(path: str | Path) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".json", ".safetensors") else path


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def save_checkpoint(path_stem: str | Path, model: torch.nn.Module, card: dict, fp16: bool = True) -> Path:
    """Write weights and card; returns the stem. Float tensors are stored as fp16 by default."""
    stem = stem_of(path_stem)
    state = {}
    for key, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        if fp16 and t.is_floating_point():
            t = t.half()
        state[key] = t
    full_card = {
        "name": stem.name,
        "architecture": getattr(model, "arch_name", card.get("architecture")),
        "arch_kwargs": _jsonable(getattr(model, "arch_kwargs", card.get("arch_kwargs", {}))),
        "params": int(sum(p.numel() for p in model.parameters())),
        "weights_dtype": "float16" if fp16 else "float32",
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "software": {"seglab": seg.__version__, "torch": torch.__version__, "python": platform.python_version()},
    }
    full_card.update(_jsonable({k: v for k, v in card.items() if k not in ("architecture", "arch_kwargs")}))
    stem.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(stem.with_suffix(".safetensors"), save(state, metadata={"format": "pt"}))
    atomic_write_text(stem.with_suffix(".json"), json.dumps(full_card, indent=1, allow_nan=False, default=str))
    return stem


def read_card(path: str | Path) -> dict:
    stem = stem_of(path)
    card_path = stem.with_suffix(".json")
    if not card_path.is_file():
        raise CheckpointError(f"card {card_path.name} is missing")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"card {card_path.name} is not valid JSON: {err}") from None
    if not isinstance(card, dict) or "architecture" not in card:
        raise CheckpointError(f"card {card_path.name} has no 'architecture'")
    return card


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the model from its card and load its weights (fp32 in memory); model in eval mode."""
    stem = stem_of(path)
    card = read_card(stem)
    weights = stem.with_suffix(".safetensors")
    if not weights.is_file():
        raise CheckpointError(f"weights {weights.name} are missing")
    kwargs = dict(card.get("arch_kwargs") or {})
    for key in INIT_ARGUMENTS:
        if key in kwargs:
            kwargs[key] = "none"
    num_classes = kwargs.pop("num_classes", len(card.get("classes") or []) or 9)
    try:
        model = create(card["architecture"], num_classes=num_classes, **kwargs)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"cannot build {card['architecture']!r} from the card: {err}") from None
    try:
        state = load_file(str(weights))
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for bad files
        raise CheckpointError(f"weights {weights.name} are corrupt: {err}") from None
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"weights {weights.name} do not match the card's architecture "
                              f"({len(missing)} missing, {len(unexpected)} unexpected keys)")
    for key, tensor in state.items():
        if tensor.shape != own[key].shape:
            raise CheckpointError(f"weights {weights.name}: {key} has shape {tuple(tensor.shape)}, "
                                  f"expected {tuple(own[key].shape)}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    model.eval()
    return model.to(device), card


def continued_init(source: dict) -> str:
    """``encoder_init`` of a warm restart, from its ``lineage``: the weights' first start, then the restart."""
    return f"{source['its_encoder_init']}; then continued from checkpoint {source['checkpoint']!r}"


def lineage(card: dict) -> dict:
    """What a new card records about the checkpoint it started from (``--init-from``).

    Epochs and training time accumulate over chains of warm restarts (``total_*``).
    """
    earlier = card.get("init_from") or {}
    return {
        "checkpoint": card.get("name"),
        "architecture": card.get("architecture"),
        "command": card.get("command"),
        "epochs": card.get("epochs_run"),
        "training_time_s": card.get("training_time_s"),
        "pretrained": bool(card.get("pretrained", False)),
        "its_encoder_init": card.get("encoder_init"),
        "total_epochs": (card.get("epochs_run") or 0) + (earlier.get("total_epochs") or 0),
        "total_training_time_s": (card.get("training_time_s") or 0) + (earlier.get("total_training_time_s") or 0),
        "earlier": earlier or None,
    }


def _check_weights_header(path: Path) -> None:
    """Cheap validity check: the safetensors header parses (no tensor data is read)."""
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError("weights file is missing")
    try:
        with safe_open(str(path), framework="pt") as fh:
            if not list(fh.keys()):
                raise CheckpointError(f"weights {path.name} hold no tensors")
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for bad files
        raise CheckpointError(f"weights {path.name} are corrupt: {err}") from None


def list_checkpoints(directory: str | Path | None = None) -> list[CheckpointInfo]:
    """Every ``*.json`` card in the folder; unreadable ones come back with ``error`` set."""
    folder = Path(directory) if directory else checkpoint_dir()
    infos = []
    if not folder.is_dir():
        return infos
    for card_path in sorted(folder.glob("*.json")):
        stem = card_path.with_suffix("")
        try:
            card = read_card(stem)
            _check_weights_header(stem.with_suffix(".safetensors"))
            infos.append(CheckpointInfo(stem.name, stem, card))
        except CheckpointError as err:
            infos.append(CheckpointInfo(stem.name, stem, None, str(err)))
    return infos
