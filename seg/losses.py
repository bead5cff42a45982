"""Weighted cross entropy written from log-softmax (explicit, so the weighting is visible and tested)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """-w[y] * log softmax(logits)[y], averaged with the weights as ``F.cross_entropy`` does.

    ``logits`` (N,C,...) and ``target`` (N,...). The mean divides by the sum of the
    weights of the non-ignored pixels, so a weighted loss is comparable across batches.
    """
    log_probs = F.log_softmax(logits.float(), dim=1)
    valid = target != ignore_index
    safe_target = torch.where(valid, target, torch.zeros_like(target)).long()
    picked = log_probs.gather(1, safe_target.unsqueeze(1)).squeeze(1)
    w = torch.ones_like(picked) if weight is None else weight.to(log_probs)[safe_target]
    w = w * valid
    losses = -picked * w
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    if reduction != "mean":
        raise ValueError(f"reduction must be mean, sum or none, got {reduction!r}")
    return losses.sum() / w.sum().clamp(min=torch.finfo(w.dtype).tiny)


def class_weights(frequencies: torch.Tensor, kind: str = "inverse_sqrt", max_ratio: float = 10.0) -> torch.Tensor:
    """Class weights from training-set frequencies, normalised to mean 1.

    ``inverse`` is 1/f, ``inverse_sqrt`` 1/sqrt(f) (gentler), ``none`` all ones. The
    spread is clipped to ``max_ratio`` so a class with a handful of pixels cannot dominate.
    """
    f = frequencies.double().clamp(min=1e-6)
    if kind == "none":
        w = torch.ones_like(f)
    elif kind == "inverse":
        w = 1.0 / f
    elif kind == "inverse_sqrt":
        w = 1.0 / f.sqrt()
    else:
        raise ValueError(f"unknown class weighting {kind!r}")
    w = w.clamp(max=w.min() * max_ratio)
    return (w / w.mean()).float()
