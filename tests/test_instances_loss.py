"""The DWT loss: 1/sqrt(area) pixel weighting, boosted low levels, foreground term, direction term."""

from __future__ import annotations

import pytest
import torch

from seg.instances.losses import direction_loss, direction_target, dwt_loss, instance_pixel_weights, level_weights
from seg.instances.targets import instance_distance


def _scene() -> torch.Tensor:
    ids = torch.zeros(1, 20, 30, dtype=torch.long)
    ids[0, 2:18, 2:18] = 1  # 256 px
    ids[0, 5:9, 22:26] = 2  # 16 px
    return ids


def test_pixel_weights_are_inverse_sqrt_area():
    w = instance_pixel_weights(_scene())
    assert w[0, 10, 10] == pytest.approx(1 / 16) and w[0, 6, 23] == pytest.approx(1 / 4)
    assert w[0, 0, 0] == 0
    # in total an instance weighs sqrt(area): 16 vs 4, not 256 vs 16
    assert w[0][_scene()[0] == 1].sum() == pytest.approx(16.0)
    assert w[0][_scene()[0] == 2].sum() == pytest.approx(4.0)


def test_level_weights_boost_the_lowest_levels():
    w = level_weights(12, low_boost=2.0, boosted=3)
    assert w.tolist() == [2.0] * 3 + [1.0] * 9


def _loss_with_wrong_pixels(ids: torch.Tensor, wrong: torch.Tensor, target_level: int, k: int = 6) -> float:
    levels = torch.full(ids.shape, target_level)
    energy = torch.zeros(1, k, *ids.shape[1:])
    energy[:, target_level] = 30.0  # confident and right ...
    energy[0, :, wrong[0]] = 0.0
    energy[0, (target_level + 3) % k, wrong[0]] = 30.0  # ... except on the `wrong` pixels
    sign = (ids > 0).float() * 2 - 1
    fg = torch.stack([-sign * 10, sign * 10], 1)
    loss, parts = dwt_loss(fg, energy, ids, levels, level_weights(k))
    assert parts["fg_loss"] < 1e-3
    return parts["energy_loss"]


def test_a_mistake_on_a_small_pedestrian_costs_more_per_pixel():
    ids = _scene()
    one_big = torch.zeros_like(ids, dtype=torch.bool)
    one_big[0, 10, 10] = True
    one_small = torch.zeros_like(ids, dtype=torch.bool)
    one_small[0, 6, 23] = True
    assert _loss_with_wrong_pixels(ids, one_small, 4) == pytest.approx(
        4 * _loss_with_wrong_pixels(ids, one_big, 4), rel=1e-3
    )


def test_low_level_mistakes_cost_double():
    ids = _scene()
    wrong = torch.zeros_like(ids, dtype=torch.bool)
    wrong[0, 10, 10] = True
    assert _loss_with_wrong_pixels(ids, wrong, 1) == pytest.approx(2 * _loss_with_wrong_pixels(ids, wrong, 4), rel=1e-3)


def test_background_is_left_to_the_foreground_head():
    ids = _scene()
    levels = torch.zeros_like(ids)
    energy = torch.randn(1, 6, 20, 30)
    fg = torch.zeros(1, 2, 20, 30)
    _, parts = dwt_loss(fg, energy, ids, levels)
    energy2 = energy.clone()
    energy2[..., ids[0] == 0] = torch.randn_like(energy2[..., ids[0] == 0]) * 5  # background energies: irrelevant
    _, parts2 = dwt_loss(fg, energy2, ids, levels)
    assert parts["energy_loss"] == pytest.approx(parts2["energy_loss"])
    assert parts["fg_loss"] == pytest.approx(float(torch.log(torch.tensor(2.0))), rel=1e-4)


def test_loss_backpropagates_to_both_heads():
    ids = _scene()
    fg = torch.zeros(1, 2, 20, 30, requires_grad=True)
    energy = torch.zeros(1, 6, 20, 30, requires_grad=True)
    loss, _ = dwt_loss(fg, energy, ids, torch.ones_like(ids), level_weights(6))
    loss.backward()
    assert fg.grad.abs().sum() > 0 and energy.grad.abs().sum() > 0


def _fg_loss_missing(ids: torch.Tensor, missed: int, fg_balance: float) -> float:
    """Foreground loss when the pixels of pedestrian ``missed`` are called background (logit gap 4)."""
    fg_truth = (ids > 0) & (ids != missed)
    sign = fg_truth.float() * 2 - 1
    fg = torch.stack([-sign * 2, sign * 2], 1)
    levels = torch.zeros_like(ids)
    _, parts = dwt_loss(fg, torch.zeros(1, 6, *ids.shape[1:]), ids, levels, fg_balance=fg_balance)
    return parts["fg_loss"]


