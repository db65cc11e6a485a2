"""The base class of every loss module, and the reduction over images.

A loss module only stores configuration (kornia style); the maths lives in the family's
functions. Every module has three granularities that give the same numbers:

- ``per_pixel(logits, target) -> (B, *S)`` where the loss has a per-pixel form; ignored pixels
  hold 0 and ``per_image == per_pixel.sum(spatial) / valid_count``;
- ``per_image(logits, target) -> (B,)``;
- ``forward(logits, target)`` = ``reduction`` over images.

Losses compose: ``0.3 * CrossEntropyLoss() + 0.7 * DiceLoss()`` is a :class:`Weighted`, defined here beside
:class:`Loss` so that the composition mechanism sits below every loss family.
"""

from __future__ import annotations

import inspect
import math
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from seglosses._checks import (
    check_finite_tensor,
    check_number,
    check_one_of,
    check_type,
    describe,
    fail,
    value_checks_enabled,
)
from seglosses.targets import LOGITS_CHECKED_AFTER, MODES, check_logits, infer_mode

REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")


def reduce_images(per_image: Tensor, reduction: str) -> Tensor:
    """Reduce (B,) per-image losses: "mean", "sum" or "none" (returns them unchanged).

    Example:
        >>> import torch
        >>> losses = torch.tensor([1.0, 3.0])
        >>> reduce_images(losses, "mean"), reduce_images(losses, "sum"), reduce_images(losses, "none")
        (tensor(2.), tensor(4.), tensor([1., 3.]))
    """
    check_one_of("reduction", reduction, REDUCTIONS)
    if reduction == "mean":
        return per_image.mean()
    if reduction == "sum":
        return per_image.sum()
    return per_image


def _args_section(doc: str | None) -> list[str]:
    """The entries of the "Args:" section of a Google-style docstring, as dedented lines."""
    lines = inspect.cleandoc(doc or "").splitlines()
    if "Args:" not in lines:
        return []
    section = []
    for line in lines[lines.index("Args:") + 1 :]:
        if line and not line.startswith(" "):
            break
        section.append(line)
    return [line[4:] if line.startswith("    ") else line for line in section if line.strip()]


def _named_function_doc(cls: type) -> str | None:
    """The docstring of the function a class docstring names first ("Module form of :func:`name`")."""
    match = re.search(r":func:`~?([\w.]+)`", cls.__doc__ or "")
    if match is None:
        return cls.__doc__
    function = vars(sys.modules[cls.__module__]).get(match.group(1).rsplit(".", 1)[-1])
    return getattr(function, "__doc__", None) or cls.__doc__


def _init_doc(cls: type, init: Callable[..., Any]) -> str:
    """A docstring for ``cls.__init__``: its options, described by the Args of the loss's function or class."""
    options = [name for name in inspect.signature(init).parameters if name != "self"]
    source = cls.function.__doc__ if cls.function is not None else _named_function_doc(cls)
    entries, keep = [], False
    for line in _args_section(source) or _args_section(cls.__doc__):
        if not line.startswith(" "):  # a new entry: "name: ..." or "name, other: ..."
            names = [n.strip() for n in line.split(":", 1)[0].split(",")]
            keep = any(n in options for n in names)
        if keep:
            entries.append("    " + line)
    described = {n.strip() for e in entries if not e.startswith("     ") for n in e.split(":", 1)[0].split(",")}
    entries += [f"    {name}: see :class:`{cls.__name__}`." for name in options if name not in described]
    summary = f"Build a {cls.__name__} from its options (keyword-only), checked here rather than at the first call."
    return summary + "\n\nArgs:\n" + "\n".join(entries)


def as_weight(name: str, weight: Any) -> float:
    """A finite number, or a 0-d tensor that needs no gradient, as a float (the weight of a loss term).

    Example:
        >>> as_weight("weight", torch.tensor(0.5)), as_weight("weight", 2)
        (0.5, 2.0)
    """
    if isinstance(weight, Tensor):
        if weight.ndim != 0 or not (weight.is_floating_point() or weight.dtype in _INTEGER_DTYPES):
            fail(name, "a number or a 0-d real tensor", describe(weight), TypeError)
        if weight.requires_grad:
            fail(name, "a tensor that does not require grad (term weights are stored as numbers; "
                 "multiply the loss's value to learn a weight)", "a tensor that requires grad", TypeError)
        weight = weight.item()
    check_type(name, weight, (int, float))
    if not math.isfinite(weight):
        fail(name, "finite", weight)
    return float(weight)


_INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _check_weight_vector(name: str, weights: Any) -> int:
    """A sequence or 1-D tensor of finite non-negative numbers; returns its length."""
    if isinstance(weights, Tensor):
        if weights.ndim != 1 or weights.is_complex() or weights.dtype == torch.bool:
            fail(name, "a 1-D tensor or a sequence of non-negative numbers", describe(weights), TypeError)
        values = weights.detach().double().cpu().tolist()
    else:
        check_type(name, weights, (list, tuple))
        for position, value in enumerate(weights):
            check_type(f"{name}[{position}]", value, (int, float))
        values = [float(value) for value in weights]
    if not values or not all(math.isfinite(v) and v >= 0 for v in values):
        fail(name, "a non-empty sequence of finite non-negative numbers", values if len(values) <= 12 else "bad values")
    return len(values)


def check_shared_options(loss_name: str, modes: Any, options: dict[str, Any]) -> None:
    """Check, at construction, the options that mean the same in every loss (a loss checks its own others).

    ``mode`` must be one the loss supports; ``ignore_index`` an int; ``include_background``,
    ``batch`` and ``squared`` booleans; ``eps`` positive; ``class_weights`` (and a focal ``alpha``
    given per class) finite non-negative numbers, one for binary mode's single channel.

    Example:
        >>> check_shared_options("DiceLoss", MODES, {"mode": "multi-class"})
        Traceback (most recent call last):
            ...
        ValueError: Expected `mode` to be None or one of [...] for DiceLoss, but got 'multi-class'.
    """
    mode = options.get("mode")
    if mode is not None and (not isinstance(mode, str) or mode not in modes):
        fail("mode", f"None or one of {list(modes)} for {loss_name}", repr(mode))
    ignore_index = options.get("ignore_index")
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        fail("ignore_index", "an int or None", describe(ignore_index), TypeError)
    for name in ("include_background", "batch", "squared"):
        if name in options:
            check_type(name, options[name], bool)
    if "eps" in options:
        check_number("eps", options["eps"], low=0.0, low_inclusive=False)
    for name in ("class_weights", "alpha", "focal_alpha", "pos_weight", "dice_class_weights"):
        weights = options.get(name)
        if weights is None or (name != "class_weights" and isinstance(weights, (int, float))):
            continue  # a scalar alpha is the loss's own option, checked by the loss
        length = _check_weight_vector(name, weights)
        if mode == "binary" and length != 1:
            fail(name, "one weight in binary mode (a single channel)", f"{length} weights")


