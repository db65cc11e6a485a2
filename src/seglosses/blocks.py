r"""Building blocks that several loss families share: the per-pixel cross-entropy and focal maps,
soft counts, the Dice error parts, the class-averaging weights and the ratio form of region losses.

Every family (pixel, region, compound, boundary) imports these public functions instead of reaching
into another family's private helpers. They take a :class:`~seglosses.targets.Prepared` (validated
logits and dense target) and return tensors; options are validated where they are first read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from seglosses._checks import check_class_weights, check_number, check_type, fail
from seglosses.base import reduce_images
from seglosses.targets import Prepared, prepare

__all__ = [
    "SoftCounts",
    "channel_view",
    "class_average_weights",
    "cross_entropy_map",
    "dice_error_maps",
    "dice_error_sums",
    "focal_alpha",
    "focal_map",
    "pixel_cross_entropy",
    "prepare_class_average",
    "ratio_per_image",
    "ratio_per_pixel",
    "reduced_cross_entropy",
    "smoothed_sigmoid_target",
    "soft_counts",
    "spatial_sums",
    "weighted_mean_per_pixel",
]

# --------------------------------------------------------------------------- pixel maps


def pixel_cross_entropy(
    prepared: Prepared,
    class_weights: Tensor | None = None,
    *,
    label_smoothing: float = 0.0,
    pos_weight: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Unnormalised per-pixel cross-entropy and the per-pixel weights it carries.

    Multiclass: value :math:`\\sum_c w_c t_c (-\\log p_c)` and weight :math:`\\sum_c w_c t_c`
    (= :math:`w_{y}` for one-hot targets). Sigmoid modes: the channel mean of
    :math:`w_c\\,\\mathrm{BCE}(z_c, t_c)`, weight None (a channel weight does not weigh pixels).

    ``label_smoothing`` :math:`\\epsilon` replaces the target by :math:`(1-\\epsilon)t + \\epsilon/K` in
    the value (K = C classes, or 2 outcomes per sigmoid channel), PyTorch's ``label_smoothing``;
    the pixel weight stays :math:`w_y`. ``pos_weight`` (C,) multiplies the positive term of the
    binary cross-entropy, PyTorch's ``BCEWithLogitsLoss(pos_weight)`` (sigmoid modes only).

    Returns:
        ``(values, pixel_weights)``: (B, *S) tensors, ``pixel_weights`` None when uniform.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> values, pixel_weights = pixel_cross_entropy(prepare(logits, labels))
        >>> values.shape, pixel_weights is None
        (torch.Size([2, 8, 8]), True)
        >>> torch.allclose(values, F.cross_entropy(logits, labels, reduction="none"))
        True
        >>> class_weights = torch.tensor([1.0, 2.0, 3.0])
        >>> _, pixel_weights = pixel_cross_entropy(prepare(logits, labels), class_weights)
        >>> torch.equal(pixel_weights, class_weights[labels])
        True
    """
    if prepared.mode == "multiclass":
        if pos_weight is not None:
            fail("pos_weight", "None in multiclass mode (it weighs the positive term of a binary cross-entropy)",
                 "a pos_weight; use class_weights")
        if prepared.labels is not None:  # PyTorch's fused kernel: w_y * CE, without a one-hot target
            values = F.cross_entropy(prepared.logits, prepared.labels, weight=class_weights, reduction="none",
                                     label_smoothing=label_smoothing)
            return values, (None if class_weights is None else class_weights[prepared.labels])
        log_probs = prepared.logits.log_softmax(dim=1)
        target = prepared.target
        if label_smoothing:
            target = prepared.mask((1.0 - label_smoothing) * target + label_smoothing / prepared.num_classes)
        if class_weights is None:
            return -(target * log_probs).sum(dim=1), None
        weights = channel_view(class_weights, prepared)
        return -(target * weights * log_probs).sum(dim=1), (prepared.target * weights).sum(dim=1)
    target = smoothed_sigmoid_target(prepared.target, label_smoothing)
    pos_weight = None if pos_weight is None else channel_view(pos_weight, prepared)
    bce = F.binary_cross_entropy_with_logits(prepared.logits, target, reduction="none", pos_weight=pos_weight)
    if class_weights is not None:
        return (bce * channel_view(class_weights, prepared)).mean(dim=1), None
    return bce.mean(dim=1), None


