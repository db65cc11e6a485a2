"""Compound losses: weighted sums of losses, and the named compounds of the literature.

:class:`Weighted` is the one composition mechanism: ``0.3 * CrossEntropyLoss() + 0.7 * DiceLoss()``
builds one. It has a per-pixel form exactly when every term has one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from seglosses._checks import check_type, fail
from seglosses.base import Loss

__all__ = ["Weighted"]


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
        """``loss`` itself when it is already a sum of terms, else a one-term sum."""
        return loss if isinstance(loss, Weighted) else cls([(1.0, loss)])

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
