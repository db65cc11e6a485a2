r"""Compound losses: weighted sums of losses, and the named compounds of the literature.

:class:`~seglosses.base.Weighted` (defined beside :class:`~seglosses.base.Loss`) is the one
composition mechanism: ``0.3 * CrossEntropyLoss() + 0.7 * DiceLoss()`` builds one. It has a per-pixel
form exactly when every term has one. The compounds that are plain weighted sums of library losses
(:class:`DiceCELoss`, :class:`DiceFocalLoss`, :class:`HybridFocalLoss`)
are :class:`Weighted` subclasses that build their terms from their options. Combo, exponential
logarithmic, Unified Focal, TopK Dice and the CE + per-pixel Dice loss of the envelope mix their
parts inside one function.

**Binary mode** of the softmax compounds (Unified Focal, TopK Dice) reads the sigmoid channel as two
classes, background :math:`1-\sigma(z)` and foreground :math:`\sigma(z)` (the softmax of
:math:`[0, z]`), so class indices there mean 0 = background, 1 = foreground.

**Powers below one** have an infinite slope at 0. Where such a power meets a quantity that is 0 at a
perfect prediction (focal Tversky, exp-log), it is replaced below :math:`10^{-7}` by its chord
through the origin: the value still reaches 0 and the gradient stays finite.

**Empty classes** follow the region losses: a class absent from target and prediction scores
:math:`\varepsilon/\varepsilon = 1` (no penalty); predicted mass on an absent class is penalised.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from seglosses._checks import check_class_weights, check_number, check_one_of, check_type, fail
from seglosses.base import Loss, Weighted, check_shared_options, reduce_images
from seglosses.blocks import (
    class_average_weights,
    dice_error_maps,
    dice_error_sums,
    focal_map,
    pixel_cross_entropy,
    prepare_class_average,
    ratio_per_image,
    ratio_per_pixel,
    reduced_cross_entropy,
)
from seglosses.pixel import CrossEntropyLoss, FocalLoss, cross_entropy_per_pixel, focal_loss, focal_loss_per_pixel
from seglosses.region import (
    DiceLoss,
    FocalTverskyLoss,
    GeneralizedDiceLoss,
    dice_loss_per_pixel,
    focal_tversky_loss,
    generalized_dice_loss,
    generalized_dice_loss_per_pixel,
)
from seglosses.registry import register_loss
from seglosses.targets import MODES, Prepared, prepare

__all__ = [
    "CEDicePixelLoss",
    "ComboLoss",
    "DiceCELoss",
    "DiceFocalLoss",
    "ExpLogLoss",
    "GeneralizedDiceFocalLoss",
    "HybridFocalLoss",
    "TopKDiceLoss",
    "UnifiedFocalLoss",
    "Weighted",
    "ce_dice_pixel_loss",
    "ce_dice_pixel_loss_per_pixel",
    "ce_dice_pixel_parts",
    "combo_loss",
    "combo_loss_per_pixel",
    "dice_ce_loss",
    "dice_ce_loss_per_pixel",
    "dice_focal_loss",
    "dice_focal_loss_per_pixel",
    "exp_log_loss",
    "generalized_dice_focal_loss",
    "generalized_dice_focal_loss_per_pixel",
    "hybrid_focal_loss",
    "topk_dice_loss",
    "unified_focal_loss",
]


class _NamedSum(Weighted):
    """A named weighted sum whose terms are built from its options, stored like any loss's options."""

    spatial_dims = (2, 3)  # its terms are 2D and 3D losses (a class attribute, unlike Weighted's property)

    def __init__(self, terms: Sequence[tuple[float, Loss]], reduction: str, **options) -> None:
        check_shared_options(type(self).__name__, type(self).modes, options)
        super().__init__(terms, reduction)
        self.options = options

    def per_image(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.function is not None:  # a fused function prepares the inputs once for all terms
            return Loss.per_image(self, logits, target)
        self.check_mode(logits)
        return super().per_image(logits, target)

    def per_pixel(self, logits: Tensor, target: Tensor) -> Tensor:
        if not self.has_per_pixel:
            return Loss.per_pixel(self, logits, target)  # raises the library's TypeError, naming this class
        self.check_mode(logits)
        return super().per_pixel(logits, target)

    extra_repr = Loss.extra_repr


# --------------------------------------------------------------------------- shared pieces

SOFTMAX_MODES: tuple[str, ...] = ("multiclass", "binary")
_FLOOR = 1e-7  # the reference code's probability clip (SPEC C), also where powers below one turn linear


def _spatial_sum(x: Tensor) -> Tensor:
    """(B, C, *S) -> (B, C)."""
    return x.sum(dim=tuple(range(2, x.ndim)))


def _per_class(values: Tensor, like: Tensor) -> Tensor:
    """(C,) or (B, C) values shaped to broadcast over a (B, C, *S) tensor like ``like``."""
    return values.reshape(*values.shape, *([1] * (like.ndim - 2)))


def _power(base: Tensor, exponent: float | Tensor) -> Tensor:
    """``base ** exponent`` for ``base >= 0`` and ``exponent > 0``, replaced below 1e-7 by its chord
    through 0 so that the slope stays finite (at most ``1e-7 ** (exponent - 1)``)."""
    chord = base * _FLOOR ** (exponent - 1.0)
    return torch.where(base < _FLOOR, chord, base.clamp_min(_FLOOR) ** exponent)


def _check_mode_option(mode: str | None, modes: tuple[str, ...]) -> None:
    if mode is not None:
        check_one_of("mode", mode, modes)


def _require_mode(prepared: Prepared, modes: tuple[str, ...], loss_name: str) -> Prepared:
    if prepared.mode not in modes:
        fail("mode", f"one of {list(modes)} for {loss_name}", repr(prepared.mode))
    return prepared


def _as_two_class(prepared: Prepared) -> Prepared:
    """Binary mode as a softmax over two classes: softmax([0, z]) = (1 - sigmoid(z), sigmoid(z))."""
    if prepared.mode != "binary":
        return prepared
    logits = torch.cat([torch.zeros_like(prepared.logits), prepared.logits], dim=1)
    target = torch.cat([prepared.mask(1.0 - prepared.target), prepared.target], dim=1)
    return Prepared(logits=logits, target=target, valid=prepared.valid, mode="multiclass")


def _check_eps(eps: float) -> float:
    return check_number("eps", eps, low=0.0, low_inclusive=False)


def _check_lambda(name: str, value: float) -> float:
    """A non-negative term weight."""
    return check_number(name, value, low=0.0)


# --------------------------------------------------------------------------- Dice + CE


def _prepared_dice(logits, target, squared, batch, mode, include_background, ignore_index, eps,
                   dice_class_weights=None):
    """The prepared inputs and the per-image Dice loss: Dice + X compounds prepare their inputs once."""
    check_type("batch", batch, bool)
    prepared, eps, weights = prepare_class_average(logits, target, mode, ignore_index, include_background,
                                                   dice_class_weights, eps)
    excess, denominator = dice_error_sums(prepared, squared)
    return prepared, ratio_per_image(excess, denominator, weights, batch=batch, eps=eps)


def dice_ce_loss(
    logits: Tensor,
    target: Tensor,
    *,
    lambda_dice: float = 1.0,
    lambda_ce: float = 1.0,
    squared: bool = True,
    batch: bool = False,
    mode: str | None = None,
    include_background: bool = True,
    class_weights: Sequence[float] | Tensor | None = None,
    dice_class_weights: Sequence[float] | Tensor | None = None,
    label_smoothing: float = 0.0,
    pos_weight: float | Sequence[float] | Tensor | None = None,
    ignore_index: int | None = None,
    eps: float = 1e-5,
    reduction: str = "mean",
) -> Tensor:
    r"""Dice + cross-entropy: :math:`L = \lambda_{Dice} L_{Dice} + \lambda_{CE} L_{CE}`, per image.

    .. math::
        L_i = \lambda_{Dice}\Big(1-\frac1C\sum_c\frac{2\,TP_c+\varepsilon}{\sum_n p_{nc}^q+t_{nc}^q+\varepsilon}\Big)
              + \lambda_{CE}\,\frac{\sum_n w_{y_n}(-\log p_{n,y_n})}{\sum_n w_{y_n}}

    that is :func:`~seglosses.region.dice_loss` plus :func:`~seglosses.pixel.cross_entropy`. MONAI's
    ``DiceCELoss`` takes the CE mean over the whole batch instead of per image: the same number when
    no pixel is ignored, no class is weighted and the images have equal sizes.

    Reference: Isensee et al., "nnU-Net", Nature Methods 2021 (Dice + CE, weights 1:1).

    Args:
        logits: (B, C, *S) scores.
        target: labels (B, *S) / (B, 1, *S) or a dense (B, C, *S) target.
        lambda_dice, lambda_ce: non-negative weights of the two terms.
        squared, batch, include_background, eps: options of the Dice term (see ``dice_loss``).
        mode: "multiclass", "binary" or "multilabel"; inferred from C when None.
        class_weights: (C,) weights of the cross-entropy term only (PyTorch's ``weight``).
        dice_class_weights: (C,) weights of the Dice term's class average only. MONAI's
            ``DiceCELoss(weight=w)`` weighs both terms: ``class_weights=w, dice_class_weights=w``
            (MONAI multiplies the per-class Dice losses by w and averages; ours normalises by the
            sum of w: the same number when the weights sum to C).
        label_smoothing, pos_weight: options of the cross-entropy term (see ``cross_entropy``).
        ignore_index: label whose pixels are ignored by both terms.
        reduction: "mean" or "sum" over images, or "none" for (B,).

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> loss = dice_ce_loss(logits, labels)
        >>> from seglosses import cross_entropy, dice_loss, focal_loss
        >>> torch.allclose(loss, dice_loss(logits, labels) + cross_entropy(logits, labels))
        True
    """
    prepared, dice = _prepared_dice(logits, target, squared, batch, mode, include_background, ignore_index, eps,
                                    dice_class_weights)
    ce = reduced_cross_entropy(prepared, class_weights, label_smoothing=label_smoothing, pos_weight=pos_weight,
                               reduction=reduction)
    return reduce_images(_check_lambda("lambda_dice", lambda_dice) * dice, reduction) + (
        _check_lambda("lambda_ce", lambda_ce) * ce
    )


def dice_ce_loss_per_pixel(
    logits: Tensor,
    target: Tensor,
    *,
    lambda_dice: float = 1.0,
    lambda_ce: float = 1.0,
    squared: bool = True,
    batch: bool = False,
    mode: str | None = None,
    include_background: bool = True,
    class_weights: Sequence[float] | Tensor | None = None,
    dice_class_weights: Sequence[float] | Tensor | None = None,
    label_smoothing: float = 0.0,
    pos_weight: float | Sequence[float] | Tensor | None = None,
    ignore_index: int | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Per-pixel form of :func:`dice_ce_loss`, (B, *S): the weighted sum of both terms' per-pixel forms.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> per_pixel = dice_ce_loss_per_pixel(logits, labels)
        >>> per_pixel.shape
        torch.Size([2, 8, 8])
        >>> torch.allclose(per_pixel.mean(dim=(1, 2)), dice_ce_loss(logits, labels, reduction="none"))
        True
    """
    dice = dice_loss_per_pixel(logits, target, squared=squared, batch=batch, mode=mode,
                               include_background=include_background, class_weights=dice_class_weights,
                               ignore_index=ignore_index, eps=eps)
    ce = cross_entropy_per_pixel(logits, target, mode=mode, class_weights=class_weights, ignore_index=ignore_index,
                                 label_smoothing=label_smoothing, pos_weight=pos_weight)
    return _check_lambda("lambda_dice", lambda_dice) * dice + _check_lambda("lambda_ce", lambda_ce) * ce


@register_loss("dice_ce")
class DiceCELoss(_NamedSum):
    """Module form of :func:`dice_ce_loss`: a :class:`Weighted` sum of ``DiceLoss`` and ``CrossEntropyLoss``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> loss = DiceCELoss(lambda_dice=1.0, lambda_ce=1.0)
        >>> loss(logits, labels).shape, loss.per_pixel(logits, labels).shape
        (torch.Size([]), torch.Size([2, 8, 8]))
        >>> torch.allclose(loss(logits, labels), dice_ce_loss(logits, labels))
        True
    """

    modes = MODES
    has_per_pixel = True
    function = staticmethod(dice_ce_loss)

    def __init__(
        self,
        *,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        squared: bool = True,
        batch: bool = False,
        mode: str | None = None,
        include_background: bool = True,
        class_weights: Sequence[float] | Tensor | None = None,
        dice_class_weights: Sequence[float] | Tensor | None = None,
        label_smoothing: float = 0.0,
        pos_weight: float | Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        eps: float = 1e-5,
        reduction: str = "mean",
    ) -> None:
        check_shared_options(type(self).__name__, type(self).modes, {"mode": mode, "dice_class_weights":
                                                                    dice_class_weights, "pos_weight": pos_weight})
        dice = DiceLoss(squared=squared, batch=batch, mode=mode, include_background=include_background,
                        class_weights=dice_class_weights, ignore_index=ignore_index, eps=eps)
        ce = CrossEntropyLoss(mode=mode, class_weights=class_weights, ignore_index=ignore_index,
                              label_smoothing=label_smoothing, pos_weight=pos_weight)
        super().__init__(
            [(_check_lambda("lambda_dice", lambda_dice), dice), (_check_lambda("lambda_ce", lambda_ce), ce)],
            reduction,
            lambda_dice=lambda_dice,
            lambda_ce=lambda_ce,
            squared=squared,
            batch=batch,
            mode=mode,
            include_background=include_background,
            class_weights=class_weights,
            dice_class_weights=dice_class_weights,
            label_smoothing=label_smoothing,
            pos_weight=pos_weight,
            ignore_index=ignore_index,
            eps=eps,
        )


# --------------------------------------------------------------------------- Dice + focal


def dice_focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    lambda_dice: float = 1.0,
    lambda_focal: float = 1.0,
    gamma: float = 2.0,
    alpha: float | Sequence[float] | Tensor | None = None,
    squared: bool = True,
    batch: bool = False,
    mode: str | None = None,
    include_background: bool = True,
    dice_class_weights: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = None,
    eps: float = 1e-5,
    reduction: str = "mean",
) -> Tensor:
    r"""Dice + focal: :math:`L = \lambda_{Dice} L_{Dice} + \lambda_{F} L_{F}`, per image.

    .. math::
        L_i = \lambda_{Dice}\Big(1-\frac1C\sum_c\frac{2\,TP_c+\varepsilon}{\sum_n p_{nc}^q+t_{nc}^q+\varepsilon}\Big)
              + \lambda_{F}\,\frac1{P_i}\sum_n\sum_c \alpha_c t_{nc}(1-p_{nc})^\gamma(-\log p_{nc})

    that is :func:`~seglosses.region.dice_loss` plus :func:`~seglosses.pixel.focal_loss` (softmax focal
    summed over classes in multiclass mode, sigmoid focal averaged over channels otherwise). MONAI's
    ``DiceFocalLoss`` uses a sigmoid focal term whatever the Dice activation: it matches this loss in
    multilabel mode.

    Reference: Zhu et al., "AnatomyNet", Medical Physics 2019.

    Args:
        logits: (B, C, *S) scores.
        target: labels (B, *S) / (B, 1, *S) or a dense (B, C, *S) target.
        lambda_dice, lambda_focal: non-negative weights of the two terms.
        gamma, alpha: options of the focal term (see ``focal_loss``; ``alpha`` weighs its classes, the
            focal term only).
        squared, batch, include_background, eps: options of the Dice term (see ``dice_loss``).
        mode: "multiclass", "binary" or "multilabel"; inferred from C when None.
        dice_class_weights: (C,) weights of the Dice term's class average only. MONAI's ``weight``
            weighs both terms: in multiclass mode pass it as ``alpha`` (per-class weights of the
            softmax focal term) and as ``dice_class_weights`` (equal when the weights sum to C).
        ignore_index: label whose pixels are ignored by both terms.
        reduction: "mean" or "sum" over images, or "none" for (B,).

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> from seglosses import cross_entropy, dice_loss, focal_loss
        >>> loss = dice_focal_loss(logits, labels, lambda_focal=0.5)
        >>> torch.allclose(loss, dice_loss(logits, labels) + 0.5 * focal_loss(logits, labels))
        True
    """
    prepared, dice = _prepared_dice(logits, target, squared, batch, mode, include_background, ignore_index, eps,
                                    dice_class_weights)
    focal = prepared.image_mean(focal_map(prepared, gamma, alpha))
    weighted = _check_lambda("lambda_dice", lambda_dice) * dice + _check_lambda("lambda_focal", lambda_focal) * focal
    return reduce_images(weighted, reduction)


def dice_focal_loss_per_pixel(
    logits: Tensor,
    target: Tensor,
    *,
    lambda_dice: float = 1.0,
    lambda_focal: float = 1.0,
    gamma: float = 2.0,
    alpha: float | Sequence[float] | Tensor | None = None,
    squared: bool = True,
    batch: bool = False,
    mode: str | None = None,
    include_background: bool = True,
    dice_class_weights: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Per-pixel form of :func:`dice_focal_loss`, (B, *S): the weighted sum of both terms' per-pixel forms.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> per_pixel = dice_focal_loss_per_pixel(logits, labels, lambda_focal=0.5)
        >>> per_pixel.shape
        torch.Size([2, 8, 8])
        >>> torch.allclose(per_pixel.mean(dim=(1, 2)),
        ...                dice_focal_loss(logits, labels, lambda_focal=0.5, reduction="none"))
        True
    """
    dice = dice_loss_per_pixel(logits, target, squared=squared, batch=batch, mode=mode,
                               include_background=include_background, class_weights=dice_class_weights,
                               ignore_index=ignore_index, eps=eps)
    focal = focal_loss_per_pixel(logits, target, gamma=gamma, alpha=alpha, mode=mode, ignore_index=ignore_index)
    return _check_lambda("lambda_dice", lambda_dice) * dice + _check_lambda("lambda_focal", lambda_focal) * focal


@register_loss("dice_focal")
class DiceFocalLoss(_NamedSum):
    """Module form of :func:`dice_focal_loss`: a :class:`Weighted` sum of ``DiceLoss`` and ``FocalLoss``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> loss = DiceFocalLoss(lambda_focal=0.5)
        >>> loss(logits, labels).shape, loss.per_pixel(logits, labels).shape
        (torch.Size([]), torch.Size([2, 8, 8]))
        >>> torch.allclose(loss(logits, labels), dice_focal_loss(logits, labels, lambda_focal=0.5))
        True
    """

    modes = MODES
    has_per_pixel = True
    function = staticmethod(dice_focal_loss)

    def __init__(
        self,
        *,
        lambda_dice: float = 1.0,
        lambda_focal: float = 1.0,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | Tensor | None = None,
        squared: bool = True,
        batch: bool = False,
        mode: str | None = None,
        include_background: bool = True,
        dice_class_weights: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        eps: float = 1e-5,
        reduction: str = "mean",
    ) -> None:
        check_shared_options(type(self).__name__, type(self).modes, {"mode": mode, "dice_class_weights":
                                                                    dice_class_weights, "alpha": alpha})
        dice = DiceLoss(squared=squared, batch=batch, mode=mode, include_background=include_background,
                        class_weights=dice_class_weights, ignore_index=ignore_index, eps=eps)
        focal = FocalLoss(gamma=gamma, alpha=alpha, mode=mode, ignore_index=ignore_index)
        super().__init__(
            [(_check_lambda("lambda_dice", lambda_dice), dice), (_check_lambda("lambda_focal", lambda_focal), focal)],
            reduction,
            lambda_dice=lambda_dice,
            lambda_focal=lambda_focal,
            gamma=gamma,
            alpha=alpha,
            squared=squared,
            batch=batch,
            mode=mode,
            include_background=include_background,
            dice_class_weights=dice_class_weights,
            ignore_index=ignore_index,
            eps=eps,
        )


# --------------------------------------------------------------------------- generalised Dice + focal


def generalized_dice_focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    lambda_gdl: float = 1.0,
    lambda_focal: float = 1.0,
    w_type: str = "square",
    gamma: float = 2.0,
    alpha: float | Sequence[float] | Tensor | None = None,
    batch: bool = False,
    mode: str | None = None,
    include_background: bool = True,
    ignore_index: int | None = None,
    eps: float = 1e-5,
    reduction: str = "mean",
) -> Tensor:
    r"""Generalised Dice + focal: :math:`L = \lambda_{GDL} L_{GDL} + \lambda_F L_F`, per image.

    That is :func:`~seglosses.region.generalized_dice_loss` plus :func:`~seglosses.pixel.focal_loss`
    (MONAI's ``GeneralizedDiceFocalLoss``). MONAI's focal term is a sigmoid focal loss over the
    one-hot channels whatever the Dice activation: its ``softmax=True`` number is
    ``GeneralizedDiceLoss() + FocalLoss(mode="multilabel")`` on a one-hot target; ours keeps one
    activation (the softmax focal loss in multiclass mode). In sigmoid modes our generalised Dice
    adds each channel's complement as a class (see ``generalized_dice_loss``), MONAI's does not.

    Reference: Sudre et al., DLMIA 2017 (generalised Dice); Lin et al., ICCV 2017 (focal).

    Args:
        logits: (B, C, *S) scores.
        target: labels (B, *S) / (B, 1, *S) or a dense (B, C, *S) target.
        lambda_gdl, lambda_focal: non-negative weights of the two terms.
        w_type, batch, include_background, eps: options of the generalised Dice term.
        gamma, alpha: options of the focal term (``alpha`` weighs its classes; MONAI's ``weight``).
        mode: "multiclass", "binary" or "multilabel"; inferred from C when None.
        ignore_index: label whose pixels are ignored by both terms.
        reduction: "mean" or "sum" over images, or "none" for (B,).

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> from seglosses import generalized_dice_loss
        >>> expected = generalized_dice_loss(logits, labels) + focal_loss(logits, labels)
        >>> torch.allclose(generalized_dice_focal_loss(logits, labels), expected)
        True
    """
    gdl = generalized_dice_loss(logits, target, w_type=w_type, batch=batch, mode=mode,
                                include_background=include_background, ignore_index=ignore_index, eps=eps,
                                reduction="none")
    focal = focal_loss(logits, target, gamma=gamma, alpha=alpha, mode=mode, ignore_index=ignore_index,
                       reduction="none")
    weighted = _check_lambda("lambda_gdl", lambda_gdl) * gdl + _check_lambda("lambda_focal", lambda_focal) * focal
    return reduce_images(weighted, reduction)


def generalized_dice_focal_loss_per_pixel(
    logits: Tensor,
    target: Tensor,
    *,
    lambda_gdl: float = 1.0,
    lambda_focal: float = 1.0,
    w_type: str = "square",
    gamma: float = 2.0,
    alpha: float | Sequence[float] | Tensor | None = None,
    batch: bool = False,
    mode: str | None = None,
    include_background: bool = True,
    ignore_index: int | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Per-pixel form of :func:`generalized_dice_focal_loss`, (B, *S).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> per_pixel = generalized_dice_focal_loss_per_pixel(logits, labels)
        >>> torch.allclose(per_pixel.mean(dim=(1, 2)), generalized_dice_focal_loss(logits, labels, reduction="none"))
        True
    """
    gdl = generalized_dice_loss_per_pixel(logits, target, w_type=w_type, batch=batch, mode=mode,
                                          include_background=include_background, ignore_index=ignore_index, eps=eps)
    focal = focal_loss_per_pixel(logits, target, gamma=gamma, alpha=alpha, mode=mode, ignore_index=ignore_index)
    return _check_lambda("lambda_gdl", lambda_gdl) * gdl + _check_lambda("lambda_focal", lambda_focal) * focal


@register_loss("generalized_dice_focal")
class GeneralizedDiceFocalLoss(_NamedSum):
    """Module form of :func:`generalized_dice_focal_loss`: a :class:`Weighted` sum of ``GeneralizedDiceLoss``
    and ``FocalLoss``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> loss = GeneralizedDiceFocalLoss(lambda_focal=0.5)
        >>> torch.allclose(loss(logits, labels), generalized_dice_focal_loss(logits, labels, lambda_focal=0.5))
        True
    """

    modes = MODES
    has_per_pixel = True
    function = staticmethod(generalized_dice_focal_loss)

    def __init__(
        self,
        *,
        lambda_gdl: float = 1.0,
        lambda_focal: float = 1.0,
        w_type: str = "square",
        gamma: float = 2.0,
        alpha: float | Sequence[float] | Tensor | None = None,
        batch: bool = False,
        mode: str | None = None,
        include_background: bool = True,
        ignore_index: int | None = None,
        eps: float = 1e-5,
        reduction: str = "mean",
    ) -> None:
        gdl = GeneralizedDiceLoss(w_type=w_type, batch=batch, mode=mode, include_background=include_background,
                                  ignore_index=ignore_index, eps=eps)
        focal = FocalLoss(gamma=gamma, alpha=alpha, mode=mode, ignore_index=ignore_index)
        super().__init__(
            [(_check_lambda("lambda_gdl", lambda_gdl), gdl), (_check_lambda("lambda_focal", lambda_focal), focal)],
            reduction,
            lambda_gdl=lambda_gdl,
            lambda_focal=lambda_focal,
            w_type=w_type,
            gamma=gamma,
            alpha=alpha,
            batch=batch,
            mode=mode,
            include_background=include_background,
            ignore_index=ignore_index,
            eps=eps,
        )


# --------------------------------------------------------------------------- Combo


def _log_probs_and_complement(prepared: Prepared) -> tuple[Tensor, Tensor]:
    """log p and log(1 - p) of every channel, from the logits."""
    if prepared.mode == "multiclass":
        log_probs = prepared.logits.log_softmax(dim=1)
        # 1 - p = -expm1(log p) keeps its precision as p -> 1; clipped at 1e-7 like the reference code
        return log_probs, (-torch.expm1(log_probs)).clamp_min(_FLOOR).log()
    return F.logsigmoid(prepared.logits), F.logsigmoid(-prepared.logits)


def _combo_terms(prepared: Prepared, alpha, beta, include_background, class_weights, eps, per_pixel: bool) -> Tensor:
    """The (1 - DSC) form of Combo: per image (B,), or its exact per-pixel decomposition (B, *S)."""
    alpha = check_number("alpha", alpha, low=0.0, high=1.0)
    beta = check_number("beta", beta, low=0.0, high=1.0)
    eps = _check_eps(eps)
    weights = class_average_weights(prepared, include_background, class_weights)
    log_probs, log_complement = _log_probs_and_complement(prepared)
    target = prepared.target
    bce = -(beta * target * log_probs + (1.0 - beta) * (1.0 - target) * log_complement)
    bce_map = prepared.mask((bce * _per_class(weights, bce)).sum(dim=1))
    if per_pixel:
        errors, denominator = dice_error_maps(prepared, squared=False)
        dice_map = ratio_per_pixel(errors, denominator, weights, prepared, batch=False, eps=eps)
        return alpha * bce_map + (1.0 - alpha) * dice_map
    excess, denominator = dice_error_sums(prepared, squared=False)
    dice = ratio_per_image(excess, denominator, weights, batch=False, eps=eps)
    return alpha * prepared.image_mean(bce_map) + (1.0 - alpha) * dice


def combo_loss(
    logits: Tensor,
    target: Tensor,
    *,
    alpha: float = 0.5,
    beta: float = 0.5,
    dice_form: str = "one_minus",
    mode: str | None = None,
    include_background: bool = True,
    class_weights: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = None,
    eps: float = 1e-5,
    reduction: str = "mean",
) -> Tensor:
    r"""Combo loss: a modified (beta-weighted) binary cross-entropy plus the soft Dice, per image.

    .. math::
        L_i = \alpha\,\frac1{P_i}\sum_n\sum_c a_c\big[-\beta\,t_{nc}\log p_{nc}
              -(1-\beta)(1-t_{nc})\log(1-p_{nc})\big] + (1-\alpha)\Big(1-\sum_c a_c\,\mathrm{DSC}_c\Big),
        \qquad \mathrm{DSC}_c = \frac{2\,TP_c+\varepsilon}{\sum_n p_{nc}+\sum_n t_{nc}+\varepsilon}

    with the binary cross-entropy taken per channel on the probabilities (softmax or sigmoid) and
    averaged with the class-average weights :math:`a_c` (uniform: the channel mean). ``beta > 0.5``
    penalises false negatives more. ``dice_form="negative"`` gives Taghanaki's original
    :math:`-(1-\alpha)\,\mathrm{DSC}`, which differs by the constant :math:`1-\alpha` (same gradient)
    but is negative; the default :math:`(1-\mathrm{DSC})` form is the one the envelope, and any
    wrapper that uses values, needs (SPEC C). In multiclass mode :math:`\log(1-p)` is clipped at
    :math:`\log 10^{-7}` as in the reference code.

    Reference: Taghanaki et al., "Combo loss", CMIG 2019; survey eq. 32 (which writes the Dice loss).

    Args:
        logits: (B, C, *S) scores.
        target: labels (B, *S) / (B, 1, *S) or a dense (B, C, *S) target.
        alpha: weight of the cross-entropy term, in [0, 1].
        beta: weight of the positive part of the cross-entropy, in [0, 1].
        dice_form: "one_minus" (default, non-negative) or "negative".
        mode: "multiclass", "binary" or "multilabel"; inferred from C when None.
        include_background: count channel 0 in the class averages (both terms).
        class_weights: (C,) weights of the class averages of both terms, normalised to sum to one.
        ignore_index: label whose pixels are ignored.
        eps: Dice smoothing (> 0).
        reduction: "mean" or "sum" over images, or "none" for (B,).

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> round(combo_loss(logits, labels).item(), 4)
        0.5359
        >>> torch.allclose(combo_loss(logits, labels, dice_form="negative"), combo_loss(logits, labels) - 0.5)
        True
    """
    check_one_of("dice_form", dice_form, ("one_minus", "negative"))
    prepared = prepare(logits, target, mode=mode, ignore_index=ignore_index)
    per_image = _combo_terms(prepared, alpha, beta, include_background, class_weights, eps, per_pixel=False)
    if dice_form == "negative":
        per_image = per_image - (1.0 - alpha)
    return reduce_images(per_image, reduction)


def combo_loss_per_pixel(
    logits: Tensor,
    target: Tensor,
    *,
    alpha: float = 0.5,
    beta: float = 0.5,
    mode: str | None = None,
    include_background: bool = True,
    class_weights: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Exact per-pixel decomposition of :func:`combo_loss` in its ``"one_minus"`` form, (B, *S):
    the pixel's weighted cross-entropy plus its linear Dice term (SPEC A.2).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> per_pixel = combo_loss_per_pixel(logits, labels)
        >>> per_pixel.shape
        torch.Size([2, 8, 8])
        >>> torch.allclose(per_pixel.mean(dim=(1, 2)), combo_loss(logits, labels, reduction="none"))
        True
    """
    prepared = prepare(logits, target, mode=mode, ignore_index=ignore_index)
    return _combo_terms(prepared, alpha, beta, include_background, class_weights, eps, per_pixel=True)


@register_loss("combo")
class ComboLoss(Loss):
    """Module form of :func:`combo_loss`.

    ``has_per_pixel`` is False on an instance built with ``dice_form="negative"``: that form's value
    is negative, which the envelope's ranking and mean cannot use (SPEC C).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> loss = ComboLoss(alpha=0.5, beta=0.7)
        >>> loss(logits, labels).shape, loss.per_pixel(logits, labels).shape
        (torch.Size([]), torch.Size([2, 8, 8]))
        >>> torch.allclose(loss(logits, labels), combo_loss(logits, labels, alpha=0.5, beta=0.7))
        True
        >>> ComboLoss(dice_form="negative").has_per_pixel
        False
    """

    has_per_pixel = True
    function = staticmethod(combo_loss)

    def __init__(
        self,
        *,
        alpha: float = 0.5,
        beta: float = 0.5,
        dice_form: str = "one_minus",
        mode: str | None = None,
        include_background: bool = True,
        class_weights: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        eps: float = 1e-5,
        reduction: str = "mean",
    ) -> None:
        check_number("alpha", alpha, low=0.0, high=1.0)
        check_number("beta", beta, low=0.0, high=1.0)
        check_one_of("dice_form", dice_form, ("one_minus", "negative"))
        _check_mode_option(mode, self.modes)
        check_type("include_background", include_background, bool)
        _check_eps(eps)
        super().__init__(reduction, alpha=alpha, beta=beta, dice_form=dice_form, mode=mode,
                         include_background=include_background, class_weights=class_weights,
                         ignore_index=ignore_index, eps=eps)
        self.has_per_pixel = dice_form == "one_minus"

    def per_pixel(self, logits: Tensor, target: Tensor) -> Tensor:
        if not self.has_per_pixel:
            raise TypeError("`ComboLoss` with dice_form='negative' has no per-pixel form (its value is negative); "
                            "use dice_form='one_minus', which differs by a constant.")
        self.check_mode(logits)
        options = {k: v for k, v in self.options.items() if k != "dice_form"}
        return combo_loss_per_pixel(logits, target, **options)


# --------------------------------------------------------------------------- exponential logarithmic


def _label_weights(prepared: Prepared, class_weights, frequency_weighting: bool) -> Tensor:
    """omega per image and class, (B, C) or (1, C): Wong's (sum_k f_k / f_l)^0.5 from the image's label
    counts (0 for an absent label, which no pixel uses), times ``class_weights``."""
    check_type("frequency_weighting", frequency_weighting, bool)
    weights = check_class_weights("class_weights", class_weights, prepared.num_classes, prepared.logits)
    omega = prepared.logits.new_ones(1, prepared.num_classes) if weights is None else weights.unsqueeze(0)
    if frequency_weighting:
        counts = _spatial_sum(prepared.target)
        total = counts.sum(dim=1, keepdim=True)
        omega = omega * torch.where(counts > 0, (total / counts.clamp_min(_FLOOR)).sqrt(), 0.0)
    return omega


def exp_log_loss(
    logits: Tensor,
    target: Tensor,
    *,
    dice_weight: float = 0.8,
    ce_weight: float = 0.2,
    dice_gamma: float = 0.3,
    ce_gamma: float = 0.3,
    frequency_weighting: bool = True,
    mode: str | None = None,
    include_background: bool = True,
    class_weights: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = None,
    eps: float = 1e-5,
    reduction: str = "mean",
) -> Tensor:
    r"""Exponential logarithmic loss (Wong et al.): powered logs of the Dice and of the true-class probability.

    .. math::
        L_i = w_{D}\,\sum_c a_c\big(-\ln \mathrm{DSC}_c\big)^{\gamma_D}
              + w_{C}\,\frac1{P_i}\sum_n \omega_{y_n}\big(-\ln p_{n,y_n}\big)^{\gamma_C},
        \qquad \omega_l = \Big(\frac{\sum_k f_k}{f_l}\Big)^{0.5}

    with the linear soft Dice :math:`\mathrm{DSC}_c=(2TP_c+\varepsilon)/(\sum_n p_{nc}+\sum_n t_{nc}+\varepsilon)`
    per image, uniform class-average weights :math:`a_c` (channel 0 dropped when
    ``include_background`` is False) and :math:`f_k` the number of pixels of label :math:`k` in the
    image (``frequency_weighting``; Wong counts them over the training set). ``class_weights``
    multiply :math:`\omega`. Powers go through a chord below :math:`10^{-7}` (module docstring),
    so gradients stay finite and a perfect prediction scores about 0.

    Reference: Wong et al., "3D segmentation with exponential logarithmic loss", MICCAI 2018; survey
    eqs. 33-35 (which take the log of the losses instead of DSC and p).

    Args:
        logits: (B, C, *S) scores, C >= 2 (multiclass mode only).
        target: labels (B, *S) / (B, 1, *S) or a dense (B, C, *S) target.
        dice_weight, ce_weight: non-negative weights of the two terms.
        dice_gamma, ce_gamma: exponents, > 0.
        frequency_weighting: use Wong's label-frequency weights omega (else 1).
        mode: "multiclass" (or None).
        include_background: count class 0 in the Dice average.
        class_weights: (C,) factors of omega in the cross-entropy term.
        ignore_index: label whose pixels are ignored.
        eps: Dice smoothing (> 0).
        reduction: "mean" or "sum" over images, or "none" for (B,).

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> round(exp_log_loss(logits, labels).item(), 4)
        1.1934
    """
    prepared = _require_mode(prepare(logits, target, mode=mode, ignore_index=ignore_index), ("multiclass",), "exp_log")
    dice_weight, ce_weight = _check_lambda("dice_weight", dice_weight), _check_lambda("ce_weight", ce_weight)
    dice_gamma = check_number("dice_gamma", dice_gamma, low=0.0, low_inclusive=False)
    ce_gamma = check_number("ce_gamma", ce_gamma, low=0.0, low_inclusive=False)
    eps = _check_eps(eps)
    probs, target = prepared.mask(prepared.probs()), prepared.target
    dice = (2.0 * _spatial_sum(probs * target) + eps) / (_spatial_sum(probs) + _spatial_sum(target) + eps)
    dice_term = (class_average_weights(prepared, include_background) * _power(-dice.log(), dice_gamma)).sum(dim=1)
    omega = _label_weights(prepared, class_weights, frequency_weighting)
    log_probs = prepared.logits.log_softmax(dim=1)
    ce_map = (target * _per_class(omega, target) * _power(-log_probs, ce_gamma)).sum(dim=1)
    return reduce_images(dice_weight * dice_term + ce_weight * prepared.image_mean(ce_map), reduction)


@register_loss("exp_log")
class ExpLogLoss(Loss):
    """Module form of :func:`exp_log_loss`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> loss = ExpLogLoss(dice_weight=0.8, ce_weight=0.2)
        >>> loss(logits, labels).shape, loss.per_image(logits, labels).shape, loss.has_per_pixel
        (torch.Size([]), torch.Size([2]), False)
        >>> torch.allclose(loss(logits, labels), exp_log_loss(logits, labels))
        True
    """

    modes = ("multiclass",)
    function = staticmethod(exp_log_loss)

    def __init__(
        self,
        *,
        dice_weight: float = 0.8,
        ce_weight: float = 0.2,
        dice_gamma: float = 0.3,
        ce_gamma: float = 0.3,
        frequency_weighting: bool = True,
        mode: str | None = None,
        include_background: bool = True,
        class_weights: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        eps: float = 1e-5,
        reduction: str = "mean",
    ) -> None:
        _check_lambda("dice_weight", dice_weight)
        _check_lambda("ce_weight", ce_weight)
        check_number("dice_gamma", dice_gamma, low=0.0, low_inclusive=False)
        check_number("ce_gamma", ce_gamma, low=0.0, low_inclusive=False)
        check_type("frequency_weighting", frequency_weighting, bool)
        _check_mode_option(mode, self.modes)
        check_type("include_background", include_background, bool)
        _check_eps(eps)
        super().__init__(reduction, dice_weight=dice_weight, ce_weight=ce_weight, dice_gamma=dice_gamma,
                         ce_gamma=ce_gamma, frequency_weighting=frequency_weighting, mode=mode,
                         include_background=include_background, class_weights=class_weights,
                         ignore_index=ignore_index, eps=eps)


# --------------------------------------------------------------------------- Unified Focal


def _check_background_classes(background_classes: Collection[int]) -> tuple[int, ...]:
    check_type("background_classes", background_classes, (list, tuple, set, frozenset))
    for index in background_classes:
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            fail("background_classes", "a collection of non-negative class indices", repr(background_classes))
    return tuple(sorted(set(background_classes)))


def _rare_classes(prepared: Prepared, background_classes: Collection[int]) -> Tensor:
    """(C,) float mask: 1 for the rare classes, 0 for the background classes."""
    background = _check_background_classes(background_classes)
    num_classes = prepared.num_classes
    if background and background[-1] >= num_classes:
        fail("background_classes", f"class indices below {num_classes} (binary mode counts two classes)",
             list(background))
    index = torch.arange(num_classes, device=prepared.logits.device)
    is_background = torch.zeros_like(index, dtype=torch.bool)
    for class_index in background:
        is_background |= index == class_index
    return (~is_background).to(prepared.logits.dtype)


def unified_focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    asymmetric: bool = True,
    focal_weight: float = 0.5,
    delta: float = 0.6,
    gamma: float = 0.5,
    background_classes: Collection[int] = (0,),
    mode: str | None = None,
    ignore_index: int | None = None,
    eps: float = 1e-7,
    reduction: str = "mean",
) -> Tensor:
    r"""Unified Focal loss (Yeung et al.): a modified focal loss plus a modified focal Tversky loss.

    .. math::
        L_i = \lambda\,L_{mF} + (1-\lambda)\,L_{mFT},\qquad
        \mathrm{mTI}_c = \frac{TP_c+\varepsilon}{TP_c+\delta FN_c+(1-\delta)FP_c+\varepsilon}

    .. math::
        L_{mF} = \frac1{P_i}\sum_n\sum_c \omega_c\,m_{nc}\,t_{nc}(-\log p_{nc}),\qquad
        L_{mFT} = \frac1C\sum_c (1-\mathrm{mTI}_c)^{e_c}

    with :math:`\omega_c=\delta` for rare classes and :math:`1-\delta` for background classes. The
    symmetric form has :math:`m_{nc}=(1-p_{nc})^\gamma` and :math:`e_c=1-\gamma` for every class; the
    asymmetric form (the default, the paper's recommended variant) drops the focal factor of the rare
    classes (:math:`m=1`) and the Tversky enhancement of the background (:math:`e=1`). :math:`\delta`
    weights false negatives. With :math:`\gamma=0, \delta=0.5`, :math:`L_{mFT}` is the linear Dice
    loss (smoothing :math:`2\varepsilon`) and :math:`L_{mF}` is half the cross-entropy;
    :math:`\lambda=0` keeps the focal Tversky part, :math:`\lambda=1` the focal part.

    Numerics (SPEC C): :math:`\log p` comes from log-softmax, unclipped; the focal factor uses
    :math:`1-p\ge10^{-7}` as the reference's clip; :math:`1-\mathrm{mTI}`, computed as the ratio
    :math:`(\delta FN+(1-\delta)FP)/(TP+\delta FN+(1-\delta)FP+\varepsilon)` to avoid cancellation,
    goes through the chord below :math:`10^{-7}` (module docstring). Unlike the reference, :math:`p` is
    not clipped in the Tversky counts: :math:`\varepsilon` already guards the division, and the clip
    would put a mass of :math:`10^{-7}` per pixel on absent classes (a perfectly predicted absent class
    would then score about 1). An absent class with predicted mass is penalised (:math:`\mathrm{mTI}\to0`).

    Reference: Yeung et al., "Unified Focal loss", CMIG 2022; code ``mlyg/unified-focal-loss``
    (strictly binary there; generalised here through ``background_classes``).

    Args:
        logits: (B, C, *S) softmax scores, or (B, 1, *S) in binary mode (background 1 - p, class 1).
        target: labels (B, *S) / (B, 1, *S) or a dense (B, C, *S) target.
        asymmetric: the asymmetric (True) or symmetric (False) variant.
        focal_weight: lambda, weight of the focal part, in [0, 1].
        delta: weight of rare classes in the focal part and of false negatives in mTI, in [0, 1].
        gamma: focal parameter in [0, 1): suppression of the background in the focal part and
            enhancement of rare classes in the Tversky part (0 switches both off).
        background_classes: indices of the background classes; every other class is rare.
        mode: "multiclass" or "binary"; inferred from C when None.
        ignore_index: label whose pixels are ignored.
        eps: smoothing of mTI (> 0; 1e-7 as the reference).
        reduction: "mean" or "sum" over images, or "none" for (B,).

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> round(unified_focal_loss(logits, labels).item(), 4)
        0.7584
        >>> from seglosses import cross_entropy, dice_loss, focal_loss
        >>> half_ce_and_dice = 0.5 * (0.5 * cross_entropy(logits, labels)) + 0.5 * dice_loss(
        ...     logits, labels, squared=False, eps=2e-7)
        >>> torch.allclose(unified_focal_loss(logits, labels, gamma=0.0, delta=0.5), half_ce_and_dice)
        True
    """
    check_type("asymmetric", asymmetric, bool)
    focal_weight = check_number("focal_weight", focal_weight, low=0.0, high=1.0)
    delta = check_number("delta", delta, low=0.0, high=1.0)
    gamma = check_number("gamma", gamma, low=0.0, high=1.0, high_inclusive=False)
    eps = _check_eps(eps)
    prepared = _require_mode(prepare(logits, target, mode=mode, ignore_index=ignore_index), SOFTMAX_MODES,
                             "unified_focal")
    prepared = _as_two_class(prepared)
    rare = _rare_classes(prepared, background_classes)
    log_probs = prepared.logits.log_softmax(dim=1)
    probs, target = log_probs.exp(), prepared.target

    modulation = (1.0 - probs).clamp_min(_FLOOR) ** gamma
    if asymmetric:  # rare classes keep their full cross-entropy
        modulation = modulation + _per_class(rare, probs) * (1.0 - modulation)
    class_weight = _per_class(rare * delta + (1.0 - rare) * (1.0 - delta), probs)
    focal = prepared.image_mean(-(class_weight * modulation * target * log_probs).sum(dim=1))

    counted = prepared.mask(probs)
    true_positive = _spatial_sum(counted * target)
    false_negative = _spatial_sum((1.0 - counted) * target)
    false_positive = _spatial_sum(counted * (1.0 - target))
    errors = delta * false_negative + (1.0 - delta) * false_positive
    complement = errors / (true_positive + errors + eps)  # 1 - mTI without cancellation near a perfect score
    exponent = 1.0 - gamma * (rare if asymmetric else torch.ones_like(rare))  # background: no enhancement
    focal_tversky = _power(complement, exponent).mean(dim=1)
    return reduce_images(focal_weight * focal + (1.0 - focal_weight) * focal_tversky, reduction)


@register_loss("unified_focal")
class UnifiedFocalLoss(Loss):
    """Module form of :func:`unified_focal_loss`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> loss = UnifiedFocalLoss(asymmetric=True, delta=0.6, gamma=0.5)
        >>> loss(logits, labels).shape, loss.per_image(logits, labels).shape, loss.has_per_pixel
        (torch.Size([]), torch.Size([2]), False)
        >>> torch.allclose(loss(logits, labels), unified_focal_loss(logits, labels))
        True
    """

    modes = SOFTMAX_MODES
    function = staticmethod(unified_focal_loss)

    def __init__(
        self,
        *,
        asymmetric: bool = True,
        focal_weight: float = 0.5,
        delta: float = 0.6,
        gamma: float = 0.5,
        background_classes: Collection[int] = (0,),
        mode: str | None = None,
        ignore_index: int | None = None,
        eps: float = 1e-7,
        reduction: str = "mean",
    ) -> None:
        check_type("asymmetric", asymmetric, bool)
        check_number("focal_weight", focal_weight, low=0.0, high=1.0)
        check_number("delta", delta, low=0.0, high=1.0)
        check_number("gamma", gamma, low=0.0, high=1.0, high_inclusive=False)
        _check_background_classes(background_classes)
        _check_mode_option(mode, self.modes)
        _check_eps(eps)
        super().__init__(reduction, asymmetric=asymmetric, focal_weight=focal_weight, delta=delta, gamma=gamma,
                         background_classes=background_classes, mode=mode, ignore_index=ignore_index, eps=eps)


# --------------------------------------------------------------------------- Hybrid Focal


def hybrid_focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    focal_weight: float = 0.5,
    focal_gamma: float = 2.0,
    focal_alpha: float | Sequence[float] | Tensor | None = None,
    fp_weight: float = 0.3,
    fn_weight: float = 0.7,
    tversky_gamma: float = 4 / 3,
    mode: str | None = None,
    include_background: bool = True,
    class_weights: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = None,
    eps: float = 1e-5,
    reduction: str = "mean",
) -> Tensor:
    r"""Hybrid Focal loss (Yeung et al.): focal loss plus focal Tversky loss.

    .. math::
        L_i = \lambda\,L_F(\gamma_F, \alpha) + (1-\lambda)\,\frac1C\sum_c (1-TI_c)^{1/\gamma_{FT}},\qquad
        TI_c = \frac{TP_c+\varepsilon}{TP_c+\beta_{FP}FP_c+\beta_{FN}FN_c+\varepsilon}

    that is :func:`~seglosses.pixel.focal_loss` and :func:`~seglosses.region.focal_tversky_loss` with
    their own defaults (Lin's :math:`\gamma_F=2`, no :math:`\alpha`; Abraham's 0.3 on FP, 0.7 on FN and
    :math:`\gamma_{FT}=4/3`). Six hyperparameters, which the Unified Focal loss reduces to three.

    Reference: Yeung et al., "Focus U-Net", Comput. Biol. Med. 2021; "Unified Focal loss", CMIG 2022 (eq. 15).

    Args:
        logits: (B, C, *S) scores.
        target: labels (B, *S) / (B, 1, *S) or a dense (B, C, *S) target.
        focal_weight: lambda, weight of the focal loss, in [0, 1].
        focal_gamma, focal_alpha: ``gamma`` and ``alpha`` of the focal loss.
        fp_weight, fn_weight, tversky_gamma: ``fp_weight``, ``fn_weight`` and ``gamma`` of the focal Tversky loss.
        mode: "multiclass", "binary" or "multilabel"; inferred from C when None.
        include_background, class_weights, eps: class average and smoothing of the focal Tversky loss.
        ignore_index: label whose pixels are ignored by both terms.
        reduction: "mean" or "sum" over images, or "none" for (B,).

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> loss = hybrid_focal_loss(logits, labels)
        >>> torch.allclose(loss, 0.5 * focal_loss(logits, labels) + 0.5 * focal_tversky_loss(logits, labels))
        True
    """
    focal_weight = check_number("focal_weight", focal_weight, low=0.0, high=1.0)
    focal = focal_loss(logits, target, gamma=focal_gamma, alpha=focal_alpha, mode=mode, ignore_index=ignore_index,
                       reduction="none")
    focal_tversky = focal_tversky_loss(logits, target, fp_weight=fp_weight, fn_weight=fn_weight, gamma=tversky_gamma,
                                       mode=mode, include_background=include_background, class_weights=class_weights,
                                       ignore_index=ignore_index, eps=eps, reduction="none")
    return reduce_images(focal_weight * focal + (1.0 - focal_weight) * focal_tversky, reduction)