def smoothed_sigmoid_target(target: Tensor, label_smoothing: float) -> Tensor:
    """The target of each sigmoid channel with label smoothing: :math:`(1-\\epsilon)t + \\epsilon/2` (two outcomes)."""
    return (1.0 - label_smoothing) * target + label_smoothing / 2 if label_smoothing else target


def channel_view(weights: Tensor, prepared: Prepared) -> Tensor:
    """(C,) weights shaped to broadcast over (B, C, *S)."""
    return weights.view(1, -1, *([1] * len(prepared.spatial_dims)))


def weighted_mean_per_pixel(weighted_values: Tensor, pixel_weights: Tensor | None, prepared: Prepared) -> Tensor:
    """Per-pixel terms whose image mean is the weighted mean :math:`\\sum_n w_n v_n / \\sum_n w_n`,
    from the already weighted values :math:`w_n v_n`."""
    weighted_values = prepared.mask(weighted_values)
    if pixel_weights is None:
        return weighted_values
    weight_total = prepared.mask(pixel_weights).sum(dim=prepared.pixel_dims)
    scale = prepared.valid_count() / weight_total.clamp_min(1e-12)
    return weighted_values * scale.view(-1, *([1] * len(prepared.pixel_dims)))


def cross_entropy_map(
    prepared: Prepared,
    class_weights: Sequence[float] | Tensor | None,
    *,
    label_smoothing: float = 0.0,
    pos_weight: float | Sequence[float] | Tensor | None = None,
) -> Tensor:
    """(B, *S) per-pixel (weighted) cross-entropy whose mean over an image's counted pixels is its
    weighted mean; ignored pixels hold 0. The options are validated here (see :func:`pixel_cross_entropy`)."""
    weights = check_class_weights("class_weights", class_weights, prepared.num_classes, prepared.logits)
    label_smoothing = check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
    if isinstance(pos_weight, (int, float)) and not isinstance(pos_weight, bool):
        pos_weight = [check_number("pos_weight", pos_weight, low=0.0)] * prepared.num_classes
    positive = check_class_weights("pos_weight", pos_weight, prepared.num_classes, prepared.logits)
    values, pixel_weights = pixel_cross_entropy(prepared, weights, label_smoothing=label_smoothing, pos_weight=positive)
    return weighted_mean_per_pixel(values, pixel_weights, prepared)