class Loss(nn.Module):
    """Base class: configuration plus the three granularities of the loss contract.

    Subclasses set ``modes`` (the modes they support), ``spatial_dims`` (2 and 3 unless the loss is 2D
    or 3D only), ``has_per_pixel`` and their family's
    ``function`` (and ``pixel_function``), and store their options in ``self.options``; the three
    granularities then call those functions. A subclass may instead override the methods.

    Example:
        >>> import torch
        >>> from seglosses import DiceLoss
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> loss = DiceLoss()  # a Loss: options only, and the three granularities
        >>> per_pixel, per_image = loss.per_pixel(logits, labels), loss.per_image(logits, labels)
        >>> per_pixel.shape, per_image.shape, loss(logits, labels).shape
        (torch.Size([2, 8, 8]), torch.Size([2]), torch.Size([]))
        >>> torch.allclose(per_pixel.mean(dim=(1, 2)), per_image)
        True
        >>> torch.allclose(per_image.mean(), loss(logits, labels))
        True
    """

    modes: ClassVar[tuple[str, ...]] = MODES
    # The numbers of spatial dimensions the loss is defined for (2D: (B, C, H, W); 3D: (B, C, D, H, W)).
    spatial_dims: ClassVar[tuple[int, ...]] = (2, 3)
    has_per_pixel: ClassVar[bool] = False
    # The family's functions: function(logits, target, **options, reduction) and
    # pixel_function(logits, target, **options) -> (B, *S); set with staticmethod(...).
    function: ClassVar[Callable[..., Tensor] | None] = None
    pixel_function: ClassVar[Callable[..., Tensor] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Give a subclass's undocumented ``__init__`` the Args of its function, so that help() shows its options."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not init.__doc__:
            init.__doc__ = _init_doc(cls, init)

    def __init__(self, reduction: str = "mean", **options: Any) -> None:
        """Store ``reduction`` and the loss's ``options`` after checking the options every loss shares."""
        super().__init__()
        check_one_of("reduction", reduction, REDUCTIONS)
        check_shared_options(type(self).__name__, type(self).modes, options)
        self.reduction = reduction
        self.options = options

    # The option every mode-aware loss stores; used by the envelope and the harness.
    @property
    def ignore_index(self) -> int | None:
        return self.options.get("ignore_index")

    @property
    def mode(self) -> str | None:
        return self.options.get("mode")

    def check_mode(self, logits: Tensor) -> str:
        """The mode for these logits (checked first), refusing modes this loss does not support."""
        check_logits(logits)
        if logits.ndim - 2 not in self.spatial_dims:
            shapes = {2: "(B, C, H, W)", 3: "(B, C, D, H, W)"}
            fail("logits", f"of shape {' or '.join(shapes[d] for d in self.spatial_dims)} for {type(self).__name__}",
                 f"shape {tuple(logits.shape)}")
        mode = infer_mode(logits.shape[1], self.mode)
        if mode not in self.modes:
            fail("mode", f"one of {list(self.modes)} for {type(self).__name__}", repr(mode))
        return mode

    def per_image(self, logits: Tensor, target: Tensor) -> Tensor:
        """Loss of each image, (B,)."""
        if self.function is None:
            raise NotImplementedError(f"`{type(self).__name__}` sets no `function` and defines no per_image().")
        self.check_mode(logits)
        return self.function(logits, target, **self.options, reduction="none")

    def per_pixel(self, logits: Tensor, target: Tensor) -> Tensor:
        """Loss of each pixel, (B, *S), whose mean over an image's counted pixels is its per-image loss."""
        if not self.has_per_pixel or self.pixel_function is None:
            raise TypeError(
                f"`{type(self).__name__}` has no per-pixel form (its value is not a mean of per-pixel terms); "
                "use per_image(), or a loss with has_per_pixel=True, e.g. cross_entropy, dice, ce_dice_pixel."
            )
        self.check_mode(logits)
        return self.pixel_function(logits, target, **self.options)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """The loss of ``logits`` against ``target``, reduced over images by the module's ``reduction``.

        Args:
            logits: (B, C, H, W) or (B, C, D, H, W) raw scores (never probabilities).
            target: integer labels (B, *S) or (B, 1, *S) (whole-valued floats too), or a dense one-hot /
                soft target (B, C, *S) with values in [0, 1] (mode "multilabel" for overlapping regions).

        Returns:
            A scalar for ``reduction`` "mean" or "sum", the (B,) per-image losses for "none".
        """
        if value_checks_enabled() and isinstance(logits, Tensor) and logits.device.type == "cpu":
            # On the CPU a non-finite logit is found from the loss value instead of a pass over the logits
            # (on a GPU the logits' sum is fused into the label check's single sync).
            token = LOGITS_CHECKED_AFTER.set(True)
            try:
                value = self._forward(logits, target)
            finally:
                LOGITS_CHECKED_AFTER.reset(token)
            if not bool(torch.isfinite(value).all()):
                check_finite_tensor("logits", logits)
            return value
        return self._forward(logits, target)

    def _forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.function is None:
            return reduce_images(self.per_image(logits, target), self.reduction)
        self.check_mode(logits)  # through the function, which may take a faster path for its reduction
        return self.function(logits, target, **self.options, reduction=self.reduction)

    def extra_repr(self) -> str:
        shown = {k: v for k, v in self.options.items() if v is not None}
        return ", ".join(f"{k}={v!r}" for k, v in shown.items())

    def __add__(self, other: Loss) -> Loss:
        return Weighted.of(self) + other

    def __sub__(self, other: Loss) -> Loss:
        check_type("other", other, Loss)
        return self + (-other)

    def __mul__(self, weight: float | Tensor) -> Loss:
        return Weighted([(as_weight("weight", weight), self)], self.reduction)

    __rmul__ = __mul__

    def __truediv__(self, divisor: float | Tensor) -> Loss:
        divisor = as_weight("divisor", divisor)
        if divisor == 0:
            fail("divisor", "non-zero", divisor)
        return self * (1.0 / divisor)

    def __neg__(self) -> Loss:
        return self * -1.0

    def __radd__(self, other: object) -> Loss:
        if isinstance(other, (int, float)) and not isinstance(other, bool) and other == 0:
            return self  # sum([loss_a, loss_b]) starts from 0
        return NotImplemented


class Weighted(Loss):
    r"""Weighted sum of losses, :math:`L = \sum_k w_k L_k`, at every granularity.

    Args:
        terms: a sequence of ``(weight, loss)`` pairs; weights are finite floats (negative allowed).
        reduction: "mean", "sum" or "none" over images.

    Example:
        >>> from seglosses.pixel import CrossEntropyLoss
        >>> from seglosses.region import DiceLoss
        >>> loss = 0.3 * CrossEntropyLoss() + 0.7 * DiceLoss()
        >>> [round(w, 2) for w in loss.weights], loss.has_per_pixel
        ([0.3, 0.7], True)
    """

    def __init__(self, terms: Sequence[tuple[float, Loss]], reduction: str = "mean") -> None:
        super().__init__(reduction)
        check_type("terms", terms, (list, tuple))
        if len(terms) == 0:
            fail("terms", "a non-empty sequence of (weight, loss) pairs", "an empty sequence")
        weights, losses = [], []
        for position, term in enumerate(terms):
            if not isinstance(term, (tuple, list)) or len(term) != 2:
                fail(f"terms[{position}]", "a (weight, loss) pair", repr(term), TypeError)
            weight, loss = term
            weight = as_weight(f"terms[{position}] weight", weight)
            check_type(f"terms[{position}] loss", loss, Loss)
            weights.append(weight)
            losses.append(loss)
        self.weights = weights
        self.losses = nn.ModuleList(losses)

    @classmethod
    def of(cls, loss: Loss) -> Weighted:
        """``loss`` itself when it is already a sum of terms, else a one-term sum with its reduction."""
        return loss if isinstance(loss, Weighted) else cls([(1.0, loss)], loss.reduction)

    @property
    def terms(self) -> list[tuple[float, Loss]]:
        return list(zip(self.weights, self.losses, strict=True))

    @property
    def has_per_pixel(self) -> bool:  # type: ignore[override]
        return all(loss.has_per_pixel for loss in self.losses)

    @property
    def modes(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(m for m in self.losses[0].modes if all(m in loss.modes for loss in self.losses))

    @property
    def spatial_dims(self) -> tuple[int, ...]:  # type: ignore[override]
        return tuple(d for d in self.losses[0].spatial_dims if all(d in loss.spatial_dims for loss in self.losses))

    @property
    def ignore_index(self) -> int | None:
        return self.losses[0].ignore_index

    @property
    def mode(self) -> str | None:
        return self.losses[0].mode

    def per_image(self, logits: Tensor, target: Tensor) -> Tensor:
        """The weighted sum of the terms' per-image losses, (B,)."""
        check_logits(logits)
        return sum(w * loss.per_image(logits, target) for w, loss in self.terms)

    def per_pixel(self, logits: Tensor, target: Tensor) -> Tensor:
        """The weighted sum of the terms' per-pixel losses, (B, *S)."""
        check_logits(logits)
        missing = [type(loss).__name__ for loss in self.losses if not loss.has_per_pixel]
        if missing:
            raise TypeError(f"`Weighted` has no per-pixel form: its terms {missing} have none.")
        return sum(w * loss.per_pixel(logits, target) for w, loss in self.terms)

    def __add__(self, other: Loss) -> Weighted:
        check_type("other", other, Loss)
        return Weighted(self.terms + Weighted.of(other).terms, self.reduction)

    def __mul__(self, weight: float | Tensor) -> Weighted:
        weight = as_weight("weight", weight)
        return Weighted([(weight * w, loss) for w, loss in self.terms], self.reduction)

    __rmul__ = __mul__

    def extra_repr(self) -> str:
        return ", ".join(f"{w:g}" for w in self.weights)
