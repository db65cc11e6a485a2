"""Generalised Wasserstein Dice (region.py) against MONAI's GeneralizedWassersteinDiceLoss and a tiny hand case."""

from __future__ import annotations

import pytest
import torch
from monai.losses import GeneralizedWassersteinDiceLoss as MonaiGWDL

from seglosses.region import generalized_wasserstein_dice_loss, generalized_wasserstein_dice_loss_per_pixel


def cost_matrix(classes: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.rand(classes, classes, generator=generator, dtype=torch.float64)
    matrix = (matrix + matrix.T) / 2
    matrix.fill_diagonal_(0.0)
    return matrix / matrix.max()


@pytest.mark.parametrize("weighting", ["default", "gdl"])
@pytest.mark.parametrize("shape", [(3, 4, 9, 11), (2, 3, 5, 6, 4)])
def test_matches_monai(weighting, shape):
    generator = torch.Generator().manual_seed(1)
    logits = 2.0 * torch.randn(shape, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=generator)
    matrix = cost_matrix(shape[1], seed=2)
    monai = MonaiGWDL(dist_matrix=matrix, weighting_mode="GDL" if weighting == "gdl" else "default", reduction="none")
    expected = monai(logits, labels.unsqueeze(1))
    ours = generalized_wasserstein_dice_loss(logits, labels, cost_matrix=matrix, weighting=weighting, reduction="none")
    torch.testing.assert_close(ours, expected.double(), rtol=1e-6, atol=1e-8)
    per_pixel = generalized_wasserstein_dice_loss_per_pixel(logits, labels, cost_matrix=matrix, weighting=weighting)
    torch.testing.assert_close(per_pixel.flatten(1).mean(dim=1), ours)


def test_tiny_hand_case():
    """Labels [0, 1]; p = (1/2, 1/2, 0) on both pixels; M = 1 - I. W = 1/2 on both pixels; only pixel 1 is
    foreground: TP = 1/2. Loss = (1/2 + 1/2) / (2 * 1/2 + 1) = 1/2 (smoothing aside)."""
    labels = torch.tensor([[[0, 1]]])
    logits = torch.stack([torch.zeros(1, 2), torch.zeros(1, 2), torch.full((1, 2), -100.0)]).unsqueeze(0).double()
    value = generalized_wasserstein_dice_loss(logits, labels, eps=1e-12)
    assert value.item() == pytest.approx(0.5, abs=1e-9)


def test_ignored_pixels_do_not_count():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 3, 4, 5, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (1, 4, 5), generator=generator)
    ignored = labels.clone()
    ignored[0, 0] = 255
    expected = generalized_wasserstein_dice_loss(logits[..., 1:, :], labels[:, 1:])
    torch.testing.assert_close(generalized_wasserstein_dice_loss(logits, ignored, ignore_index=255), expected)


def test_bad_cost_matrix():
    logits, labels = torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="`cost_matrix`"):
        generalized_wasserstein_dice_loss(logits, labels, cost_matrix=torch.ones(3, 3))
    with pytest.raises(ValueError, match="`cost_matrix`"):
        generalized_wasserstein_dice_loss(logits, labels, cost_matrix=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="`weighting`"):
        generalized_wasserstein_dice_loss(logits, labels, weighting="GDL")
