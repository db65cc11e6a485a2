r"""The Top-k / Bottom-all-but-sigma envelope (SPEC section A) over any loss with a per-pixel form.

Two selections, one inside the other:

- **Pixel level** (SPEC A.3), per image, on detached values, ignored pixels excluded: keep ``all``
  counted pixels, the hardest fraction ``q`` of them (``tk``), or those whose loss is at most
  :math:`\mu_i+\kappa\sigma_i` (``bsigma``, "Bottom all but sigma"). The image loss
  :math:`L_i` is the mean of the kept pixel losses (with gradient).
- **Image level** (SPEC A.4-A.6): a ledger holds the latest :math:`L_i` of every training image;
  each batch image is ranked against the whole ledger and weighted by the smoothed box
  :math:`\zeta_\alpha(r;i_0,k)`; the batch loss is the unbiased estimate
  :math:`\frac{N}{K|B|}\sum_{i\in B} w_i L_i` of :math:`J=\frac1K\sum_i w_iL_i`.

The maths lives in functions (:func:`zeta`, :func:`soft_count`, :func:`rank_against_ledger`,
:func:`pixel_keep_mask`, :func:`select_pixels`, :func:`schedule_progress`, :func:`linear_schedule`);
:class:`TopKBottomSigma` holds the configuration (:class:`EnvelopeConfig`) and the state (the
ledger, in ``state_dict()``), and under ``torch.distributed`` keeps the ledger global (SPEC A.7).

Reference: Florea, Florea & Vertan, "Top-k Bottom All but sigma Loss Strategy for Medical Image
Segmentation", Diagnostics 15(17):2189, 2025 (doi:10.3390/diagnostics15172189); its garbled equations
are resolved in SPEC A.1-A.8.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy
import torch
import torch.distributed as dist
from torch import Tensor, nn

from seglosses._checks import check_number, check_one_of, check_type, fail, value_checks_enabled
from seglosses.base import Loss
from seglosses.pixel import cross_entropy_per_pixel
from seglosses.registry import create_loss
from seglosses.targets import infer_mode, prepare

__all__ = [
    "ENVELOPE_PRESETS",
    "EnvelopeConfig",
    "EnvelopeDiagnostics",
    "EnvelopeSelection",
    "EnvelopeWarning",
    "IndexedDataset",
    "TopKBottomSigma",
    "linear_schedule",
    "pixel_keep_mask",
    "rank_against_ledger",
    "schedule_progress",
    "select_pixels",
    "soft_count",
    "zeta",
]

PIXEL_STRATEGIES: tuple[str, ...] = ("all", "tk", "bsigma")
PIXEL_GROUPS: tuple[str, ...] = ("image", "class", "class_prediction")
IMAGE_STRATEGIES: tuple[str, ...] = ("erm", "atk", "atk_down")
SMOOTHINGS: tuple[str, ...] = ("none", "sm", "sm_up")
ALPHA_UNITS: tuple[str, ...] = ("index", "normalized")
BATCH_NORMS: tuple[str, ...] = ("unbiased", "batch_mean", "selected_mean")

# |alpha * x| beyond which S_alpha(x) is 0 or 1 to float64 precision (e^-40 = 4e-18).
_SATURATION = 40.0
# Below this total weight a batch counts as empty for "selected_mean" (SPEC A.6), and a weight as zero.
_ZERO_WEIGHT = 1e-8
_TINY = 1e-300


# --------------------------------------------------------------------------- image weights


def _step(x: Tensor, alpha: float) -> Tensor:
    """:math:`S_\\alpha(x)=1/(1+e^{-\\alpha x})`; the hard step (0.5 at 0) when alpha is infinite."""
    if math.isinf(alpha):
        return (torch.sign(x) + 1.0) * 0.5
    return torch.sigmoid(alpha * x)


def _check_box(num_images: int, k: float, i0: float, alpha: float, alpha_units: str, edge_offset: float) -> None:
    check_type("num_images", num_images, int)
    if num_images < 1:
        fail("num_images", "a positive int", num_images)
    check_number("k", k, low=0.0, low_inclusive=False)
    check_number("i0", i0)
    check_number("alpha", alpha, low=0.0, low_inclusive=False, allow_inf=True)
    check_one_of("alpha_units", alpha_units, ALPHA_UNITS)
    check_number("edge_offset", edge_offset, low=0.0, high=1.0)


def zeta(
    ranks: Tensor,
    num_images: int,
    k: float,
    i0: float,
    alpha: float,
    alpha_units: str = "index",
    *,
    edge_offset: float = 0.5,
    one_sided_ends: bool = True,
) -> Tensor:
    r"""The smoothed box weight of 0-based ranks (SPEC A.4, eq. 7 with its sign typo fixed).

    .. math::
        \zeta_\alpha(r) = S_\alpha\!\left(\frac{r+h-i_0}{u}\right)
        \left[1-S_\alpha\!\left(\frac{r+h-i_0-k}{u}\right)\right],\qquad
        S_\alpha(x)=\frac{1}{1+e^{-\alpha x}}

    with the half-integer offset :math:`h` (``edge_offset``, 0.5) so that :math:`\alpha=\infty` gives
    exactly the indicator :math:`\mathbb I(i_0\le r<i_0+k)`, and :math:`u=1` (``alpha_units="index"``)
    or :math:`u=N` (``"normalized"``: :math:`x` in units of :math:`r/N`). With ``one_sided_ends`` the
    lower factor is dropped when :math:`i_0\le0` and the upper one when :math:`i_0+k\ge N`, so a box
    touching an end of the ranking does not halve its edge image; ``edge_offset=0`` with
    ``one_sided_ends=False`` is the paper-literal form (edge images weigh 0.5).

    Reference: Florea et al. 2025, eqs. 6-8; SPEC A.4 and A.8 items 2, 4-6.

    Args:
        ranks: integer or real ranks, any shape, 0 = easiest.
        num_images: :math:`N`, the number of ranked images.
        k: box width (> 0; real-valued unless ``alpha`` is infinite).
        i0: first rank inside the box (``N - k`` for a top-k box).
        alpha: steepness (> 0), ``math.inf`` for the hard indicator.
        alpha_units: "index" (default, Fig. 3) or "normalized".
        edge_offset: :math:`h` in [0, 1].
        one_sided_ends: drop the factor of a box edge that lies at or beyond an end of the ranking.

    Returns:
        float64 weights in [0, 1], the shape of ``ranks``.

    Example:
        >>> ranks = torch.arange(10)
        >>> zeta(ranks, 10, k=3, i0=7, alpha=math.inf)
        tensor([0., 0., 0., 0., 0., 0., 0., 1., 1., 1.], dtype=torch.float64)
        >>> [round(w, 3) for w in zeta(ranks, 10, k=3, i0=7, alpha=1.0).tolist()]
        [0.002, 0.004, 0.011, 0.029, 0.076, 0.182, 0.378, 0.622, 0.818, 0.924]
        >>> [round(w, 3) for w in zeta(ranks, 10, k=4, i0=3, alpha=5.0).tolist()][2:8]
        [0.076, 0.924, 0.999, 0.999, 0.924, 0.076]
    """
    _check_box(num_images, k, i0, alpha, alpha_units, edge_offset)
    check_type("one_sided_ends", one_sided_ends, bool)
    check_type("ranks", ranks, Tensor)
    unit = 1.0 if alpha_units == "index" else float(num_images)
    position = (ranks.to(torch.float64) + edge_offset - i0) / unit
    weights = torch.ones_like(position)
    if not (one_sided_ends and i0 <= 0):
        weights = weights * _step(position, alpha)
    if not (one_sided_ends and i0 + k >= num_images):
        weights = weights * _step(k / unit - position, alpha)
    return weights


def soft_count(
    num_images: int,
    k: float,
    i0: float,
    alpha: float,
    alpha_units: str = "index",
    *,
    edge_offset: float = 0.5,
    one_sided_ends: bool = True,
    min_weight: float = 0.0,
) -> float:
    r"""The soft count :math:`K=\sum_{r=0}^{N-1} w(r)` of the weights :math:`w=f+(1-f)\zeta_\alpha`.

    It is the normaliser of the dataset objective :math:`J=\frac1K\sum_i w_iL_i` (SPEC A.6; the
    floor :math:`f` is ``min_weight``); :math:`K=k` for a hard box. Only the ranks where
    :math:`\zeta` is neither 0 nor 1 to float64 precision are evaluated, so the cost is
    :math:`O(1/\alpha)` in index units and :math:`O(N)` in normalised units; the skipped tail
    weights are below :math:`e^{-40}` each.

    Args:
        num_images, k, i0, alpha, alpha_units, edge_offset, one_sided_ends: as in :func:`zeta`.
        min_weight: the weight floor :math:`f` in [0, 1].

    Returns:
        :math:`K` as a Python float.

    Example:
        >>> soft_count(1000, k=100, i0=900, alpha=math.inf)
        100.0
        >>> round(soft_count(1000, k=100, i0=900, alpha=1.0), 6)
        100.0
        >>> round(soft_count(1000, k=100, i0=900, alpha=20.0, alpha_units="normalized"), 2)
        106.35
    """
    _check_box(num_images, k, i0, alpha, alpha_units, edge_offset)
    min_weight = check_number("min_weight", min_weight, low=0.0, high=1.0)
    unit = 1.0 if alpha_units == "index" else float(num_images)
    lower = not (one_sided_ends and i0 <= 0)
    upper = not (one_sided_ends and i0 + k >= num_images)
    margin = 1.0 if math.isinf(alpha) else _SATURATION * unit / alpha + 1.0
    last = num_images - 1
    # Ranks outside [first, stop] weigh < e^-40; inside (ones_from, ones_to) both factors are exactly 1.
    first = max(0, math.ceil(i0 - edge_offset - margin)) if lower else 0
    stop = min(last, math.floor(i0 + k - edge_offset + margin)) if upper else last
    ones_from = max(first, math.floor(i0 - edge_offset + margin)) if lower else first
    ones_to = min(stop, math.ceil(i0 + k - edge_offset - margin)) if upper else stop
    if ones_from > ones_to:
        pieces, ones = [(first, stop)], 0
    else:
        pieces, ones = [(first, ones_from - 1), (ones_to + 1, stop)], ones_to - ones_from + 1
    total = float(ones)
    for low, high in pieces:
        if high >= low:
            ranks = torch.arange(low, high + 1, dtype=torch.float64)
            total += float(
                zeta(ranks, num_images, k, i0, alpha, alpha_units, edge_offset=edge_offset,
                     one_sided_ends=one_sided_ends).sum()
            )
    return min_weight * num_images + (1.0 - min_weight) * total


# --------------------------------------------------------------------------- ranking


def _count_ranks(keys: Tensor, values: Tensor, indices: Tensor) -> Tensor:
    """Direct counting, O(B N) work without a host sync (the path for accelerators)."""
    positions = torch.arange(keys.shape[0], device=keys.device)
    rows_per_chunk = max(1, (1 << 24) // max(1, keys.shape[0]))
    ranks = []
    for value, index in zip(values.split(rows_per_chunk), indices.split(rows_per_chunk), strict=True):
        value, index = value.unsqueeze(1), index.unsqueeze(1)
        before = (keys < value) | ((keys == value) & (positions < index))
        ranks.append(before.sum(dim=1))
    return torch.cat(ranks)


def _sorted_ranks(keys: Tensor, sorted_keys: Tensor, values: Tensor, indices: Tensor) -> Tensor:
    """Binary search in a sorted copy, O(B log N); equal keys fall back to counting their run."""
    low = torch.searchsorted(sorted_keys, values, side="left")
    high = torch.searchsorted(sorted_keys, values, side="right")
    ranks = low.clone()
    for row in (high - low > 1).nonzero().flatten().tolist():
        index = int(indices[row])
        ranks[row] += (keys[:index] == values[row]).sum()
    return ranks


def rank_against_ledger(ledger: Tensor, indices: Tensor, *, sorted_ledger: Tensor | None = None) -> Tensor:
    r"""0-based ranks of the entries ``indices`` among all entries of ``ledger``, ascending.

    .. math::
        r_i = \#\{m: V_m < V_{\mathrm{idx}_i}\} + \#\{m < \mathrm{idx}_i: V_m = V_{\mathrm{idx}_i}\}

    i.e. the position of entry :math:`\mathrm{idx}_i` in a stable sort of the ledger (ties broken
    by index), the same ranks as the paper's insertion into a sorted array (SPEC A.4).

    Args:
        ledger: (N,) finite values.
        indices: (B,) int64 entries to rank.
        sorted_ledger: ``ledger`` sorted ascending (values only), or None. With it the ranks cost
            :math:`O(B\log N)` (one host sync for equal values); without it, :math:`O(BN)` counting
            without a host sync (best on accelerators).

    Returns:
        (B,) int64 ranks.

    Example:
        >>> ledger = torch.tensor([0.3, 0.1, 0.3, 0.2], dtype=torch.float64)
        >>> rank_against_ledger(ledger, torch.tensor([0, 2, 1]))
        tensor([2, 3, 0])
        >>> rank_against_ledger(ledger, torch.tensor([0, 2, 1]), sorted_ledger=ledger.sort().values)
        tensor([2, 3, 0])
    """
    check_type("ledger", ledger, Tensor)
    check_type("indices", indices, Tensor)
    values = ledger[indices]
    if sorted_ledger is None:
        return _count_ranks(ledger, values, indices)
    return _sorted_ranks(ledger, sorted_ledger, values, indices)


def _replace_sorted(sorted_keys: Tensor, old: Tensor, new: Tensor) -> Tensor:
    """The sorted copy with the values ``old`` (present in it) replaced by ``new``, in O(N) copying."""
    old, new = old.sort().values, new.sort().values
    # Equal old values occupy a run: take its first, second, ... slots.
    run_start = torch.searchsorted(old, old, side="left")
    slots = torch.arange(old.shape[0], device=old.device)
    removals = torch.searchsorted(sorted_keys, old, side="left") + slots - run_start
    insertions = torch.searchsorted(sorted_keys, new, side="left")
    events = sorted([(int(p), 0, j) for j, p in enumerate(insertions.tolist())]
                    + [(int(p), 1, 0) for p in removals.tolist()])
    # numpy concatenates CPU views single-threaded, several times faster than torch.cat under load.
    on_cpu = sorted_keys.device.type == "cpu"
    source, inserted = (sorted_keys.numpy(), new.numpy()) if on_cpu else (sorted_keys, new)
    pieces, cursor = [], 0
    for position, kind, slot in events:
        pieces.append(source[cursor:position])
        if kind == 0:
            pieces.append(inserted[slot:slot + 1])
            cursor = position
        else:
            cursor = position + 1
    pieces.append(source[cursor:])
    return torch.from_numpy(numpy.concatenate(pieces)) if on_cpu else torch.cat(pieces)


# --------------------------------------------------------------------------- pixel selection


def _flat(values: Tensor) -> Tensor:
    return values.reshape(values.shape[0], -1)


def pixel_keep_mask(
    values: Tensor,
    valid: Tensor | None = None,
    strategy: str = "bsigma",
    *,
    fraction: float = 0.1,
    kappa: float = 1.0,
    groups: Tensor | None = None,
    num_groups: int | None = None,
) -> Tensor:
    r"""Which pixels of each image the pixel-level selection keeps (SPEC A.3), on detached values.

    - ``"all"``: every counted pixel.
    - ``"tk"``: the :math:`\lceil qP_i\rceil` largest values of the :math:`P_i` counted pixels
      (``fraction`` = :math:`q`), ties broken as a stable sort does (lower flat position first).
    - ``"bsigma"``: :math:`\{j:\ell_{ij}\le\mu_i+\kappa\sigma_i\}`, with the mean and the
      population std (``correction=0``) over the counted pixels; the non-strict rule keeps at
      least the minimum, and every pixel when :math:`\sigma_i=0`; ``kappa=inf`` keeps all.
      With ``groups`` (the class-conditional rule of SPEC A.9) the mean, std and minimum are taken
      over the counted pixels of each group :math:`G_{ic}` of an image instead: a class is compared
      with itself, and by Cantelli's inequality at least :math:`\kappa^2/(1+\kappa^2)` of every
      group is kept (half at :math:`\kappa=1`).

    Ignored pixels (``valid`` False) are never kept; an image without counted pixels keeps none.

    Args:
        values: (B, *S) per-pixel values to rank (the loss, or its CE part).
        valid: (B, *S) bool mask of counted pixels, or None (all counted).
        strategy: "all", "tk" or "bsigma".
        fraction: :math:`q` of "tk", in (0, 1].
        kappa: :math:`\kappa` of "bsigma", >= 0 (``math.inf`` allowed).
        groups: (B, *S) int64 group of every pixel (its class) in [0, ``num_groups``), or None (one
            group per image). Only with "bsigma" (or "all").
        num_groups: the number of groups; None reads it from ``groups`` (one host sync).

    Returns:
        (B, *S) bool mask.

    Example:
        >>> values = torch.tensor([[0.1, 0.2, 0.3, 5.0]])
        >>> pixel_keep_mask(values, strategy="bsigma")
        tensor([[ True,  True,  True, False]])
        >>> pixel_keep_mask(values, strategy="tk", fraction=0.5)
        tensor([[False, False,  True,  True]])
        >>> missed = torch.tensor([[0.1, 0.1, 0.2, 0.1, 0.1, 0.2, 0.1, 0.1, 3.0, 3.2]])  # a missed object
        >>> pixel_keep_mask(missed, strategy="bsigma")  # is the high tail of its image: dropped
        tensor([[ True,  True,  True,  True,  True,  True,  True,  True, False, False]])
        >>> classes = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 0, 1, 1]])
        >>> pixel_keep_mask(missed, strategy="bsigma", groups=classes)  # compared with its own class: kept
        tensor([[ True,  True, False,  True,  True, False,  True,  True,  True, False]])
    """
    check_type("values", values, Tensor)
    check_one_of("strategy", strategy, PIXEL_STRATEGIES)
    fraction = check_number("fraction", fraction, low=0.0, high=1.0, low_inclusive=False)
    kappa = check_number("kappa", kappa, low=0.0, allow_inf=True)
    if valid is not None and tuple(valid.shape) != tuple(values.shape):
        fail("valid", f"a mask of shape {tuple(values.shape)}", f"shape {tuple(valid.shape)}")
    if groups is not None:
        check_type("groups", groups, Tensor)
        if tuple(groups.shape) != tuple(values.shape) or groups.is_floating_point():
            fail("groups", f"an integer tensor of shape {tuple(values.shape)}",
                 f"shape {tuple(groups.shape)} and dtype {groups.dtype}")
        if strategy == "tk":
            fail("strategy", "'bsigma' or 'all' with `groups` (the class-conditional rule is a Bσ rule)", "'tk'")
        if num_groups is None:
            num_groups = int(groups.max()) + 1 if groups.numel() else 1
        check_type("num_groups", num_groups, int)
    values = values.detach()
    if strategy == "all" or (strategy == "bsigma" and math.isinf(kappa)):
        return torch.ones_like(values, dtype=torch.bool) if valid is None else valid.clone()
    flat = _flat(values)
    flat_valid = None if valid is None else _flat(valid.bool())
    if strategy == "bsigma" and groups is not None:
        keep = _grouped_bsigma_keep(flat, flat_valid, _flat(groups.long()), num_groups, kappa)
    elif strategy == "bsigma":
        keep = _bsigma_keep(flat, flat_valid, kappa)
    else:
        keep = _topk_keep(flat, flat_valid, fraction)
    return keep.reshape(values.shape)


def _bsigma_keep(flat: Tensor, flat_valid: Tensor | None, kappa: float) -> Tensor:
    if flat_valid is None:  # plain passes: several times faster than torch.std_mean on CPU
        mean = flat.mean(dim=1, keepdim=True)
        std = torch.linalg.vector_norm(flat - mean, dim=1, keepdim=True) / math.sqrt(flat.shape[1])
        smallest = flat.amin(dim=1, keepdim=True)
    else:
        weights = flat_valid.to(flat.dtype)
        count = weights.sum(dim=1, keepdim=True).clamp_min(1.0)
        mean = (flat * weights).sum(dim=1, keepdim=True) / count
        std = torch.linalg.vector_norm((flat - mean) * weights, dim=1, keepdim=True) / count.sqrt()
        smallest = flat.masked_fill(~flat_valid, math.inf).amin(dim=1, keepdim=True)
    # Rounding can put mu + kappa * sigma a hair below equal values; the minimum is always kept.
    keep = flat <= torch.maximum(mean + kappa * std, smallest)
    return keep if flat_valid is None else keep & flat_valid


def _grouped_bsigma_keep(flat: Tensor, flat_valid: Tensor | None, groups: Tensor, num_groups: int,
                         kappa: float) -> Tensor:
    """Bσ with the mean, population std and minimum of each (image, group): the per-image rule once per
    group, with the group's pixels as the counted ones. A few groups: a loop of plain reductions (the
    fastest on CPU); many (the class x prediction groups): per-(image, group) sums in a fixed number of
    passes, which no loop over the groups can match. Neither reads a value back to the host."""
    if num_groups <= 4:
        keep = torch.zeros_like(flat, dtype=torch.bool)
        for group in range(num_groups):
            member = groups == group
            if flat_valid is not None:
                member &= flat_valid
            keep |= _bsigma_keep(flat, member, kappa)
        return keep
    batch = flat.shape[0]
    slots = (groups + num_groups * torch.arange(batch, device=flat.device).unsqueeze(1)).flatten()
    values = flat.flatten().double()
    member = torch.ones_like(values) if flat_valid is None else flat_valid.flatten().double()

    def per_slot_sum(weights: Tensor) -> Tensor:
        return values.new_zeros(batch * num_groups).index_add_(0, slots, weights)

    count = per_slot_sum(member).clamp_min(1.0)
    mean = per_slot_sum(values * member) / count
    mean += per_slot_sum((values - mean[slots]) * member) / count  # one refinement: the rounding of the sums
    deviation = (values - mean[slots]) * member
    std = (per_slot_sum(deviation * deviation) / count).sqrt()
    counted = values if flat_valid is None else values.masked_fill(~flat_valid.flatten(), math.inf)
    smallest = values.new_full((batch * num_groups,), math.inf).scatter_reduce_(0, slots, counted, "amin")
    # Rounding can put mu + kappa * sigma a hair below equal values; the minimum is always kept.
    keep = (values <= torch.maximum(mean + kappa * std, smallest)[slots]).view_as(flat)
    return keep if flat_valid is None else keep & flat_valid


def _topk_keep(flat: Tensor, flat_valid: Tensor | None, fraction: float) -> Tensor:
    pixels = flat.shape[1]
    if flat_valid is None:
        keep_count = max(1, math.ceil(pixels * fraction - 1e-9))
        # The same count in every image: the smallest of an unsorted top-k is the threshold.
        threshold = flat.topk(keep_count, dim=1, sorted=False).values.amin(dim=1, keepdim=True)
        keep_counts = torch.full((flat.shape[0], 1), keep_count, device=flat.device)
        ranked = flat
    else:
        counts = flat_valid.sum(dim=1)
        ranked = flat.masked_fill(~flat_valid, -math.inf)
        keep_counts = torch.ceil(counts.double() * fraction - 1e-9).long().clamp(0, pixels).unsqueeze(1)
        # A static bound on the kept counts lets topk run without a host sync.
        bound = max(1, min(pixels, math.ceil(fraction * pixels)))
        largest = ranked.topk(bound, dim=1).values
        threshold = largest.gather(1, (keep_counts - 1).clamp_min(0))
    above = ranked > threshold
    at = ranked == threshold
    if flat_valid is not None:
        at &= flat_valid
    still_needed = keep_counts - above.sum(dim=1, keepdim=True)
    if flat.device.type == "cpu" and bool((at.sum(dim=1, keepdim=True) <= still_needed).all()):
        keep = above | at  # no surplus tie at the threshold (the usual case): skip the tie-break scan
    else:
        keep = above | (at & (at.cumsum(dim=1) <= still_needed))
    return keep & (keep_counts > 0)


def select_pixels(
    per_pixel: Tensor,
    valid: Tensor | None = None,
    strategy: str = "bsigma",
    *,
    fraction: float = 0.1,
    kappa: float = 1.0,
    rank_values: Tensor | None = None,
    groups: Tensor | None = None,
    num_groups: int | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Pixel-level selection and the image losses :math:`L_i=\frac1{|K_i|}\sum_{j\in K_i}\ell_{ij}`.

    The kept set :math:`K_i` is :func:`pixel_keep_mask` of ``rank_values`` (default: the detached
    ``per_pixel``); the mean keeps the gradient of the kept pixels. An image with no kept pixel
    has :math:`L_i=0`.

    Args:
        per_pixel: (B, *S) pixel losses :math:`\ell_{ij}`, with gradient.
        valid: (B, *S) bool mask of counted pixels, or None.
        strategy, fraction, kappa, groups, num_groups: as in :func:`pixel_keep_mask`.
        rank_values: (B, *S) values to select on instead of ``per_pixel`` (e.g. its CE part).

    Returns:
        ``(image_losses, keep)``: (B,) losses and the (B, *S) bool keep mask.

    Example:
        >>> per_pixel = torch.tensor([[0.1, 0.2, 0.3, 5.0], [1.0, 1.0, 1.0, 1.0]])
        >>> losses, keep = select_pixels(per_pixel, strategy="bsigma")
        >>> losses, keep.sum(dim=1)
        (tensor([0.2000, 1.0000]), tensor([3, 4]))
    """
    check_type("per_pixel", per_pixel, Tensor)
    ranked = per_pixel if rank_values is None else rank_values
    if tuple(ranked.shape) != tuple(per_pixel.shape):
        fail("rank_values", f"of shape {tuple(per_pixel.shape)}", f"shape {tuple(ranked.shape)}")
    if groups is not None and num_groups is None:
        check_type("groups", groups, Tensor)
        num_groups = int(groups.max()) + 1 if groups.numel() else 1
    image_losses, keep, _ = _select(per_pixel, valid, strategy, fraction, kappa, ranked, groups, num_groups)
    return image_losses, (torch.ones_like(per_pixel, dtype=torch.bool) if keep is None else keep)


