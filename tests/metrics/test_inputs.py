"""Metric inputs: NumPy arrays, one-hot masks and overlapping multilabel regions (BraTS WT/TC/ET).

Masks are checked against the label-map path of the same data and against MONAI's metrics, which
take one-hot / multilabel (B, C, *S) tensors natively.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from seglosses.metrics import (
    SegmentationMetrics,
    accuracy,
    assd,
    confusion_counts,
    dice_score,
    hd95,
    iou_score,
    precision,
    recall,
    surface_dice,
)

monai_metrics = pytest.importorskip("monai.metrics")

LABEL_METRICS = {
    "dice": dice_score,
    "iou": iou_score,
    "precision": precision,
    "recall": recall,
    "hd95": hd95,
    "assd": assd,
    "nsd": lambda p, t, c, **kw: surface_dice(p, t, c, 1.0, **kw),
}


def brats_regions(labels: torch.Tensor) -> torch.Tensor:
    """BraTS-style nested regions from labels 0..3: WT = {1, 2, 3}, TC = {1, 3}, ET = {3}; (B, 3, *S) float."""
    whole, core, enhancing = labels > 0, (labels == 1) | (labels == 3), labels == 3
    return torch.stack([whole, core, enhancing], dim=1).float()


@pytest.mark.parametrize("name", sorted(LABEL_METRICS))
@pytest.mark.parametrize("shape", [(18, 20), (8, 10, 9)], ids=["2d", "3d"])
def test_numpy_arrays_give_the_tensor_numbers(make_pair, name, shape):
    pred, target = make_pair(shape, num_classes=3, batch=2, seed=5)
    metric = LABEL_METRICS[name]
    expected = metric(pred, target, 3)
    torch.testing.assert_close(metric(pred.numpy(), target.numpy(), 3), expected, equal_nan=True)
    torch.testing.assert_close(metric(pred.numpy(), target, 3), expected, equal_nan=True)


def test_numpy_arrays_in_the_accumulator(make_pair):
    pred, target = make_pair((16, 16), num_classes=3, batch=3, seed=9)
    from_numpy, from_torch = SegmentationMetrics(3), SegmentationMetrics(3)
    from_numpy.update(pred.numpy(), target.numpy())
    from_torch.update(pred, target)
    for key, value in from_torch.compute().items():
        torch.testing.assert_close(from_numpy.compute()[key], value, equal_nan=True)


def test_bad_array_is_refused_in_one_line():
    huge = np.full((4, 300, 300), "x")
    with pytest.raises(TypeError) as raised:
        dice_score(huge, huge, 2)
    message = str(raised.value)
    assert "\n" not in message and len(message) < 200 and "(4, 300, 300)" in message
    with pytest.raises(TypeError) as raised:
        dice_score(np.zeros((2, 50, 50)).tolist(), torch.zeros(2, 50, 50, dtype=torch.long), 2)
    assert "\n" not in str(raised.value) and len(str(raised.value)) < 200


@pytest.mark.parametrize("name", sorted(LABEL_METRICS))
@pytest.mark.parametrize("include_background", [False, True])
@pytest.mark.parametrize("shape", [(18, 20), (8, 10, 9)], ids=["2d", "3d"])
def test_one_hot_masks_equal_label_maps(make_pair, to_one_hot, name, include_background, shape):
    pred, target = make_pair(shape, num_classes=3, batch=2, seed=13)
    metric = LABEL_METRICS[name]
    expected = metric(pred, target, 3, include_background=include_background)
    for pair in ((to_one_hot(pred, 3), to_one_hot(target, 3)), (pred, to_one_hot(target, 3))):
        torch.testing.assert_close(metric(*pair, 3, include_background=include_background), expected, equal_nan=True)


@pytest.mark.parametrize("kind", ["pixel", "foreground", "mean_class"])
def test_accuracies_of_one_hot_masks(make_pair, to_one_hot, kind):
    pred, target = make_pair((18, 20), num_classes=3, batch=2, seed=17)
    expected = accuracy(pred, target, 3, kind=kind)
    torch.testing.assert_close(accuracy(to_one_hot(pred, 3), to_one_hot(target, 3), 3, kind=kind), expected)


@pytest.mark.parametrize("shape", [(24, 22), (10, 12, 11)], ids=["2d", "3d"])
def test_overlapping_regions_match_each_region_alone_and_monai(make_pair, shape):
    """Each channel of a multilabel target is its own structure: the same number as that region as a
    binary label map, and as MONAI's DiceMetric / HausdorffDistanceMetric on the (B, C, *S) masks."""
    pred_labels, target_labels = make_pair(shape, num_classes=4, batch=2, seed=23)
    pred, target = brats_regions(pred_labels), brats_regions(target_labels)
    assert (pred.sum(dim=1) > 1).any()  # the regions overlap
    dice = dice_score(pred, target, 3, include_background=True)
    hd = hd95(pred, target, 3, include_background=True, hd95_mode="max")
    for channel in range(3):
        alone = (pred[:, channel].long(), target[:, channel].long())
        torch.testing.assert_close(dice[:, channel], dice_score(*alone, 2)[:, 0])
        torch.testing.assert_close(hd[:, channel], hd95(*alone, 2, hd95_mode="max")[:, 0], equal_nan=True)
    torch.testing.assert_close(dice, monai_metrics.compute_dice(pred, target, include_background=True).double())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monai_hd = monai_metrics.compute_hausdorff_distance(pred, target, include_background=True, percentile=95)
    torch.testing.assert_close(hd, monai_hd.double(), equal_nan=True, rtol=1e-5, atol=1e-5)  # MONAI: float32


