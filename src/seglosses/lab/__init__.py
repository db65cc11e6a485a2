"""seglosses.lab: the runner (datasets, annotation noise, models, training). Needs the ``lab`` extra."""

from seglosses.lab.data import DATASET_NAMES, DataConfig, DataSplits, SegmentationDataset, build_splits
from seglosses.lab.noise import NOISE_LEVELS, NoiseConfig

__all__ = [
    "DATASET_NAMES",
    "DataConfig",
    "DataSplits",
    "NOISE_LEVELS",
    "NoiseConfig",
    "SegmentationDataset",
    "build_splits",
]
