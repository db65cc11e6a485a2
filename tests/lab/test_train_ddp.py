"""DDP through torchrun: two CPU processes (gloo), each with half of every global batch, train the
same model as one process on the same global batches, the envelope keeping one global ledger."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from seglosses.lab.config import config_from_dict
from seglosses.lab.train import load_checkpoint, train
from tests.lab.synthetic import disc_splits

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is unavailable"
)
SCRIPT = Path(__file__).with_name("ddp_run.py")


def tiny_config(out_dir: Path, envelope) -> dict:
    return {"model": {"options": {"features": [4, 4, 8, 8, 16, 4]}},
            "optim": {"name": "sgd", "lr": 0.05, "schedule": "poly"},
            "envelope": envelope,
            "train": {"epochs": 3, "batch_size": 4, "device": "cpu", "progress": False, "out_dir": str(out_dir)}}


def launch_two_processes(config: dict) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
               str(SCRIPT), json.dumps(config)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def read_csv(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_two_processes_train_like_one_on_the_same_global_batches(tmp_path):
    envelope = {"preset": "atk_sm_bsigma", "options": {"top_fraction": 0.5}}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(config_from_dict(tiny_config(tmp_path / "one", envelope)), splits=disc_splits())
    finally:
        torch.set_num_threads(threads)
    launch_two_processes(tiny_config(tmp_path / "two", envelope))
    one, two = load_checkpoint(tmp_path / "one" / "last.pt"), load_checkpoint(tmp_path / "two" / "last.pt")
    assert one["epochs_completed"] == two["epochs_completed"] == 3
    for key, value in one["model"].items():  # equal up to the order of float sums (gradient all-reduce)
        torch.testing.assert_close(two["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    # The ledger is global: every image's latest loss, as in one process.
    torch.testing.assert_close(two["criterion"]["ledger"], one["criterion"]["ledger"], rtol=1e-4, atol=1e-6)
    assert torch.isfinite(one["criterion"]["ledger"]).all()
    log_one, log_two = read_csv(tmp_path / "one" / "log.csv"), read_csv(tmp_path / "two" / "log.csv")
    for row_one, row_two in zip(log_one, log_two, strict=True):
        for column in ("train_loss", "train_loss_unscaled", "val_dice"):
            assert float(row_two[column]) == pytest.approx(float(row_one[column]), rel=1e-4), column
    assert float(log_one[-1]["env_n_over_k"]) == pytest.approx(2.0)
    # Test metrics are gathered from both processes: the same units and values.
    units_one = sorted((row["case_id"], row["dice"]) for row in read_csv(tmp_path / "one" / "per_image.csv"))
    units_two = sorted((row["case_id"], row["dice"]) for row in read_csv(tmp_path / "two" / "per_image.csv"))
    assert [u[0] for u in units_one] == [u[0] for u in units_two] and len(units_one) == 4
    for (_, dice_one), (_, dice_two) in zip(units_one, units_two, strict=True):
        assert float(dice_two) == pytest.approx(float(dice_one), rel=1e-3)
