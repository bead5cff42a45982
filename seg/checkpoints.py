"""Checkpoints: ``<name>.safetensors`` (weights, fp16 storage) + ``<name>.json`` (the card).

``weights="int8"`` (``python -m seg quantize``) stores every weight of two or more dims
as int8 with one fp32 scale per first-dim channel (``<key>.int8_scale``), the rest fp16:
half the bytes of fp16 for a large encoder, dequantised to fp32 on load.

Loading rebuilds the architecture through the model registry from the card and reads
tensors with safetensors: nothing is ever unpickled. Both files are written atomically.

An ensemble's card names its members (``member_checkpoints``: checkpoints in the same folder, each
with the SHA-256 of its weights file): its own file holds only what is its own (the mixing
weights), and loading takes each member's weights from the member's checkpoint, refusing one
that changed since the ensemble was made.
"""

from __future__ import annotations

import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save

import seg
from seg.cards import CheckpointError, jsonable, read_card, stem_of, weights_path, write_card
from seg.config import checkpoint_dir
from seg.io import atomic_write_bytes, sha256_file
from seg.models import create

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "read_card",
    "stem_of",
    "save_checkpoint",
    "load_checkpoint",
    "list_checkpoints",
    "quantize_checkpoint",
    "lineage",
    "continued_init",
    "warm_start",
]

#: Architecture arguments that say how to *initialise* weights; on load the weights come
#: from the checkpoint, so these are forced to "none" (no download, no local file needed).
INIT_ARGUMENTS = ("encoder_init", "backbone_init")


@dataclass
class CheckpointInfo:
    name: str
    path: Path
    card: dict | None
    error: str | None = None

    @property
    def available(self) -> bool:
        return self.error is None


#: suffix of the per-output-channel scale stored beside an int8 weight
INT8_SCALE_SUFFIX = ".int8_scale"
WEIGHTS_DTYPES = {
    "float32": "float32",
    "float16": "float16",
    "int8": "int8 with one scale per first-dim channel (weights of 2+ dims), float16 (the rest)",
}