@register_loss("hybrid_focal")
class HybridFocalLoss(_NamedSum):
    """Module form of :func:`hybrid_focal_loss`: a :class:`Weighted` sum of ``FocalLoss`` and ``FocalTverskyLoss``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> loss = HybridFocalLoss(focal_weight=0.5)
        >>> loss(logits, labels).shape, loss.per_image(logits, labels).shape, loss.has_per_pixel
        (torch.Size([]), torch.Size([2]), False)
        >>> torch.allclose(loss(logits, labels), hybrid_focal_loss(logits, labels))
        True
    """

    modes = tuple(mode for mode in FocalLoss.modes if mode in FocalTverskyLoss.modes)
    has_per_pixel = False  # the focal Tversky power has no per-pixel form

    def __init__(
        self,
        *,
        focal_weight: float = 0.5,
        focal_gamma: float = 2.0,
        focal_alpha: float | Sequence[float] | Tensor | None = None,
        fp_weight: float = 0.3,
        fn_weight: float = 0.7,
        tversky_gamma: float = 4 / 3,
        mode: str | None = None,
        include_background: bool = True,
        class_weights: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        eps: float = 1e-5,
        reduction: str = "mean",
    ) -> None:
        check_number("focal_weight", focal_weight, low=0.0, high=1.0)
        check_number("focal_gamma", focal_gamma, low=0.0)
        check_number("tversky_gamma", tversky_gamma, low=0.0, low_inclusive=False)
        check_shared_options(type(self).__name__, type(self).modes, {"mode": mode, "focal_alpha": focal_alpha})
        focal = FocalLoss(gamma=focal_gamma, alpha=focal_alpha, mode=mode, ignore_index=ignore_index)
        focal_tversky = FocalTverskyLoss(fp_weight=fp_weight, fn_weight=fn_weight, gamma=tversky_gamma, mode=mode,
                                         include_background=include_background, class_weights=class_weights,
                                         ignore_index=ignore_index, eps=eps)
        super().__init__(
            [(focal_weight, focal), (1.0 - focal_weight, focal_tversky)],
            reduction,
            focal_weight=focal_weight,
            focal_gamma=focal_gamma,
            focal_alpha=focal_alpha,
            fp_weight=fp_weight,
            fn_weight=fn_weight,
            tversky_gamma=tversky_gamma,
            mode=mode,
            include_background=include_background,
            class_weights=class_weights,
            ignore_index=ignore_index,
            eps=eps,
        )


