"""Model registry, in the spirit of timm: models are created by name.

``create("unet", num_classes=9, base_channels=32)``. Modules register themselves with
``@register("name", task=...)``. The built-in semantic models are imported on first use;
other packages plug their models in without this module naming them: any installed
distribution's ``seglab.models`` entry point, and any subpackage of ``seg`` with a
``models`` module (that is how ``seg.instances`` registers ``dwt`` and ``maskrcnn``).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from torch import nn

from seg.config import require_whole

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_TASKS: dict[str, str] = {}
_NOT_TRAINABLE: set[str] = set()
#: This package's own models, imported on first lookup.
_BUILTIN = ("seg.models.prior", "seg.models.cnn", "seg.models.unet", "seg.models.resunet", "seg.models.ensemble")
ENTRY_POINT_GROUP = "seglab.models"
_loaded = False


def register(
    name: str, task: str = "semantic", trainable: bool = True
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: ``factory(num_classes=..., **kwargs)`` builds model ``name`` for ``task``
    (``semantic`` or ``instances``: what trains, evaluates and predicts it). ``trainable=False``:
    made from other checkpoints (an ensemble), so training commands and forms do not offer it."""

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = factory
        _TASKS[name] = task
        if not trainable:
            _NOT_TRAINABLE.add(name)
        return factory

    return decorator


def _plugin_modules() -> list[str]:
    """Entry points of installed distributions, then ``seg.<subpackage>.models`` found on disk."""
    from importlib.metadata import entry_points
    from importlib.util import find_spec

    modules = [ep.value.split(":")[0] for ep in entry_points(group=ENTRY_POINT_GROUP)]
    package = importlib.import_module("seg")
    for info in pkgutil.iter_modules(package.__path__):
        if info.ispkg and info.name not in ("models", "ui") and find_spec(f"seg.{info.name}.models") is not None:
            modules.append(f"seg.{info.name}.models")
    return list(dict.fromkeys(modules))


def _load_providers() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in (*_BUILTIN, *_plugin_modules()):
        importlib.import_module(module)


def task_of(name: str) -> str:
    """The task a registered model belongs to (``semantic`` or ``instances``)."""
    _load_providers()
    if name not in _TASKS:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _TASKS[name]


def available(trainable_only: bool = False) -> list[str]:
    _load_providers()
    return sorted(n for n in _REGISTRY if not (trainable_only and n in _NOT_TRAINABLE))


def create(name: str, num_classes: int = 9, **kwargs) -> nn.Module:
    """Build a fresh model; ``kwargs`` are the architecture's own arguments."""
    _load_providers()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    require_whole("num_classes", num_classes, 1)
    model = _REGISTRY[name](num_classes=num_classes, **kwargs)
    model.arch_name = name  # type: ignore[attr-defined]
    model.arch_kwargs = dict(kwargs, num_classes=num_classes)  # type: ignore[attr-defined]
    return model
