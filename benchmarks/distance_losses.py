"""Forward + backward time of ``hausdorff_dt`` and ``boundary`` against MONAI's HausdorffDTLoss and
BoundaryLoss on CPU, at (8, 4, 256, 256) and (2, 3, 96, 96, 96).

Labels are unions of random balls per class; logits are 3 x one-hot plus unit Gaussian noise (a model
part-way through training). Methods, interleaved in one process after a warm-up, median of repeats:

- ``monai``: ``HausdorffDTLoss(softmax=True)`` / ``BoundaryLoss(softmax=True, include_background=False)``
  on one-hot float32 targets prepared outside the timed region;
- ``seglosses``: ``create_loss("hausdorff_dt")`` / ``create_loss("boundary")`` on int64 labels, maps
  recomputed every step (the same work as MONAI, SciPy's kernel);
- ``seglosses_cached``: the same with ``cache_target_maps=True`` in steady state (the targets' maps were
  computed on an earlier step; every later epoch over static targets): only the prediction's maps
  (Hausdorff-DT) or none (boundary) are computed per step.

Values are checked first: seglosses equals MONAI to 1e-5 (relative).

Usage::

    nice python benchmarks/distance_losses.py > benchmarks/results/distance_losses_cpu.log 2>&1

Writes ``benchmarks/results/distance_losses_cpu.json`` and ``.md`` (versions, machine, threads, load).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import monai
import numpy as np
import scipy
import torch
import torch.nn.functional as F
from monai.losses import BoundaryLoss as MonaiBoundaryLoss
from monai.losses import HausdorffDTLoss as MonaiHausdorffDTLoss
from speed import cpu_model, load_average

import seglosses
from seglosses import create_loss

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def blob_labels(batch: int, classes: int, shape: tuple[int, ...], rng: np.random.Generator) -> torch.Tensor:
    grid = np.indices(shape)
    labels = np.zeros((batch, *shape), dtype=np.int64)
    for image in range(batch):
        for label in range(1, classes):
            for _ in range(2):
                centre = np.array([rng.integers(0, s) for s in shape]).reshape(-1, *([1] * len(shape)))
                radius = rng.integers(min(shape) // 10, min(shape) // 4)
                labels[image][((grid - centre) ** 2).sum(0) < radius**2] = label
    return torch.from_numpy(labels)


def step_time(function, logits: torch.Tensor, target: torch.Tensor) -> float:
    start = time.perf_counter()
    value = function(logits, target)
    torch.autograd.grad(value, logits)
    return 1000.0 * (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--repeats-3d", type=int, default=3)
    parser.add_argument("--note", default="ratios are interleaved, so both libraries see the same machine load",
                        help="how the machine was shared during the run (written into the results)")
    args = parser.parse_args()
    load_before = load_average()
    rng = np.random.default_rng(0)
    shapes = {"(8, 4, 256, 256)": (8, 4, (256, 256), args.repeats),
              "(2, 3, 96, 96, 96)": (2, 3, (96, 96, 96), args.repeats_3d)}
    peers = {
        "hausdorff_dt": lambda: MonaiHausdorffDTLoss(softmax=True),
        "boundary": lambda: MonaiBoundaryLoss(softmax=True, include_background=False),
    }
    rows = []
    for shape_name, (batch, classes, spatial, repeats) in shapes.items():
        labels = blob_labels(batch, classes, spatial, rng)
        one_hot = F.one_hot(labels, classes).movedim(-1, 1).float()
        noise = torch.randn(one_hot.shape, generator=torch.Generator().manual_seed(1))
        logits = (3.0 * one_hot + noise).requires_grad_(True)
        for name, peer in peers.items():
            monai_loss, ours, cached = peer(), create_loss(name), create_loss(name, cache_target_maps=True)
            expected = float(monai_loss(logits, one_hot))
            for loss in (ours, cached):
                got = float(loss(logits, labels))
                if abs(got - expected) > 1e-5 * abs(expected):
                    raise AssertionError(f"{name} {shape_name}: seglosses {got} != MONAI {expected}")
            methods = {
                "monai": lambda z, _, m=monai_loss, t=one_hot: m(z, t),
                "seglosses": ours,
                "seglosses_cached": cached,
            }
            times = {method: [] for method in methods}
            for _ in range(repeats):
                for method, function in methods.items():
                    times[method].append(step_time(function, logits, labels))
            medians = {method: statistics.median(values) for method, values in times.items()}
            row = {"loss": name, "shape": shape_name, "median_ms": medians, "times_ms": times,
                   "ratio_monai_over_seglosses": medians["monai"] / medians["seglosses"],
                   "ratio_monai_over_seglosses_cached": medians["monai"] / medians["seglosses_cached"],
                   "value": expected}
            rows.append(row)
            print(name, shape_name, {k: round(v, 1) for k, v in medians.items()}, flush=True)
    described = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "device": "cpu", "device_name": cpu_model(), "torch_threads": torch.get_num_threads(), "dtype": "float32",
        "versions": {"seglosses": seglosses.__version__, "torch": torch.__version__, "monai": monai.__version__,
                     "scipy": scipy.__version__, "numpy": np.__version__},
        "python": platform.python_version(),
        "statistic": "median of interleaved forward+backward steps (ms); ratio = MONAI / seglosses",
        "load_average_1min_before_after": [load_before, load_average()],
        "note": args.note,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "distance_losses_cpu.json").write_text(
        json.dumps({"environment": described, "results": rows}, indent=2) + "\n")
    lines = [
        "# Distance-based losses, forward + backward, CPU", "",
        f"- Date {described['date']}; command `{described['command']}`; {described['device_name']}, "
        f"torch threads {described['torch_threads']}, float32",
        f"- {', '.join(f'{k} {v}' for k, v in described['versions'].items())}; {described['statistic']}",
        f"- 1-minute load average before / after: {described['load_average_1min_before_after']} ({described['note']})",
        "- seglosses_cached: `cache_target_maps=True`, steady state over static targets (the targets' maps "
        "computed on an earlier step).",
        "", "| loss | batch | MONAI (ms) | seglosses (ms) | seglosses cached (ms) | MONAI / seglosses | "
        "MONAI / cached |", "|---|---|---|---|---|---|---|",
        *(f"| {r['loss']} | {r['shape']} | {r['median_ms']['monai']:.0f} | {r['median_ms']['seglosses']:.0f} | "
          f"{r['median_ms']['seglosses_cached']:.0f} | {r['ratio_monai_over_seglosses']:.2f} | "
          f"{r['ratio_monai_over_seglosses_cached']:.2f} |" for r in rows),
        "",
    ]
    (RESULTS_DIR / "distance_losses_cpu.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
