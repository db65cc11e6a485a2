"""From (logits, target) to the tensors every loss works on.

:func:`prepare` is the single entry point of the loss contract: it validates shapes, dtypes and
label ranges, infers the mode, turns integer labels into one-hot targets, builds the ignore mask
and upcasts half-precision logits to float32 (float64 stays float64).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from seglosses._checks import check_floating, check_one_of, check_tensor, fail, value_checks_enabled

# Set by a loss module's forward on the CPU: the logits' finiteness is checked on the loss value afterwards
# (a non-finite logit makes the value non-finite), which saves a pass over the logits (see Loss.forward).
LOGITS_CHECKED_AFTER: ContextVar[bool] = ContextVar("logits_checked_after", default=False)

Mode = Literal["multiclass", "binary", "multilabel"]
MODES: tuple[str, ...] = ("multiclass", "binary", "multilabel")


def infer_mode(num_channels: int, mode: str | None = None) -> str:
    """The mode for ``num_channels`` logit channels: given, or binary for 1 channel and multiclass otherwise."""
    if mode is None:
        return "binary" if num_channels == 1 else "multiclass"
    check_one_of("mode", mode, MODES)
    if mode == "binary" and num_channels != 1:
        fail("logits", "of shape (B, 1, *S) in binary mode", f"{num_channels} channels")
    if mode == "multiclass" and num_channels < 2:
        fail("logits", "of shape (B, C, *S) with C >= 2 in multiclass mode", f"{num_channels} channel")
    return mode


class Prepared:
    """Validated inputs of a loss.

    Attributes:
        logits: (B, C, *S) float32 or float64.
        target: (B, C, *S) dense target in [0, 1], zero at ignored pixels, same dtype as logits.
            Built from ``labels`` on first use, so losses that only gather at the labels never pay
            for the one-hot tensor.
        valid: (B, *S) float mask (1 = counted, 0 = ignored), or None when no pixel is ignored.
        mode: "multiclass", "binary" or "multilabel".
        labels: (B, *S) int64 class indices (ignored pixels set to 0) when the target was given
            as integer labels in multiclass mode, else None.
    """

    def __init__(
        self,
        logits: Tensor,
        target: Tensor | None = None,
        valid: Tensor | None = None,
        mode: str = "multiclass",
        labels: Tensor | None = None,
    ) -> None:
        if target is None and labels is None:
            fail("target", "given, or built from labels", None)
        self.logits = logits
        self.valid = valid
        self.mode = mode
        self.labels = labels
        self._target = target

    @property
    def target(self) -> Tensor:
        if self._target is None:
            target = torch.zeros_like(self.logits).scatter_(1, self.labels.unsqueeze(1), 1.0)
            self._target = self.mask(target)
        return self._target

    @property
    def num_classes(self) -> int:
        return self.logits.shape[1]

    @property
    def spatial_dims(self) -> tuple[int, ...]:
        """The spatial axes of a (B, C, *S) tensor."""
        return tuple(range(2, self.logits.ndim))

    @property
    def pixel_dims(self) -> tuple[int, ...]:
        """The spatial axes of a (B, *S) tensor."""
        return tuple(range(1, self.logits.ndim - 1))

    def probs(self) -> Tensor:
        """Probabilities: softmax over classes (multiclass) or sigmoid per channel."""
        if self.mode == "multiclass":
            return self.logits.softmax(dim=1)
        return self.logits.sigmoid()

    def log_probs(self) -> Tensor:
        """log p, computed stably from the logits."""
        if self.mode == "multiclass":
            return self.logits.log_softmax(dim=1)
        return F.logsigmoid(self.logits)

    def mask(self, x: Tensor) -> Tensor:
        """Zero the ignored pixels of a (B, C, *S) or (B, *S) tensor."""
        if self.valid is None:
            return x
        valid = self.valid if x.ndim == self.valid.ndim else self.valid.unsqueeze(1)
        return x * valid

    def valid_count(self) -> Tensor:
        """Number of counted pixels per image, (B,), in the logits' dtype."""
        if self.valid is None:
            pixels = self.logits[0, 0].numel()
            return self.logits.new_full((self.logits.shape[0],), float(pixels))
        return self.valid.sum(dim=self.pixel_dims)

    def image_mean(self, per_pixel: Tensor) -> Tensor:
        """Mean of a (B, *S) map over each image's counted pixels, (B,); 0 for an image with none."""
        total = self.mask(per_pixel).sum(dim=self.pixel_dims)
        return total / self.valid_count().clamp_min(1.0)

    def valid_bool(self) -> Tensor:
        """The (B, *S) boolean mask of counted pixels."""
        if self.valid is None:
            return torch.ones_like(self.logits[:, 0], dtype=torch.bool)
        return self.valid.bool()


