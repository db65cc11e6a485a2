"""clDice (region.py) against the reference code of Shit et al. (soft_skel, soft_cldice) transcribed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seglosses.region import cldice_loss, soft_skeleton


def reference_soft_erode(img):
    if img.ndim == 4:
        p1 = -F.max_pool2d(-img, (3, 1), (1, 1), (1, 0))
        p2 = -F.max_pool2d(-img, (1, 3), (1, 1), (0, 1))
        return torch.min(p1, p2)
    p1 = -F.max_pool3d(-img, (3, 1, 1), (1, 1, 1), (1, 0, 0))
    p2 = -F.max_pool3d(-img, (1, 3, 1), (1, 1, 1), (0, 1, 0))
    p3 = -F.max_pool3d(-img, (1, 1, 3), (1, 1, 1), (0, 0, 1))
    return torch.min(torch.min(p1, p2), p3)


def reference_soft_dilate(img):
    if img.ndim == 4:
        return F.max_pool2d(img, (3, 3), (1, 1), (1, 1))
    return F.max_pool3d(img, (3, 3, 3), (1, 1, 1), (1, 1, 1))


def reference_soft_skel(img, iter_):
    img1 = reference_soft_dilate(reference_soft_erode(img))
    skel = F.relu(img - img1)
    for _ in range(iter_):
        img = reference_soft_erode(img)
        img1 = reference_soft_dilate(reference_soft_erode(img))
        delta = F.relu(img - img1)
        skel = skel + F.relu(delta - skel * delta)
    return skel


def reference_soft_cldice(y_true, y_pred, iter_=3, smooth=1.0):
    skel_pred = reference_soft_skel(y_pred, iter_)
    skel_true = reference_soft_skel(y_true, iter_)
    tprec = (torch.sum(torch.multiply(skel_pred, y_true)[:, 1:, ...]) + smooth) / (
        torch.sum(skel_pred[:, 1:, ...]) + smooth)
    tsens = (torch.sum(torch.multiply(skel_true, y_pred)[:, 1:, ...]) + smooth) / (
        torch.sum(skel_true[:, 1:, ...]) + smooth)
    return 1.0 - 2.0 * (tprec * tsens) / (tprec + tsens)


def tubes(batch: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.zeros(batch, *shape, dtype=torch.long)
    for image in range(batch):
        for label in (1, 2):
            row = int(torch.randint(1, shape[0] - 3, (1,), generator=generator))
            labels[image, row : row + 2] = label  # a 2-thick sheet / bar per class
            col = int(torch.randint(1, shape[-1] - 3, (1,), generator=generator))
            labels[image, ..., col : col + 3] = label
    return labels


@pytest.mark.parametrize("shape", [(12, 14), (8, 9, 10)])
def test_batch_mode_matches_reference_code(shape):
    labels = tubes(2, shape, seed=0)
    logits = torch.randn(2, 3, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    probs = logits.softmax(dim=1)
    one_hot = F.one_hot(labels, 3).movedim(-1, 1).double()
    expected = reference_soft_cldice(one_hot, probs)
    torch.testing.assert_close(cldice_loss(logits, labels, batch=True), expected)


def test_per_image_is_the_reference_on_each_image():
    labels = tubes(3, (12, 12), seed=2)
    logits = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ours = cldice_loss(logits, labels, reduction="none")
    for image in range(3):
        one_hot = F.one_hot(labels[image : image + 1], 3).movedim(-1, 1).double()
        expected = reference_soft_cldice(one_hot, logits[image : image + 1].softmax(dim=1))
        torch.testing.assert_close(ours[image], expected)


@pytest.mark.parametrize("shape", [(2, 3, 10, 11), (1, 2, 6, 7, 8)])
def test_soft_skeleton_matches_reference(shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    torch.testing.assert_close(soft_skeleton(x, 5), reference_soft_skel(x, 5))


def test_bad_arguments():
    logits, labels = torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="`iterations`"):
        cldice_loss(logits, labels, iterations=-1)
    with pytest.raises(ValueError, match="`smooth`"):
        cldice_loss(logits, labels, smooth=0.0)
    with pytest.raises(ValueError, match="`logits`"):
        cldice_loss(torch.zeros(1, 2, 4), torch.zeros(1, 4, dtype=torch.long))
