"""Annotation audit: the precision and recall of the excluded pixels against a hand-made noisy mask."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seglosses.lab.audit import draw_audit_sheet, exclusion_hit_rates


def _hand_made():
    """A 6x6 square head; the noise dilates its right edge by one column (6 pixels change)."""
    clean = np.zeros((8, 8), dtype=np.int64)
    clean[1:7, 1:7] = 1
    noisy = clean.copy()
    noisy[1:7, 7] = 1  # the noise added a column: 6 changed pixels
    excluded = np.zeros((8, 8), dtype=bool)
    excluded[1:5, 7] = True  # 4 of the 6 changed pixels excluded ...
    excluded[0, 0] = True  # ... and one unchanged background pixel
    return excluded, noisy, clean


def test_hit_rates_on_a_hand_made_noisy_mask():
    excluded, noisy, clean = _hand_made()
    rates = exclusion_hit_rates(excluded, noisy, clean)
    assert (rates.hits, rates.excluded, rates.changed, rates.counted) == (4, 5, 6, 64)
    assert rates.precision == pytest.approx(4 / 5)
    assert rates.recall == pytest.approx(4 / 6)
    assert rates.chance_precision == pytest.approx(6 / 64)


def test_hit_rates_take_tensors_batches_and_a_valid_mask():
    excluded, noisy, clean = _hand_made()
    valid = np.ones((8, 8), dtype=bool)
    valid[0, :] = False  # the wrongly excluded pixel is not counted
    rates = exclusion_hit_rates(torch.from_numpy(excluded)[None], torch.from_numpy(noisy)[None],
                                torch.from_numpy(clean)[None], valid=valid[None])
    assert (rates.precision, rates.recall, rates.counted) == (1.0, pytest.approx(4 / 6), 56)


def test_hit_rates_are_nan_not_zero_when_undefined():
    clean = np.zeros((4, 4), dtype=np.int64)
    rates = exclusion_hit_rates(np.zeros((4, 4), dtype=bool), clean, clean)
    assert math.isnan(rates.precision) and math.isnan(rates.recall)
    assert (rates.excluded, rates.changed) == (0, 0)


def test_hit_rates_refuse_bad_input():
    excluded, noisy, clean = _hand_made()
    with pytest.raises(TypeError, match="Expected `excluded` to be a bool mask"):
        exclusion_hit_rates(excluded.astype(np.int64), noisy, clean)
    with pytest.raises(ValueError, match="Expected `clean_mask` to be of the shape"):
        exclusion_hit_rates(excluded, noisy, clean[:4])
    with pytest.raises(TypeError, match="Expected `noisy_mask` to be a numpy array or torch tensor"):
        exclusion_hit_rates(excluded, noisy.tolist(), clean)


def test_audit_sheet_is_a_png(tmp_path):
    excluded, noisy, clean = _hand_made()
    image = np.linspace(0, 1, 64).reshape(8, 8)
    cases = [{"image": image, "mask": noisy, "excluded": excluded, "clean_mask": clean, "label": "case a"},
             {"image": image, "mask": clean, "excluded": ~excluded & (clean > 0), "clean_mask": clean, "label": "b"}]
    path = draw_audit_sheet(cases, tmp_path / "audit.png", "test sheet")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
