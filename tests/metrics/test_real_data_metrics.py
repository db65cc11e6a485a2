"""Metrics on a real ACDC cardiac MRI label volume against medpy.

The "prediction" perturbs the real label map the way a network errs: one class eroded, one
shifted, one dilated into its neighbours. The h5 files carry no spacing; ACDC's typical
(10, 1.5625, 1.5625) mm is used for the anisotropic case. Skips cleanly without the data or h5py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from seglosses.metrics import SegmentationMetrics, assd, dice_score, hd95

h5py = pytest.importorskip("h5py", reason="h5py is needed to read the ACDC volumes")

VOLUME = "patient001_frame01.h5"
ACDC_SPACING = (10.0, 1.5625, 1.5625)


@pytest.fixture
def acdc_labels(data_dir) -> np.ndarray:
    path = data_dir / "acdc" / "data" / VOLUME
    if not path.is_file():
        pytest.skip(f"ACDC volume not found at {path}")
    with h5py.File(path, "r") as handle:
        return handle["label"][()].astype(np.int64)


def perturb(labels: np.ndarray) -> np.ndarray:
    pred = labels.copy()
    right_ventricle = ndimage.binary_erosion(labels == 1, iterations=2)
    pred[(labels == 1) & ~right_ventricle] = 0
    pred[pred == 2] = 0
    pred[np.roll(labels == 2, shift=(1, 3), axis=(1, 2))] = 2
    pred[ndimage.binary_dilation(labels == 3, iterations=2) & (pred == 0)] = 3
    return pred


@pytest.mark.parametrize("spacing", [None, ACDC_SPACING])
def test_acdc_volume_matches_medpy(acdc_labels, spacing):
    binary = pytest.importorskip("medpy.metric.binary")
    pred_np = perturb(acdc_labels)
    pred, target = torch.from_numpy(pred_np)[None], torch.from_numpy(acdc_labels)[None]
    ours_dice = dice_score(pred, target, 4)[0]
    ours_hd95 = hd95(pred, target, 4, spacing=spacing)[0]
    ours_assd = assd(pred, target, 4, spacing=spacing)[0]
    for c in (1, 2, 3):
        p, t = pred_np == c, acdc_labels == c
        assert ours_dice[c - 1].item() == pytest.approx(binary.dc(p, t), rel=1e-12)
        assert ours_hd95[c - 1].item() == pytest.approx(binary.hd95(p, t, voxelspacing=spacing), rel=1e-12)
        assert ours_assd[c - 1].item() == pytest.approx(binary.assd(p, t, voxelspacing=spacing), rel=1e-12)
    assert (ours_dice < 1).all() and (ours_hd95 > 0).all()


def test_acdc_slices_stacked_into_the_volume(acdc_labels):
    """Slice-by-slice predictions of a 2D model, scored per volume (the ACDC protocol)."""
    pred = torch.from_numpy(perturb(acdc_labels))
    target = torch.from_numpy(acdc_labels)
    metrics = SegmentationMetrics(4, metrics=("dice", "hd95"), unit="volume")
    depth = target.shape[0]
    for z in reversed(range(depth)):  # out of order on purpose
        metrics.update(
            pred[z : z + 1],
            target[z : z + 1],
            case_ids=["patient001_frame01"],
            slice_indices=[z],
            spacing=ACDC_SPACING,
        )
    result = metrics.compute()
    torch.testing.assert_close(result["dice/unit"][0], dice_score(pred[None], target[None], 4)[0])
    torch.testing.assert_close(
        result["hd95/unit"][0], hd95(pred[None], target[None], 4, spacing=ACDC_SPACING)[0]
    )
