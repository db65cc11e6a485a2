r"""Exact Euclidean distance maps of binary masks: 2D and 3D, voxel spacing, batched.

:func:`distance_transform` has the semantics of :func:`scipy.ndimage.distance_transform_edt`: every
non-zero voxel gets its Euclidean distance (in spacing units) to the nearest zero voxel, zero voxels
get 0. :func:`signed_distance` is negative inside a mask and positive outside it, and
:func:`boundary_distance` is the unsigned distance to the other region (the field of Karimi's
Hausdorff-DT loss). All three work on any number of leading (batch, class) dimensions.

**Backends.** ``"scipy"`` runs SciPy's exact feature transform (C) on the CPU, one mask at a time
(on up to ``torch.get_num_threads()`` threads when there are several large masks: the kernel releases
the GIL, and a training step is allowed that many threads anyway); a
numpy-vectorised Felzenszwalb-Huttenlocher transform was tried and measured 2-3x slower than SciPy's C
kernel, so the CPU path reuses it, on the bounding box of the mask widened by one voxel (which holds
every voxel's nearest zero), and forms the distances from it with less memory traffic than
``distance_transform_edt`` (the same float64 operations, so the same numbers). ``"torch"`` is pure
torch for accelerators: an exact separable transform, a linear scan along the first axis (distance to
the nearest zero on the line, by running maxima and minima) followed, along each further axis, by the
exact min-plus convolution with the parabola :math:`s^2 (j - k)^2`, computed in chunks of lines. Both
give the same values (to float32 rounding). ``"auto"`` takes ``"scipy"`` for CPU tensors and
``"torch"`` otherwise.

**Masks without a zero voxel** have no distance: :func:`distance_transform` returns ``inf`` there
(SciPy's output is undefined for them). :func:`signed_distance` and :func:`boundary_distance` return
an all-zero map for a mask that is empty or full (it has no boundary), as Kervadec's and MONAI's
reference code do.

:class:`DistanceMaps` computes the per-class maps of a sample's labels once and caches them, for
static targets in a dataset.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from seglosses._checks import check_one_of, check_type, fail

__all__ = [
    "BACKENDS",
    "DistanceMapCache",
    "DistanceMaps",
    "boundary_distance",
    "distance_transform",
    "signed_distance",
]

BACKENDS: tuple[str, ...] = ("auto", "scipy", "torch")
KINDS: tuple[str, ...] = ("signed", "unsigned", "boundary")
_CHUNK_ELEMENTS = 1 << 25  # (lines x n x n) candidates per min-plus chunk: 128 MiB of float32
# Below this fraction of True voxels in their box, settle the voxels next to a zero first (scipy backend).
SPARSE_FRACTION = 0.15
SPARSE_MAX_PARTS = 64  # at most this many separate transforms for the voxels left
PARALLEL_MIN_VOXELS = 1 << 16  # masks smaller than this are transformed one after another (a thread costs more)


def _as_mask(mask: Any) -> Tensor:
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(mask)
    if not isinstance(mask, Tensor):
        fail("mask", "a tensor or numpy array", type(mask).__name__, TypeError)
    if mask.is_complex():
        fail("mask", "a real or boolean tensor", f"dtype {mask.dtype}", TypeError)
    return mask if mask.dtype == torch.bool else mask != 0


def _resolve_dims(mask: Tensor, spacing: Any, spatial_dims: int | None) -> tuple[int, tuple[float, ...]]:
    """The number of trailing spatial dimensions and one spacing per spatial axis."""
    if spatial_dims is None:
        if isinstance(spacing, (Sequence, np.ndarray, Tensor)) and not isinstance(spacing, str):
            spatial_dims = len(spacing)
        elif mask.ndim <= 3:
            spatial_dims = mask.ndim  # scipy's semantics: every axis is spatial
        else:
            fail("spatial_dims", f"given for a mask with {mask.ndim} dimensions (2 or 3)", None)
    check_type("spatial_dims", spatial_dims, int)
    if spatial_dims not in (1, 2, 3) or spatial_dims > mask.ndim:
        fail("spatial_dims", f"1, 2 or 3 and at most the mask's {mask.ndim} dimensions", spatial_dims)
    if spacing is None:
        return spatial_dims, (1.0,) * spatial_dims
    if isinstance(spacing, bool):
        fail("spacing", "None, a positive number or one positive number per spatial axis", repr(spacing), TypeError)
    if isinstance(spacing, (int, float)):
        values = (float(spacing),) * spatial_dims
    elif isinstance(spacing, (Sequence, np.ndarray, Tensor)) and not isinstance(spacing, str):
        values = tuple(float(v) for v in (spacing.tolist() if hasattr(spacing, "tolist") else spacing))
        if len(values) != spatial_dims:
            fail("spacing", f"{spatial_dims} values (one per spatial axis)", f"{len(values)} values")
    else:
        fail("spacing", "None, a positive number or one positive number per spatial axis", repr(spacing), TypeError)
    if not all(np.isfinite(v) and v > 0 for v in values):
        fail("spacing", "finite and positive", list(values))
    return spatial_dims, values


def _check_backend(backend: str, device: torch.device) -> str:
    check_one_of("backend", backend, BACKENDS)
    if backend == "auto":
        return "scipy" if device.type == "cpu" else "torch"
    return backend


# --------------------------------------------------------------------------- scipy backend


def _crop_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box of the True voxels, one voxel wider on each side inside the image; None if none."""
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(other for other in range(mask.ndim) if other != axis)))
        if hits.size == 0:
            return None
        box.append(slice(max(0, int(hits[0]) - 1), min(mask.shape[axis], int(hits[-1]) + 2)))
    return tuple(box)


