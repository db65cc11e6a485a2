"""The accuracy study (issue 12): run a schedule's grid of training cells and aggregate the results.

A *schedule* (``benchmarks/accuracy/<name>.yaml``) fixes the data, the model, the optimiser and the
loop shared by every cell, the noise levels, the seeds and the configurations
(``configurations.yaml``: the loss and the envelope of each). A *cell* is one configuration at one
noise level with one training seed; the split and the noise are the same for every seed, so cells
of two configurations pair by seed. Each cell trains with :func:`seglosses.lab.train` into its own
run folder (``<runs-root>/<schedule>/<configuration>/<level>/seed<k>``), and the script then writes
``cell.json`` there: the test scores per image and what the envelope saw. A cell with a
``cell.json`` is finished and skipped; one with a ``last.pt`` only is resumed.

Usage::

    python benchmarks/accuracy/run_study.py list benchmarks/accuracy/hc18_cpu.yaml
    python benchmarks/accuracy/run_study.py run benchmarks/accuracy/hc18_cpu.yaml --max-minutes 50
    python benchmarks/accuracy/run_study.py run benchmarks/accuracy/hc18_cpu.yaml \\
        --only erm --levels none,severe --seeds 0
    python benchmarks/accuracy/run_study.py aggregate benchmarks/accuracy/hc18_cpu.yaml

``run`` stops starting cells when the next one would not finish within ``--max-minutes`` (judged by
the cells already timed) and interrupts a training still running at the limit (it saves ``last.pt``
and resumes next time); it appends to ``<results-dir>/<schedule>/study.log`` and aggregates at the
end. ``aggregate`` writes ``summary.md``, ``summary.json`` and ``dice_vs_noise.png`` beside the log:
per cell the mean +- std over seeds of the per-image test Dice and HD95 (clean test masks), the
per-image spread, the paired difference to ERM (same seed, split and noise; paired t-test), each
configuration's clean-minus-noisy gap, the measured Dice(noisy, clean) of the training masks per
level, and what the envelope sees: the precision and recall with which the pixels its pixel rule
excludes (final model, training split) hit the pixels the noise changed, and the Spearman rank
correlation between an image's ledger (final epoch) and its Dice(noisy, clean).
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import math
import os
import shutil
import signal
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

HERE = Path(__file__).resolve().parent
DEFAULT_RUNS_ROOT = HERE / "runs"
DEFAULT_RESULTS_DIR = HERE / "results"
BASELINE = "erm"
GROUPS = ("main", "knobs")
SPEC_KEYS = {"group", "loss", "envelope", "epoch_options", "about"}
SCHEDULE_KEYS = {"schedule", "about", "configurations", "groups", "only", "seeds", "noise_seed", "noise_levels", "run"}


# --------------------------------------------------------------------------- the schedule


@dataclass
class Schedule:
    """A parsed schedule file: its name, the configurations it runs and the shared run settings."""

    name: str
    about: str
    configurations: dict[str, dict[str, Any]]
    levels_by_group: dict[str, list[str]]
    noise_levels: dict[str, dict[str, Any]]
    seeds: list[int]
    noise_seed: int
    run: dict[str, Any]
    path: Path


@dataclass(frozen=True)
class Cell:
    """One configuration at one noise level with one training seed."""

    configuration: str
    level: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.configuration}/{self.level}/seed{self.seed}"


def _fail(key: str, expected: str, got: Any, source: Path) -> None:
    raise ValueError(f"Expected `{key}` to be {expected}, but got {got!r} (in {source}).")


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"Expected `schedule` to be an existing file, but got {str(path)!r}.")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_schedule(path: str | Path) -> Schedule:
    """Read and check a schedule file and the configurations file it names.

    Raises:
        ValueError: an unknown key, a missing section, or a configuration without a known group.
    """
    path = Path(path).resolve()
    values = _read_yaml(path)
    if not isinstance(values, dict):
        _fail("schedule", "a mapping", type(values).__name__, path)
    unknown = sorted(set(values) - SCHEDULE_KEYS)
    if unknown:
        _fail("the keys of the schedule", f"among {sorted(SCHEDULE_KEYS)}", unknown[0], path)
    for key in ("schedule", "configurations", "groups", "seeds", "run"):
        if key not in values:
            _fail(key, "given", None, path)
    configurations_path = (path.parent / values["configurations"]).resolve()
    configurations = _read_yaml(configurations_path)
    if not isinstance(configurations, dict) or not configurations:
        _fail("configurations", "a non-empty mapping of configurations", configurations, configurations_path)
    for name, spec in configurations.items():
        if not isinstance(spec, dict) or set(spec) - SPEC_KEYS:
            _fail(f"configuration {name}", f"a mapping with keys among {sorted(SPEC_KEYS)}", spec,
                  configurations_path)
        if spec.get("group") not in GROUPS:
            _fail(f"{name}.group", f"one of {list(GROUPS)}", spec.get("group"), configurations_path)
    groups = values["groups"]
    if not isinstance(groups, dict) or set(groups) - set(GROUPS):
        _fail("groups", f"a mapping from {list(GROUPS)} to lists of noise levels", groups, path)
    only = values.get("only")
    if only is not None:
        missing = [name for name in only if name not in configurations]
        if missing:
            _fail("only", f"names from {configurations_path.name}", missing[0], path)
        configurations = {name: configurations[name] for name in only}
    named = [level for levels in groups.values() for level in levels]
    noise_levels = values.get("noise_levels") or {}
    if not isinstance(noise_levels, dict) or not all(isinstance(v, dict) for v in noise_levels.values()):
        _fail("noise_levels", "a mapping from level names to NoiseConfig options", noise_levels, path)
    # A study level is a lab noise level by default, or any NoiseConfig (e.g. a level with overrides).
    noise_levels = {level: dict(noise_levels.get(level, {"level": level})) for level in dict.fromkeys(named)}
    seeds = values["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        _fail("seeds", "a non-empty list of integers", seeds, path)
    return Schedule(name=str(values["schedule"]), about=str(values.get("about", "")),
                    configurations=configurations,
                    levels_by_group={group: list(levels) for group, levels in groups.items()},
                    noise_levels=noise_levels,
                    seeds=list(seeds), noise_seed=int(values.get("noise_seed", 0)), run=dict(values["run"]),
                    path=path)


def plan_cells(schedule: Schedule, *, only: Sequence[str] | None = None, levels: Sequence[str] | None = None,
               seeds: Sequence[int] | None = None) -> list[Cell]:
    """The cells in run order: seed by seed, ERM first, then the configurations in file order, each
    at its group's levels (so early chunks give complete paired comparisons)."""
    names = list(schedule.configurations)
    if BASELINE in names:
        names.remove(BASELINE)
        names.insert(0, BASELINE)
    for name in only or []:
        if name not in schedule.configurations:
            raise ValueError(f"Expected `--only` to name configurations of {schedule.name}, but got {name!r}.")
    cells = []
    for seed in schedule.seeds:
        if seeds is not None and seed not in seeds:
            continue
        for name in names:
            if only and name not in only:
                continue
            for level in schedule.levels_by_group.get(schedule.configurations[name]["group"], []):
                if levels is None or level in levels:
                    cells.append(Cell(name, level, seed))
    return cells


