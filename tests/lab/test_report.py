"""Reports: report.md and its PNG plots from a hand-written run folder, and the compare plot."""

from __future__ import annotations

import re

import numpy as np
import pytest
from fake_run import write_fake_run

from seglosses.lab.report import (
    pick_best_median_worst,
    plot_compare,
    read_csv_columns,
    read_per_image,
    write_compare_report,
    write_report,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _linked_pngs(report_text: str) -> list[str]:
    return re.findall(r"\]\((plots/[^)]+\.png)\)", report_text)


def test_report_of_an_envelope_run_has_every_plot_and_the_numbers(tmp_path):
    run = write_fake_run(tmp_path / "run")
    text = write_report(run, images=False).read_text()
    linked = _linked_pngs(text)
    assert set(linked) == {"plots/learning_curves.png", "plots/per_class.png", "plots/envelope_weights.png",
                           "plots/envelope_schedule.png", "plots/kept_fractions.png"}
    for name in linked:
        assert (run / name).read_bytes()[:8] == PNG
    # the per-class table holds the mean and std of the per-image Dice
    dice = np.array([0.91, 0.55, 0.78, 0.83])
    assert f"{dice.mean():.3f} ± {dice.std():.3f}" in text
    assert "| test.dice | 0.767 |" in text


def test_report_without_the_envelope_has_no_envelope_section(tmp_path):
    run = write_fake_run(tmp_path / "run", envelope=False)
    text = write_report(run, images=False).read_text()
    assert "envelope" not in text.lower()
    assert set(_linked_pngs(text)) == {"plots/learning_curves.png", "plots/per_class.png"}


def test_csv_columns_keep_empty_cells_as_nan(tmp_path):
    run = write_fake_run(tmp_path / "run", epochs=4)
    log = read_csv_columns(run / "log.csv")
    assert np.isnan(log["val_dice"][0]) and log["val_dice"][1] == pytest.approx(0.75)
    assert np.isinf(log["env_alpha"][0])


def test_best_median_worst_are_picked_by_foreground_dice(tmp_path):
    rows = read_per_image(write_fake_run(tmp_path / "run") / "per_image.csv")
    picked = pick_best_median_worst(rows)
    assert [(which, case) for which, _, case, _ in picked] == [("best", "case0"), ("median", "case2"),
                                                               ("worst", "case1")]
    # the background class does not count
    rows += [{"case_id": "case1", "index": 1, "class": "background", "dice": 1.0}]
    assert pick_best_median_worst(rows)[-1][2] == "case1"


def test_compare_report_draws_every_configuration(tmp_path):
    summary = [{"config": config, "noise": noise, "dice_mean": dice, "dice_std": 0.02, "hd95_mean": 10 * (1 - dice),
                "hd95_std": 0.5}
               for config, shift in (("erm", 0.0), ("paper_best", 0.03))
               for noise, dice in (("none", 0.9 + shift), ("moderate", 0.8 + shift))]
    assert plot_compare(summary, tmp_path / "c.png").read_bytes()[:8] == PNG
    report = write_compare_report(tmp_path, summary, "| a |\n|---|\n| 1 |", notes=["Wilcoxon."],
                                  runs=[("erm", "erm/report.md")])
    text = report.read_text()
    assert "plots/compare.png" in text and "Wilcoxon." in text and "[erm](erm/report.md)" in text
