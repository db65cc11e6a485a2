"""Annotation-noise simulator: configuration, determinism, each operation, measured amounts."""

from __future__ import annotations

import numpy as np
import pytest

from seglosses.lab.noise import NOISE_LEVELS, NoiseConfig, dice_agreement, equivalent_radius, simulate_noise


def _disc(size=96, radius=30, centre=None):
    centre = centre or (size / 2, size / 2)
    rows, cols = np.indices((size, size))
    return (((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) <= radius**2).astype(np.int64)


def test_config_levels_and_overrides():
    assert set(NOISE_LEVELS) == {"none", "mild", "moderate", "severe"}
    assert not NoiseConfig().enabled and NoiseConfig("mild").enabled
    assert NoiseConfig("none", morph_radius=0.1).enabled
    assert NoiseConfig("severe", omit_probability=0.0).parameters()["omit_probability"] == 0.0
    with pytest.raises(ValueError, match=r"`noise.level`.*did you mean 'severe'"):
        NoiseConfig("sever")
    with pytest.raises(ValueError, match="`noise.omit_probability`"):
        NoiseConfig(omit_probability=1.5)
    with pytest.raises(ValueError, match="`noise.seed`"):
        NoiseConfig(seed=-1)


def test_noise_is_deterministic_per_seed_and_index():
    clean = _disc()
    first, ops_first = simulate_noise(clean, 2, NoiseConfig("moderate", seed=5), index=7)
    again, ops_again = simulate_noise(clean, 2, NoiseConfig("moderate", seed=5), index=7)
    assert np.array_equal(first, again) and ops_first == ops_again
    other_seed, _ = simulate_noise(clean, 2, NoiseConfig("moderate", seed=6), index=7)
    other_index, _ = simulate_noise(clean, 2, NoiseConfig("moderate", seed=5), index=8)
    assert not np.array_equal(first, other_seed) and not np.array_equal(first, other_index)
    assert np.array_equal(clean, _disc())  # the clean mask is never modified
    none, ops_none = simulate_noise(clean, 2, NoiseConfig("none"), index=7)
    assert np.array_equal(none, clean) and ops_none == []
    assert dice_agreement(none, clean, 2) == 1.0


def _only(**overrides):
    """A config with every operation off except ``overrides``."""
    return NoiseConfig("none", **overrides)


def test_omission_wipes_one_whole_structure():
    clean = np.zeros((40, 40), np.int64)
    clean[5:15, 5:15], clean[20:30, 20:30], clean[5:10, 25:35] = 1, 2, 3
    noisy, operations = simulate_noise(clean, 4, _only(omit_probability=1.0), index=0)
    (omitted,) = [label for label in (1, 2, 3) if not (noisy == label).any()]
    assert operations == [f"omit(class={omitted})"]
    assert np.array_equal(noisy, np.where(clean == omitted, 0, clean))
    binary, _ = simulate_noise((clean > 0).astype(np.int64), 2, _only(omit_probability=1.0), index=0)
    assert not binary.any()


def test_label_swap_exchanges_two_present_classes():
    clean = np.zeros((40, 40), np.int64)
    clean[5:15, 5:15], clean[20:30, 20:30] = 1, 3
    noisy, operations = simulate_noise(clean, 4, _only(swap_probability=1.0), index=0)
    assert operations == ["swap(1<->3)"] or operations == ["swap(3<->1)"]
    assert np.array_equal(noisy, np.select([clean == 1, clean == 3], [3, 1], 0))
    binary, operations = simulate_noise((clean > 0).astype(np.int64), 2, _only(swap_probability=1.0), index=0)
    assert operations == []  # one structure: nothing to swap


def test_dropping_keeps_the_largest_component():
    clean = _disc(radius=20)
    clean[2:6, 2:6] = 1
    clean[90:93, 90:93] = 1
    noisy, operations = simulate_noise(clean, 2, _only(drop_probability=1.0), index=0)
    assert np.array_equal(noisy, _disc(radius=20)) and operations == ["drop(1:16px,1:9px)"]


def test_warp_moves_the_boundary_at_most_its_amplitude():
    from scipy import ndimage

    clean = _disc(size=128, radius=40)
    noisy, operations = simulate_noise(clean, 2, _only(warp_amplitude=0.1, warp_smoothness=0.3), index=3)
    assert operations == ["warp(max=4.0px)"]
    changed = noisy != clean
    assert changed.any()
    # every changed pixel lies within the largest displacement (0.1 * r_eq = 4 px) of the clean boundary
    boundary = clean.astype(bool) ^ ndimage.binary_erosion(clean.astype(bool))
    distance = ndimage.distance_transform_edt(~boundary)
    assert distance[changed].max() <= 4.0 + 1.5
    assert 0.93 < dice_agreement(noisy, clean, 2) < 0.995


def test_polygon_simplification_straightens_the_outline():
    clean = _disc(size=128, radius=40)
    fine, _ = simulate_noise(clean, 2, _only(simplify_tolerance=0.005), index=0)
    assert dice_agreement(fine, clean, 2) > 0.99  # a tight tolerance redraws the disc almost exactly
    coarse, operations = simulate_noise(clean, 2, _only(simplify_tolerance=0.15), index=0)
    assert operations == ["simplify(tol=6.0px)"]
    # chords of a convex outline lie inside it (up to pixels whose centres sit on a chord)
    assert np.count_nonzero(coarse > clean) <= 10 < np.count_nonzero(coarse < clean)
    assert 0.85 < dice_agreement(coarse, clean, 2) < dice_agreement(fine, clean, 2)


def test_simplification_keeps_holes_and_enclosed_classes():
    clean = _disc(size=96, radius=40) * 2  # a ring of class 2 around a disc of class 1
    clean[_disc(size=96, radius=20).astype(bool)] = 1
    noisy, _ = simulate_noise(clean, 3, _only(simplify_tolerance=0.02), index=0)
    assert noisy[48, 48] == 1 and noisy[48, 48 + 30] == 2 and noisy[0, 0] == 0
    assert dice_agreement(noisy, clean, 3) > 0.95


def test_dilation_or_erosion_by_a_bounded_radius():
    clean = _disc(size=128, radius=40)
    grown = shrunk = 0
    for index in range(12):
        noisy, operations = simulate_noise(clean, 2, _only(morph_radius=0.1), index=index)
        if not operations:
            continue
        (operation,) = operations
        radius = float(operation.split("r=")[1].rstrip("px)"))
        assert radius <= 4.0 + 1e-9
        change = equivalent_radius(noisy > 0) - equivalent_radius(clean > 0)
        assert abs(abs(change) - radius) < 0.75  # the disc's radius moves by the drawn radius
        assert (change > 0) == ("dilate" in operation)
        grown += change > 0
        shrunk += change < 0
    assert grown and shrunk


def test_three_dimensional_masks():
    rows, cols, depth = np.indices((32, 32, 16))
    clean = (((rows - 16) ** 2 + (cols - 16) ** 2 + 4 * (depth - 8) ** 2) <= 12**2).astype(np.int64)
    noisy, operations = simulate_noise(clean, 2, NoiseConfig("moderate", omit_probability=0.0), index=1)
    assert noisy.shape == clean.shape and operations
    assert 0.6 < dice_agreement(noisy, clean, 2) < 1.0


def test_measured_levels_on_hc18_masks(data_dir):
    """A handful of real masks: the levels are ordered and near the documented means (docs/runner.md)."""
    from seglosses.lab.data import DataConfig, build_splits

    splits = build_splits(DataConfig("hc18", root=str(data_dir / "hc18"), image_size=(128, 128), max_train=12))
    masks = [splits.train.clean_arrays(index)[1] for index in range(len(splits.train))]
    means = {}
    for level in ("mild", "moderate", "severe"):
        scores = [dice_agreement(simulate_noise(mask, 2, NoiseConfig(level), index)[0], mask, 2)
                  for index, mask in enumerate(masks)]
        means[level] = np.mean(scores)
    boundary_only = np.mean([dice_agreement(simulate_noise(mask, 2, NoiseConfig("severe", omit_probability=0.0),
                                                           index)[0], mask, 2) for index, mask in enumerate(masks)])
    assert 0.95 < means["mild"] < 0.995
    assert 0.80 < means["moderate"] < 0.93
    assert means["severe"] < means["moderate"] - 0.05
    assert 0.8 < boundary_only < 0.92  # the boundary errors alone, without whole-structure omissions
