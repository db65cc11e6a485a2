r"""Exact Euclidean distances between the surfaces of two binary masks (one image, one class).

Surface: ``X \ erode(X)`` with the connectivity-1 (cross) structuring element, voxels outside the
image counting as background (scipy's ``border_value=0``, as medpy and MONAI do).

CPU algorithm, exact (no approximation):

1. Crop both masks to the bounding box of their union, padded with zeros.
2. Surface voxels by shifted ANDs of the padded crop.
3. Voxels on both surfaces have distance 0 and are never queried.
4. Shell search: the grid offsets, sorted by physical length, are looked up in that order in a
   boolean map of the other surface; the first offset that hits gives the exact distance, since
   every shorter offset missed. Most surface voxels of a reasonable prediction lie within a few
   voxels of the other surface, where a lookup costs nanoseconds.
5. The few voxels still unresolved after a fixed budget of offsets (about one KD-tree query's
   worth each) go to a brute-force ``scipy.spatial.distance.cdist`` when they are few, else to a
   KD-tree (``cKDTree``) over the other surface, in physical coordinates.

Distances equal medpy's (full-image EDT) to float64 rounding and MONAI's (KD-tree) bit for bit
after MONAI's cast to float32; ``tests/metrics/test_surface.py`` checks every path.

**Order statistics only** (``order_statistics=...``, what HD and HD95 use: they read a few ranks
of the sorted distances, not every distance). On a poor prediction most surface voxels lie far from
the other surface, where both the shell search and the KD-tree are slow (a voxel deep inside a ball
is nearly as far from all of its surface). So the shell search gives up early when most voxels are
still unresolved after a few offsets, and then:

6. In each block of a few voxels per axis, the unresolved voxel ``a`` nearest the block's centre
   gets its exact distance ``d_a`` and nearest voxel ``s_a``; every other voxel ``q`` of the block
   gets the bounds ``d_a - |q - a| <= d(q) <= |q - s_a|`` (triangle inequality), and never less
   than the last shell tried.
7. The k-th order statistic lies between the k-th smallest lower bound ``L`` and the k-th smallest
   upper bound ``U``. A voxel whose upper bound is below ``L`` of the first rank read, or whose
   lower bound is above ``U`` of the last, cannot change those ranks: only the others get their
   exact distance (step 5), and the rest carry their lower bound in the returned arrays. For the
   larger of the two directed percentiles (MONAI's HD95), a direction whose percentile is surely the
   smaller one is left bounded altogether.

So the ranks read hold exactly the values of the full computation (``np.percentile`` and ``max``
give the same numbers, bit for bit: exact values are rounded as the full computation rounds them),
while the other entries are only bounds. Good predictions, whose shells find every distance, take
the full computation's path.

On CUDA tensors the same algorithm runs in torch: the shells are looked up in large blocks and
the unresolved voxels go to a blocked brute-force ``torch.cdist`` in float64 (differences, not the
matrix-product shortcut).
"""

from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist
from torch import Tensor

