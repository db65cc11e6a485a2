r"""Overlap (region) losses, computed per image and class.

Soft counts per image :math:`i` and class :math:`c` are sums over the counted pixels:
:math:`TP=\sum p t`, :math:`FP=\sum p(1-t)`, :math:`FN=\sum (1-p) t`, :math:`TN=\sum (1-p)(1-t)`.

**Ratio losses and their exact per-pixel form.** Dice, IoU and Tversky losses of a class can be
written :math:`1-\frac{A+\varepsilon}{Q+\varepsilon}=\frac{\sum_j e_j}{Q+\varepsilon}` with a
non-negative per-pixel error :math:`e_j` (SPEC A.2): :math:`(p-t)^2` for the squared Dice,
:math:`p+t-2pt` for the linear Dice and IoU, :math:`\beta_{FP} p(1-t)+\beta_{FN}(1-p)t` for
Tversky. Hence the per-pixel loss
:math:`d_j=P_i\sum_c a_c e_{cj}/(Q_c+\varepsilon)` (class weights :math:`a_c` summing to one)
averages to the image loss *exactly*, in value and gradient. The generalised Dice loss (one ratio
over the classes) and the sensitivity-specificity loss (a sum of two ratios) decompose the same way.

**Empty classes.** A class absent from both prediction and target has ratio
:math:`\varepsilon/\varepsilon=1`, so no penalty; an empty target with false positives is
penalised (the ratio tends to 0). MCC, undefined there, uses the soft error rates instead.

**Batch mode** (``batch=True``) pools the counts over the batch, as nnU-Net's batch Dice does;
the (B,) per-image values are then each image's share of the batch loss (their mean is the batch
loss) and the per-pixel form stays exact. Losses that are not ratios of pixel sums (log-cosh Dice,
focal Tversky, MCC, Lovasz) give every image the batch loss itself.

**No per-pixel form**: log-cosh Dice and focal Tversky (non-linear functions of a ratio), MCC (of the
counts) and Lovasz (a sum over the sorted errors of all pixels).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from seglosses._checks import check_finite_tensor, check_number, check_one_of, check_type, fail, value_checks_enabled
from seglosses.base import Loss, reduce_images
from seglosses.blocks import (
    SoftCounts,
    class_average_weights,
    dice_error_maps,
    dice_error_sums,
    prepare_class_average,
    ratio_per_image,
    ratio_per_pixel,
    soft_counts,
    spatial_sums,
)
from seglosses.registry import register_loss
from seglosses.targets import Prepared, prepare

__all__ = [
    "ClDiceLoss",
    "DiceLoss",
    "FocalTverskyLoss",
    "GeneralizedDiceLoss",
    "GeneralizedWassersteinDiceLoss",
    "JaccardLoss",
    "LogCoshDiceLoss",
    "LovaszLoss",
    "MCCLoss",
    "RMILoss",
    "SensitivitySpecificityLoss",
    "TverskyLoss",
    "class_average_weights",
    "cldice_loss",
    "dice_loss",
    "dice_loss_per_pixel",
    "focal_tversky_loss",
    "generalized_dice_loss",
    "generalized_dice_loss_per_pixel",
    "generalized_wasserstein_dice_loss",
    "generalized_wasserstein_dice_loss_per_pixel",
    "jaccard_loss",
    "jaccard_loss_per_pixel",
    "log_cosh_dice_loss",
    "lovasz_loss",
    "mcc_loss",
    "ratio_per_image",
    "ratio_per_pixel",
    "rmi_loss",
    "sensitivity_specificity_loss",
    "sensitivity_specificity_loss_per_pixel",
    "soft_skeleton",
    "tversky_loss",
    "tversky_loss_per_pixel",
]





def _pooled(counts: Tensor, batch: bool) -> Tensor:
    """(B, C) per-image counts, or their (1, C) sum over the batch."""
    return counts.sum(dim=0, keepdim=True) if batch else counts


def _per_image(values: Tensor, batch_size: int) -> Tensor:
    """(B,) per-image values from (B,) values or from one pooled (1,) batch value, which every image gets."""
    return values.expand(batch_size).contiguous()


# --------------------------------------------------------------------------- Dice



AVERAGES: tuple[str, ...] = ("macro", "micro")


def pooled_over_classes(denominator: Tensor, weights: Tensor, average: str) -> Tensor:
    """The denominators of a class average: per class ("macro"), or one pooled over the classes, repeated
    for each ("micro", kornia's default Dice), so that the ratio is
    :math:`\\sum_c a_c E_c / (\\sum_c a_c Q_c + \\varepsilon)`."""
    check_one_of("average", average, AVERAGES)
    if average == "macro":
        return denominator
    return (denominator * weights).sum(dim=1, keepdim=True).expand_as(denominator)


def _soft_dice_parts(prepared: Prepared, per_pixel: bool) -> tuple[Tensor, Tensor]:
    """Linear Dice errors :math:`|p - t|` (MONAI's ``soft_label``: zero where p = t, also for soft
    targets) and denominators :math:`\\sum p + \\sum t`; maps (B, C, *S) or sums (B, C)."""
    probs = prepared.mask(prepared.probs())
    target = prepared.target
    errors = (probs - target).abs()
    denominator = spatial_sums(probs) + spatial_sums(target)
    return (errors if per_pixel else spatial_sums(errors)), denominator


def _dice_setup(logits, target, mode, ignore_index, include_background, class_weights, squared, eps, per_pixel,
                average="macro", soft_label=False):
    """Prepared inputs, eps, class weights, and the Dice errors (maps for ``per_pixel``, else sums) and
    denominators."""
    prepared, eps, weights = prepare_class_average(
        logits, target, mode, ignore_index, include_background, class_weights, eps
    )
    check_type("soft_label", soft_label, bool)
    if soft_label and not squared:
        errors, denominator = _soft_dice_parts(prepared, per_pixel)
    else:  # the squared errors (p - t)^2 are already zero where p = t
        errors, denominator = dice_error_maps(prepared, squared) if per_pixel else dice_error_sums(prepared, squared)
    return prepared, eps, weights, errors, pooled_over_classes(denominator, weights, average)


def dice_loss(
    logits: Tensor,
    target: Tensor,
    *,
    squared: bool = True,
    batch: bool = False,
    mode: str | None = None,
    include_background: bool = True,
    class_weights: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = None,
    eps: float = 1e-5,
    average: str = "macro",
    soft_label: bool = False,
    reduction: str = "mean",
) -> Tensor:
    r"""Soft Dice loss, per image (or pooled over the batch), averaged over classes.

    .. math::
        L_i = \sum_c a_c\left(1-\frac{2\sum_n p_{nc}t_{nc}+\varepsilon}
              {\sum_n p_{nc}^q+\sum_n t_{nc}^q+\varepsilon}\right)

    with :math:`q=2` (V-Net, ``squared=True``, the default) or :math:`q=1` (``squared=False``),
    and class weights :math:`a_c` (uniform by default) normalised to sum to one.

    Reference: Milletari et al., "V-Net", 3DV 2016; survey eq. 7.

    Args:
        logits: (B, C, *S) scores.
        target: labels (B, *S) / (B, 1, *S) or a dense (B, C, *S) target.
        squared: squared (V-Net) or linear denominator.
        batch: pool the counts over the batch (nnU-Net "batch Dice").
        mode: "multiclass", "binary" or "multilabel"; inferred from C when None.
        include_background: count channel 0 in the class average (default True: a loss trains every
            output channel, as MONAI's DiceLoss; the metrics leave the background out by default,
            see :mod:`seglosses.metrics.overlap`).
        class_weights: (C,) weights of the class average.
        ignore_index: label whose pixels are ignored.
        eps: smoothing added to numerator and denominator (> 0).
        average: "macro" (default): the mean of the per-class Dice losses; "micro": one Dice
            over the pooled class counts, :math:`\\sum_c a_c E_c / (\\sum_c a_c Q_c + \\varepsilon)`
            (kornia's default ``average="micro"``; dominated by the large classes).
        soft_label: with ``squared=False``, the errors :math:`|p - t|` (MONAI's ``soft_label=True``),
            so that the loss reaches 0 at p = t for soft targets too; the same for hard targets.
            The squared Dice already does.
        reduction: "mean" or "sum" over images, or "none" for (B,).

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> loss = dice_loss(logits, labels)
        >>> round(loss.item(), 4)
        0.5589
        >>> torch.allclose(dice_loss_per_pixel(logits, labels).mean(dim=(1, 2)),
        ...                dice_loss(logits, labels, reduction="none"))
        True
    """
    check_type("batch", batch, bool)
    _, eps, weights, errors, denominator = _dice_setup(
        logits, target, mode, ignore_index, include_background, class_weights, squared, eps, per_pixel=False,
        average=average, soft_label=soft_label,
    )
    return reduce_images(ratio_per_image(errors, denominator, weights, batch=batch, eps=eps), reduction)


def dice_loss_per_pixel(
    logits: Tensor,
    target: Tensor,
    *,
    squared: bool = True,
    batch: bool = False,
    mode: str | None = None,
    include_background: bool = True,
    class_weights: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = None,
    eps: float = 1e-5,
    average: str = "macro",
    soft_label: bool = False,
) -> Tensor:
    r"""Exact per-pixel decomposition of :func:`dice_loss`, (B, *S).

    .. math::
        d_{ij} = P_i \sum_c a_c\,\frac{e_{cj}}{Q_c+\varepsilon},\quad
        e = (p-t)^2 \text{ (squared)},\ p+t-2pt \text{ (linear)}

    Non-negative, zero on a perfectly predicted pixel; its mean over an image's counted pixels is
    the image's Dice loss (SPEC A.2).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> per_pixel = dice_loss_per_pixel(logits, labels)
        >>> per_pixel.shape, bool((per_pixel >= 0).all())
        (torch.Size([2, 8, 8]), True)
        >>> torch.allclose(per_pixel.mean(dim=(1, 2)), dice_loss(logits, labels, reduction="none"))
        True
    """
    check_type("batch", batch, bool)
    prepared, eps, weights, errors, denominator = _dice_setup(
        logits, target, mode, ignore_index, include_background, class_weights, squared, eps, per_pixel=True,
        average=average, soft_label=soft_label,
    )
    return ratio_per_pixel(errors, denominator, weights, prepared, batch=batch, eps=eps)


@register_loss("dice")
class DiceLoss(Loss):
    """Module form of :func:`dice_loss`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> loss = DiceLoss(squared=False)
        >>> loss(logits, labels).shape, loss.per_image(logits, labels).shape
        (torch.Size([]), torch.Size([2]))
        >>> torch.allclose(loss(logits, labels), dice_loss(logits, labels, squared=False))
        True
    """

    has_per_pixel = True
    function = staticmethod(dice_loss)
    pixel_function = staticmethod(dice_loss_per_pixel)

    def __init__(
        self,
        *,
        squared: bool = True,
        batch: bool = False,
        mode: str | None = None,
        include_background: bool = True,
        class_weights: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        eps: float = 1e-5,
        average: str = "macro",
        soft_label: bool = False,
        reduction: str = "mean",
    ) -> None:
        check_type("squared", squared, bool)
        check_type("batch", batch, bool)
        check_number("eps", eps, low=0.0, low_inclusive=False)
        check_one_of("average", average, AVERAGES)
        check_type("soft_label", soft_label, bool)
        super().__init__(
            reduction,
            squared=squared,
            batch=batch,
            mode=mode,
            include_background=include_background,
            class_weights=class_weights,
            ignore_index=ignore_index,
            eps=eps,
            average=average,
            soft_label=soft_label,
        )


# --------------------------------------------------------------------------- log-cosh Dice


def log_cosh_dice_loss(
    logits: Tensor,
    target: Tensor,
    *,
    squared: bool = True,
    batch: bool = False,
    mode: str | None = None,
    include_background: bool = True,
    class_weights: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = None,
    eps: float = 1e-5,
    reduction: str = "mean",
) -> Tensor:
    r"""Log-cosh Dice loss: :math:`\log\cosh` of each image's Dice loss.

    .. math::
        L_i = \log\cosh\big(L^{\mathrm{Dice}}_i\big),\qquad \cosh x = \frac{e^{x}+e^{-x}}{2}

    with :math:`L^{\mathrm{Dice}}_i` the class-averaged loss of :func:`dice_loss` (same options). On
    :math:`[0, 1]` it is close to :math:`x^2/2`, which damps the gradient as the Dice loss nears 0. With
    ``batch=True`` every image gets :math:`\log\cosh` of the batch Dice loss.

    Reference: Jadon, "A survey of loss functions for semantic segmentation", CIBCB 2020. The survey
    (Azad et al.) defines :math:`\cosh x=(e^x-e^{-x})/2`, which is :math:`\sinh` (SPEC D.6); this is the
    true :math:`\cosh`.

    Args:
        logits: (B, C, *S) scores.
        target: labels (B, *S) / (B, 1, *S) or a dense (B, C, *S) target.
        squared, batch, mode, include_background, class_weights, ignore_index, eps: as in :func:`dice_loss`.
        reduction: "mean" or "sum" over images, or "none" for (B,).

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> round(log_cosh_dice_loss(logits, labels).item(), 4)
        0.149
    """
    check_type("batch", batch, bool)
    _, eps, weights, errors, denominator = _dice_setup(
        logits, target, mode, ignore_index, include_background, class_weights, squared, eps, per_pixel=False
    )
    dice = ratio_per_image(errors, denominator, weights, batch=batch, eps=eps)
    if batch:
        dice = dice.mean(dim=0, keepdim=True)
    return reduce_images(_per_image(dice.cosh().log(), logits.shape[0]), reduction)


@register_loss("log_cosh_dice")
class LogCoshDiceLoss(Loss):
    """Module form of :func:`log_cosh_dice_loss`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> loss = LogCoshDiceLoss()
        >>> loss(logits, labels).shape, loss.per_image(logits, labels).shape, loss.has_per_pixel
        (torch.Size([]), torch.Size([2]), False)
        >>> torch.allclose(loss(logits, labels), log_cosh_dice_loss(logits, labels))
        True
    """

    function = staticmethod(log_cosh_dice_loss)

    def __init__(
        self,
        *,
        squared: bool = True,
        batch: bool = False,
        mode: str | None = None,
        include_background: bool = True,
        class_weights: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        eps: float = 1e-5,
        reduction: str = "mean",
    ) -> None:
        check_type("squared", squared, bool)
        check_type("batch", batch, bool)
        check_number("eps", eps, low=0.0, low_inclusive=False)
        super().__init__(
            reduction,
            squared=squared,
            batch=batch,
            mode=mode,
            include_background=include_background,
            class_weights=class_weights,
            ignore_index=ignore_index,
            eps=eps,
        )


# --------------------------------------------------------------------------- generalised Dice

VOLUME_WEIGHTINGS: tuple[str, ...] = ("square", "simple", "uniform")


def _volume_weights(volumes: Tensor, w_type: str) -> Tensor:
    """Sudre's class weights from the target volumes (B, K) or (1, K); a class absent from the target
    (infinite weight) gets the largest finite weight of its row, as MONAI and NiftyNet do."""
    if w_type == "uniform":
        return torch.ones_like(volumes)
    weights = volumes.reciprocal() if w_type == "simple" else (volumes * volumes).reciprocal()
    absent = weights.isinf()
    weights = weights.masked_fill(absent, 0.0)
    return torch.where(absent, weights.amax(dim=1, keepdim=True), weights)


def _generalized_dice_setup(logits, target, w_type, batch, mode, include_background, ignore_index, eps, per_pixel):
    """Prepared inputs, eps, and the class-weighted errors (maps (B, 1, *S) for ``per_pixel``, else sums
    (B, 1)) and denominators (B, 1)."""
    check_one_of("w_type", w_type, VOLUME_WEIGHTINGS)
    check_type("batch", batch, bool)
    check_type("include_background", include_background, bool)
    prepared = prepare(logits, target, mode=mode, ignore_index=ignore_index)
    eps = check_number("eps", eps, low=0.0, low_inclusive=False)
    if not include_background and prepared.num_classes == 1:
        fail("include_background", "True when there is a single channel (nothing else to average)", False)
    first = 0 if include_background else 1
    counts = SoftCounts(*(count[:, first:] for count in soft_counts(prepared)))
    if prepared.mode != "multiclass":
        # Each sigmoid channel is a two-class problem, foreground and background (Sudre's binary GDL), so an
        # empty foreground still has a present class and its false positives are penalised.
        counted = prepared.valid_count().unsqueeze(1)
        complement = SoftCounts(
            counted - counts.prediction - counts.target + counts.intersection,
            counted - counts.prediction,
            counted - counts.target,
        )
        counts = SoftCounts(*(torch.cat(pair, dim=1) for pair in zip(counts, complement, strict=True)))
    weights = _volume_weights(_pooled(counts.target, batch), w_type)
    denominator = (weights * (counts.prediction + counts.target)).sum(dim=1, keepdim=True)
    if not per_pixel:
        excess = (counts.prediction + counts.target - 2.0 * counts.intersection).clamp_min(0.0)
        return prepared, eps, (weights * excess).sum(dim=1, keepdim=True), denominator
    probs, target = prepared.mask(prepared.probs())[:, first:], prepared.target[:, first:]
    if prepared.mode != "multiclass":
        probs = torch.cat([probs, prepared.mask(1.0 - probs)], dim=1)
        target = torch.cat([target, prepared.mask(1.0 - target)], dim=1)
    errors = probs + target - 2.0 * probs * target
    spatial = [1] * len(prepared.spatial_dims)
    return prepared, eps, (errors * weights.view(*weights.shape, *spatial)).sum(dim=1, keepdim=True), denominator


def generalized_dice_loss(
    logits: Tensor,
    target: Tensor,
    *,
    w_type: str = "square",
    batch: bool = False,
    mode: str | None = None,
    include_background: bool = True,
    ignore_index: int | None = None,
    eps: float = 1e-5,
    reduction: str = "mean",
) -> Tensor:
    r"""Generalised Dice loss (Sudre): one Dice ratio over all classes, each weighted by its target volume.

    .. math::
        L_i = 1-\frac{2\sum_c w_c\sum_n p_{nc}t_{nc}+\varepsilon}
              {\sum_c w_c\sum_n (p_{nc}+t_{nc})+\varepsilon},\qquad
        w_c = \Big(\sum_n t_{nc}\Big)^{-2}\ (\text{"square"}),\ \Big(\sum_n t_{nc}\Big)^{-1}\ (\text{"simple"}),\ 1

    A class absent from an image's target gets the largest weight of the image's present classes
    (MONAI's rule); with none present the loss is 0. The volume weights are the class weighting, so
    there is no ``class_weights`` option. The same as MONAI's ``GeneralizedDiceLoss`` with
    ``softmax=True`` in multiclass mode. In binary and multilabel modes each channel and its complement
    (the background) are the classes, as in Sudre's binary form, so that an empty foreground with false
    positives is penalised (MONAI's ``sigmoid=True`` treats the channels alone as the classes and gives
    such an image a loss of 0).

    Reference: Sudre et al., "Generalised Dice overlap as a deep learning loss function for highly
    unbalanced segmentations", DLMIA 2017.

    Args:
        logits: (B, C, *S) scores.
        target: labels (B, *S) / (B, 1, *S) or a dense (B, C, *S) target.
        w_type: class weighting by target volume: "square", "simple" or "uniform".
        batch: pool the volumes and counts over the batch (MONAI's ``batch=True``).
        mode: "multiclass", "binary" or "multilabel"; inferred from C when None.
        include_background: keep channel 0 (and, in sigmoid modes, its complement).
        ignore_index: label whose pixels are ignored.
        eps: smoothing added to numerator and denominator (> 0).
        reduction: "mean" or "sum" over images, or "none" for (B,).

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> round(generalized_dice_loss(logits, labels).item(), 4)
        0.6792
    """
    _, eps, errors, denominator = _generalized_dice_setup(
        logits, target, w_type, batch, mode, include_background, ignore_index, eps, per_pixel=False
    )
    return reduce_images(ratio_per_image(errors, denominator, errors.new_ones(1), batch=batch, eps=eps), reduction)


def generalized_dice_loss_per_pixel(
    logits: Tensor,
    target: Tensor,
    *,
    w_type: str = "square",
    batch: bool = False,
    mode: str | None = None,
    include_background: bool = True,
    ignore_index: int | None = None,
    eps: float = 1e-5,
) -> Tensor:
    r"""Exact per-pixel decomposition of :func:`generalized_dice_loss`, (B, *S).

    .. math::
        d_{ij} = P_i\,\frac{\sum_c w_c\,(p_{cj}+t_{cj}-2p_{cj}t_{cj})}{\sum_c w_c \sum_n (p_{nc}+t_{nc})+\varepsilon}

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> per_pixel = generalized_dice_loss_per_pixel(logits, labels)
        >>> per_pixel.shape
        torch.Size([2, 8, 8])
        >>> torch.allclose(per_pixel.mean(dim=(1, 2)), generalized_dice_loss(logits, labels, reduction="none"))
        True
    """
    prepared, eps, errors, denominator = _generalized_dice_setup(
        logits, target, w_type, batch, mode, include_background, ignore_index, eps, per_pixel=True
    )
    return ratio_per_pixel(errors, denominator, errors.new_ones(1), prepared, batch=batch, eps=eps)


@register_loss("generalized_dice")
class GeneralizedDiceLoss(Loss):
    """Module form of :func:`generalized_dice_loss`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> loss = GeneralizedDiceLoss(w_type="simple")
        >>> loss(logits, labels).shape, loss.per_pixel(logits, labels).shape
        (torch.Size([]), torch.Size([2, 8, 8]))
        >>> torch.allclose(loss(logits, labels), generalized_dice_loss(logits, labels, w_type="simple"))
        True
    """

    has_per_pixel = True
    function = staticmethod(generalized_dice_loss)
    pixel_function = staticmethod(generalized_dice_loss_per_pixel)

    def __init__(
        self,
        *,
        w_type: str = "square",
        batch: bool = False,
        mode: str | None = None,
        include_background: bool = True,
        ignore_index: int | None = None,
        eps: float = 1e-5,
        reduction: str = "mean",
    ) -> None:
        check_one_of("w_type", w_type, VOLUME_WEIGHTINGS)
        check_type("batch", batch, bool)
        check_number("eps", eps, low=0.0, low_inclusive=False)
        super().__init__(
            reduction,
            w_type=w_type,
            batch=batch,
            mode=mode,
            include_background=include_background,
            ignore_index=ignore_index,
            eps=eps,
        )


# --------------------------------------------------------------------------- IoU (Jaccard)


def _jaccard_setup(logits, target, batch, mode, ignore_index, include_background, class_weights, eps, per_pixel):
    """Prepared inputs, eps, class weights, the errors p + t - 2pt (maps for ``per_pixel``, else sums) and
    the soft unions (B, C)."""
    check_type("batch", batch, bool)
    prepared, eps, weights = prepare_class_average(
        logits, target, mode, ignore_index, include_background, class_weights, eps
    )
    counts = soft_counts(prepared)
    union = counts.prediction + counts.target - counts.intersection
    if not per_pixel:
        return prepared, eps, weights, (union - counts.intersection).clamp_min(0.0), union
    probs, target = prepared.mask(prepared.probs()), prepared.target
    return prepared, eps, weights, probs + target - 2.0 * probs * target, union


def jaccard_loss(
    logits: Tensor,
    target: Tensor,
    *,
    batch: bool = False,
    mode: str | None = None,
    include_background: bool = True,
    class_weights: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = None,
    eps: float = 1e-5,
    reduction: str = "mean",
) -> Tensor:
    r"""Soft IoU (Jaccard) loss per image (or pooled over the batch), averaged over classes.

    .. math::
        L_i = \sum_c a_c\left(1-\frac{\sum_n p_{nc}t_{nc}+\varepsilon}
              {\sum_n (p_{nc}+t_{nc}-p_{nc}t_{nc})+\varepsilon}\right)

    Registered as ``"iou"``. Its exact per-pixel form spreads the errors :math:`p+t-2pt` over the union
    (:func:`jaccard_loss_per_pixel`).

    Reference: Rahman & Wang, "Optimizing intersection-over-union in deep neural networks for image
    segmentation", ISVC 2016; survey eq. 11 (SPEC D.8).

    Args:
        logits: (B, C, *S) scores.
        target: labels (B, *S) / (B, 1, *S) or a dense (B, C, *S) target.
        batch: pool the counts over the batch.
        mode: "multiclass", "binary" or "multilabel"; inferred from C when None.
        include_background: count channel 0 in the class average.
        class_weights: (C,) weights of the class average.
        ignore_index: label whose pixels are ignored.
        eps: smoothing added to numerator and denominator (> 0).
        reduction: "mean" or "sum" over images, or "none" for (B,).

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> round(jaccard_loss(logits, labels).item(), 4)
        0.8058
    """
    _, eps, weights, errors, union = _jaccard_setup(
        logits, target, batch, mode, ignore_index, include_background, class_weights, eps, per_pixel=False
    )
    return reduce_images(ratio_per_image(errors, union, weights, batch=batch, eps=eps), reduction)


def jaccard_loss_per_pixel(
    logits: Tensor,
    target: Tensor,
    *,
    batch: bool = False,
    mode: str | None = None,
    include_background: bool = True,
    class_weights: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = None,
    eps: float = 1e-5,
) -> Tensor:
    r"""Exact per-pixel decomposition of :func:`jaccard_loss`, (B, *S).

    .. math::
        d_{ij} = P_i \sum_c a_c\,\frac{p_{cj}+t_{cj}-2p_{cj}t_{cj}}{\sum_n (p_{nc}+t_{nc}-p_{nc}t_{nc})+\varepsilon}

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> per_pixel = jaccard_loss_per_pixel(logits, labels)
        >>> per_pixel.shape
        torch.Size([2, 8, 8])
        >>> torch.allclose(per_pixel.mean(dim=(1, 2)), jaccard_loss(logits, labels, reduction="none"))
        True
    """
    prepared, eps, weights, errors, union = _jaccard_setup(
        logits, target, batch, mode, ignore_index, include_background, class_weights, eps, per_pixel=True
    )
    return ratio_per_pixel(errors, union, weights, prepared, batch=batch, eps=eps)


@register_loss("iou")
class JaccardLoss(Loss):
    """Module form of :func:`jaccard_loss` (the soft IoU loss).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> loss = JaccardLoss()
        >>> loss(logits, labels).shape, loss.per_image(logits, labels).shape
        (torch.Size([]), torch.Size([2]))
        >>> torch.allclose(loss(logits, labels), jaccard_loss(logits, labels))
        True
    """

    has_per_pixel = True
    function = staticmethod(jaccard_loss)
    pixel_function = staticmethod(jaccard_loss_per_pixel)

    def __init__(
        self,
        *,
        batch: bool = False,
        mode: str | None = None,
        include_background: bool = True,
        class_weights: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        eps: float = 1e-5,
        reduction: str = "mean",
    ) -> None:
        check_type("batch", batch, bool)
        check_number("eps", eps, low=0.0, low_inclusive=False)
        super().__init__(
            reduction,
            batch=batch,
            mode=mode,
            include_background=include_background,
            class_weights=class_weights,
            ignore_index=ignore_index,
            eps=eps,
        )


# --------------------------------------------------------------------------- Lovasz

LOVASZ_CLASSES: tuple[str, ...] = ("present", "all")


def _descending_order(errors: Tensor) -> Tensor:
    """Flat indices that sort each row of the non-negative ``errors`` (R, N) in decreasing order."""
    rows, length = errors.shape
    row_index = torch.arange(rows, device=errors.device).unsqueeze(1)
    if errors.dtype != torch.float32:
        return (errors.sort(dim=1, descending=True).indices + row_index * length).view(-1)
    # Non-negative float32 values order like their bit patterns (the mask clears the sign bit of -0.0). With the
    # row in the high bits, one stable sort of flat int64 keys orders every row at once, and PyTorch runs it as a
    # radix sort: about twice as fast on the CPU as a batched float sort.
    bits = errors.detach().view(torch.int32).long() & 0x7FFFFFFF
    keys = (row_index << 31) | (0x7FFFFFFF - bits)
    return keys.view(-1).sort(stable=True).indices


def _jaccard_increments(target: Tensor, counted: Tensor | None) -> Tensor:
    """Berman's ``lovasz_grad`` for each row of sorted targets (R, N): the increments of the Jaccard loss.

    After the first :math:`k` sorted pixels the Jaccard loss is :math:`k/(G+k-F_k)`, with :math:`G` the target
    mass and :math:`F_k` its running sum. Ignored pixels (``counted`` 0) add to neither count, so their increment
    is exactly 0 wherever the sort puts them.
    """
    rows, length = target.shape
    # Pixel counts stay exact in float32 up to 2**24 per row; beyond, count in float64.
    dtype = torch.float64 if length > 2**24 else target.dtype
    mass = target.to(dtype)
    if counted is None:
        seen = torch.arange(1, length + 1, dtype=dtype, device=target.device).expand(rows, length)
    else:
        seen = counted.to(dtype).cumsum(dim=1)
    union = mass.sum(dim=1, keepdim=True) + seen - mass.cumsum(dim=1)
    jaccard = seen / union.clamp_min(torch.finfo(dtype).tiny)  # 0/0 only before the first counted pixel
    return torch.diff(jaccard, dim=1, prepend=jaccard.new_zeros(rows, 1)).to(target.dtype)


def _lovasz_rows(errors: Tensor, target: Tensor, counted: Tensor | None) -> Tensor:
    """Lovasz extension of the Jaccard loss of each row (R, N): sorted errors dotted with the increments, (R,)."""
    order = _descending_order(errors)

    def in_order(x: Tensor) -> Tensor:
        return x.reshape(-1).gather(0, order).view_as(x)

    increments = _jaccard_increments(in_order(target), None if counted is None else in_order(counted))
    return (in_order(errors) * increments).sum(dim=1)


def _rows(x: Tensor, batch: bool) -> Tensor:
    """(B, C, *S) as one row per sort: (B*C, P) per image, or (C, B*P) pooled over the batch."""
    return x.transpose(0, 1).reshape(x.shape[1], -1) if batch else x.reshape(x.shape[0] * x.shape[1], -1)


def lovasz_loss(
    logits: Tensor,
    target: Tensor,
    *,
    classes: str = "present",
    batch: bool = False,
    mode: str | None = None,
    include_background: bool = True,
    class_weights: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Lovasz-softmax loss (multiclass) and Lovasz hinge loss (binary, multilabel): a convex surrogate of IoU.

    For each image and class, the errors :math:`m_n` are sorted in decreasing order and dotted with the
    increments of the Jaccard loss along that order (Berman's ``lovasz_grad``):

    .. math::
        L_c = \sum_k m_{(k)}\big(J_k - J_{k-1}\big),\qquad
        J_k = 1-\frac{G-\sum_{l\le k}t_{(l)}}{G+\sum_{l\le k}\big(1-t_{(l)}\big)},\quad G=\sum_n t_n

    with :math:`m = |t - p|` on softmax probabilities in multiclass mode (Lovasz-softmax), and the hinge
    :math:`m = \max(0, 1 - z\,(2t-1))` on the logits in binary and multilabel modes (Lovasz hinge). The
    class average uses ``class_weights``; in multiclass mode ``classes="present"`` (the default) averages
    over the classes present in the image's target only (0 when none is), ``"all"`` over every class
    (kornia's ``lovasz_softmax_loss``). The hinge always counts every channel: an empty channel still
    penalises its false positives, as in Berman's ``lovasz_hinge``. ``batch=True`` sorts over the whole
    batch (Berman's default for the softmax form, ``per_image=False``) and gives every image that loss.

    Ignored pixels count for nothing (Berman drops them). One sort orders every (image, class) row at
    once; there is no loop over images or classes.

    Reference: Berman, Rannen Triki & Blaschko, "The Lovasz-Softmax loss: a tractable surrogate for the
    optimization of the intersection-over-union measure in neural networks", CVPR 2018.

    Args:
        logits: (B, C, *S) scores.
        target: labels (B, *S) / (B, 1, *S) or a dense (B, C, *S) target.
        classes: "present" or "all" (multiclass mode).
        batch: one sort over the flattened batch instead of one per image.
        mode: "multiclass", "binary" or "multilabel"; inferred from C when None.
        include_background: count channel 0 in the class average.
        class_weights: (C,) weights of the class average.
        ignore_index: label whose pixels are ignored.
        reduction: "mean" or "sum" over images, or "none" for (B,).

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> round(lovasz_loss(logits, labels).item(), 4)
        0.7085
    """
    check_one_of("classes", classes, LOVASZ_CLASSES)
    check_type("batch", batch, bool)
    prepared = prepare(logits, target, mode=mode, ignore_index=ignore_index)
    weights = class_average_weights(prepared, include_background, class_weights)
    target = prepared.target
    if prepared.mode == "multiclass":
        errors = (target - prepared.mask(prepared.probs())).abs()
    else:
        errors = prepared.mask((1.0 - prepared.logits * (2.0 * target - 1.0)).relu())
    counted = None if prepared.valid is None else _rows(prepared.valid.unsqueeze(1).expand_as(errors), batch)
    per_class = _lovasz_rows(_rows(errors, batch), _rows(target, batch), counted).view(-1, prepared.num_classes)
    weights = weights.expand_as(per_class)
    if classes == "present" and prepared.mode == "multiclass":
        weights = weights * (_pooled(spatial_sums(target), batch) > 0)
    value = (weights * per_class).sum(dim=1) / weights.sum(dim=1).clamp_min(1e-12)
    return reduce_images(_per_image(value, logits.shape[0]), reduction)


@register_loss("lovasz")
class LovaszLoss(Loss):
    """Module form of :func:`lovasz_loss` (Lovasz-softmax, or the Lovasz hinge in sigmoid modes).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> loss = LovaszLoss(classes="all")
        >>> loss(logits, labels).shape, loss.per_image(logits, labels).shape, loss.has_per_pixel
        (torch.Size([]), torch.Size([2]), False)
        >>> torch.allclose(loss(logits, labels), lovasz_loss(logits, labels, classes="all"))
        True
    """

    function = staticmethod(lovasz_loss)

    def __init__(
        self,
        *,
        classes: str = "present",
        batch: bool = False,
        mode: str | None = None,
        include_background: bool = True,
        class_weights: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
    ) -> None:
        check_one_of("classes", classes, LOVASZ_CLASSES)
        check_type("batch", batch, bool)
        super().__init__(
            reduction,
            classes=classes,
            batch=batch,
            mode=mode,
            include_background=include_background,
            class_weights=class_weights,
            ignore_index=ignore_index,
        )


# --------------------------------------------------------------------------- Tversky and focal Tversky


def _tversky_parts(prepared: Prepared, fp_weight: float, fn_weight: float) -> Tensor:
    """Per-pixel errors :math:`\\beta_{FP} p(1-t)+\\beta_{FN}(1-p)t`, (B, C, *S)."""
    probs, target = prepared.mask(prepared.probs()), prepared.target
    return fp_weight * probs * (1.0 - target) + fn_weight * (1.0 - probs) * target


def _tversky_counts(prepared: Prepared, fp_weight: float, fn_weight: float) -> tuple[Tensor, Tensor]:
    """Per image and class weighted error sums :math:`\\beta_{FP}FP+\\beta_{FN}FN` and soft TP, (B, C)."""
    counts = soft_counts(prepared)
    false_positives = (counts.prediction - counts.intersection).clamp_min(0.0)
    false_negatives = (counts.target - counts.intersection).clamp_min(0.0)
    return fp_weight * false_positives + fn_weight * false_negatives, counts.intersection


def _check_tversky_weights(fp_weight: float, fn_weight: float) -> tuple[float, float]:
    return check_number("fp_weight", fp_weight, low=0.0), check_number("fn_weight", fn_weight, low=0.0)


def _tversky_setup(
    logits, target, fp_weight, fn_weight, batch, mode, ignore_index, include_background, class_weights, eps, per_pixel,
    average="macro",
):
    fp_weight, fn_weight = _check_tversky_weights(fp_weight, fn_weight)
    check_type("batch", batch, bool)
    prepared, eps, weights = prepare_class_average(
        logits, target, mode, ignore_index, include_background, class_weights, eps
    )
    excess, true_positives = _tversky_counts(prepared, fp_weight, fn_weight)
    errors = _tversky_parts(prepared, fp_weight, fn_weight) if per_pixel else excess
    return prepared, eps, weights, errors, pooled_over_classes(true_positives + excess, weights, average)


def tversky_loss(
    logits: Tensor,
    target: Tensor,
    *,
    fp_weight: float = 0.3,
    fn_weight: float = 0.7,
    batch: bool = False,
    mode: str | None = None,
    include_background: bool = True,
    class_weights: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = None,
    eps: float = 1e-5,
    average: str = "macro",
    reduction: str = "mean",
) -> Tensor:
    r"""Tversky loss per image (or pooled over the batch), averaged over classes.

    .. math::
        L_i = \sum_c a_c\left(1-\frac{TP_c+\varepsilon}
              {TP_c+\beta_{FP}\,FP_c+\beta_{FN}\,FN_c+\varepsilon}\right)

    with soft counts over the image's counted pixels. ``fp_weight`` = ``fn_weight`` = 0.5 gives the
    linear Dice loss, 1 and 1 the IoU loss. MONAI's ``TverskyLoss`` calls them ``alpha`` (FP) and
    ``beta`` (FN); the survey's text swaps them, hence the explicit names.

    Reference: Salehi et al., "Tversky loss function for image segmentation using 3D fully
    convolutional deep networks", MLMI 2017 (SPEC C, D.10).

    Args:
        logits: (B, C, *S) scores.
        target: labels (B, *S) / (B, 1, *S) or a dense (B, C, *S) target.
        fp_weight: weight of the false positives (>= 0).
        fn_weight: weight of the false negatives (>= 0).
        batch: pool the counts over the batch.
        mode: "multiclass", "binary" or "multilabel"; inferred from C when None.
        include_background: count channel 0 in the class average.
        class_weights: (C,) weights of the class average.
        ignore_index: label whose pixels are ignored.
        eps: smoothing added to numerator and denominator (> 0).
        average: "macro" (default): the mean of the per-class Tversky losses (kornia's
            ``tversky_loss`` when every class is present, its alpha = ``fp_weight``, beta =
            ``fn_weight``); "micro": one ratio over the pooled class counts, like kornia's default
            (micro) Dice.
        reduction: "mean" or "sum" over images, or "none" for (B,).

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> round(tversky_loss(logits, labels).item(), 4)
        0.6739
    """
    _, eps, weights, errors, denominator = _tversky_setup(
        logits, target, fp_weight, fn_weight, batch, mode, ignore_index, include_background, class_weights, eps,
        average=average, per_pixel=False,
    )
    return reduce_images(ratio_per_image(errors, denominator, weights, batch=batch, eps=eps), reduction)


def tversky_loss_per_pixel(
    logits: Tensor,
    target: Tensor,
    *,
    fp_weight: float = 0.3,
    fn_weight: float = 0.7,
    batch: bool = False,
    mode: str | None = None,
    include_background: bool = True,
    class_weights: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = None,
    eps: float = 1e-5,
    average: str = "macro",
) -> Tensor:
    r"""Exact per-pixel decomposition of :func:`tversky_loss`, (B, *S).

    .. math::
        d_{ij} = P_i \sum_c a_c\,\frac{\beta_{FP}\,p_{cj}(1-t_{cj})+\beta_{FN}\,(1-p_{cj})t_{cj}}
                 {TP_c+\beta_{FP}\,FP_c+\beta_{FN}\,FN_c+\varepsilon}

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> per_pixel = tversky_loss_per_pixel(logits, labels, fp_weight=0.3, fn_weight=0.7)
        >>> per_pixel.shape
        torch.Size([2, 8, 8])
        >>> torch.allclose(per_pixel.mean(dim=(1, 2)),
        ...                tversky_loss(logits, labels, fp_weight=0.3, fn_weight=0.7, reduction="none"))
        True
    """
    prepared, eps, weights, errors, denominator = _tversky_setup(
        logits, target, fp_weight, fn_weight, batch, mode, ignore_index, include_background, class_weights, eps,
        average=average, per_pixel=True,
    )
    return ratio_per_pixel(errors, denominator, weights, prepared, batch=batch, eps=eps)


@register_loss("tversky")
class TverskyLoss(Loss):
    """Module form of :func:`tversky_loss`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> loss = TverskyLoss(fp_weight=0.3, fn_weight=0.7)
        >>> loss(logits, labels).shape, loss.per_pixel(logits, labels).shape
        (torch.Size([]), torch.Size([2, 8, 8]))
        >>> torch.allclose(loss(logits, labels), tversky_loss(logits, labels, fp_weight=0.3, fn_weight=0.7))
        True
    """

    has_per_pixel = True
    function = staticmethod(tversky_loss)
    pixel_function = staticmethod(tversky_loss_per_pixel)

    def __init__(
        self,
        *,
        fp_weight: float = 0.3,
        fn_weight: float = 0.7,
        batch: bool = False,
        mode: str | None = None,
        include_background: bool = True,
        class_weights: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        eps: float = 1e-5,
        average: str = "macro",
        reduction: str = "mean",
    ) -> None:
        _check_tversky_weights(fp_weight, fn_weight)
        check_one_of("average", average, AVERAGES)
        check_type("batch", batch, bool)
        check_number("eps", eps, low=0.0, low_inclusive=False)
        super().__init__(
            reduction,
            fp_weight=fp_weight,
            fn_weight=fn_weight,
            batch=batch,
            mode=mode,
            include_background=include_background,
            class_weights=class_weights,
            ignore_index=ignore_index,
            eps=eps,
            average=average,
        )


def focal_tversky_loss(
    logits: Tensor,
    target: Tensor,
    *,
    fp_weight: float = 0.3,
    fn_weight: float = 0.7,
    gamma: float = 4 / 3,
    batch: bool = False,
    mode: str | None = None,
    include_background: bool = True,
    class_weights: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = None,
    eps: float = 1e-5,
    reduction: str = "mean",
) -> Tensor:
    r"""Focal Tversky loss: the class average of :math:`(1-TI_c)^{1/\gamma}`.

    .. math::
        L_i = \sum_c a_c\,\max\!\big(1-TI_c,\,10^{-7}\big)^{1/\gamma},\qquad
        TI_c = \frac{TP_c+\varepsilon}{TP_c+\beta_{FP}\,FP_c+\beta_{FN}\,FN_c+\varepsilon}

    with the Tversky index of :func:`tversky_loss`. The default :math:`\gamma=4/3` (exponent 0.75)
    enhances the loss of well-segmented classes; since the gradient of a power below 1 is infinite at
    0, :math:`1-TI` is clamped at :math:`10^{-7}` (SPEC C), which is also the floor of a perfect class
    (about :math:`6\cdot10^{-6}` at the default exponent). The class average is a mean (the paper
    writes a sum; SPEC C). With ``batch=True`` the counts are pooled and every image gets the batch loss.

    Reference: Abraham & Khan, "A novel focal Tversky loss function with improved attention U-Net for
    lesion segmentation", ISBI 2019.

    Args:
        logits: (B, C, *S) scores.
        target: labels (B, *S) / (B, 1, *S) or a dense (B, C, *S) target.
        fp_weight: weight of the false positives (>= 0).
        fn_weight: weight of the false negatives (>= 0).
        gamma: the focal parameter (> 0); the exponent is :math:`1/\gamma`.
        batch: pool the counts over the batch.
        mode: "multiclass", "binary" or "multilabel"; inferred from C when None.
        include_background: count channel 0 in the class average.
        class_weights: (C,) weights of the class average.
        ignore_index: label whose pixels are ignored.
        eps: smoothing added to numerator and denominator (> 0).
        reduction: "mean" or "sum" over images, or "none" for (B,).

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> round(focal_tversky_loss(logits, labels).item(), 4)
        0.7436
    """
    fp_weight, fn_weight = _check_tversky_weights(fp_weight, fn_weight)
    gamma = check_number("gamma", gamma, low=0.0, low_inclusive=False)
    check_type("batch", batch, bool)
    prepared, eps, weights = prepare_class_average(
        logits, target, mode, ignore_index, include_background, class_weights, eps
    )
    excess, true_positives = _tversky_counts(prepared, fp_weight, fn_weight)
    excess, true_positives = _pooled(excess, batch), _pooled(true_positives, batch)
    # 1 - TI as a ratio of the weighted errors: no cancellation near a perfect score.
    complement = excess / (true_positives + excess + eps)
    per_class = complement.clamp_min(1e-7) ** (1.0 / gamma)
    return reduce_images(_per_image((weights * per_class).sum(dim=1), logits.shape[0]), reduction)


@register_loss("focal_tversky")
class FocalTverskyLoss(Loss):
    """Module form of :func:`focal_tversky_loss`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> loss = FocalTverskyLoss(gamma=4 / 3)
        >>> loss(logits, labels).shape, loss.per_image(logits, labels).shape, loss.has_per_pixel
        (torch.Size([]), torch.Size([2]), False)
        >>> torch.allclose(loss(logits, labels), focal_tversky_loss(logits, labels, gamma=4 / 3))
        True
    """

    function = staticmethod(focal_tversky_loss)

    def __init__(
        self,
        *,
        fp_weight: float = 0.3,
        fn_weight: float = 0.7,
        gamma: float = 4 / 3,
        batch: bool = False,
        mode: str | None = None,
        include_background: bool = True,
        class_weights: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        eps: float = 1e-5,
        reduction: str = "mean",
    ) -> None:
        _check_tversky_weights(fp_weight, fn_weight)
        check_number("gamma", gamma, low=0.0, low_inclusive=False)
        check_type("batch", batch, bool)
        check_number("eps", eps, low=0.0, low_inclusive=False)
        super().__init__(
            reduction,
            fp_weight=fp_weight,
            fn_weight=fn_weight,
            gamma=gamma,
            batch=batch,
            mode=mode,
            include_background=include_background,
            class_weights=class_weights,
            ignore_index=ignore_index,
            eps=eps,
        )


# --------------------------------------------------------------------------- sensitivity-specificity


def _sensitivity_specificity_setup(
    logits, target, sensitivity_weight, batch, mode, ignore_index, include_background, class_weights, eps
):
    """The two ratio terms: errors on the target and their normaliser, errors off it and theirs."""
    sensitivity_weight = check_number("sensitivity_weight", sensitivity_weight, low=0.0, high=1.0)
    check_type("batch", batch, bool)
    prepared, eps, weights = prepare_class_average(
        logits, target, mode, ignore_index, include_background, class_weights, eps
    )
    probs, target = prepared.mask(prepared.probs()), prepared.target
    squared_errors = (target - probs) ** 2
    background = prepared.mask(1.0 - target)
    terms = (
        (sensitivity_weight * weights, target * squared_errors, spatial_sums(target)),
        ((1.0 - sensitivity_weight) * weights, background * squared_errors, spatial_sums(background)),
    )
    return prepared, eps, terms


def sensitivity_specificity_loss(
    logits: Tensor,
    target: Tensor,
    *,
    sensitivity_weight: float = 0.05,
    batch: bool = False,
    mode: str | None = None,
    include_background: bool = True,
    class_weights: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = None,
    eps: float = 1e-5,
    reduction: str = "mean",
) -> Tensor:
    r"""Sensitivity-specificity loss (Brosch): squared errors on and off the target, each normalised by its area.

    .. math::
        L_i = \sum_c a_c\left(w\,\frac{\sum_n t_{nc}(t_{nc}-p_{nc})^2}{\sum_n t_{nc}+\varepsilon}
              +(1-w)\,\frac{\sum_n (1-t_{nc})(t_{nc}-p_{nc})^2}{\sum_n (1-t_{nc})+\varepsilon}\right)

    The first term is a soft miss rate (1 - sensitivity), the second a soft false-positive rate
    (1 - specificity); :math:`w=0.05` (Brosch, NiftyNet) weighs the rare foreground errors. An empty
    class has no first term, so its false positives are still penalised. A sum of per-pixel terms over
    per-image normalisers, hence an exact per-pixel form. SegLoss uses :math:`w=0.1` and
    :math:`\varepsilon=1`.

    Reference: Brosch et al., "Deep convolutional encoder networks for multiple sclerosis lesion
    segmentation", MICCAI 2015; survey eqs. 18-20, whose "1 -" is a typo (SPEC D.12).

    Args:
        logits: (B, C, *S) scores.
        target: labels (B, *S) / (B, 1, *S) or a dense (B, C, *S) target.
        sensitivity_weight: :math:`w` in [0, 1], the weight of the sensitivity term.
        batch: pool the normalisers over the batch.
        mode: "multiclass", "binary" or "multilabel"; inferred from C when None.
        include_background: count channel 0 in the class average.
        class_weights: (C,) weights of the class average.
        ignore_index: label whose pixels are ignored.
        eps: smoothing added to the denominators (> 0).
        reduction: "mean" or "sum" over images, or "none" for (B,).

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> round(sensitivity_specificity_loss(logits, labels).item(), 4)
        0.1765
    """
    _, eps, terms = _sensitivity_specificity_setup(
        logits, target, sensitivity_weight, batch, mode, ignore_index, include_background, class_weights, eps
    )
    per_image = sum(ratio_per_image(spatial_sums(e), q, a, batch=batch, eps=eps) for a, e, q in terms)
    return reduce_images(per_image, reduction)


def sensitivity_specificity_loss_per_pixel(
    logits: Tensor,
    target: Tensor,
    *,
    sensitivity_weight: float = 0.05,
    batch: bool = False,
    mode: str | None = None,
    include_background: bool = True,
    class_weights: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = None,
    eps: float = 1e-5,
) -> Tensor:
    r"""Exact per-pixel decomposition of :func:`sensitivity_specificity_loss`, (B, *S).

    .. math::
        d_{ij} = P_i \sum_c a_c (t_{cj}-p_{cj})^2\left(\frac{w\,t_{cj}}{\sum_n t_{nc}+\varepsilon}
                 +\frac{(1-w)(1-t_{cj})}{\sum_n (1-t_{nc})+\varepsilon}\right)

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> per_pixel = sensitivity_specificity_loss_per_pixel(logits, labels)
        >>> per_pixel.shape
        torch.Size([2, 8, 8])
        >>> torch.allclose(per_pixel.mean(dim=(1, 2)), sensitivity_specificity_loss(logits, labels, reduction="none"))
        True
    """
    prepared, eps, terms = _sensitivity_specificity_setup(
        logits, target, sensitivity_weight, batch, mode, ignore_index, include_background, class_weights, eps
    )
    return sum(ratio_per_pixel(e, q, a, prepared, batch=batch, eps=eps) for a, e, q in terms)


@register_loss("sensitivity_specificity")
class SensitivitySpecificityLoss(Loss):
    """Module form of :func:`sensitivity_specificity_loss`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> loss = SensitivitySpecificityLoss(sensitivity_weight=0.1)
        >>> loss(logits, labels).shape, loss.per_pixel(logits, labels).shape
        (torch.Size([]), torch.Size([2, 8, 8]))
        >>> torch.allclose(loss(logits, labels), sensitivity_specificity_loss(logits, labels, sensitivity_weight=0.1))
        True
    """

    has_per_pixel = True
    function = staticmethod(sensitivity_specificity_loss)
    pixel_function = staticmethod(sensitivity_specificity_loss_per_pixel)

    def __init__(
        self,
        *,
        sensitivity_weight: float = 0.05,
        batch: bool = False,
        mode: str | None = None,
        include_background: bool = True,
        class_weights: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        eps: float = 1e-5,
        reduction: str = "mean",
    ) -> None:
        check_number("sensitivity_weight", sensitivity_weight, low=0.0, high=1.0)
        check_type("batch", batch, bool)
        check_number("eps", eps, low=0.0, low_inclusive=False)
        super().__init__(
            reduction,
            sensitivity_weight=sensitivity_weight,
            batch=batch,
            mode=mode,
            include_background=include_background,
            class_weights=class_weights,
            ignore_index=ignore_index,
            eps=eps,
        )


# --------------------------------------------------------------------------- MCC


def mcc_loss(
    logits: Tensor,
    target: Tensor,
    *,
    batch: bool = False,
    mode: str | None = None,
    include_background: bool = True,
    class_weights: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = None,
    eps: float = 1e-5,
    reduction: str = "mean",
) -> Tensor:
    r"""Matthews correlation coefficient loss, :math:`1-\mathrm{MCC}` per image and class from soft counts.

    .. math::
        L_i = \sum_c a_c \ell_c,\qquad
        \ell_c = 1-\frac{TP\cdot TN-FP\cdot FN}{\sqrt{(TP+FP)(TP+FN)(TN+FP)(TN+FN)+\varepsilon}}

    in :math:`[0, 2]`, with :math:`TN_c=\sum_n(1-p_{nc})(1-t_{nc})` over the counted pixels. MCC is
    undefined when the target class is empty or fills the image; there the loss is the soft error rate
    of the other side: :math:`\ell_c = FP/(FP+TN+\varepsilon)` for an empty target (0 for a perfect empty
    prediction, growing with the false positives) and :math:`\ell_c = FN/(TP+FN+\varepsilon)` for a full
    one. With ``batch=True`` the counts are pooled and every image gets the batch loss.

    Reference: Abhishek & Hamarneh, "Matthews correlation coefficient loss for deep convolutional
    networks: application to skin lesion segmentation", ISBI 2021.

    Args:
        logits: (B, C, *S) scores.
        target: labels (B, *S) / (B, 1, *S) or a dense (B, C, *S) target.
        batch: pool the counts over the batch.
        mode: "multiclass", "binary" or "multilabel"; inferred from C when None.
        include_background: count channel 0 in the class average.
        class_weights: (C,) weights of the class average.
        ignore_index: label whose pixels are ignored.
        eps: smoothing inside the square root and in the empty-class rates (> 0).
        reduction: "mean" or "sum" over images, or "none" for (B,).

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> round(mcc_loss(logits, labels).item(), 4)
        1.0014
    """
    check_type("batch", batch, bool)
    prepared, eps, weights = prepare_class_average(
        logits, target, mode, ignore_index, include_background, class_weights, eps
    )
    counts = SoftCounts(*(_pooled(count, batch) for count in soft_counts(prepared)))
    counted = _pooled(prepared.valid_count().unsqueeze(1), batch)
    # The target masses are exact, so an empty or a full target class is detected exactly.
    positives, negatives = counts.target, counted - counts.target
    tp = counts.intersection
    fp, fn = (counts.prediction - tp).clamp_min(0.0), (positives - tp).clamp_min(0.0)
    tn = (negatives - fp).clamp_min(0.0)
    mcc = (tp * tn - fp * fn) / torch.sqrt((tp + fp) * positives * negatives * (tn + fn) + eps)
    per_class = torch.where(
        positives == 0, fp / (negatives + eps), torch.where(negatives == 0, fn / (positives + eps), 1.0 - mcc)
    )
    return reduce_images(_per_image((weights * per_class).sum(dim=1), logits.shape[0]), reduction)


@register_loss("mcc")
class MCCLoss(Loss):
    """Module form of :func:`mcc_loss`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> loss = MCCLoss()
        >>> loss(logits, labels).shape, loss.per_image(logits, labels).shape, loss.has_per_pixel
        (torch.Size([]), torch.Size([2]), False)
        >>> torch.allclose(loss(logits, labels), mcc_loss(logits, labels))
        True
    """

    function = staticmethod(mcc_loss)

    def __init__(
        self,
        *,
        batch: bool = False,
        mode: str | None = None,
        include_background: bool = True,
        class_weights: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        eps: float = 1e-5,
        reduction: str = "mean",
    ) -> None:
        check_type("batch", batch, bool)
        check_number("eps", eps, low=0.0, low_inclusive=False)
        super().__init__(
            reduction,
            batch=batch,
            mode=mode,
            include_background=include_background,
            class_weights=class_weights,
            ignore_index=ignore_index,
            eps=eps,
        )


# --------------------------------------------------------------------------- generalised Wasserstein Dice

WASSERSTEIN_WEIGHTINGS: tuple[str, ...] = ("default", "gdl")


def _cost_matrix(cost_matrix, num_classes: int, like: Tensor) -> Tensor:
    """The (C, C) ground distance between classes: given (zero diagonal, values in [0, 1]) or 1 - I."""
    if cost_matrix is None:
        return 1.0 - torch.eye(num_classes, dtype=like.dtype, device=like.device)
    if isinstance(cost_matrix, (list, tuple)):
        try:
            cost_matrix = torch.tensor(cost_matrix, dtype=torch.float64)
        except (TypeError, ValueError):
            fail("cost_matrix", "a (C, C) nested sequence of numbers", repr(cost_matrix), TypeError)
    if not isinstance(cost_matrix, Tensor):
        fail("cost_matrix", "None, a (C, C) tensor or a nested sequence", type(cost_matrix).__name__, TypeError)
    if cost_matrix.shape != (num_classes, num_classes):
        fail("cost_matrix", f"of shape ({num_classes}, {num_classes})", tuple(cost_matrix.shape))
    matrix = cost_matrix.to(device=like.device, dtype=like.dtype)
    if not bool(torch.isfinite(matrix).all()) or bool((matrix < 0).any()) or bool((matrix > 1).any()):
        fail("cost_matrix", "finite with values in [0, 1]", cost_matrix.tolist())
    if bool((matrix.diagonal() != 0).any()):
        fail("cost_matrix", "zero on the diagonal (no cost for the right class)", cost_matrix.diagonal().tolist())
    return matrix


def _wasserstein_setup(logits, target, cost_matrix, weighting, mode, ignore_index, eps):
    """Prepared inputs, eps, the per-pixel Wasserstein distances W (B, *S), the per-pixel class weights
    alpha_y (B, *S) and the per-image denominators 2 TP + sum of errors (B,)."""
    check_one_of("weighting", weighting, WASSERSTEIN_WEIGHTINGS)
    if mode is not None:
        check_one_of("mode", mode, ("multiclass",))
    eps = check_number("eps", eps, low=0.0, low_inclusive=False)
    prepared = prepare(logits, target, mode="multiclass", ignore_index=ignore_index)
    matrix = _cost_matrix(cost_matrix, prepared.num_classes, prepared.logits)
    probs, dense = prepared.probs(), prepared.target  # dense: zero at ignored pixels
    spatial = "".join("xyz"[: len(prepared.spatial_dims)])
    distances = torch.einsum(f"bk{spatial},kc,bc{spatial}->b{spatial}", dense, matrix, probs)
    if weighting == "default":  # Fidon: alpha 0 for the background, 1 for every other class
        alpha = torch.ones(prepared.num_classes, dtype=probs.dtype, device=probs.device)
        alpha[0] = 0.0
        alpha = alpha.view(1, -1, *([1] * len(prepared.spatial_dims)))
    else:  # GDL-style: 1 / (volume + 1) per image and class
        alpha = (1.0 / (spatial_sums(dense) + 1.0)).view(*dense.shape[:2], *([1] * len(prepared.spatial_dims)))
    pixel_alpha = (dense * alpha).sum(dim=1)
    true_positives = (pixel_alpha * (1.0 - distances)).flatten(1).sum(dim=1)
    if weighting == "default":
        errors = distances
    else:  # MONAI's GDL mode: denominator sum alpha_y (2 - W) = 2 TP + sum alpha_y W
        errors = pixel_alpha * distances
    denominator = 2.0 * true_positives + errors.flatten(1).sum(dim=1)
    return prepared, eps, errors, denominator


def generalized_wasserstein_dice_loss_per_pixel(
    logits: Tensor,
    target: Tensor,
    *,
    cost_matrix: Sequence[Sequence[float]] | Tensor | None = None,
    weighting: str = "default",
    mode: str | None = None,
    ignore_index: int | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Per-pixel generalised Wasserstein Dice loss, (B, *S); see :func:`generalized_wasserstein_dice_loss`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> per_pixel = generalized_wasserstein_dice_loss_per_pixel(logits, labels)
        >>> torch.allclose(per_pixel.mean(dim=(1, 2)),
        ...                generalized_wasserstein_dice_loss(logits, labels, reduction="none"))
        True
    """
    prepared, eps, errors, denominator = _wasserstein_setup(
        logits, target, cost_matrix, weighting, mode, ignore_index, eps
    )
    scale = prepared.valid_count() / (denominator + eps)
    return prepared.mask(errors) * scale.view(-1, *([1] * len(prepared.pixel_dims)))


def generalized_wasserstein_dice_loss(
    logits: Tensor,
    target: Tensor,
    *,
    cost_matrix: Sequence[Sequence[float]] | Tensor | None = None,
    weighting: str = "default",
    mode: str | None = None,
    ignore_index: int | None = None,
    eps: float = 1e-5,
    reduction: str = "mean",
) -> Tensor:
    r"""Generalised Wasserstein Dice loss: a Dice loss whose errors are weighted by a class cost matrix.

    Per pixel, :math:`W_n=\sum_c M_{y_n,c}\,p_{nc}` (the optimal transport cost from the prediction to
    the one-hot target under the ground distance :math:`M`); per image

    .. math::
        TP^M = \sum_n \alpha_{y_n}(1-W_n),\qquad
        L_i = 1-\frac{2TP^M+\varepsilon}{2TP^M+\sum_n W_n+\varepsilon}=\frac{\sum_n W_n}{2TP^M+\sum_n W_n+\varepsilon},

    with :math:`\alpha` 0 for the background and 1 otherwise (``weighting="default"``, Fidon's paper),
    or :math:`\alpha_c = 1/(\mathrm{vol}_c+1)` applied to both terms (``"gdl"``). The second form is an
    exact per-pixel decomposition. S3's eq. 9 uses only the diagonal of :math:`M` and is identically 0
    (SPEC D.7). Equal to MONAI's ``GeneralizedWassersteinDiceLoss`` (both weightings).

    Reference: Fidon et al., "Generalised Wasserstein Dice Score for Imbalanced Multi-class Segmentation
    using Holistic Convolutional Networks", BrainLes 2017.

    Args:
        logits: (B, C, *S) scores (softmax).
        target: labels (B, *S) / (B, 1, *S) or a dense (B, C, *S) target.
        cost_matrix: (C, C) ground distance :math:`M`, zero diagonal, values in [0, 1]; None: 1 - I.
        weighting: "default" or "gdl".
        mode: None or "multiclass" (the only mode: the transport is between softmax classes).
        ignore_index: label whose pixels are ignored.
        eps: smoothing of numerator and denominator (> 0).
        reduction: "mean" or "sum" over images, or "none" for (B,).

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Example:
        >>> labels = torch.tensor([[[0, 1, 2, 2]]])
        >>> cost = [[0.0, 1.0, 1.0], [1.0, 0.0, 0.5], [1.0, 0.5, 0.0]]  # classes 1 and 2 are close
        >>> confuse_1_2 = 20.0 * torch.nn.functional.one_hot(torch.tensor([[[0, 2, 2, 2]]]), 3).movedim(-1, 1).float()
        >>> confuse_0_1 = 20.0 * torch.nn.functional.one_hot(torch.tensor([[[1, 1, 2, 2]]]), 3).movedim(-1, 1).float()
        >>> bool(generalized_wasserstein_dice_loss(confuse_1_2, labels, cost_matrix=cost)
        ...      < generalized_wasserstein_dice_loss(confuse_0_1, labels, cost_matrix=cost))
        True
    """
    prepared, eps, errors, denominator = _wasserstein_setup(
        logits, target, cost_matrix, weighting, mode, ignore_index, eps
    )
    per_image = prepared.mask(errors).flatten(1).sum(dim=1) / (denominator + eps)
    return reduce_images(per_image, reduction)


@register_loss("generalized_wasserstein_dice")
class GeneralizedWassersteinDiceLoss(Loss):
    """Module form of :func:`generalized_wasserstein_dice_loss` (multiclass only).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> loss = GeneralizedWassersteinDiceLoss(cost_matrix=1.0 - torch.eye(3))
        >>> torch.allclose(loss(logits, labels), generalized_wasserstein_dice_loss(logits, labels))
        True
    """

    modes = ("multiclass",)
    has_per_pixel = True
    function = staticmethod(generalized_wasserstein_dice_loss)
    pixel_function = staticmethod(generalized_wasserstein_dice_loss_per_pixel)

    def __init__(
        self,
        *,
        cost_matrix: Sequence[Sequence[float]] | Tensor | None = None,
        weighting: str = "default",
        mode: str | None = None,
        ignore_index: int | None = None,
        eps: float = 1e-5,
        reduction: str = "mean",
    ) -> None:
        check_one_of("weighting", weighting, WASSERSTEIN_WEIGHTINGS)
        check_number("eps", eps, low=0.0, low_inclusive=False)
        if cost_matrix is not None:
            check_type("cost_matrix", cost_matrix, (Tensor, list, tuple))
            matrix = _cost_matrix(cost_matrix, len(cost_matrix), torch.zeros(()))  # checked again against C
            cost_matrix = matrix if isinstance(cost_matrix, Tensor) else matrix.tolist()
        super().__init__(
            reduction, cost_matrix=cost_matrix, weighting=weighting, mode=mode, ignore_index=ignore_index, eps=eps
        )


# --------------------------------------------------------------------------- clDice


def _soft_erode(x: Tensor) -> Tensor:
    """Min-pool along each axis separately (a cross), as in the clDice reference code."""
    spatial_dims = x.ndim - 2
    pool = torch.nn.functional.max_pool2d if spatial_dims == 2 else torch.nn.functional.max_pool3d
    eroded = None
    for axis in range(spatial_dims):
        kernel = tuple(3 if a == axis else 1 for a in range(spatial_dims))
        padding = tuple(1 if a == axis else 0 for a in range(spatial_dims))
        along = -pool(-x, kernel, (1,) * spatial_dims, padding)
        eroded = along if eroded is None else torch.minimum(eroded, along)
    return eroded


def _soft_dilate(x: Tensor) -> Tensor:
    spatial_dims = x.ndim - 2
    pool = torch.nn.functional.max_pool2d if spatial_dims == 2 else torch.nn.functional.max_pool3d
    return pool(x, (3,) * spatial_dims, (1,) * spatial_dims, (1,) * spatial_dims)


def soft_skeleton(x: Tensor, iterations: int = 3) -> Tensor:
    """Soft skeleton of (B, C, H, W) or (B, C, D, H, W) maps in [0, 1] by iterated soft morphological
    opening (Shit et al.'s ``soft_skel``); differentiable.

    Example:
        >>> bar = torch.zeros(1, 1, 5, 7)
        >>> bar[0, 0, 1:4, 1:6] = 1.0  # a 3-pixel-thick bar: its skeleton is the middle of the middle row
        >>> soft_skeleton(bar, iterations=2)[0, 0, 2]
        tensor([0., 0., 1., 1., 1., 0., 0.])
    """
    check_type("iterations", iterations, int)
    if iterations < 0:
        fail("iterations", "a non-negative integer", iterations)
    if x.ndim not in (4, 5):
        fail("x", "of shape (B, C, H, W) or (B, C, D, H, W)", tuple(x.shape))
    relu = torch.nn.functional.relu
    skeleton = relu(x - _soft_dilate(_soft_erode(x)))
    for _ in range(iterations):
        x = _soft_erode(x)
        delta = relu(x - _soft_dilate(_soft_erode(x)))
        skeleton = skeleton + relu(delta - skeleton * delta)
    return skeleton


def cldice_loss(
    logits: Tensor,
    target: Tensor,
    *,
    iterations: int = 3,
    batch: bool = False,
    include_background: bool = False,
    mode: str | None = None,
    ignore_index: int | None = None,
    smooth: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    r"""Soft centerline Dice (clDice): the harmonic mean of topology precision and sensitivity.

    .. math::
        T_{prec} = \frac{\sum S_P\,t + s}{\sum S_P + s},\quad
        T_{sens} = \frac{\sum S_T\,p + s}{\sum S_T + s},\quad
        L = 1 - \frac{2\,T_{prec}T_{sens}}{T_{prec}+T_{sens}},

    with :math:`S_P`, :math:`S_T` the soft skeletons (:func:`soft_skeleton`) of the prediction and the
    target, sums over the scored classes and pixels of an image (``batch=True``: of the whole batch, as
    in the reference code, and every image gets the batch loss). Combine it with a Dice loss,
    ``0.5 * DiceLoss() + 0.5 * ClDiceLoss()``, as the paper's ``soft_dice_cldice`` does. Ignored pixels
    are set to background before skeletonisation, so they influence nothing. 2D and 3D.

    Reference: Shit et al., "clDice - a Novel Topology-Preserving Loss Function for Tubular Structure
    Segmentation", CVPR 2021.

    Args:
        logits: (B, C, H, W) or (B, C, D, H, W) scores.
        target: labels (B, *S) / (B, 1, *S) or a dense (B, C, *S) target.
        iterations: skeletonisation iterations (reference: 3; about the largest radius to thin).
        batch: pool the sums over the batch (the reference) or not (default, per image).
        include_background: score channel 0 too in multiclass mode (default False: the reference's
            ``[:, 1:]``); in the sigmoid modes every channel is a foreground and scored.
        mode, ignore_index: as in :func:`dice_loss`.
        smooth: the additive smoothing :math:`s` (> 0; reference 1).
        reduction: "mean" or "sum" over images, or "none" for (B,).

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Example:
        >>> labels = torch.zeros(1, 9, 9, dtype=torch.long)
        >>> labels[0, 4, :] = 1  # a thin vessel
        >>> broken = labels.clone()
        >>> broken[0, 4, 3:6] = 0  # the same vessel with a gap
        >>> def logits(labels): return 20.0 * (torch.stack([labels == 0, labels == 1], dim=1).float() - 0.5)
        >>> bool(cldice_loss(logits(labels), labels) < 1e-6 < cldice_loss(logits(broken), labels))
        True
    """
    check_type("batch", batch, bool)
    smooth = check_number("smooth", smooth, low=0.0, low_inclusive=False)
    prepared = prepare(logits, target, mode=mode, ignore_index=ignore_index)
    if len(prepared.spatial_dims) not in (2, 3):
        fail("logits", "of shape (B, C, H, W) or (B, C, D, H, W)", tuple(logits.shape))
    check_type("include_background", include_background, bool)
    first = 0 if include_background or prepared.mode != "multiclass" else 1
    probs = prepared.mask(prepared.probs())[:, first:]
    dense = prepared.target[:, first:]
    skeleton_pred, skeleton_true = soft_skeleton(probs, iterations), soft_skeleton(dense, iterations)

    def image_sums(x: Tensor) -> Tensor:
        sums = x.flatten(1).sum(dim=1)
        return sums.sum(dim=0, keepdim=True) if batch else sums

    precision = (image_sums(skeleton_pred * dense) + smooth) / (image_sums(skeleton_pred) + smooth)
    sensitivity = (image_sums(skeleton_true * probs) + smooth) / (image_sums(skeleton_true) + smooth)
    per_image = 1.0 - 2.0 * precision * sensitivity / (precision + sensitivity)
    return reduce_images(per_image.expand(logits.shape[0]).contiguous(), reduction)


@register_loss("cldice")
class ClDiceLoss(Loss):
    """Module form of :func:`cldice_loss`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> torch.allclose(ClDiceLoss()(logits, labels), cldice_loss(logits, labels))
        True
    """

    function = staticmethod(cldice_loss)

    def __init__(
        self,
        *,
        iterations: int = 3,
        batch: bool = False,
        include_background: bool = False,
        mode: str | None = None,
        ignore_index: int | None = None,
        smooth: float = 1.0,
        reduction: str = "mean",
    ) -> None:
        check_type("iterations", iterations, int)
        check_type("batch", batch, bool)
        check_number("smooth", smooth, low=0.0, low_inclusive=False)
        super().__init__(reduction, iterations=iterations, batch=batch, include_background=include_background,
                         mode=mode, ignore_index=ignore_index, smooth=smooth)


# --------------------------------------------------------------------------- RMI (Zhao)

# Added to the masked sigmoid probabilities before pooling, as the reference's ``_CLIP_MIN``.
RMI_PROBABILITY_FLOOR = 1e-6


def _neighbourhood_vectors(x: Tensor, radius: int) -> Tensor:
    """(B, C, *S) -> (B, C, R^d, N): the R x R (x R) neighbourhood of every position whose neighbourhood
    lies inside the map, one column per position (the reference's ``map_get_pairs``)."""
    spatial = x.shape[2:]
    inner = [size - radius + 1 for size in spatial]
    shifted = [
        x[(..., *(slice(start, start + length) for start, length in zip(shift, inner, strict=True)))]
        for shift in itertools.product(range(radius), repeat=len(spatial))
    ]
    return torch.stack(shifted, dim=2).flatten(3)


def _check_rmi_options(radius: int, downsample: int, bce_weight: float, eps: float) -> tuple[float, float]:
    for name, value in (("radius", radius), ("downsample", downsample)):
        check_type(name, value, int)
        if value < 1:
            fail(name, "a positive integer", value)
    return check_number("bce_weight", bce_weight, low=0.0, high=1.0), check_number(
        "eps", eps, low=0.0, low_inclusive=False
    )


def rmi_loss(
    logits: Tensor,
    target: Tensor,
    *,
    radius: int = 3,
    downsample: int = 4,
    bce_weight: float = 0.5,
    mode: str | None = None,
    ignore_index: int | None = None,
    eps: float = 5e-4,
    reduction: str = "mean",
) -> Tensor:
    r"""Region mutual information loss: a per-pixel sigmoid BCE plus a lower bound of the mutual
    information between the label and probability patterns of small neighbourhoods.

    Probabilities are **sigmoid** per channel in every mode (the reference's ``forward_sigmoid``, also
    in multiclass mode, where the target is the one-hot labels). Labels :math:`y` and probabilities
    :math:`p` (ignored pixels: :math:`y = 0`, :math:`p = 0`; then :math:`p + 10^{-6}`) are average-pooled
    (kernel and stride ``downsample``, zero padding ``downsample // 2``), and every position's
    :math:`R\times R` neighbourhood (:math:`R^3` in 3D) is a vector of dimension :math:`d = R^{n}`. Per
    image and class, with centred but unnormalised covariances (sums over the positions, as in the
    reference),

    .. math::
        \Sigma_{Y|P} = \Sigma_Y - \Sigma_{YP}(\Sigma_P+\epsilon I)^{-1}\Sigma_{YP}^\top,\qquad
        \mathrm{RMI}_{ic} = \frac{1}{d}\cdot\frac12\log\det(\Sigma_{Y|P}+\epsilon I)

    (by Cholesky, in float64), and the loss of image :math:`i` is

    .. math::
        L_i = \lambda\,\frac{1}{P_i}\sum_n\sum_c \mathrm{BCE}(z_{nc}, y_{nc}) + (1-\lambda)\sum_c \mathrm{RMI}_{ic},

    :math:`\lambda` = ``bce_weight`` (0.5; SPEC D.13). The RMI term is the negative of the MI lower bound
    up to a constant: it is lowest when the probabilities explain the labels, and is negative at a good
    prediction (the conditional covariance tends to :math:`\epsilon I`). A class absent from an image has
    :math:`\Sigma_Y = 0` and a constant RMI term (only the BCE sees it). 2D, and 3D with
    :math:`R^3`-dimensional vectors (27 for R = 3: cheap after the 4x down-sampling).

    Differences from the reference (ZJULearning/RMI ``RMILoss.forward_sigmoid``): the BCE is averaged per
    image over its counted pixels (the reference divides the batch sum by the counted pixels + 1) and the
    batch mean of the per-image losses is returned (the same when images have equal counted pixels); the
    pooling, the floor, the Cholesky log-determinant and the class sum are the reference's.

    Reference: Zhao et al., "Region Mutual Information Loss for Semantic Segmentation", NeurIPS 2019.

    Args:
        logits: (B, C, H, W) or (B, C, D, H, W) scores (sigmoid per channel).
        target: labels (B, *S) / (B, 1, *S) or a dense (B, C, *S) target.
        radius: side :math:`R` of the square (cubic) neighbourhood (reference ``rmi_radius`` 3).
        downsample: average-pooling kernel and stride before the RMI term (4, the reference's training
            setting; 1 for none). The pooled map needs at least ``radius`` positions along each axis.
        bce_weight: :math:`\lambda`, the weight of the BCE term; the RMI term gets :math:`1-\lambda`.
        mode, ignore_index: as in :func:`dice_loss`.
        eps: :math:`\epsilon` added to both covariance diagonals (reference ``_POS_ALPHA`` 5e-4).
        reduction: "mean" or "sum" over images, or "none" for (B,).

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Example:
        >>> labels = torch.zeros(1, 16, 16, dtype=torch.long)
        >>> labels[0, 4:12, 3:10] = 1
        >>> one_hot = torch.stack([labels == 0, labels == 1], dim=1).float()
        >>> good, poor = 10.0 * (2 * one_hot - 1), torch.zeros(1, 2, 16, 16)
        >>> bool(rmi_loss(good, labels) < rmi_loss(poor, labels))
        True
    """
    bce_weight, eps = _check_rmi_options(radius, downsample, bce_weight, eps)
    prepared = prepare(logits, target, mode=mode, ignore_index=ignore_index)
    spatial_dims = len(prepared.spatial_dims)
    if spatial_dims not in (2, 3):
        fail("logits", "of shape (B, C, H, W) or (B, C, D, H, W)", tuple(logits.shape))
    bce = F.binary_cross_entropy_with_logits(prepared.logits, prepared.target, reduction="none").sum(dim=1)
    bce_per_image = prepared.image_mean(bce)

    labels = prepared.target
    probs = prepared.mask(prepared.logits.sigmoid()) + RMI_PROBABILITY_FLOOR
    if downsample > 1:
        pool = F.avg_pool2d if spatial_dims == 2 else F.avg_pool3d
        labels, probs = (pool(x, downsample, downsample, downsample // 2) for x in (labels, probs))
    if min(labels.shape[2:]) < radius:
        fail("logits", f"at least {radius} positions along each spatial axis after the {downsample}x "
             f"down-sampling (radius {radius}); lower `downsample` for small inputs",
             f"shape {tuple(logits.shape)}, pooled to {tuple(labels.shape[2:])}")
    label_vectors = _neighbourhood_vectors(labels.double(), radius)
    prob_vectors = _neighbourhood_vectors(probs.double(), radius)
    label_vectors = label_vectors - label_vectors.mean(dim=3, keepdim=True)
    prob_vectors = prob_vectors - prob_vectors.mean(dim=3, keepdim=True)
    dimension = label_vectors.shape[2]
    ridge = eps * torch.eye(dimension, dtype=torch.float64, device=logits.device)
    label_cov = label_vectors @ label_vectors.transpose(2, 3)
    prob_cov = prob_vectors @ prob_vectors.transpose(2, 3)
    cross_cov = label_vectors @ prob_vectors.transpose(2, 3)
    prob_factor, prob_failed = torch.linalg.cholesky_ex(prob_cov + ridge)
    conditional = label_cov - cross_cov @ torch.cholesky_solve(cross_cov.transpose(2, 3), prob_factor)
    conditional = 0.5 * (conditional + conditional.transpose(2, 3)) + ridge  # symmetric up to rounding
    factor, failed = torch.linalg.cholesky_ex(conditional)
    if value_checks_enabled() and bool((prob_failed != 0).any() | (failed != 0).any()):
        check_finite_tensor("logits", logits)  # NaN logits are the usual cause
        fail("eps", "large enough to keep the covariances positive definite", eps)
    # 0.5 * log det = sum log diag(L); the reference adds 1e-8 to the diagonal before the log
    half_log_det = torch.log(factor.diagonal(dim1=2, dim2=3) + 1e-8).sum(dim=2)
    rmi_per_image = (half_log_det / dimension).sum(dim=1).to(bce_per_image.dtype)
    return reduce_images(bce_weight * bce_per_image + (1.0 - bce_weight) * rmi_per_image, reduction)


@register_loss("rmi")
class RMILoss(Loss):
    """Module form of :func:`rmi_loss`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 16, 16), torch.randint(0, 3, (2, 16, 16))
        >>> torch.allclose(RMILoss()(logits, labels), rmi_loss(logits, labels))
        True
    """

    function = staticmethod(rmi_loss)

    def __init__(
        self,
        *,
        radius: int = 3,
        downsample: int = 4,
        bce_weight: float = 0.5,
        mode: str | None = None,
        ignore_index: int | None = None,
        eps: float = 5e-4,
        reduction: str = "mean",
    ) -> None:
        _check_rmi_options(radius, downsample, bce_weight, eps)
        super().__init__(reduction, radius=radius, downsample=downsample, bce_weight=bce_weight, mode=mode,
                         ignore_index=ignore_index, eps=eps)
