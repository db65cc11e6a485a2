"""Reports with pictures: ``report.md`` and PNG plots for a run folder, and for a ``compare`` grid.

A run folder (written by :func:`seglosses.lab.train`) holds ``log.csv``, ``results.json``,
``per_image.csv``, ``noise.csv`` and, with the envelope, ``envelope/epoch_###.npz``.
:func:`write_report` turns it into ``report.md`` plus ``plots/*.png``: learning curves, per-class
test metrics, the envelope's image weight against rank at several epochs, its schedule (k, alpha,
N/K) and kept-pixel fractions over epochs, the training annotations under noise, and overlays of
the best, median and worst test cases. :func:`write_compare_report` draws Dice and HD95 against
the noise level for every configuration of a grid, beside its table.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "plot_compare",
    "plot_envelope_schedule",
    "plot_envelope_weights",
    "plot_kept_fractions",
    "plot_learning_curves",
    "plot_noise_examples",
    "plot_overlays",
    "plot_per_class",
    "read_csv_columns",
    "read_per_image",
    "write_compare_report",
    "write_report",
]

NOISE_ORDER = ("none", "mild", "moderate", "severe")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    from matplotlib.ticker import MaxNLocator

    for axis in figure.axes:
        if axis.get_xlabel() == "epoch":
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    _pyplot().close(figure)
    return path


def _number(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def read_csv_columns(path: str | Path) -> dict[str, np.ndarray]:
    """A CSV file as columns of floats (empty or non-numeric cells are NaN).

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "log.csv")
        >>> _ = open(path, "w").write("epoch,val_dice\\n1,\\n2,0.5\\n")
        >>> read_csv_columns(path)["val_dice"]
        array([nan, 0.5])
    """
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    names = list(rows[0]) if rows else []
    return {name: np.array([_number(row[name]) for row in rows], dtype=float) for name in names}


def read_per_image(path: str | Path) -> list[dict[str, Any]]:
    """``per_image.csv`` as rows: text in ``case_id`` and ``class``, numbers elsewhere."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    text_columns = {"case_id", "class", "class_name", "config", "noise", "unit"}
    return [{key: (value if key in text_columns else _number(value)) for key, value in row.items()} for row in rows]


def _metric_names(rows: list[dict[str, Any]]) -> list[str]:
    skip = {"case_id", "class", "class_name", "index", "class_index", "seed", "slice_index", "config", "noise", "unit"}
    return [name for name in rows[0] if name not in skip] if rows else []


def _class_key(row: dict[str, Any]) -> str:
    return str(row.get("class_name") or row.get("class"))


# ---------------------------------------------------------------------------------------- single-run plots


def plot_learning_curves(log: dict[str, np.ndarray], path: str | Path) -> Path:
    """Training loss (and the unscaled base loss with the envelope) and validation Dice over epochs."""
    plt = _pyplot()
    epochs = log["epoch"]
    figure, (loss_axis, dice_axis) = plt.subplots(1, 2, figsize=(10, 3.8))
    loss_axis.plot(epochs, log["train_loss"], marker="o", markersize=3, label="training loss (optimised)")
    unscaled = log.get("train_loss_unscaled")
    if unscaled is not None and not np.allclose(unscaled, log["train_loss"], equal_nan=True):
        loss_axis.plot(epochs, unscaled, marker="s", markersize=3, label="base loss, every image weight 1")
    loss_axis.set(title="Training loss", xlabel="epoch", ylabel="loss")
    loss_axis.grid(alpha=0.3)
    loss_axis.legend()
    validated = ~np.isnan(log.get("val_dice", np.full_like(epochs, np.nan)))
    if validated.any():
        dice_axis.plot(epochs[validated], log["val_dice"][validated], marker="o", markersize=3, color="tab:green",
                       label="validation Dice (clean masks)")
        best = np.nanargmax(log["val_dice"])
        dice_axis.scatter([epochs[best]], [log["val_dice"][best]], s=80, facecolors="none", edgecolors="black",
                          zorder=3, label=f"best: {log['val_dice'][best]:.3f} (epoch {int(epochs[best])})")
        dice_axis.legend(loc="lower right")
    else:
        dice_axis.text(0.5, 0.5, "not validated", ha="center", va="center", transform=dice_axis.transAxes)
    dice_axis.set(title="Validation Dice", xlabel="epoch", ylabel="Dice (foreground mean)", ylim=(0, 1))
    dice_axis.grid(alpha=0.3)
    return _save(figure, Path(path))


