"""An ensemble of semantic models: their class probabilities averaged, served as one model.

``SemanticEnsemble`` returns the *log* of the weighted mean of its members' softmax, so everything
that reads logits (argmax, softmax, the metrics, the serving runtimes) reads it unchanged. It is made
from trained checkpoints by ``seg.ensemble.combine``; its own checkpoint holds only the mixing
weights and names its members, whose weights stay in their own checkpoints (``seg.checkpoints``).
"""

from __future__ import annotations

import torch
from torch import nn

from seg.models import create, register


class SemanticEnsemble(nn.Module):
    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        self.members = nn.ModuleList(members)
        self.register_buffer("mix", torch.full((len(members),), 1.0 / len(members)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([member(x).float().softmax(1) for member in self.members])
        mixed = (probs * self.mix.view(-1, 1, 1, 1, 1)).sum(0)
        return mixed.clamp_min(1e-12).log()


@register("ensemble", trainable=False)
def build_ensemble(num_classes: int = 9, members: list[dict] | None = None) -> SemanticEnsemble:
    """``members``: each member's ``{"architecture": name, "arch_kwargs": {...}}``, as its card says."""
    if not members:
        raise ValueError(
            "an ensemble is made from trained checkpoints, not trained: seglab ensemble MEMBER MEMBER ... --out OUT"
        )
    built = []
    for spec in members:
        kwargs = {k: v for k, v in (spec.get("arch_kwargs") or {}).items() if k != "num_classes"}
        built.append(create(spec["architecture"], num_classes=num_classes, **kwargs))
    return SemanticEnsemble(built)