def test_multilabel_counts_by_hand():
    pred = torch.tensor([[[[1.0, 1.0, 0.0]], [[1.0, 0.0, 0.0]]]])  # (B=1, C=2, H=1, W=3), overlapping
    target = torch.tensor([[[[1.0, 0.0, 1.0]], [[1.0, 1.0, 0.0]]]])
    counts = confusion_counts(pred, target, 2)
    assert counts.tp.tolist() == [[1, 1]] and counts.fp.tolist() == [[1, 0]]
    assert counts.fn.tolist() == [[1, 1]] and counts.tn.tolist() == [[0, 1]]


def test_masks_in_the_accumulator(make_pair):
    pred_labels, target_labels = make_pair((20, 20), num_classes=4, batch=3, seed=29)
    pred, target = brats_regions(pred_labels), brats_regions(target_labels)
    metrics = SegmentationMetrics(3, metrics=("dice", "hd95"), include_background=True)
    metrics.update(pred[:2], target[:2])
    metrics.update(pred[2:].numpy(), target[2:].numpy())
    result = metrics.compute()
    torch.testing.assert_close(result["dice/unit"], dice_score(pred, target, 3, include_background=True))
    torch.testing.assert_close(
        result["hd95/unit"], hd95(pred, target, 3, include_background=True), equal_nan=True
    )
    volumes = SegmentationMetrics(3, unit="volume")
    with pytest.raises(TypeError, match="integer label maps .* when unit='volume'"):
        volumes.update(pred, target, case_ids=["a", "a", "b"])


@pytest.mark.parametrize(
    "pred, target, error, message",
    [
        (torch.full((1, 2, 4, 4), 0.5), torch.zeros(1, 2, 4, 4), ValueError, "Expected `pred` to be 0/1 masks"),
        (torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), ValueError, r"float masks of shape \(B, 2, H, W\)"),
        (torch.zeros(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long), TypeError, r"cast a float label map"),
        (torch.zeros(1, 2, 2, 4, 4, dtype=torch.long), torch.zeros(1, 2, 2, 4, 4), ValueError,
         "masks .* as a float tensor"),
        (torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 5), ValueError, "Expected `target` to be of the same shape"),
    ],
)
def test_bad_masks_are_refused(pred, target, error, message):
    with pytest.raises(error, match=message):
        dice_score(pred, target, 2)