def compute_dtype(logits: Tensor) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32 (also under autocast)."""
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def check_logits(logits: object) -> Tensor:
    """``logits`` is a non-empty floating-point (B, C, H, W) or (B, C, D, H, W) tensor (checks no values).

    The first check of every entry point, so that any other object gets a clear error before its
    shape is read. A list or tuple of outputs (a deeply supervised network) is pointed to
    :class:`seglosses.DeepSupervision`.

    Example:
        >>> check_logits(torch.zeros(1, 2, 4, 4)).shape
        torch.Size([1, 2, 4, 4])
        >>> try:
        ...     check_logits([torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 2, 2)])
        ... except TypeError as error:
        ...     print("seglosses.DeepSupervision(loss)" in str(error))
        True
    """
    if isinstance(logits, (list, tuple)):
        fail("logits", "a tensor (B, C, *S); the outputs of a deeply supervised network go through "
             "seglosses.DeepSupervision(loss)", f"a {type(logits).__name__} of {len(logits)} items", TypeError)
    check_floating("logits", logits)
    if logits.ndim not in (4, 5):
        fail("logits", "of shape (B, C, H, W) or (B, C, D, H, W)", f"shape {tuple(logits.shape)}")
    if logits.shape[0] == 0 or logits.shape[1] == 0 or logits[0, 0].numel() == 0:
        fail("logits", "non-empty in every dimension", f"shape {tuple(logits.shape)}")
    return logits


def prepare(
    logits: Tensor,
    target: Tensor,
    *,
    mode: str | None = None,
    ignore_index: int | None = None,
) -> Prepared:
    """Validate ``logits`` and ``target`` and bring the target to dense (B, C, *S) form.

    Args:
        logits: (B, C, H, W) or (B, C, D, H, W) raw scores (never probabilities).
        target: integer labels (B, *S) or (B, 1, *S), also as a float tensor whose values are
            whole numbers (what MONAI's ``LoadImaged`` yields); or a dense one-hot / soft target
            (B, C, *S) with values in [0, 1]. Binary mode takes labels in {0, 1}; multilabel mode
            needs a dense target.
        mode: "multiclass", "binary" or "multilabel"; inferred from C when None. A dense target
            with C > 1 and no ``mode`` must sum to one over the channels at every counted pixel
            (a multi-hot target is refused with a pointer to ``mode="multilabel"``).
        ignore_index: label value whose pixels count for nothing (value and gradient). For a dense
            target, a pixel is ignored when any of its channels equals ``ignore_index``.

    Returns:
        A :class:`Prepared` bundle.

    Example:
        >>> logits = torch.zeros(2, 3, 4, 4)
        >>> labels = torch.zeros(2, 4, 4, dtype=torch.long)
        >>> prepared = prepare(logits, labels)
        >>> prepared.mode, tuple(prepared.target.shape)
        ('multiclass', (2, 3, 4, 4))
    """
    check_logits(logits)
    if isinstance(target, (list, tuple)):
        fail("target", "a tensor; a list of targets (deep supervision) goes through seglosses.DeepSupervision(loss)",
             f"a {type(target).__name__} of {len(target)} items", TypeError)
    check_tensor("target", target)
    if target.device != logits.device:
        fail("target", f"on the device of `logits` ({logits.device})", target.device)
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        fail("ignore_index", "an int or None", repr(ignore_index), TypeError)
    num_classes = logits.shape[1]
    mode_given = mode is not None
    mode = infer_mode(num_classes, mode)
    batch, spatial = logits.shape[0], tuple(logits.shape[2:])
    dtype = compute_dtype(logits)
    logits = logits.to(dtype)

    if target.ndim == logits.ndim and target.shape[1] == 1 and num_classes > 1:
        target = target[:, 0]  # (B, 1, *S) labels
    if target.ndim == logits.ndim - 1:
        return _from_labels(logits, target, mode, ignore_index, batch, spatial)
    if tuple(target.shape) != tuple(logits.shape):
        fail("target", f"of shape {(batch, *spatial)} (labels) or {tuple(logits.shape)} (dense)",
             f"shape {tuple(target.shape)}")
    return _from_dense(logits, target, mode, ignore_index, sums_to_one=not mode_given and num_classes > 1)


def _from_labels(logits, labels, mode, ignore_index, batch, spatial) -> Prepared:
    if tuple(labels.shape) != (batch, *spatial):
        fail("target", f"integer labels of shape {(batch, *spatial)}", f"shape {tuple(labels.shape)}")
    if labels.is_complex():
        fail("target", "integer labels (or a dense float target of shape (B, C, *S))",
             f"dtype {labels.dtype}", TypeError)
    if mode == "multilabel":
        fail("target", "a dense (B, C, *S) target in multilabel mode", f"labels of shape {tuple(labels.shape)}")
    whole = None
    if labels.is_floating_point():  # float label maps (MONAI's LoadImaged) count when every value is whole
        whole = ((labels - labels.round()) == 0).all() if value_checks_enabled() else None  # NaN, inf: not whole
        labels = labels.round()  # NaN and infinities are caught by the value check (not whole)
        if not value_checks_enabled():
            labels = labels.nan_to_num(0.0, 0.0, 0.0)
    labels = labels.long()
    num_labels = 2 if mode == "binary" else logits.shape[1]
    valid = None
    if ignore_index is not None:
        ignored = labels == ignore_index
        valid = (~ignored).to(logits.dtype)
        labels = labels.masked_fill(ignored, 0)  # ignored pixels hold a valid label: the range check skips them
    if value_checks_enabled():
        _check_values(logits, labels, 0, num_labels - 1, None, whole=whole, ignore_index=ignore_index)
    if mode == "binary":
        target = labels.unsqueeze(1).to(logits.dtype)
        return Prepared(logits, target if valid is None else target * valid.unsqueeze(1), valid, mode)
    return Prepared(logits, None, valid, mode, labels=labels)


def _from_dense(logits, target, mode, ignore_index, sums_to_one: bool) -> Prepared:
    if target.is_complex():
        fail("target", "a real tensor", f"dtype {target.dtype}", TypeError)
    if ignore_index in (0, 1):  # 0 and 1 are target values: every one-hot pixel would be ignored
        fail("ignore_index", "outside [0, 1] with a dense target (0 and 1 are target values)", ignore_index)
    ignored = (target == ignore_index).any(dim=1) if ignore_index is not None else None
    target = target.to(logits.dtype)
    if value_checks_enabled():
        ignored_channels = None if ignored is None else ignored.unsqueeze(1)
        _check_values(logits, target, 0, 1, ignored_channels, sums_to_one=sums_to_one)
    valid = None
    if ignored is not None:
        valid = (~ignored).to(logits.dtype)
        target = target.masked_fill(ignored.unsqueeze(1), 0.0)
    return Prepared(logits, target, valid, mode)


# How far the channels of a dense multiclass target may sum from one (float16 soft labels round).
SUM_TOLERANCE = 1e-3


def _check_values(
    logits: Tensor,
    target: Tensor,
    low: float,
    high: float,
    ignored: Tensor | None,
    *,
    whole: Tensor | None = None,
    sums_to_one: bool = False,
    ignore_index: int | None = None,
) -> None:
    """Finite logits and target values in [low, high] (or ignored), in one host sync.

    The fast path reads two reductions that allocate nothing: the sum of the logits is finite
    when every logit is (an overflow only sends us to the exact check), and the target's range
    (one pass on the CPU, see :func:`_labels_in_range`). ``whole``: float labels were whole
    numbers (checked in the same sync). ``sums_to_one``: a dense target's channels sum to one at
    every pixel that is not ignored (mode inferred, C > 1). ``ignore_index`` only names itself in
    the error: integer labels arrive with their ignored pixels already set to a valid label.
    """
    with torch.no_grad():
        scan_logits = not LOGITS_CHECKED_AFTER.get()
        logit_sum = logits.detach().sum() if scan_logits else logits.new_zeros(())
        fine = torch.isfinite(logit_sum) & _labels_in_range(target, low, high)
        if whole is not None:
            fine &= whole
        sums_off = None
        if sums_to_one:
            off_one = (target.sum(dim=1) - 1.0).abs() > SUM_TOLERANCE
            if ignored is not None:
                off_one &= ~ignored[:, 0]
            sums_off = off_one.any()
            fine &= ~sums_off
        if bool(fine):
            return
        if not bool(torch.isfinite(logit_sum)) and not bool(torch.isfinite(logits).all()):
            fail("logits", "finite (no NaN or infinity)", "non-finite values")
        if whole is not None and not bool(whole):
            fail("target", "labels with whole-number values (a float label map must hold class indices)",
                 "fractional or non-finite values; for soft targets pass a dense (B, C, *S) tensor")
        outside = (target < low) | (target > high) | target.isnan()
        if ignored is not None:
            outside &= ~ignored
        if not bool(outside.any()):
            if sums_off is not None and bool(sums_off):
                fail("target", "a dense target whose channels sum to one at every pixel when `mode` is not "
                     "given (C > 1 reads as multiclass softmax)",
                     "channel sums other than one; for overlapping (multi-hot) labels pass mode='multilabel'")
            return
    bad = target[outside].unique()[:8].tolist()
    extra = " or the ignore_index" if ignored is not None or ignore_index is not None else ""
    if target.is_floating_point():
        fail("target", f"a dense target with values in [{low}, {high}]{extra}", f"values {bad}")
    fail("target", f"labels in [{low}, {int(high)}]{extra}", f"label values {bad}")


def _labels_in_range(target: Tensor, low: float, high: float) -> Tensor:
    """A 0-d bool tensor: every value of ``target`` lies in [low, high].

    Contiguous CPU integer labels with ``low == 0`` take one pass: seen as unsigned, a negative
    label is huge, so ``max <= high`` checks both ends (half the time of ``aminmax``).
    """
    if target.device.type == "cpu" and low == 0 and not target.is_floating_point() and target.is_contiguous():
        values = target.numpy()
        return torch.tensor(bool(values.view(f"u{values.itemsize}").max() <= high))
    smallest, largest = torch.aminmax(target)
    return (smallest >= low) & (largest <= high)


def one_hot(labels: Tensor, num_classes: int) -> Tensor:
    """(B, *S) integer labels to a float (B, C, *S) one-hot tensor.

    Example:
        >>> one_hot(torch.tensor([[0, 2]]), 3)[0].T
        tensor([[1., 0., 0.],
                [0., 0., 1.]])
    """
    return torch.zeros(labels.shape[0], num_classes, *labels.shape[1:], device=labels.device).scatter_(
        1, labels.long().unsqueeze(1), 1.0
    )
