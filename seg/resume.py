"""The full state of an unfinished training run, so ``--resume`` continues it exactly.

Beside a run's checkpoint ``<out>.safetensors`` the engine keeps, after every finished
epoch, ``<out>.resume.safetensors`` (current weights, their moving average, the optimizer's
moments, the random generators' states) and ``<out>.resume.json`` (epoch, curve, best
score, schedule position and the run's config). Tensors and JSON only: nothing is ever
unpickled, so a state file from elsewhere can be loaded safely.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save

from seg.cards import jsonable, stem_of
from seg.io import atomic_write_bytes, atomic_write_text

STATE_SUFFIX = ".resume"


@dataclass
class RunState:
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]


def state_paths(out: str | Path) -> tuple[Path, Path]:
    stem = stem_of(out)
    return Path(f"{stem}{STATE_SUFFIX}.safetensors"), Path(f"{stem}{STATE_SUFFIX}.json")


def has_state(out: str | Path) -> bool:
    return all(p.is_file() for p in state_paths(out))


def read_meta(out: str | Path) -> dict:
    """The JSON half of a run's state (epoch, curve, config) without loading tensors."""
    return json.loads(state_paths(out)[1].read_text(encoding="utf-8"))


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    saved = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, per_param in saved["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": saved["param_groups"], "scalars": scalars}


def save_state(
    out: str | Path,
    *,
    model: torch.nn.Module,
    ema: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    meta: dict,
) -> None:
    """Write the run's state (weights, optimizer, schedule, random generators) atomically."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    optim_tensors, optim_meta = _optimizer_tensors(optimizer)
    tensors.update(optim_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    np_state = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))
    meta = dict(
        meta,
        optimizer=optim_meta,
        scheduler=scheduler.state_dict(),
        scaler=scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        rng={
            "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": random.getstate(),
        },
    )
    if torch.cuda.is_available():
        for i, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = cuda_state
    weights_path, meta_path = state_paths(out)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(weights_path, save(tensors))
    atomic_write_text(meta_path, json.dumps(jsonable(meta), indent=1, allow_nan=False))


def load_state(out: str | Path, device: torch.device | str = "cpu") -> RunState:
    weights_path, _ = state_paths(out)
    if not has_state(out):
        raise FileNotFoundError(f"no saved training state for {stem_of(out).name} (nothing to resume)")
    meta = read_meta(out)
    meta["best_score"] = -math.inf if meta.get("best_score") is None else meta["best_score"]
    return RunState(load_file(str(weights_path), device=str(device)), meta)


def restore_modules(state: RunState, model: torch.nn.Module, ema: torch.nn.Module | None) -> None:
    """Weights, their average and every random generator, as they were after the last finished epoch."""
    model.load_state_dict({k[len("model.") :]: v for k, v in state.tensors.items() if k.startswith("model.")})
    if ema is not None:
        ema.load_state_dict({k[len("ema.") :]: v for k, v in state.tensors.items() if k.startswith("ema.")})
    torch.set_rng_state(state.tensors["rng.torch"].cpu())
    name, pos, has_gauss, cached = state.meta["rng"]["numpy"]
    np.random.set_state((name, state.tensors["rng.numpy"].cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state.meta["rng"]["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = [state.tensors[k].cpu() for k in sorted(state.tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def restore_optimization(state: RunState, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any) -> None:
    """The optimizer's moments, the schedule's position and the loss scaler of the interrupted stage."""
    saved = state.meta["optimizer"]
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in state.tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            per_param.setdefault(int(index), {})[name] = value
    for key, value in saved["scalars"].items():
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": per_param, "param_groups": saved["param_groups"]})
    _moments_in_their_parameters_layout(optimizer)
    scheduler.load_state_dict(state.meta["scheduler"])
    if scaler is not None and state.meta.get("scaler"):
        scaler.load_state_dict(state.meta["scaler"])


def _moments_in_their_parameters_layout(optimizer: torch.optim.Optimizer) -> None:
    """Each saved moment back in its parameter's memory layout (channels-last convolutions): the state was
    saved contiguous, and PyTorch's fused AdamW walks a parameter's and its moments' memory in step, so a
    moment in another layout updates the wrong elements (a resumed run then parts from the uninterrupted one)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            moments = optimizer.state.get(param, {})
            for name, value in moments.items():
                if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                    moments[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def clear_state(out: str | Path) -> None:
    """Remove a finished run's state files (they hold 3x the weights)."""
    for path in state_paths(out):
        path.unlink(missing_ok=True)
