r"""Overlap (region) losses, computed per image and class.

Soft counts per image :math:`i` and class :math:`c` are sums over the counted pixels:
:math:`TP=\sum p t`, :math:`FP=\sum p(1-t)`, :math:`FN=\sum (1-p) t`.

**Ratio losses and their exact per-pixel form.** Dice, IoU and Tversky losses of a class can be
written :math:`1-\frac{A+\varepsilon}{Q+\varepsilon}=\frac{\sum_j e_j}{Q+\varepsilon}` with a
non-negative per-pixel error :math:`e_j` (SPEC A.2): :math:`(p-t)^2` for the squared Dice,
:math:`p+t-2pt` for the linear Dice and IoU, :math:`\beta_{FP} p(1-t)+\beta_{FN}(1-p)t` for
Tversky. Hence the per-pixel loss
:math:`d_j=P_i\sum_c a_c e_{cj}/(Q_c+\varepsilon)` (class weights :math:`a_c` summing to one)
averages to the image loss *exactly*, in value and gradient.

**Empty classes.** A class absent from both prediction and target has ratio
:math:`\varepsilon/\varepsilon=1`, so no penalty; an empty target with false positives is
penalised (the ratio tends to 0).

**Batch mode** (``batch=True``) pools the counts over the batch, as nnU-Net's batch Dice does;
the (B,) per-image values are then each image's share of the batch loss (their mean is the batch
loss) and the per-pixel form stays exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from seglosses._checks import check_class_weights, check_number, check_type, fail
from seglosses.base import Loss, reduce_images
from seglosses.registry import register_loss
from seglosses.targets import Prepared, prepare

__all__ = [
    "DiceLoss",
    "class_average_weights",
    "dice_loss",
    "dice_loss_per_pixel",
    "ratio_per_image",
    "ratio_per_pixel",
]


def class_average_weights(
    prepared: Prepared, include_background: bool = True, class_weights: Sequence[float] | Tensor | None = None
) -> Tensor:
    """Weights (C,) that average per-class losses: ``class_weights`` (or ones), channel 0 dropped
    when ``include_background`` is False, normalised to sum to one."""
    check_type("include_background", include_background, bool)
    num_classes = prepared.num_classes
    weights = check_class_weights("class_weights", class_weights, num_classes, prepared.logits)
    if weights is None:
        weights = prepared.logits.new_ones(num_classes)
    if not include_background:
        if num_classes == 1:
            fail("include_background", "True when there is a single channel (nothing else to average)", False)
        weights = torch.cat([weights.new_zeros(1), weights[1:]])
    total = weights.sum()
    return weights / total.clamp_min(1e-12)


def _denominator(denominator: Tensor, batch: bool, eps: float) -> tuple[Tensor, float]:
    """Per-image (B, C) or pooled (1, C) denominators with eps, and the per-image share factor."""
    if batch:
        return denominator.sum(dim=0, keepdim=True) + eps, float(denominator.shape[0])
    return denominator + eps, 1.0


def ratio_per_image(errors: Tensor, denominator: Tensor, weights: Tensor, *, batch: bool, eps: float) -> Tensor:
    """(B,) losses :math:`\\sum_c a_c \\sum_j e_{cj} / (Q_c + \\varepsilon)` from (B, C, *S) errors
    and (B, C) per-image denominators :math:`Q` (pooled over the batch when ``batch``)."""
    denominator, share = _denominator(denominator, batch, eps)
    excess = errors.sum(dim=tuple(range(2, errors.ndim)))
    return share * (weights * excess / denominator).sum(dim=1)


def ratio_per_pixel(
    errors: Tensor, denominator: Tensor, weights: Tensor, prepared: Prepared, *, batch: bool, eps: float
) -> Tensor:
    """(B, *S) per-pixel terms whose mean over each image's counted pixels is :func:`ratio_per_image`."""
    denominator, share = _denominator(denominator, batch, eps)
    coefficients = share * weights / denominator
    spatial = [1] * (errors.ndim - 2)
    per_pixel = (errors * coefficients.view(*coefficients.shape, *spatial)).sum(dim=1)
    return per_pixel * prepared.valid_count().view(-1, *spatial)


def _sums(x: Tensor) -> Tensor:
    return x.sum(dim=tuple(range(2, x.ndim)))


# --------------------------------------------------------------------------- Dice


def _dice_parts(prepared: Prepared, squared: bool) -> tuple[Tensor, Tensor]:
    check_type("squared", squared, bool)
    probs = prepared.mask(prepared.probs())
    target = prepared.target
    if squared:
        return (probs - target) ** 2, _sums(probs * probs) + _sums(target * target)
    return probs + target - 2.0 * probs * target, _sums(probs) + _sums(target)


def _dice_setup(logits, target, mode, ignore_index, include_background, class_weights, squared, eps):
    prepared = prepare(logits, target, mode=mode, ignore_index=ignore_index)
    eps = check_number("eps", eps, low=0.0, low_inclusive=False)
    weights = class_average_weights(prepared, include_background, class_weights)
    errors, denominator = _dice_parts(prepared, squared)
    return prepared, eps, weights, errors, denominator


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
        >>> loss = dice_loss(logits, labels)
        >>> round(loss.item(), 4)
        0.5589
        >>> torch.allclose(dice_loss_per_pixel(logits, labels).mean(dim=(1, 2)),
        ...                dice_loss(logits, labels, reduction="none"))
        True
    """
    check_type("batch", batch, bool)
    _, eps, weights, errors, denominator = _dice_setup(
        logits, target, mode, ignore_index, include_background, class_weights, squared, eps
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
) -> Tensor:
    r"""Exact per-pixel decomposition of :func:`dice_loss`, (B, *S).

    .. math::
        d_{ij} = P_i \sum_c a_c\,\frac{e_{cj}}{Q_c+\varepsilon},\quad
        e = (p-t)^2 \text{ (squared)},\ p+t-2pt \text{ (linear)}

    Non-negative, zero on a perfectly predicted pixel; its mean over an image's counted pixels is
    the image's Dice loss (SPEC A.2).
    """
    check_type("batch", batch, bool)
    prepared, eps, weights, errors, denominator = _dice_setup(
        logits, target, mode, ignore_index, include_background, class_weights, squared, eps
    )
    return ratio_per_pixel(errors, denominator, weights, prepared, batch=batch, eps=eps)


@register_loss("dice")
class DiceLoss(Loss):
    """Module form of :func:`dice_loss`."""

    has_per_pixel = True

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

    def per_pixel(self, logits: Tensor, target: Tensor) -> Tensor:
        self.check_mode(logits)
        return dice_loss_per_pixel(logits, target, **self.options)

    def per_image(self, logits: Tensor, target: Tensor) -> Tensor:
        self.check_mode(logits)
        return dice_loss(logits, target, **self.options, reduction="none")
