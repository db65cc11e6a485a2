"""A grid of runs (configurations x noise levels x seeds), resumable, summarised as one table with a paired test.

A grid file (YAML or TOML) names a base run config and the axes::

    base: base.yaml              # a run config file (relative to this file) or an inline mapping
    out_dir: runs/compare        # one run folder per cell: <out_dir>/<configuration>/<noise>/seed_<seed>
    losses: [dice_ce, focal]     # loss.name values               } configurations = losses x envelopes,
    envelopes: [none, atk_sm]    # envelope.preset values, or none } named "<loss>" / "<loss>+<preset>"
    configurations:              # optional, instead of (or beside) losses x envelopes: named overrides
      wide: [model.options.features=[16,16,32,64,128,16]]
    noise: [none, moderate]      # data.noise.level values
    seeds: [0, 1, 2]             # train.seed values
    baseline: dice_ce            # the configuration every other one is tested against
    set: [train.epochs=20]       # overrides for every run

A cell whose folder holds ``results.json`` of the same config is finished and skipped, and one
interrupted mid-training resumes from its ``last.pt``, so running the grid again resumes it. The
summary is the mean and standard deviation over seeds of each run's
mean foreground Dice and HD95 and its training time, and a paired test against the baseline at the
same noise level: the Wilcoxon signed-rank test (two-sided, ``scipy.stats.wilcoxon``) over the test
images, pairing each image's foreground Dice averaged over seeds.
"""

from __future__ import annotations

import csv
import difflib
import json
import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seglosses.lab.config import RunConfig, apply_overrides, config_diff, config_from_dict, load_config
from seglosses.lab.report import distance_unit, read_per_image, write_compare_report

__all__ = ["Cell", "GridSpec", "grid_cells", "load_grid", "paired_test", "run_grid", "summarise_grid"]

GRID_KEYS = ("base", "out_dir", "losses", "envelopes", "configurations", "noise", "seeds", "baseline", "set")


@dataclass
class GridSpec:
    """A grid: the base config, named configurations (their overrides), noise levels, seeds and the baseline."""

    base: RunConfig
    out_dir: Path
    configurations: dict[str, list[str]]
    noise: list[str] = field(default_factory=lambda: ["none"])
    seeds: list[int] = field(default_factory=lambda: [0])
    baseline: str | None = None
    overrides: list[str] = field(default_factory=list)


@dataclass
class Cell:
    """One run of the grid."""

    configuration: str
    noise: str
    seed: int
    run_dir: Path
    config: RunConfig

    @property
    def finished(self) -> bool:
        """The folder holds the results of exactly this config."""
        if not (self.run_dir / "results.json").is_file() or not (self.run_dir / "config.yaml").is_file():
            return False
        return not config_diff(load_config(self.run_dir / "config.yaml"), self.config)


def _grid_error(key: str, expected: str, got: Any, source: str) -> ValueError:
    return ValueError(f"Expected `{key}` to be {expected}, but got {got!r} (in {source}).")


def _list(values: Mapping[str, Any], key: str, source: str, default: list[Any]) -> list[Any]:
    value = values.get(key, default)
    if isinstance(value, (str, int)):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _grid_error(key, "a non-empty list", value, source)
    return value


def _read_mapping(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"Expected `config` to be an existing file, but got {str(path)!r}.")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".toml":
        import tomllib

        return tomllib.loads(text)
    import yaml

    return yaml.safe_load(text) or {}


