"""Boundary-aware loss (boundary.py, Hayder's BAIS): the bin targets against scipy's distance transform,
hand-derived bins, the loss against a direct sum of binary cross-entropies, the union-of-disks masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from seglosses import BoundaryAwareLoss, create_loss
from seglosses.boundary import boundary_aware_loss, boundary_aware_masks, boundary_aware_target


def oracle_bins(mask: np.ndarray, max_distance: int, bins: int) -> np.ndarray:
    """(K, *S): bin k holds the object pixels with min(ceil(d), R) in (kR/K, (k+1)R/K], d by scipy."""
    distance = ndimage.distance_transform_edt(mask) if not mask.all() else np.full(mask.shape, np.inf)
    truncated = np.minimum(np.ceil(distance), max_distance)
    maps = np.zeros((bins, *mask.shape))
    for k in range(bins):
        low, high = k * max_distance / bins, (k + 1) * max_distance / bins
        maps[k] = mask & (truncated > low) & (truncated <= high)
    return maps


def random_masks(shape, seed):
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(shape, generator=generator)
    smooth = F.avg_pool2d(noise.unsqueeze(1), 3, 1, 1)[:, 0] if len(shape) == 3 else \
        F.avg_pool3d(noise.unsqueeze(1), 3, 1, 1)[:, 0]
    return smooth > 0.5


@pytest.mark.parametrize("max_distance, bins", [(5, 5), (6, 3), (4, 1), (3, 2)])
@pytest.mark.parametrize("shape", [(3, 17, 19), (2, 9, 10, 11)], ids=["2d", "3d"])
def test_bins_match_scipy(shape, max_distance, bins):
    masks = random_masks(shape, seed=len(shape) + bins)
    maps = boundary_aware_target(masks, max_distance=max_distance, bins=bins)
    expected = np.stack([oracle_bins(m, max_distance, bins) for m in masks.numpy()])
    np.testing.assert_array_equal(maps.numpy(), expected)
    assert torch.equal(maps.sum(dim=1) > 0, masks)  # every object pixel in exactly one bin, nothing outside


def test_hand_derived_bins_of_a_square():
    """A 5x5 square in a 7x7 image: its outer ring is 1 from the outside, the next ring 2, the centre 3;
    with R = 2 and K = 2 the ring is bin 0 and the rest (truncated to 2) bin 1."""
    mask = torch.zeros(1, 7, 7, dtype=torch.bool)
    mask[0, 1:6, 1:6] = True
    maps = boundary_aware_target(mask, max_distance=2, bins=2)[0]
    ring = mask[0].clone()
    ring[2:5, 2:5] = False
    assert torch.equal(maps[0].bool(), ring)
    inner = torch.zeros(7, 7, dtype=torch.bool)
    inner[2:5, 2:5] = True
    assert torch.equal(maps[1].bool(), inner)
    full = boundary_aware_target(torch.ones(1, 4, 4, dtype=torch.bool), max_distance=5, bins=5)[0]
    assert full[4].bool().all() and full[:4].sum() == 0  # no outside pixel: the last bin everywhere


def test_loss_is_the_sum_over_bins_of_the_binary_cross_entropies():
    masks = random_masks((2, 12, 13), seed=3)
    logits = torch.randn(2, 5, 12, 13, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    maps = torch.from_numpy(np.stack([oracle_bins(m, 5, 5) for m in masks.numpy()]))
    expected = F.binary_cross_entropy_with_logits(logits, maps, reduction="none").sum(dim=1).mean(dim=(1, 2))
    torch.testing.assert_close(boundary_aware_loss(logits, masks.long(), reduction="none"), expected)
    torch.testing.assert_close(BoundaryAwareLoss()(logits, masks.unsqueeze(1).double()), expected.mean())
    per_pixel = BoundaryAwareLoss().per_pixel(logits, masks.long())
    torch.testing.assert_close(per_pixel.mean(dim=(1, 2)), expected)


def test_ignored_pixels_carry_no_loss_and_count_as_outside():
    masks = random_masks((1, 12, 12), seed=5).long()
    target = masks.clone()
    target[0, 4:7, 4:7] = 255
    logits = torch.randn(1, 5, 12, 12, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    value = boundary_aware_loss(logits, target, ignore_index=255)
    outside = masks.clone()
    outside[0, 4:7, 4:7] = 0
    maps = boundary_aware_target(outside.bool())
    bce = F.binary_cross_entropy_with_logits(logits, maps.double(), reduction="none").sum(dim=1)
    valid = target != 255
    torch.testing.assert_close(value, bce[valid].mean())


def test_union_of_disks_rebuilds_a_disc_and_fills_in_from_deep_pixels():
    grid = torch.arange(-6, 7)
    disc = (grid.view(-1, 1) ** 2 + grid**2 <= 20).unsqueeze(0)  # a disc of radius ~4.5 in a 13x13 image
    maps = boundary_aware_target(disc)
    logits = 20.0 * (2.0 * maps - 1.0)
    assert torch.equal(boundary_aware_masks(logits), disc)
    deep = maps[:, 3:].sum(dim=1, keepdim=True) > 0  # keep only the pixels in bins 4 and 5 (D >= 4)
    sparse = torch.where(deep, logits, torch.full_like(logits, -20.0))
    rebuilt = boundary_aware_masks(sparse)
    assert rebuilt.sum() > deep.sum() and not (rebuilt & ~disc).any() and (rebuilt | ~deep[:, 0]).all()
    ball = (torch.arange(-3, 4).view(-1, 1, 1) ** 2 + torch.arange(-3, 4).view(-1, 1) ** 2
            + torch.arange(-3, 4) ** 2 <= 9).unsqueeze(0)
    assert torch.equal(boundary_aware_masks(20.0 * (2.0 * boundary_aware_target(ball) - 1.0)), ball)


def test_the_head_must_have_one_channel_per_bin():
    mask = torch.zeros(1, 6, 6, dtype=torch.long)
    with pytest.raises(ValueError, match=r"^Expected `logits` to be of shape \(B, bins, \*S\) .*=5.*got 3 channels"):
        boundary_aware_loss(torch.zeros(1, 3, 6, 6), mask)
    with pytest.raises(ValueError, match=r"^Expected `logits` to be .*bins=4"):
        BoundaryAwareLoss(max_distance=4, bins=4)(torch.zeros(1, 5, 6, 6), mask)
    with pytest.raises(ValueError, match=r"^Expected `logits` to be .*bins=5"):
        boundary_aware_masks(torch.zeros(1, 2, 6, 6))
    assert torch.isfinite(BoundaryAwareLoss(max_distance=4, bins=2)(torch.zeros(1, 2, 6, 6), mask))


@pytest.mark.parametrize(
    "options, argument",
    [(dict(bins=6), "bins"), (dict(max_distance=0), "max_distance"), (dict(max_distance=2.5), "max_distance"),
     (dict(mode="multiclass"), "mode"), (dict(cache_target_maps=1), "cache_target_maps")],
)
def test_bad_options_are_refused(options, argument):
    with pytest.raises((TypeError, ValueError), match=f"^Expected `{argument}` to be"):
        create_loss("boundary_aware", **options)


def test_a_multiclass_target_is_refused_and_the_cache_agrees():
    with pytest.raises(ValueError, match="^Expected `target` to be labels in"):
        boundary_aware_loss(torch.zeros(1, 5, 6, 6), torch.full((1, 6, 6), 2))
    masks = random_masks((2, 10, 10), seed=7).long()
    logits = torch.randn(2, 5, 10, 10)
    cached = BoundaryAwareLoss(cache_target_maps=True)
    for _ in range(2):
        torch.testing.assert_close(cached(logits, masks), BoundaryAwareLoss()(logits, masks))
    assert cached.options["cache"].hits == 2
