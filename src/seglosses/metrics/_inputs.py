"""Validation of metric inputs: label maps, spacing and options, in the library's one error style."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from seglosses._checks import check_number, check_one_of, check_type, describe, fail, value_checks_enabled

Average = Literal["none", "class", "macro", "micro"]
EmptyMode = Literal["strict", "transunet_compat"]
EmptyDistance = Literal["nan", "diag"]
PercentileMode = Literal["pooled", "max"]
AssdMode = Literal["pooled", "mean"]

AVERAGES: tuple[str, ...] = ("none", "class", "macro", "micro")
EMPTY_MODES: tuple[str, ...] = ("strict", "transunet_compat")
EMPTY_DISTANCES: tuple[str, ...] = ("nan", "diag")
PERCENTILE_MODES: tuple[str, ...] = ("pooled", "max")
ASSD_MODES: tuple[str, ...] = ("pooled", "mean")


def check_num_classes(num_classes: Any) -> int:
    check_type("num_classes", num_classes, int)
    if num_classes < 2:
        fail("num_classes", "an integer >= 2 (background plus at least one class)", num_classes)
    return num_classes


def check_label_maps(pred: Any, target: Any, num_classes: Any) -> None:
    """Integer label maps of one shape (B, H, W) or (B, D, H, W) with labels in [0, num_classes)."""
    check_num_classes(num_classes)
    for name, labels in (("pred", pred), ("target", target)):
        check_type(name, labels, Tensor)
        if labels.is_floating_point() or labels.is_complex():
            fail(
                name,
                "an integer label map of shape (B, *S) (see `as_labels` for logits)",
                describe(labels),
                TypeError,
            )
        if labels.ndim not in (3, 4):
            fail(name, "a label map of shape (B, H, W) or (B, D, H, W)", f"shape {tuple(labels.shape)}")
    if target.shape != pred.shape:
        fail("target", f"of the same shape as `pred` {tuple(pred.shape)}", f"shape {tuple(target.shape)}")
    if target.device != pred.device:
        fail("target", f"on the same device as `pred` ({pred.device})", f"device {target.device}")
    if pred.numel() == 0:
        fail("pred", "a non-empty label map", f"shape {tuple(pred.shape)}")
    if value_checks_enabled():
        for name, labels in (("pred", pred), ("target", target)):
            if labels.dtype != torch.bool and not _labels_in_range(labels, num_classes):
                low, high = (int(v) for v in torch.aminmax(labels))
                fail(
                    name,
                    f"labels in [0, {num_classes - 1}] (num_classes={num_classes})",
                    f"labels in [{low}, {high}]",
                )


def _labels_in_range(labels: Tensor, num_classes: int) -> bool:
    if labels.device.type == "cpu" and labels.is_contiguous():
        # One pass: seen as unsigned, a negative label is huge, so max < C checks both ends.
        values = labels.numpy()
        return int(values.view(f"u{values.itemsize}").max()) < num_classes
    low, high = torch.aminmax(labels)
    return bool(low >= 0) and bool(high < num_classes)


def resolve_spacing(spacing: Any, batch_size: int, spatial_dims: int) -> np.ndarray:
    """Voxel spacing as a (B, spatial_dims) float64 array.

    Accepts None (unit spacing), one number (isotropic), one value per spatial axis, or a
    (B, spatial_dims) table of per-image spacings (nested sequence, array or tensor).
    """
    expected = (
        f"None, a positive number, a sequence of {spatial_dims} positive numbers (one per spatial "
        f"axis) or a ({batch_size}, {spatial_dims}) table"
    )
    if spacing is None:
        return np.ones((batch_size, spatial_dims))
    if isinstance(spacing, bool):
        fail("spacing", expected, repr(spacing), TypeError)
    if isinstance(spacing, (int, float)):
        table = np.full((batch_size, spatial_dims), float(spacing))
    else:
        if isinstance(spacing, Tensor):
            values = spacing.detach().cpu().double().numpy()
        elif isinstance(spacing, (Sequence, np.ndarray)) and not isinstance(spacing, str):
            try:
                values = np.asarray(spacing, dtype=np.float64)
            except (TypeError, ValueError):
                fail("spacing", expected, repr(spacing), TypeError)
        else:
            fail("spacing", expected, f"{type(spacing).__name__} {describe(spacing)}", TypeError)
        if values.shape == (spatial_dims,):
            table = np.broadcast_to(values, (batch_size, spatial_dims)).copy()
        elif values.shape == (batch_size, spatial_dims):
            table = values.copy()
        else:
            fail("spacing", expected, f"shape {values.shape}")
    if not (np.isfinite(table).all() and (table > 0).all()):
        fail("spacing", "finite and positive", table.tolist() if table.size <= 12 else "non-positive values")
    return table


def check_average(average: Any, allowed: Sequence[str] = AVERAGES) -> str:
    check_one_of("average", average, allowed)
    return average


def check_empty(empty: Any) -> str:
    check_one_of("empty", empty, EMPTY_MODES)
    return empty


def check_empty_distance(empty_hd: Any) -> str:
    check_one_of("empty_hd", empty_hd, EMPTY_DISTANCES)
    return empty_hd


def check_zero_division(zero_division: Any) -> float:
    check_type("zero_division", zero_division, (int, float))
    value = float(zero_division)
    if not (math.isnan(value) or 0.0 <= value <= 1.0):
        fail("zero_division", "NaN or a number in [0, 1]", value)
    return value


def check_percentile(percentile: Any) -> float | None:
    if percentile is None:
        return None
    return check_number("percentile", percentile, low=0.0, high=100.0)


def resolve_tolerance(tolerance: Any, num_classes: int) -> np.ndarray:
    """NSD tolerance per class as a (num_classes,) float64 array (one number applies to every class)."""
    expected = f"a non-negative number or a sequence of {num_classes} non-negative numbers (one per class)"
    if isinstance(tolerance, (int, float)) and not isinstance(tolerance, bool):
        values = np.full(num_classes, float(tolerance))
    elif isinstance(tolerance, (Sequence, np.ndarray, Tensor)) and not isinstance(tolerance, str):
        values = np.asarray(torch.as_tensor(tolerance, dtype=torch.float64).cpu().numpy()).reshape(-1)
        if values.shape != (num_classes,):
            fail("tolerance", expected, f"{len(values)} values")
    else:
        fail("tolerance", expected, describe(tolerance), TypeError)
    if not (np.isfinite(values).all() and (values >= 0).all()):
        fail("tolerance", expected, values.tolist())
    return values


def evaluated_classes(num_classes: int, include_background: bool) -> list[int]:
    """The class indices that are scored: 1..C-1, or 0..C-1 with the background."""
    check_num_classes(num_classes)
    check_type("include_background", include_background, bool)
    return list(range(0 if include_background else 1, num_classes))


def as_labels(logits: Tensor) -> Tensor:
    """Hard labels from network scores: argmax over classes, or ``logits > 0`` for one channel.

    Args:
        logits: (B, C, *S) logits or probabilities with S = (H, W) or (D, H, W). With C == 1 the
            channel is a binary logit and is thresholded at 0 (use ``probs > 0.5`` for probabilities).

    Returns:
        (B, *S) int64 label map.

    Example:
        >>> logits = torch.tensor([[[[2.0, -1.0]], [[0.5, 3.0]]]])  # (B=1, C=2, H=1, W=2)
        >>> as_labels(logits)
        tensor([[[0, 1]]])
        >>> as_labels(torch.tensor([[[[0.3, -0.2]]]]))
        tensor([[[1, 0]]])
    """
    check_type("logits", logits, Tensor)
    if not logits.is_floating_point():
        fail("logits", "a floating-point tensor of shape (B, C, *S)", describe(logits), TypeError)
    if logits.ndim not in (4, 5):
        fail("logits", "of shape (B, C, H, W) or (B, C, D, H, W)", f"shape {tuple(logits.shape)}")
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(dim=1)
