"""Overlap metrics: confusion counts, Dice, IoU, precision, recall and accuracy.

Oracles: a naive per-class loop, MONAI (``compute_dice``, ``compute_iou``) and medpy (``dc``,
``precision``, ``recall``), plus hand-derived values for the empty-mask rules of SPEC E.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from seglosses.metrics import (
    accuracy,
    as_labels,
    confusion_counts,
    dice_score,
    iou_score,
    precision,
    recall,
)

SHAPES = [(24, 20), (12, 10, 8)]


def naive_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, C, 4) TP, FP, FN, TN by a loop over images and classes."""
    rows = []
    for p, t in zip(pred, target, strict=True):
        rows.append(
            [
                [
                    int(((p == c) & (t == c)).sum()),
                    int(((p == c) & (t != c)).sum()),
                    int(((p != c) & (t == c)).sum()),
                    int(((p != c) & (t != c)).sum()),
                ]
                for c in range(num_classes)
            ]
        )
    return torch.tensor(rows)


@pytest.mark.parametrize("shape", SHAPES)
def test_confusion_counts_match_a_naive_loop(make_pair, shape, device):
    pred, target = (x.to(device) for x in make_pair(shape, num_classes=4, batch=3))
    counts = confusion_counts(pred, target, 4)
    expected = naive_counts(pred.cpu(), target.cpu(), 4)
    got = torch.stack([c.cpu() for c in counts.as_tuple()], dim=-1)
    assert torch.equal(got, expected)
    assert counts.tp.device == pred.device


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("include_background", [False, True])
def test_dice_and_iou_match_monai(make_pair, to_one_hot, shape, include_background, device):
    monai_metrics = pytest.importorskip("monai.metrics")
    pred, target = make_pair(shape, num_classes=4, batch=3, seed=3)
    ours_dice = dice_score(pred.to(device), target.to(device), 4, include_background=include_background)
    ours_iou = iou_score(pred.to(device), target.to(device), 4, include_background=include_background)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monai_dice = monai_metrics.compute_dice(
            to_one_hot(pred, 4), to_one_hot(target, 4), include_background=include_background
        )
        monai_iou = monai_metrics.compute_iou(
            to_one_hot(pred, 4), to_one_hot(target, 4), include_background=include_background
        )
    # MONAI returns NaN (ignore_empty=True) where the target class is empty; there our strict
    # rule gives 1 (both empty) or 0 (false positives only). Compare where the target is present.
    present = ~torch.isnan(monai_dice)
    assert present.any()
    torch.testing.assert_close(ours_dice.cpu()[present], monai_dice[present].double())
    torch.testing.assert_close(ours_iou.cpu()[present], monai_iou[present].double())


@pytest.mark.parametrize("shape", SHAPES)
def test_binary_metrics_match_medpy(make_pair, shape):
    binary = pytest.importorskip("medpy.metric.binary")
    pred, target = make_pair(shape, num_classes=2, batch=2, seed=5)
    for b in range(2):
        p, t = pred[b].numpy() == 1, target[b].numpy() == 1
        assert dice_score(pred[b : b + 1], target[b : b + 1], 2).item() == pytest.approx(binary.dc(p, t))
        assert precision(pred[b : b + 1], target[b : b + 1], 2).item() == pytest.approx(
            binary.precision(p, t)
        )
        assert recall(pred[b : b + 1], target[b : b + 1], 2).item() == pytest.approx(binary.recall(p, t))


# (pred has the class, target has the class) -> expected (dice, iou, precision, recall)
STRICT = {
    (False, False): (1.0, 1.0, 1.0, 1.0),
    (False, True): (0.0, 0.0, math.nan, 0.0),
    (True, False): (0.0, 0.0, 0.0, math.nan),
}
COMPAT = {
    (False, False): (0.0, 0.0, 0.0, 0.0),
    (False, True): (0.0, 0.0, 0.0, 0.0),
    (True, False): (1.0, 1.0, 1.0, 1.0),
}


@pytest.mark.parametrize("empty, table", [("strict", STRICT), ("transunet_compat", COMPAT)])
@pytest.mark.parametrize("case", list(STRICT))
def test_empty_mask_rules(empty, table, case, device):
    pred_has, target_has = case
    pred = torch.zeros(1, 4, 4, dtype=torch.long, device=device)
    target = torch.zeros_like(pred)
    if pred_has:
        pred[0, :2, :2] = 1
    if target_has:
        target[0, 1:3, 1:3] = 1
    got = [
        metric(pred, target, 2, empty=empty).item() for metric in (dice_score, iou_score, precision, recall)
    ]
    np.testing.assert_equal(got, table[case])


def test_zero_division_replaces_only_undefined_ratios():
    pred = torch.tensor([[[0, 0], [0, 0]], [[1, 0], [0, 0]]])
    target = torch.tensor([[[1, 0], [0, 0]], [[0, 0], [0, 0]]])
    # image 0: prediction empty, target not -> precision 0/0; image 1: recall 0/0.
    assert torch.isnan(precision(pred, target, 2)[0, 0])
    assert precision(pred, target, 2, zero_division=0.0)[0, 0] == 0.0
    assert recall(pred, target, 2, zero_division=1.0)[1, 0] == 1.0
    # both empty stays 1 whatever zero_division says
    both_empty = torch.zeros(1, 2, 2, dtype=torch.long)
    assert precision(both_empty, both_empty, 2, zero_division=0.0).item() == 1.0


