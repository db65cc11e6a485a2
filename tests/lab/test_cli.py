"""The `seglosses` command on tiny settings: every sub-command, its --help, and one-line errors."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from seglosses.lab.cli import DEMO_CONFIGURATIONS, build_parser, main

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"
COMMANDS = ("train", "evaluate", "compare", "report", "audit", "losses", "demo")

TINY_RUN = """
data:
  name: hc18_demo
  image_size: [32, 48]
  max_train: 12
  max_val: 4
  max_test: 4
  noise: {level: moderate, seed: 0}
model:
  name: unet
  options: {channels: [4, 8, 16], strides: [2, 2], num_res_units: 0}
loss: {name: dice_ce}
envelope: {preset: paper_best}
optim: {lr: 0.003}
train: {epochs: 2, batch_size: 4, device: cpu, progress: false, out_dir: OUT}
"""


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: these runs are tiny, and on a shared machine a second thread only waits."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_config(tmp_path: Path, name: str = "run.yaml", out: str = "run") -> Path:
    path = tmp_path / name
    path.write_text(TINY_RUN.replace("OUT", str(tmp_path / out)))
    return path


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: seglosses {command}" in capsys.readouterr().out


def test_the_installed_entry_points_run():
    """`python -m seglosses` reaches the same parser as the `seglosses` script ([project.scripts])."""
    result = subprocess.run([sys.executable, "-m", "seglosses", "--help"], capture_output=True, text=True,
                            cwd=ROOT, env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""})
    assert result.returncode == 0, result.stderr
    assert all(command in result.stdout for command in COMMANDS)
    assert 'seglosses = "seglosses.lab.cli:main"' in (ROOT / "pyproject.toml").read_text()


def test_losses_lists_the_registry(capsys):
    import seglosses

    assert main(["losses"]) == 0
    out = capsys.readouterr().out
    for name in seglosses.list_losses():
        assert re.search(rf"^{name}\s", out, re.MULTILINE), name
    assert main(["losses", "dice*"]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:] if line and line[0].isalpha()]
    assert rows[:len(seglosses.list_losses("dice*"))] == seglosses.list_losses("dice*")


def test_usage_errors_are_one_line(tmp_path, capsys):
    assert "no registered loss matches" in _one_line_error(capsys, ["losses", "nothing*"])
    assert "existing file" in _one_line_error(capsys, ["train", "--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(SystemExit) as exit_info:
        main(["trian"])
    assert exit_info.value.code == 2


def test_config_typos_and_unknown_names_suggest_the_closest(tmp_path, capsys):
    config = _tiny_config(tmp_path)
    typo = tmp_path / "typo.yaml"
    typo.write_text(config.read_text().replace("epochs: 2", "epcohs: 2"))
    assert "'train.epochs'" in _one_line_error(capsys, ["train", "--config", str(typo)])
    assert "dice_ce" in _one_line_error(capsys, ["train", "--config", str(config), "--set", "loss.name=dise_ce"])
    assert "paper_best" in _one_line_error(capsys, ["train", "--config", str(config), "--set",
                                                     "envelope.preset=paper_bets"])
    assert "train.epochs" in _one_line_error(capsys, ["train", "--config", str(config), "--set", "train.epocs=3"])


def test_train_report_evaluate_audit_and_the_out_dir_guard(tmp_path, capsys):
    config = _tiny_config(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "--config", str(config)]) == 0
    report = (run / "report.md").read_text()
    for png in re.findall(r"\]\((plots/[^)]+\.png)\)", report):
        assert (run / png).read_bytes()[:8] == PNG
    assert "test_overlays.png" in report and "envelope_weights.png" in report
    capsys.readouterr()

    # the folder now holds a run: the same config or another is refused without --resume / --overwrite
    assert "--overwrite" in _one_line_error(capsys, ["train", "--config", str(config)])
    message = _one_line_error(capsys, ["train", "--config", str(config), "--set", "optim.lr=0.01"])
    assert "different" in message and "optim.lr" in message

    assert main(["evaluate", str(run), "--split", "val", "--checkpoint", "last"]) == 0
    evaluated = json.loads((run / "evaluate_val_last.json").read_text())
    assert 0.0 <= evaluated["dice"] <= 1.0

    assert main(["audit", str(run), "--images", "3"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"precision \d\.\d{3} \(chance \d\.\d{3}\), recall \d\.\d{3}", out)
    assert (run / "audit" / "audit.png").read_bytes()[:8] == PNG
    with open(run / "audit" / "audit.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 12  # every training image, hardest first

    assert main(["train", "--config", str(config), "--overwrite", "--set", "envelope=none"]) == 0
    assert "without the envelope" in _one_line_error(capsys, ["audit", str(run)])


def test_compare_resumes_a_half_finished_grid(tmp_path, capsys, monkeypatch):
    import seglosses.lab.cli as cli

    _tiny_config(tmp_path, name="base.yaml", out="unused")
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"base: base.yaml\nout_dir: {tmp_path / 'grid'}\nlosses: [dice_ce]\n"
                    "envelopes: [none, paper_best]\nnoise: [moderate]\nseeds: [0, 1]\nbaseline: dice_ce\n"
                    "set: [train.epochs=1]\n")
    trained = []
    real = cli._train_and_report
    monkeypatch.setattr(cli, "_train_and_report", lambda config, resume: (trained.append(config.train.out_dir),
                                                                          real(config, resume))[1])
    assert main(["compare", "--config", str(grid)]) == 0
    assert len(trained) == 4
    table = (tmp_path / "grid" / "table.md").read_text()
    assert "`dice_ce+paper_best`" in table and "baseline" in table
    assert re.search(r"\| 0\.\d{3} ± 0\.\d{3} \|", table)

    # half-finished: one run lost its results, another its whole folder; only those two train again
    first_pass = list(trained)
    (Path(first_pass[1]) / "results.json").unlink()
    shutil.rmtree(first_pass[3])
    trained.clear()
    assert main(["compare", "--config", str(grid)]) == 0
    assert trained == [first_pass[1], first_pass[3]]
    assert "finished, skipped" in capsys.readouterr().out
    with open(tmp_path / "grid" / "per_image.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {(row["config"], row["seed"]) for row in rows} == {(c, s) for c in ("dice_ce", "dice_ce+paper_best")
                                                              for s in ("0", "1")}
    assert (tmp_path / "grid" / "plots" / "compare.png").read_bytes()[:8] == PNG


def test_demo_in_a_reduced_setting(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--smoke", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in DEMO_CONFIGURATIONS:
        assert re.search(rf"^{name}\s+0\.\d{{3}}\s+\d+\.\d{{2}}\s+\d+", printed, re.MULTILINE), printed
    assert f"report: {out / 'report.md'}" in printed
    report = (out / "report.md").read_text()
    assert all(f"`{name}`" in report for name in DEMO_CONFIGURATIONS)
    assert re.search(r"`paper_best`: precision (\d\.\d{3}|nan) \(chance 0\.\d{3}\), recall", report), report
    assert (out / "plots" / "compare.png").read_bytes()[:8] == PNG
    for name in DEMO_CONFIGURATIONS:
        run = out / name / "moderate" / "seed_0"
        assert json.loads((run / "results.json").read_text())
        assert (run / "plots" / "learning_curves.png").read_bytes()[:8] == PNG
        assert (run / "audit" / "audit.png").is_file() == (name != "erm_dice_ce")


def test_the_packaged_demo_data():
    """hc18_demo: 200 HC18 subjects inside the package, their attribution, pixel sizes, a split by subject."""
    from seglosses.lab.data import DataConfig, build_splits, default_root

    root = default_root("hc18_demo")
    assert root.is_relative_to(ROOT / "src" / "seglosses" / "lab")
    assert "CC BY 4.0" in (root.parent / "ATTRIBUTION.md").read_text()
    images = sorted(path.name for path in (root / "images").glob("*.png"))
    assert len(images) == 200 and images == sorted(path.name for path in (root / "masks").glob("*.png"))
    with open(root / "pixel_size_and_hc.csv") as handle:
        sizes = {row["filename"]: float(row["pixel_size_mm"]) for row in csv.DictReader(handle)}
    assert sorted(sizes) == images and all(0.2 < size < 2.5 for size in sizes.values())
    splits = build_splits(DataConfig("hc18_demo"))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (140, 20, 40)
    cases = [{splits_part[i]["case_id"] for i in range(len(splits_part))}
             for splits_part in (splits.train, splits.val, splits.test)]
    assert not (cases[0] & cases[1]) and not (cases[0] & cases[2]) and not (cases[1] & cases[2])
    assert tuple(splits.train[0]["image"].shape) == (1, 108, 160)