def _first_positive_channel(positive: Tensor) -> Tensor:
    """(B, *S) 1 + the first True channel of a (B, C, *S) bool mask, 0 where none is (multilabel groups)."""
    return torch.where(positive.any(dim=1), positive.to(torch.uint8).argmax(dim=1) + 1, 0)


def _channel_argmax(x: Tensor) -> Tensor:
    """``x.argmax(dim=1)`` (the first largest channel) in one pass per channel: the strided channel
    reduction of ``argmax`` is about ten times slower on CPU for the few channels of a segmentation."""
    best, index = x[:, 0], torch.zeros_like(x[:, 0], dtype=torch.long)
    for channel in range(1, x.shape[1]):
        larger = x[:, channel] > best
        best = torch.where(larger, x[:, channel], best)
        index = index.masked_fill(larger, channel)
    return index


def _select(per_pixel, valid, strategy, fraction, kappa, ranked, groups=None,
            num_groups=None) -> tuple[Tensor, Tensor | None, Tensor | float]:
    """:func:`select_pixels` plus the kept counts; the mask is None when every pixel is kept."""
    dims = tuple(range(1, per_pixel.ndim))
    if valid is None and (strategy == "all" or (strategy == "bsigma" and math.isinf(kappa))):
        pixels = float(per_pixel[0].numel())
        count = per_pixel.new_full((per_pixel.shape[0],), pixels)
        return per_pixel.sum(dim=dims) / count, None, pixels
    keep = pixel_keep_mask(ranked, valid, strategy, fraction=fraction, kappa=kappa, groups=groups,
                           num_groups=num_groups)
    kept = keep.to(per_pixel.dtype)
    count = kept.sum(dim=dims)
    return (per_pixel * kept).sum(dim=dims) / count.clamp_min(1.0), keep, count


