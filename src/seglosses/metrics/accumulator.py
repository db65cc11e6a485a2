"""A stateful accumulator of segmentation metrics over batches, images or stacked volumes.

It stores the sufficient statistics of the functional metrics per evaluation unit (an image, a
3D volume, or a volume stacked from 2D slices): the confusion counts per (unit, class) and the raw
surface metrics per (unit, class). :meth:`SegmentationMetrics.compute` then applies the empty-mask
rules and averages exactly as the functional API does, so both give the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from seglosses._checks import check_one_of, fail
from seglosses.metrics._inputs import (
    as_tensor,
    check_empty,
    check_empty_distance,
    check_num_classes,
    check_zero_division,
    evaluated_classes,
    resolve_maps,
    resolve_spacing,
    resolve_tolerance,
)
from seglosses.metrics._reduce import count_undefined, nanmean, reduce_scores
from seglosses.metrics.overlap import (
    OVERLAP_METRICS,
    ConfusionCounts,
    accuracy_from_counts,
    confusion_counts,
    scores_from_counts,
)
from seglosses.metrics.surface import SurfaceMetric, SurfaceValues, apply_empty_rules, surface_values
from seglosses.metrics.volumes import SliceCollector

ACCURACY_METRICS: dict[str, str] = {
    "pixel_accuracy": "pixel",
    "foreground_accuracy": "foreground",
    "mean_class_accuracy": "mean_class",
}
SURFACE_METRICS: tuple[str, ...] = ("hd", "hd95", "assd", "nsd")
ALL_METRICS: tuple[str, ...] = (*OVERLAP_METRICS, *ACCURACY_METRICS, *SURFACE_METRICS)
DEFAULT_METRICS: tuple[str, ...] = (*OVERLAP_METRICS, *ACCURACY_METRICS, "hd95")
UNITS: tuple[str, ...] = ("image", "volume")

__all__ = ["ALL_METRICS", "DEFAULT_METRICS", "SegmentationMetrics"]


@dataclass(frozen=True)
class _Units:
    """Statistics of a run of evaluation units."""

    counts: ConfusionCounts
    surface: SurfaceValues | None
    ids: list[Hashable]


def _cat_surface(parts: list[SurfaceValues]) -> SurfaceValues:
    return SurfaceValues(
        values={name: torch.cat([p.values[name] for p in parts]) for name in parts[0].values},
        pred_empty=torch.cat([p.pred_empty for p in parts]),
        target_empty=torch.cat([p.target_empty for p in parts]),
        diagonal=torch.cat([p.diagonal for p in parts]),
    )


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class SegmentationMetrics:
    r"""Accumulate segmentation metrics over batches: ``update`` per batch, ``compute`` at the end.

    .. math::
        \bar m = \frac{1}{|C'|} \sum_{c \in C'} \frac{1}{|U_c|} \sum_{u \in U_c} m_{u,c},\qquad
        U_c = \{u : m_{u,c} \text{ defined}\}

    (classes whose every unit is undefined are left out of the outer mean). Reference: the
    validate -> update -> compute design of torchmetrics (STYLE.md 2); definitions of SPEC E.

    Units. ``unit="image"``: every item of a (B, *S) batch is a unit (a 2D image or a 3D volume).
    ``unit="volume"``: ``update`` receives 2D slices (B, H, W) with their ``case_ids`` (and
    ``slice_indices``); :meth:`compute` stacks the slices of each case into a (D, H, W) volume and
    scores volumes (the ACDC / Synapse protocol of the papers, SPEC E).

    Metrics (``metrics``): "dice", "iou", "precision", "recall", "pixel_accuracy",
    "foreground_accuracy", "mean_class_accuracy", "hd", "hd95", "assd" and "nsd" (needs
    ``nsd_tolerance``). Definitions, empty-mask rules and averaging are those of the functional
    metrics (:mod:`seglosses.metrics.overlap`, :mod:`seglosses.metrics.surface`).

    :meth:`compute` returns a flat dict (ready for a logger). For every metric ``m``:

    - ``m``: the mean over units, then over classes (NaN entries skipped; NaN if none is defined);
    - ``m/class`` (C',): the mean over units per class (not for the accuracies, which are per unit);
    - ``m/unit`` (N, C') or (N,): the value of every unit;
    - ``m/undefined`` (C',) or (): how many NaN unit values were excluded (e.g. HD95 with exactly one
      empty mask under ``empty="strict"``);
    - ``m/micro``: overlap metrics and accuracies from the counts pooled over units (accumulated
      confusion matrix), then the mean over classes;

    plus ``units``, the number of units. :attr:`unit_ids` names them (case ids in volume mode).

    Distributed: :meth:`sync` gathers the statistics (and pending slices) of every process with
    ``torch.distributed.all_gather_object`` when a process group is initialised; :meth:`compute`
    calls it, so every rank must call :meth:`compute`. Sharded slices need ``slice_indices``.

    Args:
        num_classes: number of classes C, background (label 0) included.
        metrics: names of the metrics to compute (default: overlap metrics, accuracies and HD95).
        include_background: also score class 0 (default False: the papers average foreground classes).
        spacing: default voxel spacing (None, a number, or one value per spatial axis); ``update``
            may override it per batch.
        empty: "strict" (default) or "transunet_compat".
        empty_hd: with "strict", a distance with exactly one empty mask is "nan" (default) or "diag".
        zero_division: value of an undefined precision/recall (NaN by default).
        hd95_mode: "pooled" (medpy, default) or "max" (MONAI) for "hd95".
        assd_mode: "pooled" (MONAI, medpy >= 0.5; default) or "mean" (medpy <= 0.4) for "assd".
        nsd_tolerance: tau for "nsd", one number or one per class.
        unit: "image" or "volume".

    Example:
        >>> metrics = SegmentationMetrics(num_classes=2, metrics=("dice", "hd95"))
        >>> pred = torch.zeros(2, 6, 6, dtype=torch.long); pred[:, 1:4, 1:4] = 1
        >>> target = torch.zeros(2, 6, 6, dtype=torch.long); target[:, 1:5, 1:5] = 1; target[1] = 0
        >>> metrics.update(pred, target)
        >>> result = metrics.compute()
        >>> result["dice"], result["dice/unit"].flatten()
        (tensor(0.3600, dtype=torch.float64), tensor([0.7200, 0.0000], dtype=torch.float64))
        >>> result["hd95"], result["hd95/unit"].flatten(), result["hd95/undefined"]
        (tensor(1.0207, dtype=torch.float64), tensor([1.0207,    nan], dtype=torch.float64), tensor([1]))
    """

    def __init__(
        self,
        num_classes: int,
        *,
        metrics: Sequence[str] = DEFAULT_METRICS,
        include_background: bool = False,
        spacing: Any = None,
        empty: str = "strict",
        empty_hd: str = "nan",
        zero_division: float = math.nan,
        hd95_mode: str = "pooled",
        assd_mode: str = "pooled",
        nsd_tolerance: Any = None,
        unit: str = "image",
    ) -> None:
        self.num_classes = check_num_classes(num_classes)
        if isinstance(metrics, str) or not isinstance(metrics, Sequence) or not metrics:
            fail(
                "metrics", f"a non-empty sequence of names from {list(ALL_METRICS)}", repr(metrics), TypeError
            )
        for name in metrics:
            check_one_of("metrics", name, ALL_METRICS)
        self.metrics = tuple(dict.fromkeys(metrics))
        self.classes = evaluated_classes(num_classes, include_background)
        self.include_background = include_background
        self.spacing = spacing
        self.empty = check_empty(empty)
        self.empty_hd = check_empty_distance(empty_hd)
        self.zero_division = check_zero_division(zero_division)
        check_one_of("unit", unit, UNITS)
        self.unit = unit
        surface: dict[str, SurfaceMetric] = {}
        if "hd" in self.metrics:
            surface["hd"] = SurfaceMetric("hausdorff")
        if "hd95" in self.metrics:
            surface["hd95"] = SurfaceMetric("hausdorff", percentile=95.0, mode=hd95_mode)
        if "assd" in self.metrics:
            surface["assd"] = SurfaceMetric("assd", mode=assd_mode)
        if "nsd" in self.metrics:
            if nsd_tolerance is None:
                fail("nsd_tolerance", "given when 'nsd' is requested", None)
            tolerance = tuple(resolve_tolerance(nsd_tolerance, num_classes).tolist())
            surface["nsd"] = SurfaceMetric("nsd", tolerance=tolerance)
        self._surface_metrics = surface
        self.reset()

    def reset(self) -> None:
        """Forget every unit and every collected slice."""
        self._local: list[_Units] = []
        self._synced: list[_Units] = []
        self._collector = SliceCollector()
        self._image_count = 0

    def _score(self, pred: Tensor, target: Tensor, spacing: Any, ids: list[Hashable]) -> _Units:
        counts = confusion_counts(pred, target, self.num_classes)
        counts = ConfusionCounts(*(c.cpu() for c in counts.as_tuple()))
        surface = None
        if self._surface_metrics:
            spacing = self.spacing if spacing is None else spacing
            surface = surface_values(
                pred,
                target,
                self.num_classes,
                self._surface_metrics,
                spacing=spacing,
                include_background=self.include_background,
            )
        return _Units(counts=counts, surface=surface, ids=ids)

    def update(
        self,
        pred: Tensor,
        target: Tensor,
        *,
        spacing: Any = None,
        case_ids: Sequence[Hashable] | None = None,
        slice_indices: Sequence[int] | None = None,
    ) -> None:
        """Add a batch.

        Args:
            pred: (B, *S) integer predicted labels, or (B, C, *S) float 0/1 masks (one-hot or
                overlapping multilabel regions, see :func:`~seglosses.metrics.confusion_counts`);
                (B, H, W) label slices when ``unit="volume"``. Tensors or NumPy arrays.
            target: (B, *S) integer target labels, or (B, C, *S) float 0/1 masks.
            spacing: spacing of this batch (overrides the default): one value per spatial axis or a
                (B, len(S)) table; in volume mode the (3,) spacing of the stacked volumes (slice axis
                first) or a (B, 3) table.
            case_ids: volume mode only: the case of every slice.
            slice_indices: volume mode only: the position of every slice within its case.
        """
        if self.unit == "volume":
            if case_ids is None:
                fail("case_ids", "given (one per slice) when unit='volume'", None)
            pred, target = as_tensor("pred", pred), as_tensor("target", target)
            _, _, masks = resolve_maps(pred, target, self.num_classes)  # fail at the batch, not at compute()
            if masks:
                fail("pred", "integer label maps (B, H, W) when unit='volume' (slices are stacked as labels)",
                     "float masks", TypeError)
            self._collector.add(
                pred, target, case_ids, slice_indices, self.spacing if spacing is None else spacing
            )
            return
        if case_ids is not None or slice_indices is not None:
            fail("case_ids", "None when unit='image' (use unit='volume' to stack slices)", "case ids")
        pred, target = as_tensor("pred", pred), as_tensor("target", target)
        positions = range(self._image_count, self._image_count + pred.shape[0])
        # Under DDP the ids say which rank saw the image, so that they stay unique after a sync.
        ids: list[Hashable] = [(dist.get_rank(), i) for i in positions] if _distributed() else list(positions)
        self._local.append(self._score(pred, target, spacing, ids))
        self._image_count += pred.shape[0]

    def sync(self) -> None:
        """Gather the statistics and pending slices of every process (no-op without a process group)."""
        if not _distributed():
            return
        local = self._merged(self._local)
        payload = {"units": local, "slices": self._collector.state()}
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, payload)
        self._synced.extend(part["units"] for part in gathered if part["units"] is not None)
        self._local = []
        self._collector.merge([part["slices"] for part in gathered])

    @staticmethod
    def _merged(parts: list[_Units]) -> _Units | None:
        if not parts:
            return None
        surfaces = [p.surface for p in parts]
        return _Units(
            counts=ConfusionCounts.cat([p.counts for p in parts]),
            surface=_cat_surface(surfaces) if surfaces[0] is not None else None,
            ids=[unit_id for p in parts for unit_id in p.ids],
        )

    def _score_collected_volumes(self) -> None:
        for volume in self._collector.pop_volumes():
            spacing = None if volume.spacing is None else resolve_spacing(volume.spacing, 1, 3)
            self._synced.append(
                self._score(volume.pred[None], volume.target[None], spacing, [volume.case_id])
            )

    @property
    def unit_ids(self) -> list[Hashable]:
        """Identifiers of the units in the order of ``*/unit`` results (case ids in volume mode)."""
        merged = self._merged(self._synced + self._local)
        return [] if merged is None else merged.ids

    def compute(self) -> dict[str, Tensor]:
        """Sync, stack any collected volumes, and return every metric.

        Returns:
            name -> float64 tensor: ``m`` (), ``m/class`` (C',), ``m/unit`` (N, C') or (N,),
            ``m/micro`` (), ``m/undefined`` int64 (C',) or (); and ``units`` (). See the class docstring.
        """
        self.sync()
        self._score_collected_volumes()
        units = self._merged(self._synced + self._local)
        if units is None:
            raise RuntimeError("Expected `update` to be called before `compute`, but got no evaluated unit.")
        counts, classes = units.counts, self.classes
        options = {"empty": self.empty, "zero_division": self.zero_division}
        result: dict[str, Tensor] = {"units": torch.tensor(counts.tp.shape[0])}
        for name in self.metrics:
            if name in OVERLAP_METRICS:
                per_unit = scores_from_counts(counts, name, **options)[:, classes]
                pooled = scores_from_counts(counts.pooled(), name, **options)[0, classes]
                result[f"{name}/micro"] = nanmean(pooled, dim=0)
            elif name in ACCURACY_METRICS:
                kind = ACCURACY_METRICS[name]
                per_unit = accuracy_from_counts(counts, kind, classes, **options)
                result[f"{name}/micro"] = accuracy_from_counts(counts.pooled(), kind, classes, **options)[0]
            else:
                surface = units.surface
                per_unit = apply_empty_rules(
                    surface.values[name],
                    surface.pred_empty,
                    surface.target_empty,
                    self._surface_metrics[name].kind,
                    empty=self.empty,
                    empty_hd=self.empty_hd,
                    diagonal=surface.diagonal,
                )
            if per_unit.ndim == 2:
                result[name] = reduce_scores(per_unit, "macro")
                result[f"{name}/class"] = reduce_scores(per_unit, "class")
            else:
                result[name] = nanmean(per_unit, dim=0)
            result[f"{name}/unit"] = per_unit
            result[f"{name}/undefined"] = count_undefined(per_unit)
        return result
