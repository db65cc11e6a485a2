"""Time seglosses ``hd95`` against MONAI ``HausdorffDistanceMetric(percentile=95)`` on CPU.

Cases (two classes, background + one foreground structure, unless stated):

- ``3d``: one 160x160x96 volume, a smooth irregular organ and a prediction whose surface is
  displaced by smooth noise and shifted by one voxel (Dice ~0.92: a good 3D model);
- ``2d``: 8 masks of 256x256, one blob each, perturbed the same way;
- ``3d_poor``: two unrelated three-class blob volumes of 160x160x96 (two balls per class, drawn
  independently for prediction and target; Dice ~0.14): a poor prediction, where most surface
  voxels lie far (median ~15 voxels) from the other surface;
- ``3d_hard`` and ``2d_hard``: the realistic cases with four times the surface noise (Dice ~0.88).

Methods, timed in the same process, interleaved, after a warm-up; the median of ``--repeats``:

- ``seglosses_max``: ``hd95(pred, target, 2, hd95_mode="max")``, MONAI's definition (the larger of the
  two directed 95th percentiles): the like-for-like comparison;
- ``seglosses_pooled``: ``hd95(pred, target, 2)``, the default (medpy's pooled percentile);
- ``monai``: ``HausdorffDistanceMetric(include_background=False, percentile=95)`` on one-hot float32
  inputs prepared outside the timed region.

seglosses receives int64 label maps (what ``argmax`` returns). Values are checked before timing:
the sorted directed distances of seglosses and of MONAI (``get_edge_surface_distance``) must be
identical in float32 (MONAI's precision), ``seglosses_max`` must equal MONAI's HD95 up to MONAI's
float32 percentile arithmetic, and ``seglosses_pooled`` must equal medpy's ``hd95``.

Usage::

    python benchmarks/hd95.py                      # 1 thread, 21 repeats
    python benchmarks/hd95.py --threads 1 2 --repeats 31

One thread is the default and the reference: MONAI's per-(image, class) loop is single-threaded
apart from a few torch reductions, and on a shared machine torch's OpenMP threads slow down badly
when another process holds a core, which inflates MONAI's multi-threaded timings (the load average
is recorded for that reason). seglosses follows ``torch.get_num_threads()``.

Writes ``benchmarks/results/hd95_cpu.json`` (self-describing: versions, machine, threads, dtype,
command, timings, ratios) and ``benchmarks/results/hd95_cpu.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy
import torch
import torch.nn.functional as F
from scipy import ndimage

import seglosses
from seglosses.metrics import dice_score, hd95, surface_distances

TARGET_SPEEDUP = 5.0
PRIMARY_CASES = ("3d", "2d", "3d_poor")
# Standard deviations of the smooth fields added to the implicit function (about 0.05 per voxel
# at the surface): the organ's irregularity, and the model's error for typical and hard cases.
ORGAN_IRREGULARITY = 0.35
ERROR_TYPICAL = 0.08
ERROR_HARD = 0.25


def ellipsoid(shape: tuple[int, ...], centre, radii, shift) -> np.ndarray:
    """Implicit function of an ellipsoid (<= 1 inside), its centre moved by ``shift`` voxels."""
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    return sum(((g - c - s) / r) ** 2 for g, c, s, r in zip(grids, centre, shift, radii, strict=True))


def smooth_field(shape: tuple[int, ...], sigma: float, amplitude: float, seed: int) -> np.ndarray:
    """Smooth Gaussian noise with standard deviation ``amplitude`` (in units of the implicit function)."""
    field = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), sigma)
    return field / field.std() * amplitude


def unrelated_blobs(shape: tuple[int, ...], num_classes: int, seed: int) -> np.ndarray:
    """A label map of two balls per foreground class, centres in the middle 40% of each axis, radii
    1/6 to 1/3 of the shortest side (later classes paint over earlier ones)."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape)
    labels = np.zeros(shape, dtype=np.int64)
    for label in range(1, num_classes):
        for _ in range(2):
            centre = np.array([rng.uniform(0.3 * n, 0.7 * n) for n in shape]).reshape(-1, *([1] * len(shape)))
            radius = rng.uniform(min(shape) / 6, min(shape) / 3)
            labels[((grid - centre) ** 2).sum(0) < radius**2] = label
    return labels


