"""Overlap metrics from per-(image, class) confusion counts: Dice, IoU, precision, recall, accuracy.

Design (STYLE.md 2): :func:`confusion_counts` is the *update* step (validate, then count TP, FP,
FN and TN per image and class in one ``bincount``); the ``*_from_counts`` functions are the
*compute* step; the public functions are ``compute(update(...))`` followed by the averaging. The
stateful :class:`~seglosses.metrics.SegmentationMetrics` accumulates the same counts.

Empty masks (SPEC E). Per (unit, class), with P the predicted and G the target mask:

- ``empty="strict"`` (default): both empty -> 1 (a correct "nothing here"); a ratio whose
  denominator is 0 otherwise (precision with P empty and G not, recall with G empty and P not)
  -> ``zero_division``, NaN by default: undefined, excluded from every mean and counted by the
  accumulator. Dice and IoU are then always defined (0 when exactly one mask is empty).
- ``empty="transunet_compat"`` reproduces the TransUNet / G-CASCADE test code: P empty -> 0
  whatever G; G empty and P not -> 1. The published code only scores DSC; the same table is
  applied to IoU, precision and recall.

Averaging (``average``): ``"none"`` (B, C') per image and class; ``"class"`` (C',) the mean over
images per class; ``"macro"`` the mean over images then over classes (the papers' protocol; pass
stacked volumes as the images for per-volume scores); ``"micro"`` counts pooled over the images
(the accumulated confusion matrix of Cityscapes mIoU), one score per class, then the mean over
classes. NaN scores are skipped by every mean; a mean over nothing is NaN, never 0.
C' = C - 1 (classes 1..C-1) unless ``include_background=True``.

Background: one rule for losses and metrics. A loss trains every output channel, so the losses
include the background by default (as MONAI's ``DiceLoss``); a metric reports the structures, so
the metrics leave it out by default (the papers' foreground means; the background's Dice, near 1,
would inflate them). MONAI's ``DiceMetric`` includes it by default: pass
``include_background=True`` for its numbers.

Inputs: integer label maps (B, *S), or (B, C, *S) float 0/1 masks, one-hot or overlapping
multilabel regions (BraTS WT/TC/ET), each channel counted as its own binary mask (pass
``include_background=True`` when channel 0 is a region, not the background; the accuracies assume
one label per pixel); tensors or NumPy arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from seglosses._checks import check_one_of
from seglosses.metrics._inputs import (
    check_average,
    check_empty,
    check_zero_division,
    evaluated_classes,
    resolve_maps,
)
from seglosses.metrics._reduce import nanmean, reduce_scores

OverlapMetric = Literal["dice", "iou", "precision", "recall"]
AccuracyKind = Literal["pixel", "foreground", "mean_class"]
OVERLAP_METRICS: tuple[str, ...] = ("dice", "iou", "precision", "recall")
ACCURACY_KINDS: tuple[str, ...] = ("pixel", "foreground", "mean_class")
ACCURACY_AVERAGES: tuple[str, ...] = ("none", "macro", "micro")

__all__ = [
    "ConfusionCounts",
    "accuracy",
    "confusion_counts",
    "dice_score",
    "iou_score",
    "precision",
    "recall",
]


@dataclass(frozen=True)
class ConfusionCounts:
    """True/false positives/negatives per (unit, class), each an (N, C) int64 tensor.

    Example:
        >>> pred = torch.tensor([[[0, 1], [1, 1]], [[0, 0], [0, 0]]])
        >>> target = torch.tensor([[[0, 1], [0, 1]], [[0, 0], [0, 1]]])
        >>> counts = confusion_counts(pred, target, num_classes=2)  # two 2x2 images, two classes
        >>> counts.tp, counts.num_pixels
        (tensor([[1, 2],
                [3, 0]]), tensor([4, 4]))
        >>> counts.pred_empty  # class 1 is not predicted in the second image
        tensor([[False, False],
                [False,  True]])
        >>> counts.pooled().tp
        tensor([[4, 2]])
    """

    tp: Tensor
    fp: Tensor
    fn: Tensor
    tn: Tensor

    @property
    def pred_empty(self) -> Tensor:
        """(N, C) bool: the class is absent from the prediction."""
        return (self.tp + self.fp) == 0

    @property
    def target_empty(self) -> Tensor:
        """(N, C) bool: the class is absent from the target."""
        return (self.tp + self.fn) == 0

    @property
    def num_pixels(self) -> Tensor:
        """(N,) pixels (voxels) per unit."""
        return (self.tp + self.fp + self.fn + self.tn)[:, 0]

    def pooled(self) -> ConfusionCounts:
        """Counts summed over units, shape (1, C): the accumulated confusion matrix."""
        return ConfusionCounts(*(count.sum(dim=0, keepdim=True) for count in self.as_tuple()))

    def as_tuple(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.tp, self.fp, self.fn, self.tn

    @staticmethod
    def cat(parts: list[ConfusionCounts]) -> ConfusionCounts:
        """Concatenate counts of several batches along the unit axis."""
        columns = zip(*(p.as_tuple() for p in parts), strict=True)
        return ConfusionCounts(*(torch.cat(column) for column in columns))


def confusion_counts(pred: Tensor, target: Tensor, num_classes: int) -> ConfusionCounts:
    r"""TP, FP, FN and TN of every class in every image (the *update* step of the overlap metrics).

    .. math::
        M_{b,i,j} = \#\{n : y_{bn} = i,\ \hat y_{bn} = j\},\quad
        TP_{bc} = M_{b,c,c},\ FP_{bc} = \textstyle\sum_{i \ne c} M_{b,i,c},\
        FN_{bc} = \textstyle\sum_{j \ne c} M_{b,c,j}

    With (B, C, *S) masks (float one-hot or overlapping multilabel regions), every channel is
    counted as its own binary mask: :math:`TP_{bc} = \#\{n : \hat y_{bcn} = y_{bcn} = 1\}` and so on.

    Args:
        pred: (B, *S) integer predicted labels, S = (H, W) or (D, H, W); or (B, C, *S) float 0/1
            masks; a tensor or a NumPy array.
        target: (B, *S) integer target labels, or (B, C, *S) float 0/1 masks.
        num_classes: number of classes C (background included), >= 2.

    Returns:
        :class:`ConfusionCounts` with (B, C) int64 tensors on the input device.

    Example:
        >>> pred = torch.tensor([[[0, 1, 1], [0, 1, 0]]])
        >>> target = torch.tensor([[[0, 1, 1], [1, 0, 0]]])
        >>> counts = confusion_counts(pred, target, num_classes=2)
        >>> counts.tp, counts.fp, counts.fn
        (tensor([[2, 2]]), tensor([[1, 1]]), tensor([[1, 1]]))
    """
    pred, target, masks = resolve_maps(pred, target, num_classes)
    batch_size = pred.shape[0]
    if masks:
        pred, target = pred.flatten(2), target.flatten(2)
        tp = (pred & target).sum(dim=2)
        fp = pred.sum(dim=2) - tp
        fn = target.sum(dim=2) - tp
        return ConfusionCounts(tp=tp, fp=fp, fn=fn, tn=pred.shape[2] - tp - fp - fn)
    # One bincount over (image, target class, predicted class) gives every confusion matrix.
    image_offset = torch.arange(batch_size, device=pred.device).view(-1, 1) * (num_classes * num_classes)
    index = (
        image_offset
        + target.reshape(batch_size, -1).long() * num_classes
        + pred.reshape(batch_size, -1).long()
    )
    matrix = torch.bincount(index.reshape(-1), minlength=batch_size * num_classes * num_classes)
    matrix = matrix.view(batch_size, num_classes, num_classes)
    tp = matrix.diagonal(dim1=1, dim2=2)
    fp = matrix.sum(dim=1) - tp
    fn = matrix.sum(dim=2) - tp
    num_pixels = pred[0].numel()
    return ConfusionCounts(tp=tp.contiguous(), fp=fp, fn=fn, tn=num_pixels - tp - fp - fn)


def _ratio(
    numerator: Tensor,
    denominator: Tensor,
    pred_empty: Tensor,
    target_empty: Tensor,
    empty: str,
    zero_division: float,
) -> Tensor:
    numerator, denominator = numerator.double(), denominator.double()
    score = torch.where(denominator > 0, numerator / denominator.clamp_min(1), zero_division)
    if empty == "strict":
        return torch.where(pred_empty & target_empty, 1.0, score)
    return torch.where(pred_empty, 0.0, torch.where(target_empty, 1.0, score))


def scores_from_counts(
    counts: ConfusionCounts, metric: str, *, empty: str = "strict", zero_division: float = math.nan
) -> Tensor:
    """The *compute* step: (N, C) float64 scores of ``metric`` in {"dice", "iou", "precision", "recall"}."""
    check_one_of("metric", metric, OVERLAP_METRICS)
    check_empty(empty)
    zero_division = check_zero_division(zero_division)
    tp, fp, fn = counts.tp, counts.fp, counts.fn
    numerator, denominator = {
        "dice": (2 * tp, 2 * tp + fp + fn),
        "iou": (tp, tp + fp + fn),
        "precision": (tp, tp + fp),
        "recall": (tp, tp + fn),
    }[metric]
    return _ratio(numerator, denominator, counts.pred_empty, counts.target_empty, empty, zero_division)


def accuracy_from_counts(
    counts: ConfusionCounts,
    kind: str,
    classes: list[int],
    *,
    empty: str = "strict",
    zero_division: float = math.nan,
) -> Tensor:
    """(N,) float64 accuracy of every unit; ``classes`` are the classes averaged by "mean_class"."""
    check_one_of("kind", kind, ACCURACY_KINDS)
    if kind == "pixel":
        return counts.tp.sum(dim=1).double() / counts.num_pixels.double()
    if kind == "mean_class":
        per_class = scores_from_counts(counts, "recall", empty=empty, zero_division=zero_division)
        return nanmean(per_class[:, classes], dim=1)
    foreground = ConfusionCounts(*(count[:, 1:].sum(dim=1, keepdim=True) for count in counts.as_tuple()))
    return scores_from_counts(foreground, "recall", empty=empty, zero_division=zero_division)[:, 0]


def _overlap(
    pred: Tensor,
    target: Tensor,
    num_classes: int,
    metric: str,
    include_background: bool,
    average: str,
    empty: str,
    zero_division: float,
) -> Tensor:
    check_average(average)
    check_empty(empty)
    classes = evaluated_classes(num_classes, include_background)
    counts = confusion_counts(pred, target, num_classes)
    if average == "micro":
        pooled = scores_from_counts(counts.pooled(), metric, empty=empty, zero_division=zero_division)
        return nanmean(pooled[0, classes], dim=0)
    per_unit = scores_from_counts(counts, metric, empty=empty, zero_division=zero_division)
    return reduce_scores(per_unit[:, classes], average)


def dice_score(
    pred: Tensor,
    target: Tensor,
    num_classes: int,
    *,
    include_background: bool = False,
    average: str = "none",
    empty: str = "strict",
) -> Tensor:
    r"""Dice similarity coefficient (DSC, F1) of hard label maps, per image and class.

    .. math::
        \mathrm{DSC}_{bc} = \frac{2\,TP_{bc}}{2\,TP_{bc} + FP_{bc} + FN_{bc}}

    Reference: L. R. Dice, "Measures of the amount of ecologic association between species",
    Ecology 26(3), 1945. Empty masks and averaging: see the module docstring (SPEC E).

    Args:
        pred: (B, *S) integer predicted labels, S = (H, W) or (D, H, W), or (B, C, *S) float 0/1
            masks (one-hot or multilabel; module docstring); a tensor or a NumPy array.
        target: (B, *S) integer target labels, or (B, C, *S) float 0/1 masks.
        num_classes: number of classes C, background (label 0) included.
        include_background: also score class 0 (default False: classes 1..C-1; see "Background"
            in the module docstring).
        average: "none" -> (B, C'), "class" -> (C',), "macro" or "micro" -> scalar.
        empty: "strict" (both empty -> 1, one empty -> 0) or "transunet_compat".

    Returns:
        float64 tensor of shape (B, C'), (C',) or () depending on ``average``.

    Example:
        >>> pred = torch.tensor([[[0, 1, 1, 0], [0, 1, 1, 0], [2, 2, 0, 0]]])
        >>> target = torch.tensor([[[0, 1, 1, 0], [0, 0, 1, 0], [2, 0, 0, 0]]])
        >>> dice_score(pred, target, num_classes=3)
        tensor([[0.8571, 0.6667]], dtype=torch.float64)
        >>> dice_score(pred, target, num_classes=3, average="macro")
        tensor(0.7619, dtype=torch.float64)
    """
    return _overlap(pred, target, num_classes, "dice", include_background, average, empty, math.nan)


def iou_score(
    pred: Tensor,
    target: Tensor,
    num_classes: int,
    *,
    include_background: bool = False,
    average: str = "none",
    empty: str = "strict",
) -> Tensor:
    r"""Intersection over union (Jaccard index) of hard label maps, per image and class.

    .. math::
        \mathrm{IoU}_{bc} = \frac{TP_{bc}}{TP_{bc} + FP_{bc} + FN_{bc}}

    Reference: P. Jaccard, "The distribution of the flora in the alpine zone", New Phytologist
    11(2), 1912. ``average="micro"`` gives the Cityscapes mIoU of the accumulated confusion matrix.

    Args:
        pred: (B, *S) integer predicted labels, S = (H, W) or (D, H, W), or (B, C, *S) float 0/1
            masks (one-hot or multilabel; module docstring); a tensor or a NumPy array.
        target: (B, *S) integer target labels, or (B, C, *S) float 0/1 masks.
        num_classes: number of classes C, background (label 0) included.
        include_background: also score class 0 (default False).
        average: "none" -> (B, C'), "class" -> (C',), "macro" or "micro" -> scalar.
        empty: "strict" (both empty -> 1, one empty -> 0) or "transunet_compat".

    Returns:
        float64 tensor of shape (B, C'), (C',) or ().

    Example:
        >>> pred = torch.tensor([[[0, 1, 1, 0], [0, 1, 1, 0], [2, 2, 0, 0]]])
        >>> target = torch.tensor([[[0, 1, 1, 0], [0, 0, 1, 0], [2, 0, 0, 0]]])
        >>> iou_score(pred, target, num_classes=3)
        tensor([[0.7500, 0.5000]], dtype=torch.float64)
    """
    return _overlap(pred, target, num_classes, "iou", include_background, average, empty, math.nan)


def precision(
    pred: Tensor,
    target: Tensor,
    num_classes: int,
    *,
    include_background: bool = False,
    average: str = "none",
    empty: str = "strict",
    zero_division: float = math.nan,
) -> Tensor:
    r"""Precision (positive predictive value) of hard label maps, per image and class.

    .. math::
        \mathrm{Prec}_{bc} = \frac{TP_{bc}}{TP_{bc} + FP_{bc}}

    Undefined (0/0) when the class is absent from the prediction: 1 when it is absent from the
    target too (``empty="strict"``), else ``zero_division`` (NaN: excluded from means, counted).

    Args:
        pred: (B, *S) integer predicted labels, S = (H, W) or (D, H, W), or (B, C, *S) float 0/1
            masks (one-hot or multilabel; module docstring); a tensor or a NumPy array.
        target: (B, *S) integer target labels, or (B, C, *S) float 0/1 masks.
        num_classes: number of classes C, background (label 0) included.
        include_background: also score class 0 (default False).
        average: "none" -> (B, C'), "class" -> (C',), "macro" or "micro" -> scalar.
        empty: "strict" or "transunet_compat" (see the module docstring).
        zero_division: value of an undefined precision: NaN (default), or a number in [0, 1].

    Returns:
        float64 tensor of shape (B, C'), (C',) or ().

    Example:
        >>> pred = torch.tensor([[[0, 1, 1, 0], [0, 1, 1, 0]]])
        >>> target = torch.tensor([[[0, 1, 1, 0], [0, 0, 1, 2]]])
        >>> precision(pred, target, num_classes=3)
        tensor([[0.7500,    nan]], dtype=torch.float64)
        >>> precision(pred, target, num_classes=3, zero_division=0.0)
        tensor([[0.7500, 0.0000]], dtype=torch.float64)
    """
    return _overlap(
        pred,
        target,
        num_classes,
        "precision",
        include_background,
        average,
        empty,
        check_zero_division(zero_division),
    )


def recall(
    pred: Tensor,
    target: Tensor,
    num_classes: int,
    *,
    include_background: bool = False,
    average: str = "none",
    empty: str = "strict",
    zero_division: float = math.nan,
) -> Tensor:
    r"""Recall (sensitivity, true positive rate) of hard label maps, per image and class.

    .. math::
        \mathrm{Rec}_{bc} = \frac{TP_{bc}}{TP_{bc} + FN_{bc}}

    Undefined (0/0) when the class is absent from the target: 1 when it is absent from the
    prediction too (``empty="strict"``), else ``zero_division`` (NaN: excluded from means).

    Args:
        pred: (B, *S) integer predicted labels, S = (H, W) or (D, H, W), or (B, C, *S) float 0/1
            masks (one-hot or multilabel; module docstring); a tensor or a NumPy array.
        target: (B, *S) integer target labels, or (B, C, *S) float 0/1 masks.
        num_classes: number of classes C, background (label 0) included.
        include_background: also score class 0 (default False).
        average: "none" -> (B, C'), "class" -> (C',), "macro" or "micro" -> scalar.
        empty: "strict" or "transunet_compat" (see the module docstring).
        zero_division: value of an undefined recall: NaN (default), or a number in [0, 1].

    Returns:
        float64 tensor of shape (B, C'), (C',) or ().

    Example:
        >>> pred = torch.tensor([[[0, 1, 1, 0], [0, 1, 1, 2]]])
        >>> target = torch.tensor([[[0, 1, 1, 0], [0, 0, 1, 0]]])
        >>> recall(pred, target, num_classes=3)
        tensor([[1.,  nan]], dtype=torch.float64)
    """
    return _overlap(
        pred,
        target,
        num_classes,
        "recall",
        include_background,
        average,
        empty,
        check_zero_division(zero_division),
    )


def accuracy(
    pred: Tensor,
    target: Tensor,
    num_classes: int,
    *,
    kind: str = "pixel",
    include_background: bool = False,
    average: str = "none",
    empty: str = "strict",
    zero_division: float = math.nan,
) -> Tensor:
    r"""Accuracy of hard label maps, per image: pixel, foreground or mean class accuracy.

    The papers' "accuracy" is ambiguous (SPEC E), so all three are offered:

    .. math::
        \mathrm{Acc}^{\mathrm{pixel}}_b = \frac{\sum_{c} TP_{bc}}{\#\mathrm{pixels}},\quad
        \mathrm{Acc}^{\mathrm{fg}}_b = \frac{\sum_{c \ge 1} TP_{bc}}{\sum_{c \ge 1} (TP_{bc} + FN_{bc})},\quad
        \mathrm{Acc}^{\mathrm{class}}_b = \frac{1}{|C'|} \sum_{c \in C'} \mathrm{Rec}_{bc}

    ``"pixel"`` counts every pixel (background included, ``include_background`` is not used);
    ``"foreground"`` is the micro recall of the foreground pixels (background never included);
    ``"mean_class"`` averages the per-class recall over the evaluated classes (``include_background``
    chooses them), skipping undefined recalls. Empty-mask rules are those of :func:`recall`.

    Args:
        pred: (B, *S) integer predicted labels, S = (H, W) or (D, H, W), or (B, C, *S) float 0/1
            masks (one-hot or multilabel; module docstring); a tensor or a NumPy array.
        target: (B, *S) integer target labels, or (B, C, *S) float 0/1 masks.
        num_classes: number of classes C, background (label 0) included.
        kind: "pixel", "foreground" or "mean_class".
        include_background: with ``kind="mean_class"``, also average class 0.
        average: "none" -> (B,), "macro" -> mean over images, "micro" -> counts pooled over images.
        empty: "strict" or "transunet_compat" (as for :func:`recall`).
        zero_division: value of an undefined recall (NaN by default).

    Returns:
        float64 tensor of shape (B,) or ().

    Example:
        >>> pred = torch.tensor([[[0, 1, 1, 0], [1, 1, 1, 2]]])
        >>> target = torch.tensor([[[0, 1, 1, 1], [0, 0, 2, 2]]])
        >>> accuracy(pred, target, num_classes=3)
        tensor([0.5000], dtype=torch.float64)
        >>> accuracy(pred, target, num_classes=3, kind="foreground")
        tensor([0.6000], dtype=torch.float64)
        >>> accuracy(pred, target, num_classes=3, kind="mean_class")
        tensor([0.5833], dtype=torch.float64)
    """
    check_one_of("kind", kind, ACCURACY_KINDS)
    check_average(average, ACCURACY_AVERAGES)
    check_empty(empty)
    zero_division = check_zero_division(zero_division)
    classes = evaluated_classes(num_classes, include_background)
    counts = confusion_counts(pred, target, num_classes)
    if average == "micro":
        counts = counts.pooled()
    per_unit = accuracy_from_counts(counts, kind, classes, empty=empty, zero_division=zero_division)
    return per_unit if average == "none" else nanmean(per_unit, dim=0)
