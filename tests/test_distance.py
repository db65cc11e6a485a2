"""Distance maps against scipy.ndimage.distance_transform_edt (the oracle), both backends, with spacing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from seglosses import distance as distance_module
from seglosses.distance import DistanceMaps, boundary_distance, distance_transform, signed_distance

BACKENDS = ["scipy", "torch"]


def _random_masks(shape: tuple[int, ...], seed: int, density: float = 0.8) -> np.ndarray:
    masks = np.random.default_rng(seed).random(shape) < density
    masks[(0,) * (len(shape) - 1)] = False  # every mask keeps at least one zero voxel
    masks.reshape(shape[0], -1)[:, 0] = False
    return masks


def _scipy(masks: np.ndarray, spacing, spatial_dims: int) -> np.ndarray:
    flat = masks.reshape(-1, *masks.shape[masks.ndim - spatial_dims :])
    return np.stack([ndimage.distance_transform_edt(m, sampling=spacing) for m in flat]).reshape(masks.shape)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("shape", "spacing"),
    [((3, 13, 17), None), ((2, 11, 9), (0.7, 1.9)), ((2, 2, 9, 11, 7), (1.5, 0.7, 2.0)), ((2, 6, 5, 4), 0.5)],
)
def test_matches_scipy_with_spacing(backend, shape, spacing, device):
    spatial_dims = 3 if len(shape) >= 4 and shape != (2, 6, 5, 4) else len(shape) - 1
    masks = _random_masks(shape, seed=len(shape))
    expected = _scipy(masks, spacing, spatial_dims)
    got = distance_transform(torch.from_numpy(masks).to(device), spacing, spatial_dims=spatial_dims, backend=backend)
    assert got.device.type == device.type and got.dtype == torch.float32
    np.testing.assert_allclose(got.cpu().numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 3], ids=["one-thread", "three-threads"])
@pytest.mark.parametrize("sparse_fraction", [None, 1.0], ids=["default", "always-sparse"])
@pytest.mark.parametrize("spacing", [None, (1.9, 0.7, 1.3)])
def test_scipy_backend_gives_scipys_numbers_exactly(spacing, sparse_fraction, threads, monkeypatch):
    """The scipy backend works on the mask's bounding box widened by one voxel, settles the voxels next
    to a zero first when the mask is sparse in that box (then transforms only around the others), and
    forms the distances itself: bit for bit scipy's (after the float32 cast), for foregrounds away
    from the image border, touching it, a single voxel, dense noise, specks around two balls, and
    in 1D, 2D and 3D; on one thread or on a pool of threads, one mask per task."""
    if sparse_fraction is not None:
        monkeypatch.setattr(distance_module, "SPARSE_FRACTION", sparse_fraction)
    monkeypatch.setattr(distance_module, "PARALLEL_MIN_VOXELS", 1)  # every mask counts as large
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    rng = np.random.default_rng(3)
    shape = (16, 14, 13)
    grid = np.indices(shape)
    masks = np.zeros((8, *shape), dtype=bool)
    masks[0, 4:7, 3:6, 2:5] = True  # a small box inside the image
    masks[1, :5, 6:, 3:] = True  # touching three borders
    masks[2, 5, 5, 5] = True
    masks[3] = rng.random(shape) < 0.7
    masks[4] = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5) > 0.3
    masks[5] = True
    masks[5, 0, 0, 0] = False  # nearly full: the box is the whole image
    for index, centres in ((6, [(3, 3, 3), (12, 10, 9)]), (7, [(7, 7, 6)])):  # balls (deep voxels) and specks
        for centre in centres:
            masks[index] |= ((grid - np.reshape(centre, (3, 1, 1, 1))) ** 2).sum(axis=0) <= 9
        masks[index] |= rng.random(shape) < 0.02
    for spatial_dims in (3, 2, 1):
        sampling = None if spacing is None else spacing[:spatial_dims]
        flat = masks.reshape(-1, *masks.shape[masks.ndim - spatial_dims :])
        keep = [index for index, mask in enumerate(flat) if not mask.all()]  # all-True masks give inf
        got = distance_transform(torch.from_numpy(flat[keep]), sampling, spatial_dims=spatial_dims, backend="scipy")
        expected = _scipy(flat[keep], sampling, spatial_dims).astype(np.float32)
        np.testing.assert_array_equal(got.numpy(), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_zeros_and_long_lines(backend):
    """Few zero voxels: distances span the image, every envelope segment is exercised."""
    masks = np.ones((2, 40, 33), dtype=bool)
    masks[0, 5, 30] = masks[0, 39, 0] = False
    masks[1, 20, 16] = False
    got = distance_transform(torch.from_numpy(masks), (1.3, 0.6), spatial_dims=2, backend=backend)
    np.testing.assert_allclose(got.numpy(), _scipy(masks, (1.3, 0.6), 2), rtol=1e-5)


def test_backends_agree_on_blobs():
    grid = np.indices((24, 20, 16))
    masks = np.stack([((grid - np.array(c)[:, None, None, None]) ** 2).sum(0) < r * r
                      for c, r in [((8, 9, 7), 6), ((15, 5, 10), 4)]])
    a = distance_transform(torch.from_numpy(masks), (1.0, 0.8, 2.5), backend="scipy")
    b = distance_transform(torch.from_numpy(masks), (1.0, 0.8, 2.5), backend="torch")
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_full_masks(backend):
    masks = torch.zeros(3, 4, 5, dtype=torch.bool)
    masks[1] = True
    masks[2, 1:3, 1:4] = True
    edt = distance_transform(masks, spatial_dims=2, backend=backend)
    assert (edt[0] == 0).all() and torch.isinf(edt[1]).all()
    for field in (signed_distance(masks, spatial_dims=2, backend=backend),
                  boundary_distance(masks, spatial_dims=2, backend=backend)):
        assert torch.isfinite(field).all()
        assert (field[:2] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_signed_and_boundary_distance_from_scipy(backend):
    masks = _random_masks((2, 12, 10), seed=3, density=0.5)
    masks[:, 0, 1] = True  # neither empty nor full
    inside, outside = _scipy(masks, (1.0, 2.0), 2), _scipy(~masks, (1.0, 2.0), 2)
    signed = signed_distance(torch.from_numpy(masks), (1.0, 2.0), backend=backend)
    np.testing.assert_allclose(signed.numpy(), outside - inside, rtol=1e-5, atol=1e-6)
    unsigned = boundary_distance(torch.from_numpy(masks), (1.0, 2.0), backend=backend)
    np.testing.assert_allclose(unsigned.numpy(), outside + inside, rtol=1e-5, atol=1e-6)


def test_chunked_min_plus_matches_unchunked(monkeypatch):
    import seglosses.distance as distance

    masks = torch.from_numpy(_random_masks((3, 9, 14), seed=5))
    whole = distance_transform(masks, spatial_dims=2, backend="torch")
    monkeypatch.setattr(distance, "_CHUNK_ELEMENTS", 14 * 14 * 2)  # two lines per chunk
    torch.testing.assert_close(distance_transform(masks, spatial_dims=2, backend="torch"), whole)


def test_bad_arguments_name_the_argument():
    mask = torch.ones(2, 3, 4, 5)
    with pytest.raises(ValueError, match="`spatial_dims`"):
        distance_transform(mask)
    with pytest.raises(ValueError, match="`spacing`"):
        distance_transform(mask, (1.0, 2.0), spatial_dims=3)
    with pytest.raises(ValueError, match="`spacing`"):
        distance_transform(mask, -1.0, spatial_dims=2)
    with pytest.raises(ValueError, match="`backend`"):
        distance_transform(mask, spatial_dims=2, backend="cupy")
    with pytest.raises(TypeError, match="`mask`"):
        distance_transform([[0, 1]])


def test_distance_maps_transform_caches_static_targets():
    transform = DistanceMaps(num_classes=3, spacing=(1.0, 0.5))
    labels = torch.tensor([[0, 1, 1, 2], [0, 0, 2, 2], [1, 1, 0, 0]])
    first = transform({"mask": labels, "index": 0})
    second = transform({"mask": labels.clone(), "index": 0})
    assert (transform.hits, transform.misses) == (1, 1)
    assert first["distance"].shape == (3, 3, 4)
    expected = signed_distance(torch.stack([labels == c for c in range(3)]), (1.0, 0.5))
    torch.testing.assert_close(second["distance"], expected)
    assert "distance" not in {"mask": labels}  # the input sample is not modified
    with pytest.raises(ValueError, match="`kind`"):
        DistanceMaps(num_classes=2, kind="chamfer")
