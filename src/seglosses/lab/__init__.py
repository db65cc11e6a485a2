"""seglosses.lab: the runner (datasets, annotation noise, models, training). Needs the ``lab`` extra."""

from seglosses.lab.config import RunConfig, apply_overrides, load_config, save_config
from seglosses.lab.data import DATASET_NAMES, DataConfig, DataSplits, SegmentationDataset, build_splits
from seglosses.lab.noise import NOISE_LEVELS, NoiseConfig
from seglosses.lab.train import LoadedRun, RunResult, evaluate, load_run, predict, train

__all__ = [
    "DATASET_NAMES",
    "DataConfig",
    "DataSplits",
    "NOISE_LEVELS",
    "NoiseConfig",
    "SegmentationDataset",
    "LoadedRun",
    "RunConfig",
    "RunResult",
    "apply_overrides",
    "build_splits",
    "evaluate",
    "load_config",
    "load_run",
    "predict",
    "save_config",
    "train",
]