# The shell search tries the SHELL_LOOKUPS shortest offsets (radius 7.8 voxels in 3D, 25 in 2D at unit
# spacing; the radius adapts to the spacing); the voxels still unresolved go to a brute-force cdist
# when (voxels x surface size) <= BRUTE_FORCE_PAIRS, else to a KD-tree. Tuned on benchmarks/hd95.py.
SHELL_LOOKUPS = 2000
BRUTE_FORCE_PAIRS = 1_000_000
KD_LEAF_SIZE = 64
# Below this many lookups a shell is one 2-D gather; above, one gather per offset (less memory).
GATHER_2D_LIMIT = 20_000
# Order-statistics mode: the shell search gives up after SELECTIVE_SHELL_LOOKUPS offsets (radius 2 in
# 3D) when more than SELECTIVE_GIVE_UP of the voxels are unresolved (poor predictions); then the voxel
# nearest the centre of each block of REPRESENTATIVE_BLOCK voxels per axis bounds its block.
SELECTIVE_SHELL_LOOKUPS = 32
SELECTIVE_GIVE_UP = 0.8
REPRESENTATIVE_BLOCK = 6
# Bounds are widened by this relative slack, so float rounding never misplaces a voxel.
BOUND_SLACK = 1e-9
# Above this many query voxels the two directions run in two threads (when workers > 1).
PARALLEL_DIRECTIONS_MIN = 4_000
# Elements of one block (shell lookups or cdist) on the torch path.
TORCH_BLOCK_ELEMENTS = 1 << 24


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box holding every True voxel of ``mask``, or None when it is empty."""
    box = []
    region = mask
    for _ in range(mask.ndim):
        rows = np.flatnonzero(region.reshape(region.shape[0], -1).any(axis=1))
        if rows.size == 0:
            return None
        start, stop = int(rows[0]), int(rows[-1]) + 1
        box.append(slice(start, stop))
        region = region[start:stop].any(axis=0)
    return tuple(box)


def _inner(shape: tuple[int, ...], margin: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(m, n - m) for n, m in zip(shape, margin, strict=True))


def surface_of(padded: Any, margin: tuple[int, ...]) -> Any:
    """Surface voxels of the region inside ``margin`` (>= 1 per axis) of a padded boolean array.

    Works on numpy arrays and torch tensors alike; returns an array of the inner shape.
    """
    inner = _inner(tuple(padded.shape), margin)
    core = padded[inner]
    interior = None
    for axis in range(padded.ndim):
        for step in (-1, 1):
            shifted = list(inner)
            shifted[axis] = slice(margin[axis] + step, padded.shape[axis] - margin[axis] + step)
            neighbour = padded[tuple(shifted)]
            if interior is None:
                interior = core & neighbour
            else:
                interior &= neighbour
    return core & ~interior


@lru_cache(maxsize=64)
def _shell_offsets(
    spacing: tuple[float, ...], budget: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The ``budget`` shortest non-zero grid offsets, cut at a whole shell, sorted by length.

    Returns (offsets, shell lengths, shell starts, reach): ``reach[i]`` is the largest ``|offset[i]|``.
    """
    if budget <= 0:
        empty = np.zeros((0, len(spacing)), dtype=np.int64)
        return empty, np.zeros(0), np.zeros(0, dtype=np.int64), (0,) * len(spacing)
    radius = min(spacing)
    while True:
        reach = [int(radius // step) for step in spacing]
        axes = np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij")
        offsets = np.stack([axis.ravel() for axis in axes], axis=1)
        squared = ((offsets * np.asarray(spacing)) ** 2).sum(axis=1)
        keep = (squared > 0) & (squared <= radius * radius)
        if keep.sum() > budget:
            break
        radius *= 1.25
    offsets, squared = offsets[keep], squared[keep]
    order = np.argsort(squared, kind="stable")
    offsets, squared = offsets[order], squared[order]
    squared_lengths, starts = np.unique(squared, return_index=True)
    # Keep whole shells only: all offsets of a length or none.
    whole = int(np.searchsorted(starts, budget, side="right")) - 1
    whole = max(whole, 1)
    offsets = offsets[: starts[whole]]
    reach = tuple(int(r) for r in np.abs(offsets).max(axis=0))
    return offsets, np.sqrt(squared_lengths[:whole]), starts[:whole], reach


def _shells(spacing: tuple[float, ...], shape: tuple[int, ...], budget: int) -> tuple[np.ndarray, ...]:
    """The offsets of :func:`_shell_offsets` as flat index steps in a C-ordered array of ``shape``.

    Returns (flat offsets, their lengths, start of each shell plus the total): offsets ascending by length.
    """
    offsets, lengths, starts, _ = _shell_offsets(spacing, budget)
    strides = np.cumprod((1, *shape[:0:-1]))[::-1]
    flat = (offsets @ strides).astype(np.intp)
    shell_sizes = np.diff(np.append(starts, len(flat)))
    return flat, np.repeat(lengths, shell_sizes), np.append(starts, len(flat))


def _coordinates(flat_index: np.ndarray, shape: tuple[int, ...], spacing: np.ndarray) -> np.ndarray:
    return np.stack(np.unravel_index(flat_index, shape), axis=1) * spacing


def _shell_search(
    query: np.ndarray,
    target_map: np.ndarray,
    shells: tuple[np.ndarray, ...],
    give_up: tuple[int, float] | None = None,
) -> tuple[np.ndarray, float]:
    """Distance from each flat voxel index in ``query`` to the nearest True voxel of ``target_map``
    within the shells; NaN where every shell tried missed.

    With ``give_up = (lookups, fraction)`` the search stops after about ``lookups`` offsets when more
    than ``fraction`` of the voxels are still unresolved (a poor prediction: far voxels are many).

    Returns:
        (distances, reached): the distance of a voxel left at NaN is above ``reached``, the length of
        the last shell tried (0 when none was).
    """
    offsets, offset_lengths, shell_starts = shells
    distances, reached = np.full(len(query), np.nan), 0.0
    pending = np.arange(len(query))
    # Look up p + o as target_map[base + o:][p - base]: a view per offset, no index arithmetic.
    base = -int(offsets.min()) if offsets.size else 0
    points = query - base
    shell, shell_count = 0, len(shell_starts) - 1
    while shell < shell_count and points.size:
        # A chunk of consecutive shells, as many as keep one gather small; one shell at least.
        first = shell_starts[shell]
        end = shell + 1
        while end < shell_count and points.size * (shell_starts[end + 1] - first) <= GATHER_2D_LIMIT:
            end += 1
        chunk = offsets[first : shell_starts[end]] + base
        if points.size * chunk.size <= GATHER_2D_LIMIT or end > shell + 1:
            found = target_map[points[:, None] + chunk]
            hit = found.any(axis=1)
            # Offsets are sorted by length, so the first hit of a row is its nearest voxel.
            distances[pending[hit]] = offset_lengths[first + found[hit].argmax(axis=1)]
        else:
            looked_up = np.empty(points.size, dtype=bool)
            hit = target_map[chunk[0] :].take(points)
            for offset in chunk[1:]:
                hit |= target_map[offset:].take(points, out=looked_up)
            distances[pending[hit]] = offset_lengths[first]
        miss = ~hit
        pending, points = pending[miss], points[miss]
        shell = end
        reached = float(offset_lengths[shell_starts[end] - 1])
        if give_up is not None and shell_starts[end] >= give_up[0] and points.size > give_up[1] * len(query):
            break
    return distances, reached


def _exact_nearest(
    queries: np.ndarray, targets: np.ndarray, workers: int
) -> tuple[np.ndarray, np.ndarray]:
    """(distance, index of the nearest target) of each query point (physical coordinates): brute
    force when the pairs are few, else a KD-tree."""
    if queries.shape[0] * targets.shape[0] <= BRUTE_FORCE_PAIRS:
        pairwise = cdist(queries, targets)
        nearest = pairwise.argmin(axis=1) if pairwise.size else np.zeros(len(queries), dtype=np.intp)
        return pairwise[np.arange(len(queries)), nearest], nearest
    tree = cKDTree(targets, leafsize=KD_LEAF_SIZE, balanced_tree=False)
    return tree.query(queries, workers=workers)


def _nearest(
    query: np.ndarray,
    target_map: np.ndarray,
    target_points: np.ndarray,
    shape: tuple[int, ...],
    spacing: np.ndarray,
    shells: tuple[np.ndarray, ...],
    workers: int,
) -> np.ndarray:
    """Distance from each flat voxel index in ``query`` to the nearest True voxel of ``target_map``."""
    distances, _ = _shell_search(query, target_map, shells)
    pending = np.flatnonzero(np.isnan(distances))
    if pending.size:
        targets = _coordinates(target_points, shape, spacing)
        distances[pending] = _exact_nearest(_coordinates(query[pending], shape, spacing), targets, workers)[0]
    return distances


def _rank_window(count: int, percentile: float) -> tuple[int, int]:
    """The ranks (0-based, ascending) that ``np.percentile`` of ``count`` values interpolates between,
    widened by one on each side against float rounding of the virtual index."""
    virtual = (count - 1) * percentile / 100.0
    return max(0, math.floor(virtual) - 1), min(count - 1, math.floor(virtual) + 2)


def _needed(lower: np.ndarray, upper: np.ndarray, window: tuple[int, int]) -> np.ndarray:
    """Values whose exact number can matter to the order statistics of ``window`` (both ends included),
    given ``lower <= value <= upper``: every other value stays below or above those ranks."""
    first, last = window
    lowest = np.partition(lower, first)[first]  # <= the first-ranked value
    highest = np.partition(upper, last)[last]  # >= the last-ranked value
    return (upper >= lowest) & (lower <= highest)


class _Surface:
    """The voxels of one surface (flat indices in the padded box), for exact nearest-voxel queries;
    the KD-tree is built on the first query that needs it and reused."""

    def __init__(self, points: np.ndarray, shape: tuple[int, ...], spacing: np.ndarray, workers: int) -> None:
        self.points, self.shape, self.spacing, self.workers = points, shape, spacing, workers
        self.tree: cKDTree | None = None
        _, lengths, _, _ = _shell_offsets(tuple(spacing.tolist()), SHELL_LOOKUPS)
        self.shell_reach = lengths[-1] if lengths.size else -1.0

    @functools.cached_property
    def coordinates(self) -> np.ndarray:
        return _coordinates(self.points, self.shape, self.spacing)

    def nearest(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distance, index of the nearest surface voxel) of flat query voxels, rounded as the full
        computation rounds them.

        Within the reach of :data:`SHELL_LOOKUPS` offsets that computation returns the length of the
        nearest offset, ``|(q - s) * spacing|``, which can differ in the last bit from the distance
        between physical coordinates ``|q * spacing - s * spacing|``; so take the former there.
        """
        queries = _coordinates(query, self.shape, self.spacing)
        if len(query) * len(self.points) <= BRUTE_FORCE_PAIRS:
            distance, nearest = _exact_nearest(queries, self.coordinates, self.workers)
        else:
            if self.tree is None:
                self.tree = cKDTree(self.coordinates, leafsize=KD_LEAF_SIZE, balanced_tree=False)
            distance, nearest = self.tree.query(queries, workers=self.workers)
        return self._rounded(query, distance, nearest), nearest

    def _rounded(self, query: np.ndarray, distance: np.ndarray, nearest: np.ndarray) -> np.ndarray:
        offsets = np.stack(np.unravel_index(query, self.shape), axis=1) - np.stack(
            np.unravel_index(self.points[nearest], self.shape), axis=1
        )
        offset_length = np.sqrt(((offsets * self.spacing) ** 2).sum(axis=1))
        return np.where(offset_length <= self.shell_reach, offset_length, distance)


def _block_bounds(query: np.ndarray, target: _Surface) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower, upper, exact) bounds on the distances of flat query voxels to the ``target`` surface.

    The voxel ``a`` nearest the centre of each block of :data:`REPRESENTATIVE_BLOCK` voxels per axis
    (at the finest spacing; fewer along coarser axes) gets its exact distance ``d_a`` and nearest
    surface voxel ``s_a``; every other voxel ``q`` of the block lies in ``[d_a - |q - a|, |q - s_a|]``
    (triangle inequality), widened by :data:`BOUND_SLACK`. ``exact`` marks the representatives.
    """
    shape, spacing = target.shape, target.spacing
    index = np.stack(np.unravel_index(query, shape), axis=1)
    block = np.maximum(1, np.round(REPRESENTATIVE_BLOCK * spacing.min() / spacing)).astype(np.int64)
    cell = index // block
    # Sort by block, then by the distance to the block's centre (the fraction, in [0, 1)): each
    # block's first voxel represents it.
    off_centre = (((index - cell * block - (block - 1) / 2.0) * spacing) ** 2).sum(axis=1)
    key = np.ravel_multi_index(cell.T, tuple(int(n) for n in np.asarray(shape) // block + 1))
    order = np.argsort(key + off_centre / (off_centre.max() + 1.0))
    first = np.flatnonzero(np.r_[True, key[order][1:] != key[order][:-1]])
    representative = order[first]
    slot = np.empty(len(query), dtype=np.int64)  # the number of each voxel's representative
    slot[order] = np.repeat(np.arange(len(first)), np.diff(np.r_[first, len(query)]))
    distance, nearest = target.nearest(query[representative])
    points = index * spacing
    lower = distance[slot] - np.sqrt(((points - points[representative][slot]) ** 2).sum(axis=1))
    upper = np.sqrt(((points - target.coordinates[nearest][slot]) ** 2).sum(axis=1))
    lower -= BOUND_SLACK * (1.0 + np.abs(lower))
    upper += BOUND_SLACK * (1.0 + upper)
    lower[representative] = upper[representative] = distance
    exact = np.zeros(len(query), dtype=bool)
    exact[representative] = True
    return lower, upper, exact


def _order_statistics_only(
    queries: tuple[np.ndarray, np.ndarray],
    maps: tuple[np.ndarray, np.ndarray],
    points: tuple[np.ndarray, np.ndarray],
    shared: int,
    shape: tuple[int, ...],
    spacing: np.ndarray,
    order_statistics: tuple[tuple[str, float], ...],
    workers: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Steps 6-7 of the module docstring: both directed distance arrays, exact at the ranks that
    ``order_statistics`` need and bounded elsewhere (each entry then holds its lower bound)."""
    shells = _shells(tuple(spacing.tolist()), shape, SHELL_LOOKUPS)
    lower, upper, exact = [], [], []
    for query, other_map in zip(queries, maps[::-1], strict=True):
        found, floor = _shell_search(query, other_map, shells, (SELECTIVE_SHELL_LOOKUPS, SELECTIVE_GIVE_UP))
        resolved = ~np.isnan(found)  # the others are further than floor: every shorter offset missed
        zeros = np.zeros(shared)
        lower.append(np.concatenate([np.where(resolved, found, floor), zeros]))
        upper.append(np.concatenate([np.where(resolved, found, np.inf), zeros]))
        exact.append(np.concatenate([resolved, np.ones(shared, dtype=bool)]))
    if all(known.all() for known in exact):  # a good prediction: the shells found every distance
        return lower[0], lower[1]

    def needed() -> list[np.ndarray]:
        masks = [np.zeros(len(values), dtype=bool) for values in lower]
        for scope, percentile in order_statistics:
            if scope == "pooled":
                pooled_lower, pooled_upper = np.concatenate(lower), np.concatenate(upper)
                pooled = _needed(pooled_lower, pooled_upper, _rank_window(len(pooled_lower), percentile))
                masks[0] |= pooled[: len(lower[0])]
                masks[1] |= pooled[len(lower[0]) :]
            else:
                # "max" reads only the larger directed percentile: a direction whose percentile is
                # surely below the other's (bounded by the percentiles of the bounds) may stay bounded.
                low = [np.percentile(values, percentile) for values in lower]
                high = [np.percentile(np.minimum(values, np.finfo(float).max), percentile) for values in upper]
                for direction in (0, 1):
                    other = low[1 - direction]
                    if scope == "max" and high[direction] < other - BOUND_SLACK * (1.0 + abs(other)):
                        continue
                    window = _rank_window(len(lower[direction]), percentile)
                    masks[direction] |= _needed(lower[direction], upper[direction], window)
        return [mask & ~known for mask, known in zip(masks, exact, strict=True)]

    targets = [_Surface(points[1 - direction], shape, spacing, workers) for direction in (0, 1)]
    # Where an unresolved voxel may matter: bounds from its block's representative; then exact
    # values for the voxels that still may.
    for direction, mask in enumerate(needed()):
        if mask.any():
            unresolved = np.flatnonzero(~exact[direction])  # voxels beyond the shells, not shared
            block_lower, block_upper, block_exact = _block_bounds(queries[direction][unresolved], targets[direction])
            lower[direction][unresolved] = np.maximum(block_lower, lower[direction][unresolved])
            upper[direction][unresolved] = block_upper
            exact[direction][unresolved] = block_exact
    for direction, mask in enumerate(needed()):
        if mask.any():
            chosen = np.flatnonzero(mask)
            lower[direction][chosen] = targets[direction].nearest(queries[direction][chosen])[0]
    return lower[0], lower[1]


def surface_distances_numpy(
    pred: np.ndarray,
    target: np.ndarray,
    spacing: np.ndarray,
    workers: int = 1,
    order_statistics: tuple[tuple[str, float], ...] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances of two non-empty boolean masks (CPU).

    Args:
        pred, target: boolean masks of one image and class.
        spacing: one spacing per axis.
        workers: threads for the KD-tree queries and the two directions.
        order_statistics: None (every distance exact), or ``(scope, percentile)`` pairs, scope
            "directed" (each direction's ``np.percentile``), "max" (the larger of the two) or
            "pooled" (``np.percentile`` of both directions together): only what those need is exact,
            the other entries are lower bounds that keep their side of the ranks read (module
            docstring, steps 6-7).

    Returns:
        ``(forward, backward)`` float64 arrays: the distance of every surface voxel of ``pred`` to the
        surface of ``target``, and of every surface voxel of ``target`` to the surface of ``pred``.
    """
    box = bounding_box(pred | target)
    if box is None or not pred.any() or not target.any():
        raise ValueError("surface distances need two non-empty masks")
    spacing = np.asarray(spacing, dtype=np.float64)
    # The padding keeps every looked-up voxel p + offset inside the array (no wrap-around). Both modes
    # pad alike, so the physical coordinates, and their rounding, are the same.
    reach = _shell_offsets(tuple(spacing.tolist()), max(SHELL_LOOKUPS, SELECTIVE_SHELL_LOOKUPS))[3]
    margin = tuple(r + 1 for r in reach)
    shape = tuple(s.stop - s.start + 2 * m for s, m in zip(box, margin, strict=True))
    inner = _inner(shape, margin)
    maps = []
    for mask in (pred, target):
        padded = np.zeros(shape, dtype=bool)
        padded[inner] = mask[box]
        surface = np.zeros(shape, dtype=bool)
        surface[inner] = surface_of(padded, margin)
        maps.append(surface.ravel())
    pred_map, target_map = maps
    pred_points, target_points = np.flatnonzero(pred_map), np.flatnonzero(target_map)
    pred_only = pred_points[~target_map[pred_points]]
    target_only = target_points[~pred_map[target_points]]
    shared = len(pred_points) - len(pred_only)
    if order_statistics is not None:
        return _order_statistics_only(
            (pred_only, target_only), (pred_map, target_map), (pred_points, target_points), shared,
            shape, spacing, order_statistics, workers,
        )
    shells = _shells(tuple(spacing.tolist()), shape, SHELL_LOOKUPS)
    forward_args = (pred_only, target_map, target_points, shape, spacing, shells)
    backward_args = (target_only, pred_map, pred_points, shape, spacing, shells)
    if workers > 1 and len(pred_only) + len(target_only) >= PARALLEL_DIRECTIONS_MIN:
        # numpy gathers and KD queries release the GIL: one thread per direction.
        with ThreadPoolExecutor(max_workers=2) as pool:
            forward_job = pool.submit(_nearest, *forward_args, max(1, workers // 2))
            backward = _nearest(*backward_args, max(1, workers // 2))
            forward = forward_job.result()
    else:
        forward = _nearest(*forward_args, workers)
        backward = _nearest(*backward_args, workers)
    zeros = np.zeros(shared)
    return np.concatenate([forward, zeros]), np.concatenate([backward, zeros])


def _nearest_cdist(query: Tensor, reference: Tensor) -> Tensor:
    rows = max(1, TORCH_BLOCK_ELEMENTS // max(1, reference.shape[0]))
    blocks = [
        torch.cdist(query[i : i + rows], reference, compute_mode="donot_use_mm_for_euclid_dist").amin(dim=1)
        for i in range(0, query.shape[0], rows)
    ]
    return torch.cat(blocks) if blocks else query.new_zeros(0)


def _torch_coordinates(flat_index: Tensor, shape: tuple[int, ...], spacing: Tensor) -> Tensor:
    strides = np.cumprod((1, *shape[:0:-1]))[::-1].tolist()
    axes = [
        torch.div(flat_index, stride, rounding_mode="floor") % size
        for stride, size in zip(strides, shape, strict=True)
    ]
    return torch.stack(axes, dim=1).double() * spacing


def _nearest_torch(
    query: Tensor,
    target_map: Tensor,
    target_points: Tensor,
    shape: tuple[int, ...],
    spacing: Tensor,
    offsets: Tensor,
    offset_lengths: Tensor,
) -> Tensor:
    """:func:`_nearest` on a torch device: every shell at once in blocks, then cdist for the rest."""
    distances = torch.full((query.numel(),), float("nan"), dtype=torch.float64, device=query.device)
    if offsets.numel():
        rows = max(1, TORCH_BLOCK_ELEMENTS // offsets.numel())
        for i in range(0, query.numel(), rows):
            found = target_map[query[i : i + rows, None] + offsets].to(torch.uint8)
            # Offsets are sorted by length and argmax returns the first maximum: the nearest hit.
            first = found.argmax(dim=1)
            hit = found.gather(1, first[:, None])[:, 0].bool()
            distances[i : i + rows] = torch.where(hit, offset_lengths[first], distances[i : i + rows])
    pending = torch.isnan(distances).nonzero().flatten()
    if pending.numel():
        distances[pending] = _nearest_cdist(
            _torch_coordinates(query[pending], shape, spacing),
            _torch_coordinates(target_points, shape, spacing),
        )
    return distances


def surface_distances_torch(pred: Tensor, target: Tensor, spacing: np.ndarray) -> tuple[Tensor, Tensor]:
    """Directed surface distances of two non-empty boolean masks on any torch device (float64).

    The same algorithm as :func:`surface_distances_numpy`, with the shells looked up in blocks and
    the unresolved voxels sent to a brute-force float64 ``torch.cdist``.
    """
    union = pred | target
    box = []
    for axis in range(union.ndim):
        hits = torch.nonzero(union.movedim(axis, 0).reshape(union.shape[axis], -1).any(dim=1)).flatten()
        if hits.numel() == 0 or not bool(pred.any()) or not bool(target.any()):
            raise ValueError("surface distances need two non-empty masks")
        first, last = hits[[0, -1]].tolist()
        box.append(slice(first, last + 1))
    spacing = np.asarray(spacing, dtype=np.float64)
    offsets, lengths, starts, reach = _shell_offsets(tuple(spacing.tolist()), SHELL_LOOKUPS)
    margin = tuple(r + 1 for r in reach)
    shape = tuple(s.stop - s.start + 2 * m for s, m in zip(box, margin, strict=True))
    inner = _inner(shape, margin)
    device = pred.device
    maps = []
    for mask in (pred, target):
        padded = torch.zeros(shape, dtype=torch.bool, device=device)
        padded[inner] = mask[tuple(box)]
        surface = torch.zeros(shape, dtype=torch.bool, device=device)
        surface[inner] = surface_of(padded, margin)
        maps.append(surface.flatten())
    pred_map, target_map = maps
    strides = np.cumprod((1, *shape[:0:-1]))[::-1]
    flat_offsets = torch.as_tensor(offsets @ strides, dtype=torch.long, device=device)
    offset_lengths = torch.as_tensor(
        np.repeat(lengths, np.diff(np.append(starts, len(offsets)))), device=device
    )
    scale = torch.as_tensor(spacing, device=device)
    pred_points, target_points = pred_map.nonzero().flatten(), target_map.nonzero().flatten()
    results = []
    for points, other_map, other_points in (
        (pred_points, target_map, target_points),
        (target_points, pred_map, pred_points),
    ):
        distances = torch.zeros(points.numel(), dtype=torch.float64, device=device)
        only = ~other_map[points]
        distances[only] = _nearest_torch(
            points[only], other_map, other_points, shape, scale, flat_offsets, offset_lengths
        )
        results.append(distances)
    return results[0], results[1]
