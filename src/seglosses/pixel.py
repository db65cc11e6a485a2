"""Per-pixel losses: cross-entropy (weighted), TopK cross-entropy, focal loss; and the robust T-loss.

Each but the robust T-loss (a likelihood of all of an image's errors at once) has a native per-pixel
form. In multiclass mode the cross-entropy of a pixel is :math:`-\\sum_c t_c \\log p_c` (softmax); in
binary and multilabel modes it is the binary cross-entropy of each channel (sigmoid), averaged over
channels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seglosses._checks import check_class_weights, check_number, check_type, fail
from seglosses.base import Loss, reduce_images
from seglosses.blocks import cross_entropy_map, focal_map, pixel_cross_entropy, reduced_cross_entropy
from seglosses.registry import register_loss
from seglosses.targets import Prepared, prepare

__all__ = [
    "CrossEntropyLoss",
    "FocalLoss",
    "RobustTLoss",
    "TopKCrossEntropyLoss",
    "cross_entropy",
    "cross_entropy_per_pixel",
    "focal_loss",
    "focal_loss_per_pixel",
    "pixel_cross_entropy",
    "robust_t_loss",
    "topk_cross_entropy",
    "topk_cross_entropy_per_pixel",
]



# --------------------------------------------------------------------------- cross-entropy


def _uniform_labels(prepared: Prepared, class_weights) -> bool:
    """Integer labels, every pixel counted, no class weights: the case PyTorch's fused kernels cover."""
    return prepared.labels is not None and prepared.valid is None and class_weights is None