def distance_unit(results: dict[str, Any] | None) -> str:
    """"mm" or "px": the unit of the surface distances a ``results.json`` reports (its ``distances_in``).

    Example:
        >>> distance_unit({"distances_in": "pixels"}), distance_unit({"distances_in": "spacing units (mm)"})
        ('px', 'mm')
    """
    return "px" if str((results or {}).get("distances_in", "pixels")).startswith("pixels") else "mm"


def _run_distance_unit(run_dir: Path) -> str:
    path = run_dir / "results.json"
    return distance_unit(json.loads(path.read_text()) if path.is_file() else None)


def plot_per_class(rows: list[dict[str, Any]], path: str | Path, unit: str = "mm") -> Path:
    """Per-class test metrics as bars (mean with std over test units); HD95 and ASSD (in ``unit``) on their own axis."""
    plt = _pyplot()
    classes = list(dict.fromkeys(_class_key(row) for row in rows))
    metrics = _metric_names(rows)
    overlap = [name for name in ("dice", "iou", "precision", "recall", "nsd") if name in metrics]
    distances = [name for name in ("hd95", "assd") if name in metrics]
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [2, 1]})
    width = 0.8 / max(len(classes), 1)
    for axis, names, label in ((axes[0], overlap, "score"), (axes[1], distances, f"distance ({unit})")):
        positions = np.arange(len(names))
        for number, class_name in enumerate(classes):
            values = [[row[name] for row in rows if _class_key(row) == class_name] for name in names]
            means = [np.nanmean(v) if np.isfinite(v).any() else np.nan for v in values]
            stds = [np.nanstd(v) if np.isfinite(v).any() else np.nan for v in values]
            bars = axis.bar(positions + (number - (len(classes) - 1) / 2) * width, means, width, yerr=stds,
                            capsize=3, label=class_name)
            axis.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
        axis.set_xticks(positions, names)
        axis.set_ylabel(label)
        axis.grid(axis="y", alpha=0.3)
    axes[0].set(title="Test overlap metrics per class (mean, std over test units)", ylim=(0, 1.1))
    axes[1].set_title("Test surface distances per class")
    axes[0].legend(title="class", fontsize=8)
    return _save(figure, Path(path))