def make_case(name: str) -> tuple[torch.Tensor, torch.Tensor, str, int]:
    """(pred, target) int64 label maps of shape (B, *S), a description and the number of classes.

    Target: an ellipsoid made irregular by a smooth field (the organ's shape). Prediction: the same
    shape moved by one voxel per axis, its surface displaced by a second smooth field (the model's
    error) whose amplitude sets the difficulty.
    """
    if name == "3d_poor":
        shape = (160, 160, 96)
        pred, target = (unrelated_blobs(shape, 3, [2, side]) for side in (0, 1))
        description = f"1 x {shape}, three classes, prediction and target drawn independently"
        return torch.from_numpy(pred[None]), torch.from_numpy(target[None]), description, 3
    error = ERROR_HARD if name.endswith("_hard") else ERROR_TYPICAL
    if name.startswith("3d"):
        shape = (160, 160, 96)
        blobs = [((80, 80, 48), (45, 35, 25))]
        shift = (1, -1, 1)
    else:
        shape = (256, 256)
        rng = np.random.default_rng(7)
        blobs = [(tuple(rng.uniform(90, 166, 2)), tuple(rng.uniform(35, 70, 2))) for _ in range(8)]
        shift = (1, -1)
    targets, preds = [], []
    for index, (centre, radii) in enumerate(blobs):
        organ_shape = smooth_field(shape, 8.0, ORGAN_IRREGULARITY, seed=10 + index)
        targets.append(ellipsoid(shape, centre, radii, (0,) * len(shape)) + organ_shape <= 1.0)
        model_error = smooth_field(shape, 4.0, error, seed=100 + index)
        preds.append(ellipsoid(shape, centre, radii, shift) + organ_shape + model_error <= 1.0)
    description = f"{len(blobs)} x {shape}, one structure each, model-error amplitude {error}"
    pred = torch.from_numpy(np.stack(preds).astype(np.int64))
    target = torch.from_numpy(np.stack(targets).astype(np.int64))
    return pred, target, description, 2


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(labels, num_classes).movedim(-1, 1).float().contiguous()


