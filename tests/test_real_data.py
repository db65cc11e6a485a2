"""Losses on real ACDC cardiac MRI label maps (2D slices and a 3D volume) against independent oracles.

The "prediction" is a plausible network output: one-hot scores of a shifted copy of the label
map plus noise, so every class has true positives, false positives and false negatives.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import seglosses

h5py = pytest.importorskip("h5py")
monai_losses = pytest.importorskip("monai.losses")

SLICES = ["patient004_frame01_slice_4", "patient004_frame02_slice_5"]


def _read(path, key: str) -> torch.Tensor:
    with h5py.File(path, "r") as handle:
        return torch.from_numpy(handle[key][()].astype("int64"))


def _logits_for(labels: torch.Tensor, num_classes: int = 4, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shifted = labels.roll(shifts=(2, -3), dims=(-2, -1))
    scores = 3.0 * F.one_hot(shifted, num_classes).movedim(-1, 1).double()
    return scores + torch.randn(scores.shape, generator=generator, dtype=torch.float64)


@pytest.fixture
def acdc_slices(data_dir):
    folder = data_dir / "acdc" / "data"
    labels = torch.stack([_read(folder / f"{name}.h5", "label") for name in SLICES])
    return _logits_for(labels), labels


@pytest.fixture
def acdc_volume(data_dir):
    labels = _read(data_dir / "acdc" / "data" / "patient001_frame01.h5", "label")[None]
    return _logits_for(labels), labels


@pytest.mark.parametrize("squared", [True, False])
def test_dice_matches_monai_on_acdc_slices(acdc_slices, squared, device):
    logits, labels = (t.to(device) for t in acdc_slices)
    ours = seglosses.dice_loss(logits, labels, squared=squared, include_background=False)
    monai = monai_losses.DiceLoss(include_background=False, to_onehot_y=True, softmax=True, squared_pred=squared)
    torch.testing.assert_close(ours, monai(logits, labels[:, None]))


def test_dice_matches_monai_on_an_acdc_volume(acdc_volume, device):
    logits, labels = (t.to(device) for t in acdc_volume)
    ours = seglosses.dice_loss(logits, labels, batch=True)
    monai = monai_losses.DiceLoss(to_onehot_y=True, softmax=True, squared_pred=True, batch=True)
    torch.testing.assert_close(ours, monai(logits, labels[:, None]))


def test_cross_entropy_matches_torch_on_acdc_slices(acdc_slices, device):
    logits, labels = (t.to(device) for t in acdc_slices)
    weights = torch.tensor([0.5, 2.0, 1.0, 1.5], dtype=torch.float64, device=device)
    ours = seglosses.cross_entropy(logits, labels, class_weights=weights, reduction="none")
    pairs = zip(logits, labels, strict=True)
    reference = torch.stack([F.cross_entropy(x[None], y[None], weight=weights) for x, y in pairs])
    torch.testing.assert_close(ours, reference)


@pytest.mark.parametrize("name", ["cross_entropy", "dice", "ce_dice_pixel"])
def test_per_pixel_form_is_exact_on_real_labels(acdc_slices, name, device):
    logits, labels = (t.to(device) for t in acdc_slices)
    logits.requires_grad_(True)
    loss = seglosses.create_loss(name)
    per_image = loss.per_image(logits, labels)
    per_pixel = loss.per_pixel(logits, labels).mean(dim=(1, 2))
    torch.testing.assert_close(per_pixel, per_image)
    (grad_image,) = torch.autograd.grad(per_image.sum(), logits)
    (grad_pixel,) = torch.autograd.grad(per_pixel.sum(), logits)
    torch.testing.assert_close(grad_pixel, grad_image)
