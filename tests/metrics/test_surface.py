"""Surface metrics: exact distances, HD, HD95, ASSD and NSD against medpy, MONAI and a full-volume EDT.

Where definitions differ, a test says so and pins both behaviours:

- HD95: medpy (our default, ``hd95_mode="pooled"``) takes the 95th percentile of the pooled
  distances of both directions; MONAI takes the larger of the two directed 95th percentiles
  (``hd95_mode="max"``). See ``test_pooled_and_max_percentiles_differ``.
- Empty masks: MONAI gives inf (HD, ASSD) or NaN (HD95) with one empty mask and NaN with both;
  medpy raises. Ours: SPEC E (strict: NaN excluded and counted / 0; transunet_compat: 0).
  See ``test_empty_masks_*``.
- ASSD: MONAI ``symmetric=True`` and medpy 0.5 pool both directions (our default); medpy <= 0.4 and
  code that vendors it average the two directed means (``assd_mode="mean"``).
- Surfaces: all three use ``X ^ erode(X)`` with the cross element and a zero border, so masks that
  touch the image border agree (``test_masks_touching_the_border``). MONAI's NSD counts boundary
  voxels (``use_subvoxels=False``), as we do.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from seglosses.metrics import (
    SurfaceMetric,
    assd,
    hausdorff_distance,
    hd95,
    surface_dice,
    surface_distances,
    surface_values,
)
from seglosses.metrics import _distance as kernel

SHAPES = [(40, 36), (20, 18, 14)]
SPACINGS = {2: [None, (0.7, 1.9)], 3: [None, (2.5, 0.8, 1.1)]}


def reference_distances(pred: np.ndarray, target: np.ndarray, spacing=None):
    """medpy's definition on the full image: EDT of the complement of the other surface."""
    cross = ndimage.generate_binary_structure(pred.ndim, 1)
    pred_surface = pred ^ ndimage.binary_erosion(pred, cross)
    target_surface = target ^ ndimage.binary_erosion(target, cross)
    to_target = ndimage.distance_transform_edt(~target_surface, sampling=spacing)[pred_surface]
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)[target_surface]
    return np.sort(to_target), np.sort(to_pred)