def check_values(pred: torch.Tensor, target: torch.Tensor, num_classes: int, monai_value: torch.Tensor) -> dict:
    """Identical distances and HD95 values against MONAI (and medpy when installed)."""
    from monai.metrics.utils import get_edge_surface_distance

    ours_max = hd95(pred, target, num_classes, hd95_mode="max")
    ours_pooled = hd95(pred, target, num_classes)
    identical = True
    units = [(b, c) for b in range(pred.shape[0]) for c in range(1, num_classes)]
    for b, c in units:
        forward, backward = surface_distances(pred[b] == c, target[b] == c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, (theirs_forward, theirs_backward), _ = get_edge_surface_distance(
                (pred[b] == c).float(), (target[b] == c).float(), symmetric=True
            )
        for ours, theirs in ((forward, theirs_forward), (backward, theirs_backward)):
            identical &= np.array_equal(np.sort(ours.numpy().astype(np.float32)), np.sort(theirs.numpy()))
    difference = (ours_max.float() - monai_value.float()).abs().max().item()
    assert identical, "directed surface distances differ from MONAI's"
    assert torch.allclose(ours_max, monai_value.double(), rtol=1e-5, atol=1e-5), (ours_max, monai_value)
    checks = {
        "identical_directed_distances_vs_monai_float32": identical,
        "max_abs_diff_hd95_max_mode_vs_monai": difference,
    }
    try:
        from medpy.metric import binary
    except ImportError:
        checks["medpy"] = "not installed"
    else:
        medpy_values = [binary.hd95(pred[b].numpy() == c, target[b].numpy() == c) for b, c in units]
        medpy_difference = max(
            abs(ours_pooled[b, c - 1].item() - v) for (b, c), v in zip(units, medpy_values, strict=True)
        )
        assert medpy_difference <= 1e-9 * max(1.0, max(medpy_values)), medpy_difference
        checks["max_abs_diff_hd95_pooled_vs_medpy"] = medpy_difference
    return {
        "checks": checks,
        "hd95_max_mode": ours_max.flatten().tolist(),
        "hd95_pooled": ours_pooled.flatten().tolist(),
        "hd95_monai": monai_value.flatten().tolist(),
    }


def time_interleaved(methods: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict:
    for _ in range(warmup):
        for run in methods.values():
            run()
    samples: dict[str, list[float]] = {name: [] for name in methods}
    names = list(methods)
    for repeat in range(repeats):
        # Alternate the order so that no method always runs right after another.
        for name in names if repeat % 2 == 0 else reversed(names):
            start = time.perf_counter()
            methods[name]()
            samples[name].append((time.perf_counter() - start) * 1e3)
    summary = {}
    for name, values in samples.items():
        q1, _, q3 = statistics.quantiles(values, n=4)
        summary[name] = {
            "median_ms": statistics.median(values),
            "min_ms": min(values),
            "q1_ms": q1,
            "q3_ms": q3,
        }
    return summary


def run_case(name: str, threads: list[int], repeats: int) -> dict:
    from monai.metrics import HausdorffDistanceMetric

    pred, target, description, num_classes = make_case(name)
    pred_one_hot, target_one_hot = one_hot(pred, num_classes), one_hot(target, num_classes)
    monai_metric = HausdorffDistanceMetric(include_background=False, percentile=95)

    def monai() -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = monai_metric(y_pred=pred_one_hot, y=target_one_hot)
        monai_metric.reset()  # the metric object keeps a buffer of every call otherwise
        return value

    values = check_values(pred, target, num_classes, monai())
    surface_voxels = sum(
        sum(len(d) for d in surface_distances(pred[b] == c, target[b] == c))
        for b in range(pred.shape[0])
        for c in range(1, num_classes)
    )
    runs = []
    for count in threads:
        torch.set_num_threads(count)
        timings = time_interleaved(
            {
                "seglosses_max": lambda: hd95(pred, target, num_classes, hd95_mode="max"),
                "seglosses_pooled": lambda: hd95(pred, target, num_classes),
                "monai": monai,
            },
            repeats,
        )
        monai_ms = timings["monai"]["median_ms"]
        runs.append(
            {
                "threads": count,
                "timings": timings,
                "speedup_same_definition": monai_ms / timings["seglosses_max"]["median_ms"],
                "speedup_default_pooled": monai_ms / timings["seglosses_pooled"]["median_ms"],
            }
        )
        print(
            f"{name:8s} threads={count}  seglosses max {timings['seglosses_max']['median_ms']:7.2f} ms  "
            f"pooled {timings['seglosses_pooled']['median_ms']:7.2f} ms  MONAI {monai_ms:7.2f} ms  "
            f"speed-up {runs[-1]['speedup_same_definition']:5.1f}x",
            flush=True,
        )
    return {
        "name": name,
        "primary": name in PRIMARY_CASES,
        "description": description,
        "shape": list(pred.shape),
        "num_classes": num_classes,
        "dice": dice_score(pred, target, num_classes).flatten().tolist(),
        "surface_voxels": surface_voxels,
        **values,
        "runs": runs,
    }


def environment() -> dict:
    versions = {
        "python": platform.python_version(),
        "seglosses": seglosses.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }
    for module in ("monai", "medpy"):
        try:
            versions[module] = __import__(module).__version__
        except (ImportError, AttributeError):
            versions[module] = "not installed"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu
            )
    except OSError:
        pass
    return {
        "versions": versions,
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "device": "cpu",
        "load_average_1_5_15_min_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _rounded(values: list[float] | None) -> str:
    return "n/a" if values is None else ", ".join(f"{v:.2f}" for v in values)


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        "# HD95 on CPU: seglosses vs MONAI",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['timestamp']}  ",
        f"Machine: {env['cpu']}, {env['cpu_count']} cores; {env['platform']}  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + "  ",
        f"Inputs: {report['settings']['inputs']}  ",
        f"Median of {report['settings']['repeats']} interleaved repeats after {report['settings']['warmup']} "
        "warm-up runs. Load average (1, 5, 15 min) at start "
        f"{_rounded(env['load_average_1_5_15_min_at_start'])}, "
        f"at end {_rounded(report['load_average_at_end'])}"
        " (other processes shared the machine; the interleaving exposes both libraries to the same load).",
        "",
        '| case | threads | seglosses `hd95_mode="max"` (ms) | seglosses pooled (ms) | MONAI (ms) '
        "| speed-up, same definition | speed-up, pooled | HD95 max / pooled / MONAI | Dice |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case in report["cases"]:
        for run in case["runs"]:
            t = run["timings"]
            values = (
                f"{np.mean(case['hd95_max_mode']):.3f} / {np.mean(case['hd95_pooled']):.3f} / "
                f"{np.mean(case['hd95_monai']):.3f}"
            )
            lines.append(
                f"| {case['name']}{'' if case['primary'] else ' (extra)'} {tuple(case['shape'])} "
                f"| {run['threads']} "
                f"| {t['seglosses_max']['median_ms']:.2f} | {t['seglosses_pooled']['median_ms']:.2f} "
                f"| {t['monai']['median_ms']:.2f} | {run['speedup_same_definition']:.1f}x "
                f"| {run['speedup_default_pooled']:.1f}x | {values} | {np.mean(case['dice']):.3f} |"
            )
    lines += [
        "",
        "Values: the sorted directed surface distances of seglosses equal MONAI's in float32 for every "
        "image; HD95 in max mode equals MONAI's up to MONAI's float32 percentile arithmetic; the pooled "
        "HD95 equals medpy's `hd95`. HD95 and Dice columns are means over the images and foreground "
        "classes of a case. seglosses computes exactly only the distances at the ranks HD95 reads (bounds "
        "elsewhere; `seglosses/metrics/_distance.py`), which keeps poor predictions fast.",
        "",
        f"Target: at least {TARGET_SPEEDUP:.0f}x faster than MONAI on the primary cases. "
        f"Met at {report['target_met_threads']} thread(s) (like-for-like definition).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--cases", nargs="+", default=["3d", "2d", "3d_poor", "3d_hard", "2d_hard"])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    report = {
        "benchmark": "hd95: seglosses.metrics.hd95 vs monai.metrics.HausdorffDistanceMetric(percentile=95)",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(),
        "settings": {
            "repeats": args.repeats,
            "warmup": 2,
            "threads": args.threads,
            "inputs": "seglosses: int64 label maps (B, *S); MONAI: float32 one-hot (B, C, *S) built outside "
            "the timed region; include_background=False; unit spacing (voxels)",
            "dtype": "int64 labels; float64 distances (seglosses), float32 (MONAI)",
        },
    }
    report["cases"] = [run_case(name, args.threads, args.repeats) for name in args.cases]
    report["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    met = [
        count
        for count in args.threads
        if all(
            run["speedup_same_definition"] >= TARGET_SPEEDUP
            for case in report["cases"]
            if case["primary"]
            for run in case["runs"]
            if run["threads"] == count
        )
    ]
    report["target"] = f">= {TARGET_SPEEDUP}x faster than MONAI on the primary cases {list(PRIMARY_CASES)}"
    report["target_met_threads"] = met
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hd95_cpu.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "hd95_cpu.md").write_text(markdown(report))
    print(f"wrote {args.out / 'hd95_cpu.json'} and {args.out / 'hd95_cpu.md'}; target met at threads {met}")


if __name__ == "__main__":
    main()
