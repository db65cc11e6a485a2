"""Boundary-family losses against MONAI (BoundaryLoss, HausdorffDTLoss), the reference code transcribed
(boundary DoU) and scipy-built distance maps (distance-map CE, region-wise, spacing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.losses import BoundaryLoss as MonaiBoundaryLoss
from monai.losses import HausdorffDTLoss as MonaiHausdorffDTLoss
from scipy import ndimage

from seglosses.boundary import (
    boundary_dou_loss,
    boundary_loss,
    boundary_weight,
    distance_map_ce_loss,
    hausdorff_dt_loss,
    hausdorff_dt_loss_per_pixel,
    region_wise_loss,
)


def blobs(batch: int, classes: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Integer labels made of random balls, so that classes have real interiors and boundaries."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape)
    labels = np.zeros((batch, *shape), dtype=np.int64)
    for image in range(batch):
        for label in range(1, classes):
            for _ in range(2):
                centre = np.array([rng.integers(0, s) for s in shape]).reshape(-1, *([1] * len(shape)))
                radius = rng.integers(2, max(3, min(shape) // 3))
                labels[image][((grid - centre) ** 2).sum(0) < radius**2] = label
    return torch.from_numpy(labels)


def one_hot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    return F.one_hot(labels, classes).movedim(-1, 1).double()


@pytest.mark.parametrize("shape", [(24, 20), (10, 12, 9)])
def test_boundary_matches_monai_multiclass(shape):
    labels = blobs(2, 3, shape, seed=0)
    logits = 3.0 * torch.randn(2, 3, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    monai = MonaiBoundaryLoss(softmax=True, include_background=False, reduction="none")(logits, one_hot(labels, 3))
    ours = boundary_loss(logits, labels, reduction="none")
    torch.testing.assert_close(ours, monai.mean(dim=1).double(), rtol=1e-5, atol=1e-6)


def test_boundary_matches_monai_binary_sigmoid():
    labels = blobs(3, 2, (20, 22), seed=2)
    logits = torch.randn(3, 1, 20, 22, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    monai = MonaiBoundaryLoss(sigmoid=True, reduction="none")(logits, labels.unsqueeze(1).double())
    torch.testing.assert_close(boundary_loss(logits, labels, reduction="none"), monai[:, 0].double(), rtol=1e-5,
                               atol=1e-6)


def test_boundary_map_with_spacing_from_scipy():
    labels = blobs(1, 2, (16, 14), seed=4)
    logits = torch.randn(1, 1, 16, 14, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    mask = labels[0].numpy() > 0
    phi = (ndimage.distance_transform_edt(~mask, sampling=(2.0, 0.5)) * ~mask
           - (ndimage.distance_transform_edt(mask, sampling=(2.0, 0.5)) - 1) * mask)
    expected = (torch.sigmoid(logits[0, 0]).numpy() * phi).mean()
    assert boundary_loss(logits, labels, spacing=(2.0, 0.5)).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("shape", [(24, 20), (10, 12, 9)])
def test_hausdorff_dt_matches_monai(shape):
    labels = blobs(2, 4, shape, seed=6)
    logits = 2.0 * torch.randn(2, 4, *shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    monai = MonaiHausdorffDTLoss(softmax=True, include_background=False, reduction="none")(logits, one_hot(labels, 4))
    ours = hausdorff_dt_loss(logits, labels, reduction="none")
    torch.testing.assert_close(ours, monai.flatten(1).mean(dim=1).double(), rtol=1e-5, atol=1e-6)


def test_hausdorff_dt_matches_monai_sigmoid_and_alpha():
    labels = blobs(2, 2, (18, 18), seed=8)
    logits = torch.randn(2, 1, 18, 18, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    monai = MonaiHausdorffDTLoss(alpha=1.5, sigmoid=True, include_background=True, reduction="mean")
    expected = monai(logits, labels.unsqueeze(1).double())
    torch.testing.assert_close(hausdorff_dt_loss(logits, labels, alpha=1.5), expected.double(), rtol=1e-5, atol=1e-6)


def test_hausdorff_dt_on_a_tiny_hand_case():
    """1D-like strip: target [0 0 1 1 0 0], prediction p = 1 on the third pixel only (thresholded [0 0 1 0 0 0])."""
    labels = torch.tensor([[[0, 0, 1, 1, 0, 0]]])
    logits = torch.tensor([[[[-30.0, -30.0, 30.0, -30.0, -30.0, -30.0]]]], dtype=torch.float64)
    # errors: only pixel 3 (p = 0, t = 1); d_G there = 1 (inside, next to the outside), d_P = 1 (next to pred)
    per_pixel = hausdorff_dt_loss_per_pixel(logits, labels)
    expected = torch.tensor([[[0.0, 0.0, 0.0, 1.0 + 1.0, 0.0, 0.0]]], dtype=torch.float64)
    torch.testing.assert_close(per_pixel, expected, atol=1e-9, rtol=0)


def _phi(mask: np.ndarray) -> np.ndarray:
    if not mask.any() or mask.all():
        return np.zeros(mask.shape)
    inside = ndimage.distance_transform_edt(mask)
    return (inside.max() - inside) / inside.max() * mask


def test_distance_map_ce_against_scipy_maps():
    labels = blobs(2, 3, (20, 16), seed=10)
    logits = torch.randn(2, 3, 20, 16, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    log_probs = logits.log_softmax(dim=1).numpy()
    expected = []
    for image in range(2):
        label = labels[image].numpy()
        phi = sum(_phi(label == c) for c in range(3))
        ce = -np.take_along_axis(log_probs[image], label[None], axis=0)[0]
        expected.append(((1.0 + phi) * ce).mean())
    np.testing.assert_allclose(distance_map_ce_loss(logits, labels, reduction="none").numpy(), expected, rtol=1e-6)


def test_distance_map_ce_binary_equals_two_class_softmax():
    """Binary sigmoid = softmax over [0, z]: the same Phi on the foreground and background regions."""
    labels = blobs(2, 2, (14, 15), seed=12)
    z = torch.randn(2, 1, 14, 15, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    two_class = torch.cat([torch.zeros_like(z), z], dim=1)
    torch.testing.assert_close(distance_map_ce_loss(z, labels), distance_map_ce_loss(two_class, labels))


def test_region_wise_against_scipy_maps():
    labels = blobs(2, 3, (18, 17), seed=14)
    logits = torch.randn(2, 3, 18, 17, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    probs = logits.softmax(dim=1).numpy()
    expected = []
    for image in range(2):
        total = 0.0
        for c in range(3):
            mask = labels[image].numpy() == c
            if not mask.any():
                z = np.ones(mask.shape)
            else:
                inside = ndimage.distance_transform_edt(mask)
                z = np.where(mask, -inside / inside.max(), 1.0)
            total += (probs[image, c] * z).mean()
        expected.append(total / 3)
    np.testing.assert_allclose(region_wise_loss(logits, labels, reduction="none").numpy(), expected, rtol=1e-6)


def reference_boundary_dou(logits: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Sun et al.'s BoundaryDoULoss.forward (github.com/sunfan-bvb/BoundaryDoULoss), transcribed for CPU."""
    inputs = torch.softmax(logits, dim=1)
    target = one_hot(labels, classes)
    kernel = torch.tensor([[0.0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.float64)
    loss = 0.0
    for i in range(classes):
        score, tgt = inputs[:, i], target[:, i]
        y = torch.stack([F.conv2d(t[None, None], kernel[None, None], padding=1)[0, 0] for t in tgt])
        y = y * tgt
        y[y == 5] = 0
        c, s = torch.count_nonzero(y), torch.count_nonzero(tgt)
        smooth = 1e-5
        alpha = 2 * (1 - (c + smooth) / (s + smooth)) - 1
        intersect, y_sum, z_sum = (score * tgt).sum(), (tgt * tgt).sum(), (score * score).sum()
        alpha = min(alpha, 0.8)
        loss += (z_sum + y_sum - 2 * intersect + smooth) / (z_sum + y_sum - (1 + alpha) * intersect + smooth)
    return loss / classes


def test_boundary_dou_matches_reference_code():
    labels = blobs(3, 4, (20, 24), seed=16)
    logits = torch.randn(3, 4, 20, 24, generator=torch.Generator().manual_seed(17), dtype=torch.float64)
    torch.testing.assert_close(boundary_dou_loss(logits, labels), reference_boundary_dou(logits, labels, 4),
                               rtol=1e-6, atol=1e-7)


def test_boundary_dou_per_image_and_absent_class():
    labels = blobs(2, 3, (16, 16), seed=18)
    labels[1][labels[1] == 2] = 0  # class 2 absent from image 1
    logits = 20.0 * one_hot(labels, 3)
    per_image = boundary_dou_loss(logits, labels, batch=False, reduction="none")
    assert (per_image.abs() < 1e-6).all()  # a perfect prediction costs 0, an absent class too
    mixed = boundary_dou_loss(torch.randn(2, 3, 16, 16, dtype=torch.float64), labels, batch=False, reduction="none")
    single = boundary_dou_loss(torch.randn(2, 3, 16, 16, dtype=torch.float64)[:1], labels[:1], batch=False)
    assert mixed.shape == (2,) and single.shape == ()


def test_boundary_weight_schedule():
    assert [boundary_weight(epoch) for epoch in (0, 1, 99, 150)] == [0.01, 0.02, 1.0, 1.0]
    assert boundary_weight(3, start=0.1, increment=0.1, maximum=0.25) == 0.25
    with pytest.raises(ValueError, match="`increment`"):
        boundary_weight(1, increment=-0.1)


def test_bad_options_are_named():
    labels = blobs(1, 2, (8, 8), seed=19)
    logits = torch.zeros(1, 2, 8, 8)
    with pytest.raises(ValueError, match="`backend`"):
        boundary_loss(logits, labels, backend="gpu")
    with pytest.raises(ValueError, match="`alpha`"):
        hausdorff_dt_loss(logits, labels, alpha=0.0)
    with pytest.raises(ValueError, match="`spacing`"):
        region_wise_loss(logits, labels, spacing=(1.0, 2.0, 3.0))


@pytest.mark.parametrize("name", ["boundary", "hausdorff_dt", "distance_map_ce", "region_wise"])
def test_cached_target_maps_give_the_same_values(name):
    from seglosses import create_loss

    labels = blobs(2, 3, (14, 12), seed=20)
    logits = torch.randn(2, 3, 14, 12, generator=torch.Generator().manual_seed(21), dtype=torch.float64)
    plain, cached = create_loss(name, reduction="none"), create_loss(name, reduction="none", cache_target_maps=True)
    for _ in range(2):
        torch.testing.assert_close(cached(logits, labels), plain(logits, labels))
        torch.testing.assert_close(cached.per_pixel(logits, labels), plain.per_pixel(logits, labels))
    cache = cached.options["cache"]
    assert cache.misses == 2 and cache.hits == 6  # two images computed once, then read three times