# --------------------------------------------------------------------------- TopK Dice


@functools.lru_cache(maxsize=32)
def _tie_breaking_noise(spatial: tuple[int, ...], seed: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The fixed U(0, 1e-6) map of one spatial size, flattened (SPEC B): drawn once per size and seed on
    the CPU (the same numbers on every device), shared by all classes and images."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(spatial, generator=generator, dtype=torch.float64) * 1e-6
    return noise.flatten().to(device=device, dtype=dtype)


# torch.compile cannot trace the torch.Generator that draws the map, so inside a compiled graph the
# map comes from this opaque operator: the graph stays whole and the numbers stay those of eager mode.
@torch.library.custom_op("seglosses::topk_dice_tie_breaking_noise", mutates_args=())
def _tie_breaking_noise_op(spatial: list[int], seed: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    return _tie_breaking_noise(tuple(spatial), seed, device, dtype).clone()  # an operator returns fresh memory


@_tie_breaking_noise_op.register_fake
def _(spatial: list[int], seed: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    numel = 1
    for size in spatial:
        numel *= size
    return torch.empty(numel, device=device, dtype=dtype)


def _excluded_pixels(scores: Tensor, excluded_count: Tensor, exclusion: str) -> Tensor:
    """(B, C, P) mask of the well-classified pixels to exclude, from one sort of the (detached) scores."""
    ordered, order = scores.sort(dim=2, descending=True, stable=True)
    if exclusion == "exact":  # the excluded_count largest scores
        in_excluded_ranks = torch.arange(scores.shape[2], device=scores.device) < excluded_count.unsqueeze(2)
        return torch.zeros_like(in_excluded_ranks).scatter_(2, order, in_excluded_ranks)
    # "literal" (eq. 4): scores above the excluded_count-th largest one; nothing when the count is 0
    threshold = ordered.gather(2, (excluded_count.long() - 1).clamp_min(0).unsqueeze(2))
    return (scores > threshold) & (excluded_count.unsqueeze(2) > 0)


def topk_dice_loss(
    logits: Tensor,
    target: Tensor,
    *,
    k_percent: float = 50.0,
    exclusion: str = "exact",
    noise_seed: int = 0,
    mode: str | None = None,
    include_background: bool = True,
    ignore_index: int | None = None,
    eps: float = 1e-5,
    reduction: str = "mean",
) -> Tensor:
    r"""TopK Dice loss (Hosseini): squared Dice over the hardest K% of each class's foreground pixels.

    .. math::
        L_i = \frac1{|\mathcal C_i|}\sum_{c\in\mathcal C_i}\Big(1-\frac{2\sum_n Yk_{nc}Pk_{nc}+\varepsilon}
              {\sum_n Yk_{nc}^2+\sum_n Pk_{nc}^2+\varepsilon}\Big)

    where :math:`\mathcal C_i` holds the classes present in image :math:`i`, and :math:`Yk, Pk` are
    the target and probabilities with the excluded pixels of class :math:`c` set to 0: the
    :math:`D_c=\lfloor(1-K/100)\sum_n Y_{nc}\rfloor` foreground pixels with the largest
    :math:`Y_{nc}(P_{nc}+\epsilon_n)` (``exclusion="exact"``), or those above the :math:`D_c`-th
    largest value (``"literal"``, eq. 4, which excludes :math:`D_c-1` of them when there are no
    ties). :math:`\epsilon` is a fixed :math:`U(0,10^{-6})` map per spatial size (seed
    ``noise_seed``) that only breaks ties; the exclusion mask carries no gradient. An image with no
    present class scores 0; absent classes drop out, so false positives on them are penalised
    only by a companion CE (SPEC B). K = 100 gives the squared Dice over the present classes.

    Reference: Hosseini, "TopK Dice loss for medical image segmentation" (eqs. 1-7).

    Args:
        logits: (B, C, *S) softmax scores, or (B, 1, *S) in binary mode (background 1 - p, class 1).
        target: labels (B, *S) / (B, 1, *S) or a dense (B, C, *S) target.
        k_percent: K, the percentage of each class's foreground pixels kept, in (0, 100].
        exclusion: "exact" (exclude exactly D_c pixels) or "literal" (eq. 4 as printed).
        noise_seed: seed of the tie-breaking map.
        mode: "multiclass" or "binary"; inferred from C when None.
        include_background: count class 0 when it is present.
        ignore_index: label whose pixels are ignored (never counted, never excluded).
        eps: smoothing of numerator and denominator (> 0).
        reduction: "mean" or "sum" over images, or "none" for (B,).

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> round(topk_dice_loss(logits, labels).item(), 4)
        0.7986
        >>> from seglosses import cross_entropy, dice_loss, focal_loss
        >>> torch.allclose(topk_dice_loss(logits, labels, k_percent=100), dice_loss(logits, labels))
        True
    """
    k_percent = check_number("k_percent", k_percent, low=0.0, high=100.0, low_inclusive=False)
    check_one_of("exclusion", exclusion, ("exact", "literal"))
    check_type("noise_seed", noise_seed, int)
    check_type("include_background", include_background, bool)
    eps = _check_eps(eps)
    prepared = _require_mode(prepare(logits, target, mode=mode, ignore_index=ignore_index), SOFTMAX_MODES,
                             "topk_dice")
    prepared = _as_two_class(prepared)
    batch, num_classes = prepared.logits.shape[:2]
    probs = prepared.mask(prepared.probs()).reshape(batch, num_classes, -1)
    target = prepared.target.reshape(batch, num_classes, -1)
    spatial = tuple(prepared.logits.shape[2:])
    if torch.compiler.is_compiling():
        noise = _tie_breaking_noise_op(list(spatial), noise_seed, probs.device, probs.dtype)
    else:
        noise = _tie_breaking_noise(spatial, noise_seed, probs.device, probs.dtype)

    foreground = target.sum(dim=2)
    excluded_count = torch.floor(foreground * (100.0 - k_percent) / 100.0)  # exact for integer counts
    excluded = _excluded_pixels(target * (probs.detach() + noise), excluded_count, exclusion)
    kept = (~excluded).to(probs.dtype)
    kept_target, kept_probs = target * kept, probs * kept
    overlap = 2.0 * (kept_target * kept_probs).sum(dim=2) + eps
    dice = overlap / ((kept_target * kept_target).sum(dim=2) + (kept_probs * kept_probs).sum(dim=2) + eps)

    present = (foreground > 0).to(probs.dtype)
    if not include_background:
        present = present * (torch.arange(num_classes, device=present.device) > 0)
    per_image = (present * (1.0 - dice)).sum(dim=1) / present.sum(dim=1).clamp_min(1.0)
    return reduce_images(per_image, reduction)


@register_loss("topk_dice")
class TopKDiceLoss(Loss):
    """Module form of :func:`topk_dice_loss` (the tie-breaking maps are cached per spatial size).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> loss = TopKDiceLoss(k_percent=50.0)
        >>> loss(logits, labels).shape, loss.per_image(logits, labels).shape, loss.has_per_pixel
        (torch.Size([]), torch.Size([2]), False)
        >>> torch.allclose(loss(logits, labels), topk_dice_loss(logits, labels, k_percent=50.0))
        True
    """

    modes = SOFTMAX_MODES
    function = staticmethod(topk_dice_loss)

    def __init__(
        self,
        *,
        k_percent: float = 50.0,
        exclusion: str = "exact",
        noise_seed: int = 0,
        mode: str | None = None,
        include_background: bool = True,
        ignore_index: int | None = None,
        eps: float = 1e-5,
        reduction: str = "mean",
    ) -> None:
        check_number("k_percent", k_percent, low=0.0, high=100.0, low_inclusive=False)
        check_one_of("exclusion", exclusion, ("exact", "literal"))
        check_type("noise_seed", noise_seed, int)
        _check_mode_option(mode, self.modes)
        check_type("include_background", include_background, bool)
        _check_eps(eps)
        super().__init__(reduction, k_percent=k_percent, exclusion=exclusion, noise_seed=noise_seed, mode=mode,
                         include_background=include_background, ignore_index=ignore_index, eps=eps)


# --------------------------------------------------------------------------- CE + per-pixel Dice (SPEC A.2)

DICE_DECOMPOSITIONS: tuple[str, ...] = ("error", "error_linear", "overlap", "paper_literal")


def _dice_decomposition(prepared: Prepared, decomposition: str, eps: float) -> Tensor:
    """(B, *S) per-pixel Dice terms d_ij over all C classes, per image (SPEC A.2); 0 at ignored pixels."""
    num_classes = prepared.num_classes
    if decomposition in ("error", "error_linear"):
        uniform = prepared.logits.new_full((num_classes,), 1.0 / num_classes)
        errors, denominator = dice_error_maps(prepared, squared=decomposition == "error")
        return ratio_per_pixel(errors, denominator, uniform, prepared, batch=False, eps=eps)
    probs, target = prepared.mask(prepared.probs()), prepared.target
    denominator = _per_class(_spatial_sum(probs * probs) + _spatial_sum(target * target) + eps, probs)
    if decomposition == "overlap":
        count = prepared.valid_count().view(-1, *([1] * (probs.ndim - 1)))
        return prepared.mask(1.0 - ((2.0 * count * probs * target + eps) / denominator).mean(dim=1))
    return prepared.mask(1.0 - (probs * target / denominator).sum(dim=1))  # paper_literal: 1 - rho_{y_j, j}


def _ce_dice_parts(prepared: Prepared, lambda_ce, lambda_dc, dice_decomposition, class_weights, eps) -> dict:
    lambda_ce, lambda_dc = _check_lambda("lambda_ce", lambda_ce), _check_lambda("lambda_dc", lambda_dc)
    check_one_of("dice_decomposition", dice_decomposition, DICE_DECOMPOSITIONS)
    eps = _check_eps(eps)
    weights = check_class_weights("class_weights", class_weights, prepared.num_classes, prepared.logits)
    ce, _ = pixel_cross_entropy(prepared, weights)  # w_y (-log p_y), not normalised by the weights
    return {
        "ce": prepared.mask(lambda_ce * ce),
        "dice": lambda_dc * _dice_decomposition(prepared, dice_decomposition, eps),
    }


def ce_dice_pixel_parts(
    logits: Tensor,
    target: Tensor,
    *,
    lambda_ce: float = 0.3,
    lambda_dc: float = 0.7,
    dice_decomposition: str = "error",
    mode: str | None = None,
    class_weights: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = None,
    eps: float = 1e-5,
) -> dict[str, Tensor]:
    """The two weighted per-pixel parts of :func:`ce_dice_pixel_loss`, ``{"ce": ..., "dice": ...}``:
    each (B, *S), 0 at ignored pixels; their sum is the per-pixel loss. The envelope ranks pixels by
    the ``"ce"`` part when asked to (``pixel_rank_key="ce"``, SPEC A.2).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> parts = ce_dice_pixel_parts(logits, labels, lambda_ce=0.3, lambda_dc=0.7)
        >>> sorted(parts), parts["ce"].shape
        (['ce', 'dice'], torch.Size([2, 8, 8]))
        >>> torch.allclose(parts["ce"] + parts["dice"], ce_dice_pixel_loss_per_pixel(logits, labels))
        True
    """
    prepared = prepare(logits, target, mode=mode, ignore_index=ignore_index)
    return _ce_dice_parts(prepared, lambda_ce, lambda_dc, dice_decomposition, class_weights, eps)


def ce_dice_pixel_loss_per_pixel(
    logits: Tensor,
    target: Tensor,
    *,
    lambda_ce: float = 0.3,
    lambda_dc: float = 0.7,
    dice_decomposition: str = "error",
    mode: str | None = None,
    class_weights: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Per-pixel loss of :func:`ce_dice_pixel_loss`, (B, *S): the sum of :func:`ce_dice_pixel_parts`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> per_pixel = ce_dice_pixel_loss_per_pixel(logits, labels)
        >>> per_pixel.shape
        torch.Size([2, 8, 8])
        >>> torch.allclose(per_pixel.mean(dim=(1, 2)), ce_dice_pixel_loss(logits, labels, reduction="none"))
        True
    """
    parts = ce_dice_pixel_parts(logits, target, lambda_ce=lambda_ce, lambda_dc=lambda_dc,
                                dice_decomposition=dice_decomposition, mode=mode, class_weights=class_weights,
                                ignore_index=ignore_index, eps=eps)
    return parts["ce"] + parts["dice"]


def ce_dice_pixel_loss(
    logits: Tensor,
    target: Tensor,
    *,
    lambda_ce: float = 0.3,
    lambda_dc: float = 0.7,
    dice_decomposition: str = "error",
    mode: str | None = None,
    class_weights: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = None,
    eps: float = 1e-5,
    reduction: str = "mean",
) -> Tensor:
    r"""Cross-entropy plus a per-pixel Dice term, the pixel loss of the Top-k / Bottom-all-but-sigma envelope.

    .. math::
        \ell_{ij} = \lambda_{CE}\,w_{y_{ij}}(-\log p_{y_{ij},j}) + \lambda_{DC}\,d_{ij},\qquad
        d_{ij} = \frac{P_i}{C}\sum_c\frac{(p_{cj}-t_{cj})^2}{D_c+\varepsilon},\quad
        D_c = \sum_k (p_{ck}^2 + t_{ck}^2)

    and :math:`L_i = \frac1{P_i}\sum_j \ell_{ij}` over the :math:`P_i` counted pixels. The Dice
    runs per image over all :math:`C` classes, background included. ``dice_decomposition`` picks
    :math:`d` (SPEC A.2):

    - ``"error"`` (default): the squared-error form above; its image mean is the squared Dice loss
      exactly, in value and gradient, and it is non-negative.
    - ``"error_linear"``: :math:`\frac{P_i}{C}\sum_c (p_{cj}+t_{cj}-2p_{cj}t_{cj})/(S_c+\varepsilon)`,
      :math:`S_c=\sum_k(p_{ck}+t_{ck})`; its mean is the linear Dice loss.
    - ``"overlap"``: :math:`1-\frac1C\sum_c (2P_i\,p_{cj}t_{cj}+\varepsilon)/(D_c+\varepsilon)`; same
      mean as ``"error"``, but it can be negative.
    - ``"paper_literal"``: :math:`1-\sum_c p_{cj}t_{cj}/(D_c+\varepsilon)` (eqs. 11-12 as printed,
      :math:`\varepsilon` added); about 1 on every pixel, with a gradient about :math:`1/(2P)` of the Dice's.

    The class weights :math:`w` weigh the cross-entropy only and are not normalised (a weighted
    sum, not PyTorch's weighted mean). In binary and multilabel modes the CE is the binary
    cross-entropy averaged over channels.

    Reference: Florea, Florea & Vertan, "Top-k / Bottom-all-but-sigma", Diagnostics 2025 (eqs. 10-12),
    resolved in SPEC A.2; Milletari et al., "V-Net" (squared Dice).

    Args:
        logits: (B, C, *S) scores.
        target: labels (B, *S) / (B, 1, *S) or a dense (B, C, *S) target.
        lambda_ce, lambda_dc: non-negative weights of the two parts.
        dice_decomposition: "error", "error_linear", "overlap" or "paper_literal".
        mode: "multiclass", "binary" or "multilabel"; inferred from C when None.
        class_weights: (C,) weights of the cross-entropy, not normalised.
        ignore_index: label whose pixels are ignored.
        eps: Dice smoothing (> 0).
        reduction: "mean" or "sum" over images, or "none" for (B,).

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> loss = ce_dice_pixel_loss(logits, labels)
        >>> from seglosses import cross_entropy, dice_loss, focal_loss
        >>> torch.allclose(loss, 0.3 * cross_entropy(logits, labels) + 0.7 * dice_loss(logits, labels))
        True
        >>> per_pixel = ce_dice_pixel_loss_per_pixel(logits, labels)
        >>> tuple(per_pixel.shape), torch.allclose(per_pixel.mean(), loss)
        ((2, 8, 8), True)
    """
    prepared = prepare(logits, target, mode=mode, ignore_index=ignore_index)
    parts = _ce_dice_parts(prepared, lambda_ce, lambda_dc, dice_decomposition, class_weights, eps)
    return reduce_images(prepared.image_mean(parts["ce"] + parts["dice"]), reduction)


@register_loss("ce_dice_pixel")
class CEDicePixelLoss(Loss):
    """Module form of :func:`ce_dice_pixel_loss`, with :meth:`per_pixel_parts` for the envelope.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> loss = CEDicePixelLoss(lambda_ce=0.3, lambda_dc=0.7)
        >>> loss(logits, labels).shape, loss.per_pixel(logits, labels).shape
        (torch.Size([]), torch.Size([2, 8, 8]))
        >>> parts = loss.per_pixel_parts(logits, labels)
        >>> torch.allclose(parts["ce"] + parts["dice"], loss.per_pixel(logits, labels))
        True
    """

    has_per_pixel = True
    function = staticmethod(ce_dice_pixel_loss)
    pixel_function = staticmethod(ce_dice_pixel_loss_per_pixel)

    def __init__(
        self,
        *,
        lambda_ce: float = 0.3,
        lambda_dc: float = 0.7,
        dice_decomposition: str = "error",
        mode: str | None = None,
        class_weights: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        eps: float = 1e-5,
        reduction: str = "mean",
    ) -> None:
        _check_lambda("lambda_ce", lambda_ce)
        _check_lambda("lambda_dc", lambda_dc)
        check_one_of("dice_decomposition", dice_decomposition, DICE_DECOMPOSITIONS)
        _check_mode_option(mode, self.modes)
        _check_eps(eps)
        super().__init__(reduction, lambda_ce=lambda_ce, lambda_dc=lambda_dc, dice_decomposition=dice_decomposition,
                         mode=mode, class_weights=class_weights, ignore_index=ignore_index, eps=eps)

    def per_pixel_parts(self, logits: Tensor, target: Tensor) -> dict[str, Tensor]:
        """``{"ce": ..., "dice": ...}``, the weighted parts of :meth:`per_pixel`, each (B, *S)."""
        self.check_mode(logits)
        return ce_dice_pixel_parts(logits, target, **self.options)
