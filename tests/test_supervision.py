"""Deep supervision: against MONAI's DeepSupervisionLoss, nnU-Net's weights and a naive nearest-neighbour
downsampling; target lists, ignore labels, dense targets, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seglosses import (
    CrossEntropyLoss,
    DeepSupervision,
    DiceLoss,
    create_loss,
    deep_supervision_weights,
    downsample_target,
)
from seglosses.region import dice_loss


def outputs_and_labels(spatial=(16, 12), levels=3, channels=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    outputs = [
        torch.randn(2, channels, *(s // 2**level for s in spatial), generator=generator, dtype=torch.float64)
        for level in range(levels)
    ]
    labels = torch.randint(0, channels, (2, *spatial), generator=generator)
    return outputs, labels


def naive_nearest_exact(labels: torch.Tensor, size) -> torch.Tensor:
    """Source index floor((i + 0.5) * in / out) along every axis (PyTorch's and MONAI's "nearest-exact")."""
    result = labels
    for axis, out in enumerate(size, start=1):
        length = result.shape[axis]
        index = torch.tensor([min(int((i + 0.5) * length / out), length - 1) for i in range(out)])
        result = result.index_select(axis, index)
    return result


def nnunet_weights(levels: int) -> np.ndarray:
    """nnU-Net v2 nnUNetTrainer._build_loss (single process), written out."""
    weights = np.array([1 / (2**i) for i in range(levels)])
    weights[-1] = 0
    return weights / weights.sum()


@pytest.mark.parametrize("levels", [2, 3, 5])
def test_default_weights_are_nnunets(levels):
    np.testing.assert_allclose(deep_supervision_weights(levels), nnunet_weights(levels))
    halving = np.array([0.5**i for i in range(levels)])
    np.testing.assert_allclose(deep_supervision_weights(levels, "halving"), halving / halving.sum())
    assert deep_supervision_weights(1) == [1.0]


@pytest.mark.parametrize("spatial", [(16, 12), (8, 12, 10)], ids=["2d", "3d"])
def test_downsampling_is_nearest_exact(spatial):
    _, labels = outputs_and_labels(spatial)
    for factor in (2, 4):
        size = tuple(s // factor for s in spatial)
        expected = naive_nearest_exact(labels, size)
        assert torch.equal(downsample_target(labels, size, 3), expected)
        assert torch.equal(downsample_target(labels.unsqueeze(1), size, 3), expected.unsqueeze(1))
        one_hot = torch.nn.functional.one_hot(labels, 3).movedim(-1, 1).float()
        assert torch.equal(downsample_target(one_hot, size, 3).argmax(1), expected)


def test_value_is_the_weighted_sum_over_levels():
    outputs, labels = outputs_and_labels()
    weights = nnunet_weights(3)
    expected = sum(
        w * dice_loss(o, naive_nearest_exact(labels, o.shape[2:])) for w, o in zip(weights, outputs, strict=True)
    )
    torch.testing.assert_close(DeepSupervision(DiceLoss())(outputs, labels), expected)


def test_equals_monai_deep_supervision_loss():
    """MONAI's default: weights 1, 1/2, 1/4 (floor 1/16), not normalised, nearest-exact targets."""
    monai_losses = pytest.importorskip("monai.losses")
    outputs, labels = outputs_and_labels(levels=4)
    monai = monai_losses.DeepSupervisionLoss(
        monai_losses.DiceLoss(softmax=True, to_onehot_y=True, squared_pred=True, smooth_nr=1e-5, smooth_dr=1e-5)
    )
    expected = monai([o.float() for o in outputs], labels.unsqueeze(1).float())
    ours = DeepSupervision(DiceLoss(), weights=[1.0, 0.5, 0.25, 0.125], normalize=False)
    torch.testing.assert_close(ours([o.float() for o in outputs], labels), expected, rtol=1e-5, atol=1e-6)


def test_target_list_ignore_label_and_gradient():
    outputs, labels = outputs_and_labels()
    labels[:, :4, :4] = 255
    outputs = [o.requires_grad_() for o in outputs]
    loss = DeepSupervision(CrossEntropyLoss(ignore_index=255), weights="halving")
    targets = [naive_nearest_exact(labels, o.shape[2:]) for o in outputs]
    value = loss(outputs, labels)
    torch.testing.assert_close(value, loss(outputs, targets))
    value.backward()
    assert all(o.grad is not None and torch.isfinite(o.grad).all() for o in outputs)
    torch.testing.assert_close(loss.per_image(outputs, labels).mean(), value)


def test_works_with_sums_and_registry_products_and_single_tensors():
    outputs, labels = outputs_and_labels()
    summed = DeepSupervision(0.5 * DiceLoss() + CrossEntropyLoss())
    created = DeepSupervision(create_loss("dice_ce"))
    assert torch.isfinite(summed(outputs, labels)) and torch.isfinite(created(outputs, labels))
    torch.testing.assert_close(DeepSupervision(DiceLoss())(outputs[0], labels), DiceLoss()(outputs[0], labels))


def test_plain_losses_on_a_list_point_to_deep_supervision():
    outputs, labels = outputs_and_labels()
    with pytest.raises(TypeError, match=r"^Expected `logits` to be a tensor .*DeepSupervision"):
        dice_loss(outputs, labels)


@pytest.mark.parametrize(
    "build, call, error, argument",
    [
        (lambda: DeepSupervision(DiceLoss(), weights="exp"), None, ValueError, "weights"),
        (lambda: DeepSupervision(DiceLoss(), weights=[1.0, -1.0]), None, ValueError, r"weights\[1\]"),
        (lambda: DeepSupervision(DiceLoss(), weights=[0.0, 0.0]), None, ValueError, "weights"),
        (lambda: DeepSupervision(DiceLoss(), weights=[]), None, ValueError, "weights"),
        (lambda: DeepSupervision("dice"), None, TypeError, "loss"),
        (lambda: DeepSupervision(DiceLoss(), weights=[1.0, 0.5]), "three outputs", ValueError, "logits"),
        (lambda: DeepSupervision(DiceLoss()), "two targets", ValueError, "target"),
        (lambda: DeepSupervision(DiceLoss()), "empty list", TypeError, "logits"),
        (lambda: DeepSupervision(DiceLoss()), "channel mismatch", ValueError, r"logits\[1\]"),
    ],
)
def test_errors_name_the_argument(build, call, error, argument):
    outputs, labels = outputs_and_labels()
    with pytest.raises(error, match=rf"^Expected `{argument}` to be"):
        loss = build()
        if call == "three outputs":
            loss(outputs, labels)
        elif call == "two targets":
            loss(outputs, [labels, labels])
        elif call == "empty list":
            loss([], labels)
        elif call == "channel mismatch":
            loss([outputs[0], outputs[1][:, :2]], labels)