def _squared_lengths(steps: np.ndarray, sampling: tuple[float, ...] | None) -> np.ndarray:
    """Squared lengths of integer voxel steps (..., ndim), formed as scipy forms them (the same float64
    operations in the same order; exact integers without spacing)."""
    if sampling is None:
        return (steps * steps).sum(axis=-1)
    squared = None
    for axis in range(steps.shape[-1]):
        term = steps[..., axis].astype(np.float64) * sampling[axis]
        term *= term
        squared = term if squared is None else squared + term
    return squared


def _edt_of_box(
    mask: np.ndarray, box: tuple[slice, ...], sampling: tuple[float, ...] | None, out: np.ndarray | None = None
) -> np.ndarray:
    """scipy's distances over ``mask[box]``, exact wherever the nearest zero voxel lies in ``box``:
    the feature transform, then the distances formed without scipy's full-size index grid, in place
    in the index array. ``out``: where to write them (a float32 view rounds scipy's float64 square
    roots once, as a later cast would)."""
    crop = mask[box]
    nearest = ndimage.distance_transform_edt(crop, sampling=sampling, return_distances=False, return_indices=True)
    squared = None
    for axis in range(crop.ndim):
        position = np.arange(crop.shape[axis], dtype=nearest.dtype)
        step = nearest[axis]
        step -= position.reshape([-1 if other == axis else 1 for other in range(crop.ndim)])
        if sampling is None:
            term = np.multiply(step, step, out=step)  # exact integers: any order of the sum gives scipy's numbers
        else:
            term = step.astype(np.float64) * sampling[axis]
            term *= term
        squared = term if squared is None else np.add(squared, term, out=squared)
    return np.sqrt(squared, out=out, dtype=np.float64)


