"""Time ``seglosses.distance.distance_transform`` against scipy's ``distance_transform_edt`` on CPU.

Cases: a (8, 256, 256) batch of 2D masks and a (2, 96, 96, 96) batch of 3D masks, each mask a union of
three random balls (the foreground, as a loss sees a class mask). Methods, interleaved in one process
after a warm-up, median of ``--repeats``:

- ``scipy``: ``scipy.ndimage.distance_transform_edt`` called on each mask of the batch (the peer);
- ``seglosses``: ``distance_transform(masks, spatial_dims=d)`` (backend "auto" = "scipy" on CPU: SciPy's
  exact feature transform on each mask's bounding box widened by one voxel, the distances formed from
  it without SciPy's full-size index grid; float32 output, SciPy's numbers);
- ``seglosses_torch`` (with ``--with-torch``): the pure-torch backend on CPU, meant for accelerators
  (its exact min-plus pass is quadratic per line, so it is slow on a CPU), for information.

Values are checked before timing: the seglosses backends must equal scipy to 1e-4.

Usage::

    nice python benchmarks/distance.py --repeats 7 > benchmarks/results/distance_cpu.log 2>&1

Writes ``benchmarks/results/distance_cpu.json`` and ``distance_cpu.md`` (versions, machine, threads,
load average, command).
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

import numpy as np
import scipy
import torch
from scipy import ndimage
from speed import cpu_model, load_average

import seglosses
from seglosses.distance import distance_transform

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def balls(shape: tuple[int, ...], count: int, rng: np.random.Generator) -> np.ndarray:
    grid = np.indices(shape)
    mask = np.zeros(shape, dtype=bool)
    for _ in range(count):
        centre = np.array([rng.integers(0, size) for size in shape]).reshape(-1, *([1] * len(shape)))
        radius = rng.integers(5, min(shape) // 4)
        mask |= ((grid - centre) ** 2).sum(axis=0) < radius * radius
    return mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--with-torch", action="store_true", help="also time the torch backend on CPU")
    parser.add_argument("--note", default="ratios are interleaved, so both libraries see the same machine load",
                        help="how the machine was shared during the run (written into the results)")
    args = parser.parse_args()
    load_before = load_average()
    rng = np.random.default_rng(0)
    cases = {
        "(8, 256, 256)": np.stack([balls((256, 256), 3, rng) for _ in range(8)]),
        "(2, 96, 96, 96)": np.stack([balls((96, 96, 96), 3, rng) for _ in range(2)]),
    }
    rows = []
    for name, masks in cases.items():
        spatial_dims = masks.ndim - 1
        tensor = torch.from_numpy(masks)
        methods = {
            "scipy": lambda m=masks: np.stack([ndimage.distance_transform_edt(x) for x in m]),
            "seglosses": lambda t=tensor, d=spatial_dims: distance_transform(t, spatial_dims=d),
        }
        if args.with_torch:
            methods["seglosses_torch"] = lambda t=tensor, d=spatial_dims: distance_transform(
                t, spatial_dims=d, backend="torch"
            )
        reference = methods["scipy"]()
        for method in list(methods)[1:]:
            np.testing.assert_allclose(methods[method]().numpy(), reference, rtol=1e-4, atol=1e-4)
        times = {method: [] for method in methods}
        for _ in range(args.repeats):
            for method, function in methods.items():
                start = time.perf_counter()
                function()
                times[method].append((time.perf_counter() - start) * 1e3)
        medians = {method: statistics.median(values) for method, values in times.items()}
        rows.append({"case": name, "median_ms": medians, "times_ms": times,
                     "ratio_scipy_over_seglosses": medians["scipy"] / medians["seglosses"]})
        print(name, {k: round(v, 1) for k, v in medians.items()}, flush=True)
    described = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "device": "cpu", "device_name": cpu_model(), "torch_threads": torch.get_num_threads(),
        "versions": {"seglosses": seglosses.__version__, "torch": torch.__version__, "scipy": scipy.__version__,
                     "numpy": np.__version__},
        "python": platform.python_version(),
        "statistic": f"median of {args.repeats} interleaved runs (ms); ratio = scipy / seglosses",
        "load_average_1min_before_after": [load_before, load_average()],
        "note": args.note,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "distance_cpu.json").write_text(json.dumps({"environment": described, "results": rows}, indent=2))
    lines = [
        "# Distance transform speed, CPU", "",
        f"- Date {described['date']}; command `{described['command']}`; {described['device_name']}, "
        f"torch threads {described['torch_threads']}",
        f"- {', '.join(f'{k} {v}' for k, v in described['versions'].items())}; {described['statistic']}",
        f"- 1-minute load average before / after: {described['load_average_1min_before_after']} ({described['note']})",
        "", "| batch | scipy (ms) | seglosses (ms) | seglosses torch backend on CPU (ms) | scipy / seglosses |",
        "|---|---|---|---|---|",
        *(f"| {r['case']} | {r['median_ms']['scipy']:.1f} | {r['median_ms']['seglosses']:.1f} | "
          f"{r['median_ms'].get('seglosses_torch', float('nan')):.1f} | {r['ratio_scipy_over_seglosses']:.2f} |"
          for r in rows),
        "",
    ]
    (RESULTS_DIR / "distance_cpu.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
