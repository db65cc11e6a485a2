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


def as_tensor(name: str, value: Any) -> Tensor:
    """A tensor, or a NumPy array as a tensor (sharing its memory); anything else is refused in one line."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            fail(name, "a tensor or a NumPy array of numbers", describe(value), TypeError)
        return torch.from_numpy(np.ascontiguousarray(value))
    check_type(name, value, (Tensor, np.ndarray))
    return value


def device_of(value: Any) -> torch.device:
    """Where a result goes: the tensor's device, or the CPU for a NumPy array."""
    return value.device if isinstance(value, Tensor) else torch.device("cpu")


def is_masks(value: Tensor) -> bool:
    """Floating-point inputs are (B, C, *S) masks (one-hot or multilabel); integer and bool ones are label maps."""
    return value.is_floating_point()


def resolve_maps(pred: Any, target: Any, num_classes: Any) -> tuple[Tensor, Tensor, bool]:
    """Validate ``pred`` and ``target`` and bring them to one form.

    Integer (or bool) tensors are label maps (B, H, W) or (B, D, H, W) with labels in
    [0, num_classes). Floating-point tensors are 0/1 masks (B, C, H, W) or (B, C, D, H, W) with
    C = num_classes: one-hot (MONAI's ``AsDiscrete(to_onehot=C)``) or overlapping multilabel
    regions (BraTS WT/TC/ET), each channel scored as its own binary mask. NumPy arrays are
    accepted as well. With one label map and one mask tensor, the label map is one-hot encoded.

    Returns:
        ``(pred, target, masks)``: two label maps (``masks`` False), or two (B, C, *S) bool masks.
    """
    check_num_classes(num_classes)
    pred, target = as_tensor("pred", pred), as_tensor("target", target)
    for name, value in (("pred", pred), ("target", target)):
        if value.is_complex():
            fail(name, "a label map or a mask tensor of real numbers", describe(value), TypeError)
        if is_masks(value):
            if value.ndim == 3:
                fail(name, "an integer label map of shape (B, H, W) (a float tensor is read as (B, C, *S) masks; "
                     "cast a float label map with .long())", describe(value), TypeError)
            if value.ndim not in (4, 5) or value.shape[1] != num_classes:
                fail(name, f"float masks of shape (B, {num_classes}, H, W) or (B, {num_classes}, D, H, W) "
                     f"(one channel per class, num_classes={num_classes})", f"shape {tuple(value.shape)}")
        elif value.ndim not in (3, 4):
            fail(name, "an integer label map of shape (B, H, W) or (B, D, H, W) (one-hot or multilabel masks "
                 "(B, C, *S) as a float tensor; see `as_labels` for logits)", f"shape {tuple(value.shape)}")
    if pred.device != target.device:
        fail("target", f"on the same device as `pred` ({pred.device})", f"device {target.device}")
    if pred.numel() == 0 or target.numel() == 0:
        fail("pred", "a non-empty label map", f"shape {tuple(pred.shape)}")
    for name, value in (("pred", pred), ("target", target)):
        if not is_masks(value):
            _check_label_range(name, value, num_classes)
    masks = is_masks(pred) or is_masks(target)
    if masks:
        pred, target = (_binary_masks(name, value, num_classes) for name, value in (("pred", pred), ("target", target)))
    if target.shape != pred.shape:
        fail("target", f"of the same shape as `pred` {tuple(pred.shape)}", f"shape {tuple(target.shape)}")
    return pred, target, masks


def _binary_masks(name: str, value: Tensor, num_classes: int) -> Tensor:
    """(B, C, *S) bool masks from 0/1 float masks, or from a label map (one-hot)."""
    if not is_masks(value):
        return torch.nn.functional.one_hot(value.long(), num_classes).movedim(-1, 1).bool()
    masks = value != 0
    if value_checks_enabled() and not bool((masks == (value == 1)).all()):
        fail(name, "0/1 masks (threshold probabilities, or take the argmax, first)", "values other than 0 and 1")
    return masks


def _check_label_range(name: str, labels: Tensor, num_classes: int) -> None:
    if value_checks_enabled() and labels.dtype != torch.bool and not _labels_in_range(labels, num_classes):
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