def cross_entropy_per_pixel(
    logits: Tensor,
    target: Tensor,
    *,
    mode: str | None = None,
    class_weights: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    pos_weight: float | Sequence[float] | Tensor | None = None,
) -> Tensor:
    r"""Per-pixel (weighted) cross-entropy, (B, *S); see :func:`cross_entropy`.

    With class weights each pixel carries :math:`w_{y_n} (-\log p_{n,y_n}) \cdot P_i / \sum_n w_{y_n}`,
    so that its mean over the image's counted pixels is the weighted mean.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> per_pixel = cross_entropy_per_pixel(logits, labels, class_weights=[1.0, 2.0, 3.0])
        >>> per_pixel.shape
        torch.Size([2, 8, 8])
        >>> torch.allclose(per_pixel.mean(dim=(1, 2)),
        ...                cross_entropy(logits, labels, class_weights=[1.0, 2.0, 3.0], reduction="none"))
        True
    """
    prepared = prepare(logits, target, mode=mode, ignore_index=ignore_index)
    return cross_entropy_map(prepared, class_weights, label_smoothing=label_smoothing, pos_weight=pos_weight)


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    mode: str | None = None,
    class_weights: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    pos_weight: float | Sequence[float] | Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Cross-entropy per image, with optional class weights (weighted CE).

    .. math::
        L_i = \frac{\sum_n w_{y_n}\,(-\log p_{n,y_n})}{\sum_n w_{y_n}}

    over the counted pixels :math:`n` of image :math:`i` (PyTorch's weighted mean, taken per
    image; soft targets use :math:`\sum_c w_c t_{nc}` as the pixel weight). In binary and
    multilabel modes it is the binary cross-entropy averaged over pixels and channels, the
    channels weighted by ``class_weights``. An image with no counted pixel has loss 0.

    Reference: survey (Azad et al.) eqs. 1-2, normalised as in PyTorch.

    Args:
        logits: (B, C, *S) scores.
        target: labels (B, *S) / (B, 1, *S) or a dense (B, C, *S) target.
        mode: "multiclass", "binary" or "multilabel"; inferred from C when None.
        class_weights: (C,) non-negative weights, or None.
        ignore_index: label whose pixels are ignored.
        label_smoothing: epsilon in [0, 1]: the target becomes (1 - epsilon) t + epsilon / K (K = C
            classes, or 2 per sigmoid channel), PyTorch's ``label_smoothing`` (MONAI's DiceCELoss).
        pos_weight: sigmoid modes only: a number or (C,) weights of the positive term of each
            channel's BCE, PyTorch's ``BCEWithLogitsLoss(pos_weight)``.
        reduction: "mean" or "sum" over images, or "none" for the (B,) per-image losses.

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.randn(2, 3, 8, 8)
        >>> labels = torch.randint(0, 3, (2, 8, 8))
        >>> loss = cross_entropy(logits, labels)
        >>> torch.allclose(loss, torch.nn.functional.cross_entropy(logits, labels))
        True
    """
    prepared = prepare(logits, target, mode=mode, ignore_index=ignore_index)
    return reduced_cross_entropy(prepared, class_weights, label_smoothing=label_smoothing, pos_weight=pos_weight,
                                 reduction=reduction)


@register_loss("cross_entropy")
class CrossEntropyLoss(Loss):
    """Module form of :func:`cross_entropy` (weighted cross-entropy).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> loss = CrossEntropyLoss(class_weights=[1.0, 2.0, 3.0])
        >>> loss(logits, labels).shape, loss.per_image(logits, labels).shape
        (torch.Size([]), torch.Size([2]))
        >>> torch.allclose(loss(logits, labels), cross_entropy(logits, labels, class_weights=[1.0, 2.0, 3.0]))
        True
    """

    has_per_pixel = True
    function = staticmethod(cross_entropy)
    pixel_function = staticmethod(cross_entropy_per_pixel)

    def __init__(
        self,
        *,
        mode: str | None = None,
        class_weights: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        label_smoothing: float = 0.0,
        pos_weight: float | Sequence[float] | Tensor | None = None,
        reduction: str = "mean",
    ) -> None:
        check_cross_entropy_options(mode, label_smoothing, pos_weight)
        super().__init__(reduction, mode=mode, class_weights=class_weights, ignore_index=ignore_index,
                         label_smoothing=label_smoothing, pos_weight=pos_weight)


def check_cross_entropy_options(mode: str | None, label_smoothing: float, pos_weight: object) -> None:
    """``label_smoothing`` in [0, 1]; ``pos_weight`` None, a non-negative number or per-channel weights, and
    not in multiclass mode (checked at construction; the per-channel count is checked at the call)."""
    check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
    if pos_weight is None:
        return
    if mode == "multiclass":
        fail("pos_weight", "None in multiclass mode (it weighs the positive term of a binary cross-entropy)",
             "a pos_weight; use class_weights")
    if isinstance(pos_weight, (int, float)) and not isinstance(pos_weight, bool):
        check_number("pos_weight", pos_weight, low=0.0)  # per-channel weights: checked with the shared options


# --------------------------------------------------------------------------- TopK cross-entropy


def _topk_map(prepared: Prepared, k: float, batch: bool, class_weights) -> Tensor:
    """Per-pixel terms of TopK-CE: the selected pixels' CE, scaled so image means give the loss."""
    k = check_number("k", k, low=0.0, high=1.0, low_inclusive=False)
    check_type("batch", batch, bool)
    weights = check_class_weights("class_weights", class_weights, prepared.num_classes, prepared.logits)
    # nnU-Net style: rank and average the weighted CE values (not renormalised by the weights).
    values = prepared.mask(pixel_cross_entropy(prepared, weights)[0])
    num_images = values.shape[0]
    flat_values = values.detach().reshape(1 if batch else num_images, -1)
    if prepared.valid is None:
        # Every pixel counts: the kept count is static, and an unsorted top-k suffices.
        keep = max(1, math.ceil(k * flat_values.shape[1] - 1e-9))
        top_positions = flat_values.topk(keep, dim=1, sorted=False).indices
        selected = torch.zeros_like(flat_values, dtype=torch.bool).scatter_(1, top_positions, True)
        scale = flat_values.new_full((flat_values.shape[0],), 1.0 / keep)
    else:
        # The kept count follows each unit's counted pixels; its upper bound is static (no host sync),
        # so take a sorted top-k of that size and keep each unit's first `keep` entries.
        flat_valid = prepared.valid_bool().reshape(flat_values.shape)
        counted = flat_valid.sum(dim=1)
        # ceil(k * N) in float64, minus a hair so that e.g. 0.1 * 30 keeps 3 pixels, not 4.
        keep = torch.ceil(counted.double() * k - 1e-9).clamp_min(1).minimum(counted.clamp_min(1))
        bound = max(1, min(flat_values.shape[1], math.ceil(k * flat_values.shape[1])))
        ranked = flat_values.masked_fill(~flat_valid, -math.inf)
        top_positions = ranked.topk(bound, dim=1).indices
        chosen = torch.arange(bound, device=values.device).unsqueeze(0) < keep.unsqueeze(1)
        selected = torch.zeros_like(flat_valid).scatter_(1, top_positions, chosen) & flat_valid
        scale = 1.0 / keep.to(values.dtype)  # mean over the kept pixels of each unit (image or batch)
    if batch:  # image i's share of the batch mean, spread over its counted pixels
        scale = scale * num_images
    spread = [1] * (values.ndim - 1)
    per_pixel = values * selected.reshape(values.shape) * scale.view(-1, *spread)
    return per_pixel * prepared.valid_count().view(-1, *spread)