# --------------------------------------------------------------------------- schedules


def schedule_progress(epoch: float, first_epoch: float, total_epochs: float) -> float:
    r"""Progress :math:`t=\mathrm{clip}\big((e-e_s)/(E-e_s),0,1\big)` of a schedule (SPEC A.5).

    When :math:`E\le e_s` the schedule jumps: :math:`t=0` before :math:`e_s` and 1 from it.

    Example:
        >>> [schedule_progress(e, 2, 12) for e in (1, 2, 7, 12, 20)]
        [0.0, 0.0, 0.5, 1.0, 1.0]
    """
    if total_epochs <= first_epoch:
        return 0.0 if epoch < first_epoch else 1.0
    return min(1.0, max(0.0, (epoch - first_epoch) / (total_epochs - first_epoch)))


def linear_schedule(start: float, end: float, *, first_epoch: float, total_epochs: float) -> Callable[[float], float]:
    r"""A schedule :math:`f(e)=a+(b-a)\,t(e)` that goes linearly from ``start`` at ``first_epoch`` to
    ``end`` at ``total_epochs`` (see :func:`schedule_progress`); usable as any envelope schedule.

    Example:
        >>> alpha = linear_schedule(20.0, 1.0, first_epoch=2, total_epochs=21)
        >>> [alpha(e) for e in (1, 2, 11.5, 21)]
        [20.0, 20.0, 10.5, 1.0]
    """
    start = check_number("start", start, allow_inf=True)
    end = check_number("end", end, allow_inf=True)
    first_epoch = check_number("first_epoch", first_epoch)
    total_epochs = check_number("total_epochs", total_epochs)

    def schedule(epoch: float) -> float:
        progress = schedule_progress(epoch, first_epoch, total_epochs)
        return start if progress == 0.0 else end if progress == 1.0 else start + (end - start) * progress

    return schedule


def _round_half_up(x: float) -> int:
    return math.floor(round(x, 9) + 0.5)


class EnvelopeSelection(NamedTuple):
    """The image-level box at one epoch, and its soft count.

    ``selective`` is False when every image weighs 1 (ERM); ``k`` and ``i0`` are the box's width
    and first rank, ``alpha`` its steepness, ``K`` the soft count of the weights over all
    :math:`N` ranks (SPEC A.6; :math:`N` when not selective) and ``n_over_k`` = :math:`N/K`, the
    factor by which the unbiased normalisation scales the gradients.

    Example:
        >>> criterion = TopKBottomSigma("cross_entropy", 100, image_strategy="atk", smoothing="none")
        >>> criterion.selection(1)  # epoch 1 is ERM
        EnvelopeSelection(selective=False, k=100.0, i0=0.0, alpha=inf, K=100.0, n_over_k=1.0)
        >>> criterion.selection(2)  # then the hardest 10% (ranks 90 to 99), with a hard box
        EnvelopeSelection(selective=True, k=10.0, i0=90.0, alpha=inf, K=10.0, n_over_k=10.0)
    """

    selective: bool
    k: float
    i0: float
    alpha: float
    K: float
    n_over_k: float


class EnvelopeWarning(UserWarning):
    """A run-time warning of :class:`TopKBottomSigma`: training proceeds, but probably not as intended.

    Filter it like any warning: ``warnings.filterwarnings("ignore", category=seglosses.EnvelopeWarning)``.
    """


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class EnvelopeConfig:
    """Every option of :class:`TopKBottomSigma` (configuration is data; see its docstring for each).

    The defaults are an ERM-equivalent envelope (every image and every pixel with weight 1), so a
    default-built criterion trains exactly like its base loss; the paper's configurations are
    presets (:data:`ENVELOPE_PRESETS`), chosen explicitly.

    Example:
        >>> EnvelopeConfig(image_strategy="atk", smoothing="sm").alpha_start
        20.0
    """

    image_strategy: str | Callable[[float], Any] = "erm"
    smoothing: str | float | Callable[[float], float] = "none"
    pixel_strategy: str = "all"
    pixel_groups: str = "class"
    pixel_start_epoch: float = 1.0
    total_epochs: float | None = None
    first_selective_epoch: float = 2.0
    top_fraction: float = 0.10
    top_exclusion: float = 0.0
    start_fraction: float = 1.0
    end_fraction: float = 0.05
    alpha_start: float = 20.0
    alpha_end: float = 1.0
    alpha_units: str = "index"
    edge_offset: float = 0.5
    one_sided_ends: bool = True
    min_weight: float = 0.0
    pixel_fraction: float = 0.10
    kappa: float = 1.0
    pixel_rank_key: str = "total"
    batch_norm: str = "unbiased"
    max_grad_scale: float = 10.0
    granularity: str = "epoch"
    steps_per_epoch: int | None = None
    ledger_init: str = "warmup"
    staleness: str = "none"
    staleness_momentum: float = 0.5
    rank_method: str = "auto"
    distributed: bool | None = None
    checksum_every: int = 100

    def __post_init__(self) -> None:
        if not callable(self.image_strategy):
            check_one_of("image_strategy", self.image_strategy, IMAGE_STRATEGIES)
        if not callable(self.smoothing):
            if isinstance(self.smoothing, str):
                check_one_of("smoothing", self.smoothing, SMOOTHINGS)
            else:
                check_number("smoothing", self.smoothing, low=0.0, low_inclusive=False, allow_inf=True)
        check_one_of("pixel_strategy", self.pixel_strategy, PIXEL_STRATEGIES)
        check_one_of("pixel_groups", self.pixel_groups, PIXEL_GROUPS)
        check_number("pixel_start_epoch", self.pixel_start_epoch, low=1.0)
        needs_total = self.image_strategy == "atk_down" or self.smoothing == "sm_up"
        if self.total_epochs is None and needs_total:
            fail("total_epochs", "a number when image_strategy='atk_down' or smoothing='sm_up' (the schedules end "
                 "there)", None)
        if self.total_epochs is not None:
            check_number("total_epochs", self.total_epochs, low=1.0)
        check_number("first_selective_epoch", self.first_selective_epoch, low=1.0)
        for name in ("top_fraction", "end_fraction", "pixel_fraction", "start_fraction"):
            check_number(name, getattr(self, name), low=0.0, high=1.0, low_inclusive=False)
        check_number("top_exclusion", self.top_exclusion, low=0.0, high=1.0, high_inclusive=False)
        if self.top_exclusion > 0 and self.image_strategy == "erm":
            fail("image_strategy", "'atk', 'atk_down' or a callable with top_exclusion > 0 (for ERM on all but the "
                 "hardest images use image_strategy='atk', top_fraction=1.0, or the 'trimmed' preset)", "'erm'")
        check_number("alpha_start", self.alpha_start, low=0.0, low_inclusive=False, allow_inf=True)
        check_number("alpha_end", self.alpha_end, low=0.0, low_inclusive=False, allow_inf=True)
        check_one_of("alpha_units", self.alpha_units, ALPHA_UNITS)
        check_number("edge_offset", self.edge_offset, low=0.0, high=1.0)
        check_type("one_sided_ends", self.one_sided_ends, bool)
        check_number("min_weight", self.min_weight, low=0.0, high=1.0, high_inclusive=False)
        check_number("kappa", self.kappa, low=0.0, allow_inf=True)
        check_one_of("pixel_rank_key", self.pixel_rank_key, ("total", "ce"))
        check_one_of("batch_norm", self.batch_norm, BATCH_NORMS)
        check_number("max_grad_scale", self.max_grad_scale, low=1.0, allow_inf=True)
        check_one_of("granularity", self.granularity, ("epoch", "iteration"))
        if self.steps_per_epoch is not None:
            check_type("steps_per_epoch", self.steps_per_epoch, int)
            if self.steps_per_epoch < 1:
                fail("steps_per_epoch", "a positive int or None", self.steps_per_epoch)
        check_one_of("ledger_init", self.ledger_init, ("warmup", "prepass"))
        check_one_of("staleness", self.staleness, ("none", "relative"))
        momentum = check_number("staleness_momentum", self.staleness_momentum, low=0.0, high=1.0)
        if not 0.0 < momentum < 1.0:
            fail("staleness_momentum", "in (0, 1): at 1 a batch normalises itself away and ranks freeze (a batch of "
                 "one image keeps its first rank forever)", momentum)
        check_one_of("rank_method", self.rank_method, ("auto", "sorted", "count"))
        if self.distributed is not None:
            check_type("distributed", self.distributed, bool)
        check_type("checksum_every", self.checksum_every, int)
        if self.checksum_every < 0:
            fail("checksum_every", "a non-negative int (0 switches the check off)", self.checksum_every)


