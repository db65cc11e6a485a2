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

On CUDA tensors the same algorithm runs in torch: the shells are looked up in large blocks and
the unresolved voxels go to a blocked brute-force ``torch.cdist`` in float64 (differences, not the
matrix-product shortcut).
"""

from __future__ import annotations

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


def _shells(spacing: tuple[float, ...], shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """The offsets of :func:`_shell_offsets` as flat index steps in a C-ordered array of ``shape``.

    Returns (flat offsets, their lengths, start of each shell plus the total): offsets ascending by length.
    """
    offsets, lengths, starts, _ = _shell_offsets(spacing, SHELL_LOOKUPS)
    strides = np.cumprod((1, *shape[:0:-1]))[::-1]
    flat = (offsets @ strides).astype(np.intp)
    shell_sizes = np.diff(np.append(starts, len(flat)))
    return flat, np.repeat(lengths, shell_sizes), np.append(starts, len(flat))


def _coordinates(flat_index: np.ndarray, shape: tuple[int, ...], spacing: np.ndarray) -> np.ndarray:
    return np.stack(np.unravel_index(flat_index, shape), axis=1) * spacing


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
    offsets, offset_lengths, shell_starts = shells
    distances = np.empty(len(query))
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
    points = points + base
    if points.size:
        targets, queries = _coordinates(target_points, shape, spacing), _coordinates(points, shape, spacing)
        if points.size * targets.shape[0] <= BRUTE_FORCE_PAIRS:
            distances[pending] = cdist(queries, targets).min(axis=1)
        else:
            tree = cKDTree(targets, leafsize=KD_LEAF_SIZE, balanced_tree=False)
            distances[pending] = tree.query(queries, workers=workers)[0]
    return distances


def surface_distances_numpy(
    pred: np.ndarray, target: np.ndarray, spacing: np.ndarray, workers: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances of two non-empty boolean masks (CPU).

    Returns:
        ``(forward, backward)`` float64 arrays: the distance of every surface voxel of ``pred`` to the
        surface of ``target``, and of every surface voxel of ``target`` to the surface of ``pred``.
    """
    box = bounding_box(pred | target)
    if box is None or not pred.any() or not target.any():
        raise ValueError("surface distances need two non-empty masks")
    spacing = np.asarray(spacing, dtype=np.float64)
    # The padding keeps every looked-up voxel p + offset inside the array (no wrap-around).
    margin = tuple(r + 1 for r in _shell_offsets(tuple(spacing.tolist()), SHELL_LOOKUPS)[3])
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
    shared = np.zeros(len(pred_points) - len(pred_only))
    shells = _shells(tuple(spacing.tolist()), shape)
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
    return np.concatenate([forward, shared]), np.concatenate([backward, shared])


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