def cell_dir(runs_root: Path, schedule: Schedule, cell: Cell) -> Path:
    return Path(runs_root) / schedule.name / cell.configuration / cell.level / f"seed{cell.seed}"


def cell_config(schedule: Schedule, cell: Cell, out_dir: Path):
    """The checked :class:`seglosses.lab.RunConfig` of a cell.

    Raises:
        ValueError, TypeError: the configuration uses a loss, preset or option this build lacks.
    """
    from seglosses.lab.config import config_from_dict

    spec = schedule.configurations[cell.configuration]
    values = copy.deepcopy(schedule.run)
    data = values.setdefault("data", {})
    data["noise"] = {**schedule.noise_levels[cell.level], "seed": schedule.noise_seed}
    values["loss"] = copy.deepcopy(spec["loss"])
    values.pop("envelope", None)
    if spec.get("envelope") is not None:
        envelope = copy.deepcopy(spec["envelope"])
        epochs = int(values.get("train", {}).get("epochs", 50))
        options = envelope.setdefault("options", {})
        for option, fraction in (spec.get("epoch_options") or {}).items():
            options[option] = float(max(1, round(fraction * epochs)))
        values["envelope"] = envelope
    elif spec.get("epoch_options"):
        raise ValueError(f"Expected `{cell.configuration}.epoch_options` to come with an envelope, but got none.")
    train = values.setdefault("train", {})
    train["seed"] = cell.seed
    train["out_dir"] = str(out_dir)
    return config_from_dict(values, source=f"{schedule.path.name}, configuration {cell.configuration}")


def availability(schedule: Schedule) -> dict[str, str | None]:
    """Per configuration: None when this build can run it, else why not (the config check's error)."""
    probe = Path("/nonexistent")
    result = {}
    for name, spec in schedule.configurations.items():
        levels = schedule.levels_by_group.get(spec["group"], [])
        if not levels:
            result[name] = None
            continue
        try:
            cell_config(schedule, Cell(name, levels[0], schedule.seeds[0]), probe)
            result[name] = None
        except (TypeError, ValueError) as error:
            result[name] = str(error)
    return result