_CONFIG_FIELDS = tuple(field.name for field in dataclasses.fields(EnvelopeConfig))
_CONFIG_DEFAULTS = {field.name: field.default for field in dataclasses.fields(EnvelopeConfig)}

_PAPER_BSIGMA = {"pixel_strategy": "bsigma", "pixel_groups": "image"}
ENVELOPE_PRESETS: dict[str, dict[str, Any]] = {
    "erm": {"image_strategy": "erm", "smoothing": "none", "pixel_strategy": "all"},
    "bsigma": {"image_strategy": "erm", "smoothing": "none", **_PAPER_BSIGMA},
    "bsigma_class": {"image_strategy": "erm", "smoothing": "none", "pixel_strategy": "bsigma", "pixel_groups": "class"},
    "bsigma_class_prediction": {"image_strategy": "erm", "smoothing": "none", "pixel_strategy": "bsigma",
                                "pixel_groups": "class_prediction"},
    "trimmed": {"image_strategy": "atk", "smoothing": "none", "pixel_strategy": "all", "top_fraction": 1.0,
                "top_exclusion": 0.05},
    "atk": {"image_strategy": "atk", "smoothing": "none", "pixel_strategy": "all"},
    "atk_down": {"image_strategy": "atk_down", "smoothing": "none", "pixel_strategy": "all"},
    "atk_sm": {"image_strategy": "atk", "smoothing": "sm", "pixel_strategy": "all"},
    "atk_down_sm_up": {"image_strategy": "atk_down", "smoothing": "sm_up", "pixel_strategy": "all"},
    "atk_sm_tk": {"image_strategy": "atk", "smoothing": "sm", "pixel_strategy": "tk"},
    "atk_sm_bsigma": {"image_strategy": "atk", "smoothing": "sm", **_PAPER_BSIGMA},
    "paper_best": {"image_strategy": "atk_down", "smoothing": "sm_up", **_PAPER_BSIGMA},
    "paper_best_normalized": {"image_strategy": "atk_down", "smoothing": "sm_up", **_PAPER_BSIGMA,
                              "alpha_units": "normalized"},
}
"""Named option sets: the rows of the paper's ablation (Table 1, with the paper's per-image Bσ), the
pilot's normalised variant, and ours: ``bsigma_class`` (class-conditional Bσ, SPEC A.9) and
``trimmed`` (ERM on all but the hardest 5% of images from epoch 2, the box offset of SPEC A.4)."""


def _config_from(config: EnvelopeConfig | None, options: dict[str, Any]) -> EnvelopeConfig:
    unknown = [name for name in options if name not in _CONFIG_FIELDS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], _CONFIG_FIELDS, n=3, cutoff=0.5)
        hint = f" (did you mean {close}?)" if close else ""
        fail("options", f"names among {list(_CONFIG_FIELDS)}", f"{unknown}{hint}", TypeError)
    if config is None:
        return EnvelopeConfig(**options)
    check_type("config", config, EnvelopeConfig)
    return dataclasses.replace(config, **options)


def _same_option(value: Any, default: Any) -> bool:
    return type(value) is type(default) and value == default if not callable(value) else False


def _show_option(value: Any) -> str:
    if callable(value) and not isinstance(value, (str, float, int)):
        return getattr(value, "__qualname__", None) or repr(value)
    return repr(value)


# --------------------------------------------------------------------------- diagnostics


@dataclass(frozen=True)
class EnvelopeDiagnostics:
    """What the last call did, for the local batch (all tensors detached; reading them costs no host sync).

    Attributes:
        weights: (B,) float64 image weights :math:`w_i` (1 during warm-up and ERM phases).
        ranks: (B,) int64 ranks against the ledger (0 = easiest); -1 while the ledger is filling,
            without indices, or when nothing was recorded.
        kept_fraction: (B,) fraction of each image's counted pixels kept (mean over heads).
        class_kept_fraction: (G,) fraction of the batch's annotated pixels of each class that the
            pixel selection kept (pixels of all heads pooled); NaN for a class without annotated
            pixels in the batch; 1 for every class when no pixel selection is active. Classes are
            the labels (multiclass), 0/1 (binary), or 0 = no positive channel and 1 + the first
            positive channel (multilabel).
        image_losses: (B,) :math:`L_i` (summed over heads).
        loss: 0-dim, the batch loss the call returned (N/K-scaled under ``batch_norm="unbiased"``).
        image_loss_mean: 0-dim, the plain mean of ``image_losses`` (no weights, no N/K scaling).
        base_loss_mean: 0-dim, the base loss's own mean over the batch (every counted pixel, no
            selection, no weights): comparable across presets and with a run without the envelope.
        K: the soft count of the weights (:math:`N` in ERM phases).
        k, i0, alpha: the box of the schedule at this epoch.
        grad_scale: :math:`N/K`, the gradient scale of the unbiased normalisation.
        zero_weight_fraction: 0-dim tensor, fraction of batch images with :math:`w_i<10^{-8}`.
        weightless: 0-dim bool tensor, True when selection is active and every image of the batch
            weighs below :math:`10^{-8}` (the loss is 0 and carries no gradient).
        warmup: True while the ledger is still filling (weights are 1).
        recorded: whether the call wrote its image losses into the ledger (False in ``eval()``,
            under ``torch.no_grad()`` and without indices).
        epoch: the effective epoch the schedules saw (None without an epoch).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> criterion = TopKBottomSigma.from_preset("erm", "cross_entropy", num_images=2)
        >>> loss = criterion(logits, labels, indices=torch.tensor([0, 1]), epoch=1)
        >>> diagnostics = criterion.diagnostics
        >>> diagnostics.weights, diagnostics.kept_fraction, diagnostics.K
        (tensor([1., 1.], dtype=torch.float64), tensor([1., 1.]), 2.0)
        >>> bool(diagnostics.image_loss_mean == loss), bool(diagnostics.base_loss_mean == loss)
        (True, True)
        >>> scalars = diagnostics.as_dict()
        >>> scalars["weights"], scalars["weightless"], scalars["kept_fraction_class_2"]
        ([1.0, 1.0], False, 1.0)
    """

    weights: Tensor
    ranks: Tensor
    kept_fraction: Tensor
    class_kept_fraction: Tensor
    image_losses: Tensor
    loss: Tensor
    image_loss_mean: Tensor
    base_loss_mean: Tensor
    K: float
    k: float
    i0: float
    alpha: float
    grad_scale: float
    zero_weight_fraction: Tensor
    weightless: Tensor
    warmup: bool
    recorded: bool
    epoch: float | None

    def as_dict(self) -> dict[str, Any]:
        """Plain Python values for a logger: every field (tensors as lists or numbers), plus the scalars
        ``kept_fraction_mean`` and ``kept_fraction_class_<c>`` for each class ``c``."""
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            out[field.name] = value.tolist() if isinstance(value, Tensor) else value
        out["kept_fraction_mean"] = self.kept_fraction.double().mean().item()
        for group, fraction in enumerate(out["class_kept_fraction"]):
            out[f"kept_fraction_class_{group}"] = fraction
        return out


class _HeadResult(NamedTuple):
    """One head's pixel level: L_i with gradient, the keep mask (None: all kept), the kept fraction per
    image, the base loss per image (every counted pixel), and the kept / annotated pixels per class."""

    image_losses: Tensor
    keep: Tensor | None
    kept_fraction: Tensor
    base_losses: Tensor
    class_kept: Tensor | None
    class_counted: Tensor | None


# --------------------------------------------------------------------------- any dataset, plus the index


class IndexedDataset(torch.utils.data.Dataset):
    """A map-style dataset whose samples also carry their index, the ``indices`` the envelope needs.

    A tuple or list sample ``(x, y, ...)`` becomes ``(x, y, ..., index)``; a dict sample (MONAI,
    the runner) gets an ``"index"`` entry (``key``); a list of dicts (several crops of one image,
    e.g. MONAI's ``num_samples``) gets it in every dict, so the crops share their image's index
    (the envelope accepts repeated indices); any other sample ``x`` becomes ``(x, index)``. The
    default collate then hands out a (B,) int64 tensor of indices.

    Args:
        dataset: any object with ``__len__`` and ``__getitem__`` (a ``torch.utils.data.Dataset``).
        key: the dict key that holds the index ("index").

    Example:
        >>> pairs = torch.utils.data.TensorDataset(torch.zeros(3, 1, 4, 4), torch.zeros(3, 4, 4))
        >>> image, mask, index = IndexedDataset(pairs)[2]
        >>> index
        2
        >>> IndexedDataset([{"image": "a.png"}, {"image": "b.png"}])[1]
        {'image': 'b.png', 'index': 1}
        >>> batch = next(iter(torch.utils.data.DataLoader(IndexedDataset(pairs), batch_size=3)))
        >>> batch[-1]
        tensor([0, 1, 2])
    """

    def __init__(self, dataset: Any, key: str = "index") -> None:
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            fail("dataset", "a map-style dataset (with __len__ and __getitem__)", type(dataset).__name__, TypeError)
        check_type("key", key, str)
        self.dataset = dataset
        self.key = key

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self._with_index(self.dataset[index], index)

    def _with_index(self, sample: Any, index: int) -> Any:
        if isinstance(sample, Mapping):
            if self.key in sample:
                fail("dataset", f"samples without a {self.key!r} entry (IndexedDataset adds it; pass another `key`)",
                     f"a sample that has one: {sorted(sample)}")
            return {**sample, self.key: index}
        if isinstance(sample, list) and sample and all(isinstance(item, Mapping) for item in sample):
            return [self._with_index(item, index) for item in sample]
        if isinstance(sample, (tuple, list)):
            return type(sample)([*sample, index]) if isinstance(sample, list) else (*sample, index)
        return sample, index


# --------------------------------------------------------------------------- the module


def _after_load(module: TopKBottomSigma, incompatible_keys: Any) -> None:
    module._reset_caches()


