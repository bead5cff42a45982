"""Model registry, in the spirit of timm: models are created by name.

``create("unet", num_classes=9, base_channels=32)``. Modules register themselves with
``@register("name")``; the built-in semantic models are imported lazily on first use,
and ``seg.instances`` registers ``dwt`` and ``maskrcnn`` the same way.
"""

from __future__ import annotations

import importlib
from typing import Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
#: Modules imported on first lookup so that every registered name is known.
_PROVIDERS = (
    "seg.models.prior",
    "seg.models.cnn",
    "seg.models.unet",
    "seg.models.resunet",
    "seg.instances.models",
)
_loaded = False


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return decorator


def _load_providers() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _PROVIDERS:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:  # a real missing dependency, not an absent optional provider
                raise


def available() -> list[str]:
    _load_providers()
    return sorted(_REGISTRY)


def create(name: str, num_classes: int = 9, **kwargs) -> nn.Module:
    """Build a fresh model; ``kwargs`` are the architecture's own arguments."""
    _load_providers()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    model = _REGISTRY[name](num_classes=num_classes, **kwargs)
    model.arch_name = name  # type: ignore[attr-defined]
    model.arch_kwargs = dict(kwargs, num_classes=num_classes)  # type: ignore[attr-defined]
    return model
