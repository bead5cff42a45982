"""The hand-written weighted cross entropy equals torch's to 1e-6."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seg.losses import class_weights, weighted_cross_entropy
from seg.train_config import SemanticOptions


@pytest.mark.parametrize("use_weight", [False, True])
@pytest.mark.parametrize("ignore_index", [-100, 255])
def test_equals_torch_cross_entropy(use_weight, ignore_index):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 9, 12, 10, generator=g, dtype=torch.float64).float() * 3
    target = torch.randint(0, 9, (4, 12, 10), generator=g)
    target[0, :3] = 255 if ignore_index == 255 else -100
    weight = torch.rand(9, generator=g) + 0.1 if use_weight else None
    ours = weighted_cross_entropy(logits, target, weight, ignore_index=ignore_index)
    theirs = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index)
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=0)
    for red in ("sum", "none"):
        assert torch.allclose(
            weighted_cross_entropy(logits, target, weight, ignore_index, red),
            F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index, reduction=red),
            atol=1e-5,
        )


def test_gradients_match():
    logits = torch.randn(2, 4, 5, 5, requires_grad=True)
    target = torch.randint(0, 4, (2, 5, 5))
    w = torch.tensor([1.0, 2.0, 0.5, 3.0])
    weighted_cross_entropy(logits, target, w).backward()
    ours = logits.grad.clone()
    logits.grad = None
    F.cross_entropy(logits, target, weight=w).backward()
    assert torch.allclose(ours, logits.grad, atol=1e-6)


def test_focal_gamma_scales_each_pixel_by_how_wrong_it_is():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 9, 8, 6, generator=g) * 3
    target = torch.randint(0, 9, (2, 8, 6), generator=g)
    target[1, :2] = 255
    weight = torch.rand(9, generator=g) + 0.1
    assert torch.equal(
        weighted_cross_entropy(logits, target, weight, 255, focal_gamma=0.0),
        weighted_cross_entropy(logits, target, weight, 255),
    )
    valid = target != 255
    ce = F.cross_entropy(logits, torch.where(valid, target, 0), reduction="none")  # -log p[y], torch's
    w = weight[torch.where(valid, target, 0)] * valid
    expected = (w * (1 - torch.exp(-ce)) ** 2 * ce).sum() / w.sum()
    focal = weighted_cross_entropy(logits, target, weight, 255, focal_gamma=2.0)
    assert torch.allclose(focal, expected, atol=1e-6)
    # a pixel already right counts far less than under the plain loss, a wrong one nearly as much
    per_plain = weighted_cross_entropy(logits, target, weight, 255, "none")
    per_focal = weighted_cross_entropy(logits, target, weight, 255, "none", focal_gamma=2.0)
    right, wrong = valid & (ce < 0.05), valid & (ce > 3.0)
    assert right.any() and wrong.any()
    assert (per_focal[right] < 0.01 * per_plain[right]).all() and (per_focal[wrong] > 0.9 * per_plain[wrong]).all()
    with pytest.raises(ValueError, match="--focal-gamma must be 0 or more"):
        SemanticOptions(focal_gamma=-1.0)


def test_class_weights_favour_rare_classes_and_are_capped():
    freqs = torch.tensor([0.5, 0.3, 0.19, 0.01, 0.0])
    w = class_weights(freqs, "inverse_sqrt", max_ratio=10)
    assert w.mean().item() == pytest.approx(1.0, abs=1e-6)
    assert w[3] > w[2] > w[1] > w[0]
    assert (w.max() / w.min()).item() == pytest.approx(10.0, rel=1e-5)  # the absent class hits the cap
    assert torch.allclose(class_weights(freqs, "none"), torch.ones(5))


def _brute_force_soft_jaccard_loss(probs: torch.Tensor, labels: torch.Tensor, c: int) -> torch.Tensor:
    """The Lovász extension evaluated by its definition: a weighted sum of Jaccard losses of the
    sets of the k largest errors, for every k."""
    fg = (labels == c).float()
    errors = (fg - probs[:, c]).abs()
    order = torch.argsort(errors, descending=True)
    total, previous = torch.zeros(()), torch.zeros(())
    for k in range(1, len(order) + 1):
        wrong = torch.zeros_like(fg, dtype=torch.bool)
        wrong[order[:k]] = True
        inter = (fg.bool() & ~wrong).sum()
        union = (fg.bool() | wrong).sum()
        jaccard = 1 - inter / union
        total = total + errors[order[k - 1]] * (jaccard - previous)
        previous = jaccard
    return total


def test_lovasz_softmax_matches_its_definition_and_is_zero_when_perfect():
    from seg.losses import lovasz_softmax

    torch.manual_seed(0)
    logits = torch.randn(1, 3, 4, 5)
    target = torch.randint(0, 3, (1, 4, 5))
    target[0, 0, 0] = 255  # ignored
    probs = F.softmax(logits, 1).permute(0, 2, 3, 1).reshape(-1, 3)
    labels = target.reshape(-1)
    keep = labels != 255
    expected = torch.stack(
        [_brute_force_soft_jaccard_loss(probs[keep], labels[keep], c) for c in range(3) if (labels[keep] == c).any()]
    ).mean()
    assert lovasz_softmax(logits, target, ignore_index=255) == pytest.approx(float(expected), abs=1e-5)
    perfect = F.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2).float() * 40
    assert float(lovasz_softmax(perfect, target, ignore_index=255)) < 1e-6
    logits.requires_grad_(True)
    lovasz_softmax(logits, target, ignore_index=255).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_distillation_loss_is_the_masked_kl_of_the_softened_answers():
    from seg.losses import distillation_loss

    torch.manual_seed(0)
    student, teacher = torch.randn(2, 4, 3, 5), torch.randn(2, 4, 3, 5)
    valid = torch.rand(2, 3, 5) > 0.3
    t = 2.0
    log_s, log_t = F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1)
    per_pixel = F.kl_div(log_s, log_t, log_target=True, reduction="none")
    expected = per_pixel.sum(1)[valid].mean() * t * t
    assert float(distillation_loss(student, teacher, valid, t)) == pytest.approx(float(expected), rel=1e-5)
    assert float(distillation_loss(teacher, teacher, valid, t)) == pytest.approx(0.0, abs=1e-6)
    changed = teacher.clone()
    changed[~valid.unsqueeze(1).expand_as(changed)] += 5.0  # only ignored pixels differ
    assert float(distillation_loss(changed, teacher, valid, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(student, teacher, torch.zeros_like(valid), t)) == 0.0
    student.requires_grad_(True)
    distillation_loss(student, teacher, valid, t).backward()
    assert student.grad.abs().sum() > 0 and bool((student.grad.abs().sum(1)[~valid] == 0).all())