def load_grid(path: str | Path, overrides: Sequence[str] = ()) -> GridSpec:
    """Read a grid file (see the module docstring); ``overrides`` apply to every run (after the file's ``set``).

    Raises:
        FileNotFoundError: the grid file or its base config does not exist.
        ValueError: an unknown key (the closest one is named), an empty axis, an unknown baseline.
    """
    path = Path(path)
    values = _read_mapping(path)
    source = str(path)
    unknown = [key for key in values if key not in GRID_KEYS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], GRID_KEYS, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Expected the keys of the grid to be among {list(GRID_KEYS)}, but got {unknown[0]!r} "
                         f"(in {source}).{hint}")
    base = values.get("base", {})
    if isinstance(base, str):
        base_config = load_config(path.parent / base)
    elif isinstance(base, Mapping):
        base_config = config_from_dict(base, source=source)
    else:
        raise _grid_error("base", "a config file name or a mapping", base, source)
    configurations: dict[str, list[str]] = {}
    if "losses" in values or "envelopes" in values:
        losses = _list(values, "losses", source, [base_config.loss.name])
        envelopes = _list(values, "envelopes", source, ["none"])
        for loss in losses:
            for envelope in envelopes:
                plain = str(envelope).lower() == "none"
                name = str(loss) if plain else f"{loss}+{envelope}"
                envelope_override = "envelope=none" if plain else f"envelope.preset={envelope}"
                configurations[name] = [f"loss.name={loss}", envelope_override]
    for name, extra in (values.get("configurations") or {}).items():
        if not isinstance(extra, list) or not all(isinstance(item, str) for item in extra):
            raise _grid_error(f"configurations.{name}", "a list of 'key=value' strings", extra, source)
        configurations[str(name)] = list(extra)
    if not configurations:
        configurations = {base_config.loss.name: []}
    baseline = values.get("baseline", next(iter(configurations)))
    if baseline not in configurations:
        close = difflib.get_close_matches(str(baseline), list(configurations), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Expected `baseline` to be one of the configurations {list(configurations)}, but got "
                         f"{baseline!r} (in {source}).{hint}")
    spec = GridSpec(
        base=base_config,
        out_dir=Path(values.get("out_dir", path.parent / path.stem)),
        configurations=configurations,
        noise=[str(level) for level in _list(values, "noise", source, [base_config.data.noise.level])],
        seeds=[int(seed) for seed in _list(values, "seeds", source, [base_config.train.seed])],
        baseline=baseline,
        overrides=[*(values.get("set") or []), *overrides],
    )
    grid_cells(spec)  # every cell's config is checked before anything runs
    return spec


def grid_cells(spec: GridSpec) -> list[Cell]:
    """Every cell of the grid with its resolved, checked config (configuration-major, then noise, then seed)."""
    cells = []
    for name, configuration in spec.configurations.items():
        for noise in spec.noise:
            for seed in spec.seeds:
                run_dir = spec.out_dir / name / noise / f"seed_{seed}"
                overrides = [*spec.overrides, *configuration, f"data.noise.level={noise}", f"train.seed={seed}",
                             f"train.out_dir={run_dir}"]
                cells.append(Cell(name, noise, seed, run_dir, apply_overrides(spec.base, overrides)))
    return cells


def run_grid(spec: GridSpec, train: Callable[..., Any], log: Callable[[str], None] = print) -> list[Cell]:
    """Train every unfinished cell: finished ones are skipped, an interrupted one (its ``last.pt`` of the same
    config) resumes, anything else in a cell's folder is replaced.

    Args:
        train: called as ``train(config, resume=bool)`` for each cell to train.
    """
    cells = grid_cells(spec)
    for number, cell in enumerate(cells, start=1):
        label = f"[{number}/{len(cells)}] {cell.configuration}, noise {cell.noise}, seed {cell.seed}"
        if cell.finished:
            log(f"{label}: finished, skipped ({cell.run_dir})")
            continue
        resume = _resumable(cell)
        if cell.run_dir.exists() and not resume:
            shutil.rmtree(cell.run_dir)
        log(f"{label}: {'resuming' if resume else 'training'} into {cell.run_dir}")
        train(cell.config, resume=resume)
    return cells


def _resumable(cell: Cell) -> bool:
    saved = cell.run_dir / "config.yaml"
    if not (cell.run_dir / "last.pt").is_file() or not saved.is_file():
        return False
    return not config_diff(load_config(saved), cell.config)