def blob_pair(shape, seed, far: bool = False):
    rng = np.random.default_rng(seed)
    target = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0) > 0.05
    pred = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0) > 0.05
    if far:  # a small far-away prediction: every distance goes through the KD-tree fallback
        pred = np.zeros(shape, bool)
        pred[(0,) * len(shape)] = True
        target = np.zeros(shape, bool)
        target[tuple(slice(s - s // 3, s) for s in shape)] = True
    return pred, target


def monai_metrics():
    return pytest.importorskip("monai.metrics")


def medpy_binary():
    return pytest.importorskip("medpy.metric.binary")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("spacing_index", [0, 1])
@pytest.mark.parametrize("strategy", ["default", "kd_tree_only", "brute_force_only", "long_shells"])
def test_distances_are_exact(shape, spacing_index, strategy, monkeypatch):
    spacing = SPACINGS[len(shape)][spacing_index]
    if strategy in ("kd_tree_only", "brute_force_only"):
        monkeypatch.setattr(kernel, "SHELL_LOOKUPS", 0)
        monkeypatch.setattr(kernel, "BRUTE_FORCE_PAIRS", 0 if strategy == "kd_tree_only" else 10**12)
    if strategy == "long_shells":
        monkeypatch.setattr(kernel, "SHELL_LOOKUPS", 20_000)
    for seed in range(4):
        pred, target = blob_pair(shape, seed, far=seed == 3)
        forward, backward = surface_distances(
            torch.from_numpy(pred), torch.from_numpy(target), spacing=spacing
        )
        expected_forward, expected_backward = reference_distances(pred, target, spacing)
        np.testing.assert_allclose(np.sort(forward.numpy()), expected_forward, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.sort(backward.numpy()), expected_backward, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("shell_lookups", [None, 0])
def test_torch_path_matches_numpy_path(shape, shell_lookups, device, monkeypatch):
    """The CUDA path (shells in torch blocks, float64 cdist for the rest) gives the CPU numbers.

    It runs on CPU tensors too; ``shell_lookups=0`` sends every voxel to the cdist fallback."""
    if shell_lookups is not None:
        monkeypatch.setattr(kernel, "SHELL_LOOKUPS", shell_lookups)
    spacing = np.asarray(SPACINGS[len(shape)][1])
    for seed in range(3):
        pred, target = blob_pair(shape, seed, far=seed == 2)
        on_device = torch.from_numpy(pred).to(device), torch.from_numpy(target).to(device)
        forward, backward = kernel.surface_distances_torch(*on_device, spacing)
        expected = kernel.surface_distances_numpy(pred, target, spacing)
        np.testing.assert_allclose(np.sort(forward.cpu().numpy()), np.sort(expected[0]), rtol=1e-12)
        np.testing.assert_allclose(np.sort(backward.cpu().numpy()), np.sort(expected[1]), rtol=1e-12)


def test_functional_api_through_the_torch_kernel(make_pair, monkeypatch):
    """The GPU code path of the functional metrics, run on CPU tensors, gives the CPU numbers."""
    from seglosses.metrics import surface as surface_module

    pred, target = make_pair((14, 12, 10), num_classes=3, batch=2, seed=13)
    pred[0][pred[0] == 2] = 0  # an empty prediction for one (image, class)
    options = {"spacing": (2.0, 1.0, 0.5), "include_background": True}
    expected = [
        hd95(pred, target, 3, **options),
        assd(pred, target, 3, **options),
        surface_dice(pred, target, 3, tolerance=1.0, **options),
    ]
    monkeypatch.setattr(surface_module, "_uses_torch_kernel", lambda device: True)
    got = [
        hd95(pred, target, 3, **options),
        assd(pred, target, 3, **options),
        surface_dice(pred, target, 3, tolerance=1.0, **options),
    ]
    for value, reference in zip(got, expected, strict=True):
        torch.testing.assert_close(value, reference, equal_nan=True)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("spacing_index", [0, 1])
def test_hd_hd95_assd_match_medpy(make_pair, shape, spacing_index, device):
    binary = medpy_binary()
    spacing = SPACINGS[len(shape)][spacing_index]
    pred, target = make_pair(shape, num_classes=3, batch=2, seed=21)
    options = {"spacing": spacing, "include_background": True}
    ours_hd95 = hd95(pred.to(device), target.to(device), 3, **options).cpu()
    ours_hd = hausdorff_distance(pred.to(device), target.to(device), 3, **options).cpu()
    ours_assd = assd(pred.to(device), target.to(device), 3, **options).cpu()
    compared = 0
    for b in range(2):
        for c in range(3):
            p, t = pred[b].numpy() == c, target[b].numpy() == c
            if not (p.any() and t.any()):
                continue
            compared += 1
            assert ours_hd95[b, c].item() == pytest.approx(binary.hd95(p, t, voxelspacing=spacing), rel=1e-12)
            assert ours_hd[b, c].item() == pytest.approx(binary.hd(p, t, voxelspacing=spacing), rel=1e-12)
            assert ours_assd[b, c].item() == pytest.approx(binary.assd(p, t, voxelspacing=spacing), rel=1e-12)
    assert compared >= 4


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("spacing_index", [0, 1])
def test_surface_metrics_match_monai(make_pair, to_one_hot, shape, spacing_index, device):
    metrics = monai_metrics()
    spacing = SPACINGS[len(shape)][spacing_index]
    pred, target = make_pair(shape, num_classes=3, batch=2, seed=31)
    on_device = pred.to(device), target.to(device)
    ours = {
        "hd95_max": hd95(*on_device, 3, hd95_mode="max", spacing=spacing),
        "hd": hausdorff_distance(*on_device, 3, spacing=spacing),
        "assd": assd(*on_device, 3, spacing=spacing),
        "nsd": surface_dice(*on_device, 3, tolerance=[0.0, 1.0, 2.0], spacing=spacing),
    }
    p1h, t1h = to_one_hot(pred, 3), to_one_hot(target, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = {
            "hd95_max": metrics.compute_hausdorff_distance(p1h, t1h, percentile=95, spacing=spacing),
            "hd": metrics.compute_hausdorff_distance(p1h, t1h, spacing=spacing),
            "assd": metrics.compute_average_surface_distance(p1h, t1h, symmetric=True, spacing=spacing),
            "nsd": metrics.compute_surface_dice(p1h, t1h, class_thresholds=[1.0, 2.0], spacing=spacing),
        }
    both_present = (pred.flatten(1)[:, None] == torch.arange(1, 3)[:, None]).any(-1) & (
        target.flatten(1)[:, None] == torch.arange(1, 3)[:, None]
    ).any(-1)
    assert both_present.sum() >= 3
    for name, value in ours.items():
        # MONAI works in float32; same definition, so agreement to float32 resolution.
        torch.testing.assert_close(
            value.cpu()[both_present], theirs[name][both_present].double(), rtol=2e-6, atol=2e-6
        )


def test_pooled_and_max_percentiles_differ():
    """medpy pools both directions before the percentile; MONAI takes the max of directed percentiles.

    A 5x5 square predicted exactly plus one far outlier voxel at distance 16*sqrt(2): pooled, the
    outlier is 1 of 33 distances, above the 95th percentile, so HD95 = 0; directed, it is 1 of the
    17 prediction -> target distances and the linear interpolation gives 0.2 * 16 * sqrt(2).
    """
    binary, metrics = medpy_binary(), monai_metrics()
    target = torch.zeros(1, 30, 30, dtype=torch.long)
    target[0, 5:10, 5:10] = 1
    pred = target.clone()
    pred[0, 25, 25] = 1
    pooled = hd95(pred, target, 2).item()
    max_mode = hd95(pred, target, 2, hd95_mode="max").item()
    assert pooled == binary.hd95(pred[0].numpy() == 1, target[0].numpy() == 1) == 0.0
    assert max_mode == pytest.approx(0.2 * math.hypot(16, 16), rel=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onehot = torch.nn.functional.one_hot(pred, 2).movedim(-1, 1).float()
        target_onehot = torch.nn.functional.one_hot(target, 2).movedim(-1, 1).float()
        monai_value = metrics.compute_hausdorff_distance(onehot, target_onehot, percentile=95).item()
    # MONAI interpolates the percentile in float32 (torch.quantile on float32 distances): ~1e-6 off.
    assert max_mode == pytest.approx(monai_value, rel=1e-5)


def test_single_voxel_masks():
    pred = torch.zeros(1, 7, 7, 7, dtype=torch.long)
    target = torch.zeros_like(pred)
    pred[0, 3, 3, 3] = 1
    target[0, 3, 3, 3] = 1
    assert hd95(pred, target, 2).item() == 0.0
    target[0, 3, 3, 3] = 0
    target[0, 3, 5, 6] = 1
    assert hausdorff_distance(pred, target, 2, spacing=(1.0, 2.0, 3.0)).item() == pytest.approx(
        math.hypot(4, 9)
    )
    spacing = (1.0, 2.0, 3.0)
    assert surface_dice(pred, target, 2, tolerance=9.0, spacing=spacing).item() == 0.0
    assert surface_dice(pred, target, 2, tolerance=math.hypot(4, 9), spacing=spacing).item() == 1.0


def test_masks_touching_the_border(to_one_hot):
    """The outside of the image is background: a full-width mask has its border rows as surface."""
    binary, metrics = medpy_binary(), monai_metrics()
    target = torch.zeros(1, 12, 10, dtype=torch.long)
    target[0, :, :4] = 1  # touches three image borders
    pred = torch.zeros_like(target)
    pred[0, :7, :6] = 1
    expected = binary.hd95(pred[0].numpy() == 1, target[0].numpy() == 1)
    assert hd95(pred, target, 2).item() == pytest.approx(expected)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monai_assd = metrics.compute_average_surface_distance(
            to_one_hot(pred, 2), to_one_hot(target, 2), symmetric=True
        )
    assert assd(pred, target, 2).item() == pytest.approx(monai_assd.item(), rel=1e-6)
    full = torch.ones(1, 5, 5, dtype=torch.long)
    assert hausdorff_distance(full, full, 2).item() == 0.0


def _empty_batch():
    """Images: 0 pred empty, 1 target empty, 2 both empty, 3 both present; shape (4, 6, 8)."""
    pred = torch.zeros(4, 6, 8, dtype=torch.long)
    target = torch.zeros_like(pred)
    target[0, 1:3, 1:3] = 1
    pred[1, 2:4, 2:4] = 1
    pred[3, 1:4, 1:4] = 1
    target[3, 1:4, 2:5] = 1
    return pred, target


def test_empty_masks_strict():
    pred, target = _empty_batch()
    values = hd95(pred, target, 2)[:, 0]
    assert math.isnan(values[0]) and math.isnan(values[1])
    assert values[2] == 0.0 and values[3] > 0
    diagonal = math.hypot(6, 8)
    assert hd95(pred, target, 2, empty_hd="diag")[:2, 0].tolist() == [diagonal, diagonal]
    spaced = hd95(pred, target, 2, empty_hd="diag", spacing=(2.0, 0.5))[0, 0].item()
    assert spaced == pytest.approx(math.hypot(12, 4))
    assert assd(pred, target, 2)[:3, 0].isnan().tolist() == [True, True, False]
    assert surface_dice(pred, target, 2, tolerance=1.0)[:3, 0].tolist() == [0.0, 0.0, 1.0]
    # A function's mean does not hide the undefined images (neither skipped nor counted as 0): NaN.
    assert math.isnan(hd95(pred, target, 2, average="macro").item())
    assert math.isnan(hd95(pred, target, 2, average="class")[0].item())
    assert hd95(pred[2:], target[2:], 2, average="macro").item() == pytest.approx(values[2:].mean().item())
    assert hd95(pred, target, 2, average="macro", empty_hd="diag").item() == pytest.approx(
        (2 * diagonal + values[2:].sum().item()) / 4
    )


def test_empty_masks_transunet_compat():
    pred, target = _empty_batch()
    values = hd95(pred, target, 2, empty="transunet_compat")[:, 0]
    assert values[:3].tolist() == [0.0, 0.0, 0.0]
    assert values[3] == hd95(pred, target, 2)[3, 0]
    nsd = surface_dice(pred, target, 2, tolerance=1.0, empty="transunet_compat")[:3, 0]
    assert nsd.tolist() == [0.0, 1.0, 0.0]


def test_empty_masks_differ_from_monai(to_one_hot):
    """MONAI 1.6 with one empty mask: HD and ASSD inf, HD95 NaN (a quantile of infinities), NSD 0;
    with both empty: NaN everywhere. Ours (strict): one empty -> NaN (excluded and counted) and NSD 0;
    both empty -> 0 and NSD 1; images with both masks present agree."""
    metrics = monai_metrics()
    pred, target = _empty_batch()
    p1h, t1h = to_one_hot(pred, 2), to_one_hot(target, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monai_hd = metrics.compute_hausdorff_distance(p1h, t1h)[:, 0]
        monai_hd95 = metrics.compute_hausdorff_distance(p1h, t1h, percentile=95)[:, 0]
        monai_nsd = metrics.compute_surface_dice(p1h, t1h, class_thresholds=[1.0])[:, 0]
    assert torch.isinf(monai_hd[:2]).all() and torch.isnan(monai_hd[2])
    assert torch.isnan(monai_hd95[:3]).all()
    assert monai_nsd[:2].tolist() == [0.0, 0.0] and torch.isnan(monai_nsd[2])
    ours_hd = hausdorff_distance(pred, target, 2)[:, 0]
    assert torch.isnan(ours_hd[:2]).all() and ours_hd[2] == 0.0
    assert ours_hd[3].item() == pytest.approx(monai_hd[3].item(), rel=1e-6)
    assert surface_dice(pred, target, 2, tolerance=1.0)[:3, 0].tolist() == [0.0, 0.0, 1.0]


def test_percentile_and_averaging(make_pair):
    pred, target = make_pair((30, 26), num_classes=4, batch=3, seed=41)
    per_unit = hausdorff_distance(pred, target, 4, percentile=100)
    torch.testing.assert_close(per_unit, hausdorff_distance(pred, target, 4))
    assert per_unit.shape == (3, 3)
    assert hausdorff_distance(pred, target, 4, include_background=True).shape == (3, 4)
    torch.testing.assert_close(hd95(pred, target, 4, average="class"), hd95(pred, target, 4).mean(0), equal_nan=True)
    torch.testing.assert_close(hd95(pred, target, 4, average="macro"), hd95(pred, target, 4).mean(), equal_nan=True)
    # per-image spacing table equals one call per image
    table = [(1.0, 2.0), (0.5, 0.5), (3.0, 1.0)]
    batched = assd(pred, target, 4, spacing=table)
    single = torch.cat([assd(pred[i : i + 1], target[i : i + 1], 4, spacing=table[i]) for i in range(3)])
    torch.testing.assert_close(batched, single, equal_nan=True)


def test_assd_mean_mode_is_mean_of_directed_averages():
    binary = medpy_binary()
    pred, target = blob_pair((30, 30), seed=2)
    p, t = torch.from_numpy(pred).long()[None], torch.from_numpy(target).long()[None]
    expected = (binary.asd(pred, target) + binary.asd(target, pred)) / 2
    assert assd(p, t, 2, assd_mode="mean").item() == pytest.approx(expected)


def test_nsd_per_class_tolerance(make_pair):
    pred, target = make_pair((24, 24), num_classes=3, batch=2, seed=51)
    per_class = surface_dice(pred, target, 3, tolerance=[0.0, 0.0, 5.0])
    first = surface_dice(pred, target, 3, tolerance=0.0)[:, 0]
    second = surface_dice(pred, target, 3, tolerance=5.0)[:, 1]
    torch.testing.assert_close(per_class, torch.stack([first, second], dim=1), equal_nan=True)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (
            lambda p, t: hd95(p, t, 2, spacing=(1.0, -1.0)),
            ValueError,
            "Expected `spacing` to be finite and positive",
        ),
        (
            lambda p, t: hd95(p, t, 2, spacing=(1.0, 1.0, 1.0)),
            ValueError,
            "Expected `spacing` to be None, a positive",
        ),
        (lambda p, t: hd95(p, t, 2, spacing="1mm"), TypeError, "Expected `spacing`"),
        (lambda p, t: hd95(p, t, 2, hd95_mode="mean"), ValueError, "Expected `hd95_mode` to be one of"),
        (lambda p, t: assd(p, t, 2, assd_mode="max"), ValueError, "Expected `assd_mode` to be one of"),
        (lambda p, t: hausdorff_distance(p, t, 2, percentile=101), ValueError, "Expected `percentile`"),
        (lambda p, t: hd95(p, t, 2, average="micro"), ValueError, "Expected `average` to be one of"),
        (lambda p, t: hd95(p, t, 2, empty_hd="inf"), ValueError, "Expected `empty_hd` to be one of"),
        (lambda p, t: surface_dice(p, t, 2, tolerance=-1.0), ValueError, "Expected `tolerance`"),
        (lambda p, t: surface_dice(p, t, 2, tolerance=[1.0]), ValueError, "Expected `tolerance`"),
        (lambda p, t: hd95(p.double(), t, 2), TypeError, "Expected `pred` to be an integer label map"),
        (lambda p, t: hd95(p, t[:, :2], 2), ValueError, "Expected `target` to be of the same shape"),
        (lambda p, t: surface_distances(p[0], t[0] * 0), ValueError, "non-empty masks"),
        (
            lambda p, t: surface_values(p, t, 2, {"nsd": SurfaceMetric("nsd", tolerance=(1.0,))}),
            ValueError,
            r"Expected `metrics\['nsd'\].tolerance` to be 2 values",
        ),
        (lambda p, t: surface_values(p, t, 2, {"x": "hd"}), TypeError, r"Expected `metrics\['x'\]`"),
    ],
)
def test_bad_input_names_the_argument(call, error, message):
    pred = torch.zeros(1, 4, 4, dtype=torch.long)
    pred[0, 1:3, 1:3] = 1
    with pytest.raises(error, match=message):
        call(pred, pred.clone())


def test_threads_give_the_same_numbers(make_pair, monkeypatch):
    """Several pairs go to a thread pool, and the two directions of a large pair to two threads."""
    monkeypatch.setattr(kernel, "PARALLEL_DIRECTIONS_MIN", 0)
    pred, target = make_pair((18, 16, 12), num_classes=3, batch=2, seed=61)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = assd(pred, target, 3), hd95(pred[:1], target[:1], 3)
        torch.set_num_threads(2)
        threaded = assd(pred, target, 3), hd95(pred[:1], target[:1], 3)
    finally:
        torch.set_num_threads(previous)
    for expected, got in zip(single, threaded, strict=True):
        torch.testing.assert_close(got, expected, equal_nan=True)


@settings(max_examples=25, deadline=None)
@given(
    shape=st.sampled_from([(9, 13), (17, 6), (7, 8, 9), (5, 11, 4)]),
    spacing_values=st.lists(st.sampled_from([0.1, 0.3, 1.0, 1.7, 3.0]), min_size=3, max_size=3),
    seed=st.integers(0, 10_000),
    density=st.floats(0.05, 0.6),
)
def test_random_masks_and_awkward_spacings_are_exact(shape, spacing_values, seed, density):
    rng = np.random.default_rng(seed)
    pred, target = rng.random(shape) < density, rng.random(shape) < density
    if not (pred.any() and target.any()):
        return
    spacing = tuple(spacing_values[: len(shape)])
    forward, backward = surface_distances(torch.from_numpy(pred), torch.from_numpy(target), spacing=spacing)
    expected_forward, expected_backward = reference_distances(pred, target, spacing)
    np.testing.assert_allclose(np.sort(forward.numpy()), expected_forward, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.sort(backward.numpy()), expected_backward, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- HD / HD95 from order statistics

ORDER_STATISTICS = [
    (("max", 95.0),),  # hd95_mode="max"
    (("pooled", 95.0),),  # the default HD95
    (("pooled", 100.0),),  # HD
    (("directed", 95.0),),
    (("pooled", 50.0), ("directed", 5.0), ("max", 30.0)),
]


def order_statistic(distances, scope, q):
    forward, backward = distances
    if scope == "pooled":
        return np.percentile(np.concatenate([forward, backward]), q)
    if scope == "max":
        return max(np.percentile(forward, q), np.percentile(backward, q))
    return np.percentile(forward, q), np.percentile(backward, q)


def unrelated_blobs(shape, seed):
    """Two independent blob masks: most surface voxels lie far from the other surface."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape)
    masks = []
    for _ in range(2):
        mask = np.zeros(shape, bool)
        for _ in range(2):
            centre = np.array([rng.uniform(0.2 * s, 0.8 * s) for s in shape]).reshape(-1, *([1] * len(shape)))
            mask |= ((grid - centre) ** 2).sum(0) < rng.uniform(0.15, 0.3) ** 2 * min(shape) ** 2
        masks.append(mask)
    return masks


@pytest.mark.parametrize("shape", [(48, 40), (26, 22, 18)])
@pytest.mark.parametrize("spacing_index", [0, 1])
@pytest.mark.parametrize("strategy", ["default", "kd_tree", "bounds_everywhere"])
def test_order_statistics_equal_the_full_computation(shape, spacing_index, strategy, monkeypatch):
    """Only the ranks HD and HD95 read are exact: np.percentile and max give the full computation's
    numbers to the bit, and every other entry is a lower bound of its true distance."""
    if strategy in ("kd_tree", "bounds_everywhere"):
        monkeypatch.setattr(kernel, "BRUTE_FORCE_PAIRS", 0)
    if strategy == "bounds_everywhere":  # give up the shell search at once, even on good predictions
        monkeypatch.setattr(kernel, "SELECTIVE_SHELL_LOOKUPS", 0)
        monkeypatch.setattr(kernel, "SELECTIVE_GIVE_UP", 0.0)
    spacing = np.asarray(SPACINGS[len(shape)][spacing_index] or (1.0,) * len(shape))
    pairs = [unrelated_blobs(shape, seed) for seed in range(3)] + [blob_pair(shape, seed) for seed in range(2)]
    for pred, target in pairs:
        full = kernel.surface_distances_numpy(pred, target, spacing)
        for statistics in ORDER_STATISTICS:
            partial = kernel.surface_distances_numpy(pred, target, spacing, order_statistics=statistics)
            for exact, bounded in zip(full, partial, strict=True):
                assert bounded.shape == exact.shape and (bounded <= exact).all()
            for scope, q in statistics:
                assert order_statistic(partial, scope, q) == order_statistic(full, scope, q)


def test_order_statistics_skip_most_exact_distances_on_poor_predictions(monkeypatch):
    """The point of the mode: on unrelated blobs most entries stay bounds, yet HD95 is exact."""
    monkeypatch.setattr(kernel, "BRUTE_FORCE_PAIRS", 0)
    pred, target = unrelated_blobs((40, 36, 30), seed=5)
    spacing = np.ones(3)
    full = kernel.surface_distances_numpy(pred, target, spacing)
    partial = kernel.surface_distances_numpy(pred, target, spacing, order_statistics=(("max", 95.0),))
    exact_entries = sum(int((p == f).sum()) for p, f in zip(partial, full, strict=True))
    assert exact_entries < 0.5 * sum(len(f) for f in full)
    assert order_statistic(partial, "max", 95) == order_statistic(full, "max", 95)


@pytest.mark.parametrize("hd95_mode", ["pooled", "max"])
def test_hd_and_hd95_of_unrelated_blobs_match_medpy_and_monai(hd95_mode, to_one_hot, monkeypatch):
    """The functional metrics take the order-statistics path; their values stay the references'."""
    monkeypatch.setattr(kernel, "BRUTE_FORCE_PAIRS", 0)
    shape = (30, 26, 22)
    labels = [np.zeros(shape, np.int64), np.zeros(shape, np.int64)]
    for c, seed in ((1, 11), (2, 12)):
        for labels_of, mask in zip(labels, unrelated_blobs(shape, seed), strict=True):
            labels_of[mask] = c
    pred, target = (torch.from_numpy(x)[None] for x in labels)
    got = hd95(pred, target, 3, hd95_mode=hd95_mode)
    got_hd = hausdorff_distance(pred, target, 3)
    if hd95_mode == "pooled":
        binary = medpy_binary()
        for c in (1, 2):
            p, t = labels[0] == c, labels[1] == c
            assert got[0, c - 1].item() == pytest.approx(binary.hd95(p, t), rel=1e-12)
            assert got_hd[0, c - 1].item() == pytest.approx(binary.hd(p, t), rel=1e-12)
    else:
        metrics = monai_metrics()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = metrics.compute_hausdorff_distance(to_one_hot(pred, 3), to_one_hot(target, 3), percentile=95)
        torch.testing.assert_close(got.float(), expected.float())
