"""Generators shared by the metrics tests: random smooth blobs as label maps, one-hot for MONAI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage


def random_labels(shape: tuple[int, ...], num_classes: int, seed: int, smooth: float = 2.0) -> np.ndarray:
    """A label map of smooth random regions: argmax over smoothed noise, some classes may be absent."""
    rng = np.random.default_rng(seed)
    fields = [ndimage.gaussian_filter(rng.standard_normal(shape), smooth) for _ in range(num_classes)]
    # Favour the background so that foreground classes form separate blobs.
    fields[0] = fields[0] + 0.05
    return np.argmax(np.stack(fields), axis=0).astype(np.int64)


def perturbed(labels: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """A plausible prediction: the labels shifted by one voxel with some classes relabelled in noisy areas."""
    rng = np.random.default_rng(seed)
    shifted = np.roll(labels, shift=tuple(rng.integers(-1, 2, labels.ndim)), axis=tuple(range(labels.ndim)))
    noise = ndimage.gaussian_filter(rng.standard_normal(labels.shape), 1.5) > 0.35
    relabelled = rng.integers(0, num_classes, labels.shape)
    return np.where(noise, relabelled, shifted).astype(np.int64)


@pytest.fixture
def make_pair():
    """(pred, target) int64 tensors of shape (batch, *shape)."""

    def make(shape: tuple[int, ...], num_classes: int, batch: int = 2, seed: int = 0):
        targets = [random_labels(shape, num_classes, seed + 100 * b) for b in range(batch)]
        preds = [perturbed(t, num_classes, seed + 100 * b + 1) for b, t in enumerate(targets)]
        return torch.from_numpy(np.stack(preds)), torch.from_numpy(np.stack(targets))

    return make


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, *S) labels -> (B, C, *S) float one-hot, the input MONAI metrics expect."""
    return F.one_hot(labels.long(), num_classes).movedim(-1, 1).float()


@pytest.fixture
def to_one_hot():
    return one_hot