def _quantise_int8(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per first-dim channel (a conv's output channel): (values, fp32 scale per channel)."""
    flat = t.float().reshape(t.shape[0], -1)
    scale = flat.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    return torch.round(flat / scale[:, None]).clamp(-127, 127).to(torch.int8).reshape(t.shape), scale


def _stored_state(model: torch.nn.Module, weights: str) -> dict[str, torch.Tensor]:
    state = {}
    for key, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        if t.is_floating_point() and weights == "int8" and t.ndim >= 2:
            state[key], state[key + INT8_SCALE_SUFFIX] = _quantise_int8(t)
        elif t.is_floating_point() and weights != "float32":
            t = t.half()
        state.setdefault(key, t)
    return state


def _dequantised(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stored tensors -> the model's keys; int8 weights times their channel scales."""
    out = {k: v for k, v in state.items() if not k.endswith(INT8_SCALE_SUFFIX)}
    for key in [k for k in state if k.endswith(INT8_SCALE_SUFFIX)]:
        weight = key[: -len(INT8_SCALE_SUFFIX)]
        if weight not in out or out[weight].dtype != torch.int8 or len(state[key]) != out[weight].shape[0]:
            raise ValueError(f"{key} does not match an int8 weight")
        shape = (-1,) + (1,) * (out[weight].ndim - 1)
        out[weight] = out[weight].float() * state[key].float().reshape(shape)
    return out


def save_checkpoint(
    path_stem: str | Path, model: torch.nn.Module, card: dict, fp16: bool = True, weights: str | None = None
) -> Path:
    """Write weights and card; returns the stem. Float tensors are stored as fp16 by default;
    ``weights`` ("float32" | "float16" | "int8") overrides ``fp16``."""
    weights = weights or ("float16" if fp16 else "float32")
    if weights not in WEIGHTS_DTYPES:
        raise ValueError(f"weights must be one of {sorted(WEIGHTS_DTYPES)}, not {weights!r}")
    stem = stem_of(path_stem)
    state = _stored_state(model, weights)
    if card.get("member_checkpoints"):  # the members' weights live in their own checkpoints
        state = {k: v for k, v in state.items() if not k.startswith(MEMBER_PREFIX)}
    full_card = {
        "name": stem.name,
        "architecture": getattr(model, "arch_name", card.get("architecture")),
        "arch_kwargs": jsonable(getattr(model, "arch_kwargs", card.get("arch_kwargs", {}))),
        "params": int(sum(p.numel() for p in model.parameters())),
        "weights_dtype": WEIGHTS_DTYPES[weights],
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "software": {"seglab": seg.__version__, "torch": torch.__version__, "python": platform.python_version()},
    }
    full_card.update(jsonable({k: v for k, v in card.items() if k not in ("architecture", "arch_kwargs")}))
    stem.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(weights_path(stem), save(state, metadata={"format": "pt"}))
    write_card(stem, full_card)
    return stem


#: card fields ``save_checkpoint`` writes itself; a re-saved card must not carry the old ones
GENERATED_CARD_KEYS = ("name", "params", "weights_dtype", "saved_at", "software")


def quantize_checkpoint(source: str | Path, out: str | Path) -> dict:
    """Re-save a checkpoint with int8 weights; the card keeps everything else and says what it was.

    The card's ``val_metrics`` are still the source's: re-measure them (``python -m seg quantize``
    does for semantic checkpoints) and record the new ones.
    """
    model, card = load_checkpoint(source)
    if card.get("member_checkpoints"):
        raise CheckpointError("an ensemble's weights are its members': quantize the members, then rebuild it")
    size = weights_path(source).stat().st_size
    kept = {k: v for k, v in card.items() if k not in GENERATED_CARD_KEYS}
    kept["quantized_from"] = {
        "checkpoint": stem_of(source).name,
        "weights_dtype": card.get("weights_dtype"),
        "bytes": size,
        "saved_at": card.get("saved_at"),
        "software": card.get("software"),
    }
    save_checkpoint(out, model, kept, weights="int8")
    return read_card(out)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the model from its card and load its weights (fp32 in memory); model in eval mode."""
    stem = stem_of(path)
    card = read_card(stem)
    weights = weights_path(stem)
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
    state = _read_weights(weights)
    if card.get("member_checkpoints"):
        state.update(_member_states(stem, card))
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"weights {weights.name} do not match the card's architecture "
            f"({len(missing)} missing, {len(unexpected)} unexpected keys)"
        )
    for key, tensor in state.items():
        if tensor.shape != own[key].shape:
            raise CheckpointError(
                f"weights {weights.name}: {key} has shape {tuple(tensor.shape)}, expected {tuple(own[key].shape)}"
            )
    # assign: the loaded (converted) tensors become the weights, no second copy into the fresh ones
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, assign=True)
    model.eval()
    return model.to(device), card


def _read_weights(weights: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, int8 ones dequantised (``CheckpointError`` when unreadable)."""
    try:
        return _dequantised(load_file(str(weights)))
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for bad files
        raise CheckpointError(f"weights {weights.name} are corrupt: {err}") from None


#: state-dict prefix of an ensemble's members (``SemanticEnsemble.members``)
MEMBER_PREFIX = "members."
_MEMBER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _member_states(stem: Path, card: dict) -> dict[str, torch.Tensor]:
    """The members' weights under ``members.<i>.``, each from its own checkpoint beside the ensemble."""
    state: dict[str, torch.Tensor] = {}
    for i, member in enumerate(card["member_checkpoints"]):
        name = str(member.get("checkpoint", ""))
        if not _MEMBER_NAME.fullmatch(name):
            raise CheckpointError(f"ensemble member {name!r} is not a checkpoint name in the ensemble's folder")
        member_stem = stem.parent / name
        weights = weights_path(member_stem)
        if not weights.is_file():
            raise CheckpointError(f"ensemble member {name!r} is missing from {stem.parent}")
        if sha256_file(weights) != member.get("sha256"):
            raise CheckpointError(
                f"ensemble member {name!r} changed since the ensemble was made; rebuild it with seglab ensemble"
            )
        member_card = read_card(member_stem)
        if member_card.get("member_checkpoints"):
            raise CheckpointError(f"ensemble member {name!r} is itself an ensemble")
        if member_card.get("classes") != card.get("classes"):
            raise CheckpointError(f"ensemble member {name!r} has other classes than the ensemble")
        # the member's tensors only: the ensemble built the member's architecture already, and the
        # key and shape checks of the whole ensemble's state cover them
        state.update({f"{MEMBER_PREFIX}{i}.{k}": v for k, v in _read_weights(weights).items()})
    return state


class ShapeMismatch(ValueError, RuntimeError):
    """A warm restart from weights of other shapes: a refusal the CLI reports (``ValueError``), and the
    ``RuntimeError`` that ``load_state_dict`` raises for it, for callers that caught that."""


#: state-dict prefixes of training-only heads (unused at inference), which warm restarts may add or
#: drop, with what the card calls them
TRAINING_ONLY_HEADS = {"aux_heads.": "deep-supervision", "direction_head.": "direction"}
AUX_PREFIXES = tuple(TRAINING_ONLY_HEADS)
#: state-dict prefixes of blocks that start as an identity (``GlobalContext``): a warm restart may add
#: them to a model trained without, never drop them (that would change its answers)
IDENTITY_AT_START = {"context.": "global-context"}


def _kinds(prefixes: dict[str, str], keys: set[str]) -> str:
    """What the card calls the blocks whose state-dict ``keys`` start with one of ``prefixes``."""
    return " and ".join(name for prefix, name in prefixes.items() if any(k.startswith(prefix) for k in keys))


def warm_start(model: torch.nn.Module, path: str | Path) -> dict:
    """Start from an earlier checkpoint; returns what the card records about it.

    A checkpoint of the same architecture is a warm restart (every weight). A model with a
    ``backbone`` (the DWT) also takes a checkpoint of its backbone's architecture (e.g. the
    Stanford Background ``unet``) for its body, everything but the semantic head: transfer
    from the project's own scene-parsing model, whose "foreground object" class includes
    people. Shapes must match exactly; nothing is skipped silently (training-only heads, added or
    dropped between rounds, are named in what the card records).
    """
    previous, card = load_checkpoint(path)
    arch = card.get("architecture")
    semantic = card.get("task", "semantic") == "semantic"
    source = dict(
        lineage(card),
        dataset=card.get("dataset") or ("stanford-background" if semantic else None),
        its_val_metrics={k: v for k, v in (card.get("val_metrics") or {}).items() if isinstance(v, (int, float))},
    )
    if arch == getattr(model, "arch_name", None):
        state, own = previous.state_dict(), model.state_dict()
        wrong = [k for k in state if k in own and own[k].shape != state[k].shape]
        if wrong:
            raise ShapeMismatch(
                f"--init-from {path}: {len(wrong)} of its tensors have other shapes than this model's "
                f"(first: {wrong[0]}); use the --arch values on its card: {card.get('arch_kwargs')}"
            )
        # training-only heads may be added or dropped between rounds, identity blocks added
        differ = set(own) ^ set(state)
        aux = {k for k in differ if k.startswith(AUX_PREFIXES)}
        added = {k for k in differ - aux if k.startswith(tuple(IDENTITY_AT_START)) and k in own}
        if (not aux and not added) or differ - aux - added:  # anything else is refused by the strict load
            model.load_state_dict(state)
            return dict(source, loaded="all weights (warm restart)")
        model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
        notes = []
        if aux:
            fresh = "start fresh" if any(k in own for k in aux) else "are dropped"
            notes.append(f"its {_kinds(TRAINING_ONLY_HEADS, aux)} heads {fresh}")
        if added:
            notes.append(f"a {_kinds(IDENTITY_AT_START, added)} block added as an identity")
        return dict(source, loaded="all weights (warm restart); " + "; ".join(notes))
    body = getattr(model, "backbone", None)
    if body is None or arch != getattr(body, "arch_name", None):
        raise ValueError(
            f"--init-from {path}: architecture {arch!r} cannot initialise a {getattr(model, 'arch_name', None)!r} model"
        )
    state = {k: v for k, v in previous.state_dict().items() if not k.startswith(("head.", *AUX_PREFIXES))}
    own = body.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in state if k in own and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(
            f"--init-from {path}: its {arch} body does not match this model's "
            f"({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} mis-shaped tensors); "
            "use the same --arch values"
        )
    body.load_state_dict(state)
    # transfer from another task: its epochs are not this model's, so no running totals
    return dict(
        source,
        loaded=f"the {arch} body (all but its semantic head); the DWT's heads start fresh",
        total_epochs=None,
        total_training_time_s=None,
    )


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
        stem = stem_of(card_path)
        try:
            card = read_card(stem)
            _check_weights_header(weights_path(stem))
            infos.append(CheckpointInfo(stem.name, stem, card))
        except CheckpointError as err:
            infos.append(CheckpointInfo(stem.name, stem, None, str(err)))
    return infos
