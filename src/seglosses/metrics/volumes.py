"""Slice-to-volume evaluation: stack the per-slice predictions of a 2D model into volumes by case.

The ACDC / Synapse protocol of the papers (SPEC E, G-CASCADE and TransUNet test code) scores
each test *volume*: the 2D model predicts slice by slice, the slices of a case are stacked along
a new first axis (in slice order) and every metric is computed on the volume, then averaged over
cases and classes. Overlap metrics do not depend on the slice order; surface metrics do, so pass
``slice_indices`` whenever the slices of a case may arrive out of order (shuffled or sharded data).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from seglosses._checks import check_type, fail

__all__ = ["SliceCollector", "Volume", "stack_slices"]


def _as_list(name: str, values: Any, length: int) -> list:
    if isinstance(values, Tensor):
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        fail(name, f"a sequence of {length} entries (one per slice)", repr(values), TypeError)
    values = list(values)
    if len(values) != length:
        fail(name, f"a sequence of {length} entries (one per slice)", f"{len(values)} entries")
    return values


def _check_slices(name: str, slices: Any) -> Tensor:
    check_type(name, slices, Tensor)
    if slices.ndim != 3:
        fail(name, "a batch of 2D slices of shape (N, H, W)", f"shape {tuple(slices.shape)}")
    if slices.is_floating_point() or slices.is_complex():
        fail(name, "an integer label map (see `as_labels` for logits)", f"dtype {slices.dtype}", TypeError)
    return slices


def stack_slices(
    slices: Tensor, case_ids: Sequence[Hashable], slice_indices: Sequence[int] | None = None
) -> dict[Hashable, Tensor]:
    r"""Group 2D label slices by case and stack each case into a volume, in slice order.

    .. math::
        V_k[z] = x_n \quad\text{for the slices } n \text{ with } \mathrm{case}_n = k,
        \ z = \text{rank of } \mathrm{index}_n \text{ within case } k

    Reference: the per-volume evaluation of the TransUNet (J. Chen et al., arXiv:2102.04306) and
    G-CASCADE (M. M. Rahman & R. Marculescu, WACV 2024) test code; SPEC E.

    Args:
        slices: (N, H, W) integer label slices.
        case_ids: N hashable case identifiers (one per slice).
        slice_indices: N integer slice positions; None keeps the order of ``slices`` within a case.

    Returns:
        case id -> (D_k, H, W) volume, cases in order of first appearance.

    Example:
        >>> slices = torch.tensor([[[1]], [[2]], [[3]], [[4]]])
        >>> volumes = stack_slices(slices, ["b", "a", "b", "a"], slice_indices=[1, 0, 0, 1])
        >>> {case: volume.flatten().tolist() for case, volume in volumes.items()}
        {'b': [3, 1], 'a': [2, 4]}
    """
    collector = SliceCollector()
    collector.add(slices, slices, case_ids, slice_indices)
    return {volume.case_id: volume.pred for volume in collector.pop_volumes()}


@dataclass(frozen=True)
class Volume:
    """One stacked case: (D, H, W) prediction and target, and its spacing (or None).

    Example:
        >>> collector = SliceCollector()
        >>> labels = torch.ones(2, 3, 3, dtype=torch.long)
        >>> collector.add(labels, labels, case_ids=["p1", "p1"], spacing=(2.5, 1.0, 1.0))
        >>> volume = collector.pop_volumes()[0]
        >>> volume.case_id, tuple(volume.pred.shape), volume.spacing
        ('p1', (2, 3, 3), (2.5, 1.0, 1.0))
    """

    case_id: Hashable
    pred: Tensor
    target: Tensor
    spacing: tuple[float, ...] | None


class SliceCollector:
    """Collects (pred, target) slices by case id across batches and stacks them into volumes.

    Slices are kept on the CPU until :meth:`pop_volumes` stacks every collected case; a case that
    was popped is closed, and further slices of it raise an error rather than start a second
    volume silently.

    Example:
        >>> collector = SliceCollector()
        >>> labels = torch.ones(2, 3, 3, dtype=torch.long)
        >>> collector.add(labels, labels, case_ids=["p1", "p1"])
        >>> [(v.case_id, tuple(v.pred.shape)) for v in collector.pop_volumes()]
        [('p1', (2, 3, 3))]
    """

    def __init__(self) -> None:
        self._slices: dict[Hashable, dict[int, tuple[Tensor, Tensor]]] = {}
        self._spacing: dict[Hashable, tuple[float, ...] | None] = {}
        self._closed: set[Hashable] = set()

    def __len__(self) -> int:
        """Number of cases collected and not yet popped."""
        return len(self._slices)

    def add(
        self,
        pred: Tensor,
        target: Tensor,
        case_ids: Sequence[Hashable],
        slice_indices: Sequence[int] | None = None,
        spacing: Any = None,
    ) -> None:
        """Add a batch of slices.

        Args:
            pred: (N, H, W) integer predicted label slices.
            target: (N, H, W) integer target label slices.
            case_ids: N case identifiers.
            slice_indices: N slice positions within their case; None appends in arrival order.
            spacing: None, one (3,) spacing of the stacked volume (slice axis first) for every slice,
                or an (N, 3) table; all slices of a case must agree.
        """
        _check_slices("pred", pred)
        _check_slices("target", target)
        if target.shape != pred.shape:
            fail("target", f"of the same shape as `pred` {tuple(pred.shape)}", f"shape {tuple(target.shape)}")
        count = pred.shape[0]
        case_ids = _as_list("case_ids", case_ids, count)
        indices = None if slice_indices is None else _as_list("slice_indices", slice_indices, count)
        spacings = self._per_slice_spacing(spacing, count)
        pred, target = pred.detach().cpu(), target.detach().cpu()
        for n, case_id in enumerate(case_ids):
            if case_id in self._closed:
                fail(
                    "case_ids", f"cases that were not already stacked and scored, {case_id!r} was", "a repeat"
                )
            case = self._slices.setdefault(case_id, {})
            index = len(case) if indices is None else indices[n]
            if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
                fail("slice_indices", "integers", repr(index), TypeError)
            if int(index) in case:
                fail(
                    "slice_indices", f"unique within a case, index {int(index)} of {case_id!r}", "a duplicate"
                )
            if case and next(iter(case.values()))[0].shape != pred[n].shape:
                fail("pred", f"slices of one shape within case {case_id!r}", f"shape {tuple(pred[n].shape)}")
            known = self._spacing.setdefault(case_id, spacings[n])
            if known != spacings[n]:
                fail("spacing", f"the same for every slice of case {case_id!r} ({known})", spacings[n])
            case[int(index)] = (pred[n], target[n])

    @staticmethod
    def _per_slice_spacing(spacing: Any, count: int) -> list[tuple[float, ...] | None]:
        if spacing is None:
            return [None] * count
        values = torch.as_tensor(spacing, dtype=torch.float64).cpu()
        if values.shape == (3,):
            values = values.expand(count, 3)
        if values.shape != (count, 3):
            fail(
                "spacing",
                f"None, a (3,) volume spacing or a ({count}, 3) table",
                f"shape {tuple(values.shape)}",
            )
        if not bool(torch.isfinite(values).all() and (values > 0).all()):
            fail("spacing", "finite and positive", values.tolist())
        return [tuple(row) for row in values.tolist()]

    def pop_volumes(self) -> list[Volume]:
        """Stack every collected case (slices sorted by index), close those cases and return them."""
        volumes = []
        for case_id, case in self._slices.items():
            order = sorted(case)
            volumes.append(
                Volume(
                    case_id=case_id,
                    pred=torch.stack([case[i][0] for i in order]),
                    target=torch.stack([case[i][1] for i in order]),
                    spacing=self._spacing[case_id],
                )
            )
            self._closed.add(case_id)
        self._slices.clear()
        self._spacing.clear()
        return volumes

    def state(self) -> dict[str, Any]:
        """Picklable content, for gathering across processes."""
        return {"slices": self._slices, "spacing": self._spacing, "closed": self._closed}

    def merge(self, states: list[dict[str, Any]]) -> None:
        """Replace the content by the union of several :meth:`state` results (e.g. of every rank)."""
        self._slices, self._spacing, self._closed = {}, {}, set()
        for state in states:
            self._closed |= state["closed"]
            for case_id, case in state["slices"].items():
                merged = self._slices.setdefault(case_id, {})
                for index, pair in case.items():
                    if index in merged:
                        fail(
                            "slice_indices",
                            f"unique within a case across processes, {index} of {case_id!r}",
                            "a duplicate",
                        )
                    merged[index] = pair
                self._spacing.setdefault(case_id, state["spacing"][case_id])