# --------------------------------------------------------------------------- what the envelope sees


def _keep_mask(envelope: Any, logits: torch.Tensor, masks: torch.Tensor, epoch: int) -> torch.Tensor:
    import inspect

    if "epoch" in inspect.signature(envelope.export_keep_mask).parameters:
        return envelope.export_keep_mask(logits, masks, epoch=epoch)
    return envelope.export_keep_mask(logits, masks)


def envelope_view(out_dir: Path, train_split: Any) -> dict[str, Any] | None:
    """What the envelope of a finished run sees (None for runs without one).

    The final model's pixel rule on the (unaugmented) noisy training masks: which pixels it
    excludes against which pixels the noise changed; and the Spearman correlation between each
    training image's ledger value at the last epoch and its Dice(noisy, clean) from ``noise.csv``
    (negative when the envelope ranks the worst-annotated images hardest).
    """
    from scipy.stats import spearmanr

    from seglosses.lab import load_run, predict
    from seglosses.lab.audit import exclusion_hit_rates

    run = load_run(out_dir, which="last")
    if run.envelope is None:
        return None
    view: dict[str, Any] = {"pixel_strategy": run.envelope.config.pixel_strategy, "epoch": run.epoch}
    if run.envelope.config.pixel_strategy != "all":
        excluded, noisy, clean = [], [], []
        with torch.no_grad():
            for batch in predict(run.model, train_split, batch_size=16, return_logits=True):
                keep = _keep_mask(run.envelope, batch["logits"], batch["mask"], run.epoch)
                excluded.append((~keep).numpy())
                noisy.append(batch["mask"].numpy())
                clean.append(batch["clean_mask"].numpy())
        rates = exclusion_hit_rates(np.concatenate(excluded), np.concatenate(noisy), np.concatenate(clean))
        view["exclusion"] = dataclasses.asdict(rates)
    ledgers = sorted((out_dir / "envelope").glob("epoch_*.npz"))
    noise_rows = _read_csv(out_dir / "noise.csv")
    if ledgers and noise_rows:
        ledger = np.load(ledgers[-1])["ledger"]
        dice = np.full(ledger.shape, np.nan)
        for row in noise_rows:
            dice[int(row["index"])] = float(row["dice_noisy_clean"])
        usable = np.isfinite(ledger) & np.isfinite(dice)
        rho = math.nan
        if usable.sum() > 2 and np.ptp(dice[usable]) > 0 and np.ptp(ledger[usable]) > 0:
            rho = float(spearmanr(ledger[usable], dice[usable]).statistic)
        view["ledger_spearman"] = {"rho": rho, "images": int(usable.sum()), "ledger_file": ledgers[-1].name}
    return view


# --------------------------------------------------------------------------- one cell


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _float(text: str | None) -> float:
    return float(text) if text not in (None, "") else math.nan


def per_unit_scores(out_dir: Path) -> dict[str, dict[str, float]]:
    """Per metric (dice, hd95) and test unit (image or volume, keyed by case id and index): the mean
    over the foreground classes (a class's NaN HD95, e.g. of an empty prediction, is left out)."""
    units: dict[str, dict[str, list[float]]] = {}
    for row in _read_csv(out_dir / "per_image.csv"):
        unit = units.setdefault(f"{row['case_id']}#{row['index']}", {"dice": [], "hd95": []})
        unit["dice"].append(_float(row["dice"]))
        unit["hd95"].append(_float(row["hd95"]))
    scores: dict[str, dict[str, float]] = {"dice": {}, "hd95": {}}
    for key, unit in units.items():
        for metric in ("dice", "hd95"):
            finite = [v for v in unit[metric] if math.isfinite(v)]
            scores[metric][key] = statistics.fmean(finite) if finite else math.nan
    return scores


def _mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan, 0
    return statistics.fmean(finite), (statistics.stdev(finite) if len(finite) > 1 else math.nan), len(finite)


def _fingerprint(config: Any) -> dict[str, Any]:
    """What a finished cell must still match to be skipped: its run config (less the keys that change
    only where and how fast it runs), its noise parameters (a lab level may be retuned) and its
    envelope's options as this build resolves them (presets and defaults may change)."""
    from seglosses.lab.config import RESUMABLE_CHANGES, config_to_dict, envelope_config

    values = config_to_dict(config)
    for dotted in RESUMABLE_CHANGES:
        section, key = dotted.split(".")
        values[section].pop(key, None)
    noise = config.data.noise.parameters() if config.data.noise.enabled else "none"
    # The envelope as the build resolves it: a preset or an option default may change between builds.
    envelope = None if config.envelope is None else dataclasses.asdict(envelope_config(config))
    return json.loads(json.dumps({"config": values, "noise_parameters": noise, "envelope": envelope}, default=repr))


