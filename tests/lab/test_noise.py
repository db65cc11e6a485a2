"""Annotation-noise simulator: configuration, determinism, each operation, measured amounts."""

from __future__ import annotations

import numpy as np
import pytest

from seglosses.lab.noise import NOISE_LEVELS, NoiseConfig, dice_agreement, simulate_noise


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
