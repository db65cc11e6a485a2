"""A hand-written run folder with the files seglosses.lab.train writes, for report and CLI tests."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np


def write_fake_run(run_dir: Path, epochs: int = 6, num_images: int = 12, envelope: bool = True) -> Path:
    """log.csv, envelope/epoch_###.npz, per_image.csv and results.json of a made-up two-class run."""
    rng = np.random.default_rng(0)
    run_dir.mkdir(parents=True, exist_ok=True)
    columns = ["epoch", "lr", "train_loss", "train_loss_unscaled", "val_dice", "val_hd95", "time_s", "images_per_s"]
    if envelope:
        columns += ["env_k", "env_alpha", "env_n_over_k", "env_kept_fraction", "env_kept_fraction_background",
                    "env_kept_fraction_head"]
    with open(run_dir / "log.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        for epoch in range(1, epochs + 1):
            loss = 1.0 / epoch
            row = [epoch, 1e-3, loss * (1.3 if envelope else 1.0), loss, "" if epoch % 2 else 1 - loss / 2,
                   "" if epoch % 2 else 10 * loss, 1.5, 40.0]
            if envelope:
                k = num_images * max(1.0 - 0.2 * (epoch - 1), 0.1)
                row += [k, "inf" if epoch == 1 else 20.0 / epoch, num_images / k, 1 - 0.02 * epoch,
                        1 - 0.01 * epoch, 1 - 0.05 * epoch]
            writer.writerow(row)
    if envelope:
        (run_dir / "envelope").mkdir(exist_ok=True)
        for epoch in range(1, epochs + 1):
            ledger = rng.random(num_images)
            weights = 1 / (1 + np.exp(-(np.argsort(np.argsort(ledger)) - num_images / 2 + epoch)))
            np.savez(run_dir / "envelope" / f"epoch_{epoch:03d}.npz", ledger=ledger, weights=weights)
    with open(run_dir / "per_image.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["case_id", "index", "class", "dice", "iou", "hd95", "assd", "precision", "recall"])
        for index, dice in enumerate([0.91, 0.55, 0.78, 0.83]):
            writer.writerow([f"case{index}", index, "head", dice, dice / (2 - dice), 20 * (1 - dice), 5 * (1 - dice),
                             dice, dice])
    (run_dir / "results.json").write_text(json.dumps(
        {"test": {"dice": 0.7675, "hd95": 4.65, "per_class": {"dice": {"head": 0.7675}}},
         "train_time_s": 9.0, "best_epoch": epochs, "selected_model": "best"}))
    return run_dir