# Envelope options that only one pixel strategy reads: a changed default of one of them must not make
# the cells of the other strategies stale.
_READ_ONLY_BY = {"pixel_groups": "bsigma", "kappa": "bsigma", "pixel_fraction": "tk"}


def comparable_fingerprint(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """A fingerprint less the envelope options that its pixel strategy ignores."""
    envelope = fingerprint.get("envelope")
    if not envelope:
        return fingerprint
    read = {key: value for key, value in envelope.items()
            if _READ_ONLY_BY.get(key, envelope.get("pixel_strategy")) == envelope.get("pixel_strategy")}
    return {**fingerprint, "envelope": read}


def is_finished(out_dir: Path, config: Any) -> tuple[bool, str]:
    """Whether a cell's ``cell.json`` exists and was made by the same config and noise (else why not)."""
    path = out_dir / "cell.json"
    if not path.is_file():
        return False, "no cell.json"
    from seglosses.lab.config import config_diff

    saved = comparable_fingerprint(json.loads(path.read_text(encoding="utf-8")).get("fingerprint") or {})
    current = comparable_fingerprint(_fingerprint(config))
    if all(saved.get(key) == value for key, value in current.items()):  # (no "envelope" key: none)
        return True, "finished"
    differing = list(config_diff(saved.get("config", {}), current["config"])) if saved.get("config") else ["config"]
    if saved.get("noise_parameters") != current["noise_parameters"]:
        differing.append("noise parameters")
    if saved.get("envelope") != current["envelope"]:
        differing.append("resolved envelope options")
    return False, f"stale (made with a different {', '.join(differing) or 'fingerprint'})"


def resumable(out_dir: Path, config: Any) -> bool:
    """Whether the interrupted run in ``out_dir`` may be resumed under ``config`` (the test ``train``
    applies to its checkpoint, which would otherwise refuse it)."""
    from seglosses.lab.config import RESUMABLE_CHANGES, config_diff
    from seglosses.lab.train import load_checkpoint

    saved = load_checkpoint(out_dir / "last.pt", map_location="cpu")["config"]
    return all(key in RESUMABLE_CHANGES for key in config_diff(saved, config))


def summarize_cell(schedule: Schedule, cell: Cell, out_dir: Path, train_split: Any, wall_s: float,
                   config: Any) -> dict[str, Any]:
    """Write and return ``cell.json``: the cell's test scores, noise measurement and envelope view."""
    results = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    scores = per_unit_scores(out_dir)
    dice_mean, dice_std, units = _mean_std(list(scores["dice"].values()))
    hd_mean, hd_std, hd_units = _mean_std(list(scores["hd95"].values()))
    noise = [_float(row.get("dice_noisy_clean")) for row in _read_csv(out_dir / "noise.csv")]
    summary = {
        "schedule": schedule.name, "configuration": cell.configuration, "level": cell.level, "seed": cell.seed,
        "dice": dice_mean, "dice_image_std": dice_std, "hd95": hd_mean, "hd95_image_std": hd_std,
        "units": units, "hd95_units": hd_units, "eval_unit": results.get("eval_unit"),
        "distances_in": results.get("distances_in"), "train_time_s": results.get("train_time_s"),
        "wall_s": wall_s, "epochs": results.get("epochs"), "selected_model": results.get("selected_model"),
        "noise_dice_noisy_clean": _mean_std(noise)[0] if noise else 1.0,
        "envelope": envelope_view(out_dir, train_split),
        "seglosses_commit": _git_commit(), "fingerprint": _fingerprint(config),
    }
    (out_dir / "cell.json").write_text(json.dumps(summary, indent=2, default=_json_number) + "\n", encoding="utf-8")
    return summary


def _json_number(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"Expected a JSON-serialisable value, but got {type(value).__name__}.")


class _Splits:
    """The splits of each data config, built once per process (every seed and configuration of a
    level shares them), with the folder whose splits.csv and noise.csv they wrote."""

    def __init__(self) -> None:
        self.cache: dict[str, tuple[Any, Path]] = {}

    def get(self, data_config: Any, out_dir: Path) -> Any:
        from seglosses.lab import build_splits
        from seglosses.lab.config import config_to_dict

        key = json.dumps(config_to_dict(data_config), sort_keys=True)
        if key not in self.cache:
            out_dir.mkdir(parents=True, exist_ok=True)
            self.cache[key] = (build_splits(data_config, out_dir), out_dir)
        splits, written = self.cache[key]
        if written != out_dir:
            out_dir.mkdir(parents=True, exist_ok=True)
            for name in ("splits.csv", "noise.csv"):
                if (written / name).is_file():
                    shutil.copyfile(written / name, out_dir / name)
        return splits


# --------------------------------------------------------------------------- the grid


class _Log:
    def __init__(self, path: Path, echo: bool = True) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.echo = path, echo

    def __call__(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        if self.echo:
            print(line, flush=True)


def run_grid(schedule: Schedule, cells: Sequence[Cell], *, runs_root: Path, results_dir: Path,
             max_minutes: float | None, log: _Log) -> dict[str, int]:
    """Train the unfinished cells one at a time within ``max_minutes``; returns counts by outcome."""
    from seglosses.lab import train

    started = time.monotonic()
    deadline = None if max_minutes is None else started + 60.0 * max_minutes
    unavailable = availability(schedule)
    splits = _Splits()
    counts = {"finished": 0, "skipped": 0, "unavailable": 0, "interrupted": 0, "not_started": 0,
              "data_unavailable": 0}
    durations = [c["wall_s"] for c in finished_cells(schedule, runs_root) if c.get("wall_s")]
    training = threading.Event()

    def interrupt_training() -> None:  # a training still running at the limit stops like on Ctrl-C
        if training.is_set():
            os.kill(os.getpid(), signal.SIGINT)

    timer = None
    if deadline is not None and deadline > started:
        timer = threading.Timer(deadline - started, interrupt_training)
        timer.daemon = True
        timer.start()
    log(f"chunk start: schedule {schedule.name}, {len(cells)} cells planned, budget "
        f"{'none' if max_minutes is None else f'{max_minutes:g} min'}")
    try:
        for position, cell in enumerate(cells):
            out_dir = cell_dir(runs_root, schedule, cell)
            if unavailable.get(cell.configuration):
                counts["unavailable"] += 1
                log(f"not available in this build: {cell.name}: {unavailable[cell.configuration]}")
                continue
            config = cell_config(schedule, cell, out_dir)
            finished, why = is_finished(out_dir, config)
            if finished:
                counts["skipped"] += 1
                continue
            stale = why.startswith("stale")
            if stale:  # rerun from scratch: the old files must not pass for the new cell's
                log(f"{cell.name} is {why}: rerunning it")
                (out_dir / "cell.json").unlink()
            estimate = statistics.median(durations) if durations else 0.0
            if deadline is not None and time.monotonic() + estimate > deadline:
                counts["not_started"] = len(cells) - position
                log(f"budget: {counts['not_started']} cells left for the next chunk "
                    f"(a cell takes about {estimate:.0f} s)")
                break
            resume = not stale and (out_dir / "last.pt").is_file() and not (out_dir / "results.json").is_file()
            if resume and not resumable(out_dir, config):  # a half-run of an older config: start afresh
                log(f"{cell.name}: its checkpoint was made with a different config: rerunning it")
                stale, resume = True, False
            log(f"start {cell.name}{' (resuming)' if resume else ''}")
            begun = time.monotonic()
            try:
                data = splits.get(config.data, out_dir)
            except (KeyError, NotImplementedError, FileNotFoundError, ValueError) as error:
                counts["data_unavailable"] = len(cells) - position
                log(f"data not available in this build: {config.data.name!r} cannot be built "
                    f"({type(error).__name__}: {error}); stopping")
                break
            if stale or not (out_dir / "results.json").is_file():
                training.set()
                try:
                    result = train(config, splits=data, resume=resume, overwrite=not resume)
                finally:
                    training.clear()
                if result.interrupted:
                    counts["interrupted"] += 1
                    log(f"interrupted {cell.name} after {time.monotonic() - begun:.0f} s (resumes next chunk)")
                    break
            summary = summarize_cell(schedule, cell, out_dir, data.train, time.monotonic() - begun, config)
            durations.append(summary["wall_s"])
            counts["finished"] += 1
            seen = summary["envelope"] or {}
            exclusion = seen.get("exclusion") or {}
            log(f"done {cell.name} in {summary['wall_s']:.0f} s: Dice {summary['dice']:.4f} "
                f"HD95 {summary['hd95']:.3g} Dice(noisy, clean) {summary['noise_dice_noisy_clean']:.3f}"
                + (f" excluded-precision {exclusion['precision']:.3f} recall {exclusion['recall']:.3f}"
                   if exclusion else ""))
    except KeyboardInterrupt:
        counts["interrupted"] += 1
        log("interrupted between trainings")
    finally:
        if timer is not None:
            timer.cancel()
    log(f"chunk end after {(time.monotonic() - started) / 60:.1f} min: {counts}")
    return counts


def finished_cells(schedule: Schedule, runs_root: Path) -> list[dict[str, Any]]:
    """The ``cell.json`` of every planned cell that is finished under the current settings."""
    unavailable = availability(schedule)
    found = []
    for cell in plan_cells(schedule):
        if unavailable.get(cell.configuration):
            continue
        out_dir = cell_dir(runs_root, schedule, cell)
        if is_finished(out_dir, cell_config(schedule, cell, out_dir))[0]:
            found.append(json.loads((out_dir / "cell.json").read_text(encoding="utf-8")))
    return found


# --------------------------------------------------------------------------- aggregation


def _paired(values: dict[int, float], baseline: dict[int, float]) -> dict[str, Any]:
    from scipy.stats import ttest_rel

    seeds = sorted(seed for seed in values if seed in baseline and math.isfinite(values[seed])
                   and math.isfinite(baseline[seed]))
    differences = [values[seed] - baseline[seed] for seed in seeds]
    result: dict[str, Any] = {"seeds": seeds, "difference": math.nan, "difference_std": math.nan, "p": math.nan,
                              "wins": sum(d > 0 for d in differences), "losses": sum(d < 0 for d in differences)}
    if differences:
        result["difference"] = statistics.fmean(differences)
    if len(differences) > 1:
        result["difference_std"] = statistics.stdev(differences)
        if result["difference_std"] > 0:
            result["p"] = float(ttest_rel([values[s] for s in seeds], [baseline[s] for s in seeds]).pvalue)
    return result


def _paired_images(run_dirs: Sequence[Path], baseline_dirs: Sequence[Path]) -> dict[str, Any]:
    """The Wilcoxon signed-rank test over test units (``seglosses.lab.compare.paired_test``), pairing
    each unit's Dice averaged over the seeds both configurations finished."""
    from seglosses.lab.compare import paired_test

    if not run_dirs:
        return {"p": math.nan, "difference": math.nan, "units": 0}

    def seed_mean(dirs: Sequence[Path]) -> dict[str, float]:
        per_seed = [per_unit_scores(path)["dice"] for path in dirs]
        return {unit: float(np.nanmean([scores.get(unit, math.nan) for scores in per_seed])) for unit in per_seed[0]}

    values, baseline = seed_mean(run_dirs), seed_mean(baseline_dirs)
    units = sorted(set(values) & set(baseline))
    p, difference, pairs = paired_test([values[u] for u in units], [baseline[u] for u in units])
    return {"p": p, "difference": difference, "units": pairs}


def aggregate(schedule: Schedule, *, runs_root: Path, results_dir: Path) -> dict[str, Any]:
    """Write ``summary.json``, ``summary.md`` and ``dice_vs_noise.png`` for a schedule's finished cells."""
    cells = finished_cells(schedule, runs_root)
    by_key: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    noise_by_level: dict[str, float] = {}
    for summary in cells:
        by_key.setdefault((summary["configuration"], summary["level"]), {})[summary["seed"]] = summary
        noise_by_level.setdefault(summary["level"], summary["noise_dice_noisy_clean"])
    rows = []
    for name, spec in schedule.configurations.items():
        for level in schedule.levels_by_group.get(spec["group"], []):
            runs = by_key.get((name, level))
            if not runs:
                continue
            dice = {seed: run["dice"] for seed, run in runs.items()}
            hd95 = {seed: run["hd95"] for seed, run in runs.items()}
            clean = {seed: run["dice"] for seed, run in by_key.get((name, "none"), {}).items()}
            gap = _paired(clean, dice) if level != "none" else None  # the level named none: clean masks
            row = {"configuration": name, "about": spec.get("about", ""), "level": level, "seeds": sorted(runs),
                   "dice": _mean_std(list(dice.values()))[:2], "hd95": _mean_std(list(hd95.values()))[:2],
                   "dice_image_std": _mean_std([run["dice_image_std"] for run in runs.values()])[0],
                   "hd95_image_std": _mean_std([run["hd95_image_std"] for run in runs.values()])[0],
                   "clean_minus_noisy": None if gap is None else gap["difference"],
                   "wall_s": _mean_std([run["wall_s"] for run in runs.values()])[0],
                   "vs_erm": None}
            if name != BASELINE:
                erm_runs = by_key.get((BASELINE, level), {})
                row["vs_erm"] = _paired(dice, {seed: run["dice"] for seed, run in erm_runs.items()})
                row["vs_erm"]["images"] = _paired_images(
                    [cell_dir(runs_root, schedule, Cell(name, level, seed)) for seed in row["vs_erm"]["seeds"]],
                    [cell_dir(runs_root, schedule, Cell(BASELINE, level, seed)) for seed in row["vs_erm"]["seeds"]])
            seen = [run["envelope"] for run in runs.values() if run.get("envelope")]
            if seen:
                exclusions = [s["exclusion"] for s in seen if s.get("exclusion")]
                rhos = [s["ledger_spearman"]["rho"] for s in seen if s.get("ledger_spearman")]
                row["envelope"] = {
                    "exclusion_precision": _mean_std([e["precision"] for e in exclusions])[0] if exclusions else None,
                    "exclusion_recall": _mean_std([e["recall"] for e in exclusions])[0] if exclusions else None,
                    "chance_precision": _mean_std([e["chance_precision"] for e in exclusions])[0]
                    if exclusions else None,
                    # "pixels": the name of the count in cell.json files written before lab.audit was used
                    "excluded_fraction": _mean_std([e["excluded"] / e.get("counted", e.get("pixels"))
                                                    for e in exclusions])[0] if exclusions else None,
                    "ledger_spearman": _mean_std(rhos)[0] if rhos else None,
                }
            rows.append(row)
    available = availability(schedule)
    summary = {
        "schedule": schedule.name, "about": schedule.about, "schedule_file": schedule.path.name,
        "run": schedule.run, "seeds": schedule.seeds, "levels_by_group": schedule.levels_by_group,
        "noise_levels": schedule.noise_levels,
        "noise_dice_noisy_clean": noise_by_level, "cells_finished": len(cells), "rows": rows,
        "not_available": {name: why for name, why in available.items() if why},
        "seglosses_commit": _git_commit(),
    }
    out = Path(results_dir) / schedule.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(_finite(summary), indent=2) + "\n", encoding="utf-8")
    (out / "summary.md").write_text(_markdown(summary), encoding="utf-8")
    _plot(summary, out / "dice_vs_noise.png")
    return summary


def _finite(value: Any) -> Any:
    """NaN as null in JSON (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _git_commit() -> str | None:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def _gist(message: str) -> str:
    """The "but got ..." part of a config error (the list of valid keys is long)."""
    if " but got " not in message:
        return message
    got = message.split(" but got ", 1)[1]
    return "got " + got.split(" (in ", 1)[0].split(". ", 1)[0]


def _markdown(summary: dict[str, Any]) -> str:
    run = summary["run"]
    lines = [f"# Accuracy study: `{summary['schedule']}`", "", summary["about"], "",
             f"Schedule file `benchmarks/accuracy/{summary['schedule_file']}`, seeds {summary['seeds']}, "
             f"levels {summary['levels_by_group']}, {summary['cells_finished']} cells finished; "
             f"seglosses commit `{summary['seglosses_commit']}`.",
             f"Data: `{json.dumps(run.get('data', {}))}`; model `{json.dumps(run.get('model', {}))}`; "
             f"optimiser `{json.dumps(run.get('optim', {}))}`; loop `{json.dumps(run.get('train', {}))}`.", "",
             "Dice and HD95: the mean over test units (images, or volumes) per run on the clean test masks, "
             "then mean +- std over seeds; 'image std' is the spread over test units (mean over seeds). "
             "'vs ERM': the mean paired difference in Dice to ERM at the same level and seed (same split "
             "and noise), the paired t-test p-value over seeds (2+ seeds) and wins/losses over seeds; 'p images': "
             "the Wilcoxon signed-rank test over test units of the per-unit Dice averaged over seeds "
             "(seglosses.lab.compare.paired_test). 'gap': the "
             "configuration's Dice at `none` minus at this level (paired by seed).", "",
             "## Noise: measured Dice(noisy, clean) of the training masks", "",
             "| level | noise | Dice(noisy, clean) |", "|---|---|---|"]
    lines += [f"| {level} | `{json.dumps(summary['noise_levels'].get(level))}` | {_fmt(value)} |"
              for level, value in summary["noise_dice_noisy_clean"].items()]
    lines += ["", "## Test scores", "",
              "| configuration | level | seeds | Dice | image std | HD95 | vs ERM (Dice) | p | p images | wins/losses "
              "| gap | s/cell |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in summary["rows"]:
        versus = row["vs_erm"]
        lines.append(
            f"| {row['configuration']} | {row['level']} | {len(row['seeds'])} | "
            f"{_fmt(row['dice'][0])} +- {_fmt(row['dice'][1])} | {_fmt(row['dice_image_std'], 3)} | "
            f"{_fmt(row['hd95'][0], 2)} +- {_fmt(row['hd95'][1], 2)} | "
            + (f"{versus['difference']:+.4f} | {_fmt(versus['p'], 3)} | {_fmt(versus['images']['p'], 3)} | "
               f"{versus['wins']}/{versus['losses']} | "
               if versus and math.isfinite(versus["difference"]) else "- | - | - | - | ")
            + f"{_fmt(row['clean_minus_noisy'])} | {_fmt(row['wall_s'], 0)} |")
    envelope_rows = [row for row in summary["rows"] if row.get("envelope")]
    if envelope_rows:
        lines += ["", "## What the envelope sees", "",
                  "Excluded pixels: the final model's pixel rule on the noisy training masks (no augmentation), "
                  "pooled over the training split: precision = excluded and changed by the noise / excluded, "
                  "recall = excluded and changed / changed, against chance = changed / all pixels. Ledger: the "
                  "Spearman correlation between each training image's ledger value at the last epoch and its "
                  "Dice(noisy, clean) (negative = the worst-annotated images are ranked hardest; '-' without noise).",
                  "", "| configuration | level | excluded fraction | precision | chance | recall | ledger Spearman |",
                  "|---|---|---|---|---|---|---|"]
        for row in envelope_rows:
            seen = row["envelope"]
            lines.append(f"| {row['configuration']} | {row['level']} | {_fmt(seen['excluded_fraction'], 3)} | "
                         f"{_fmt(seen['exclusion_precision'], 3)} | {_fmt(seen['chance_precision'], 3)} | "
                         f"{_fmt(seen['exclusion_recall'], 3)} | {_fmt(seen['ledger_spearman'], 3)} |")
    if summary["not_available"]:
        lines += ["", "## Not available in this build", ""]
        lines += ["The config check refused these configurations (full messages in summary.json):", ""]
        lines += [f"- `{name}`: {_gist(why)}" for name, why in summary["not_available"].items()]
    return "\n".join(lines) + "\n"


def _plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [level for level in summary["noise_levels"] if any(row["level"] == level for row in summary["rows"])]
    figure, axis = plt.subplots(figsize=(8, 5))
    names = dict.fromkeys(row["configuration"] for row in summary["rows"])
    for name in names:
        rows = {row["level"]: row for row in summary["rows"] if row["configuration"] == name}
        xs = [i for i, level in enumerate(levels) if level in rows]
        if not xs:
            continue
        means = [rows[levels[i]]["dice"][0] for i in xs]
        stds = [rows[levels[i]]["dice"][1] if rows[levels[i]]["dice"][1] is not None
                and math.isfinite(rows[levels[i]]["dice"][1]) else 0.0 for i in xs]
        style = dict(linewidth=2.5, color="black") if name == BASELINE else dict(linewidth=1)
        axis.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=name, **style)
    axis.set_xticks(range(len(levels)), levels)
    axis.set_xlabel("training-mask noise level")
    axis.set_ylabel("test Dice (clean masks), mean +- std over seeds")
    axis.set_title(f"{summary['schedule']}: Dice vs noise level")
    axis.grid(alpha=0.3)
    if names:
        axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# --------------------------------------------------------------------------- command line


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("list", "run", "aggregate"))
    parser.add_argument("schedule", help="a schedule YAML file (benchmarks/accuracy/*.yaml)")
    parser.add_argument("--max-minutes", type=float, default=None, help="the chunk's time budget")
    parser.add_argument("--only", help="comma-separated configuration names")
    parser.add_argument("--levels", help="comma-separated noise levels")
    parser.add_argument("--seeds", help="comma-separated training seeds")
    parser.add_argument("--runs-root", type=Path, default=DEFAULT_RUNS_ROOT)
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.max_minutes is not None and args.max_minutes < 0:
        parser.error(f"Expected `--max-minutes` to be non-negative, but got {args.max_minutes}.")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    schedule = load_schedule(args.schedule)
    seeds = None if args.seeds is None else [int(seed) for seed in _names(args.seeds)]
    cells = plan_cells(schedule, only=_names(args.only), levels=_names(args.levels), seeds=seeds)
    if args.command == "list":
        unavailable = availability(schedule)
        for cell in cells:
            out_dir = cell_dir(args.runs_root, schedule, cell)
            if unavailable.get(cell.configuration):
                state = "not available in this build"
            else:
                finished, why = is_finished(out_dir, cell_config(schedule, cell, out_dir))
                state = ("finished" if finished else why if why.startswith("stale")
                         else "partial" if (out_dir / "last.pt").is_file() else "to run")
            print(f"{cell.name}: {state}")
        return 0
    log = _Log(args.results_dir / schedule.name / "study.log")
    if args.command == "run":
        run_grid(schedule, cells, runs_root=args.runs_root, results_dir=args.results_dir,
                 max_minutes=args.max_minutes, log=log)
    summary = aggregate(schedule, runs_root=args.runs_root, results_dir=args.results_dir)
    log(f"aggregated {summary['cells_finished']} finished cells into {args.results_dir / schedule.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
