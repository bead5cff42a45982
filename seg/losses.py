"""Weighted cross entropy written from log-softmax (explicit, so the weighting is visible and tested),
and the Lovász-softmax loss, a smooth surrogate of the mean IoU that weights rare classes as much as common ones."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    focal_gamma: float = 0.0,
) -> torch.Tensor:
    """-w[y] * log softmax(logits)[y], averaged with the weights as ``F.cross_entropy`` does.

    ``logits`` (N,C,...) and ``target`` (N,...). The mean divides by the sum of the
    weights of the non-ignored pixels, so a weighted loss is comparable across batches.
    ``focal_gamma`` > 0 scales each pixel's term by (1 - p[y])^gamma (the focal loss, Lin et al.
    2017): pixels the model already gets right count less, so the hard ones (often of rare
    classes) weigh more than their numbers.
    """
    log_probs = F.log_softmax(logits.float(), dim=1)
    valid = target != ignore_index
    safe_target = torch.where(valid, target, torch.zeros_like(target)).long()
    picked = log_probs.gather(1, safe_target.unsqueeze(1)).squeeze(1)
    w = torch.ones_like(picked) if weight is None else weight.to(log_probs)[safe_target]
    w = w * valid
    losses = -picked * w
    if focal_gamma > 0:
        losses = losses * (1.0 - picked.exp()).clamp(min=0.0).pow(focal_gamma)
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


def _lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss at errors sorted in decreasing order."""
    total = gt_sorted.sum()
    intersection = total - gt_sorted.cumsum(0)
    union = total + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


def lovasz_softmax(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Lovász-softmax (Berman et al., CVPR 2018) over the batch, averaged over the classes present.

    ``logits`` (N,C,H,W), ``target`` (N,H,W). Cross entropy rewards getting common pixels right;
    this loss is a tight convex surrogate of each class's IoU, so it pulls mean IoU up directly.
    """
    probs = F.softmax(logits.float(), dim=1)
    num_classes = probs.shape[1]
    probs = probs.permute(0, 2, 3, 1).reshape(-1, num_classes)
    labels = target.reshape(-1)
    valid = labels != ignore_index
    probs, labels = probs[valid], labels[valid]
    losses = []
    for c in range(num_classes):
        fg = (labels == c).float()
        if not bool(fg.any()):
            continue
        errors = (fg - probs[:, c]).abs()
        errors_sorted, order = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, _lovasz_grad(fg[order])))
    if not losses:
        return probs.sum() * 0.0
    return torch.stack(losses).mean()


def distillation_loss(
    logits: torch.Tensor, teacher_logits: torch.Tensor, valid: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """KL(teacher ‖ student) of the softened class distributions, averaged over the ``valid`` pixels.

    ``logits``, ``teacher_logits`` (N,C,H,W); ``valid`` (N,H,W) bool. The teacher's probabilities carry
    what a hard label cannot (which wrong classes are plausible), so a small network learns an
    ensemble's answers. Scaled by T² so its gradient keeps its size as T changes (Hinton et al. 2015).
    """
    t = float(temperature)
    log_p = F.log_softmax(logits.float() / t, dim=1)
    log_q = F.log_softmax(teacher_logits.float() / t, dim=1)
    per_pixel = (log_q.exp() * (log_q - log_p)).sum(1)
    count = valid.sum().clamp(min=1)
    return (per_pixel * valid).sum() / count * (t * t)
