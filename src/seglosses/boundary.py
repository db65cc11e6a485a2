r"""Boundary and distance-based losses: boundary (Kervadec), Hausdorff-DT (Karimi), distance-map CE
(Calivá), region-wise (Valverde) and boundary DoU (Sun).

Distance maps come from :mod:`seglosses.distance` (exact, with voxel ``spacing``), computed from the
hard target (and, for Hausdorff-DT, from the thresholded prediction) on every call, without gradient.
``backend`` picks the distance kernel ("auto": SciPy on CPU tensors, pure torch on accelerators).

**Class regions.** In multiclass mode the region of class :math:`c` is :math:`t_c > 0.5`; in binary and
multilabel modes each channel's region is :math:`t_c > 0.5` and its complement is the background.
Ignored pixels belong to no region (they count as outside every class when distances are measured)
and carry no loss.

**Exact per-pixel forms.** Boundary, Hausdorff-DT, distance-map CE and region-wise losses are means of
per-pixel terms, so ``per_pixel`` averages to ``per_image`` exactly and the envelope can wrap them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from seglosses._checks import check_finite_tensor, check_number, check_type, describe, fail, value_checks_enabled
from seglosses.base import Loss, reduce_images
from seglosses.blocks import class_average_weights, cross_entropy_map, spatial_sums
from seglosses.distance import BACKENDS, DistanceMapCache, boundary_distance, distance_transform
from seglosses.registry import register_loss
from seglosses.targets import LOGITS_CHECKED_AFTER, Prepared, check_logits, prepare

__all__ = [
    "ActiveBoundaryLoss",
    "BoundaryAwareLoss",
    "BoundaryDoULoss",
    "BoundaryLoss",
    "ConditionalBoundaryLoss",
    "DistanceMapCELoss",
    "HausdorffDTLoss",
    "RegionWiseLoss",
    "active_boundary_loss",
    "boundary_aware_loss",
    "boundary_aware_loss_per_pixel",
    "boundary_aware_masks",
    "boundary_aware_target",
    "boundary_dou_loss",
    "boundary_loss",
    "boundary_loss_per_pixel",
    "boundary_weight",
    "conditional_boundary_loss",
    "distance_map_ce_loss",
    "distance_map_ce_loss_per_pixel",
    "hausdorff_dt_loss",
    "hausdorff_dt_loss_per_pixel",
    "region_wise_loss",
    "region_wise_loss_per_pixel",
]

Spacing = float | Sequence[float] | None


# --------------------------------------------------------------------------- shared pieces


def _check_spacing(spacing: Spacing) -> float | tuple[float, ...] | None:
    """None, one positive number, or a sequence of positive numbers (one per spatial axis)."""
    expected = "None, a positive number or a sequence of positive numbers (one per spatial axis)"
    if spacing is None:
        return None
    if isinstance(spacing, (int, float)) and not isinstance(spacing, bool):
        return check_number("spacing", spacing, low=0.0, low_inclusive=False)
    if isinstance(spacing, Tensor):
        spacing = spacing.tolist()
    if not isinstance(spacing, (list, tuple)) or not spacing:
        fail("spacing", expected, repr(spacing), TypeError)
    for step in spacing:
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not step > 0:
            fail("spacing", expected, repr(spacing))
    return tuple(float(step) for step in spacing)


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        fail("backend", f"one of {list(BACKENDS)}", repr(backend))
    return backend


def _regions(prepared: Prepared, channels=slice(None)) -> Tensor:
    """(B, C', *S) bool regions of the hard target in ``channels`` (ignored pixels in none)."""
    return prepared.target[:, channels] > 0.5


def _target_maps(regions: Tensor, name: str, spacing: Spacing, backend: str, cache, make) -> Tensor:
    """``make(regions, spacing, backend)``, looked up per image in ``cache`` when one is given."""
    if cache is None:
        return make(regions, spacing, backend)
    check_type("cache", cache, DistanceMapCache)
    return cache.lookup(regions, f"{name} spacing={spacing}", lambda missing: make(missing, spacing, backend))


def _spatial_count(prepared: Prepared) -> int:
    return len(prepared.spatial_dims)


def _foreground_weights(prepared: Prepared, include_background: bool, class_weights=None) -> Tensor:
    """(C,) weights averaging over the scored classes: channel 0 only with ``include_background`` in
    multiclass mode; every channel in the sigmoid modes (each is a foreground)."""
    check_type("include_background", include_background, bool)
    return class_average_weights(prepared, include_background or prepared.mode != "multiclass", class_weights)


def _scored_channels(weights: Tensor) -> slice | Tensor:
    """The channels with a positive weight: a slice when they are consecutive (indexing by it makes
    views, not copies), else an index tensor."""
    index = torch.nonzero(weights > 0).flatten().tolist()
    if not index or index == list(range(index[0], index[-1] + 1)):
        return slice(index[0], index[-1] + 1) if index else slice(0, 0)
    return torch.tensor(index, device=weights.device)


def _per_pixel_class_mean(values: Tensor, weights: Tensor, prepared: Prepared, channels=slice(None)) -> Tensor:
    """(B, C', *S) per-class terms of the ``channels`` C' -> (B, *S) weighted class mean, 0 at ignored pixels.
    Passing only the scored channels (:func:`_scored_channels`) skips the classes of weight 0."""
    per_pixel = (values * weights[channels].view(1, -1, *([1] * _spatial_count(prepared)))).sum(dim=1)
    return prepared.mask(per_pixel)


@torch.no_grad()
def _inside_outside(regions: Tensor, spacing: Spacing, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """Distances of every pixel inside (to the outside) and outside (to the inside) of each region,
    (B, C, *S) each in float32 (0 where they do not apply), and a (B, C, 1, ..) flag of the regions
    that have a boundary (neither empty nor full)."""
    spatial_dims = regions.ndim - 2
    spatial = tuple(range(2, regions.ndim))
    has_boundary = regions.any(dim=spatial, keepdim=True) & ~regions.all(dim=spatial, keepdim=True)
    both = distance_transform(torch.stack([regions, ~regions]), spacing, spatial_dims=spatial_dims, backend=backend)
    inside = torch.where(has_boundary & regions, both[0], 0.0)
    outside = torch.where(has_boundary & ~regions, both[1], 0.0)
    return inside, outside, has_boundary


# --------------------------------------------------------------------------- boundary (Kervadec)


@torch.no_grad()
def _kervadec_maps(regions: Tensor, spacing: Spacing, backend: str) -> Tensor:
    """phi: the distance to the region outside it, -(distance to the outside - 1) inside; 0 for a region
    without a boundary (Kervadec's ``one_hot2dist``; MONAI's ``BoundaryLoss``)."""
    inside, outside, has_boundary = _inside_outside(regions, spacing, backend)
    return torch.where(has_boundary, outside - (inside - 1.0) * regions, 0.0)


def boundary_loss_per_pixel(
    logits: Tensor,
    target: Tensor,
    *,
    spacing: Spacing = None,
    include_background: bool = False,
    mode: str | None = None,
    ignore_index: int | None = None,
    backend: str = "auto",
    cache: DistanceMapCache | None = None,
) -> Tensor:
    """Per-pixel boundary loss, (B, *S): :math:`\\frac1{|C'|}\\sum_{c\\in C'}\\phi_c\\,p_c`; see :func:`boundary_loss`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> per_pixel = boundary_loss_per_pixel(logits, labels)
        >>> torch.allclose(per_pixel.mean(dim=(1, 2)), boundary_loss(logits, labels, reduction="none"))
        True
    """
    prepared = prepare(logits, target, mode=mode, ignore_index=ignore_index)
    return _boundary_terms(prepared, spacing, include_background, backend, cache)


def _boundary_terms(prepared: Prepared, spacing: Spacing, include_background: bool, backend: str,
                    cache) -> Tensor:
    weights = _foreground_weights(prepared, include_background)
    scored = _scored_channels(weights)  # maps only for the classes that count
    maps = _target_maps(
        _regions(prepared, scored), "kervadec", spacing, _check_backend(backend), cache, _kervadec_maps
    ).to(prepared.logits.dtype)
    return _per_pixel_class_mean(maps * prepared.probs()[:, scored], weights, prepared, scored)


def boundary_loss(
    logits: Tensor,
    target: Tensor,
    *,
    spacing: Spacing = None,
    include_background: bool = False,
    mode: str | None = None,
    ignore_index: int | None = None,
    backend: str = "auto",
    cache: DistanceMapCache | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Boundary loss: probabilities weighted by the signed distance to each class's boundary.

    .. math::
        L_i = \frac{1}{P_i\,|C'|}\sum_{c\in C'}\sum_n \phi_c(n)\,p_{nc},

    with :math:`\phi_c` the distance to the class region outside it and :math:`-(d_{in}-1)` inside
    (Kervadec's ``one_hot2dist``, with voxel spacing). A class absent from the target (or covering the
    whole image) has :math:`\phi_c = 0`, so used alone the loss does not see it: combine it with a
    region loss, ``dice + boundary_weight(epoch) * boundary`` (SPEC D.15). The value is negative at a
    good prediction. Equal to MONAI's ``BoundaryLoss(softmax=True, include_background=False)``.

    Reference: Kervadec et al., "Boundary loss for highly unbalanced segmentation", MIDL 2019.

    Args:
        logits: (B, C, *S) scores (softmax in multiclass mode, sigmoid otherwise).
        target: labels (B, *S) / (B, 1, *S) or a dense (B, C, *S) target (its regions are t > 0.5).
        spacing: voxel spacing, one number or one per spatial axis; None for unit spacing.
        include_background: score channel 0 too in multiclass mode (default False: Kervadec's ``idc`` =
            the foreground classes); in the sigmoid modes every channel is a foreground and scored.
        mode, ignore_index: as in :func:`~seglosses.pixel.cross_entropy`.
        backend: distance kernel, "auto", "scipy" or "torch".
        cache: a :class:`~seglosses.distance.DistanceMapCache` that keeps the target's maps per image
            (static targets: computed once); the modules make one with ``cache_target_maps=True``.
        reduction: "mean" or "sum" over images, or "none" for (B,).

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Example:
        >>> labels = torch.zeros(1, 6, 6, dtype=torch.long)
        >>> labels[0, 2:4, 2:4] = 1
        >>> perfect = 20.0 * torch.stack([labels == 0, labels == 1], dim=1).float()
        >>> bool(boundary_loss(perfect, labels) < boundary_loss(-perfect, labels))
        True
    """
    prepared = prepare(logits, target, mode=mode, ignore_index=ignore_index)
    per_pixel = _boundary_terms(prepared, spacing, include_background, backend, cache)
    return reduce_images(prepared.image_mean(per_pixel), reduction)


def boundary_weight(epoch: int, *, start: float = 0.01, increment: float = 0.01, maximum: float = 1.0) -> float:
    """Kervadec's schedule for the boundary term's weight: ``start + increment * epoch``, at most ``maximum``.

    Use it to update a weighted sum each epoch: ``criterion = DiceLoss() + 0.01 * BoundaryLoss()``, then
    ``criterion.weights[1] = boundary_weight(epoch)``.

    Example:
        >>> boundary_weight(0), boundary_weight(9), boundary_weight(500)
        (0.01, 0.1, 1.0)
    """
    check_type("epoch", epoch, int)
    for name, value in (("start", start), ("increment", increment), ("maximum", maximum)):
        check_number(name, value, low=0.0)
    return round(min(start + increment * epoch, maximum), 12)


# --------------------------------------------------------------------------- Hausdorff-DT (Karimi)


def hausdorff_dt_loss_per_pixel(
    logits: Tensor,
    target: Tensor,
    *,
    alpha: float = 2.0,
    spacing: Spacing = None,
    include_background: bool = False,
    mode: str | None = None,
    ignore_index: int | None = None,
    backend: str = "auto",
    cache: DistanceMapCache | None = None,
) -> Tensor:
    """Per-pixel Hausdorff-DT loss, (B, *S); see :func:`hausdorff_dt_loss`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> per_pixel = hausdorff_dt_loss_per_pixel(logits, labels)
        >>> torch.allclose(per_pixel.mean(dim=(1, 2)), hausdorff_dt_loss(logits, labels, reduction="none"))
        True
    """
    prepared = prepare(logits, target, mode=mode, ignore_index=ignore_index)
    return _hausdorff_dt_terms(prepared, alpha, spacing, include_background, backend, cache)


def _hausdorff_dt_terms(prepared: Prepared, alpha: float, spacing: Spacing, include_background, backend: str,
                        cache) -> Tensor:
    alpha = check_number("alpha", alpha, low=0.0, low_inclusive=False)
    backend = _check_backend(backend)
    weights = _foreground_weights(prepared, include_background)
    probs = prepared.probs()
    spatial_dims = _spatial_count(prepared)
    scored = _scored_channels(weights)  # distances only for the classes that count
    with torch.no_grad():
        predicted = probs.detach()[:, scored] > 0.5
        if prepared.valid is not None:  # ignored pixels: in no region
            predicted &= prepared.valid_bool().unsqueeze(1)
        regions = _regions(prepared, scored)

        def fields(regions: Tensor, spacing: Spacing, backend: str) -> Tensor:
            return boundary_distance(regions, spacing, spatial_dims=spatial_dims, backend=backend)

        if cache is None:  # one call for both fields
            both = fields(torch.cat([regions, predicted], dim=1), spacing, backend)
            target_field, prediction_field = both.chunk(2, dim=1)
        else:
            target_field = _target_maps(regions, "boundary", spacing, backend, cache, fields)
            prediction_field = fields(predicted, spacing, backend)
        distance = target_field.to(probs.dtype).pow(alpha)  # a new tensor: a cached map stays as it is
        distance += prediction_field.to(probs.dtype).pow_(alpha)
    errors = (probs[:, scored] - prepared.target[:, scored]) ** 2
    return _per_pixel_class_mean(errors * distance, weights, prepared, scored)


def hausdorff_dt_loss(
    logits: Tensor,
    target: Tensor,
    *,
    alpha: float = 2.0,
    spacing: Spacing = None,
    include_background: bool = False,
    mode: str | None = None,
    ignore_index: int | None = None,
    backend: str = "auto",
    cache: DistanceMapCache | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Hausdorff-distance loss, distance-transform variant: squared errors weighted by the distances
    to the target's and the prediction's boundaries.

    .. math::
        L_i = \frac{1}{P_i\,|C'|}\sum_{c\in C'}\sum_n (p_{nc}-t_{nc})^2\big(d_{G,c}(n)^\alpha + d_{P,c}(n)^\alpha\big),

    :math:`d_G` the unsigned distance to the other region of the target (:func:`~seglosses.distance.boundary_distance`),
    :math:`d_P` the same for the thresholded prediction :math:`p > 0.5`, recomputed every call without
    gradient; a region that is empty or full has distance 0. Equal to MONAI's ``HausdorffDTLoss``
    (``softmax=True`` or ``sigmoid=True``, ``include_background=False``) on unignored inputs.

    Reference: Karimi & Salcudean, "Reducing the Hausdorff Distance in Medical Image Segmentation with
    Convolutional Neural Networks", IEEE TMI 2019.

    Args:
        alpha: exponent of the distances (> 0, default 2).
        Others: as in :func:`boundary_loss`.

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Example:
        >>> labels = torch.zeros(1, 6, 6, dtype=torch.long)
        >>> labels[0, 2:4, 2:4] = 1
        >>> perfect = 20.0 * torch.stack([labels == 0, labels == 1], dim=1).float()
        >>> hausdorff_dt_loss(perfect, labels).item() < 1e-6 < hausdorff_dt_loss(-perfect, labels).item()
        True
    """
    prepared = prepare(logits, target, mode=mode, ignore_index=ignore_index)
    per_pixel = _hausdorff_dt_terms(prepared, alpha, spacing, include_background, backend, cache)
    return reduce_images(prepared.image_mean(per_pixel), reduction)


# --------------------------------------------------------------------------- distance-map CE (Calivá)


@torch.no_grad()
def _caliva_phi(regions: Tensor, spacing: Spacing, backend: str) -> Tensor:
    """Per region, inside it: (max d - d) / max d of the distance d to the region's outside; 0 for a
    region covering the whole image (no boundary) and outside every region."""
    inside, _, has_boundary = _inside_outside(regions, spacing, backend)
    largest = inside.flatten(2).amax(dim=2).view(*inside.shape[:2], *([1] * (inside.ndim - 2)))
    phi = (largest - inside) / largest.clamp_min(1e-12)
    return torch.where(has_boundary & regions, phi, 0.0)


def _distance_map_ce_terms(prepared: Prepared, spacing: Spacing, backend: str, cache) -> Tensor:
    """(B, *S) per-pixel (1 + Phi) weighted cross-entropy."""
    regions = _regions(prepared)
    if prepared.mode == "multiclass":
        phi = _target_maps(regions, "caliva", spacing, backend, cache, _caliva_phi).to(prepared.logits.dtype)
        return prepared.mask(-(prepared.target * (1.0 + phi) * prepared.logits.log_softmax(dim=1)).sum(dim=1))
    # sigmoid modes: each channel has a foreground and a background region, each with its own Phi
    both_regions = torch.cat([regions, ~regions & prepared.valid_bool().unsqueeze(1)], dim=1)
    both = _target_maps(both_regions, "caliva", spacing, backend, cache, _caliva_phi)
    foreground_phi, background_phi = both.to(prepared.logits.dtype).chunk(2, dim=1)
    bce = F.binary_cross_entropy_with_logits(prepared.logits, prepared.target, reduction="none")
    return prepared.mask((bce * (1.0 + foreground_phi + background_phi)).mean(dim=1))


def distance_map_ce_loss_per_pixel(
    logits: Tensor,
    target: Tensor,
    *,
    spacing: Spacing = None,
    mode: str | None = None,
    ignore_index: int | None = None,
    backend: str = "auto",
    cache: DistanceMapCache | None = None,
) -> Tensor:
    """Per-pixel distance-map cross-entropy, (B, *S); see :func:`distance_map_ce_loss`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> per_pixel = distance_map_ce_loss_per_pixel(logits, labels)
        >>> torch.allclose(per_pixel.mean(dim=(1, 2)), distance_map_ce_loss(logits, labels, reduction="none"))
        True
    """
    prepared = prepare(logits, target, mode=mode, ignore_index=ignore_index)
    return _distance_map_ce_terms(prepared, spacing, _check_backend(backend), cache)


def distance_map_ce_loss(
    logits: Tensor,
    target: Tensor,
    *,
    spacing: Spacing = None,
    mode: str | None = None,
    ignore_index: int | None = None,
    backend: str = "auto",
    cache: DistanceMapCache | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Distance-map penalised cross-entropy: CE weighted by :math:`1+\Phi`, largest at the boundaries.

    .. math::
        L_i = -\frac1{P_i}\sum_n \big(1+\Phi_{y_n}(n)\big)\log p_{n,y_n},
        \qquad \Phi_c = \frac{\max d_c - d_c}{\max d_c}\ \text{inside class } c,

    :math:`d_c` the distance of a pixel of class :math:`c` to the region outside it (SegLoss's map, per
    class, indexed by the pixel's label; SPEC D.4). A class covering the whole image has
    :math:`\Phi = 0` (plain CE). In the sigmoid modes each channel's foreground and background regions
    get their own :math:`\Phi` and the weighted BCE is averaged over channels.

    Reference: Calivá et al., "Distance Map Loss Penalty Term for Semantic Segmentation", MIDL 2019.

    Args:
        Others: as in :func:`boundary_loss`.

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Example:
        >>> import math
        >>> labels = torch.zeros(1, 5, 5, dtype=torch.long)
        >>> labels[0, 1:4, 1:4] = 1
        >>> logits = torch.zeros(1, 2, 5, 5)  # p = 1/2 everywhere: CE = log 2 per pixel
        >>> # the mean of 1 + Phi: Phi is 1/2 on the 8 outer pixels of the 3x3 object, 0 at its centre,
        >>> # 1 - 1/sqrt(2) on the 12 background pixels beside it and 0 in the 4 corners: (25 + 7.515) / 25
        >>> round(distance_map_ce_loss(logits, labels).item() / math.log(2), 3)
        1.301
    """
    prepared = prepare(logits, target, mode=mode, ignore_index=ignore_index)
    per_pixel = _distance_map_ce_terms(prepared, spacing, _check_backend(backend), cache)
    return reduce_images(prepared.image_mean(per_pixel), reduction)


# --------------------------------------------------------------------------- region-wise (Valverde)


@torch.no_grad()
def _rectified_maps(regions: Tensor, spacing: Spacing, backend: str) -> Tensor:
    """z_c = -d / max d inside class c (d: distance to the outside), +1 outside; z = 1 for an absent
    class and -1 for a class covering the whole image."""
    inside, _, has_boundary = _inside_outside(regions, spacing, backend)
    largest = inside.flatten(2).amax(dim=2).view(*inside.shape[:2], *([1] * (inside.ndim - 2)))
    rectified = torch.where(regions, -inside / largest.clamp_min(1e-12), 1.0)
    return torch.where(has_boundary, rectified, torch.where(regions, -1.0, 1.0))


def region_wise_loss_per_pixel(
    logits: Tensor,
    target: Tensor,
    *,
    spacing: Spacing = None,
    include_background: bool = True,
    mode: str | None = None,
    ignore_index: int | None = None,
    backend: str = "auto",
    cache: DistanceMapCache | None = None,
) -> Tensor:
    """Per-pixel region-wise loss, (B, *S); see :func:`region_wise_loss`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> per_pixel = region_wise_loss_per_pixel(logits, labels)
        >>> torch.allclose(per_pixel.mean(dim=(1, 2)), region_wise_loss(logits, labels, reduction="none"))
        True
    """
    prepared = prepare(logits, target, mode=mode, ignore_index=ignore_index)
    return _region_wise_terms(prepared, spacing, include_background, backend, cache)


def _region_wise_terms(prepared: Prepared, spacing: Spacing, include_background: bool, backend: str,
                       cache) -> Tensor:
    weights = class_average_weights(prepared, include_background)
    maps = _target_maps(_regions(prepared), "rectified", spacing, _check_backend(backend), cache, _rectified_maps)
    maps = maps.to(prepared.logits.dtype)
    return _per_pixel_class_mean(maps * prepared.probs(), weights, prepared)


def region_wise_loss(
    logits: Tensor,
    target: Tensor,
    *,
    spacing: Spacing = None,
    include_background: bool = True,
    mode: str | None = None,
    ignore_index: int | None = None,
    backend: str = "auto",
    cache: DistanceMapCache | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Region-wise loss with rectified region-wise maps: probabilities weighted by a map that rewards
    mass inside each class (more so far from its border) and penalises it outside.

    .. math::
        L_i = \frac{1}{P_i\,C}\sum_c\sum_n p_{nc}\,z_{nc},\qquad
        z_c = \begin{cases} -d_c/\max d_c & \text{inside class } c\\ 1 & \text{outside}\end{cases}

    (SPEC D.22). An absent class has :math:`z\equiv 1`, a class covering the whole image
    :math:`z\equiv -1`. Values are negative at a good prediction; Valverde mixes it with CE or Dice.

    Reference: Valverde & Tohka, "Region-wise Loss for Biomedical Image Segmentation", Pattern
    Recognition 2023.

    Args:
        include_background: score channel 0 too (default True: every class, as in the paper).
        Others: as in :func:`boundary_loss`.

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Example:
        >>> labels = torch.tensor([[[0, 0, 0, 1, 1, 1]]])
        >>> perfect = 20.0 * torch.stack([labels == 0, labels == 1], dim=1).float()
        >>> round(region_wise_loss(perfect, labels).item(), 4)  # mean of -d/max d over each class: -2/3, /2 classes
        -0.3333
    """
    prepared = prepare(logits, target, mode=mode, ignore_index=ignore_index)
    per_pixel = _region_wise_terms(prepared, spacing, include_background, backend, cache)
    return reduce_images(prepared.image_mean(per_pixel), reduction)


# --------------------------------------------------------------------------- boundary DoU (Sun)


def _boundary_pixels(regions: Tensor) -> Tensor:
    """(B, C) number of region pixels whose cross neighbourhood (4 in 2D, 6 in 3D; zero padding) is not
    all inside the region."""
    spatial_dims = regions.ndim - 2
    size = 2 * spatial_dims + 1
    kernel = torch.zeros((3,) * spatial_dims, dtype=torch.float32, device=regions.device)
    centre = (1,) * spatial_dims
    kernel[centre] = 1.0
    for axis in range(spatial_dims):
        for offset in (0, 2):
            index = list(centre)
            index[axis] = offset
            kernel[tuple(index)] = 1.0
    convolve = F.conv2d if spatial_dims == 2 else F.conv3d
    flat = regions.flatten(0, 1).unsqueeze(1).float()
    cross_sums = convolve(flat, kernel.view(1, 1, *kernel.shape), padding=1).view(regions.shape)
    return ((cross_sums < size) & regions).flatten(2).sum(dim=2).to(torch.float32)


def boundary_dou_loss(
    logits: Tensor,
    target: Tensor,
    *,
    batch: bool = True,
    include_background: bool = True,
    mode: str | None = None,
    ignore_index: int | None = None,
    eps: float = 1e-5,
    reduction: str = "mean",
) -> Tensor:
    r"""Boundary difference over union loss: a Dice-like ratio whose intersection weight :math:`\alpha`
    grows with the object's size relative to its boundary.

    .. math::
        L_c = \frac{\sum p^2 + \sum t^2 - 2I}{\sum p^2 + \sum t^2 - (1+\alpha_c) I + \varepsilon},\qquad
        \alpha_c = \min\!\Big(1 - 2\,\frac{C_{b,c}+\varepsilon}{S_c+\varepsilon},\ 0.8\Big),

    :math:`I=\sum pt`, :math:`S_c` the target area and :math:`C_{b,c}` its boundary pixels (cross
    neighbourhood not all inside: 4-neighbours in 2D, 6 in 3D), averaged over classes. Pooled over the
    batch as in the reference code (``batch=True``; every image then gets the batch loss) or per image.
    Deviation: the numerator carries no :math:`\varepsilon`, so a class absent from target and
    prediction costs 0 (the library's empty-class rule) instead of 1; elsewhere the values differ by
    at most :math:`\varepsilon/(\text{denominator})`.

    Reference: Sun et al., "Boundary Difference Over Union Loss For Medical Image Segmentation",
    MICCAI 2023.

    Args:
        batch: pool the sums over the batch (default, the reference) or compute them per image.
        include_background: score channel 0 too (default True, as the reference).
        mode, ignore_index, reduction: as in :func:`~seglosses.pixel.cross_entropy`.
        eps: smoothing (> 0).

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Example:
        >>> labels = torch.zeros(1, 6, 6, dtype=torch.long)
        >>> labels[0, 1:5, 1:5] = 1
        >>> perfect = 20.0 * torch.stack([labels == 0, labels == 1], dim=1).float()
        >>> boundary_dou_loss(perfect, labels).item() < 1e-6 < boundary_dou_loss(-perfect, labels).item()
        True
    """
    check_type("batch", batch, bool)
    eps = check_number("eps", eps, low=0.0, low_inclusive=False)
    prepared = prepare(logits, target, mode=mode, ignore_index=ignore_index)
    if _spatial_count(prepared) not in (2, 3):
        fail("logits", "of shape (B, C, H, W) or (B, C, D, H, W)", tuple(logits.shape))
    weights = class_average_weights(prepared, include_background)
    probs, dense = prepared.mask(prepared.probs()), prepared.target
    intersection = spatial_sums(probs * dense)
    squares = spatial_sums(probs * probs) + spatial_sums(dense * dense)
    with torch.no_grad():
        regions = _regions(prepared)
        boundary, area = _boundary_pixels(regions), regions.flatten(2).sum(dim=2).to(torch.float32)
        if batch:
            boundary, area = boundary.sum(dim=0, keepdim=True), area.sum(dim=0, keepdim=True)
        alpha = (1.0 - 2.0 * (boundary + eps) / (area + eps)).clamp_max(0.8).to(probs.dtype)
    if batch:
        intersection, squares = intersection.sum(dim=0, keepdim=True), squares.sum(dim=0, keepdim=True)
    per_class = (squares - 2.0 * intersection).clamp_min(0.0) / (squares - (1.0 + alpha) * intersection + eps)
    per_image = (weights * per_class).sum(dim=1).expand(logits.shape[0]).contiguous()
    return reduce_images(per_image, reduction)


# --------------------------------------------------------------------------- modules


class _DistanceLoss(Loss):
    """Common options of the distance-map losses; ``cache_target_maps=True`` keeps the target maps of
    every image seen in a :class:`~seglosses.distance.DistanceMapCache` (for static targets)."""

    has_per_pixel = True

    def __init__(self, reduction: str, cache_target_maps: bool = False, **options) -> None:
        check_type("cache_target_maps", cache_target_maps, bool)
        options["cache"] = DistanceMapCache() if cache_target_maps else None
        options["spacing"] = _check_spacing(options.get("spacing"))
        _check_backend(options.get("backend", "auto"))
        super().__init__(reduction, **options)


@register_loss("boundary")
class BoundaryLoss(_DistanceLoss):
    """Module form of :func:`boundary_loss`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> torch.allclose(BoundaryLoss()(logits, labels), boundary_loss(logits, labels))
        True
    """

    function = staticmethod(boundary_loss)
    pixel_function = staticmethod(boundary_loss_per_pixel)

    def __init__(
        self,
        *,
        spacing: Spacing = None,
        include_background: bool = False,
        mode: str | None = None,
        ignore_index: int | None = None,
        backend: str = "auto",
        cache_target_maps: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__(
            reduction, cache_target_maps, spacing=spacing, include_background=include_background, mode=mode,
            ignore_index=ignore_index, backend=backend
        )


@register_loss("hausdorff_dt")
class HausdorffDTLoss(_DistanceLoss):
    """Module form of :func:`hausdorff_dt_loss`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> torch.allclose(HausdorffDTLoss()(logits, labels), hausdorff_dt_loss(logits, labels))
        True
    """

    function = staticmethod(hausdorff_dt_loss)
    pixel_function = staticmethod(hausdorff_dt_loss_per_pixel)

    def __init__(
        self,
        *,
        alpha: float = 2.0,
        spacing: Spacing = None,
        include_background: bool = False,
        mode: str | None = None,
        ignore_index: int | None = None,
        backend: str = "auto",
        cache_target_maps: bool = False,
        reduction: str = "mean",
    ) -> None:
        check_number("alpha", alpha, low=0.0, low_inclusive=False)
        super().__init__(
            reduction, cache_target_maps, alpha=alpha, spacing=spacing, include_background=include_background,
            mode=mode, ignore_index=ignore_index, backend=backend
        )


@register_loss("distance_map_ce")
class DistanceMapCELoss(_DistanceLoss):
    """Module form of :func:`distance_map_ce_loss`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> torch.allclose(DistanceMapCELoss()(logits, labels), distance_map_ce_loss(logits, labels))
        True
    """

    function = staticmethod(distance_map_ce_loss)
    pixel_function = staticmethod(distance_map_ce_loss_per_pixel)

    def __init__(
        self,
        *,
        spacing: Spacing = None,
        mode: str | None = None,
        ignore_index: int | None = None,
        backend: str = "auto",
        cache_target_maps: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__(
            reduction, cache_target_maps, spacing=spacing, mode=mode, ignore_index=ignore_index, backend=backend
        )


@register_loss("region_wise")
class RegionWiseLoss(_DistanceLoss):
    """Module form of :func:`region_wise_loss`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> torch.allclose(RegionWiseLoss()(logits, labels), region_wise_loss(logits, labels))
        True
    """

    function = staticmethod(region_wise_loss)
    pixel_function = staticmethod(region_wise_loss_per_pixel)

    def __init__(
        self,
        *,
        spacing: Spacing = None,
        include_background: bool = True,
        mode: str | None = None,
        ignore_index: int | None = None,
        backend: str = "auto",
        cache_target_maps: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__(
            reduction, cache_target_maps, spacing=spacing, include_background=include_background, mode=mode,
            ignore_index=ignore_index, backend=backend
        )


@register_loss("boundary_dou")
class BoundaryDoULoss(Loss):
    """Module form of :func:`boundary_dou_loss`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> torch.allclose(BoundaryDoULoss()(logits, labels), boundary_dou_loss(logits, labels))
        True
    """

    function = staticmethod(boundary_dou_loss)

    def __init__(
        self,
        *,
        batch: bool = True,
        include_background: bool = True,
        mode: str | None = None,
        ignore_index: int | None = None,
        eps: float = 1e-5,
        reduction: str = "mean",
    ) -> None:
        check_type("batch", batch, bool)
        check_number("eps", eps, low=0.0, low_inclusive=False)
        super().__init__(reduction, batch=batch, include_background=include_background, mode=mode,
                         ignore_index=ignore_index, eps=eps)



# --------------------------------------------------------------------------- active boundary (Wang)

# The eight neighbours (row, column offsets) in the reference's order: ties in the distance go to the
# first; index 8, the pixel itself, means it is already closest to the boundary (it is dropped).
ACTIVE_BOUNDARY_OFFSETS: tuple[tuple[int, int], ...] = (
    (1, 0), (-1, 0), (0, -1), (0, 1), (-1, 1), (1, 1), (-1, -1), (1, -1),
)
_FIRST_THRESHOLD, _THRESHOLD_STEP, _FAR = 1e-5, 1.2, 1e5


def _log_distributions(prepared: Prepared) -> Tensor:
    """(B, G, K, *S) log-probabilities: one categorical over the C classes (multiclass), or C Bernoulli
    variables (sigmoid modes), so that a KL divergence is one sum over (G, K) in every mode."""
    if prepared.mode == "multiclass":
        return prepared.logits.log_softmax(dim=1).unsqueeze(1)
    return torch.stack([F.logsigmoid(prepared.logits), F.logsigmoid(-prepared.logits)], dim=2)


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) per pixel, (B, *S), of (B, G, K, *S) log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=(1, 2))


@torch.no_grad()
def _predicted_boundary(log_p: Tensor, valid: Tensor, max_fraction: float) -> Tensor:
    """(B, H, W) pixels on the predicted boundary: the KL divergence to the lower plus to the right
    neighbour exceeds a threshold raised from 1e-5 by factors of 1.2 until at most ``max_fraction`` of
    the image's pixels exceed it, dilated 3x3. Pairs with an ignored pixel count 0."""
    batch, height, width = valid.shape
    combined = torch.zeros(valid.shape, dtype=log_p.dtype, device=log_p.device)
    combined[:, :-1] += _kl(log_p[..., :-1, :], log_p[..., 1:, :]) * (valid[:, :-1] & valid[:, 1:])
    combined[:, :, :-1] += _kl(log_p[..., :-1], log_p[..., 1:]) * (valid[:, :, :-1] & valid[:, :, 1:])
    allowed = math.floor(max_fraction * height * width)
    threshold = combined.new_full((batch,), _FIRST_THRESHOLD, dtype=torch.float64)
    if allowed < height * width:
        # the smallest 1e-5 * 1.2^k at or above the (allowed + 1)-th largest value, in closed form
        ceiling = combined.flatten(1).topk(allowed + 1, dim=1).values[:, -1].double()
        steps = torch.ceil(torch.log(ceiling / _FIRST_THRESHOLD) / math.log(_THRESHOLD_STEP)).clamp_min(0.0)
        threshold = _FIRST_THRESHOLD * _THRESHOLD_STEP**steps
        threshold = torch.where(threshold < ceiling, threshold * _THRESHOLD_STEP, threshold)  # rounding
    edges = (combined.double() > threshold.view(-1, 1, 1)).to(log_p.dtype).unsqueeze(1)
    return (F.max_pool2d(edges, 3, 1, 1).squeeze(1) > 0) & valid


@torch.no_grad()
def _gt_boundary_maps(regions: Tensor, spacing: Spacing, backend: str) -> Tensor:
    """(B, 1, H, W) the reference's distance map from (B, M, H, W) marks (class regions and the ignored
    pixels): a pixel is on the ground-truth boundary when a mark differs from its lower or right neighbour,
    or when it is ignored (the last mark); the map is max(d - 1, 0), d the distance to that boundary
    (``inf`` for an image without one)."""
    boundary = regions[:, -1].clone()
    boundary[:, :-1] |= (regions[:, :, :-1] != regions[:, :, 1:]).any(dim=1)
    boundary[:, :, :-1] |= (regions[..., :-1] != regions[..., 1:]).any(dim=1)
    distance = distance_transform(~boundary, spacing, spatial_dims=2, backend=backend)
    return (distance - 1.0).clamp_min(0.0).unsqueeze(1)


def _check_active_boundary_options(max_boundary_fraction, label_smoothing, max_distance) -> tuple[float, ...]:
    return (
        check_number("max_boundary_fraction", max_boundary_fraction, low=0.0, high=1.0),
        check_number("label_smoothing", label_smoothing, low=0.0, high=1.0),
        check_number("max_distance", max_distance, low=0.0, low_inclusive=False),
    )


def active_boundary_loss(
    logits: Tensor,
    target: Tensor,
    *,
    max_boundary_fraction: float = 0.01,
    label_smoothing: float = 0.2,
    max_distance: float = 20.0,
    detach_neighbours: bool = True,
    spacing: Spacing = None,
    mode: str | None = None,
    ignore_index: int | None = None,
    backend: str = "auto",
    cache: DistanceMapCache | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Active boundary loss: moves the predicted boundary toward the ground-truth boundary, one step
    (to one of the 8 neighbours) per pixel, through the KL divergences between neighbouring predictions.

    1. *Predicted boundary*: pixels whose :math:`\mathrm{KL}(p_n\|p_{down}) + \mathrm{KL}(p_n\|p_{right})`
       exceeds :math:`\epsilon`, with :math:`\epsilon` raised from 1e-5 by factors of 1.2 until at most
       ``max_boundary_fraction`` of the pixels remain, dilated 3x3 (no gradient).
    2. *Target direction*: of the pixel and its 8 neighbours, the one with the smallest ground-truth
       distance map :math:`D = \max(d-1, 0)`, :math:`d` the distance to the ground-truth boundary (pixels
       whose label differs from the lower or right neighbour, and ignored pixels); a pixel that is itself
       the closest is dropped. Ties go to the first neighbour in ``ACTIVE_BOUNDARY_OFFSETS``.
    3. *Loss*: the direction logits are :math:`\mathrm{KL}(\bar p_{m}\|p_n)` for the 8 neighbours
       :math:`m` (neighbours detached, edges replicated); a cross-entropy with label smoothing
       :math:`\varepsilon` (target :math:`1-\varepsilon` on the direction, :math:`\varepsilon/8` on the
       others) weighted by :math:`\min(D_n, D_{max})/D_{max}` and averaged over the kept pixels.

    Multiclass mode uses the softmax distribution; binary and multilabel modes the sum of the channels'
    Bernoulli KL divergences (binary equals multiclass with logits :math:`[0, z]`). 2D only (SPEC D.18).

    Differences from the reference (wangchi95/active-boundary-loss): the threshold is found per image
    (the reference counts the 1% over the whole batch) and the loss is the mean over images of each
    image's mean (the reference averages over all kept pixels of the batch); an image without a
    predicted boundary, or without a ground-truth boundary (where the reference's distances are
    undefined), contributes 0 and the loss is then 0 with a graph, never None; an ignored pixel is never
    a centre, its pairs count 0 in step 1 and as a neighbour it is replaced by the centre (KL 0), so its
    logits change nothing; the KL logits are not clipped (the reference's clamp has no effect).

    Reference: Wang et al., "Active Boundary Loss for Semantic Segmentation", AAAI 2022.

    Args:
        logits: (B, C, H, W) scores.
        target: labels (B, H, W) / (B, 1, H, W) or a dense (B, C, H, W) target (regions t > 0.5).
        max_boundary_fraction: the most pixels of an image on the predicted boundary before dilation
            (reference ``max_N_ratio`` 1/100).
        label_smoothing: :math:`\varepsilon` of the direction cross-entropy (reference 0.2).
        max_distance: :math:`D_{max}`, the distance where the weight saturates at 1 (reference 20).
        detach_neighbours: no gradient through the neighbours' predictions (reference ``isdetach=True``):
            only the kept pixels' own predictions are moved, so the gradient is by design not the derivative
            of the value; False gives the exact derivative.
        spacing: pixel spacing of the distance map (None: pixel units, as the reference).
        mode, ignore_index, backend, cache: as in :func:`boundary_loss`.
        reduction: "mean" or "sum" over images, or "none" for (B,).

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Example:
        >>> labels = torch.zeros(1, 8, 8, dtype=torch.long)
        >>> labels[0, :, 4:] = 1  # ground-truth boundary between columns 3 and 4
        >>> def logits(column):  # a prediction whose boundary lies before `column`
        ...     inside = torch.arange(8).view(1, 1, 8) >= column
        ...     return 4.0 * torch.stack([~inside, inside], dim=1).float().expand(1, 2, 8, 8)
        >>> def loss(column):  # a tiny image: let up to 20% of its pixels be boundary (default 1%)
        ...     return active_boundary_loss(logits(column), labels, max_boundary_fraction=0.2).item()
        >>> [round(loss(column), 3) for column in (2, 3, 4, 5, 6)]  # zero where the boundaries coincide
        [0.094, 0.034, 0.0, 0.026, 0.129]
    """
    max_fraction, label_smoothing, max_distance = _check_active_boundary_options(
        max_boundary_fraction, label_smoothing, max_distance
    )
    check_type("detach_neighbours", detach_neighbours, bool)
    prepared = prepare(logits, target, mode=mode, ignore_index=ignore_index)
    if len(prepared.spatial_dims) != 2:
        fail("logits", "of shape (B, C, H, W): the active boundary loss is 2D only", f"shape {tuple(logits.shape)}")
    backend = _check_backend(backend)
    valid = prepared.valid_bool()
    log_p = _log_distributions(prepared)
    centres = _predicted_boundary(log_p.detach(), valid, max_fraction)
    with torch.no_grad():
        marks = torch.cat([_regions(prepared), ~valid.unsqueeze(1)], dim=1)
        distance = _target_maps(marks, "active_boundary", _check_spacing(spacing), backend, cache, _gt_boundary_maps)
        distance = distance[:, 0].to(log_p.dtype)
        padded = F.pad(distance.unsqueeze(1), (1, 1, 1, 1), value=_FAR)[:, 0]
        height, width = distance.shape[1:]
        window = [(1 + dr, 1 + dc) for dr, dc in (*ACTIVE_BOUNDARY_OFFSETS, (0, 0))]
        candidates = torch.stack([padded[:, r : r + height, c : c + width] for r, c in window], dim=1)
        direction = candidates.argmin(dim=1)
        kept = centres & (direction < len(ACTIVE_BOUNDARY_OFFSETS)) & torch.isfinite(distance)
        weight = distance.clamp_max(max_distance) / max_distance
    batch, groups, outcomes = log_p.shape[:3]
    source = log_p.detach() if detach_neighbours else log_p
    neighbours = F.pad(source.flatten(1, 2), (1, 1, 1, 1), mode="replicate")
    neighbour_valid = F.pad(valid.unsqueeze(1).to(log_p.dtype), (1, 1, 1, 1), mode="replicate")[:, 0] > 0
    direction_logits = []
    for r, c in window[:-1]:
        neighbour = neighbours[..., r : r + height, c : c + width].view(batch, groups, outcomes, height, width)
        # an ignored neighbour is replaced by the centre itself (KL 0): its logits are never read
        neighbour = torch.where(neighbour_valid[:, None, None, r : r + height, c : c + width], neighbour, source)
        direction_logits.append(_kl(neighbour, log_p))
    log_direction = torch.stack(direction_logits, dim=1).log_softmax(dim=1)
    smoothed = torch.full_like(log_direction, label_smoothing / len(window[:-1]))
    smoothed.scatter_(1, direction.clamp_max(len(window) - 2).unsqueeze(1), 1.0 - label_smoothing)
    cross_entropy = -(smoothed * log_direction).sum(dim=1)
    per_pixel = torch.where(kept, cross_entropy * weight, 0.0)
    per_image = per_pixel.sum(dim=(1, 2)) / kept.sum(dim=(1, 2)).clamp_min(1).to(per_pixel.dtype)
    return reduce_images(per_image, reduction)


@register_loss("active_boundary")
class ActiveBoundaryLoss(Loss):
    """Module form of :func:`active_boundary_loss` (2D); ``cache_target_maps=True`` keeps each target's
    distance map (static targets).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 16, 16), torch.randint(0, 3, (2, 16, 16))
        >>> torch.allclose(ActiveBoundaryLoss()(logits, labels), active_boundary_loss(logits, labels))
        True
    """

    spatial_dims = (2,)
    function = staticmethod(active_boundary_loss)

    def __init__(
        self,
        *,
        max_boundary_fraction: float = 0.01,
        label_smoothing: float = 0.2,
        max_distance: float = 20.0,
        detach_neighbours: bool = True,
        spacing: Spacing = None,
        mode: str | None = None,
        ignore_index: int | None = None,
        backend: str = "auto",
        cache_target_maps: bool = False,
        reduction: str = "mean",
    ) -> None:
        _check_active_boundary_options(max_boundary_fraction, label_smoothing, max_distance)
        check_type("detach_neighbours", detach_neighbours, bool)
        check_type("cache_target_maps", cache_target_maps, bool)
        super().__init__(
            reduction, max_boundary_fraction=max_boundary_fraction, label_smoothing=label_smoothing,
            max_distance=max_distance, detach_neighbours=detach_neighbours, spacing=_check_spacing(spacing),
            mode=mode, ignore_index=ignore_index,
            backend=_check_backend(backend), cache=DistanceMapCache() if cache_target_maps else None,
        )



# --------------------------------------------------------------------------- boundary-aware (Hayder)


def _check_bins(max_distance: int, bins: int) -> None:
    check_type("max_distance", max_distance, int)
    if max_distance < 1:
        fail("max_distance", "a positive integer (the truncation R, in pixels)", max_distance)
    check_type("bins", bins, int)
    if not 1 <= bins <= max_distance:
        fail("bins", f"an integer in [1, max_distance={max_distance}] (each bin holds at least one distance)", bins)


def _check_head(logits: Tensor, bins: int) -> None:
    """The logits are a K-channel head: one binary channel per distance bin."""
    check_logits(logits)
    if logits.shape[1] != bins:
        fail("logits", f"of shape (B, bins, *S) with one channel per distance bin (bins={bins}); the boundary-"
             "aware loss needs a K-channel head, not class scores", f"{logits.shape[1]} channels")


def _bin_radii(max_distance: int, bins: int) -> list[int]:
    """Radius of the disk each bin stands for: the bin's smallest truncated distance minus one."""
    return [bin_index * max_distance // bins for bin_index in range(bins)]


@torch.no_grad()
def boundary_aware_target(mask: Tensor, *, max_distance: int = 5, bins: int = 5, backend: str = "auto") -> Tensor:
    r"""The K binary maps of Hayder's boundary-aware representation of (B, H, W) or (B, D, H, W) masks.

    Inside the mask, :math:`D(n) = \min(\lceil d(n)\rceil, R)` with :math:`d` the distance to the nearest
    pixel outside it (:func:`~seglosses.distance.distance_transform`; a mask without an outside pixel has
    :math:`D = R`), quantised uniformly into K bins: bin :math:`k` holds
    :math:`D \in (kR/K, (k+1)R/K]`. Outside the mask every map is 0. The image border is not a
    boundary (scipy's semantics: an object cut by the border continues beyond it).

    Args:
        mask: (B, H, W) or (B, D, H, W) masks (boolean, integer 0/1, or float with the region t > 0.5).
        max_distance, bins: as in :func:`boundary_aware_loss`.
        backend: distance kernel, "auto", "scipy" or "torch".

    Returns:
        (B, K, *S) float maps, one-hot over the bins inside the mask and all zero outside it.

    Example:
        >>> mask = torch.zeros(1, 1, 7, dtype=torch.bool)
        >>> mask[0, 0, 1:6] = True  # a one-row image: distances 1, 2, 3, 2, 1 along the row, truncated at R = 2
        >>> boundary_aware_target(mask, max_distance=2, bins=2)[0, :, 0].int()
        tensor([[0, 1, 0, 0, 0, 1, 0],
                [0, 0, 1, 1, 1, 0, 0]], dtype=torch.int32)
    """
    _check_bins(max_distance, bins)
    check_type("mask", mask, Tensor)
    if mask.ndim not in (3, 4):
        fail("mask", "of shape (B, H, W) or (B, D, H, W)", f"shape {tuple(mask.shape)}")
    mask = mask.bool() if mask.dtype == torch.bool or not mask.is_floating_point() else mask > 0.5
    distance = distance_transform(mask, None, spatial_dims=mask.ndim - 1, backend=_check_backend(backend))
    truncated = torch.ceil(distance).clamp_max(max_distance).long()  # 0 outside, 1..R inside
    index = (truncated * bins + max_distance - 1) // max_distance  # 0 outside, 1..K inside
    return F.one_hot(index, bins + 1)[..., 1:].movedim(-1, 1).float()


def boundary_aware_masks(logits: Tensor, *, max_distance: int = 5, bins: int = 5, threshold: float = 0.5) -> Tensor:
    """Masks from a boundary-aware head, as a union of disks (the inverse distance transform of BAIS).

    Each pixel whose most probable bin has probability above ``threshold`` draws a disk of that bin's
    radius (its smallest truncated distance minus one, so the disk of a correct pixel never leaves the
    object); the mask is the union. Exact on correct bins: every object pixel covers itself.

    Args:
        logits: (B, K, H, W) or (B, K, D, H, W) scores of the head.
        max_distance, bins: as in :func:`boundary_aware_loss`.
        threshold: the probability a bin needs to count.

    Returns:
        (B, *S) boolean masks.

    Example:
        >>> disc = (torch.arange(-4, 5).view(-1, 1) ** 2 + torch.arange(-4, 5) ** 2 <= 9).unsqueeze(0)
        >>> bins = boundary_aware_target(disc)
        >>> torch.equal(boundary_aware_masks(20.0 * (2 * bins - 1)), disc)
        True
    """
    _check_bins(max_distance, bins)
    _check_head(logits, bins)
    threshold = check_number("threshold", threshold, low=0.0, high=1.0)
    with torch.no_grad():
        probs = logits.detach().float().sigmoid()
        best, index = probs.max(dim=1)
        spatial_dims = logits.ndim - 2
        convolve = F.conv2d if spatial_dims == 2 else F.conv3d
        masks = torch.zeros_like(best, dtype=torch.bool)
        for bin_index, radius in enumerate(_bin_radii(max_distance, bins)):
            centres = ((index == bin_index) & (best > threshold)).float().unsqueeze(1)
            axis = torch.arange(-radius, radius + 1, device=logits.device, dtype=torch.float32)
            squared = sum(a**2 for a in torch.meshgrid(*([axis] * spatial_dims), indexing="ij"))
            disk = (squared <= radius**2).float()[None, None]
            masks |= convolve(centres, disk, padding=radius)[:, 0] > 0.5
    return masks


def _boundary_aware_terms(logits: Tensor, target: Tensor, max_distance: int, bins: int, mode: str | None,
                          ignore_index: int | None, backend: str, cache) -> tuple[Prepared, Tensor]:
    """The prepared binary target and the (B, *S) per-pixel sum over bins of the binary cross-entropies."""
    _check_bins(max_distance, bins)
    _check_head(logits, bins)
    if mode not in (None, "binary"):
        fail("mode", "None or 'binary' (the target is one binary mask per image; the logits hold one channel per "
             "distance bin)", repr(mode))
    if value_checks_enabled() and not LOGITS_CHECKED_AFTER.get():
        check_finite_tensor("logits", logits)
    prepared = prepare(logits[:, :1], target, mode="binary", ignore_index=ignore_index)  # validates the mask
    regions = _regions(prepared) & prepared.valid_bool().unsqueeze(1)  # ignored pixels count as outside

    def make(regions: Tensor, spacing: Spacing, backend: str) -> Tensor:
        return boundary_aware_target(regions[:, 0], max_distance=max_distance, bins=bins, backend=backend)

    maps = _target_maps(regions, f"boundary_aware R={max_distance} K={bins}", None, _check_backend(backend), cache,
                        make)
    logits = logits.to(prepared.logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, maps.to(logits.dtype), reduction="none").sum(dim=1)
    return prepared, prepared.mask(bce)


def boundary_aware_loss_per_pixel(
    logits: Tensor,
    target: Tensor,
    *,
    max_distance: int = 5,
    bins: int = 5,
    mode: str | None = None,
    ignore_index: int | None = None,
    backend: str = "auto",
    cache: DistanceMapCache | None = None,
) -> Tensor:
    """Per-pixel boundary-aware loss, (B, *S): the sum over the K bins of the binary cross-entropies; see
    :func:`boundary_aware_loss`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, mask = torch.randn(2, 5, 8, 8), torch.randint(0, 2, (2, 8, 8))
        >>> per_pixel = boundary_aware_loss_per_pixel(logits, mask)
        >>> torch.allclose(per_pixel.mean(dim=(1, 2)), boundary_aware_loss(logits, mask, reduction="none"))
        True
    """
    return _boundary_aware_terms(logits, target, max_distance, bins, mode, ignore_index, backend, cache)[1]


def boundary_aware_loss(
    logits: Tensor,
    target: Tensor,
    *,
    max_distance: int = 5,
    bins: int = 5,
    mode: str | None = None,
    ignore_index: int | None = None,
    backend: str = "auto",
    cache: DistanceMapCache | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Boundary-aware loss (BAIS): K binary cross-entropies against the quantised truncated distance
    transform of a binary mask, for a head that predicts the distance bins.

    **The head it expects** is not a class-score output: ``logits`` (B, K, *S) hold one sigmoid channel per
    distance bin (K = ``bins``). The target is one binary mask per image, labels (B, *S) / (B, 1, *S) in
    {0, 1} or a dense (B, 1, *S) mask (its region is t > 0.5), from which :func:`boundary_aware_target`
    builds the K maps: inside the object :math:`D = \min(\lceil d\rceil, R)`, :math:`d` the distance to the
    nearest outside pixel, in bin :math:`k` when :math:`D \in (kR/K, (k+1)R/K]`; outside it every map is 0.

    .. math::
        L_i = \frac{1}{P_i}\sum_n\sum_{k=1}^{K} \mathrm{BCE}(z_{nk}, b_{nk}).

    Masks are recovered from a prediction with :func:`boundary_aware_masks` (union of disks). For several
    classes or instances, apply it per mask (the paper applies it per object proposal). Defaults (our
    choice; SPEC D.17 leaves R and K to the dataset): R = 5 pixels, K = 5, one bin per integer distance.
    2D and 3D (balls). Ignored pixels carry no loss and count as outside the object when distances are
    measured. Inside :class:`~seglosses.TopKBottomSigma`, group pixels by ``pixel_groups="image"`` or
    ``"class"`` (the mask's label, the default): ``"class_prediction"`` reads the logits as class scores.

    Reference: Hayder, He & Salzmann, "Boundary-aware Instance Segmentation", CVPR 2017.

    Args:
        logits: (B, K, H, W) or (B, K, D, H, W) scores of the K-bin head.
        target: the binary mask, labels (B, *S) / (B, 1, *S) or a dense (B, 1, *S) mask.
        max_distance: the truncation :math:`R` in pixels (a positive integer, default 5).
        bins: the number of bins :math:`K`, 1 to ``max_distance`` (default 5); the logits' channels.
        mode: None or "binary" (the only target kind: one binary mask).
        ignore_index: label value whose pixels count for nothing.
        backend, cache: as in :func:`boundary_loss`.
        reduction: "mean" or "sum" over images, or "none" for (B,).

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Example:
        >>> mask = torch.zeros(1, 9, 9, dtype=torch.long)
        >>> mask[0, 2:7, 2:7] = 1
        >>> perfect = 20.0 * (2 * boundary_aware_target(mask) - 1)
        >>> boundary_aware_loss(perfect, mask).item() < 1e-6 < boundary_aware_loss(-perfect, mask).item()
        True
    """
    prepared, per_pixel = _boundary_aware_terms(logits, target, max_distance, bins, mode, ignore_index, backend,
                                                cache)
    return reduce_images(prepared.image_mean(per_pixel), reduction)


@register_loss("boundary_aware")
class BoundaryAwareLoss(Loss):
    """Module form of :func:`boundary_aware_loss`: logits from a K-channel distance-bin head, a binary mask
    target; ``cache_target_maps=True`` keeps each target's bin maps (static targets).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, mask = torch.randn(2, 5, 8, 8), torch.randint(0, 2, (2, 8, 8))
        >>> torch.allclose(BoundaryAwareLoss()(logits, mask), boundary_aware_loss(logits, mask))
        True
    """

    modes = ("binary",)
    has_per_pixel = True
    function = staticmethod(boundary_aware_loss)
    pixel_function = staticmethod(boundary_aware_loss_per_pixel)

    def __init__(
        self,
        *,
        max_distance: int = 5,
        bins: int = 5,
        mode: str | None = None,
        ignore_index: int | None = None,
        backend: str = "auto",
        cache_target_maps: bool = False,
        reduction: str = "mean",
    ) -> None:
        _check_bins(max_distance, bins)
        check_type("cache_target_maps", cache_target_maps, bool)
        super().__init__(
            reduction, max_distance=max_distance, bins=bins, mode=mode, ignore_index=ignore_index,
            backend=_check_backend(backend), cache=DistanceMapCache() if cache_target_maps else None,
        )

    def check_mode(self, logits: Tensor) -> str:
        """The logits are the K-bin head (checked first); the target is a binary mask."""
        _check_head(logits, self.options["bins"])
        return "binary"



# --------------------------------------------------------------------------- conditional boundary (Wu)


def _check_conditional_options(weight: float, temperature: float, window: int) -> tuple[float, float]:
    check_type("window", window, int)
    if window < 3 or window % 2 == 0:
        fail("window", "an odd integer >= 3 (the neighbourhood's side)", window)
    return check_number("weight", weight, low=0.0), check_number("temperature", temperature, low=0.0,
                                                                 low_inclusive=False)


def _check_features(features: Tensor | None, logits: Tensor) -> Tensor:
    """Decoder features (B, F, *S) at the logits' resolution."""
    expected = "the decoder features, a floating-point tensor (B, F, *S) at the logits' resolution " \
        "(call loss(logits, target, features=...))"
    if features is None:
        fail("features", expected, "None", TypeError)
    if not isinstance(features, Tensor) or not features.is_floating_point():
        fail("features", expected, describe(features), TypeError)
    if features.ndim != logits.ndim or features.shape[0] != logits.shape[0] or features.shape[2:] != logits.shape[2:]:
        fail("features", f"of shape ({logits.shape[0]}, F, {', '.join(map(str, logits.shape[2:]))}) like the logits",
             f"shape {tuple(features.shape)}")
    if features.device != logits.device:
        fail("features", f"on the device of `logits` ({logits.device})", features.device)
    return features


def _shifted(x: Tensor, offset: tuple[int, ...], radius: int, fill: float) -> Tensor:
    """x (B, [F,] *S) read at position + offset, ``fill`` outside the image."""
    spatial = len(offset)
    padded = F.pad(x, (radius,) * (2 * spatial), value=fill)
    index = [slice(radius + o, radius + o + size) for o, size in zip(offset, x.shape[-spatial:], strict=True)]
    return padded[(..., *index)]


def conditional_boundary_loss(
    logits: Tensor,
    target: Tensor,
    features: Tensor | None = None,
    *,
    weight: float = 1.0,
    temperature: float = 0.1,
    window: int = 3,
    mode: str | None = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Conditional boundary loss: cross-entropy plus, at every ground-truth boundary pixel, a pull of its
    decoder feature toward its correctly classified same-class neighbours and away from its correctly
    classified different-class neighbours.

    Call it as ``loss(logits, target, features=decoder_features)``. For an anchor :math:`i` (a counted
    pixel with a counted neighbour of another class in its ``window``-sized neighbourhood), with
    L2-normalised features :math:`\hat f`, positives :math:`P_i` (neighbours of its class whose prediction is
    right) and negatives :math:`N_i` (neighbours of another class whose prediction is right), anchors with
    :math:`P_i \ne \emptyset` get

    .. math::
        \mathrm{A2C}_i = \Big\|\hat f_i - \tfrac{1}{|P_i|}\textstyle\sum_{p\in P_i}\hat f_p\Big\|^2,\qquad
        \mathrm{A2PN}_i = \frac{1}{|P_i|}\sum_{p\in P_i} -\log\frac{e^{\hat f_i\cdot\hat f_p/\tau}}
        {e^{\hat f_i\cdot\hat f_p/\tau} + \sum_{n\in N_i} e^{\hat f_i\cdot\hat f_n/\tau}},

    and :math:`L_i = \mathrm{CE}_i + w\,\frac{1}{|A_i|}\sum_{i\in A_i}(\mathrm{A2C}_i + \mathrm{A2PN}_i)`
    (0 for an image without anchors). Selection (boundary, correctness) carries no gradient: the CBL term
    trains the features, the CE term the logits. Multiclass (softmax, argmax predictions) and binary
    (sigmoid, :math:`z > 0`); 2D and 3D (a cubic neighbourhood; the original is 2D). Cost: a few passes
    over the (B, F, *S) features per neighbour (8 in 2D, 26 in 3D), forward and backward; about 6 s per
    step for 8 x 32 x 256 x 256 features on one loaded CPU core, so pass features at a modest width.

    **Reconstructed from the paper's description**: no reference code was available here. The A2C term as
    a squared distance to the local centre, the InfoNCE form of A2P&N, the 3x3 neighbourhood, :math:`w = 1`
    and :math:`\tau = 0.1` are our reading, unverified against the original (SPEC D.20).

    Reference: Wu et al., "Conditional Boundary Loss for Semantic Segmentation", IEEE TIP 2023.

    Args:
        logits: (B, C, H, W) or (B, C, D, H, W) scores.
        target: labels (B, *S) / (B, 1, *S) or a dense (B, C, *S) target (its argmax is the class).
        features: (B, F, *S) decoder features at the logits' resolution (upsample them first if needed).
        weight: :math:`w`, the weight of the CBL term beside the CE (>= 0; 0 gives plain CE).
        temperature: :math:`\tau` of the A2P&N softmax.
        window: side of the neighbourhood (odd, >= 3).
        mode: "multiclass" or "binary"; inferred from C when None.
        ignore_index: label value whose pixels count for nothing (neither anchors nor neighbours).
        reduction: "mean" or "sum" over images, or "none" for (B,).

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Example:
        >>> labels = torch.zeros(1, 6, 6, dtype=torch.long)
        >>> labels[0, :, 3:] = 1
        >>> logits = 5.0 * torch.stack([labels == 0, labels == 1], dim=1).float()
        >>> separated = torch.stack([labels == 0, labels == 1], dim=1).float()  # features aligned with the classes
        >>> mixed = torch.ones(1, 2, 6, 6)  # the same feature everywhere
        >>> def cbl(features): return conditional_boundary_loss(logits, labels, features=features).item()
        >>> bool(cbl(separated) < cbl(mixed))
        True
    """
    weight, temperature = _check_conditional_options(weight, temperature, window)
    prepared = prepare(logits, target, mode=mode, ignore_index=ignore_index)
    if prepared.mode == "multilabel":
        fail("mode", "'multiclass' or 'binary' for the conditional boundary loss (a pixel has one class)",
             repr(prepared.mode))
    features = _check_features(features, logits)
    cross_entropy = prepared.image_mean(cross_entropy_map(prepared, None))
    spatial_dims = len(prepared.spatial_dims)
    with torch.no_grad():
        valid = prepared.valid_bool()
        if prepared.mode == "multiclass":
            classes, predicted = prepared.target.argmax(dim=1), prepared.logits.argmax(dim=1)
        else:
            classes, predicted = (prepared.target[:, 0] > 0.5).long(), (prepared.logits[:, 0] > 0).long()
        classes = classes.masked_fill(~valid, -1)  # ignored pixels are no one's neighbours
        correct = (predicted == classes) & valid
    unit = F.normalize(features.to(prepared.logits.dtype), dim=1)
    radius = window // 2
    padded_unit = F.pad(unit, (radius,) * (2 * spatial_dims))  # once; each neighbour is a view of it
    spatial = unit.shape[2:]
    boundary = torch.zeros_like(valid)
    positives = torch.zeros(valid.shape, dtype=unit.dtype, device=unit.device)
    centre_sum = torch.zeros_like(unit)
    similarities, positive_masks, negative_masks = [], [], []
    for offset in itertools.product(range(-radius, radius + 1), repeat=spatial_dims):
        if not any(offset):
            continue
        with torch.no_grad():
            neighbour_class = _shifted(classes, offset, radius, -1)
            neighbour_correct = _shifted(correct, offset, radius, False)
            counted = valid & (neighbour_class >= 0)
            same, other = counted & (neighbour_class == classes), counted & (neighbour_class != classes)
            boundary |= other
            positive, negative = same & neighbour_correct, other & neighbour_correct
        window_slices = (slice(radius + o, radius + o + n) for o, n in zip(offset, spatial, strict=True))
        neighbour = padded_unit[(..., *window_slices)]
        positives = positives + positive
        centre_sum = torch.addcmul(centre_sum, neighbour, positive.unsqueeze(1).to(unit.dtype))
        similarities.append((unit * neighbour).sum(dim=1) / temperature)
        positive_masks.append(positive)
        negative_masks.append(negative)
    similarity = torch.stack(similarities, dim=1)
    is_positive, is_negative = torch.stack(positive_masks, dim=1), torch.stack(negative_masks, dim=1)
    anchors = boundary & (positives > 0)
    centre = centre_sum / positives.clamp_min(1.0).unsqueeze(1)
    a2c = ((unit - centre) ** 2).sum(dim=1)
    # log sum over the negatives; a large finite stand-in for "no negative" keeps the gradient finite
    negatives = torch.logsumexp(torch.where(is_negative, similarity, -1e9), dim=1, keepdim=True)
    contrast = torch.logaddexp(similarity, negatives) - similarity
    a2pn = (contrast * is_positive).sum(dim=1) / positives.clamp_min(1.0)
    per_anchor = torch.where(anchors, a2c + a2pn, 0.0)
    pixel_dims = tuple(range(1, per_anchor.ndim))
    cbl = per_anchor.sum(dim=pixel_dims) / anchors.sum(dim=pixel_dims).clamp_min(1).to(per_anchor.dtype)
    return reduce_images(cross_entropy + weight * cbl, reduction)


@register_loss("conditional_boundary")
class ConditionalBoundaryLoss(Loss):
    """Module form of :func:`conditional_boundary_loss`, called as ``loss(logits, target, features=...)``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels, features = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8)), torch.randn(2, 4, 8, 8)
        >>> loss = ConditionalBoundaryLoss()
        >>> torch.allclose(loss(logits, labels, features=features),
        ...                conditional_boundary_loss(logits, labels, features=features))
        True
    """

    modes = ("multiclass", "binary")
    function = staticmethod(conditional_boundary_loss)

    def __init__(
        self,
        *,
        weight: float = 1.0,
        temperature: float = 0.1,
        window: int = 3,
        mode: str | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
    ) -> None:
        _check_conditional_options(weight, temperature, window)
        super().__init__(reduction, weight=weight, temperature=temperature, window=window, mode=mode,
                         ignore_index=ignore_index)

    def per_image(self, logits: Tensor, target: Tensor, features: Tensor | None = None) -> Tensor:
        """Loss of each image, (B,); ``features`` (B, F, *S) are the decoder features."""
        self.check_mode(logits)
        return conditional_boundary_loss(logits, target, features, **self.options, reduction="none")

    def per_pixel(self, logits: Tensor, target: Tensor, features: Tensor | None = None) -> Tensor:
        """No per-pixel form (the boundary term is a mean over the anchors): raises the library's TypeError."""
        return Loss.per_pixel(self, logits, target)

    def forward(self, logits: Tensor, target: Tensor, features: Tensor | None = None) -> Tensor:
        """The loss of ``logits`` against ``target`` given the decoder ``features``, reduced over images.

        Args:
            logits: (B, C, H, W) or (B, C, D, H, W) raw scores (never probabilities).
            target: integer labels (B, *S) or (B, 1, *S), or a dense (B, C, *S) target.
            features: (B, F, *S) decoder features at the logits' resolution (required).

        Returns:
            A scalar for ``reduction`` "mean" or "sum", the (B,) per-image losses for "none".
        """
        self.check_mode(logits)
        return conditional_boundary_loss(logits, target, features, **self.options, reduction=self.reduction)
