"""Shared fixtures: the device (CPU here, CUDA when available) and the real-data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


def _devices() -> list[str]:
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


@pytest.fixture(params=_devices())
def device(request) -> torch.device:
    return torch.device(request.param)


def shared_data_dir() -> Path:
    """../shared/data beside the checkout, or $SEGLOSSES_DATA."""
    return Path(os.environ.get("SEGLOSSES_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture
def data_dir() -> Path:
    root = shared_data_dir()
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set SEGLOSSES_DATA to the shared/data folder)")
    return root
