"""Measure how much each annotation-noise level changes the HC18 masks: mean Dice(noisy, clean).

Every one of the 999 HC18 masks (all splits) is resized to ``--size`` (nearest neighbour, as the
runner does), then corrupted by ``seglosses.lab.noise.simulate_noise`` at each named level with
noise seed ``--seed``, sample index = the image's position in name order. Reports per level the mean,
standard deviation, quartiles and minimum of Dice(noisy, clean) over the foreground, and how often
each operation fired. Also measures each operation alone at the ``moderate`` level's value.

Usage::

    python benchmarks/noise_levels.py                 # 256x256, seed 0, all 999 images
    python benchmarks/noise_levels.py --size 128 128 --limit 100

Writes ``benchmarks/results/noise_levels.json`` (self-describing: versions, machine, command, settings,
numbers) and ``benchmarks/results/noise_levels.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import scipy
import skimage

import seglosses
from seglosses.lab.data import DataConfig, build_splits
from seglosses.lab.noise import NOISE_LEVELS, NOISE_PARAMETERS, NoiseConfig, dice_agreement, simulate_noise

RESULTS = Path(__file__).resolve().parent / "results"


def hc18_masks(size: tuple[int, int], limit: int | None) -> list[tuple[str, np.ndarray]]:
    """All HC18 masks (every split) in name order, resized to ``size``."""
    splits = build_splits(DataConfig("hc18", image_size=size))
    datasets = (splits.train, splits.val, splits.test)
    pairs = sorted(((ref.name, dataset, index) for dataset in datasets for index, ref in enumerate(dataset.refs)),
                   key=lambda item: item[0])
    if limit is not None:
        pairs = pairs[:limit]
    return [(name, dataset.clean_arrays(index)[1]) for name, dataset, index in pairs]


def measure(masks: list[tuple[str, np.ndarray]], config: NoiseConfig) -> dict:
    scores, fired, started = [], Counter(), time.perf_counter()
    for index, (_, clean) in enumerate(masks):
        noisy, operations = simulate_noise(clean, 2, config, index)
        scores.append(dice_agreement(noisy, clean, 2))
        fired.update({operation.split("(")[0] for operation in operations})
    scores = np.asarray(scores)
    return {
        "mean": float(scores.mean()), "std": float(scores.std()), "min": float(scores.min()),
        "q25": float(np.quantile(scores, 0.25)), "median": float(np.median(scores)),
        "q75": float(np.quantile(scores, 0.75)),
        "fraction_of_images_by_operation": {name: count / len(masks) for name, count in sorted(fired.items())},
        "ms_per_image": 1000 * (time.perf_counter() - started) / len(masks),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("H", "W"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (by name)")
    args = parser.parse_args()
    size = tuple(args.size)
    masks = hc18_masks(size, args.limit)
    levels = {level: measure(masks, NoiseConfig(level, seed=args.seed)) for level in NOISE_LEVELS}
    moderate = NOISE_LEVELS["moderate"]
    alone = {}
    for name in NOISE_PARAMETERS:
        if name == "warp_smoothness" or moderate[name] == 0:
            continue
        overrides = {other: 0.0 for other in NOISE_PARAMETERS if other not in (name, "warp_smoothness")}
        overrides[name] = moderate[name]
        alone[f"{name}={moderate[name]}"] = measure(masks, NoiseConfig("none", seed=args.seed, **overrides))
    record = {
        "benchmark": "noise_levels",
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {platform.platform()}",
        "versions": {"python": platform.python_version(), "seglosses": seglosses.__version__,
                     "numpy": np.__version__, "scipy": scipy.__version__, "scikit-image": skimage.__version__},
        "data": f"HC18, all splits, {len(masks)} masks resized to {size[0]}x{size[1]} (nearest), name order",
        "noise_seed": args.seed,
        "level_parameters": NOISE_LEVELS,
        "levels": levels,
        "moderate_operations_alone": alone,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "noise_levels.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "# Annotation-noise levels on HC18: Dice(noisy, clean)", "",
        f"Command: `{record['command']}`  ", f"Date: {record['date']}  ", f"Machine: {record['machine']}  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in record["versions"].items()) + "  ",
        f"Data: {record['data']}; noise seed {args.seed}; Dice over the foreground (1 when both are empty).", "",
        "| level | mean | std | min | 25% | median | 75% | images with omission | ms / image |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for level, row in levels.items():
        omitted = row["fraction_of_images_by_operation"].get("omit", 0.0)
        lines.append(f"| {level} | {row['mean']:.4f} | {row['std']:.4f} | {row['min']:.4f} | {row['q25']:.4f} | "
                     f"{row['median']:.4f} | {row['q75']:.4f} | {omitted:.1%} | {row['ms_per_image']:.1f} |")
    lines += ["", "Each operation alone at the `moderate` value (lengths relative to the head's equivalent radius):",
              "", "| operation | mean | std | min |", "|---|---|---|---|"]
    for name, row in alone.items():
        lines.append(f"| {name} | {row['mean']:.4f} | {row['std']:.4f} | {row['min']:.4f} |")
    lines += ["", "Level parameters:", "", "| level | " + " | ".join(NOISE_PARAMETERS) + " |",
              "|---|" + "---|" * len(NOISE_PARAMETERS)]
    for level, parameters in NOISE_LEVELS.items():
        lines.append(f"| {level} | " + " | ".join(f"{parameters[name]:g}" for name in NOISE_PARAMETERS) + " |")
    (RESULTS / "noise_levels.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
