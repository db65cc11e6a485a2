"""Run one tiny training with the config given as JSON in argv[1]; launched by tests/lab/test_train_ddp.py
under ``torchrun`` (DDP) and in a single process. Not a test module."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, for tests.lab.synthetic

from seglosses.lab.config import config_from_dict  # noqa: E402
from seglosses.lab.train import train  # noqa: E402
from tests.lab.synthetic import disc_splits  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)
    train(config_from_dict(json.loads(sys.argv[1])), splits=disc_splits())