def topk_cross_entropy_per_pixel(
    logits: Tensor,
    target: Tensor,
    *,
    k: float = 0.1,
    batch: bool = True,
    mode: str | None = None,
    class_weights: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = None,
) -> Tensor:
    """Per-pixel terms of :func:`topk_cross_entropy`, (B, *S): zero outside the kept pixels.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> per_pixel = topk_cross_entropy_per_pixel(logits, labels, k=0.25)
        >>> int((per_pixel > 0).sum())  # the hardest 25% of the batch's 128 pixels
        32
        >>> torch.allclose(per_pixel.mean(dim=(1, 2)), topk_cross_entropy(logits, labels, k=0.25, reduction="none"))
        True
    """
    prepared = prepare(logits, target, mode=mode, ignore_index=ignore_index)
    return _topk_map(prepared, k, batch, class_weights)


def topk_cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    k: float = 0.1,
    batch: bool = True,
    mode: str | None = None,
    class_weights: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""TopK cross-entropy: the mean cross-entropy of the hardest fraction ``k`` of pixels.

    .. math::
        L = \frac{1}{|\mathcal K|}\sum_{n\in\mathcal K} w_{y_n}(-\log p_{n,y_n}),\qquad
        |\mathcal K| = \max(1, \lceil k\,N \rceil)

    where :math:`\mathcal K` holds the largest values among the :math:`N` counted pixels of the
    whole batch (``batch=True``, as nnU-Net and SegLoss) or of each image (``batch=False``).
    In batch mode the (B,) per-image values are each image's share of the batch loss (their
    mean is the batch loss). Ties are broken by ``torch.topk``.

    Reference: Wu et al., "Bridging category-level and instance-level semantic image
    segmentation", 2016; survey eq. 3 (which omits the :math:`1/|\mathcal K|`).

    Args:
        logits: (B, C, *S) scores.
        target: labels (B, *S) / (B, 1, *S) or a dense (B, C, *S) target.
        k: fraction of pixels kept, in (0, 1].
        batch: rank over the flattened batch (True) or within each image (False).
        mode, class_weights, ignore_index, reduction: as in :func:`cross_entropy`.

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none").flatten()
        >>> torch.allclose(topk_cross_entropy(logits, labels, k=0.25), ce.topk(32).values.mean())
        True
    """
    prepared = prepare(logits, target, mode=mode, ignore_index=ignore_index)
    if reduction != "none" and batch and _uniform_labels(prepared, class_weights):
        # The batch loss is the mean of the kept values: no selection mask needed.
        k = check_number("k", k, low=0.0, high=1.0, low_inclusive=False)
        values = F.cross_entropy(prepared.logits, prepared.labels, reduction="none").flatten()
        mean = values.topk(max(1, math.ceil(k * values.numel() - 1e-9)), sorted=False).values.mean()
        return mean if reduction == "mean" else mean * prepared.logits.shape[0]
    return reduce_images(prepared.image_mean(_topk_map(prepared, k, batch, class_weights)), reduction)


@register_loss("topk_ce")
class TopKCrossEntropyLoss(Loss):
    """Module form of :func:`topk_cross_entropy`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> loss = TopKCrossEntropyLoss(k=0.25)
        >>> loss(logits, labels).shape, loss.per_pixel(logits, labels).shape
        (torch.Size([]), torch.Size([2, 8, 8]))
        >>> torch.allclose(loss(logits, labels), topk_cross_entropy(logits, labels, k=0.25))
        True
    """

    has_per_pixel = True
    function = staticmethod(topk_cross_entropy)
    pixel_function = staticmethod(topk_cross_entropy_per_pixel)

    def __init__(
        self,
        *,
        k: float = 0.1,
        batch: bool = True,
        mode: str | None = None,
        class_weights: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
    ) -> None:
        check_number("k", k, low=0.0, high=1.0, low_inclusive=False)
        check_type("batch", batch, bool)
        super().__init__(
            reduction, k=k, batch=batch, mode=mode, class_weights=class_weights, ignore_index=ignore_index
        )


# --------------------------------------------------------------------------- focal



def focal_loss_per_pixel(
    logits: Tensor,
    target: Tensor,
    *,
    gamma: float = 2.0,
    alpha: float | Sequence[float] | Tensor | None = None,
    mode: str | None = None,
    ignore_index: int | None = None,
) -> Tensor:
    """Per-pixel focal loss, (B, *S); see :func:`focal_loss`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> per_pixel = focal_loss_per_pixel(logits, labels, gamma=2.0)
        >>> per_pixel.shape
        torch.Size([2, 8, 8])
        >>> torch.allclose(per_pixel.mean(dim=(1, 2)), focal_loss(logits, labels, gamma=2.0, reduction="none"))
        True
    """
    prepared = prepare(logits, target, mode=mode, ignore_index=ignore_index)
    return focal_map(prepared, gamma, alpha)


def focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    gamma: float = 2.0,
    alpha: float | Sequence[float] | Tensor | None = None,
    mode: str | None = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Focal loss: cross-entropy down-weighted on well-classified pixels.

    .. math::
        L_i = \frac1{P_i}\sum_n \sum_c \alpha_c\, t_{nc}\,(1-p_{nc})^{\gamma}\,(-\log p_{nc})

    in multiclass mode (softmax; the sum over classes is not divided by C, so MONAI's
    ``FocalLoss(use_softmax=True)`` with its element-wise mean is this value divided by C). In
    binary and multilabel modes it is the sigmoid focal loss of Lin et al. per channel,
    :math:`\alpha_t (1-p_t)^\gamma \mathrm{BCE}`, with :math:`\alpha_t=\alpha` on positives and
    :math:`1-\alpha` on negatives, averaged over channels.

    Reference: Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017.

    Args:
        logits: (B, C, *S) scores.
        target: labels (B, *S) / (B, 1, *S) or a dense (B, C, *S) target.
        gamma: focusing parameter, >= 0 (0 gives cross-entropy).
        alpha: None (no weighting; Lin used 0.25 for detection), a float (sigmoid modes: weight of
            positives; multiclass: foreground classes get alpha and background 1 - alpha) or a (C,)
            sequence of per-class weights.
        mode, ignore_index, reduction: as in :func:`cross_entropy`.

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> torch.allclose(focal_loss(logits, labels, gamma=0.0), cross_entropy(logits, labels))
        True
    """
    prepared = prepare(logits, target, mode=mode, ignore_index=ignore_index)
    return reduce_images(prepared.image_mean(focal_map(prepared, gamma, alpha)), reduction)