class TopKBottomSigma(nn.Module):
    r"""The Top-k / Bottom-all-but-sigma envelope over a loss with a per-pixel form (SPEC A).

    Each call: per-pixel losses :math:`\ell_{ij}` of ``base_loss``; pixel selection per image
    (:func:`select_pixels`); image losses :math:`L_i` written to the ledger; ranks of the batch
    images against the whole ledger (:func:`rank_against_ledger`); weights
    :math:`w_i=f+(1-f)\,\zeta_\alpha(r_i;i_0,k)` (:func:`zeta`, floor :math:`f` = ``min_weight``);
    and the batch loss

    .. math::
        \hat L_B=\frac{N}{K|B|}\sum_{i\in B}w_iL_i,\qquad K=\sum_{r=0}^{N-1}w(r),

    an unbiased estimate of :math:`J=\frac1K\sum_{i=1}^N w_iL_i` (``batch_norm="unbiased"``;
    ``"batch_mean"`` gives :math:`\frac1{|B|}\sum w_iL_i` and ``"selected_mean"``
    :math:`\sum w_iL_i/\sum w_i`). Weights are detached. Until every image has a ledger entry the
    loss is the plain mean (warm-up, normally epoch 1). A batch whose weights are all zero gives a
    zero loss that keeps the graph, so every DDP rank can call backward.

    **The defaults are ERM** (every image and pixel weighs 1: the base loss itself, plus a ledger
    and diagnostics). The paper's configurations are presets (:meth:`from_preset`); its best one,
    ``paper_best``, is harmful on this project's runs at the end of its schedule (docs/envelope.md).

    The schedules (SPEC A.5), with :math:`t=\mathrm{clip}((e-e_s)/(E-e_s),0,1)`:

    - ``image_strategy``: ``"erm"`` (:math:`w\equiv1`); ``"atk"``, from epoch :math:`e_s` the top
      :math:`k=` ``top_fraction`` :math:`\cdot N` images, :math:`i_0=N-k`; ``"atk_down"``,
      :math:`k(t)=N(s+(f_e-s)t)` from ``start_fraction`` :math:`s` to ``end_fraction``
      :math:`f_e`; or a callable ``f(epoch)`` giving the kept fraction :math:`k/N` (top box) or a
      pair ``(k/N, i0/N)`` for any box. With ``top_exclusion`` :math:`x>0` a top box ends below
      the hardest :math:`xN` ranks from :math:`e_s` on: :math:`i_0+k=(1-x)N`, with :math:`k\le(1-x)N`.
    - ``smoothing``: ``"none"`` (:math:`\alpha=\infty`, the hard box); ``"sm"``
      (:math:`\alpha=` ``alpha_start``); ``"sm_up"`` (:math:`\alpha` from ``alpha_start`` to
      ``alpha_end``); a number; or a callable ``f(epoch) -> alpha``.
      :math:`k` is rounded (half up) only when :math:`\alpha=\infty`, and kept in :math:`[1, N]`.

    Args:
        base_loss: a :class:`~seglosses.base.Loss` with a per-pixel form, or its registry name.
        num_images: :math:`N`, the number of training images (the dataset length).
        config: an :class:`EnvelopeConfig`; ``options`` override its fields.
        loss_options: keyword arguments of :func:`~seglosses.create_loss` when ``base_loss`` is a name.
        image_strategy: "erm" (default), "atk", "atk_down" or a callable, as above.
        smoothing: "none" (default), "sm", "sm_up", a number or a callable, as above.
        pixel_strategy: "all" (default), "tk" or "bsigma", SPEC A.3.
        pixel_groups: where "bsigma" takes its mean and std (other strategies ignore it): over each
            annotated class inside the image ("class", default, SPEC A.9: a missed small structure is
            compared with itself); over the pixels of each annotated class that share a predicted class
            ("class_prediction": it also keeps the ring of background a model wrongly paints around a
            small object, but keeps most mislabelled pixels too, and lost to ERM under noise); or over
            the whole image ("image", the paper's rule, which drops any missed structure smaller than
            :math:`1/(1+\kappa^2)` of the image, and then never learns it). The grouped rules keep at
            least :math:`\kappa^2/(1+\kappa^2)` of every group, hence of every class
            (docs/envelope.md, "Small structures").
        pixel_start_epoch: pixel selection applies from this epoch on (all pixels before it) (1).
        total_epochs: :math:`E`, where "atk_down" and "sm_up" end (required by them).
        first_selective_epoch: :math:`e_s` (2).
        top_fraction: k/N of "atk" (0.10).
        top_exclusion: the hardest fraction of the ranking that a top box leaves out (0), e.g. whole-mask
            annotation errors, which rank there.
        start_fraction, end_fraction: k/N at the start and the end of "atk_down" (1.0, 0.05).
        alpha_start, alpha_end: :math:`\alpha` of "sm" and the ends of "sm_up" (20, 1).
        alpha_units: "index" (default, Fig. 3) or "normalized" (:math:`x` in units of r/N).
        edge_offset, one_sided_ends: the edge rules of :func:`zeta` (0.5, True).
        min_weight: the floor :math:`f` in [0, 1) (0).
        pixel_fraction: :math:`q` of "tk" (0.10).
        kappa: :math:`\kappa` of "bsigma" (1.0; ``math.inf`` keeps all).
        pixel_rank_key: rank pixels by the "total" loss (default) or its "ce" part (the base loss's
            ``per_pixel_parts()["ce"]`` when it has one, else plain cross-entropy); the mask then
            applies to the whole loss.
        batch_norm: "unbiased" (default), "batch_mean" or "selected_mean" (SPEC A.6).
        max_grad_scale: warn (:class:`EnvelopeWarning`, once per epoch) when the box makes
            :math:`N/K` larger than this (10; ``math.inf``: never).
        granularity: "epoch" (schedules see ``floor(epoch)``) or "iteration" (the fractional epoch).
        steps_per_epoch: lets a call pass ``step`` (0-based within the epoch): the schedules then
            see ``epoch + step / steps_per_epoch``.
        ledger_init: "warmup" (default: ERM until the ledger is full) or "prepass" (the ledger
            must be filled by :meth:`prepass` before training).
        staleness: "none" (default, the paper's ledger) or "relative": each entry also records the
            running mean image loss :math:`m` at the time it was written, and images are ranked on
            :math:`V/m`. During the first pass (until some image is seen twice) :math:`m` is the mean
            of the losses written, and all first-pass entries share its final value; from then on
            :math:`m` follows the ratio :math:`\sum_B L_i/\sum_B (V_i/m_i)` of each batch's fresh
            losses to their recorded relative losses (exact when all losses shrink by a common
            factor) through a log-space EMA with weight ``staleness_momentum``.
        staleness_momentum: the EMA weight of a batch's ratio, in (0, 1) (0.5). 1 is refused: a batch
            would normalise itself away (its total relative loss conserved), which freezes the rank
            of every image at batch size 1.
        rank_method: "auto" (a sorted copy of the ledger on CPU, O(B log N) ranks after an O(N)
            copy; direct counting without host syncs elsewhere), "sorted" or "count".
        distributed: None (auto: when torch.distributed is initialised with world size > 1), True
            or False.
        checksum_every: under DDP, assert every this many calls that the ledger replicas agree (0: never).

    Call:
        ``criterion(logits, target, indices=None, epoch=None, step=None)``: ``logits`` (B, C, *S)
        or a list of heads (deep supervision: pixel selection per head, :math:`L_i` summed over
        heads); ``target`` one tensor for every head or a list; ``indices`` (B,) integer dataset
        indices in :math:`[0, N)` (repeats allowed: see below); ``epoch`` >= 1 (1-based, fractional
        allowed). ``indices`` and ``epoch`` may be omitted only with ``image_strategy="erm"`` (without
        indices nothing is recorded). Returns the scalar batch loss; :attr:`diagnostics` then holds
        an :class:`EnvelopeDiagnostics`.

    Validation: in ``eval()`` mode, and in training mode under ``torch.no_grad()`` or
    ``torch.inference_mode()`` (with one :class:`EnvelopeWarning`), a call records nothing and
    returns the base loss's own mean over all counted pixels, comparable across presets and with a
    run without the envelope; :attr:`diagnostics` is filled as usual (weights 1, ranks -1).

    Repeated indices (samplers with replacement, several crops of one image, ``DistributedSampler``
    padding): the ledger keeps the value of the last occurrence, in batch order and, under DDP, in
    rank order (so every replica applies the same update); every occurrence is ranked by its index
    and contributes :math:`w_iL_i` with its own loss. Indices outside :math:`[0, N)` raise with
    value checks on; with them off (no host sync) such an image is neither recorded nor weighted.

    Under ``torch.distributed`` (SPEC A.7) indices and image losses are all-gathered (padded with
    index -1), every rank applies the same ledger update, ranks and :math:`K` use the global ledger,
    and the local loss is :math:`\frac{WN}{KB_{glob}}\sum_{i\in B_{loc}}w_iL_i`. The first
    distributed call broadcasts the state from rank 0 (a resumed run loads the ledger once).

    Example:
        >>> from seglosses.pixel import CrossEntropyLoss
        >>> _ = torch.manual_seed(0)
        >>> criterion = TopKBottomSigma(CrossEntropyLoss(), num_images=4, image_strategy="atk",
        ...                             smoothing="none", top_fraction=0.5)
        >>> criterion
        TopKBottomSigma(
          num_images=4, image_strategy='atk', top_fraction=0.5
          (base_loss): CrossEntropyLoss(...)
        )
        >>> logits, labels = torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4, 8, 8))
        >>> loss = criterion(logits[:2], labels[:2], indices=torch.tensor([0, 1]), epoch=1)
        >>> loss = criterion(logits[2:], labels[2:], indices=torch.tensor([2, 3]), epoch=1)
        >>> criterion.diagnostics.warmup  # the ledger just filled up, but epoch 1 is ERM for "atk"
        False
        >>> loss = criterion(logits[:2], labels[:2], indices=torch.tensor([0, 1]), epoch=2)
        >>> criterion.diagnostics.ranks, criterion.diagnostics.weights, criterion.diagnostics.K
        (tensor([2, 0]), tensor([1., 0.], dtype=torch.float64), 2.0)
    """

    def __init__(
        self,
        base_loss: Loss | str,
        num_images: int,
        *,
        config: EnvelopeConfig | None = None,
        loss_options: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        """Wrap ``base_loss`` (a module with a per-pixel form, or a registered name built with
        ``loss_options``) for a training set of ``num_images`` images, configured by ``config`` or
        by :class:`EnvelopeConfig` keyword options (every option: the class docstring)."""
        super().__init__()
        check_type("base_loss", base_loss, (Loss, str))
        if isinstance(base_loss, str):
            base_loss = create_loss(base_loss, **(loss_options or {}))
        elif loss_options:
            fail("loss_options", "None when base_loss is a module (they configure create_loss)", loss_options)
        if not getattr(base_loss, "has_per_pixel", False):
            fail("base_loss", "a loss with a per-pixel form (has_per_pixel=True), e.g. cross_entropy, dice, "
                 "ce_dice_pixel", f"{type(base_loss).__name__}, which has none", TypeError)
        check_type("num_images", num_images, int)
        if num_images < 1:
            fail("num_images", "a positive int", num_images)
        self.base_loss = base_loss
        self.num_images = num_images
        self.config = _config_from(config, options)
        terms = getattr(base_loss, "losses", [base_loss])
        pooled = [type(term).__name__ for term in terms if getattr(term, "options", {}).get("batch") is True]
        if pooled and self.config.image_strategy != "erm":
            fail("base_loss", "per-image (batch=False): ranking images needs image losses that do not depend on "
                 "the rest of the batch (SPEC A.2)", f"{pooled} with batch=True")
        relative = self.config.staleness == "relative"
        self.register_buffer("ledger", torch.full((num_images,), math.nan, dtype=torch.float64))
        if relative:
            self.register_buffer("ledger_scale", torch.full((num_images,), math.nan, dtype=torch.float64))
            self.register_buffer("running_mean", torch.tensor(math.nan, dtype=torch.float64))
            self.register_buffer("running_count", torch.tensor(0.0, dtype=torch.float64))
            self.register_buffer("first_pass_mean", torch.tensor(math.nan, dtype=torch.float64))
            self.register_buffer("revisited", torch.tensor(False))
        self.register_buffer("steps", torch.tensor(0, dtype=torch.int64))
        self.diagnostics: EnvelopeDiagnostics | None = None
        self._reset_caches()
        self._broadcast_done = False
        self._soft_counts: dict[tuple, float] = {}
        self._calls = 0  # a host-side call count (the checksum schedule) that needs no sync to read
        self._warned: set[str] = set()  # warnings given once per criterion
        self._epoch_warned: set[str] = set()  # warnings given once per epoch
        self._last_epoch: int | None = None
        self.register_load_state_dict_post_hook(_after_load)

    @classmethod
    def from_preset(cls, name: str, base_loss: Loss | str, num_images: int, **options: Any) -> TopKBottomSigma:
        """Build from a named option set of :data:`ENVELOPE_PRESETS`; ``options`` override it.

        Example:
            >>> criterion = TopKBottomSigma.from_preset("paper_best", "cross_entropy", 100, total_epochs=50)
            >>> criterion.config.image_strategy, criterion.config.smoothing, criterion.config.pixel_strategy
            ('atk_down', 'sm_up', 'bsigma')
        """
        check_one_of("name", name, list(ENVELOPE_PRESETS))
        return cls(base_loss, num_images, **{**ENVELOPE_PRESETS[name], **options})

    def extra_repr(self) -> str:
        """``num_images`` and every option that differs from its default."""
        shown = [f"{name}={_show_option(getattr(self.config, name))}" for name in _CONFIG_FIELDS
                 if not _same_option(getattr(self.config, name), _CONFIG_DEFAULTS[name])]
        return ", ".join([f"num_images={self.num_images}", *shown])

    # ------------------------------------------------------------------ caches and device moves

    def _reset_caches(self) -> None:
        """Forget what is derived from the state (after loading it or moving it)."""
        self._sorted_keys: Tensor | None = None
        self._relative_keys: Tensor | None = None
        self._unfilled: int | None = None

    def _apply(self, fn, recurse=True):
        # Follow device moves but keep the float64 state float64 under .half() / .to(dtype).
        saved = {name: buffer for name, buffer in self._buffers.items() if buffer is not None}
        super()._apply(fn, recurse)
        for name, before in saved.items():
            after = self._buffers[name]
            if after is not None and after.dtype != before.dtype:
                self._buffers[name] = before.to(device=after.device)
        self._reset_caches()
        return self

    # ------------------------------------------------------------------ schedules

    def effective_epoch(self, epoch: float, step: int | None = None) -> float:
        """The epoch the schedules see: ``floor`` of it for ``granularity="epoch"``.

        Example:
            >>> TopKBottomSigma("cross_entropy", 10, image_strategy="atk", smoothing="sm").effective_epoch(2.7)
            2.0
        """
        check_type("epoch", epoch, (int, float))
        if not math.isfinite(epoch) or epoch < 1:
            fail("epoch", "a finite number >= 1 (epochs are 1-based)", epoch)
        epoch = float(epoch)
        if step is not None:
            check_type("step", step, int)
            if self.config.steps_per_epoch is None:
                fail("steps_per_epoch", "set when a call passes `step`", None)
            if not 0 <= step < self.config.steps_per_epoch:
                fail("step", f"in [0, {self.config.steps_per_epoch})", step)
            epoch += step / self.config.steps_per_epoch
        return float(math.floor(epoch)) if self.config.granularity == "epoch" else epoch

    def _resolve_epoch(self, epoch: float | None, step: int | None, required: bool) -> float | None:
        if epoch is None:
            if required and self.config.image_strategy != "erm":
                fail("epoch", "the current 1-based epoch (the schedules need it; only image_strategy='erm' may "
                     "omit it)", None)
            if step is not None:
                fail("epoch", "given when `step` is", None)
            if required and self.config.pixel_start_epoch > 1 and self.config.pixel_strategy != "all":
                fail("epoch", f"the current 1-based epoch (pixel selection starts at pixel_start_epoch = "
                     f"{self.config.pixel_start_epoch:g})", None)
            return None
        return self.effective_epoch(epoch, step)

    def _fractions(self, epoch: float) -> tuple[float, float | None]:
        cfg, strategy = self.config, self.config.image_strategy
        if callable(strategy):
            out = strategy(epoch)
            fraction, start = out if isinstance(out, tuple) else (out, None)
            fraction = check_number("image_strategy(epoch)", fraction, low=0.0, high=1.0, low_inclusive=False)
            if start is not None:
                start = check_number("image_strategy(epoch)[1]", start, low=0.0, high=1.0)
            return fraction, start
        if strategy == "erm":
            return 1.0, None
        if strategy == "atk":
            return (1.0 if epoch < cfg.first_selective_epoch else cfg.top_fraction), None
        schedule = linear_schedule(cfg.start_fraction, cfg.end_fraction, first_epoch=cfg.first_selective_epoch,
                                   total_epochs=cfg.total_epochs)
        return schedule(epoch), None

    def _alpha(self, epoch: float) -> float:
        cfg, smoothing = self.config, self.config.smoothing
        if callable(smoothing):
            return check_number("smoothing(epoch)", smoothing(epoch), low=0.0, low_inclusive=False, allow_inf=True)
        if not isinstance(smoothing, str):
            return float(smoothing)
        if smoothing == "none":
            return math.inf
        if smoothing == "sm":
            return cfg.alpha_start
        return linear_schedule(cfg.alpha_start, cfg.alpha_end, first_epoch=cfg.first_selective_epoch,
                               total_epochs=cfg.total_epochs)(epoch)

    def selection(self, epoch: float, step: int | None = None) -> EnvelopeSelection:
        """The image-level box of a call at ``epoch`` (and ``step``), after :meth:`effective_epoch`, with
        its soft count ``K`` and gradient scale ``n_over_k`` = N/K (what a logger records per epoch).

        Example:
            >>> criterion = TopKBottomSigma.from_preset("paper_best", "cross_entropy", 1000, total_epochs=21)
            >>> criterion.selection(1).selective, criterion.selection(21)
            (False, EnvelopeSelection(selective=True, k=50.0, i0=950.0, alpha=1.0, K=50.0, n_over_k=20.0))
        """
        return self._box(self.effective_epoch(epoch, step))

    def _box(self, epoch: float) -> EnvelopeSelection:
        n, cfg = self.num_images, self.config
        fraction, start = self._fractions(epoch)
        alpha = self._alpha(epoch)
        hard = math.isinf(alpha)
        k, i0 = fraction * n, (None if start is None else start * n)
        excluded = cfg.top_exclusion > 0 and epoch >= cfg.first_selective_epoch
        if excluded and start is not None:
            fail("top_exclusion", "0 with an image_strategy that returns a whole box (k/N, i0/N)", cfg.top_exclusion)
        if hard:
            k = float(_round_half_up(k))
            i0 = None if i0 is None else float(_round_half_up(i0))
        k = min(float(n), max(1.0, k))
        if excluded:
            top = n * (1.0 - cfg.top_exclusion)
            top = max(1.0, float(_round_half_up(top)) if hard else top)
            k = min(k, top)
            i0 = top - k
        i0 = n - k if i0 is None else i0
        selective = not (k >= n and i0 <= 0)
        if not selective:
            return EnvelopeSelection(False, k, i0, alpha, float(n), 1.0)
        big_k = self._soft_count(k, i0, alpha)
        return EnvelopeSelection(True, k, i0, alpha, big_k, n / big_k)

    def _soft_count(self, k: float, i0: float, alpha: float) -> float:
        cfg = self.config
        key = (k, i0, alpha, cfg.alpha_units, cfg.edge_offset, cfg.one_sided_ends, cfg.min_weight)
        if key not in self._soft_counts:
            if len(self._soft_counts) > 256:
                self._soft_counts.clear()
            self._soft_counts[key] = soft_count(
                self.num_images, k, i0, alpha, cfg.alpha_units, edge_offset=cfg.edge_offset,
                one_sided_ends=cfg.one_sided_ends, min_weight=cfg.min_weight,
            )
        return self._soft_counts[key]

    def _weights(self, ranks: Tensor, box: EnvelopeSelection) -> Tensor:
        cfg = self.config
        shape = zeta(ranks, self.num_images, box.k, box.i0, box.alpha, cfg.alpha_units,
                     edge_offset=cfg.edge_offset, one_sided_ends=cfg.one_sided_ends)
        return cfg.min_weight + (1.0 - cfg.min_weight) * shape

    def _pixel_strategy(self, epoch: float | None) -> str:
        """The pixel strategy of a call: all pixels before ``pixel_start_epoch`` (an epoch-less call selects)."""
        if epoch is not None and epoch < self.config.pixel_start_epoch:
            return "all"
        return self.config.pixel_strategy

    # ------------------------------------------------------------------ pixel level

    def _num_groups(self, logits: Tensor) -> int:
        channels = logits.shape[1]
        mode = infer_mode(channels, self.base_loss.mode)
        return 2 if mode == "binary" else channels + 1 if mode == "multilabel" else channels

    def _pixel_groups(self, logits: Tensor, target: Any) -> Tensor | None:
        """(B, *S) int64 class of every pixel (see :class:`EnvelopeDiagnostics`), or None without a target tensor."""
        if not isinstance(target, Tensor):
            return None
        mode = infer_mode(logits.shape[1], self.base_loss.mode)
        count = self._num_groups(logits)
        if target.ndim == logits.ndim and target.is_floating_point():
            if mode == "multiclass":
                return _channel_argmax(target)
            if mode == "binary":
                return (target[:, 0] > 0.5).long()
            return _first_positive_channel(target > 0.5)
        labels = target[:, 0] if target.ndim == logits.ndim else target
        return labels.long().clamp(0, count - 1)

    def _predicted_groups(self, logits: Tensor) -> Tensor:
        """(B, *S) int64 predicted class of every pixel, numbered as :meth:`_pixel_groups` numbers labels."""
        mode = infer_mode(logits.shape[1], self.base_loss.mode)
        if mode == "multiclass":
            return _channel_argmax(logits)
        if mode == "binary":
            return (logits[:, 0] > 0).long()
        return _first_positive_channel(logits > 0)

    def _head_losses(self, logits: Tensor, target: Any, strategy: str, base_with_grad: bool = False) -> _HeadResult:
        """The pixel level of one head (see :class:`_HeadResult`)."""
        base, cfg = self.base_loss, self.config
        rank_values = None
        if cfg.pixel_rank_key == "ce" and strategy != "all":
            if hasattr(base, "per_pixel_parts"):
                parts = base.per_pixel_parts(logits, target)
                per_pixel = sum(parts.values())
                rank_values = parts["ce"].detach()
            else:
                per_pixel = base.per_pixel(logits, target)
                with torch.no_grad():
                    rank_values = cross_entropy_per_pixel(logits, target, mode=base.mode,
                                                          ignore_index=base.ignore_index)
        else:
            per_pixel = base.per_pixel(logits, target)
        valid = None
        if base.ignore_index is not None:
            valid = prepare(logits.detach(), target, mode=base.mode, ignore_index=base.ignore_index).valid_bool()
        ranked = per_pixel.detach() if rank_values is None else rank_values
        groups = None if strategy == "all" else self._pixel_groups(logits, target)
        num_groups = self._num_groups(logits)
        rule_groups, rule_count = None, num_groups
        if strategy == "bsigma" and cfg.pixel_groups == "class":
            rule_groups = groups
        elif strategy == "bsigma" and cfg.pixel_groups == "class_prediction" and groups is not None:
            rule_groups = groups * num_groups + self._predicted_groups(logits.detach())
            rule_count = num_groups * num_groups
        image_losses, keep, kept = _select(per_pixel, valid, strategy, cfg.pixel_fraction, cfg.kappa, ranked,
                                           rule_groups, rule_count)
        counted = float(per_pixel[0].numel()) if valid is None else valid.flatten(1).sum(dim=1).clamp_min(1)
        kept_fraction = kept / counted if keep is not None else torch.ones_like(image_losses.detach())
        source = per_pixel if base_with_grad else per_pixel.detach()
        if keep is None:
            base_losses = image_losses if base_with_grad else image_losses.detach()
        elif valid is None:
            base_losses = source.flatten(1).mean(dim=1)
        else:
            base_losses = (source * valid).flatten(1).sum(dim=1) / counted
        class_kept = class_counted = None
        if keep is not None and groups is not None:
            counted_per_group, kept_per_group = [], []
            for group in range(num_groups):  # plain reductions: scatter sums are far slower on CPU
                member = groups == group if valid is None else (groups == group) & valid
                counted_per_group.append(member.sum())
                kept_per_group.append((member & keep).sum())
            class_counted = torch.stack(counted_per_group).double()
            class_kept = torch.stack(kept_per_group).double()
        return _HeadResult(image_losses, keep, kept_fraction, base_losses, class_kept, class_counted)

    def _heads(self, logits, target) -> list[tuple[Tensor, Tensor]]:
        heads = list(logits) if isinstance(logits, (list, tuple)) else [logits]
        if not heads:
            fail("logits", "a tensor or a non-empty list of head tensors", "an empty list")
        if isinstance(target, (list, tuple)):
            if len(target) != len(heads):
                fail("target", f"one tensor, or a list of {len(heads)} (one per head)", f"a list of {len(target)}")
            targets = list(target)
        else:
            targets = [target] * len(heads)
        for position, head in enumerate(heads):
            check_type(f"logits[{position}]" if len(heads) > 1 else "logits", head, Tensor)
            if head.ndim < 3 or head.shape[0] != heads[0].shape[0]:
                fail("logits", f"heads of shape (B, C, *S) with the same B = {heads[0].shape[0]}",
                     f"shape {tuple(head.shape)}")
        return list(zip(heads, targets, strict=True))

    def image_losses(self, logits: Tensor | Sequence[Tensor], target: Tensor | Sequence[Tensor], *,
                     epoch: float | None = None) -> Tensor:
        """The pixel-selected image losses :math:`L_i` (B,), summed over heads, with gradient; no state
        change. ``epoch`` (None: the configured pixel strategy) applies ``pixel_start_epoch``."""
        strategy = self._pixel_strategy(None if epoch is None else self.effective_epoch(epoch))
        return sum(self._head_losses(head, head_target, strategy)[0] for head, head_target in
                   self._heads(logits, target))

    @torch.no_grad()
    def export_keep_mask(
        self, logits: Tensor | Sequence[Tensor], target: Tensor | Sequence[Tensor], *, epoch: float | None = None
    ) -> Tensor | list[Tensor]:
        """The (B, *S) bool mask of the pixels the pixel-level selection keeps, for an annotation audit.

        A list of masks, one per head, when ``logits`` is a list. Ignored pixels are never kept.
        ``epoch`` (None: the configured pixel strategy) applies ``pixel_start_epoch``.

        Example:
            >>> from seglosses.pixel import CrossEntropyLoss
            >>> criterion = TopKBottomSigma(CrossEntropyLoss(), 4, pixel_strategy="bsigma")
            >>> _ = torch.manual_seed(0)
            >>> mask = criterion.export_keep_mask(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8)))
            >>> mask.dtype, tuple(mask.shape)
            (torch.bool, (2, 8, 8))
        """
        strategy = self._pixel_strategy(None if epoch is None else self.effective_epoch(epoch))
        masks = []
        for head, head_target in self._heads(logits, target):
            keep = self._head_losses(head, head_target, strategy)[1]
            masks.append(torch.ones_like(head[:, 0], dtype=torch.bool) if keep is None else keep)
        return masks if isinstance(logits, (list, tuple)) else masks[0]

    # ------------------------------------------------------------------ the call

    def _records(self) -> bool:
        """Whether a call records: training mode with gradients on (else a validation call)."""
        if not self.training:
            return False
        if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
            return True
        self._warn_once("no_grad", "TopKBottomSigma was called in training mode under torch.no_grad() or "
                        "torch.inference_mode(): it recorded nothing into the ledger (a validation pass would "
                        "overwrite the training images' entries) and returned the base loss's mean, as in eval(). "
                        "Call criterion.eval() before validating (and criterion.train() after) to silence this.")
        return False

    def forward(
        self,
        logits: Tensor | Sequence[Tensor],
        target: Tensor | Sequence[Tensor],
        indices: Tensor | None = None,
        epoch: float | None = None,
        step: int | None = None,
    ) -> Tensor:
        """The batch loss: ``logits`` (B, C, *S) or a list of heads, ``target`` for every head or a
        list, ``indices`` (B,) dataset indices in [0, num_images), ``epoch`` >= 1 (1-based). Returns a
        scalar; :attr:`diagnostics` then describes the batch (see the class docstring, "Call")."""
        heads = self._heads(logits, target)
        records = self._records()
        effective = self._resolve_epoch(epoch, step, required=records)
        strategy = self._pixel_strategy(effective)
        results = [self._head_losses(head, head_target, strategy, base_with_grad=not records)
                   for head, head_target in heads]
        image_losses = sum(result.image_losses for result in results)
        base_losses = sum(result.base_losses for result in results)
        kept_fraction = (sum(result.kept_fraction for result in results) / len(results)).detach()
        class_kept_fraction = self._class_kept_fraction(results, heads[0][0])
        if not records:
            loss = base_losses.mean()
            self._passive_diagnostics(loss, image_losses, base_losses, kept_fraction, class_kept_fraction, effective)
            return loss
        return self._aggregate(image_losses, indices, effective, kept_fraction, base_losses.detach(),
                               class_kept_fraction)

    def aggregate(self, image_losses: Tensor, indices: Tensor | None = None, epoch: float | None = None,
                  step: int | None = None) -> Tensor:
        """The image level alone on precomputed (B,) image losses (of any per-sample loss): records them,
        ranks, weights and returns the batch loss exactly as a call does after its pixel selection
        (``kept_fraction`` is then reported as 1; the base loss mean is the mean of ``image_losses``)."""
        check_type("image_losses", image_losses, Tensor)
        if image_losses.ndim != 1 or image_losses.shape[0] == 0:
            fail("image_losses", "a non-empty tensor of shape (B,)", f"shape {tuple(image_losses.shape)}")
        ones = torch.ones_like(image_losses.detach())
        no_classes = image_losses.new_ones(0, dtype=torch.float64)
        records = self._records()
        effective = self._resolve_epoch(epoch, step, required=records)
        if not records:
            loss = image_losses.mean()
            self._passive_diagnostics(loss, image_losses, image_losses, ones, no_classes, effective)
            return loss
        return self._aggregate(image_losses, indices, effective, ones, image_losses.detach(), no_classes)

    def _class_kept_fraction(self, results: list[_HeadResult], logits: Tensor) -> Tensor:
        counted = [result for result in results if result.class_kept is not None]
        if not counted:
            return torch.ones(self._num_groups(logits), dtype=torch.float64, device=logits.device)
        kept = sum(result.class_kept for result in counted)
        total = sum(result.class_counted for result in counted)
        return torch.where(total > 0, kept / total.clamp_min(1.0), math.nan)

    def _passive_diagnostics(self, loss, image_losses, base_losses, kept_fraction, class_kept_fraction,
                             effective) -> None:
        """Diagnostics of a call that recorded nothing (eval, no_grad): weights 1, ranks -1."""
        n = self.num_images
        box = self._box(effective) if effective is not None else EnvelopeSelection(False, float(n), 0.0, math.inf,
                                                                                    float(n), 1.0)
        batch = image_losses.shape[0]
        device = image_losses.device
        self.diagnostics = EnvelopeDiagnostics(
            weights=torch.ones(batch, dtype=torch.float64, device=device),
            ranks=torch.full((batch,), -1, dtype=torch.int64, device=device), kept_fraction=kept_fraction,
            class_kept_fraction=class_kept_fraction, image_losses=image_losses.detach(), loss=loss.detach(),
            image_loss_mean=image_losses.detach().mean(), base_loss_mean=base_losses.detach().mean(),
            K=box.K, k=box.k, i0=box.i0, alpha=box.alpha, grad_scale=box.n_over_k,
            zero_weight_fraction=torch.zeros((), dtype=torch.float64, device=device),
            weightless=torch.zeros((), dtype=torch.bool, device=device), warmup=not self._is_warm(), recorded=False,
            epoch=effective,
        )

    def _world_size(self) -> int:
        wanted = self.config.distributed
        if wanted is False:
            return 1
        active = dist.is_available() and dist.is_initialized()
        if wanted and not active:
            fail("distributed", "False or None when torch.distributed is not initialised", True)
        return dist.get_world_size() if active else 1

    def _check_indices(self, indices: Tensor | None, batch: int) -> Tensor | None:
        if indices is None:
            if self.config.image_strategy != "erm":
                fail("indices", "a (B,) tensor of dataset indices (the ledger needs them; only "
                     "image_strategy='erm' may omit them)", None)
            return None
        check_type("indices", indices, Tensor)
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            fail("indices", "an integer tensor (int64 dataset indices)", f"dtype {indices.dtype}", TypeError)
        if tuple(indices.shape) != (batch,):
            fail("indices", f"of shape ({batch},), one per image of the batch", f"shape {tuple(indices.shape)}")
        indices = indices.to(device=self.ledger.device, dtype=torch.int64)
        if value_checks_enabled():
            low, high = torch.stack(torch.aminmax(indices)).tolist()  # one host sync
            if low < 0 or high >= self.num_images:
                bad = low if low < 0 else high
                hint = (" (is num_images the dataset length?)" if bad >= self.num_images
                        else " (negative indices would wrap around to the end of the ledger)")
                fail("indices", f"in [0, num_images) = [0, {self.num_images})", f"index {bad}{hint}")
        return indices

    def _aggregate(self, image_losses, indices, effective, kept_fraction, base_losses, class_kept_fraction) -> Tensor:
        cfg, n = self.config, self.num_images
        batch = image_losses.shape[0]
        world = self._world_size()
        indices = self._check_indices(indices, batch)
        if effective is None:
            box = EnvelopeSelection(False, float(n), 0.0, math.inf, float(n), 1.0)
        else:
            box = self._box(effective)
        if world > 1:
            self._broadcast_once()
        if cfg.ledger_init == "prepass" and indices is not None and not self._is_warm():
            raise RuntimeError("TopKBottomSigma(ledger_init='prepass') needs a full ledger before training: call "
                               "criterion.prepass(...) over the whole training set first.")
        self._start_epoch(effective, indices is not None)
        device = self.ledger.device
        values = image_losses.detach().to(device=device, dtype=torch.float64)
        ranks = torch.full((batch,), -1, dtype=torch.int64, device=device)
        weights = torch.ones(batch, dtype=torch.float64, device=device)
        global_weight_sum, global_batch = None, batch
        warm = False
        if indices is None:
            if world > 1:
                global_batch = self._global_batch_size(batch)
        else:
            if world > 1:
                all_indices, all_values, global_batch, offset = self._gather(indices, values, world)
            else:
                all_indices, all_values, offset = indices, values, 0
            slots, write, written, representative, in_range = self._write_plan(all_indices, all_values)
            self._record(slots, write, written, representative)
            warm = self._is_warm()
            if warm:
                all_ranks = torch.where(in_range, self._ranks(slots), -1)
                ranks = all_ranks[offset:offset + batch]
                if box.selective:
                    all_weights = torch.where(in_range, self._weights(all_ranks.clamp_min(0), box), 0.0)
                    weights = all_weights[offset:offset + batch]
                    if cfg.batch_norm == "selected_mean":
                        global_weight_sum = all_weights.sum()
        self.steps += 1
        self._calls += 1
        if world > 1 and cfg.checksum_every and self._calls % cfg.checksum_every == 0:
            self.verify_replicas()
        selective = warm and box.selective
        big_k = box.K if selective else float(n)
        loss = self._normalise(image_losses, weights.to(image_losses.device), selective, big_k, global_batch,
                               global_weight_sum, world)
        weightless = (weights < _ZERO_WEIGHT).all() if selective else torch.zeros((), dtype=torch.bool, device=device)
        if selective:
            self._warn_selection(effective, box, batch, weightless)
        self.diagnostics = EnvelopeDiagnostics(
            weights=weights.to(image_losses.device), ranks=ranks.to(image_losses.device), kept_fraction=kept_fraction,
            class_kept_fraction=class_kept_fraction, image_losses=image_losses.detach(), loss=loss.detach(),
            image_loss_mean=image_losses.detach().mean(), base_loss_mean=base_losses.mean(),
            K=big_k, k=box.k, i0=box.i0, alpha=box.alpha, grad_scale=n / big_k,
            zero_weight_fraction=(weights < _ZERO_WEIGHT).double().mean(), weightless=weightless,
            warmup=indices is not None and not warm, recorded=indices is not None, epoch=effective,
        )
        return loss

    def _normalise(self, image_losses, weights, selective, big_k, global_batch, weight_sum, world) -> Tensor:
        """SPEC A.6 (A.7 item 4 under DDP); ERM phases are the plain mean."""
        if not selective:
            return image_losses.mean() if world == 1 else image_losses.sum() * (world / global_batch)
        weighted = (weights.to(image_losses.dtype) * image_losses).sum()
        norm = self.config.batch_norm
        if norm == "unbiased":
            return weighted * (world * self.num_images / (big_k * global_batch))
        if norm == "batch_mean":
            return weighted * (world / global_batch)
        scale = torch.where(weight_sum >= _ZERO_WEIGHT, world / weight_sum.clamp_min(_ZERO_WEIGHT), 0.0)
        return weighted * scale.to(device=image_losses.device, dtype=image_losses.dtype)

    # ------------------------------------------------------------------ run-time warnings

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, EnvelopeWarning, stacklevel=4)

    def _warn_this_epoch(self, key: str, message: str) -> None:
        if key not in self._epoch_warned:
            self._epoch_warned.add(key)
            warnings.warn(message, EnvelopeWarning, stacklevel=4)

    def _start_epoch(self, effective: float | None, has_indices: bool) -> None:
        """At the first call of each epoch: reset the per-epoch warnings; warn once about a ledger that an
        epoch after ``first_selective_epoch`` still finds incomplete (the run is then silently ERM)."""
        if effective is None or math.floor(effective) == self._last_epoch:
            return
        epoch = math.floor(effective)
        self._last_epoch = epoch
        self._epoch_warned = set()
        cfg = self.config
        late = epoch > cfg.first_selective_epoch and epoch >= 2
        if has_indices and late and cfg.image_strategy != "erm" and not self._is_warm():
            self._warn_once("unfilled", (
                f"Epoch {epoch} starts with {self._unfilled} of the {self.num_images} ledger entries never written: "
                f"until every image has been seen once the envelope is plain ERM (warm-up), so selection has not "
                f"started. Likely causes: `num_images` is larger than the set the loader draws from (e.g. the full "
                f"dataset while training on a subset); a sampler that never yields some indices (drop_last=True with "
                f"shuffle=False, a subset or weighted sampler); or indices that are not the positions 0..N-1 of the "
                f"training set (wrap the dataset in seglosses.IndexedDataset)."))

    def _warn_selection(self, effective: float | None, box: EnvelopeSelection, batch: int, weightless: Tensor) -> None:
        """Once per epoch: N/K beyond ``max_grad_scale`` (host-side, no sync), and a weightless batch (read
        where that costs nothing: a CPU ledger, or value checks on, which sync every call anyway)."""
        epoch = "-" if effective is None else f"{effective:g}"
        if box.n_over_k > self.config.max_grad_scale:
            self._warn_this_epoch("grad_scale", (
                f"Epoch {epoch}: the image weights keep K = {box.K:.1f} of N = {self.num_images} images, so N/K = "
                f"{box.n_over_k:.1f} > max_grad_scale = {self.config.max_grad_scale:g}: gradients are scaled by "
                f"{box.n_over_k:.1f} and about {self._weightless_probability(box, batch):.0%} of batches of {batch} "
                f"hold no weighted image (loss 0, no gradient). paper_best ends like this and lost 7 to 62 Dice "
                f"points to ERM on HC18, FUSeg and ACDC in this project's runs (docs/envelope.md); consider a "
                f"larger end_fraction or top_fraction, min_weight > 0 or batch_norm='batch_mean'."))
        if "weightless" not in self._epoch_warned and self._reads_are_free():
            if bool(weightless):
                self._warn_this_epoch("weightless", (
                    f"Epoch {epoch}: every image of a batch of {batch} weighs < 1e-8 (ranked outside the box "
                    f"k = {box.k:.1f}, i0 = {box.i0:.1f}): its loss is 0 and it carries no gradient. Warned once per "
                    f"epoch; diagnostics.weightless flags each such batch."))

    def _reads_are_free(self) -> bool:
        """Whether reading a value back costs nothing extra: a CPU ledger, or value checks on (they sync anyway)."""
        return self.ledger.device.type == "cpu" or value_checks_enabled()

    def _weightless_probability(self, box: EnvelopeSelection, batch: int) -> float:
        """About how often a batch drawn uniformly holds only images weighing < 1e-8 (with replacement)."""
        weights = self._weights(torch.arange(self.num_images, dtype=torch.float64), box)
        return float((weights < _ZERO_WEIGHT).double().mean()) ** batch

    # ------------------------------------------------------------------ the ledger

    def _is_warm(self) -> bool:
        """Whether every ledger entry is filled (one host sync only while it is not)."""
        if self._unfilled is None:
            self._unfilled = int(torch.isnan(self.ledger).sum())
        return self._unfilled == 0

    def _keys(self) -> Tensor:
        """The values ranked: the ledger, or V / m with the staleness correction."""
        if self.config.staleness == "none":
            return self.ledger
        if self._relative_keys is None:
            self._relative_keys = self.ledger / self._scales(self.ledger_scale)
        return self._relative_keys

    def _scales(self, recorded: Tensor) -> Tensor:
        """The running means of ledger entries; those of the first pass (NaN) share its final mean."""
        return torch.where(torch.isnan(recorded), self.first_pass_mean, recorded)

    def _use_sorted(self) -> bool:
        method = self.config.rank_method
        return method == "sorted" or (method == "auto" and self.ledger.device.type == "cpu")

    def _ranks(self, indices: Tensor) -> Tensor:
        keys = self._keys()
        if not self._use_sorted():
            return rank_against_ledger(keys, indices)
        if self._sorted_keys is None:
            self._sorted_keys = keys.sort().values
        return rank_against_ledger(keys, indices, sorted_ledger=self._sorted_keys)

    def _write_plan(self, indices: Tensor, values: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Resolve repeated and out-of-range indices without a host sync: for each position, the ledger
        slot it touches (0 when out of range), the value to write there (the slot's last in-range
        occurrence, or its current value: every position of a slot writes the same value), whether the
        slot gets a new value, whether this position is that last occurrence, and whether it is in range."""
        in_range = (indices >= 0) & (indices < self.num_images)
        slots = torch.where(in_range, indices, 0)
        positions = torch.arange(indices.shape[0], device=indices.device)
        same = (slots.unsqueeze(1) == slots.unsqueeze(0)) & in_range.unsqueeze(0)
        last = torch.where(same, positions.unsqueeze(0), -1).amax(dim=1)
        written = last >= 0
        write = torch.where(written, values[last.clamp_min(0)], self.ledger[slots])
        return slots, write, written, in_range & (last == positions), in_range

    def _record(self, slots: Tensor, write: Tensor, written: Tensor, representative: Tensor) -> None:
        """Write ``write`` into ``slots`` (float64), keeping the derived state in step (see :meth:`_write_plan`)."""
        was_warm = self._is_warm()
        old_values = self.ledger[slots]
        old_keys = self._keys()[slots] if was_warm and self._sorted_keys is not None else None
        self.ledger[slots] = write
        if self.config.staleness == "relative":
            old_scales = self.ledger_scale[slots]
            new_scales = self._update_running_mean(old_values, old_scales, write, representative)
            self.ledger_scale[slots] = torch.where(written, new_scales, old_scales)
            if not was_warm:  # the first-pass mean may have moved
                self._relative_keys = None
            elif self._relative_keys is not None:
                self._relative_keys[slots] = self.ledger[slots] / self._scales(self.ledger_scale[slots])
        if not was_warm:
            self._unfilled -= int((torch.isnan(old_values) & representative).sum())
        elif old_keys is not None:
            self._sorted_keys = _replace_sorted(self._sorted_keys, old_keys[representative],
                                                self._keys()[slots][representative])

    def _update_running_mean(self, old_values: Tensor, old_scales: Tensor, values: Tensor,
                             counted: Tensor) -> Tensor:
        """Advance the staleness correction's running mean image loss m; return the scales to record.

        Only the ``counted`` positions (one per written slot) enter the sums. Until some image is seen
        a second time (the first pass), m is the mean of all losses written and the entries record NaN:
        they all share the first pass's final mean (``first_pass_mean``), as if written at once. From
        then on, m follows the ratio of the batch's fresh losses to their recorded relative losses (exact
        when every loss shrinks by the same factor), through a log-space EMA with weight
        ``staleness_momentum`` < 1, so that a batch cannot normalise itself away. No host sync.
        """
        momentum = self.config.staleness_momentum
        seen = torch.isfinite(old_values) & counted
        revisit = seen.any()
        recorded = torch.where(seen, old_values / self._scales(old_scales), 0.0).sum()
        fresh = torch.where(seen, values, 0.0).sum()
        previous, count = self.running_mean, self.running_count
        started = torch.isfinite(previous)
        target = fresh / recorded.clamp_min(_TINY)
        log_blend = (1 - momentum) * previous.clamp_min(_TINY).log() + momentum * target.clamp_min(_TINY).log()
        tracked = torch.where(started, torch.exp(log_blend), target)
        tracked = torch.where(recorded > 0, tracked, previous)
        new_count = counted.sum().to(torch.float64)
        new_sum = torch.where(counted, values, 0.0).sum()
        cumulative = torch.where(started, (previous * count + new_sum) / (count + new_count).clamp_min(1.0),
                                 new_sum / new_count.clamp_min(1.0))
        first_pass = ~self.revisited & ~revisit
        mean = torch.where(revisit, tracked, torch.where(first_pass, cumulative, previous))
        mean = torch.where(new_count > 0, mean, previous).clamp_min(_TINY)
        self.first_pass_mean.copy_(torch.where(first_pass & (new_count > 0), cumulative, self.first_pass_mean))
        self.running_mean.copy_(mean)
        self.running_count += new_count
        self.revisited |= revisit
        return torch.where(first_pass, math.nan, mean).expand_as(values)

    @torch.no_grad()
    def prepass(self, batches: Iterable[Sequence[Any]], model: Callable[[Any], Any] | None = None) -> None:
        """Fill the ledger with one no-grad pass before training (``ledger_init="prepass"``, SPEC A.4).

        Args:
            batches: an iterable of ``(logits, target, indices)``, or of ``(inputs, target, indices)``
                when ``model`` is given (extra items after the third are ignored).
            model: maps inputs to logits (or a list of head logits); its train/eval mode is left as is.

        The image losses are those of epoch 1 (``pixel_start_epoch`` applies). With
        ``staleness="relative"`` the entries of a first pass all share the pass's mean loss. Under DDP
        every rank passes its own shard (the same number of batches on every rank).
        """
        world = self._world_size()
        if world > 1:
            self._broadcast_once()
        for batch in batches:
            if not isinstance(batch, (tuple, list)) or len(batch) < 3:
                fail("batches", "an iterable of (logits or inputs, target, indices) tuples", type(batch).__name__,
                     TypeError)
            first, target, indices = batch[0], batch[1], batch[2]
            logits = model(first) if model is not None else first
            values = self.image_losses(logits, target, epoch=1).to(device=self.ledger.device, dtype=torch.float64)
            indices = self._check_indices(indices, values.shape[0])
            if world > 1:
                indices, values, _, _ = self._gather(indices, values, world)
            self._record(*self._write_plan(indices, values)[:4])
        self._sorted_keys = None

    # ------------------------------------------------------------------ distributed (SPEC A.7)

    def _global_batch_size(self, batch: int) -> Tensor:
        size = torch.tensor([batch], dtype=torch.int64, device=self.ledger.device)
        dist.all_reduce(size)
        return size[0].to(torch.float64)

    def _gather(self, indices: Tensor, values: Tensor, world: int) -> tuple[Tensor, Tensor, Tensor, int]:
        """All-gather (index, loss) pairs padded with index -1, in rank order; return every rank's indices
        and losses (padding included: index -1), the global batch size (a tensor) and this rank's offset.

        One host sync: the largest local batch, which sizes the padded all_gather.
        """
        device = self.ledger.device
        size = torch.tensor([indices.shape[0]], dtype=torch.int64, device=device)
        sizes = [torch.zeros_like(size) for _ in range(world)]
        dist.all_gather(sizes, size)
        sizes = torch.cat(sizes)
        width = int(sizes.max())
        padded = torch.full((width, 2), -1.0, dtype=torch.float64, device=device)
        padded[: indices.shape[0], 0] = indices.to(device=device, dtype=torch.float64)
        padded[: indices.shape[0], 1] = values.to(device)
        gathered = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(gathered, padded)
        pairs = torch.cat(gathered)
        return pairs[:, 0].long(), pairs[:, 1], sizes.sum().to(torch.float64), dist.get_rank() * width

    def _state_buffers(self) -> list[Tensor]:
        return [buffer for _, buffer in self.named_buffers(recurse=False)]

    def broadcast_state(self, src: int = 0) -> None:
        """Copy the envelope's state (ledger, running mean, step count) from rank ``src`` to every rank.

        Called automatically by the first distributed call; call it on every rank after loading a
        checkpoint on ``src`` only.
        """
        for buffer in self._state_buffers():
            dist.broadcast(buffer, src=src)
        self._reset_caches()
        self._broadcast_done = True

    def _broadcast_once(self) -> None:
        if not self._broadcast_done:
            self.broadcast_state(0)

    def checksum(self) -> Tensor:
        """An order-independent int64 fingerprint of the state buffers (exact integer sums of their bits)."""
        parts = []
        for buffer in self._state_buffers():
            bits = buffer.detach().reshape(-1).to(torch.float64).view(torch.int64)
            chunks = torch.stack([(bits >> shift) & 0xFFFF for shift in (0, 16, 32, 48)])
            weights = torch.arange(bits.numel(), device=bits.device) % 65521 + 1
            parts.append((chunks * weights).sum(dim=1))
        return torch.cat(parts)

    def verify_replicas(self) -> None:
        """Raise RuntimeError unless every rank holds the same state (one all_reduce of a checksum)."""
        local = self.checksum()
        both = torch.cat([local, -local])
        dist.all_reduce(both, op=dist.ReduceOp.MAX)
        if not torch.equal(both[: local.numel()], -both[local.numel():]):
            raise RuntimeError("TopKBottomSigma: the ledger replicas differ between ranks (checksum mismatch); "
                               "every rank must call the criterion with the same sequence of batches.")
