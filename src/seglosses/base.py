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

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

from seglosses._checks import check_one_of, check_type, fail
from seglosses.targets import MODES, infer_mode

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


class Loss(nn.Module):
    """Base class: configuration plus the three granularities of the loss contract.

    Subclasses set ``modes`` (the modes they support), ``has_per_pixel`` and their family's
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
    has_per_pixel: ClassVar[bool] = False
    # The family's functions: function(logits, target, **options, reduction) and
    # pixel_function(logits, target, **options) -> (B, *S); set with staticmethod(...).
    function: ClassVar[Callable[..., Tensor] | None] = None
    pixel_function: ClassVar[Callable[..., Tensor] | None] = None

    def __init__(self, reduction: str = "mean", **options: Any) -> None:
        super().__init__()
        check_one_of("reduction", reduction, REDUCTIONS)
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
        """The mode for these logits, refusing modes this loss does not support."""
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
        if self.function is None:
            return reduce_images(self.per_image(logits, target), self.reduction)
        self.check_mode(logits)  # through the function, which may take a faster path for its reduction
        return self.function(logits, target, **self.options, reduction=self.reduction)

    def extra_repr(self) -> str:
        shown = {k: v for k, v in self.options.items() if v is not None}
        return ", ".join(f"{k}={v!r}" for k, v in shown.items())

    def __add__(self, other: Loss) -> Loss:
        return Weighted.of(self) + other

    def __mul__(self, weight: float) -> Loss:
        return Weighted([(weight, self)], self.reduction)

    __rmul__ = __mul__

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
            check_type(f"terms[{position}] weight", weight, (int, float))
            if not math.isfinite(weight):
                fail(f"terms[{position}] weight", "finite", weight)
            check_type(f"terms[{position}] loss", loss, Loss)
            weights.append(float(weight))
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
    def ignore_index(self) -> int | None:
        return self.losses[0].ignore_index

    @property
    def mode(self) -> str | None:
        return self.losses[0].mode

    def per_image(self, logits: Tensor, target: Tensor) -> Tensor:
        return sum(w * loss.per_image(logits, target) for w, loss in self.terms)

    def per_pixel(self, logits: Tensor, target: Tensor) -> Tensor:
        missing = [type(loss).__name__ for loss in self.losses if not loss.has_per_pixel]
        if missing:
            raise TypeError(f"`Weighted` has no per-pixel form: its terms {missing} have none.")
        return sum(w * loss.per_pixel(logits, target) for w, loss in self.terms)

    def __add__(self, other: Loss) -> Weighted:
        check_type("other", other, Loss)
        return Weighted(self.terms + Weighted.of(other).terms, self.reduction)

    def __mul__(self, weight: float) -> Weighted:
        check_type("weight", weight, (int, float))
        return Weighted([(weight * w, loss) for w, loss in self.terms], self.reduction)

    __rmul__ = __mul__

    def extra_repr(self) -> str:
        return ", ".join(f"{w:g}" for w in self.weights)
