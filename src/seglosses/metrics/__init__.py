"""Segmentation metrics: Dice, IoU, precision, recall, accuracy, HD, HD95, ASSD and NSD, 2D and 3D.

Functional API (integer label maps ``pred``, ``target`` of shape (B, *S); output (B, C') unless
averaged) and a stateful accumulator, :class:`SegmentationMetrics`, over batches, images or
volumes stacked from 2D slices, with distributed sync. Definitions, empty-mask semantics and
averaging follow SPEC E; see :mod:`seglosses.metrics.overlap` and :mod:`seglosses.metrics.surface`.
"""

from seglosses.metrics._inputs import as_labels
from seglosses.metrics.accumulator import ALL_METRICS, DEFAULT_METRICS, SegmentationMetrics
from seglosses.metrics.overlap import (
    ConfusionCounts,
    accuracy,
    confusion_counts,
    dice_score,
    iou_score,
    precision,
    recall,
)
from seglosses.metrics.surface import (
    SurfaceMetric,
    SurfaceValues,
    apply_empty_rules,
    assd,
    hausdorff_distance,
    hd95,
    surface_dice,
    surface_distances,
    surface_values,
)
from seglosses.metrics.volumes import SliceCollector, Volume, stack_slices

__all__ = [
    "ALL_METRICS",
    "DEFAULT_METRICS",
    "ConfusionCounts",
    "SegmentationMetrics",
    "SliceCollector",
    "SurfaceMetric",
    "SurfaceValues",
    "Volume",
    "accuracy",
    "apply_empty_rules",
    "as_labels",
    "assd",
    "confusion_counts",
    "dice_score",
    "hausdorff_distance",
    "hd95",
    "iou_score",
    "precision",
    "recall",
    "stack_slices",
    "surface_dice",
    "surface_distances",
    "surface_values",
]
