r"""Surface metrics per image and class: Hausdorff distance, HD95, ASSD and normalised surface Dice.

Design (STYLE.md 2): :func:`surface_values` is the *update* step (validate, then for every
(image, class) pair the two directed sets of surface distances, summarised into the requested
raw values); :func:`apply_empty_rules` plus the averaging is the *compute* step. The
accumulator :class:`~seglosses.metrics.SegmentationMetrics` stores the same raw values per unit.

Definitions (SPEC E). The surface of a mask X is ``X \ erode(X)`` (connectivity-1 element, the
outside of the image counts as background). For surfaces :math:`\partial P` (prediction) and
:math:`\partial G` (target), the directed distance sets are
:math:`D_{PG} = \{d(x, \partial G) : x \in \partial P\}` and :math:`D_{GP}` likewise, with exact
Euclidean distances between voxel centres in spacing units (voxels when no spacing is given).

- HD: :math:`\max(D_{PG} \cup D_{GP})`.
- HD at percentile q, ``hd95_mode="pooled"`` (default; medpy ``hd95``, the TransUNet /
  G-CASCADE / BDoU test code): :math:`P_q(D_{PG} \cup D_{GP})`, numpy's linear interpolation.
  ``hd95_mode="max"`` (MONAI): :math:`\max(P_q(D_{PG}), P_q(D_{GP}))`.
- ASSD, ``assd_mode="pooled"`` (default; MONAI ``symmetric=True``, Heimann et al. 2009):
  :math:`(\sum D_{PG} + \sum D_{GP}) / (|D_{PG}| + |D_{GP}|)`, also medpy >= 0.5 ``assd``.
  ``assd_mode="mean"`` (medpy <= 0.4 ``assd``, still vendored by much published code):
  :math:`(\overline{D_{PG}} + \overline{D_{GP}}) / 2`.
- NSD at tolerance :math:`\tau` (MONAI ``compute_surface_dice`` without sub-voxels):
  :math:`(|\{d \in D_{PG} : d \le \tau\}| + |\{d \in D_{GP} : d \le \tau\}|) / (|D_{PG}| + |D_{GP}|)`.

Empty masks. ``empty="strict"`` (default): both empty -> distances 0, NSD 1; exactly one empty ->
distances NaN (undefined: excluded from every mean and counted by the accumulator), or the image
diagonal :math:`\sqrt{\sum_i (n_i s_i)^2}` with ``empty_hd="diag"``; NSD 0.
``empty="transunet_compat"``: prediction empty -> distances 0, NSD 0; target empty and prediction
not -> distances 0, NSD 1 (the published code returns HD95 = 0 in both cases).
Averaging: ``"none"`` (B, C'), ``"class"`` (C',), ``"macro"`` (images then classes). A missed or
hallucinated structure (exactly one empty mask, NaN under ``empty="strict"``) makes the functional
average NaN, so that it cannot hide: a function has no room to return the count beside the mean.
:class:`~seglosses.metrics.SegmentationMetrics` follows SPEC E instead: it excludes those units
from the mean and reports their number as ``m/undefined``. For the excluding mean of a function,
take ``average="none"`` and ``torch.nanmean``; for a finite penalty, ``empty_hd="diag"``.

Inputs are integer label maps (B, *S) or (B, C, *S) float 0/1 masks (one-hot or overlapping
multilabel regions, each channel its own structure), tensors or NumPy arrays.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from seglosses._checks import check_one_of, check_type, fail
from seglosses.metrics._distance import surface_distances_numpy, surface_distances_torch
from seglosses.metrics._inputs import (
    ASSD_MODES,
    EMPTY_DISTANCES,
    EMPTY_MODES,
    PERCENTILE_MODES,
    check_average,
    check_empty,
    check_empty_distance,
    check_percentile,
    device_of,
    evaluated_classes,
    resolve_maps,
    resolve_spacing,
    resolve_tolerance,
)

SURFACE_AVERAGES: tuple[str, ...] = ("none", "class", "macro")
SURFACE_KINDS: tuple[str, ...] = ("hausdorff", "assd", "nsd")

__all__ = [
    "SurfaceMetric",
    "SurfaceValues",
    "apply_empty_rules",
    "assd",
    "hausdorff_distance",
    "hd95",
    "surface_dice",
    "surface_distances",
    "surface_values",
]


@dataclass(frozen=True)
class SurfaceMetric:
    """What to compute from the two directed distance sets of one (unit, class).

    Attributes:
        kind: "hausdorff" (HD, or a percentile of it), "assd" or "nsd".
        percentile: for "hausdorff": None for the maximum, else q in [0, 100].
        mode: "pooled" or "max" for a Hausdorff percentile; "pooled" or "mean" for ASSD.
        tolerance: for "nsd": tau per class, length num_classes, in spacing units.

    Example:
        >>> forward, backward = np.array([0.0, 1.0, 2.0]), np.array([1.0])  # the two directed distance sets
        >>> round(SurfaceMetric("hausdorff", percentile=95.0).summarise(forward, backward, 0), 4)
        1.85
        >>> float(SurfaceMetric("assd").summarise(forward, backward, 0))
        1.0
    """

    kind: str
    percentile: float | None = None
    mode: str = "pooled"
    tolerance: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        check_one_of("kind", self.kind, SURFACE_KINDS)
        if self.kind == "hausdorff":
            check_percentile(self.percentile)
            check_one_of("hd95_mode", self.mode, PERCENTILE_MODES)
        if self.kind == "assd":
            check_one_of("assd_mode", self.mode, ASSD_MODES)
        if self.kind == "nsd" and self.tolerance is None:
            fail("tolerance", "given for the surface Dice", None)

    def summarise(self, forward: np.ndarray, backward: np.ndarray, class_index: int) -> float:
        """The value of this metric from the directed distances of one (unit, class)."""
        if self.kind == "nsd":
            tolerance = self.tolerance[class_index]
            within = np.count_nonzero(forward <= tolerance) + np.count_nonzero(backward <= tolerance)
            return within / (forward.size + backward.size)
        if self.kind == "assd":
            if self.mode == "mean":
                return (forward.mean() + backward.mean()) / 2
            return (forward.sum() + backward.sum()) / (forward.size + backward.size)
        if self.percentile is None:
            return max(forward.max(), backward.max())
        if self.mode == "max":
            return max(np.percentile(forward, self.percentile), np.percentile(backward, self.percentile))
        return float(np.percentile(np.concatenate([forward, backward]), self.percentile))


@dataclass(frozen=True)
class SurfaceValues:
    """Raw surface metrics of a batch (the *update* step's result).

    Attributes:
        values: name -> (B, C') float64, NaN wherever the prediction or the target is empty.
        pred_empty: (B, C') bool, the class is absent from the prediction.
        target_empty: (B, C') bool, the class is absent from the target.
        diagonal: (B,) float64 image diagonal in spacing units (for ``empty_hd="diag"``).

    Example:
        >>> pred = torch.zeros(1, 5, 5, dtype=torch.long); pred[0, 1:3, 1:3] = 1
        >>> target = torch.zeros(1, 5, 5, dtype=torch.long); target[0, 1:4, 1:4] = 1
        >>> raw = surface_values(pred, target, 2, {"hd": SurfaceMetric("hausdorff"), "assd": SurfaceMetric("assd")})
        >>> sorted(raw.values), raw.values["hd"].shape, raw.pred_empty
        (['assd', 'hd'], torch.Size([1, 1]), tensor([[False]]))
        >>> raw.diagonal  # sqrt(5 ** 2 + 5 ** 2) voxels
        tensor([7.0711], dtype=torch.float64)
    """

    values: dict[str, Tensor]
    pred_empty: Tensor
    target_empty: Tensor
    diagonal: Tensor


def _uses_torch_kernel(device: torch.device) -> bool:
    """CUDA tensors stay on the GPU (torch kernel); CPU tensors take the faster numpy/scipy kernel."""
    return device.type == "cuda"


def _workers() -> int:
    return max(1, torch.get_num_threads())


def _order_statistics(metrics: dict[str, SurfaceMetric]) -> tuple[tuple[str, float], ...] | None:
    """The (scope, percentile) order statistics the metrics read, or None when one needs every
    distance (ASSD, NSD): HD and HD95 only need the distances at a few ranks to be exact."""
    if not metrics or any(metric.kind != "hausdorff" for metric in metrics.values()):
        return None
    return tuple(
        ("pooled", 100.0) if metric.percentile is None  # the larger maximum is the pooled maximum
        else ("pooled" if metric.mode == "pooled" else "max", float(metric.percentile))
        for metric in metrics.values()
    )


def surface_values(
    pred: Tensor,
    target: Tensor,
    num_classes: int,
    metrics: dict[str, SurfaceMetric],
    *,
    spacing: object = None,
    include_background: bool = False,
) -> SurfaceValues:
    r"""Raw surface metrics of every (image, class) pair, computed from one pass of distances per pair.

    .. math::
        v_{b,c} = f\big(D_{PG}^{b,c}, D_{GP}^{b,c}\big) \text{ for each requested summary } f

    with the directed distance sets of the module docstring (exact, in spacing units). When every
    requested metric is an HD or HD percentile, only the distances at the ranks those read are
    computed exactly (the same values, much faster on poor predictions).
    Reference: SPEC E; the update step of STYLE.md 2.

    Args:
        pred: (B, *S) integer predicted labels, S = (H, W) or (D, H, W).
        target: (B, *S) integer target labels.
        num_classes: number of classes C, background included.
        metrics: name -> :class:`SurfaceMetric`.
        spacing: None (voxel units), a number, one value per spatial axis, or a (B, len(S)) table.
        include_background: also score class 0.

    Returns:
        :class:`SurfaceValues`; (image, class) pairs with an empty mask hold NaN.

    Example:
        >>> pred = torch.zeros(1, 5, 5, dtype=torch.long); pred[0, 1:3, 1:3] = 1
        >>> target = torch.zeros(1, 5, 5, dtype=torch.long); target[0, 1:4, 1:4] = 1
        >>> raw = surface_values(pred, target, 2, {"hd": SurfaceMetric("hausdorff")})
        >>> raw.values["hd"]
        tensor([[1.4142]], dtype=torch.float64)
    """
    pred, target, masks = resolve_maps(pred, target, num_classes)
    check_type("metrics", metrics, dict)
    for name, metric in metrics.items():
        check_type(f"metrics[{name!r}]", metric, SurfaceMetric)
        if metric.kind == "nsd" and len(metric.tolerance) != num_classes:
            fail(
                f"metrics[{name!r}].tolerance", f"{num_classes} values (one per class)", len(metric.tolerance)
            )
    classes = evaluated_classes(num_classes, include_background)
    batch_size, spatial = pred.shape[0], tuple(pred.shape[2:] if masks else pred.shape[1:])
    spacings = resolve_spacing(spacing, batch_size, len(spatial))
    on_gpu = _uses_torch_kernel(pred.device)
    labels = (pred, target) if on_gpu else (pred.detach().cpu().numpy(), target.detach().cpu().numpy())
    pairs = [(b, c) for b in range(batch_size) for c in classes]
    workers = _workers()
    order_statistics = _order_statistics(metrics)

    def evaluate(pair: tuple[int, int], kd_workers: int) -> tuple[bool, bool, list[float]]:
        b, c = pair
        if masks:
            pred_mask, target_mask = labels[0][b, c], labels[1][b, c]
        else:
            pred_mask, target_mask = labels[0][b] == c, labels[1][b] == c
        pred_empty, target_empty = not bool(pred_mask.any()), not bool(target_mask.any())
        if pred_empty or target_empty:
            return pred_empty, target_empty, [math.nan] * len(metrics)
        if on_gpu:
            forward, backward = (
                d.cpu().numpy() for d in surface_distances_torch(pred_mask, target_mask, spacings[b])
            )
        else:
            forward, backward = surface_distances_numpy(
                pred_mask, target_mask, spacings[b], kd_workers, order_statistics=order_statistics
            )
        return False, False, [float(metric.summarise(forward, backward, c)) for metric in metrics.values()]

    if workers > 1 and len(pairs) > 1 and not on_gpu:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(lambda pair: evaluate(pair, 1), pairs))
    else:
        results = [evaluate(pair, workers) for pair in pairs]

    shape = (batch_size, len(classes))
    pred_empty = torch.tensor([r[0] for r in results], dtype=torch.bool).reshape(shape)
    target_empty = torch.tensor([r[1] for r in results], dtype=torch.bool).reshape(shape)
    table = torch.tensor([r[2] for r in results], dtype=torch.float64).reshape(*shape, len(metrics))
    extent = np.asarray(spatial, dtype=np.float64) * spacings
    diagonal = torch.from_numpy(np.sqrt((extent**2).sum(axis=1)))
    values = {name: table[..., i].contiguous() for i, name in enumerate(metrics)}
    return SurfaceValues(values=values, pred_empty=pred_empty, target_empty=target_empty, diagonal=diagonal)


def apply_empty_rules(
    raw: Tensor,
    pred_empty: Tensor,
    target_empty: Tensor,
    kind: str,
    *,
    empty: str = "strict",
    empty_hd: str = "nan",
    diagonal: Tensor | None = None,
) -> Tensor:
    r"""Fill the (unit, class) entries with an empty mask by the rules of SPEC E.

    .. math::
        \text{strict: } m = \begin{cases}
        0 \text{ (distance)},\ 1 \text{ (NSD)} & P = G = \emptyset \\
        \mathrm{NaN} \text{ or the diagonal (distance)},\ 0 \text{ (NSD)} & \text{exactly one empty}
        \end{cases}\qquad
        \text{compat: } m = \begin{cases}
        0 & P = \emptyset \\ 0 \text{ (distance)},\ 1 \text{ (NSD)} & G = \emptyset \ne P
        \end{cases}

    Reference: SPEC E; the TransUNet test code (J. Chen et al., arXiv:2102.04306) for "compat".

    Args:
        raw: (N, C') raw values (NaN where a mask is empty).
        pred_empty, target_empty: (N, C') bool.
        kind: "hausdorff" or "assd" (a distance) or "nsd" (a score).
        empty: "strict" or "transunet_compat".
        empty_hd: with "strict", a distance with exactly one empty mask is "nan" or "diag".
        diagonal: (N,) image diagonals, needed for ``empty_hd="diag"``.

    Returns:
        (N, C') float64.

    Example:
        >>> raw = torch.tensor([[float("nan"), float("nan"), 2.0]])
        >>> pred_empty = torch.tensor([[True, False, False]])
        >>> target_empty = torch.tensor([[True, True, False]])
        >>> apply_empty_rules(raw, pred_empty, target_empty, "hausdorff")
        tensor([[0., nan, 2.]])
        >>> apply_empty_rules(raw, pred_empty, target_empty, "nsd", empty="transunet_compat")
        tensor([[0., 1., 2.]])
    """
    check_one_of("kind", kind, SURFACE_KINDS)
    check_one_of("empty", empty, EMPTY_MODES)
    check_one_of("empty_hd", empty_hd, EMPTY_DISTANCES)
    both = pred_empty & target_empty
    one = pred_empty ^ target_empty
    is_score = kind == "nsd"
    if empty == "transunet_compat":
        if is_score:
            return torch.where(pred_empty, 0.0, torch.where(target_empty, 1.0, raw))
        return torch.where(pred_empty | target_empty, 0.0, raw)
    filled = torch.where(both, 1.0 if is_score else 0.0, raw)
    if is_score:
        return torch.where(one, 0.0, filled)
    if empty_hd == "diag":
        if diagonal is None:
            fail("diagonal", "given with empty_hd='diag'", None)
        return torch.where(one, diagonal.to(raw).unsqueeze(1).expand_as(raw), filled)
    return torch.where(one, math.nan, filled)


def _average_keeping_misses(per_unit: Tensor, average: str) -> Tensor:
    """Plain means: an undefined (NaN) entry makes its class's mean, and the macro mean, NaN."""
    if average == "none":
        return per_unit
    per_class = per_unit.mean(dim=0)
    return per_class if average == "class" else per_class.mean()


def _surface_metric(
    pred: Tensor,
    target: Tensor,
    num_classes: int,
    metric: SurfaceMetric,
    spacing: object,
    include_background: bool,
    average: str,
    empty: str,
    empty_hd: str,
) -> Tensor:
    check_average(average, SURFACE_AVERAGES)
    check_empty(empty)
    check_empty_distance(empty_hd)
    raw = surface_values(
        pred, target, num_classes, {"metric": metric}, spacing=spacing, include_background=include_background
    )
    per_unit = apply_empty_rules(
        raw.values["metric"],
        raw.pred_empty,
        raw.target_empty,
        metric.kind,
        empty=empty,
        empty_hd=empty_hd,
        diagonal=raw.diagonal,
    )
    return _average_keeping_misses(per_unit, average).to(device_of(pred))


def hausdorff_distance(
    pred: Tensor,
    target: Tensor,
    num_classes: int,
    *,
    percentile: float | None = None,
    hd95_mode: str = "pooled",
    spacing: object = None,
    include_background: bool = False,
    average: str = "none",
    empty: str = "strict",
    empty_hd: str = "nan",
) -> Tensor:
    r"""Hausdorff distance between the surfaces of prediction and target, or a percentile of it.

    .. math::
        \mathrm{HD} = \max(D_{PG} \cup D_{GP}),\quad
        \mathrm{HD}_q = P_q(D_{PG} \cup D_{GP})\ (\text{pooled})\ \text{or}\
        \max(P_q(D_{PG}), P_q(D_{GP}))\ (\text{max})

    Reference: D. P. Huttenlocher et al., "Comparing images using the Hausdorff distance", IEEE
    TPAMI 15(9), 1993. Surfaces, percentile modes and empty masks: see the module docstring.

    Args:
        pred: (B, *S) integer predicted labels, S = (H, W) or (D, H, W), or (B, C, *S) float 0/1
            masks; CUDA tensors use the GPU.
        target: (B, *S) integer target labels, or (B, C, *S) float 0/1 masks.
        num_classes: number of classes C, background (label 0) included.
        percentile: None for the maximum, else q in [0, 100] (95 for HD95).
        hd95_mode: how the two directed sets make a percentile: "pooled" (medpy) or "max" (MONAI).
        spacing: None (voxel units), a number, one value per spatial axis, or a (B, len(S)) table.
        include_background: also score class 0 (default False).
        average: "none" -> (B, C'), "class" -> (C',), "macro" -> scalar; an undefined entry
            (exactly one empty mask under "strict") makes its mean NaN (module docstring).
        empty: "strict" or "transunet_compat".
        empty_hd: with "strict", exactly one empty mask gives "nan" (default) or the image "diag".

    Returns:
        float64 tensor of shape (B, C'), (C',) or () on the input device.

    Example:
        >>> pred = torch.zeros(1, 6, 6, dtype=torch.long); pred[0, 1:3, 1:3] = 1
        >>> target = torch.zeros(1, 6, 6, dtype=torch.long); target[0, 1:5, 1:5] = 1
        >>> hausdorff_distance(pred, target, num_classes=2)
        tensor([[2.8284]], dtype=torch.float64)
        >>> hausdorff_distance(pred, target, num_classes=2, spacing=(0.5, 2.0))
        tensor([[4.1231]], dtype=torch.float64)
    """
    metric = SurfaceMetric("hausdorff", percentile=check_percentile(percentile), mode=hd95_mode)
    return _surface_metric(
        pred, target, num_classes, metric, spacing, include_background, average, empty, empty_hd
    )


def hd95(
    pred: Tensor,
    target: Tensor,
    num_classes: int,
    *,
    hd95_mode: str = "pooled",
    spacing: object = None,
    include_background: bool = False,
    average: str = "none",
    empty: str = "strict",
    empty_hd: str = "nan",
) -> Tensor:
    r"""95th-percentile Hausdorff distance (HD95), by default medpy's pooled percentile.

    .. math::
        \mathrm{HD95} = P_{95}(D_{PG} \cup D_{GP})\ (\text{pooled, default})\quad\text{or}\quad
        \max(P_{95}(D_{PG}), P_{95}(D_{GP}))\ (\text{hd95\_mode="max"})

    Reference: medpy ``metric.binary.hd95`` as used by the TransUNet test code (J. Chen et al.,
    arXiv:2102.04306, 2021); SPEC E. Same arguments as :func:`hausdorff_distance` with q = 95.

    Args:
        pred: (B, *S) integer predicted labels, S = (H, W) or (D, H, W), or (B, C, *S) float 0/1
            masks; CUDA tensors use the GPU.
        target: (B, *S) integer target labels, or (B, C, *S) float 0/1 masks.
        num_classes: number of classes C, background (label 0) included.
        hd95_mode: "pooled" (medpy, default) or "max" (MONAI ``HausdorffDistanceMetric(percentile=95)``).
        spacing: None (voxel units), a number, one value per spatial axis, or a (B, len(S)) table.
        include_background: also score class 0 (default False).
        average: "none" -> (B, C'), "class" -> (C',), "macro" -> scalar; an undefined entry
            (exactly one empty mask under "strict") makes its mean NaN (module docstring).
        empty: "strict" (one empty mask -> NaN, both -> 0) or "transunet_compat" (-> 0).
        empty_hd: with "strict", exactly one empty mask gives "nan" (default) or the image "diag".

    Returns:
        float64 tensor of shape (B, C'), (C',) or () on the input device.

    Example:
        >>> pred = torch.zeros(2, 6, 6, dtype=torch.long); pred[:, 1:3, 1:3] = 1
        >>> target = torch.zeros(2, 6, 6, dtype=torch.long); target[0, 1:5, 1:5] = 1  # image 1: empty target
        >>> hd95(pred, target, num_classes=2)
        tensor([[2.3842],
                [   nan]], dtype=torch.float64)
        >>> hd95(pred, target, num_classes=2, hd95_mode="max")
        tensor([[2.5026],
                [   nan]], dtype=torch.float64)
        >>> hd95(pred, target, num_classes=2, average="macro")  # image 1's undefined HD95 is not hidden
        tensor(nan, dtype=torch.float64)
        >>> torch.nanmean(hd95(pred, target, num_classes=2))  # the mean over the defined images
        tensor(2.3842, dtype=torch.float64)
    """
    return hausdorff_distance(
        pred,
        target,
        num_classes,
        percentile=95.0,
        hd95_mode=hd95_mode,
        spacing=spacing,
        include_background=include_background,
        average=average,
        empty=empty,
        empty_hd=empty_hd,
    )


def assd(
    pred: Tensor,
    target: Tensor,
    num_classes: int,
    *,
    assd_mode: str = "pooled",
    spacing: object = None,
    include_background: bool = False,
    average: str = "none",
    empty: str = "strict",
    empty_hd: str = "nan",
) -> Tensor:
    r"""Average symmetric surface distance (ASSD) between prediction and target surfaces.

    .. math::
        \mathrm{ASSD} = \frac{\sum_{d \in D_{PG}} d + \sum_{d \in D_{GP}} d}{|D_{PG}| + |D_{GP}|}
        \ (\text{pooled})\quad\text{or}\quad
        \tfrac12 (\overline{D_{PG}} + \overline{D_{GP}})\ (\text{assd\_mode="mean"})

    Reference: T. Heimann et al., "Comparison and evaluation of methods for liver segmentation
    from CT datasets", IEEE TMI 28(8), 2009 (pooled; MONAI ``symmetric=True``, medpy >= 0.5);
    medpy <= 0.4 ``assd`` is the mean of the two directed averages (``assd_mode="mean"``).

    Args:
        pred: (B, *S) integer predicted labels, S = (H, W) or (D, H, W), or (B, C, *S) float 0/1
            masks; CUDA tensors use the GPU.
        target: (B, *S) integer target labels, or (B, C, *S) float 0/1 masks.
        num_classes: number of classes C, background (label 0) included.
        assd_mode: "pooled" (default; MONAI, medpy >= 0.5) or "mean" (medpy <= 0.4).
        spacing: None (voxel units), a number, one value per spatial axis, or a (B, len(S)) table.
        include_background: also score class 0 (default False).
        average: "none" -> (B, C'), "class" -> (C',), "macro" -> scalar; an undefined entry
            (exactly one empty mask under "strict") makes its mean NaN (module docstring).
        empty: "strict" or "transunet_compat".
        empty_hd: with "strict", exactly one empty mask gives "nan" (default) or the image "diag".

    Returns:
        float64 tensor of shape (B, C'), (C',) or () on the input device.

    Example:
        >>> pred = torch.zeros(1, 6, 6, dtype=torch.long); pred[0, 1:3, 1:3] = 1
        >>> target = torch.zeros(1, 6, 6, dtype=torch.long); target[0, 1:5, 1:5] = 1
        >>> assd(pred, target, num_classes=2)
        tensor([[1.1438]], dtype=torch.float64)
        >>> assd(pred, target, num_classes=2, assd_mode="mean")
        tensor([[0.8459]], dtype=torch.float64)
    """
    metric = SurfaceMetric("assd", mode=assd_mode)
    return _surface_metric(
        pred, target, num_classes, metric, spacing, include_background, average, empty, empty_hd
    )


def surface_dice(
    pred: Tensor,
    target: Tensor,
    num_classes: int,
    tolerance: float | list[float],
    *,
    spacing: object = None,
    include_background: bool = False,
    average: str = "none",
    empty: str = "strict",
) -> Tensor:
    r"""Normalised surface Dice (NSD): the fraction of both surfaces within ``tolerance`` of the other.

    .. math::
        \mathrm{NSD}_\tau = \frac{|\{d \in D_{PG} : d \le \tau\}| + |\{d \in D_{GP} : d \le \tau\}|}
        {|D_{PG}| + |D_{GP}|}

    Reference: S. Nikolov et al., "Clinically applicable segmentation of head and neck anatomy for
    radiotherapy", JMIR 23(7), 2021. Surfaces are counted in voxels (MONAI
    ``compute_surface_dice(use_subvoxels=False)``), not as the paper's surface elements.

    Args:
        pred: (B, *S) integer predicted labels, S = (H, W) or (D, H, W), or (B, C, *S) float 0/1
            masks; CUDA tensors use the GPU.
        target: (B, *S) integer target labels, or (B, C, *S) float 0/1 masks.
        num_classes: number of classes C, background (label 0) included.
        tolerance: tau in spacing units: one number, or one per class (length C, index = class id).
        spacing: None (voxel units), a number, one value per spatial axis, or a (B, len(S)) table.
        include_background: also score class 0 (default False).
        average: "none" -> (B, C'), "class" -> (C',), "macro" -> scalar; an undefined entry
            (exactly one empty mask under "strict") makes its mean NaN (module docstring).
        empty: "strict" (both empty -> 1, one empty -> 0) or "transunet_compat".

    Returns:
        float64 tensor of shape (B, C'), (C',) or () on the input device.

    Example:
        >>> pred = torch.zeros(1, 6, 6, dtype=torch.long); pred[0, 1:3, 1:3] = 1
        >>> target = torch.zeros(1, 6, 6, dtype=torch.long); target[0, 1:5, 1:5] = 1
        >>> surface_dice(pred, target, num_classes=2, tolerance=1.0)
        tensor([[0.5625]], dtype=torch.float64)
    """
    tolerances = tuple(resolve_tolerance(tolerance, num_classes).tolist())
    metric = SurfaceMetric("nsd", tolerance=tolerances)
    return _surface_metric(
        pred, target, num_classes, metric, spacing, include_background, average, empty, "nan"
    )


def surface_distances(pred: Tensor, target: Tensor, *, spacing: object = None) -> tuple[Tensor, Tensor]:
    r"""The two directed sets of surface distances of one pair of binary masks.

    .. math::
        D_{PG} = \{d(x, \partial G) : x \in \partial P\},\quad
        D_{GP} = \{d(y, \partial P) : y \in \partial G\}

    Args:
        pred: (*S) binary mask (bool or 0/1 integers), S = (H, W) or (D, H, W).
        target: (*S) binary mask of the same shape.
        spacing: None (voxel units), a number or one value per spatial axis.

    Returns:
        ``(forward, backward)``: float64 tensors of shapes (|dP|,) and (|dG|,), on the input device,
        in no particular order.

    Example:
        >>> pred = torch.zeros(5, 5, dtype=torch.bool); pred[1:3, 1:3] = True
        >>> target = torch.zeros(5, 5, dtype=torch.bool); target[1:4, 1:4] = True
        >>> forward, backward = surface_distances(pred, target)
        >>> forward.sort().values.tolist()
        [0.0, 0.0, 0.0, 1.0]
        >>> [round(d, 4) for d in backward.sort().values.tolist()]
        [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.4142]
    """
    for name, mask in (("pred", pred), ("target", target)):
        check_type(name, mask, Tensor)
        if mask.is_floating_point() or mask.is_complex():
            fail(name, "a binary mask (bool or 0/1 integers)", f"dtype {mask.dtype}", TypeError)
        if mask.ndim not in (2, 3):
            fail(name, "a mask of shape (H, W) or (D, H, W)", f"shape {tuple(mask.shape)}")
    if target.shape != pred.shape:
        fail("target", f"of the same shape as `pred` {tuple(pred.shape)}", f"shape {tuple(target.shape)}")
    spacings = resolve_spacing(spacing, 1, pred.ndim)[0]
    pred_mask, target_mask = pred != 0, target != 0
    if not (bool(pred_mask.any()) and bool(target_mask.any())):
        fail(
            "pred and target",
            "non-empty masks (distances to an empty surface are undefined)",
            "an empty mask",
        )
    if pred.device.type == "cuda":
        return surface_distances_torch(pred_mask, target_mask, spacings)
    forward, backward = surface_distances_numpy(
        pred_mask.cpu().numpy(), target_mask.cpu().numpy(), spacings, _workers()
    )
    return torch.from_numpy(forward).to(pred.device), torch.from_numpy(backward).to(pred.device)