def _near_zero_pass(
    mask: np.ndarray, sampling: tuple[float, ...] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Distances of the True voxels whose nearest zero voxel is a neighbour (3^d cube) no longer than
    twice the finest spacing: no voxel outside the cube is nearer, so the first hit, in order of
    length, is exact. Returns (flat index, (n, ndim) index, distance or NaN, reach) of the True voxels."""
    ndim = mask.ndim
    spacing = np.ones(ndim) if sampling is None else np.asarray(sampling, dtype=np.float64)
    offsets = np.array([step for step in itertools.product((-1, 0, 1), repeat=ndim) if any(step)])
    lengths = np.sqrt(_squared_lengths(offsets, sampling).astype(np.float64))
    reach = 2.0 * float(spacing.min())  # every voxel outside the cube is at least this far
    order = np.argsort(lengths, kind="stable")
    offsets, lengths = offsets[order], lengths[order]
    offsets, lengths = offsets[lengths <= reach], lengths[lengths <= reach]
    padded = np.ones(tuple(n + 2 for n in mask.shape), dtype=bool)  # no zero voxel beyond the image
    padded[(slice(1, -1),) * ndim] = mask
    zero = ~padded.ravel()
    strides = np.cumprod((1, *padded.shape[:0:-1]))[::-1]
    points = np.flatnonzero(mask)
    index = np.stack(np.unravel_index(points, mask.shape), axis=1)
    where = (index + 1) @ strides
    distance = np.full(len(points), np.nan)
    pending = np.arange(len(points))
    for step, length in zip(offsets @ strides, lengths, strict=True):
        hit = zero[where[pending] + step]
        distance[pending[hit]] = length
        pending = pending[~hit]
        if not pending.size:
            break
    return points, index, distance, reach


def _scipy_edt(mask: np.ndarray, sampling: tuple[float, ...] | None, out: np.ndarray | None = None) -> np.ndarray:
    """scipy's ``distance_transform_edt(mask, sampling)``, the same float64 numbers (rounded once to
    the dtype of ``out`` when given), for less work.

    The nearest zero voxel of a voxel in the box of the True voxels is in that box widened by one
    (a zero voxel further out has a nearer one on the widened border), so the feature transform runs
    on that crop. When the True voxels fill little of it (scattered specks, as in a thresholded
    prediction), the voxels next to a zero are settled first (:func:`_near_zero_pass`) and the
    transform runs only around the others, one box per 26-connected part of them: the nearest zero
    ``u`` of such a voxel ``v`` (at least the pass's reach ``r`` away) is within ``r + 2h`` of the part
    of ``v`` (``2h`` a voxel's diagonal), because the point of the segment from ``u`` to ``v`` at ``t``
    from ``u`` is ``t`` from every zero, so the voxels nearest the segment beyond ``r + h`` are
    unresolved too, and they are 26-connected to ``v``.
    """
    if out is None:
        out = np.zeros(mask.shape)
    else:
        out.fill(0.0)
    box = _crop_box(mask)
    if box is None:
        return out
    crop_size = math.prod(part.stop - part.start for part in box)
    if np.count_nonzero(mask[box]) <= SPARSE_FRACTION * crop_size:
        points, index, distance, reach = _near_zero_pass(mask, sampling)
        unresolved = np.isnan(distance)
        values = out.reshape(-1)
        if not unresolved.any():
            values[points] = distance
            return out
        spacing = np.ones(mask.ndim) if sampling is None else np.asarray(sampling, dtype=np.float64)
        margin = np.floor((reach + np.sqrt((spacing**2).sum())) / spacing).astype(np.int64) + 1
        deep = np.zeros(mask.shape, dtype=bool)
        deep.reshape(-1)[points[unresolved]] = True
        parts, count = ndimage.label(deep, structure=np.ones((3,) * mask.ndim, dtype=bool))
        boxes = [
            tuple(slice(max(0, part.start - int(m)), min(n, part.stop + int(m)))
                  for part, m, n in zip(found, margin, mask.shape, strict=True))
            for found in ndimage.find_objects(parts)
        ] if count <= SPARSE_MAX_PARTS else []
        if boxes and sum(math.prod(p.stop - p.start for p in near) for near in boxes) <= crop_size // 2:
            values[points[~unresolved]] = distance[~unresolved]
            for label, near in enumerate(boxes, start=1):
                inside = parts[near] == label
                out[near][inside] = _edt_of_box(mask, near, sampling)[inside]
            return out
    _edt_of_box(mask, box, sampling, out=out[box])
    return out


def _scipy_distances(masks: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """(N, *S) bool -> (N, *S) float32 distances to the nearest False voxel (inf if none)."""
    out = np.empty(masks.shape, dtype=np.float32)
    sampling = None if all(step == 1.0 for step in spacing) else spacing  # skips scipy's rescaling pass

    def fill(index: int) -> None:
        if masks[index].all():
            out[index] = np.inf
        else:
            _scipy_edt(masks[index], sampling, out=out[index])

    workers = min(torch.get_num_threads(), len(masks))
    if workers > 1 and masks[0].size >= PARALLEL_MIN_VOXELS:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(fill, range(len(masks))))  # list() re-raises a worker's exception here
    else:
        for index in range(len(masks)):
            fill(index)
    return out


# --------------------------------------------------------------------------- torch backend


def _line_scan(zero: Tensor, step: float) -> Tensor:
    """(L, n) bool (True at zero voxels) -> (L, n) squared distance along the line to the nearest zero."""
    n = zero.shape[-1]
    position = torch.arange(n, device=zero.device, dtype=torch.float32).expand_as(zero)
    inf = torch.tensor(float("inf"), device=zero.device)
    last = torch.where(zero, position, -inf).cummax(dim=-1).values
    following = torch.where(zero, position, inf).flip(-1).cummin(dim=-1).values.flip(-1)
    distance = torch.minimum(position - last, following - position) * step
    return distance * distance


def _min_plus(squared: Tensor, step: float) -> Tensor:
    """(L, n) -> (L, n): :math:`\\min_k f_k + s^2 (j-k)^2` for every line, exactly, in chunks of lines."""
    n = squared.shape[-1]
    position = torch.arange(n, device=squared.device, dtype=squared.dtype)
    parabola = (position.view(-1, 1) - position.view(1, -1)) ** 2 * (step * step)  # (j, k)
    out = torch.empty_like(squared)
    chunk = max(1, _CHUNK_ELEMENTS // (n * n))
    for start in range(0, squared.shape[0], chunk):
        block = squared[start : start + chunk]
        out[start : start + chunk] = (block.unsqueeze(1) + parabola).amin(dim=-1)
    return out


def _along(values: Tensor, axis: int, function, *args) -> Tensor:
    """Apply a (L, n) -> (L, n) line function along ``axis`` of ``values``."""
    moved = values.movedim(axis, -1)
    shape = moved.shape
    result = function(moved.reshape(-1, shape[-1]), *args)
    return result.reshape(shape).movedim(-1, axis)


def _torch_squared(masks: Tensor, spacing: tuple[float, ...]) -> Tensor:
    """(N, *S) bool -> (N, *S) float32 squared distances to the nearest False voxel (inf if none)."""
    spatial = len(spacing)
    squared = _along(~masks, 1, _line_scan, spacing[0])
    for axis in range(1, spatial):
        squared = _along(squared, axis + 1, _min_plus, spacing[axis])
    return squared


def _distances(mask: Tensor, spacing: tuple[float, ...], backend: str) -> Tensor:
    """Distances of a bool mask (..., *S), computed per mask over the flattened leading dims."""
    spatial_shape = mask.shape[mask.ndim - len(spacing) :]
    masks = mask.reshape(-1, *spatial_shape)
    if masks.shape[0] == 0:
        return torch.zeros(mask.shape, device=mask.device)
    if backend == "scipy":
        distances = torch.from_numpy(_scipy_distances(masks.cpu().numpy(), spacing)).to(mask.device)
    else:
        distances = _torch_squared(masks, spacing).sqrt()
    return distances.reshape(mask.shape)


def distance_transform(
    mask: Tensor, spacing: float | Sequence[float] | None = None, *, spatial_dims: int | None = None,
    backend: str = "auto",
) -> Tensor:
    """Exact Euclidean distance of every non-zero voxel to the nearest zero voxel (scipy's EDT).

    Args:
        mask: (..., *S) tensor (or numpy array); non-zero is foreground. Leading dimensions are
            batch (and class) dimensions, each mask is transformed on its own.
        spacing: voxel size, one number or one per spatial axis; None for unit spacing.
        spatial_dims: the number of trailing spatial axes (1, 2 or 3); None: ``len(spacing)`` when
            spacing is a sequence, else every axis of a mask with at most 3 dimensions (scipy's
            semantics). Give it for batched masks.
        backend: "auto", "scipy" (CPU kernel) or "torch" (any device).

    Returns:
        float32 tensor of the mask's shape on its device; ``inf`` in a mask with no zero voxel.

    Example:
        >>> mask = torch.tensor([[0, 1, 1, 1, 1]])
        >>> distance_transform(mask)
        tensor([[0., 1., 2., 3., 4.]])
        >>> masks = torch.zeros(2, 3, 3, dtype=torch.bool)
        >>> masks[:, 1:, 1:] = True
        >>> distance_transform(masks, spacing=(2.0, 1.0), spatial_dims=2, backend="torch")[0]
        tensor([[0., 0., 0.],
                [0., 1., 2.],
                [0., 1., 2.]])
    """
    mask = _as_mask(mask)
    spatial_dims, spacing = _resolve_dims(mask, spacing, spatial_dims)
    backend = _check_backend(backend, mask.device)
    return _distances(mask, spacing, backend)


def _inside_outside(mask: Tensor, spacing: tuple[float, ...], backend: str) -> tuple[Tensor, Tensor]:
    """Distances inside (to the outside) and outside (to the inside), each 0 on the other side. A mask
    without a boundary has inf throughout one of them (a full mask inside, an empty one outside), which
    is how the callers find and zero it without a reduction over the mask."""
    inside, outside = _distances(torch.stack([mask, ~mask]), spacing, backend)
    return inside, outside


def signed_distance(
    mask: Tensor, spacing: float | Sequence[float] | None = None, *, spatial_dims: int | None = None,
    backend: str = "auto",
) -> Tensor:
    """Signed distance map: minus the distance to the outside inside the mask, the distance to the
    inside outside it; all zeros for an empty or a full mask.

    Args and Returns: as :func:`distance_transform`.

    Example:
        >>> signed_distance(torch.tensor([0, 0, 1, 1, 1, 0]))
        tensor([ 2.,  1., -1., -2., -1.,  1.])
    """
    mask = _as_mask(mask)
    spatial_dims, spacing = _resolve_dims(mask, spacing, spatial_dims)
    inside, outside = _inside_outside(mask, spacing, _check_backend(backend, mask.device))
    return outside.sub_(inside).nan_to_num_(posinf=0.0, neginf=0.0)  # fresh halves of one result: in place


def boundary_distance(
    mask: Tensor, spacing: float | Sequence[float] | None = None, *, spatial_dims: int | None = None,
    backend: str = "auto",
) -> Tensor:
    """Unsigned distance of every voxel to the other region (the absolute :func:`signed_distance`):
    the distance field of the Hausdorff-DT loss, zeros for an empty or full mask.

    Args and Returns: as :func:`distance_transform`.

    Example:
        >>> boundary_distance(torch.tensor([0, 0, 1, 1, 1, 0]))
        tensor([2., 1., 1., 2., 1., 1.])
    """
    mask = _as_mask(mask)
    spatial_dims, spacing = _resolve_dims(mask, spacing, spatial_dims)
    inside, outside = _inside_outside(mask, spacing, _check_backend(backend, mask.device))
    return outside.add_(inside).nan_to_num_(posinf=0.0)  # fresh halves of one result: in place


_KIND_FUNCTIONS = {"signed": signed_distance, "unsigned": distance_transform, "boundary": boundary_distance}


class DistanceMaps:
    """Dataset transform: per-class distance maps of a sample's labels, computed once and cached.

    Call it on a sample dict; it adds ``sample[out_key]``, a (C, *S) float32 map per class of the
    integer labels ``sample[key]`` (a label outside [0, C), such as an ignore index, belongs to no class). Maps are
    cached by the labels' content, so a static target is transformed once however often it is read
    (augmented targets simply miss the cache).

    Args:
        num_classes: C.
        kind: "signed" (:func:`signed_distance`), "unsigned" (:func:`distance_transform` of each class
            mask) or "boundary" (:func:`boundary_distance`).
        spacing: voxel spacing, or None; a sample's ``"spacing"`` entry overrides it when present.
        key, out_key: where the labels are read and the maps written.
        max_cached: the most maps kept (least recently used dropped first); 0 disables caching.

    Example:
        >>> transform = DistanceMaps(num_classes=2)
        >>> sample = transform({"mask": torch.tensor([[0, 1, 1, 0]])})
        >>> sample["distance"]
        tensor([[[-1.,  1.,  1., -1.]],
        <BLANKLINE>
                [[ 1., -1., -1.,  1.]]])
        >>> transform.hits, transform.misses
        (0, 1)
    """

    def __init__(
        self, num_classes: int, *, kind: str = "signed", spacing: float | Sequence[float] | None = None,
        key: str = "mask", out_key: str = "distance", max_cached: int = 10_000,
    ) -> None:
        check_type("num_classes", num_classes, int)
        if num_classes < 1:
            fail("num_classes", "at least 1", num_classes)
        check_one_of("kind", kind, KINDS)
        check_type("max_cached", max_cached, int)
        self.num_classes, self.kind, self.spacing = num_classes, kind, spacing
        self.key, self.out_key, self.max_cached = key, out_key, max_cached
        self.hits = self.misses = 0
        self._cache: OrderedDict[tuple, Tensor] = OrderedDict()

    def maps(self, labels: Tensor, spacing: Any = None) -> Tensor:
        """(C, *S) maps of integer labels (*S)."""
        labels = torch.as_tensor(labels)
        spacing = self.spacing if spacing is None else spacing
        if isinstance(spacing, Tensor):
            spacing = spacing.tolist()
        key = (tuple(labels.shape), str(labels.dtype), str(spacing),
               hashlib.blake2b(labels.cpu().contiguous().numpy().tobytes(), digest_size=16).hexdigest())
        if key in self._cache:
            self.hits += 1
            self._cache.move_to_end(key)
            return self._cache[key]
        self.misses += 1
        classes = torch.arange(self.num_classes, device=labels.device).view(-1, *([1] * labels.ndim))
        masks = labels.unsqueeze(0) == classes
        result = _KIND_FUNCTIONS[self.kind](masks, spacing, spatial_dims=labels.ndim)
        if self.max_cached > 0:
            self._cache[key] = result
            if len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
        return result

    def __call__(self, sample: dict) -> dict:
        check_type("sample", sample, dict)
        if self.key not in sample:
            fail("sample", f"a dict with the key {self.key!r}", sorted(sample))
        sample = dict(sample)
        sample[self.out_key] = self.maps(sample[self.key], sample.get("spacing"))
        return sample


class DistanceMapCache:
    """Per-image cache of maps computed from masks, keyed by the masks' content (for static targets).

    A loss holding one (``cache_target_maps=True``) computes the distance maps of each training target
    once; later steps on the same target only hash it. Augmented targets simply miss.

    Args:
        max_items: the most per-image maps kept (least recently used dropped first).

    Example:
        >>> cache = DistanceMapCache()
        >>> masks = torch.tensor([[[0, 1, 1, 0]], [[1, 1, 0, 0]]]).bool()  # (B=2, C=1, 4)
        >>> maps = cache.lookup(masks, "signed", lambda m: signed_distance(m, spatial_dims=1))
        >>> maps = cache.lookup(masks.flip(0), "signed", lambda m: signed_distance(m, spatial_dims=1))
        >>> (cache.hits, cache.misses)
        (2, 2)
    """

    def __init__(self, max_items: int = 10_000) -> None:
        check_type("max_items", max_items, int)
        if max_items < 1:
            fail("max_items", "at least 1", max_items)
        self.max_items = max_items
        self.hits = self.misses = 0
        self._store: OrderedDict[tuple, Tensor] = OrderedDict()

    def lookup(self, masks: Tensor, tag: str, compute) -> Tensor:
        """Maps (B, ...) of ``masks`` (B, ...): cached per image under ``tag`` (which must name everything
        else the maps depend on, such as the kind and the spacing), else ``compute(masks[missing])``."""
        host = masks.detach().cpu().contiguous().numpy()
        keys = [(tag, host.shape[1:], hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest()) for image in host]
        missing = [index for index, key in enumerate(keys) if key not in self._store]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            computed = compute(masks[missing])
            for index, maps in zip(missing, computed, strict=True):
                self._store[keys[index]] = maps
        maps = []
        for key in keys:
            self._store.move_to_end(key)
            maps.append(self._store[key])
        while len(self._store) > self.max_items:
            self._store.popitem(last=False)
        return torch.stack(maps).to(masks.device)

    def __repr__(self) -> str:
        return f"DistanceMapCache(items={len(self._store)}, hits={self.hits}, misses={self.misses})"
