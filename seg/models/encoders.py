"""Encoder weights: ImageNet through torchvision's weights API, a local file, or none.

No silent fallback: asking for ImageNet weights that cannot be had (offline, no file
in the torch hub cache) raises ``EncoderWeightsError`` naming the file and folder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class EncoderWeightsError(RuntimeError):
    """Requested encoder weights could not be loaded."""


def describe_init(init: str) -> str:
    """Human-readable statement of an encoder initialisation, for the checkpoint card."""
    if init == "none":
        return "random initialisation (no pretrained weights)"
    if init == "imagenet":
        return "ImageNet-1k pretrained (torchvision ResNet18_Weights.IMAGENET1K_V1)"
    return f"weights loaded from local file {Path(init).name}"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict from .safetensors or a torch file, never unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise EncoderWeightsError(f"encoder weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any failure here is a bad weights file
            raise EncoderWeightsError(f"cannot read {path.name} as a weights-only torch file: {err}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EncoderWeightsError(f"{path.name} does not hold a state dict of tensors")
    return state


def _strip_prefixes(state: dict[str, torch.Tensor], module: nn.Module) -> dict[str, torch.Tensor]:
    """Accept keys as saved from the bare network or from a wrapper ('encoder.', 'backbone.body.', 'module.')."""
    own = set(module.state_dict())
    for prefix in ("", "module.", "encoder.", "backbone.body.", "backbone."):
        stripped = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if own & set(stripped):
            return stripped
    return state


def load_encoder_weights(
    module: nn.Module, init: str, weights_enum=None, ignore_prefixes: tuple[str, ...] = ("fc.",)
) -> str:
    """Initialise ``module`` (a torchvision-style network) as ``init`` says; returns the card text.

    ``init``: ``"none"``; ``"imagenet"`` (``weights_enum``'s default, e.g. ``ResNet18_Weights.IMAGENET1K_V1``,
    downloaded into / read from the torch hub cache); or a path to a local weights file.
    """
    if init == "none":
        return describe_init(init)
    if init == "imagenet":
        if weights_enum is None:
            raise EncoderWeightsError("this encoder has no ImageNet weights in torchvision")
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights_enum.url).name
        try:
            state = weights_enum.get_state_dict(progress=True, check_hash=True)
        except Exception as err:  # noqa: BLE001 - network errors come in many types
            raise EncoderWeightsError(
                f"ImageNet weights could not be loaded ({type(err).__name__}: {err}). Download "
                f"{weights_enum.url} and put it at {cache}, or pass a local file "
                f"(--encoder-init PATH), or train from scratch with --encoder-init none."
            ) from None
    else:
        state = read_state_dict(init)
    # num_batches_tracked is bookkeeping that some savers keep and others drop; it is not a weight
    skip = lambda k: k.startswith(ignore_prefixes) or k.endswith("num_batches_tracked")  # noqa: E731
    state = {k: v for k, v in _strip_prefixes(state, module).items() if not skip(k)}
    expected = {k for k in module.state_dict() if not skip(k)}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise EncoderWeightsError(
            f"encoder weights do not match the architecture: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    module.load_state_dict(state, strict=False)
    return describe_init(init)