def _epoch_files(run_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for path in sorted((run_dir / "envelope").glob("epoch_*.npz")):
        match = re.fullmatch(r"epoch_(\d+)\.npz", path.name)
        if match:
            found.append((int(match.group(1)), path))
    return found


def _pick_evenly(items: Sequence[Any], count: int) -> list[Any]:
    if len(items) <= count:
        return list(items)
    positions = np.unique(np.round(np.linspace(0, len(items) - 1, count)).astype(int))
    return [items[position] for position in positions]


def plot_envelope_weights(epoch_files: list[tuple[int, Path]], path: str | Path, count: int = 5) -> Path:
    """The image weight against the image's loss rank (0 = easiest) at up to ``count`` epochs."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    colours = plt.cm.viridis(np.linspace(0, 0.9, max(count, 1)))
    for colour, (epoch, npz_path) in zip(colours, _pick_evenly(epoch_files, count), strict=False):
        with np.load(npz_path) as saved:
            ledger, weights = saved["ledger"], saved["weights"]
        order = np.argsort(ledger, kind="stable")
        axis.plot(np.arange(len(order)), weights[order], color=colour, marker=".", markersize=3, label=f"epoch {epoch}")
    axis.set(title="Envelope: image weight against loss rank", xlabel="rank of the image's loss (0 = easiest)",
             ylabel="image weight")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return _save(figure, Path(path))


def plot_envelope_schedule(log: dict[str, np.ndarray], path: str | Path) -> Path:
    """The envelope's box over epochs: k (images in the top-k), alpha (smoothing) and N/K (gradient scale)."""
    plt = _pyplot()
    panels = [("env_k", "k (images emphasised)"), ("env_alpha", "alpha (sigmoid sharpness)"),
              ("env_n_over_k", "N / K (gradient scale)")]
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for axis, (column, label) in zip(axes, panels, strict=False):
        values = log.get(column)
        if values is None or np.isnan(values).all():
            axis.text(0.5, 0.5, f"{column} not logged", ha="center", va="center", transform=axis.transAxes)
        else:
            shown = np.where(np.isinf(values), np.nan, values)
            axis.plot(log["epoch"], shown, marker="o", markersize=3)
            if np.isinf(values).any():
                axis.set_title(f"{label}\n(missing points: infinite, a hard box)", fontsize=9)
        axis.set(xlabel="epoch", ylabel=label)
        if not axis.get_title():
            axis.set_title(label)
        axis.grid(alpha=0.3)
    figure.suptitle("Envelope schedule over epochs")
    return _save(figure, Path(path))


def kept_fraction_columns(log: dict[str, np.ndarray]) -> list[str]:
    """The log's kept-pixel-fraction columns (overall and per class), in file order."""
    return [name for name in log if name.startswith("env_kept")]


def plot_kept_fractions(log: dict[str, np.ndarray], path: str | Path) -> Path:
    """Fraction of annotated pixels the pixel selection kept, over epochs, per class where logged."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    for column in kept_fraction_columns(log):
        label = column.removeprefix("env_").replace("_", " ")
        axis.plot(log["epoch"], log[column], marker="o", markersize=3, label=label)
    axis.set(title="Kept-pixel fraction over epochs", xlabel="epoch", ylabel="fraction of pixels kept",
             ylim=(min(0.8, float(np.nanmin([np.nanmin(log[c]) for c in kept_fraction_columns(log)]))) - 0.02, 1.005))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return _save(figure, Path(path))


def _outline(axis, mask: np.ndarray, colour: str) -> None:
    if mask.any() and not mask.all():
        axis.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=1.0)


def plot_overlays(cases: list[dict[str, Any]], path: str | Path, title: str) -> Path:
    """One row per test case: image, reference mask, prediction, errors (false positives red, misses blue).

    Args:
        cases: dicts with ``image`` (H, W) float, ``clean_mask`` and ``prediction`` (H, W) int,
            ``label`` (the row title, e.g. "best: case 017, Dice 0.95").
    """
    plt = _pyplot()
    from matplotlib.colors import ListedColormap

    figure, axes = plt.subplots(len(cases), 4, figsize=(12, 2.6 * len(cases) + 0.6), squeeze=False)
    errors = ListedColormap([(0, 0, 0, 0), (1.0, 0.1, 0.1, 0.8), (0.2, 0.4, 1.0, 0.8)])
    green = ListedColormap([(0, 0, 0, 0), (0.1, 0.9, 0.3, 0.45)])
    orange = ListedColormap([(0, 0, 0, 0), (1.0, 0.6, 0.0, 0.45)])
    for row, case in zip(axes, cases, strict=False):
        reference, prediction = case["clean_mask"] > 0, case["prediction"] > 0
        for axis in row:
            axis.imshow(case["image"], cmap="gray")
            axis.set_xticks([])
            axis.set_yticks([])
        row[1].imshow(reference, cmap=green, interpolation="nearest")
        _outline(row[1], reference, "lime")
        row[2].imshow(prediction, cmap=orange, interpolation="nearest")
        _outline(row[2], prediction, "orange")
        error_map = np.where(prediction & ~reference, 1, np.where(reference & ~prediction, 2, 0))
        row[3].imshow(error_map, cmap=errors, vmin=0, vmax=2, interpolation="nearest")
        row[0].set_ylabel(case["label"], fontsize=8)
    for axis, heading in zip(axes[0], ["image", "reference (clean) mask", "prediction",
                                       "errors: false positive red, missed blue"], strict=False):
        axis.set_title(heading, fontsize=9)
    figure.suptitle(title)
    return _save(figure, Path(path))


def plot_noise_examples(cases: list[dict[str, Any]], path: str | Path, title: str) -> Path:
    """One row per training image: image, clean mask, noisy mask (the one trained on), and their difference."""
    plt = _pyplot()
    from matplotlib.colors import ListedColormap

    figure, axes = plt.subplots(len(cases), 4, figsize=(12, 2.6 * len(cases) + 0.6), squeeze=False)
    green = ListedColormap([(0, 0, 0, 0), (0.1, 0.9, 0.3, 0.45)])
    cyan = ListedColormap([(0, 0, 0, 0), (0.1, 0.9, 1.0, 0.45)])
    yellow = ListedColormap([(0, 0, 0, 0), (1.0, 0.85, 0.0, 0.85)])
    for row, case in zip(axes, cases, strict=False):
        clean, noisy = case["clean_mask"] > 0, case["mask"] > 0
        for axis in row:
            axis.imshow(case["image"], cmap="gray")
            axis.set_xticks([])
            axis.set_yticks([])
        row[1].imshow(clean, cmap=green, interpolation="nearest")
        row[2].imshow(noisy, cmap=cyan, interpolation="nearest")
        row[3].imshow(case["mask"] != case["clean_mask"], cmap=yellow, interpolation="nearest")
        row[0].set_ylabel(case["label"], fontsize=8)
    headings = ["image", "clean mask", "noisy mask (trained on)", "pixels the noise changed"]
    for axis, heading in zip(axes[0], headings, strict=False):
        axis.set_title(heading, fontsize=9)
    figure.suptitle(title)
    return _save(figure, Path(path))


# ---------------------------------------------------------------------------------------- single-run report


def _unit_scores(rows: list[dict[str, Any]], metric: str = "dice") -> list[tuple[int, str, float]]:
    """(index, case_id, mean over foreground classes of ``metric``) per test unit."""
    by_unit: dict[tuple[int, str], list[float]] = {}
    for row in rows:
        if _class_key(row) in ("0", "background"):
            continue
        by_unit.setdefault((int(row["index"]), str(row["case_id"])), []).append(row[metric])
    return [(index, case_id, float(np.nanmean(values)) if np.isfinite(values).any() else math.nan)
            for (index, case_id), values in by_unit.items()]


def pick_best_median_worst(rows: list[dict[str, Any]]) -> list[tuple[str, int, str, float]]:
    """The test units with the best, median and worst foreground Dice: (which, index, case_id, dice).

    Example:
        >>> rows = [{"case_id": c, "index": i, "class": "head", "dice": d}
        ...         for i, (c, d) in enumerate([("a", 0.9), ("b", 0.5), ("c", 0.7)])]
        >>> [(which, case) for which, _, case, _ in pick_best_median_worst(rows)]
        [('best', 'a'), ('median', 'c'), ('worst', 'b')]
    """
    scores = sorted((unit for unit in _unit_scores(rows) if math.isfinite(unit[2])), key=lambda unit: -unit[2])
    if not scores:
        return []
    chosen = [("best", scores[0]), ("median", scores[len(scores) // 2]), ("worst", scores[-1])]
    return [(which, index, case_id, dice) for which, (index, case_id, dice) in chosen]


def _format(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_format(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _per_class_table(rows: list[dict[str, Any]]) -> str:
    classes = list(dict.fromkeys(_class_key(row) for row in rows))
    metrics = _metric_names(rows)
    table_rows = []
    for class_name in classes:
        cells = [class_name]
        for name in metrics:
            values = np.array([row[name] for row in rows if _class_key(row) == class_name], dtype=float)
            finite = values[np.isfinite(values)]
            cell = f"{finite.mean():.3f} ± {finite.std():.3f}" if finite.size else "n/a"
            if finite.size < values.size:
                cell += f" ({values.size - finite.size} undefined)"
            cells.append(cell)
        table_rows.append(cells)
    return _markdown_table(["class", *metrics], table_rows)


def _config_summary(run_dir: Path) -> list[str]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return []
    import yaml

    config = yaml.safe_load(path.read_text()) or {}
    lines = []
    for section in ("loss", "envelope", "data", "model", "train"):
        value = config.get(section)
        if isinstance(value, dict):
            shown = {k: v for k, v in value.items() if not isinstance(v, dict) and v is not None}
            nested = {k: v for k, v in value.items() if isinstance(v, dict)}
            text = ", ".join(f"{k}={v}" for k, v in shown.items())
            for key, sub in nested.items():
                if sub:
                    text += f"; {key}: " + ", ".join(f"{k}={v}" for k, v in sub.items() if v is not None)
            lines.append(f"- **{section}**: {text}")
        elif value is not None:
            lines.append(f"- **{section}**: {value}")
    for key in ("seed", "epochs"):
        if key in config:
            lines.append(f"- **{key}**: {config[key]}")
    return lines


def _results_summary(run_dir: Path) -> list[str]:
    path = run_dir / "results.json"
    if not path.is_file():
        return []
    results = json.loads(path.read_text())
    scalars = [(key, value) for key, value in _flatten(results) if isinstance(value, (int, float, str))
               and not isinstance(value, bool) and "per_class" not in key and key.count(".") <= 1]
    return [_markdown_table(["result", "value"], scalars)] if scalars else []


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        out = []
        for key, sub in value.items():
            out += _flatten(sub, f"{prefix}.{key}" if prefix else str(key))
        return out
    return [(prefix, value)]


def write_report(run_dir: str | Path, images: bool = True) -> Path:
    """Write ``report.md`` and ``plots/*.png`` into the run folder ``run_dir``; returns the report's path.

    Args:
        run_dir: a folder written by :func:`seglosses.lab.train`.
        images: also draw the pictures that need the model and the data (test overlays, noisy
            training masks); False draws only what the files hold.
    """
    run_dir = Path(run_dir)
    plots = run_dir / "plots"
    lines = [f"# Run report: {'/'.join(run_dir.resolve().parts[-3:])}", ""]
    lines += _config_summary(run_dir)
    lines.append("")
    summary = _results_summary(run_dir)
    if summary:
        lines += ["## Test results", "", *summary, ""]
    log = read_csv_columns(run_dir / "log.csv") if (run_dir / "log.csv").is_file() else {}
    if log.get("epoch") is not None and len(log["epoch"]):
        plot_learning_curves(log, plots / "learning_curves.png")
        lines += ["## Learning curves", "", "![learning curves](plots/learning_curves.png)", ""]
    rows = read_per_image(run_dir / "per_image.csv") if (run_dir / "per_image.csv").is_file() else []
    if rows:
        plot_per_class(rows, plots / "per_class.png", _run_distance_unit(run_dir))
        lines += ["## Per-class test metrics", "", _per_class_table(rows), "", "![per class](plots/per_class.png)", ""]
    epoch_files = _epoch_files(run_dir)
    if epoch_files or any(name.startswith("env_") for name in log):
        lines += ["## The envelope", ""]
        if epoch_files:
            plot_envelope_weights(epoch_files, plots / "envelope_weights.png")
            lines += ["Each training image's weight against the rank of its loss in the ledger (0 = easiest), "
                      "at several epochs.", "", "![weights](plots/envelope_weights.png)", ""]
        if any(name in log for name in ("env_k", "env_alpha", "env_n_over_k")):
            plot_envelope_schedule(log, plots / "envelope_schedule.png")
            lines += ["![schedule](plots/envelope_schedule.png)", ""]
        if kept_fraction_columns(log):
            plot_kept_fractions(log, plots / "kept_fractions.png")
            lines += ["![kept fractions](plots/kept_fractions.png)", ""]
    if images and rows:
        lines += _image_sections(run_dir, rows, plots)
    report = run_dir / "report.md"
    report.write_text("\n".join(lines).rstrip() + "\n")
    return report


def _image_sections(run_dir: Path, rows: list[dict[str, Any]], plots: Path) -> list[str]:
    from seglosses.lab.data import build_splits
    from seglosses.lab.train import load_run, predict

    run = load_run(run_dir)
    splits = build_splits(run.config.data)
    lines = []
    picked = pick_best_median_worst(rows)
    if picked:
        indices = [index for _, index, _, _ in picked]
        batch = next(predict(run.model, splits.test, indices=indices, batch_size=len(indices)))
        cases = [{"image": _display_image(batch["image"][row]), "clean_mask": _middle(batch["clean_mask"][row]),
                  "prediction": _middle(batch["pred"][row]), "label": f"{which}: {case_id}\nDice {dice:.3f}"}
                 for row, (which, _, case_id, dice) in enumerate(picked)]
        plot_overlays(cases, plots / "test_overlays.png", "Test cases with the best, median and worst Dice")
        lines += ["## Test overlays", "", "![overlays](plots/test_overlays.png)", ""]
    level = str(run.config.data.noise.level)
    if level != "none":
        cases = []
        for index in _pick_evenly(range(len(splits.train)), 3):
            sample = splits.train[index]
            cases.append({"image": _display_image(sample["image"]), "clean_mask": _middle(sample["clean_mask"]),
                          "mask": _middle(sample["mask"]), "label": str(sample["case_id"])})
        title = f"Training annotations under '{level}' simulated noise"
        plot_noise_examples(cases, plots / "noise_examples.png", title)
        lines += ["## Annotation noise (training split only)", "",
                  "Validation and test masks stay clean; these training images show what the model was trained on.",
                  "", "![noise](plots/noise_examples.png)", ""]
    return lines


def _middle(array: Any) -> np.ndarray:
    """A 2D slice to draw: the array itself, or the middle slice of a volume."""
    array = array.detach().cpu().numpy() if hasattr(array, "detach") else np.asarray(array)
    while array.ndim > 2:
        array = array[array.shape[0] // 2]
    return array


def _display_image(image: Any) -> np.ndarray:
    """(C, *S) image -> a 2D grey image (the first channel) or (H, W, 3) RGB scaled to [0, 1]."""
    array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if array.shape[0] == 3 and array.ndim == 3:
        rgb = np.moveaxis(array, 0, -1)
        low, high = rgb.min(), rgb.max()
        return (rgb - low) / (high - low) if high > low else rgb * 0
    return _middle(array[0])


# ---------------------------------------------------------------------------------------- compare


def _noise_sort_key(level: str) -> tuple[int, str]:
    return (NOISE_ORDER.index(level), level) if level in NOISE_ORDER else (len(NOISE_ORDER), level)


def plot_compare(summary: list[dict[str, Any]], path: str | Path, unit: str = "mm") -> Path:
    """Dice and HD95 per configuration: against the noise level (one line each), or as bars for one level.

    Error bars are the standard deviation over seeds.

    Args:
        summary: rows with ``config``, ``noise``, ``dice_mean``, ``dice_std``, ``hd95_mean``, ``hd95_std``.
        unit: the unit of HD95 ("mm" or "px").
    """
    plt = _pyplot()
    levels = sorted({row["noise"] for row in summary}, key=_noise_sort_key)
    configs = list(dict.fromkeys(row["config"] for row in summary))
    colours = plt.cm.tab10(np.arange(len(configs)) % 10)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))

    def value(config: str, level: str, key: str) -> float:
        match = [row for row in summary if row["config"] == config and row["noise"] == level]
        return match[0][key] if match else np.nan

    for axis, metric, name, label in ((axes[0], "dice", "Dice", "Dice (foreground mean)"),
                                      (axes[1], "hd95", "HD95", f"HD95 ({unit}), lower is better")):
        if len(levels) == 1:
            means = [value(config, levels[0], f"{metric}_mean") for config in configs]
            stds = np.nan_to_num([value(config, levels[0], f"{metric}_std") for config in configs])
            bars = axis.bar(np.arange(len(configs)), means, yerr=stds, capsize=4, color=colours)
            axis.bar_label(bars, fmt="%.3f" if metric == "dice" else "%.2f", padding=3, fontsize=9)
            axis.set_xticks(np.arange(len(configs)), configs, rotation=15)
            axis.set(title=f"Test {name}, '{levels[0]}' noise on the training masks", ylabel=label)
            top = np.nanmax(np.add(means, stds)) if np.isfinite(means).any() else 1.0
            axis.set_ylim(0, 1.05 if metric == "dice" else 1.15 * top)
        else:
            positions = np.arange(len(levels))
            spread = 0.06 * (np.arange(len(configs)) - (len(configs) - 1) / 2)
            for offset, colour, config in zip(spread, colours, configs, strict=True):
                means = [value(config, level, f"{metric}_mean") for level in levels]
                stds = np.nan_to_num([value(config, level, f"{metric}_std") for level in levels])
                axis.errorbar(positions + offset, means, yerr=stds, marker="o", capsize=3, color=colour, label=config)
            axis.set_xticks(positions, levels)
            axis.set(title=f"Test {name} against annotation noise", xlabel="simulated noise on the training masks",
                     ylabel=label)
            axis.legend(fontsize=8, title="configuration")
        axis.grid(axis="y", alpha=0.3)
    return _save(figure, Path(path))


def write_compare_report(out_dir: str | Path, summary: list[dict[str, Any]], table_markdown: str,
                         notes: Sequence[str] = (), runs: Sequence[tuple[str, str]] = (), unit: str = "mm") -> Path:
    """Write ``report.md`` and ``plots/compare.png`` for a grid into ``out_dir``; returns the report's path.

    Args:
        summary: rows as for :func:`plot_compare`.
        table_markdown: the results table (mean ± std per configuration, paired test).
        notes: paragraphs to print under the table (the test used, the baseline).
        runs: (label, relative path of a run's report) to link.
    """
    out_dir = Path(out_dir)
    plot_compare(summary, out_dir / "plots" / "compare.png", unit)
    lines = [f"# Comparison: {out_dir.name}", "", table_markdown, "", *[f"{note}\n" for note in notes],
             "![Dice and HD95 against noise](plots/compare.png)", ""]
    if runs:
        lines += ["## Runs", "", *[f"- [{label}]({link})" for label, link in runs], ""]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines).rstrip() + "\n")
    return report