def reduced_cross_entropy(
    prepared: Prepared,
    class_weights: Sequence[float] | Tensor | None,
    *,
    label_smoothing: float = 0.0,
    pos_weight: float | Sequence[float] | Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """The per-image means of :func:`cross_entropy_map` reduced over images ("mean", "sum", or "none" for (B,)).

    When every pixel counts with equal weight the mean of the per-image means is the global mean,
    which PyTorch's fused kernels compute without a per-pixel map and its gradient buffer.
    """
    if reduction != "none" and prepared.valid is None and class_weights is None and pos_weight is None:
        label_smoothing = check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
        if prepared.mode == "multiclass":  # integer labels, or class probabilities as the target
            target = prepared.target if prepared.labels is None else prepared.labels
            mean = F.cross_entropy(prepared.logits, target, label_smoothing=label_smoothing)
        else:
            mean = F.binary_cross_entropy_with_logits(prepared.logits,
                                                      smoothed_sigmoid_target(prepared.target, label_smoothing))
        return reduce_images(mean.expand(prepared.logits.shape[0]), reduction)
    per_pixel = cross_entropy_map(prepared, class_weights, label_smoothing=label_smoothing, pos_weight=pos_weight)
    return reduce_images(prepared.image_mean(per_pixel), reduction)


def focal_alpha(alpha: float | Sequence[float] | Tensor | None, prepared: Prepared) -> Tensor | None:
    """Per-channel weights of the positive term; sigmoid modes weigh negatives by 1 - alpha."""
    if alpha is None:
        return None
    num_classes = prepared.num_classes
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        alpha = check_number("alpha", alpha, low=0.0, high=1.0)
        if prepared.mode == "multiclass":  # MONAI's convention: background 1 - alpha, the rest alpha
            return prepared.logits.new_tensor([1.0 - alpha] + [alpha] * (num_classes - 1))
        return prepared.logits.new_full((num_classes,), alpha)
    weights = check_class_weights("alpha", alpha, num_classes, prepared.logits)
    if prepared.mode != "multiclass" and bool((weights > 1).any()):
        fail("alpha", "in [0, 1] per channel in sigmoid modes", weights.tolist())
    return weights


def focal_map(prepared: Prepared, gamma: float, alpha: float | Sequence[float] | Tensor | None) -> Tensor:
    """(B, *S) per-pixel focal loss (softmax in multiclass mode, the channel mean of the sigmoid focal
    loss otherwise); ignored pixels hold 0. ``gamma`` and ``alpha`` are validated here."""
    gamma = check_number("gamma", gamma, low=0.0)
    alpha = focal_alpha(alpha, prepared)
    tiny = torch.finfo(prepared.logits.dtype).tiny
    if prepared.mode == "multiclass":
        log_probs = prepared.logits.log_softmax(dim=1)
        if prepared.labels is not None:  # only the true class has t > 0: gather instead of a class sum
            log_true = log_probs.gather(1, prepared.labels.unsqueeze(1)).squeeze(1)
            values = -((1.0 - log_true.exp()).clamp_min(tiny) ** gamma) * log_true
            return prepared.mask(values if alpha is None else values * alpha[prepared.labels])
        modulation = (1.0 - log_probs.exp()).clamp_min(tiny) ** gamma
        weighted_target = prepared.target if alpha is None else prepared.target * channel_view(alpha, prepared)
        return prepared.mask(-(weighted_target * modulation * log_probs).sum(dim=1))
    target = prepared.target
    bce = F.binary_cross_entropy_with_logits(prepared.logits, target, reduction="none")
    probs = prepared.logits.sigmoid()
    miss = probs + target - 2.0 * probs * target  # 1 - p_true, p_true = p t + (1 - p)(1 - t)
    values = bce * miss.clamp_min(tiny) ** gamma
    if alpha is not None:
        alpha = channel_view(alpha, prepared)
        values = values * (alpha * target + (1.0 - alpha) * (1.0 - target))
    return prepared.mask(values.mean(dim=1))


# --------------------------------------------------------------------------- soft counts and ratios


def spatial_sums(x: Tensor) -> Tensor:
    """(B, C, *S) -> (B, C): sums over the spatial dimensions."""
    return x.sum(dim=tuple(range(2, x.ndim)))


class SoftCounts(NamedTuple):
    """Per image and class sums over the counted pixels, each (B, C)."""

    intersection: Tensor  # sum p t (the soft TP)
    prediction: Tensor  # sum p^q
    target: Tensor  # sum t^q


def soft_counts(prepared: Prepared, squared: bool = False) -> SoftCounts:
    """Soft counts of :math:`p` against the target over the counted pixels, with :math:`q = 2` when
    ``squared`` (a one-hot target built from labels is its own square)."""
    probs = prepared.probs()
    counted_probs = prepared.mask(probs)
    prediction = spatial_sums(counted_probs * probs if squared else counted_probs)
    target = prepared.target
    target_mass = spatial_sums(target * target if squared and prepared.labels is None else target)
    return SoftCounts(spatial_sums(counted_probs * target), prediction, target_mass)


def class_average_weights(
    prepared: Prepared, include_background: bool = True, class_weights: Sequence[float] | Tensor | None = None
) -> Tensor:
    """Weights (C,) that average per-class losses: ``class_weights`` (or ones), channel 0 dropped
    when ``include_background`` is False, normalised to sum to one.

    Example:
        >>> prepared = prepare(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
        >>> class_average_weights(prepared, include_background=False)
        tensor([0.0000, 0.5000, 0.5000])
        >>> class_average_weights(prepared, class_weights=[1.0, 1.0, 2.0])
        tensor([0.2500, 0.2500, 0.5000])
    """
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



def prepare_class_average(
    logits: Tensor,
    target: Tensor,
    mode: str | None,
    ignore_index: int | None,
    include_background: bool,
    class_weights: Sequence[float] | Tensor | None,
    eps: float,
) -> tuple[Prepared, float, Tensor]:
    """The start of every class-averaged loss: prepared inputs, the checked ``eps`` and the class weights."""
    prepared = prepare(logits, target, mode=mode, ignore_index=ignore_index)
    eps = check_number("eps", eps, low=0.0, low_inclusive=False)
    return prepared, eps, class_average_weights(prepared, include_background, class_weights)


def dice_error_maps(prepared: Prepared, squared: bool) -> tuple[Tensor, Tensor]:
    """Per-pixel Dice errors (B, C, *S), :math:`(p-t)^2` when ``squared`` else :math:`p+t-2pt` (0 on
    ignored pixels), and the per image and class denominators :math:`Q` (B, C)."""
    check_type("squared", squared, bool)
    probs = prepared.mask(prepared.probs())
    target = prepared.target
    if squared:
        return (probs - target) ** 2, spatial_sums(probs * probs) + spatial_sums(target * target)
    return probs + target - 2.0 * probs * target, spatial_sums(probs) + spatial_sums(target)


def dice_error_sums(prepared: Prepared, squared: bool) -> tuple[Tensor, Tensor]:
    """Per image and class error sums :math:`\\sum_j e_j = Q - 2TP` and denominators :math:`Q`, (B, C)."""
    check_type("squared", squared, bool)
    counts = soft_counts(prepared, squared)
    denominator = counts.prediction + counts.target
    return (denominator - 2.0 * counts.intersection).clamp_min(0.0), denominator


def _denominator(denominator: Tensor, batch: bool, eps: float) -> tuple[Tensor, float]:
    """Per-image (B, C) or pooled (1, C) denominators with eps, and the per-image share factor."""
    if batch:
        return denominator.sum(dim=0, keepdim=True) + eps, float(denominator.shape[0])
    return denominator + eps, 1.0


def ratio_per_image(excess: Tensor, denominator: Tensor, weights: Tensor, *, batch: bool, eps: float) -> Tensor:
    """(B,) losses :math:`\\sum_c a_c E_c / (Q_c + \\varepsilon)` from the (B, C) per-image error sums
    :math:`E = \\sum_j e_{cj}` and denominators :math:`Q` (both pooled over the batch when ``batch``).

    Example:
        >>> excess, denominator = torch.tensor([[1.0, 2.0]]), torch.tensor([[4.0, 4.0]])  # one image, two classes
        >>> ratio_per_image(excess, denominator, torch.tensor([0.5, 0.5]), batch=False, eps=1e-5)
        tensor([0.3750])
    """
    denominator, share = _denominator(denominator, batch, eps)
    return share * (weights * excess / denominator).sum(dim=1)


def ratio_per_pixel(
    errors: Tensor, denominator: Tensor, weights: Tensor, prepared: Prepared, *, batch: bool, eps: float
) -> Tensor:
    """(B, *S) per-pixel terms whose mean over each image's counted pixels is :func:`ratio_per_image`.

    Example:
        >>> prepared = prepare(torch.zeros(1, 2, 2, 2), torch.tensor([[[0, 1], [1, 1]]]))
        >>> probs, target = prepared.probs(), prepared.target
        >>> errors, denominator = (probs - target) ** 2, (probs**2 + target).sum(dim=(2, 3))  # squared Dice
        >>> weights = torch.tensor([0.5, 0.5])
        >>> per_pixel = ratio_per_pixel(errors, denominator, weights, prepared, batch=False, eps=1e-5)
        >>> per_pixel.shape
        torch.Size([1, 2, 2])
        >>> per_image = ratio_per_image(errors.sum(dim=(2, 3)), denominator, weights, batch=False, eps=1e-5)
        >>> torch.allclose(per_pixel.mean(dim=(1, 2)), per_image)
        True
    """
    denominator, share = _denominator(denominator, batch, eps)
    coefficients = share * weights / denominator
    spatial = [1] * (errors.ndim - 2)
    per_pixel = (errors * coefficients.view(*coefficients.shape, *spatial)).sum(dim=1)
    return per_pixel * prepared.valid_count().view(-1, *spatial)
