"""The DWT loss in the spirit of Bai & Urtasun (2017).

Energy: cross entropy over the K levels on ground-truth pedestrian pixels, each pixel
weighted by 1/sqrt(area of its instance) so a small pedestrian counts (in total) as
sqrt(area), not area, and the lowest levels weighted up because a mistake near a
boundary is what merges two people. Foreground: cross entropy on every pixel, plus
optionally (``fg_balance``) the same cross entropy over pedestrian pixels weighted like the
energy term: in plain cross entropy a 300-px pedestrian far away is lost among the big ones.
Direction (optional, ``direction_loss``): the paper's direction network's target, the unit
vector away from the nearest boundary, learnt by a training-only head beside the energy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seg.losses import weighted_cross_entropy


def level_weights(energy_levels: int, low_boost: float = 2.0, boosted: int = 3) -> torch.Tensor:
    """Weight ``low_boost`` for the ``boosted`` lowest levels, 1 for the rest."""
    w = torch.ones(energy_levels)
    w[:boosted] = low_boost
    return w


def instance_pixel_weights(instances: torch.Tensor) -> torch.Tensor:
    """(N, H, W) ids -> per-pixel 1/sqrt(area of the pixel's instance); 0 on background."""
    weights = torch.zeros(instances.shape, dtype=torch.float32, device=instances.device)
    for b in range(instances.shape[0]):
        ids = instances[b].long()
        areas = torch.bincount(ids.flatten()).float()
        inv = torch.where(areas > 0, areas.clamp(min=1).rsqrt(), torch.zeros_like(areas))
        inv[0] = 0.0
        weights[b] = inv[ids]
    return weights


def dwt_loss(
    fg_logits: torch.Tensor,
    energy_logits: torch.Tensor,
    instances: torch.Tensor,
    energy_target: torch.Tensor,
    level_weight: torch.Tensor | None = None,
    energy_factor: float = 1.0,
    fg_balance: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts.

    ``fg_logits`` (N,2,H,W); ``energy_logits`` (N,K,H,W); ``instances`` (N,H,W) ids;
    ``energy_target`` (N,H,W) levels. The energy term is normalised by the sum of the
    pixel weights, so its scale does not depend on how many pedestrians a batch holds.
    ``fg_balance`` weights the extra foreground term over pedestrian pixels, normalised the
    same way (0: plain cross entropy only, the paper's and the earlier checkpoints' loss).
    """
    w = instance_pixel_weights(instances)
    total_w = w.sum()
    fg_per_pixel = weighted_cross_entropy(fg_logits, (instances > 0).long(), reduction="none")
    fg_loss = fg_per_pixel.mean()
    if fg_balance > 0 and total_w > 0:
        fg_loss = fg_loss + fg_balance * (fg_per_pixel * w).sum() / total_w
    per_pixel = weighted_cross_entropy(energy_logits, energy_target, weight=level_weight, reduction="none")
    energy_loss = (per_pixel * w).sum() / total_w if total_w > 0 else energy_logits.sum() * 0.0
    loss = fg_loss + energy_factor * energy_loss
    return loss, {"fg_loss": float(fg_loss.detach()), "energy_loss": float(energy_loss.detach())}


def direction_target(distance: torch.Tensor, instances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H, W) distance to the own instance's boundary and ids -> (N, 2, H, W) unit vectors (dy, dx)
    pointing away from the nearest boundary (the distance's gradient, by central differences), and
    the (N, H, W) pixels where that direction is defined: a pedestrian whose four neighbours are in
    the same instance, off the ridge where the gradient vanishes."""
    d = F.pad(distance[:, None].float(), (1, 1, 1, 1), mode="replicate")[:, 0]
    ids = F.pad(instances[:, None].float(), (1, 1, 1, 1), mode="replicate")[:, 0]
    dy = (d[:, 2:, 1:-1] - d[:, :-2, 1:-1]) / 2
    dx = (d[:, 1:-1, 2:] - d[:, 1:-1, :-2]) / 2
    own = instances.float()
    same = (
        (ids[:, 2:, 1:-1] == own) & (ids[:, :-2, 1:-1] == own) & (ids[:, 1:-1, 2:] == own) & (ids[:, 1:-1, :-2] == own)
    )
    norm = torch.sqrt(dy * dy + dx * dx)
    valid = (instances > 0) & same & (norm > 0.25)
    vectors = torch.stack([dy, dx], 1) / norm.clamp_min(1e-6)[:, None]
    return vectors, valid


def direction_loss(direction_logits: torch.Tensor, distance: torch.Tensor, instances: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(angle) between the predicted and the true direction over the pixels where it is
    defined, each weighted 1/sqrt(instance area) as the energy term is (a smooth stand-in for the
    paper's squared angular error)."""
    target, valid = direction_target(distance, instances)
    w = instance_pixel_weights(instances) * valid
    total_w = w.sum()
    if total_w <= 0:
        return direction_logits.sum() * 0.0
    cos = (F.normalize(direction_logits.float(), dim=1, eps=1e-6) * target).sum(1)
    return ((1.0 - cos) * w).sum() / total_w