@register_loss("focal")
class FocalLoss(Loss):
    """Module form of :func:`focal_loss`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> loss = FocalLoss(gamma=2.0, alpha=0.25)
        >>> loss(logits, labels).shape, loss.per_image(logits, labels).shape
        (torch.Size([]), torch.Size([2]))
        >>> torch.allclose(loss(logits, labels), focal_loss(logits, labels, gamma=2.0, alpha=0.25))
        True
    """

    has_per_pixel = True
    function = staticmethod(focal_loss)
    pixel_function = staticmethod(focal_loss_per_pixel)

    def __init__(
        self,
        *,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | Tensor | None = None,
        mode: str | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
    ) -> None:
        check_number("gamma", gamma, low=0.0)
        super().__init__(reduction, gamma=gamma, alpha=alpha, mode=mode, ignore_index=ignore_index)


# --------------------------------------------------------------------------- robust T


def robust_t_loss(
    logits: Tensor,
    target: Tensor,
    *,
    log_nu: float | Tensor = 1.0,
    log_precision: float = 1.0,
    mode: str | None = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Robust T-loss: the negative log-likelihood of a multivariate Student-t over each image's errors.

    With :math:`D` counted pixels, errors :math:`\delta = p - t` of one channel,
    :math:`\Sigma^{-1} = e^{\lambda} I` and :math:`\nu = e^{\eta} + 10^{-8}`:

    .. math::
        L = -\ln\Gamma\!\big(\tfrac{\nu+D}2\big) + \ln\Gamma\!\big(\tfrac\nu2\big) + \tfrac D2 \ln(\pi\nu)
            - \tfrac{D\lambda}{2} + \tfrac{\nu+D}{2}\ln\!\Big(1 + \frac{e^{\lambda}\,\delta^\top\delta}{\nu}\Big),

    averaged over channels (the reference code is binary; SPEC D.14 applies it per channel). Small
    :math:`\nu` gives heavy tails (robust to label noise), :math:`\nu\to\infty` a Gaussian (MSE-like)
    loss. The value is a likelihood, not an error: it is not zero at a perfect prediction and scales
    with :math:`D`; it is smallest there for a fixed :math:`\nu`.

    Reference: Gonzalez-Jimenez et al., "Robust T-Loss for Medical Image Segmentation", MICCAI 2023.

    Args:
        logits: (B, C, *S) scores; p is the softmax (multiclass) or the sigmoid (binary, multilabel).
        target: labels (B, *S) / (B, 1, *S) or a dense (B, C, *S) target.
        log_nu: :math:`\eta`, a float or a scalar tensor (a learnable parameter in :class:`RobustTLoss`);
            default 1.0, the reference initialisation (:math:`\nu_0 \approx 2.72`).
        log_precision: :math:`\lambda`, the fixed log precision (reference: 1.0).
        mode, ignore_index, reduction: as in :func:`cross_entropy`. Ignored pixels do not count in D.

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 1, 4, 4), torch.randint(0, 2, (2, 4, 4))
        >>> perfect = 30.0 * (2.0 * labels.unsqueeze(1) - 1.0)
        >>> bool(robust_t_loss(perfect, labels) < robust_t_loss(logits, labels))
        True
    """
    prepared = prepare(logits, target, mode=mode, ignore_index=ignore_index)
    log_precision = check_number("log_precision", log_precision)
    if isinstance(log_nu, Tensor):
        if log_nu.numel() != 1:
            fail("log_nu", "a float or a one-element tensor", f"a tensor of shape {tuple(log_nu.shape)}")
        log_nu = log_nu.reshape(()).to(prepared.logits)
    else:
        log_nu = prepared.logits.new_tensor(check_number("log_nu", log_nu))
    nu = log_nu.exp() + 1e-8
    errors = prepared.mask(prepared.probs() - prepared.target)
    squared_norm = (errors * errors).flatten(2).sum(dim=2)  # (B, C)
    pixels = prepared.valid_count().unsqueeze(1)  # D, (B, 1)
    log_likelihood_terms = (
        -torch.lgamma((nu + pixels) / 2)
        + torch.lgamma(nu / 2)
        + pixels / 2 * (math.log(math.pi) + nu.log())
        - pixels * log_precision / 2
        + (nu + pixels) / 2 * torch.log1p(math.exp(log_precision) * squared_norm / nu)
    )
    return reduce_images(log_likelihood_terms.mean(dim=1), reduction)


@register_loss("robust_t")
class RobustTLoss(Loss):
    r"""Module form of :func:`robust_t_loss`, with :math:`\eta = \log \nu` a learnable parameter.

    ``log_nu`` is registered as an ``nn.Parameter``, so it trains whenever the optimiser holds the
    criterion's parameters. Give it its own learning rate (the reference uses 1e-3)::

        criterion = RobustTLoss()
        optimizer = torch.optim.Adam([
            {"params": model.parameters()},
            {"params": criterion.parameters(), "lr": 1e-3},
        ], lr=1e-4)

    It is saved with the criterion's ``state_dict()``; :attr:`nu` reads the current :math:`\nu`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 1, 4, 4), torch.randint(0, 2, (2, 4, 4))
        >>> criterion = RobustTLoss()
        >>> [name for name, _ in criterion.named_parameters()], round(criterion.nu, 4)
        (['log_nu'], 2.7183)
        >>> criterion(logits, labels).backward()
        >>> criterion.log_nu.grad is not None
        True
    """

    def __init__(
        self,
        *,
        log_nu: float = 1.0,
        log_precision: float = 1.0,
        mode: str | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
    ) -> None:
        check_number("log_nu", log_nu)
        check_number("log_precision", log_precision)
        super().__init__(reduction, log_precision=log_precision, mode=mode, ignore_index=ignore_index)
        self.log_nu = nn.Parameter(torch.tensor(float(log_nu)))

    @property
    def nu(self) -> float:
        """The current degrees of freedom :math:`\\nu = e^{\\eta} + 10^{-8}`."""
        return float(self.log_nu.detach().exp()) + 1e-8

    def per_image(self, logits: Tensor, target: Tensor) -> Tensor:
        self.check_mode(logits)
        return robust_t_loss(logits, target, log_nu=self.log_nu, **self.options, reduction="none")

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        self.check_mode(logits)
        return robust_t_loss(logits, target, log_nu=self.log_nu, **self.options, reduction=self.reduction)