def test_fg_balance_makes_a_missed_small_pedestrian_count():
    ids = _scene()
    pixels = ids.numel()
    wrong = float(torch.nn.functional.softplus(torch.tensor(4.0)))  # cross entropy at a logit gap of 4
    right = float(torch.nn.functional.softplus(torch.tensor(-4.0)))
    # plain cross entropy: missing the 16-px pedestrian costs 16/600 of the image's pixels' worth
    plain = _fg_loss_missing(ids, 2, 0.0)
    assert plain == pytest.approx((16 * wrong + (pixels - 16) * right) / pixels, rel=1e-4)
    assert _fg_loss_missing(ids, 1, 0.0) > 10 * plain  # ... while missing the big one costs 16x more
    # balanced: the extra term over pedestrian pixels, each weighted 1/sqrt(area), normalised by sum(w) = 16 + 4
    balanced = _fg_loss_missing(ids, 2, 1.0)
    extra = (4.0 * wrong + 16.0 * right) / 20.0
    assert balanced == pytest.approx(plain + extra, rel=1e-4)
    # the small pedestrian now costs a fifth of the big one in the extra term, not a sixteenth
    big_extra = _fg_loss_missing(ids, 1, 1.0) - _fg_loss_missing(ids, 1, 0.0)
    assert big_extra == pytest.approx((16.0 * wrong + 4.0 * right) / 20.0, rel=1e-4)


def _touching_discs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two discs that touch (ids 1 and 2), their distance map, and per pixel the unit vector to its disc's centre."""
    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(60.0), indexing="ij")
    ids = torch.zeros(1, 40, 60, dtype=torch.long)
    ids[0][(yy - 20) ** 2 + (xx - 18) ** 2 < 12**2] = 1
    ids[0][(yy - 20) ** 2 + (xx - 41) ** 2 < 12**2] = 2  # touches the first between x = 29 and 30
    distance = torch.from_numpy(instance_distance(ids[0].numpy()))[None]
    cx = torch.where(ids[0] == 1, 18.0, 41.0)
    to_centre = torch.stack([20.0 - yy, cx - xx])
    return ids, distance, to_centre / to_centre.norm(dim=0).clamp_min(1e-6)


def test_direction_target_points_away_from_the_boundary_of_each_pedestrian():
    ids, distance, to_centre = _touching_discs()
    vectors, valid = direction_target(distance, ids)
    assert torch.allclose(vectors.norm(dim=1)[valid], torch.ones(int(valid.sum())), atol=1e-5)
    cos = (vectors[0] * to_centre).sum(0)[valid[0]]
    assert cos.mean() > 0.97 and cos.min() > 0.7, "towards the centre: away from the nearest boundary"
    assert not valid[ids == 0].any(), "background has no direction"
    seam = (ids[0, :, 29] == 1) & (ids[0, :, 30] == 2)
    assert seam.any() and not valid[0, :, 29][seam].any(), "a pixel beside another pedestrian has none"
    assert valid.sum() > 0.7 * (ids > 0).sum()


def test_direction_loss_is_one_minus_cosine_weighted_like_the_energy():
    ids, distance, to_centre = _touching_discs()
    target, valid = direction_target(distance, ids)
    assert float(direction_loss(5 * target, distance, ids)) == pytest.approx(0.0, abs=1e-5)  # the length is free
    assert float(direction_loss(-target, distance, ids)) == pytest.approx(2.0, abs=1e-5)
    assert float(direction_loss(torch.zeros(1, 2, 40, 60), distance, ids)) == pytest.approx(1.0)
    # wrong on the small disc only: it counts sqrt(area) in total, not area (as the energy term weighs it)
    logits = torch.where((ids == 2)[:, None], -target, target)
    w = instance_pixel_weights(ids) * valid
    expected = 2.0 * w[ids == 2].sum() / w.sum()
    assert float(direction_loss(logits, distance, ids)) == pytest.approx(float(expected), rel=1e-5)
    logits = torch.zeros(1, 2, 40, 60, requires_grad=True)
    direction_loss(logits + target, distance, ids).backward()
    assert logits.grad[:, :, ~valid[0]].abs().sum() == 0 and logits.grad.abs().sum() > 0
    assert float(direction_loss(target, torch.zeros(1, 40, 60), torch.zeros(1, 40, 60, dtype=torch.long))) == 0.0
