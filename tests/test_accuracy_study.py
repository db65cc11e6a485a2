"""Smoke test of the accuracy study script (benchmarks/accuracy/run_study.py): a tiny grid on a
synthetic dataset in the HC18 layout, a couple of iterations per cell."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("yaml")
pytest.importorskip("PIL")
pytest.importorskip("monai")
pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

STUDY = Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy" / "run_study.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("run_study", STUDY)
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_study"] = module
    spec.loader.exec_module(module)
    return module


def _write_discs(root: Path, count: int = 16, size: int = 32) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[:size, :size]
    for index in range(count):
        centre = rng.uniform(size * 0.3, size * 0.7, 2)
        radius = rng.uniform(size * 0.15, size * 0.3)
        mask = ((ys - centre[0]) ** 2 + (xs - centre[1]) ** 2 < radius**2).astype(np.uint8)
        image = np.clip(mask * 150 + 50 + rng.normal(0, 30, (size, size)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{index:03d}_HC.png")
        Image.fromarray(mask * 255).save(root / "masks" / f"{index:03d}_HC.png")
    rows = [f"{index:03d}_HC.png,0.1,10.0" for index in range(count)]
    header = "filename,pixel_size_mm,head_circumference_mm"
    (root / "pixel_size_and_hc.csv").write_text("\n".join([header, *rows]) + "\n")


CONFIGURATIONS = """
erm: {group: main, loss: {name: ce_dice_pixel}, about: baseline}
bsigma: {group: main, loss: {name: ce_dice_pixel}, envelope: {preset: bsigma}, about: pixel rule}
late: {group: knobs, loss: {name: ce_dice_pixel}, envelope: {preset: paper_best_normalized},
       epoch_options: {total_epochs: 0.5}, about: half schedule}
future: {group: knobs, loss: {name: ce_dice_pixel}, envelope: {preset: bsigma, options: {no_such_knob: 1}},
         about: an option this build lacks}