def _foreground(row: Mapping[str, Any]) -> bool:
    return str(row.get("class_name") or row.get("class")) not in ("0", "background")


def _unit_means(rows: list[dict[str, Any]], metric: str) -> dict[str, float]:
    """Per test unit (case_id and index), the mean of ``metric`` over foreground classes (NaN when undefined)."""
    values: dict[str, list[float]] = {}
    for row in rows:
        if _foreground(row):
            values.setdefault(f"{row['case_id']}#{int(row['index'])}", []).append(float(row[metric]))
    return {unit: (float(np.nanmean(v)) if np.isfinite(v).any() else math.nan) for unit, v in values.items()}


def paired_test(values: Sequence[float], baseline: Sequence[float]) -> tuple[float, float, int]:
    """Two-sided Wilcoxon signed-rank test of paired samples: (p, mean difference, pairs used).

    Pairs with a NaN are dropped; when every difference is 0 the p-value is 1 (no evidence of a difference).

    Example:
        >>> p, difference, pairs = paired_test([0.9, 0.8, 0.85, 0.95, 0.7, 0.9], [0.8, 0.7, 0.8, 0.9, 0.6, 0.85])
        >>> round(p, 4), round(difference, 3), pairs
        (0.0312, 0.075, 6)
    """
    from scipy.stats import wilcoxon

    first, second = np.asarray(values, dtype=float), np.asarray(baseline, dtype=float)
    usable = np.isfinite(first) & np.isfinite(second)
    difference = first[usable] - second[usable]
    if difference.size == 0:
        return math.nan, math.nan, 0
    if np.all(difference == 0):
        return 1.0, 0.0, int(difference.size)
    return float(wilcoxon(difference).pvalue), float(difference.mean()), int(difference.size)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    finite = np.array([v for v in values if math.isfinite(v)], dtype=float)
    if finite.size == 0:
        return math.nan, math.nan
    return float(finite.mean()), float(finite.std(ddof=1)) if finite.size > 1 else 0.0


def _pm(mean: float, std: float, digits: int) -> str:
    return "n/a" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def train_seconds(results: Mapping[str, Any]) -> float:
    """The training time a ``results.json`` records (the first key naming a train time in seconds)."""
    for key in ("train_time_s", "train_seconds", "time_s", "train_time"):
        if isinstance(results.get(key), (int, float)):
            return float(results[key])
    return math.nan