def test_averaging_modes(make_pair):
    pred, target = make_pair((20, 20), num_classes=3, batch=4, seed=7)
    per_unit = dice_score(pred, target, 3)
    assert per_unit.shape == (4, 2)
    torch.testing.assert_close(dice_score(pred, target, 3, average="class"), per_unit.mean(dim=0))
    torch.testing.assert_close(dice_score(pred, target, 3, average="macro"), per_unit.mean())
    # micro: the accumulated confusion matrix, one Dice per class, then the class mean.
    counts = naive_counts(pred, target, 3).sum(dim=0)
    tp, fp, fn = counts[1:, 0], counts[1:, 1], counts[1:, 2]
    expected = (2 * tp / (2 * tp + fp + fn)).double().mean()
    torch.testing.assert_close(dice_score(pred, target, 3, average="micro"), expected)
    assert dice_score(pred, target, 3, include_background=True).shape == (4, 3)


def test_averages_skip_nan_and_never_return_zero_for_nothing():
    pred = torch.zeros(2, 3, 3, dtype=torch.long)
    target = torch.zeros(2, 3, 3, dtype=torch.long)
    target[0, 0, 0] = 1  # precision of image 0 undefined, image 1 both empty -> 1
    assert precision(pred, target, 2, average="macro").item() == 1.0
    assert math.isnan(precision(pred[:1], target[:1], 2, average="macro").item())


def test_accuracy_kinds(make_pair):
    pred, target = make_pair((16, 18), num_classes=4, batch=3, seed=11)
    pixel = accuracy(pred, target, 4)
    torch.testing.assert_close(pixel, (pred == target).double().mean(dim=(1, 2)))
    foreground = accuracy(pred, target, 4, kind="foreground")
    fg = target > 0
    torch.testing.assert_close(
        foreground, ((pred == target) & fg).sum(dim=(1, 2)) / fg.sum(dim=(1, 2)).double()
    )
    mean_class = accuracy(pred, target, 4, kind="mean_class")
    torch.testing.assert_close(mean_class, torch.nanmean(recall(pred, target, 4), dim=1))
    with_background = accuracy(pred, target, 4, kind="mean_class", include_background=True)
    torch.testing.assert_close(
        with_background, torch.nanmean(recall(pred, target, 4, include_background=True), 1)
    )
    # micro pixel accuracy is the pooled fraction of correct pixels
    micro = accuracy(pred, target, 4, average="micro")
    torch.testing.assert_close(micro, (pred == target).double().mean())
    assert accuracy(pred, target, 4, average="macro").shape == ()


def test_bool_labels_are_binary_label_maps():
    pred = torch.tensor([[[True, False], [True, True]]])
    target = torch.tensor([[[True, False], [False, True]]])
    assert dice_score(pred, target, 2).item() == pytest.approx(0.8)


def test_as_labels():
    logits = torch.randn(2, 3, 5, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(as_labels(logits), logits.argmax(dim=1))
    single = torch.tensor([[[[0.2, -0.1]]]])
    assert as_labels(single).tolist() == [[[1, 0]]]
    with pytest.raises(TypeError, match="Expected `logits` to be a floating-point"):
        as_labels(torch.zeros(1, 2, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="Expected `logits` to be of shape"):
        as_labels(torch.zeros(2, 3, 3))


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda p, t: dice_score(p, t[:, :3], 3), ValueError, "Expected `target` to be of the same shape"),
        (lambda p, t: dice_score(p.float(), t, 3), TypeError, "Expected `pred` to be an integer label map"),
        (lambda p, t: dice_score(p, t + 3, 3), ValueError, r"Expected `target` to be labels in \[0, 2\]"),
        (lambda p, t: dice_score(p - 1, t, 3), ValueError, r"Expected `pred` to be labels in \[0, 2\]"),
        (lambda p, t: dice_score(p, t, 1), ValueError, "Expected `num_classes` to be an integer >= 2"),
        (lambda p, t: dice_score(p, t, 3.0), TypeError, "Expected `num_classes` to be of type int"),
        (lambda p, t: dice_score(p, t, 3, average="mean"), ValueError, "Expected `average` to be one of"),
        (lambda p, t: dice_score(p, t, 3, empty="lenient"), ValueError, "Expected `empty` to be one of"),
        (lambda p, t: accuracy(p, t, 3, kind="top1"), ValueError, "Expected `kind` to be one of"),
        (lambda p, t: accuracy(p, t, 3, average="class"), ValueError, "Expected `average` to be one of"),
        (lambda p, t: precision(p, t, 3, zero_division=2.0), ValueError, "Expected `zero_division`"),
        (lambda p, t: dice_score(p[0], t[0], 3), ValueError, r"Expected `pred` to be an integer label map of shape"),
        (lambda p, t: dice_score(p, t, 3, include_background=1), TypeError, "Expected `include_background`"),
    ],
)
def test_bad_input_names_the_argument(call, error, message):
    pred = torch.zeros(2, 4, 4, dtype=torch.long)
    with pytest.raises(error, match=message):
        call(pred, pred.clone())