"""


@pytest.fixture
def schedule_file(tmp_path: Path) -> Path:
    _write_discs(tmp_path / "data")
    (tmp_path / "configurations.yaml").write_text(CONFIGURATIONS)
    schedule = {
        "schedule": "smoke", "about": "tiny grid", "configurations": "configurations.yaml",
        "groups": {"main": ["none", "severe"], "knobs": ["severe"]}, "seeds": [0, 1], "noise_seed": 0,
        "run": {
            "data": {"name": "hc18", "root": str(tmp_path / "data"), "image_size": [32, 32],
                     "val_fraction": 0.25, "test_fraction": 0.25},
            "model": {"name": "basic_unet", "options": {"features": [4, 4, 4, 4, 4, 4]}},
            "optim": {"lr": 0.01},
            "train": {"epochs": 2, "batch_size": 4, "device": "cpu", "progress": False, "val_every": 0,
                      "select": "final", "augment": {"enabled": False}},
        },
    }
    import yaml

    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(schedule))
    return path


def test_schedule_refuses_unknown_keys(study, tmp_path):
    (tmp_path / "configurations.yaml").write_text(CONFIGURATIONS)
    (tmp_path / "bad.yaml").write_text("schedule: x\nconfigurations: configurations.yaml\ngroups: {main: [none]}\n"
                                       "seeds: [0]\nrun: {}\nepochs: 3\n")
    with pytest.raises(ValueError, match="epochs"):
        study.load_schedule(tmp_path / "bad.yaml")


def test_tiny_grid_runs_skips_and_aggregates(study, schedule_file, tmp_path):
    torch.set_num_threads(1)
    runs, results = tmp_path / "runs", tmp_path / "results"
    common = ["--runs-root", str(runs), "--results-dir", str(results)]
    schedule = study.load_schedule(schedule_file)
    cells = study.plan_cells(schedule)
    assert [c.name for c in cells[:3]] == ["erm/none/seed0", "erm/severe/seed0", "bsigma/none/seed0"]
    assert len(cells) == 2 * (2 * 2 + 2)  # seeds x (2 main configurations x 2 levels + 2 knobs x 1 level)
    # A budget of zero minutes starts nothing.
    assert study.main(["run", str(schedule_file), "--max-minutes", "0", *common]) == 0
    assert not list(runs.glob("**/cell.json"))

    assert study.main(["run", str(schedule_file), *common]) == 0
    finished = sorted(runs.glob("smoke/*/*/seed*/cell.json"))
    assert len(finished) == 10  # every cell but the two of the unavailable configuration
    log = (results / "smoke" / "study.log").read_text()
    assert "not available in this build: future/severe/seed0" in log and "no_such_knob" in log

    # The half schedule reached the envelope as total_epochs = 1 (of 2 epochs).
    late = runs / "smoke" / "late" / "severe" / "seed0"
    assert "total_epochs: 1.0" in (late / "config.yaml").read_text()

    # Per cell: the mean of per-image Dice, from per_image.csv.
    cell = json.loads((runs / "smoke" / "bsigma" / "severe" / "seed1" / "cell.json").read_text())
    with open(runs / "smoke" / "bsigma" / "severe" / "seed1" / "per_image.csv") as handle:
        dice = [float(row["dice"]) for row in csv.DictReader(handle)]
    assert cell["dice"] == pytest.approx(np.mean(dice)) and cell["units"] == len(dice)

    # What the envelope sees: counts consistent with the noisy and clean training masks, and the
    # ledger correlation recomputed from the run folder's files.
    exclusion = cell["envelope"]["exclusion"]
    splits_dir = runs / "smoke" / "bsigma" / "severe" / "seed1"
    from seglosses.lab import build_splits, load_config

    train_split = build_splits(load_config(splits_dir / "config.yaml").data).train
    changed = sum(int((s["mask"] != s["clean_mask"]).sum()) for s in train_split)
    assert exclusion["changed"] == changed > 0
    assert exclusion["counted"] == len(train_split) * 32 * 32
    assert 0 <= exclusion["hits"] <= min(exclusion["excluded"], exclusion["changed"])
    ledger = np.load(sorted((splits_dir / "envelope").glob("epoch_*.npz"))[-1])["ledger"]
    with open(splits_dir / "noise.csv") as handle:
        noise = {int(row["index"]): float(row["dice_noisy_clean"]) for row in csv.DictReader(handle)}
    expected = spearmanr(ledger, [noise[i] for i in range(len(ledger))]).statistic
    assert cell["envelope"]["ledger_spearman"]["rho"] == pytest.approx(expected)
    assert cell["noise_dice_noisy_clean"] == pytest.approx(np.mean(list(noise.values())))

    # A second run skips every finished cell and trains nothing.
    stamps = {path: path.stat().st_mtime_ns for path in runs.glob("**/results.json")}
    assert study.main(["run", str(schedule_file), *common]) == 0
    assert {path: path.stat().st_mtime_ns for path in runs.glob("**/results.json")} == stamps
    assert "'skipped': 10" in (results / "smoke" / "study.log").read_text()

    # The aggregate: a row per configuration and level, paired against ERM over the two seeds.
    summary = json.loads((results / "smoke" / "summary.json").read_text())
    rows = {(row["configuration"], row["level"]): row for row in summary["rows"]}
    assert set(rows) == {("erm", "none"), ("erm", "severe"), ("bsigma", "none"), ("bsigma", "severe"),
                         ("late", "severe")}
    erm = {s: json.loads((runs / "smoke" / "erm" / "severe" / f"seed{s}" / "cell.json").read_text())["dice"]
           for s in (0, 1)}
    bsigma = {s: json.loads((runs / "smoke" / "bsigma" / "severe" / f"seed{s}" / "cell.json").read_text())["dice"]
              for s in (0, 1)}
    versus = rows[("bsigma", "severe")]["vs_erm"]
    assert versus["seeds"] == [0, 1]
    assert versus["difference"] == pytest.approx(np.mean([bsigma[s] - erm[s] for s in (0, 1)]))
    assert versus["images"]["units"] == cell["units"] and 0 <= versus["images"]["p"] <= 1
    assert rows[("erm", "severe")]["dice"][0] == pytest.approx(np.mean(list(erm.values())))
    assert "future" in summary["not_available"]
    markdown = (results / "smoke" / "summary.md").read_text()
    assert "| bsigma | severe | 2 |" in markdown and "What the envelope sees" in markdown
    assert (results / "smoke" / "dice_vs_noise.png").stat().st_size > 0

    # Cells made with other settings are stale: neither skipped nor aggregated (here: a retuned level).
    import yaml

    values = yaml.safe_load(schedule_file.read_text())
    values["noise_levels"] = {"severe": {"level": "severe", "warp_amplitude": 0.5}}
    schedule_file.write_text(yaml.safe_dump(values))
    retuned = study.load_schedule(schedule_file)
    assert {(c["configuration"], c["level"]) for c in study.finished_cells(retuned, runs)} == {
        ("erm", "none"), ("bsigma", "none")}
    cell = study.Cell("erm", "severe", 0)
    out_dir = study.cell_dir(runs, retuned, cell)
    finished, why = study.is_finished(out_dir, study.cell_config(retuned, cell, out_dir))
    assert not finished and "noise parameters" in why

    # ... or a build whose envelope resolves the same preset to other options.
    cell = study.Cell("bsigma", "none", 0)
    out_dir = study.cell_dir(runs, retuned, cell)
    saved = json.loads((out_dir / "cell.json").read_text())
    saved["fingerprint"]["envelope"]["kappa"] = 2.5
    (out_dir / "cell.json").write_text(json.dumps(saved))
    finished, why = study.is_finished(out_dir, study.cell_config(retuned, cell, out_dir))
    assert not finished and "resolved envelope options" in why

    # A half-run whose checkpoint was made under another config is restarted, not resumed (train
    # would refuse the resume).
    cell = study.Cell("erm", "severe", 0)
    out_dir = study.cell_dir(runs, retuned, cell)
    assert (out_dir / "last.pt").is_file()
    assert not study.resumable(out_dir, study.cell_config(retuned, cell, out_dir))
    assert study.resumable(out_dir, study.cell_config(schedule, cell, out_dir))


def test_a_changed_default_of_an_option_that_a_strategy_ignores_leaves_its_cells_finished(study):
    def fingerprint(strategy, groups, kappa=1.0):
        return {"config": {}, "envelope": {"pixel_strategy": strategy, "pixel_groups": groups, "kappa": kappa,
                                           "pixel_fraction": 0.1, "top_fraction": 0.1}}

    same = study.comparable_fingerprint
    assert same(fingerprint("all", "class")) == same(fingerprint("all", "class_prediction"))
    assert same(fingerprint("tk", "class", 1.0)) == same(fingerprint("tk", "image", 2.0))
    assert same(fingerprint("bsigma", "class")) != same(fingerprint("bsigma", "class_prediction"))
    assert same(fingerprint("bsigma", "class", 1.0)) != same(fingerprint("bsigma", "class", 2.0))
    assert same({"config": {}, "envelope": None}) == {"config": {}, "envelope": None}