def summarise_grid(spec: GridSpec, cells: Sequence[Cell] | None = None) -> dict[str, Any]:
    """Collect the finished cells into ``summary.csv``, ``per_image.csv``, ``table.md`` and ``report.md``.

    Returns:
        ``{"summary": rows, "table": markdown, "report": path, "missing": unfinished cells}``.
    """
    cells = list(cells) if cells is not None else grid_cells(spec)
    finished = [cell for cell in cells if (cell.run_dir / "per_image.csv").is_file()]
    missing = [cell for cell in cells if cell not in finished]
    per_image: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    times: dict[tuple[str, str, int], float] = {}
    units: set[str] = set()
    all_rows = []
    for cell in finished:
        rows = read_per_image(cell.run_dir / "per_image.csv")
        per_image[(cell.configuration, cell.noise, cell.seed)] = rows
        results_path = cell.run_dir / "results.json"
        results = json.loads(results_path.read_text()) if results_path.is_file() else {}
        times[(cell.configuration, cell.noise, cell.seed)] = train_seconds(results)
        units.add(distance_unit(results))
        all_rows += [{"config": cell.configuration, "noise": cell.noise, "seed": cell.seed, **row} for row in rows]

    def seed_mean_units(config: str, noise: str, metric: str) -> dict[str, float]:
        runs = [_unit_means(per_image[key], metric) for key in per_image if key[:2] == (config, noise)]
        units = sorted({unit for run in runs for unit in run})
        return {unit: float(np.nanmean([run.get(unit, math.nan) for run in runs]))
                if any(math.isfinite(run.get(unit, math.nan)) for run in runs) else math.nan for unit in units}

    summary = []
    for config in spec.configurations:
        for noise in spec.noise:
            keys = [key for key in per_image if key[:2] == (config, noise)]
            if not keys:
                continue
            run_dice = [float(np.nanmean(list(_unit_means(per_image[key], "dice").values()))) for key in keys]
            run_hd95 = [_finite_mean(_unit_means(per_image[key], "hd95").values()) for key in keys]
            row = {"config": config, "noise": noise, "runs": len(keys)}
            row["dice_mean"], row["dice_std"] = _mean_std(run_dice)
            row["hd95_mean"], row["hd95_std"] = _mean_std(run_hd95)
            row["time_mean"], row["time_std"] = _mean_std([times[key] for key in keys])
            row["p_value"] = row["dice_difference"] = math.nan
            row["pairs"] = 0
            if config != spec.baseline and any(key[:2] == (spec.baseline, noise) for key in per_image):
                mine, theirs = seed_mean_units(config, noise, "dice"), seed_mean_units(spec.baseline, noise, "dice")
                shared = sorted(set(mine) & set(theirs))
                row["p_value"], row["dice_difference"], row["pairs"] = paired_test(
                    [mine[unit] for unit in shared], [theirs[unit] for unit in shared])
            summary.append(row)

    spec.out_dir.mkdir(parents=True, exist_ok=True)
    _write_rows(spec.out_dir / "summary.csv", summary)
    _write_rows(spec.out_dir / "per_image.csv", all_rows)
    unit = units.pop() if len(units) == 1 else "mixed units"
    table = summary_table(summary, spec.baseline, unit)
    (spec.out_dir / "table.md").write_text(table + "\n")
    notes = [f"Mean ± standard deviation over seeds of each run's mean foreground test Dice and HD95 ({unit}; "
             f"images where HD95 is undefined are left out). ΔDice and p: against the baseline `{spec.baseline}` at "
             f"the same noise level, two-sided Wilcoxon signed-rank test over the test images, each image's "
             f"foreground Dice averaged over seeds (scipy.stats.wilcoxon). Per-image results: `per_image.csv`."]
    if missing:
        notes.append(f"{len(missing)} of {len(cells)} runs are not finished yet; run the grid again to resume.")
    runs = [(f"{cell.configuration}, noise {cell.noise}, seed {cell.seed}",
             str((cell.run_dir / "report.md").relative_to(spec.out_dir)))
            for cell in finished if (cell.run_dir / "report.md").is_file()]
    report = write_compare_report(spec.out_dir, summary, table, notes=notes, runs=runs, unit=unit) if summary else None
    return {"summary": summary, "table": table, "report": report, "missing": missing, "unit": unit}


def _finite_mean(values: Any) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def summary_table(summary: Sequence[Mapping[str, Any]], baseline: str | None, unit: str = "mm") -> str:
    """The grid's results as a Markdown table (one row per configuration and noise level)."""
    header = ["configuration", "noise", "runs", "Dice", f"HD95 ({unit})", "train time (s)", "ΔDice vs baseline",
              "p (Wilcoxon)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in summary:
        is_baseline = row["config"] == baseline
        difference = ("baseline" if is_baseline else
                      "n/a" if math.isnan(row["dice_difference"]) else f"{row['dice_difference']:+.3f}")
        p_value = "" if is_baseline else "n/a" if math.isnan(row["p_value"]) else f"{row['p_value']:.3g}"
        lines.append("| " + " | ".join([
            f"`{row['config']}`", row["noise"], str(row["runs"]), _pm(row["dice_mean"], row["dice_std"], 3),
            _pm(row["hd95_mean"], row["hd95_std"], 2), _pm(row["time_mean"], row["time_std"], 1), difference,
            p_value]) + " |")
    return "\n".join(lines)


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    names = list(dict.fromkeys(name for row in rows for name in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
