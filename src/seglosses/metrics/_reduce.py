"""Averaging of per-(unit, class) scores; undefined scores (NaN) are excluded and never become 0."""

from __future__ import annotations

import torch
from torch import Tensor


def nanmean(values: Tensor, dim: int) -> Tensor:
    """Mean over ``dim`` ignoring NaN; NaN where every value is NaN (torch.nanmean semantics)."""
    return torch.nanmean(values, dim=dim)


def reduce_scores(per_unit: Tensor, average: str) -> Tensor:
    """(N, C') scores -> "none": unchanged, "class": (C',) mean over units, "macro": mean over units
    then over classes (a scalar). NaN entries are excluded from every mean."""
    if average == "none":
        return per_unit
    per_class = nanmean(per_unit, dim=0)
    if average == "class":
        return per_class
    return nanmean(per_class, dim=0)


def count_undefined(per_unit: Tensor) -> Tensor:
    """Number of NaN (undefined, excluded) entries per class: (N, C') -> (C',) int64; (N,) -> ()."""
    return torch.isnan(per_unit).sum(dim=0)
